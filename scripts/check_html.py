"""Check that an HTML report (``report.html``, ``compare.html``) reads well: plots show, tables fit, text is readable.

    python scripts/check_html.py docs/repro/report.html docs/compare/compare.html [--width 1400 --width 800]
                                 [--screenshots DIR] [--static] [--json]

Static checks (always, no browser): every ``<img>`` carries an inlined ``data:image/png;base64`` URI that decodes
to a PNG with a non-zero size; every ``<table>`` sits in its scrolling box (``<div class='table-wrap'>``); the page
declares a viewport.

Browser checks (when Chromium is installed: ``chromium``, ``chromium-browser``, ``chromium-headless-shell``,
``google-chrome`` or ``$CHROMIUM``; ``--static`` skips them): the page is loaded headless at each ``--width``
(default 1400 and 800 px) with a small script added to a temporary copy, which reports from the DOM after the load
event (read back via ``--dump-dom``): every image loaded with a non-zero natural size and is no wider than the page; no table is wider
than the viewport (so none needs its sideways scroll at these widths); the page itself never scrolls sideways; no
text is set below 12 px. ``--screenshots DIR`` also writes full-page PNGs (``<name>_<width>.png``) to look at.

Exit status 0 when every check passes, 1 otherwise (one line per problem), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

MIN_FONT_PX = 12
MARKER = "__diffusion_es_check__"

# runs in the page after the load event; writes its findings as JSON into a <pre> that --dump-dom prints
_PROBE = """
<script>
window.addEventListener('load', () => {
  const vw = document.documentElement.clientWidth;
  const box = e => e.getBoundingClientRect();
  const imgs = [...document.images].map((im, k) => ({k, alt: im.alt, complete: im.complete,
    nw: im.naturalWidth, nh: im.naturalHeight, w: box(im).width, right: box(im).right}));
  const tables = [...document.querySelectorAll('table')].map((t, k) => ({k, width: box(t).width,
    right: box(t).right, head: (t.rows[0] ? t.rows[0].innerText : '').slice(0, 60)}));
  let minFont = 1e9, minFontTag = '';
  for (const el of document.body.querySelectorAll('*')) {
    if (el.id === '%(marker)s' || !el.childNodes.length) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const f = parseFloat(getComputedStyle(el).fontSize);
    if (f < minFont) { minFont = f; minFontTag = el.tagName.toLowerCase(); }
  }
  const out = {vw, scrollWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight, imgs, tables, minFont, minFontTag};
  const pre = document.createElement('pre');
  pre.id = '%(marker)s';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""" % {"marker": MARKER}


def find_chromium():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "chromium-headless-shell",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


# ---- static checks ------------------------------------------------------------------------------------------------
class _Scan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.imgs, self.tables, self.viewport = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables.append(list(self.stack))
        elif tag == "meta" and a.get("name") == "viewport":
            self.viewport = True
        if tag not in ("img", "meta", "br", "hr", "link", "input"):
            self.stack.append((tag, a.get("class", "")))

    def handle_endtag(self, tag):
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k][0] == tag:
                del self.stack[k:]
                break


def png_size(data: bytes):
    """(width, height) of a PNG, or None if ``data`` is not one."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def static_problems(text: str) -> list:
    scan = _Scan()
    scan.feed(text)
    out = []
    for k, a in enumerate(scan.imgs):
        src = a.get("src", "")
        m = re.match(r"data:image/png;base64,(.*)$", src, re.S)
        if not m:
            out.append(f"image {k} ({a.get('alt', '')!r}): not an inlined PNG data URI ({src[:40]!r})")
            continue
        try:
            size = png_size(base64.b64decode(m.group(1), validate=True))
        except ValueError:
            size = None
        if not size or 0 in size:
            out.append(f"image {k} ({a.get('alt', '')!r}): data URI does not decode to a PNG with a non-zero size")
    for k, stack in enumerate(scan.tables):
        if not stack or stack[-1][0] != "div" or "table-wrap" not in stack[-1][1].split():
            out.append(f"table {k}: not inside its scrolling box <div class='table-wrap'>")
    if not scan.viewport:
        out.append("no <meta name='viewport'>: phones lay the page out 980 px wide and shrink it")
    return out


# ---- browser checks -----------------------------------------------------------------------------------------------
def _chromium_args(chromium: str, profile: str, width: int, height: int) -> list:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--mute-audio", f"--user-data-dir={profile}", f"--window-size={width},{height}"]


def probe(chromium: str, page: Path, width: int, timeout: float = 120.0) -> dict:
    """Load a copy of ``page`` with the probe script at ``width`` px and return its findings."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / page.name
        text = page.read_text(encoding="utf-8")
        copy.write_text(text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE,
                        encoding="utf-8")
        args = _chromium_args(chromium, str(Path(tmp) / "profile"), width, 1000)
        res = subprocess.run(args + ["--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                             capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="%s">(.*?)</pre>' % MARKER, res.stdout, re.S)
    if not m:
        raise RuntimeError(f"chromium gave no probe result for {page} at {width} px (exit {res.returncode}): "
                           f"{res.stderr.strip().splitlines()[-1:] or ''}")
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def screenshot(chromium: str, page: Path, width: int, height: int, out: Path, timeout: float = 120.0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        args = _chromium_args(chromium, str(Path(tmp) / "profile"), width, height)
        subprocess.run(args + [f"--screenshot={out}", page.resolve().as_uri()], capture_output=True,
                       timeout=timeout, check=True)


def browser_problems(found: dict, width: int) -> list:
    out = []
    for im in found["imgs"]:
        name = f"image {im['k']} ({im['alt']!r}) at {width} px"
        if not im["complete"] or im["nw"] <= 0 or im["nh"] <= 0:
            out.append(f"{name}: did not load (natural size {im['nw']}x{im['nh']})")
        elif im["right"] > found["vw"] + 0.5:
            out.append(f"{name}: wider than the page (right edge {im['right']:.0f} > {found['vw']} px)")
    for t in found["tables"]:
        if t["right"] > found["vw"] + 0.5:
            out.append(f"table {t['k']} ({t['head']!r}) at {width} px: {t['width']:.0f} px wide, past the "
                       f"viewport ({found['vw']} px)")
    if found["scrollWidth"] > found["vw"]:
        out.append(f"page at {width} px scrolls sideways ({found['scrollWidth']} > {found['vw']} px)")
    if found["minFont"] < MIN_FONT_PX:
        out.append(f"text at {found['minFont']} px (<{found['minFontTag']}>) at {width} px: below {MIN_FONT_PX} px")
    return out


def check(page: Path, widths=(1400, 800), static_only: bool = False, screenshots=None, chromium=None) -> dict:
    """All checks for one page: ``{"page", "static", "browser": {width: findings}, "problems": [...]}``."""
    text = page.read_text(encoding="utf-8")
    result = {"page": str(page), "problems": static_problems(text), "browser": {}, "chromium": None}
    chromium = None if static_only else (chromium or find_chromium())
    if chromium:
        result["chromium"] = chromium
        for w in widths:
            found = probe(chromium, page, w)
            result["browser"][w] = {k: found[k] for k in ("vw", "scrollWidth", "height", "minFont")}
            result["browser"][w].update(images=len(found["imgs"]), tables=len(found["tables"]))
            result["problems"] += browser_problems(found, w)
            if screenshots:
                Path(screenshots).mkdir(parents=True, exist_ok=True)
                shot = Path(screenshots) / f"{page.stem}_{w}.png"
                screenshot(chromium, page, w, int(found["height"]) + 20, shot)
                result["browser"][w]["screenshot"] = str(shot)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+", type=Path, help="HTML reports to check")
    ap.add_argument("--width", type=int, action="append", help="viewport width in px (repeatable; default 1400, 800)")
    ap.add_argument("--static", action="store_true", help="only the static checks, even if Chromium is installed")
    ap.add_argument("--screenshots", type=Path, help="write full-page screenshots here")
    ap.add_argument("--json", action="store_true", help="print the findings as JSON")
    a = ap.parse_args(argv)
    missing = [p for p in a.pages if not p.is_file()]
    if missing:
        print(f"check_html: error: {missing[0]}: no such file", file=sys.stderr)
        return 2
    results = [check(p, tuple(a.width or (1400, 800)), a.static, a.screenshots) for p in a.pages]
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            how = f"in {r['chromium']} at {', '.join(f'{w} px' for w in r['browser'])}" if r["chromium"] else \
                "static checks only (no Chromium)"
            verdict = f"{len(r['problems'])} problem(s)" if r["problems"] else "ok"
            print(f"{r['page']}: {verdict} ({how})")
            for line in r["problems"]:
                print(f"  - {line}")
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
