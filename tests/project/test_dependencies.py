"""Dependencies: the core depends on torch alone; every third-party import is declared in
pyproject.toml; optional ones (an extra's: numpy, torchvision, matplotlib, onnx...) are imported
lazily, except the [search] extra's inside the recipes (which check for it on import); the
extras and tritonbasis.util.extras agree; the torch floor is the oldest torch CI tests; and no
upper cap on torch."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn"}
# Imported but deliberately not declared: triton comes with torch's Linux wheels and the package
# works without it (CPU path; kernels load on first use).
UNDECLARED_OK = {"triton"}
# The recipes are the [search] extra: they may import its modules at module level
# (tritonbasis/recipes/__init__.py raises one clear error when the extra is missing).
EXTRA_FOLDERS = {"search": "tritonbasis/recipes/"}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")


def _imports(folder: str):
    """(top-level module, file, at module level?) of every absolute import outside the
    standard library and the package itself."""
    out = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(f.read_text())
        top_level = {id(n) for n in tree.body}
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                mods = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                mods = [n.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top in sys.stdlib_module_names or top in ("tritonbasis", "__future__"):
                    continue
                out.append((top, f.relative_to(ROOT).as_posix(), id(n) in top_level))
    return out


def test_core_dependencies_are_torch_alone():
    assert [_name(r) for r in _pyproject()["project"]["dependencies"]] == ["torch"]


def test_every_import_is_declared_and_optional_ones_are_lazy():
    meta = _pyproject()["project"]
    core = {_name(r) for r in meta["dependencies"]}
    extras = {e: {_name(r) for r in reqs} for e, reqs in meta["optional-dependencies"].items()}
    optional = set().union(*extras.values()) - core
    found = _imports("tritonbasis") + _imports("kernels")
    assert any(m == "scipy" for m, _, _ in found)  # the scan sees nested imports
    problems = []
    for mod, path, module_level in found:
        dist = DIST.get(mod, mod).lower()
        if mod in UNDECLARED_OK:
            # kernels/ is imported only when a kernel first runs
            if module_level and not path.startswith("kernels/"):
                problems.append(f"{path}: {mod} imported at module level")
        elif dist in optional:
            gated = any(
                dist in extras[e] and path.startswith(folder) for e, folder in EXTRA_FOLDERS.items()
            )
            if module_level and not gated:
                problems.append(f"{path}: optional {dist} imported at module level")
        elif dist not in core:
            problems.append(f"{path}: imports {mod} ({dist}), declared nowhere")
    assert not problems, problems


def test_extras_table_matches_pyproject():
    """tritonbasis.util.extras.EXTRAS (import names, for the one-line error) lists exactly the
    distributions pyproject.toml's extras hold."""
    from tritonbasis.util.extras import EXTRAS

    extras = {
        e: {_name(r) for r in reqs}
        for e, reqs in _pyproject()["project"]["optional-dependencies"].items()
    }
    for extra, modules in EXTRAS.items():
        assert {DIST.get(m, m) for m in modules} == extras[extra], extra


def test_extras():
    extras = {
        e: {_name(r) for r in reqs}
        for e, reqs in _pyproject()["project"]["optional-dependencies"].items()
    }
    assert extras["plots"] == {"matplotlib"}
    assert {"numpy", "scipy", "scikit-learn", "tqdm", "torchvision"} == extras["search"]
    assert {"onnx", "onnxscript", "onnxruntime"} <= extras["onnx"]
    test = " ".join(_pyproject()["project"]["optional-dependencies"]["test"])
    assert "pytest" in extras["test"] and all(e in test for e in ("search", "plots", "onnx"))
    assert {"ruff", "mypy"} <= extras["dev"]


def test_torch_floor_is_the_oldest_ci_stack_and_there_is_no_cap():
    (torch_req,) = [r for r in _pyproject()["project"]["dependencies"] if _name(r) == "torch"]
    (vision_req,) = [
        r
        for r in _pyproject()["project"]["optional-dependencies"]["search"]
        if _name(r) == "torchvision"
    ]
    assert "<" not in vision_req and "==" not in vision_req, vision_req
    assert "<" not in torch_req and "==" not in torch_req and "~=" not in torch_req, torch_req
    floor = re.search(r">=\s*([0-9.]+)", torch_req).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"torch==([0-9.]+)", ci).group(1)
    assert pinned.startswith(floor), f"pyproject floor {floor} vs CI's oldest stack {pinned}"
