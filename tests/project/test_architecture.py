"""The package's layering (docs/architecture.md), checked on the source: every import of every
module under ``tritonbasis/`` (module level and inside functions), resolved to the module it
names.

* Layers import downwards only: ``cli`` > ``perf`` > ``recipes`` > ``conversion`` > ``nn`` >
  ``op`` > ``kernels``, with ``util`` under all of them. The public surface (the top-level
  ``__init__`` and the public-path modules ``tritonbasis.data`` etc.) may import any layer.
* No import cycles between modules, not even through an import inside a function.
* No module longer than ~600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "tritonbasis"
KERNELS = PKG.parent / "kernels"

# rank: a module may import modules of its own rank or lower
LAYERS = {
    "util": 0,
    "kernels": 1,
    "op": 2,
    "nn": 3,
    "conversion": 4,
    "recipes": 5,
    "perf": 6,
    "cli": 7,
}
API = 8  # tritonbasis/__init__.py, __main__.py and the public-path aliases
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = ["tritonbasis", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    for path in sorted(KERNELS.glob("*.py")):
        name = "tritonbasis.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")
        mods[name] = path
    return mods


MODULES = _modules()


def _layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        return API
    return LAYERS[parts[1]]


def _imports(mod: str, path: Path) -> set[str]:
    """Modules of tritonbasis that ``mod`` imports (a ``from X import name`` counts as an
    import of ``X.name`` when that is a module, else of ``X``)."""
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [
                f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                for a in node.names
            ]
        else:
            continue
        for n in names:
            if n.split(".")[0] != "tritonbasis":
                continue
            while n not in MODULES and "." in n:  # `import tritonbasis.op.registry.x` etc.
                n = n.rpartition(".")[0]
            if n in MODULES and n != mod:
                out.add(n)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_scan_sees_the_package():
    assert "tritonbasis.op.registry" in MODULES and "tritonbasis.nn.layer" in MODULES
    assert "tritonbasis.op.geometry" in GRAPH["tritonbasis.op.registry"]
    # a function-level import is seen too
    assert any("tritonbasis.op.launchers" in GRAPH[m] for m in GRAPH)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_go_down_the_layers(mod):
    up = sorted(t for t in GRAPH[mod] if _layer(t) > _layer(mod))
    assert not up, f"{mod} (layer {_layer(mod)}) imports upwards: {up}"


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in GRAPH:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own submodules, which import the package, is how
    # Python packages work: only cycles between two modules that are not each other's package
    # are cycles here
    cycles = []
    for comp in sccs:
        if len(comp) < 2:
            continue
        real = [m for m in comp if not any(o != m and o.startswith(m + ".") for o in comp)]
        if len(real) > 1:
            cycles.append(sorted(comp))
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_modules_stay_readable(mod):
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, (
        f"{mod} has {n} lines (> {MAX_LINES}): split it where the pieces have names"
    )


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages (kernels/ is mapped in); a new subpackage missing
    there is left out of wheels while editable installs and the tests still work."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(
        tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(("tritonbasis", *p.parent.relative_to(PKG).parts))
        for p in PKG.rglob("__init__.py")
    } | {"tritonbasis.kernels"}
    assert listed == on_disk, (
        f"missing: {sorted(on_disk - listed)}, stale: {sorted(listed - on_disk)}"
    )
