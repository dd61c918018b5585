"""The Python examples in README.md and docs/*.md: every import they make resolves, and every name they use is
imported or defined on the page before it is used (a page's blocks are read top to bottom), or is one of the
objects the reader brings (their network, pipeline, images ...: ``BROUGHT``)."""

import ast
import builtins
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# what an example assumes the reader has: their own model, pipeline, data
BROUGHT = {"my_eps_net", "my_velocity_net", "pipe", "flux_pipe", "prompt", "net", "sigmas", "model", "diffusion",
           "kw", "shape", "extractor", "images"}


def blocks(page: Path):
    text = page.read_text()
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        yield text[:m.start()].count("\n") + 2, m.group(1)


def test_there_are_examples():
    assert sum(1 for p in PAGES for _ in blocks(p)) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_use_only_what_they_import(page):
    known = set(dir(builtins)) | BROUGHT
    for line, code in blocks(page):
        tree = ast.parse(code, filename=f"{page.name}:{line}")
        used = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    known.add((a.asname or a.name).split(".")[0])
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusion_es"):
                    mod = importlib.import_module(node.module)
                    missing = [a.name for a in node.names if not hasattr(mod, a.name) and not (
                        hasattr(mod, "__path__") and importlib.util.find_spec(f"{node.module}.{a.name}"))]
                    assert not missing, f"{page.name}:{line}: {node.module} has no {', '.join(missing)}"
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.startswith("diffusion_es"):
                            importlib.import_module(a.name)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                known.add(node.name)
            elif isinstance(node, ast.arg):
                known.add(node.arg)
            elif isinstance(node, ast.Name):
                (known.add(node.id) if isinstance(node.ctx, ast.Store) else used.append(node.id))
        undefined = sorted(set(used) - known)
        assert not undefined, f"{page.name}:{line}: the example uses {', '.join(undefined)} without importing it"
