"""The package's layers: nothing imports upward and the import graph has no loop, counting imports
inside functions too (docs/DESIGN.md section 2)."""

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
# Lowest first. Leaves import nothing of the project but other leaves.
LAYERS = {"errors": 0, "dtypes": 0, "provenance": 0, "cli_args": 0, "configs": 0, "registry": 0,
          "ops": 1, "models": 2, "decode": 3, "bench": 4, "doctor": 5, "cli": 5}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (a name imported from a package
    counts as its submodule when there is one)."""
    edges = {}
    for name, path in mods.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ttt_decode"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("ttt_decode")}
        edges[name] = out - {name}
    return edges


def _layer(module: str) -> int:
    parts = module.split(".")
    assert len(parts) > 1 and parts[1] in LAYERS, f"{module}: no layer assigned in tests/test_layout.py"
    return LAYERS[parts[1]]


def test_every_module_has_a_layer_and_nothing_imports_upward():
    mods = _modules()
    edges = _imports(mods)
    upward = sorted(f"{a} -> {b}" for a, bs in edges.items() if a != "ttt_decode" for b in bs
                    if b != "ttt_decode" and _layer(b) > _layer(a))
    assert not upward, upward


def test_no_import_loop():
    mods = _modules()
    edges = _imports(mods)
    seen, stack, loops = set(), [], []

    def visit(m):
        if m in stack:
            loops.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if n in mods:
                visit(n)
        stack.pop()

    for m in sorted(mods):
        visit(m)
    assert not loops, [" -> ".join(loop) for loop in loops]
