"""The package's layers, checked from the source: imports only point down, and no module imports itself back.

Every import counts, including the lazy ones inside functions (they are still dependencies). Layers, bottom first:

0. base: ``errors``, ``hashing``, ``version``, ``progress``, ``heap`` (the process heap); then ``io`` (file formats),
   ``distributed`` (the process-group protocol); then ``store`` (resumable parts and shards). They know nothing
   about diffusion.
1. ``core``: schedules, parameterisations, Epsilon Scaling;
2. ``data``, ``samplers``;
3. ``diagnostics``, ``metrics``;
4. ``models``; 5. ``training``; 6. ``experiments``; 7. ``adapters``; 8. ``cli``;
9. the package's public API (``diffusion_es/__init__.py``) and ``__main__``.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "diffusion_es"
LAYERS = [
    {"errors", "hashing", "version", "progress", "heap", "devices"},
    {"io", "distributed"},
    {"store"},
    {"core"},
    {"data", "samplers"},
    {"diagnostics", "metrics"},
    {"models"},
    {"training"},
    {"experiments"},
    {"adapters"},
    {"cli"},
    {"__init__", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules():
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        name = ".".join(["diffusion_es"] + (parts[:-1] if is_pkg else parts))
        yield name, is_pkg, p


def _imports(name: str, is_pkg: bool, path: Path):
    """Absolute names of the diffusion_es modules this file imports (any depth, any place in the file)."""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - (node.level - 1)]
                target = ".".join(root + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("diffusion_es"):
                out.add(target)
                # `from .pkg import sub` imports the submodule pkg.sub when there is one
                for a in node.names:
                    cand = f"{target}.{a.name}"
                    if (SRC / Path(*cand.split(".")[1:])).with_suffix(".py").exists() or \
                            (SRC / Path(*cand.split(".")[1:]) / "__init__.py").exists():
                        out.add(cand)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("diffusion_es")}
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: _imports(name, is_pkg, p) for name, is_pkg, p in _modules()}


def test_every_top_level_unit_has_a_layer():
    units = {_unit(m) for m in GRAPH}
    assert units <= set(LAYER), f"place these in LAYERS: {sorted(units - set(LAYER))}"


def test_imports_only_point_down():
    upward = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                    if _unit(b) != _unit(a) and LAYER[_unit(b)] >= LAYER[_unit(a)])
    assert not upward, "imports that point up or sideways across units:\n" + "\n".join(upward)


def _cycle(graph: dict):
    """One cycle of a directed graph as a list of nodes, or None (iterative DFS with colours)."""
    colour, parent = {}, {}
    for start in graph:
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                continue
            if nxt not in graph:
                continue
            if colour.get(nxt) == 1:  # back edge: a cycle nxt -> ... -> node -> nxt
                path, cur = [], node
                while cur != nxt:
                    path.append(cur)
                    cur = parent[cur]
                return [nxt] + path[::-1] + [nxt]
            if not colour.get(nxt):
                colour[nxt], parent[nxt] = 1, node
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
    return None


def test_no_import_cycles_between_modules():
    cyc = _cycle({a: deps - {a} for a, deps in GRAPH.items()})
    assert cyc is None, "import cycle: " + " -> ".join(cyc)


def test_no_import_cycles_between_units():
    units = {}
    for a, deps in GRAPH.items():
        units.setdefault(_unit(a), set()).update(_unit(b) for b in deps if _unit(b) != _unit(a))
    cyc = _cycle(units)
    assert cyc is None, "import cycle between packages: " + " -> ".join(cyc)


@pytest.mark.parametrize("graph,has_cycle", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                             ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
                                             ({"a": {"a"}}, True)])
def test_the_cycle_finder_itself(graph, has_cycle):
    assert (_cycle(graph) is not None) == has_cycle
