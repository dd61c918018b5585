"""Render report blocks (:mod:`.blocks`) as markdown (figures linked) and as a self-contained HTML page
(figures inlined), and write them with the results JSON, each file atomically."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..io import atomic_path, write_json

__all__ = ["render_md", "render_html", "write_document"]


def _md_table(rows) -> str:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def render_md(blocks) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            out.append(_md_table(b[1]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def _inline_md(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


# The page's style: readable on a laptop, a phone and paper. Wide tables scroll inside their own box (the page
# never scrolls sideways), figures shrink to the text width, headings get anchors and long reports a contents list.
_CSS = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
max-width:1200px;margin:0 auto;padding:1.5em 1.25em 4em}
h1,h2,h3{line-height:1.25;margin:1.6em 0 .6em}h1{margin-top:.4em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.25em}
p{max-width:75em}
.table-wrap{overflow-x:auto;margin:1em 0;max-width:100%}
table{border-collapse:collapse}
td,th{border:1px solid #c4c9cf;padding:4px 8px;font-size:14px;vertical-align:top;text-align:left;
overflow-wrap:break-word}
th{background:#eef1f4}tbody tr:nth-child(even){background:#f8f9fa}
figure{margin:1em 0;text-align:center}img{max-width:100%;height:auto}
code{background:#f2f4f6;padding:.05em .3em;border-radius:3px;font-size:.9em}
nav.toc{background:#f8f9fa;border:1px solid #d0d7de;border-radius:4px;padding:.4em 1.2em;margin:1em 0;
font-size:15px;display:inline-block}
nav.toc ul{margin:.2em 0;padding-left:1.2em}nav.toc>ul{padding-left:.2em;list-style:none}
a{color:#0b5cad}h2 a.anchor,h3 a.anchor{visibility:hidden;text-decoration:none;margin-left:.3em}
h2:hover a.anchor,h3:hover a.anchor{visibility:visible}
@media print{body{max-width:none;padding:0}.table-wrap{overflow:visible}nav.toc,a.anchor{display:none}
h2,h3{break-after:avoid}figure,tr{break-inside:avoid}}
"""
# a contents list once a page has this many section headings (h2 / h3)
TOC_MIN_HEADINGS = 4


def _slug(text: str, used: set) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _toc(heads) -> str:
    """Contents list: one item per h2, its h3 nested under it, from (level, slug, html) tuples."""
    items = []
    for level, slug, text in heads:
        link = f"<a href='#{slug}'>{text}</a>"
        if level == 2 or not items:
            items.append((link, []))
        else:
            items[-1][1].append(link)
    lis = "".join(f"<li>{a}" + (f"<ul>{''.join(f'<li>{x}</li>' for x in subs)}</ul>" if subs else "") + "</li>"
                  for a, subs in items)
    return f"<nav class='toc'><b>Contents</b><ul>{lis}</ul></nav>"


def render_html(blocks, folder: Path, title: str = "diffusion-es report") -> str:
    """A self-contained page: figures inlined as PNG data URIs, every table in a box that scrolls sideways when it
    is wider than the page, anchors on section headings and, for long pages, a contents list after the title."""
    body, heads, used = [], [], set()
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            body.append(f"<h1>{_inline_md(b[1])}</h1>")
        elif kind in ("h2", "h3"):
            text, slug = _inline_md(b[1]), _slug(b[1], used)
            heads.append((int(kind[1]), slug, text))
            body.append(f"<{kind} id='{slug}'>{text}<a class='anchor' href='#{slug}' aria-label='link to this "
                        f"section'>#</a></{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "table":
            rows = b[1]
            head = "".join(f"<th>{_inline_md(c)}</th>" for c in rows[0])
            trs = "".join("<tr>" + "".join(f"<td>{_inline_md(str(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
            body.append(f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"
                        f"</div>")
        elif kind == "img":
            data = base64.b64encode((folder / b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"></figure>')
    if len(heads) >= TOC_MIN_HEADINGS:
        at = 1 if body and body[0].startswith("<h1>") else 0
        # after the title and its lead paragraph, before the first section
        while at < len(body) and body[at].startswith("<p>"):
            at += 1
        body.insert(at, _toc(heads))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{_CSS.strip()}</style></head><body>{''.join(body)}</body></html>\n")


def write_document(blocks: list, results: dict, out, stem: str, results_name: str, title: str) -> None:
    """``OUT/stem.md``, ``OUT/stem.html`` and ``OUT/results_name`` (every number)."""
    out = Path(out)
    write_json(out / results_name, results)
    with atomic_path(out / f"{stem}.md", suffix=".md") as tmp:
        tmp.write_text(render_md(blocks))
    with atomic_path(out / f"{stem}.html", suffix=".html") as tmp:
        tmp.write_text(render_html(blocks, out, title))
