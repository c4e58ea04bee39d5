"""Deploying a converted model: ONNX, ``torch.export`` + AOTInductor, or merged back to dense.

The registered op ``tritonbasis::basis_conv2d`` is ours, so no runtime outside this package
knows it. For deployment it is lowered to standard ops that keep the factorization (and so the
FLOP saving), per layer:

* ``Conv(x, basis)`` -> Z (C_b channels; the only k x k conv),
* a 1x1 ``Conv(Z, coeff)`` -> the combined channels,
* keep-basis form: ``Concat(Z, combined)``; then the output permutation (keep-basis
  conversions of trained convs keep the original channel order) as one ``Gather`` on the
  channel axis with constant indices, and the bias as one ``Add``;
* full form: the permutation and the bias are folded into the 1x1 Conv's weight rows and bias
  (two Convs, nothing else).

How each route gets there:

* **ONNX** -- plain ``torch.onnx.export(model, (x,))`` works (the dynamo-based exporter, default
  since torch 2.9, and the legacy ``dynamo=False`` one): while ``torch.onnx.is_in_onnx_export()``
  is True, :func:`tritonbasis.basis_conv2d` traces :func:`basis_conv2d_standard_ops` instead of
  the custom op (a small hook in ``functional.py``). :func:`export_onnx` wraps it with
  clear errors for missing packages and an optional ``mode`` override. An already exported
  ``ExportedProgram`` that contains the op goes through :func:`decompose` first.
* **AOTInductor** -- :func:`aoti_package` = ``torch.export.export`` +
  ``torch._inductor.aoti_compile_and_package``. By default the package calls the registered op
  (the Triton kernels on CUDA), which is a Python custom op: the loading process must
  ``import tritonbasis`` first (:func:`aoti_load` does), and it cannot run from C++ alone.
  ``self_contained=True`` lowers the op to the standard ops above first: a self-contained package
  (Inductor compiles the convs; loadable without tritonbasis, also from C++), without our fused
  kernels.
* **Merged** -- :func:`tritonbasis.merge` folds every layer back into one dense ``Conv2d``
  (exact to rounding): any runtime, no FLOP saving.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..op.geometry import saves_z
from ..op.reference import basis_conv2d_standard_ops, inverse_permutation, merged_weight

__all__ = [
    "aoti_load",
    "aoti_package",
    "basis_conv2d_standard_ops",
    "decompose",
    "export_onnx",
    "inverse_permutation",
    "merged_weight",
]

# What `pip install "tritonbasis[onnx]"` brings; torch.onnx.export (dynamo) needs onnxscript
# (and onnx, which it imports); onnxruntime is what we check the exported graphs with.
ONNX_PACKAGES = ("onnx", "onnxscript")


def _require(modules: Sequence[str], what: str) -> None:
    import importlib.util

    from ..util.extras import MissingExtraError, install_hint

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs the [onnx] extra ({', '.join(missing)} not installed): "
            f"{install_hint('onnx')}",
            name=missing[0],
        )


def _op_decomposition(x, basis, coeff, bias, perm, stride, padding, dilation, keep_basis, need_z):
    """``tritonbasis::basis_conv2d`` -> standard aten ops (for ``run_decompositions``)."""
    y = basis_conv2d_standard_ops(
        x, basis, coeff, bias, stride, padding, dilation, keep_basis, perm
    )
    # the op's second output (used only by its backward), as the op decides it
    if saves_z(keep_basis, bias is not None, x.dtype, need_z, x.device.type == "cpu"):
        return y, F.conv2d(x, basis, None, list(stride), list(padding), list(dilation))
    return y, x.new_empty(0)


def decompose(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """An ``ExportedProgram`` with every ``tritonbasis::basis_conv2d`` replaced by
    :func:`basis_conv2d_standard_ops` (standard aten convs, cat, index_select, add); other ops
    are left as they are. Use it before ``torch.onnx.export(ep)``, for a self-contained
    AOTInductor package, or for any runtime that takes aten graphs."""
    return ep.run_decompositions({torch.ops.tritonbasis.basis_conv2d.default: _op_decomposition})


# --------------------------------------------------------------------------------------------
# ONNX


@contextlib.contextmanager
def _layer_modes(model: nn.Module, mode: str | None):
    """Temporarily set every BasisConv2d's ``mode`` (None: leave them)."""
    from ..nn.layer import BasisConv2d

    if mode is None:
        yield
        return
    if mode not in ("fused", "weight", "auto"):
        raise ValueError(f"mode must be 'fused', 'weight', 'auto' or None, got {mode!r}")
    layers = [m for m in model.modules() if isinstance(m, BasisConv2d)]
    saved = [m.mode for m in layers]
    try:
        for m in layers:
            m.mode = mode
        yield
    finally:
        for m, s in zip(layers, saved):
            m.mode = s


