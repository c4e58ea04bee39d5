"""The optional extras and the one error for a missing one.

The core (the op, ``BasisConv2d``, ``convert`` / ``merge`` and the deploy paths) needs torch
alone (triton when present). The search, training, data and the ``demo`` / ``train`` /
``search`` commands need the ``[search]`` extra; the search's plots the ``[plots]`` extra;
ONNX export the ``[onnx]`` extra. ``EXTRAS`` maps each extra to the modules it provides (their
import names; pyproject.toml lists the distributions, tests/project/test_dependencies.py keeps
the two in step).
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "EXTRAS",
    "MissingExtraError",
    "extra_of",
    "install_hint",
    "message",
    "missing",
    "require",
]

EXTRAS: dict[str, tuple[str, ...]] = {
    "search": ("numpy", "scipy", "sklearn", "tqdm", "torchvision"),
    "plots": ("matplotlib",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}


class MissingExtraError(ModuleNotFoundError):
    """A feature used without the extra that provides its dependencies."""


def install_hint(extra: str) -> str:
    return f'pip install "tritonbasis[{extra}]"'


def extra_of(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted import name), or None."""
    top = (module or "").split(".")[0]
    for extra, mods in EXTRAS.items():
        if top in mods:
            return extra
    return None


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found, not imported)."""
    out = []
    for m in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(m)
    return out


def message(what: str, extra: str) -> str:
    return f"{what} needs the [{extra}] extra: {install_hint(extra)}"


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` (one line naming the extra) unless every module of
    ``extra`` can be imported."""
    gone = missing(extra)
    if gone:
        raise MissingExtraError(message(what, extra), name=gone[0])
