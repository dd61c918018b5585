"""Render report blocks (:mod:`.blocks`) as markdown (figures linked) and as a self-contained HTML page
(figures inlined), and write them with the results JSON, each file atomically."""

from __future__ import annotations

import base64
import html
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
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_html(blocks, folder: Path, title: str = "diffusion-es report") -> str:
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline_md(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "table":
            rows = b[1]
            head = "".join(f"<th>{_inline_md(c)}</th>" for c in rows[0])
            trs = "".join("<tr>" + "".join(f"<td>{_inline_md(str(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}"
             "th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_document(blocks: list, results: dict, out, stem: str, results_name: str, title: str) -> None:
    """``OUT/stem.md``, ``OUT/stem.html`` and ``OUT/results_name`` (every number)."""
    out = Path(out)
    write_json(out / results_name, results)
    with atomic_path(out / f"{stem}.md", suffix=".md") as tmp:
        tmp.write_text(render_md(blocks))
    with atomic_path(out / f"{stem}.html", suffix=".html") as tmp:
        tmp.write_text(render_html(blocks, out, title))