def export_onnx(
    model: nn.Module,
    args: tuple,
    path: str | os.PathLike | None = None,
    *,
    mode: str | None = "fused",
    dynamic_batch: bool = False,
    **kwargs,
):
    """``torch.onnx.export`` of a (converted) model, keeping the factorization.

    Plain ``torch.onnx.export(model, args, path)`` does the same (see the module docstring);
    this adds:

    * ``mode``: what every BasisConv2d exports as, for the duration of the export.
      ``"fused"`` (default): factorized (Conv over the basis + 1x1 Conv ...), whatever the
      layer's own setting. ``"auto"``: each layer's cost-model choice for the example input's
      device (``"weight"`` where the fused form saves too little). ``"weight"``: one dense Conv
      per layer (like :func:`tritonbasis.merge`). ``None``: each layer's own ``mode``.
    * ``dynamic_batch=True``: the first input's batch dimension is dynamic (dynamo exporter).
    * a clear ImportError when onnx/onnxscript are missing.

    ``kwargs`` go to ``torch.onnx.export`` (e.g. ``opset_version``, ``dynamo=False``,
    ``dynamic_shapes``). Returns what it returns (an ``ONNXProgram`` with the default dynamo
    exporter). The model is exported in eval mode and left in its previous mode.
    """
    dynamo = kwargs.get("dynamo", True)
    _require(ONNX_PACKAGES if dynamo else ("onnx",), "torch.onnx.export")
    if not isinstance(args, tuple):
        args = (args,)
    if dynamic_batch:
        if not dynamo:
            raise ValueError(
                "dynamic_batch=True needs the dynamo exporter (dynamo=True); "
                "with dynamo=False pass dynamic_axes"
            )
        if "dynamic_shapes" in kwargs:
            raise ValueError("pass either dynamic_batch=True or dynamic_shapes, not both")
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = ({0: batch},) + (None,) * (len(args) - 1)
    if dynamo:
        kwargs.setdefault("verbose", False)
    was_training = model.training
    model.eval()
    try:
        with _layer_modes(model, mode), torch.no_grad():
            return torch.onnx.export(
                model, args, None if path is None else os.fspath(path), **kwargs
            )
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# AOTInductor


def aoti_package(
    model: nn.Module,
    args: tuple,
    path: str | os.PathLike,
    *,
    self_contained: bool = False,
    dynamic_shapes=None,
    inductor_configs: dict | None = None,
) -> str:
    """``torch.export.export`` + ``torch._inductor.aoti_compile_and_package``: a ``.pt2``
    package of the model for ``args`` (eval mode, no grad). Returns the package's path.

    ``self_contained=False`` (default): the package calls ``tritonbasis::basis_conv2d`` (our
    Triton kernels on CUDA, the PyTorch path on CPU); load it with :func:`aoti_load` (Python,
    with tritonbasis installed). ``self_contained=True``: the op is lowered to standard convs
    first (:func:`decompose`): loadable without tritonbasis (also from C++), without the fused
    kernels.
    """
    if not isinstance(args, tuple):
        args = (args,)
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"an AOTInductor package path must end in .pt2, got {path!r}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
            if self_contained:
                ep = decompose(ep)
            return torch._inductor.aoti_compile_and_package(
                ep, package_path=path, inductor_configs=inductor_configs or {}
            )
    finally:
        model.train(was_training)


def aoti_load(path: str | os.PathLike):
    """Load a package written by :func:`aoti_package` (registers ``torch.ops.tritonbasis.*``
    first, which a package made with ``self_contained=False`` needs). Returns a callable."""
    from ..op import registry as ops  # noqa: F401  (registers the op before the package resolves it)

    return torch._inductor.aoti_load_package(os.fspath(path))
