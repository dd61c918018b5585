"""The HTML reports as pages people open: figures inlined and decodable, tables in their scrolling box, a viewport,
anchors and a contents list; and, when Chromium is installed, the same page rendered headless
(``scripts/check_html.py``): every image loaded with a non-zero natural size, no table wider than the viewport, no
sideways scroll, no tiny text. Without Chromium the static half still runs on the committed reports and on freshly
rendered blocks."""

import importlib.util
import re
from pathlib import Path

import pytest

from diffusion_es.experiments.report import TOC_MIN_HEADINGS, render_html

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGES = [ROOT / "docs" / "repro" / "report.html", ROOT / "docs" / "compare" / "compare.html",
              ROOT / "docs" / "repro_mnist" / "report.html", ROOT / "docs" / "compare_mnist" / "compare.html"]

_spec = importlib.util.spec_from_file_location("check_html", ROOT / "scripts" / "check_html.py")
check_html = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_html)
CHROMIUM = check_html.find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium): "
                                                             "browser checks skipped, static checks still run")


def _png(path: Path, w=320, h=120) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(w / 80, h / 80), dpi=80)
    plt.plot([0, 1, 2], [1, 0, 1])
    fig.savefig(path)
    plt.close(fig)


def _blocks(wide_cols=12):
    wide = [[f"column {j} with a long header" for j in range(wide_cols)]]
    wide += [[f"{1000 * i + j:.3f} → {1000 * i + j + 0.5:.3f} (λ 1.0{j}, +1.2 % [-3.4, +5.6])"
              for j in range(wide_cols)] for i in range(3)]
    return [("h1", "A report"), ("p", "Lead paragraph with `code` and **bold**."),
            ("h2", "First section"), ("p", "text"), ("table", [["a", "b"], [1, 2]]),
            ("h3", "A sub-section"), ("img", "fig.png", "a figure"),
            ("h2", "Wide table"), ("table", wide),
            ("h2", "First section"),  # a repeated title still gets its own anchor
            ("p", "end")]


@pytest.fixture
def page(tmp_path):
    _png(tmp_path / "fig.png")
    p = tmp_path / "report.html"
    p.write_text(render_html(_blocks(), tmp_path, "t"))
    return p


def test_rendered_page_passes_the_static_checks(page):
    text = page.read_text()
    assert check_html.static_problems(text) == []
    # the wrapper the checks look for, anchors unique, a contents list for a page with enough headings
    assert text.count("<div class='table-wrap'><table>") == 2
    ids = re.findall(r"<h[23] id='([^']+)'", text)
    assert len(ids) == len(set(ids)) == 4 >= TOC_MIN_HEADINGS
    toc = re.search(r"<nav class='toc'>.*?</nav>", text).group(0)
    assert all(f"href='#{i}'" in toc for i in ids)
    assert text.index("<nav class='toc'>") < text.index("<h2")  # after the title and lead, before the first section


def test_short_page_has_no_contents_list(tmp_path):
    text = render_html([("h1", "T"), ("h2", "Only"), ("p", "x")], tmp_path)
    assert "<nav" not in text and check_html.static_problems(text) == []


@pytest.mark.parametrize("page_path", DOCS_PAGES, ids=lambda p: p.name)
def test_committed_reports_pass_the_static_checks(page_path):
    text = page_path.read_text(encoding="utf-8")
    assert check_html.static_problems(text) == []


def test_static_checks_catch_what_a_reader_would_trip_over():
    bad = ("<html><body><img alt='linked' src='fig.png'><img alt='broken' src='data:image/png;base64,AAAA'>"
           "<table><tr><td>x</td></tr></table></body></html>")
    problems = check_html.static_problems(bad)
    assert any("'linked'" in p and "not an inlined PNG" in p for p in problems)
    assert any("'broken'" in p and "does not decode" in p for p in problems)
    assert any(p.startswith("table 0: not inside") for p in problems)
    assert any("viewport" in p for p in problems)


def test_png_size_reads_the_header(tmp_path):
    _png(tmp_path / "f.png", 160, 80)
    assert check_html.png_size((tmp_path / "f.png").read_bytes()) == (160, 80)
    assert check_html.png_size(b"GIF89a" + bytes(30)) is None


def test_cli_static_mode_and_bad_usage(page, capsys):
    assert check_html.main([str(page), "--static"]) == 0
    assert "ok (static checks only" in capsys.readouterr().out
    assert check_html.main([str(page.parent / "missing.html")]) == 2


@needs_chromium
def test_page_in_a_headless_browser(page):
    """Rendered for real: the figure loads, the 12-column table scrolls inside its box at 800 px (so the page does
    not), and the same table without its box is caught spilling past the viewport."""
    r = check_html.check(page, widths=(800,))
    found = r["browser"][800]
    assert found["images"] == 1 and found["tables"] == 2
    wide = [p for p in r["problems"] if "past the viewport" in p]
    # the wide table is wider than 800 px: reported as a table past the viewport, but the page does not scroll
    assert len(wide) == 1 and "table 1" in wide[0]
    assert not any("scrolls sideways" in p or "image" in p or "text at" in p for p in r["problems"])
    # without the box the page itself spills sideways
    unboxed = page.parent / "unboxed.html"
    unboxed.write_text(page.read_text().replace("<div class='table-wrap'>", "<div>"))
    r2 = check_html.check(unboxed, widths=(800,))
    assert any("scrolls sideways" in p for p in r2["problems"])


@needs_chromium
def test_committed_compare_report_in_a_headless_browser():
    r = check_html.check(DOCS_PAGES[1], widths=(1400,))
    assert r["problems"] == [], r["problems"]
