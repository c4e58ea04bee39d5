"""The one ``mode="auto"`` decision: ``"fused"`` (the basis op) or ``"weight"`` (one dense conv
of the rebuilt weight) for a layer geometry on a device.

Order: measured timings passed in (e.g. the search's own per-layer timings) > the tuning cache
(``tritonbasis tune`` / :func:`tritonbasis.tune`, in-memory after the first read) > a cost model
calibrated per device type. :class:`~tritonbasis.BasisConv2d` calls this once per (device type,
input shape) and remembers the answer; :func:`tritonbasis.convert` and :func:`tritonbasis.tune`
resolve layers up front.
"""

from __future__ import annotations

import torch

from ..op import tune_cache
from ..op.geometry import MAX_BASIS_CHANNELS, dense_macs, forward_macs

__all__ = [
    "CPU_MIN_BASIS",
    "CPU_SAVED_MACS_X_CB",
    "FUSED_EFFICIENCY",
    "MIN_FUSED_PIXELS",
    "decide",
    "decide_per_pixel",
    "from_timings",
]

# CUDA (unchanged rule): the fused kernel must do clearly fewer MACs than the dense conv to pay
# for running at a lower fraction of peak than cuDNN: we assume >= 60% of cuDNN's efficiency, so
# fused wins when fused_MACs < 0.6 x dense_MACs. Below ~2k output pixels a launch is mostly
# fixed cost and the single dense conv of weight modification wins.
FUSED_EFFICIENCY = 0.6
MIN_FUSED_PIXELS = 2048

# CPU (fitted on the 2-core CI machine, torch 2.15, fwd+bwd at batch 64 of resnet18_cifar layer
# shapes, widths 0.125-1, images 8-32 px, C_b = C_out/4; numbers in bench/NOTES.md, "mode=auto
# on CPU"). The basis path is two convs plus a cat: ~0.3-0.5 ms more fixed cost than one dense
# conv, and its C_b-filter conv runs oneDNN at a poor rate when C_b is small. Measured: fused
# wins only with C_b >= 8 and a saving of at least ~256M/C_b MACs per call (C_b=16: 16M, e.g.
# 64->64 3x3 at 4x4 px, batch 64: fused 1.80 ms vs weight 2.05 ms; C_b=8 at 27.5M saved: weight
# 2.14 vs fused 2.36 ms). Every stem / C_b <= 4 layer measured slower fused (up to 5x).
# `python bench/cpu_modes.py` scores the rule against the current CPU path (bench/NOTES.md,
# "mode=auto on CPU, re-scored"): its picks sum to +1.9 % over the per-shape best fwd+bwd;
# its misses are weight picks where fused wins (1x1 downsamples at C_b = 128, small C_b = 32
# layers, the 3->64 stem at 32 px).
CPU_MIN_BASIS = 8
CPU_SAVED_MACS_X_CB = 256e6
# Per-pixel rule on CPU (no input shape known): fused only for C_b >= 32, where even one 1x1 px
# call at batch 64 measured faster fused (64->128: 1.04 vs 1.21 ms); otherwise weight, the safe
# side (weight is never much slower than dense).
CPU_PER_PIXEL_MIN_BASIS = 32


def from_timings(timings) -> str | None:
    """``"fused"``/``"weight"`` from measured ``{"fused": ms, "weight": ms}``, or None when
    ``timings`` is None or lacks either number. A tie goes to fused (as ``tritonbasis tune``)."""
    if not timings:
        return None
    f, w = timings.get("fused"), timings.get("weight")
    if f is None or w is None:
        return None
    return "fused" if f <= w else "weight"


def _macs_pp(C_in, C_b, C_rest, KH, KW, C_out) -> tuple[int, int]:
    """MACs per output pixel: (fused, dense)."""
    return forward_macs(C_in, C_b, C_rest, KH, KW)["fused"], dense_macs(C_in, C_out, KH, KW)


def _model(device_type: str, C_in, C_b, C_rest, C_out, KH, KW, pixels) -> str:
    """The calibrated cost model; ``pixels`` = output pixels of the call (N*Ho*Wo), or None
    when unknown or symbolic (then a per-pixel rule)."""
    fused_pp, dense_pp = _macs_pp(C_in, C_b, C_rest, KH, KW, C_out)
    if fused_pp >= FUSED_EFFICIENCY * dense_pp:
        return "weight"  # no real saving (stems with C_in*k^2 < C_b, C_b close to C_out)
    if device_type == "cuda":
        # a model exported for any batch is exported for large ones: fused
        return "weight" if pixels is not None and pixels < MIN_FUSED_PIXELS else "fused"
    if device_type == "cpu":
        if pixels is None:
            return "fused" if C_b >= CPU_PER_PIXEL_MIN_BASIS else "weight"
        saved = pixels * (dense_pp - fused_pp)
        if C_b >= CPU_MIN_BASIS and saved * C_b >= CPU_SAVED_MACS_X_CB:
            return "fused"
        return "weight"
    return "fused"  # other devices: the FLOP rule only (nothing measured there)


def _has_symbolic(g) -> bool:
    return any(not isinstance(v, int) for v in (g.N, g.H, g.W, g.Ho, g.Wo))


def decide(g, device="cpu", timings=None) -> str:
    """``"fused"`` or ``"weight"`` for one call geometry ``g`` (a ConvGeometry) on ``device``.

    ``timings`` (``{"fused": ms, "weight": ms}``) win; then the tuning cache's measured mode for
    this shape and device; then the cost model. ``C_b`` above the fused kernel's limit on CUDA
    is always ``"weight"`` (the kernel cannot run it).

    Under torch.export / torch.compile with a dynamic batch (or size), N (H, W) are symbolic:
    any comparison on them becomes a guard that the export's range violates, so the decision
    then uses static numbers only (the per-pixel rule) and no cache lookup."""
    device = torch.device(device)
    if device.type == "cuda" and g.C_b > MAX_BASIS_CHANNELS:
        return "weight"  # the fused kernel holds C_b in one tile; cuDNN does the rest
    measured = from_timings(timings)
    if measured is not None:
        return measured
    symbolic = _has_symbolic(g)
    measured = None if symbolic else tune_cache.lookup_mode(g, device)
    if measured is not None:
        return measured
    return _model(
        device.type, g.C_in, g.C_b, g.C_rest, g.C_out, g.KH, g.KW, None if symbolic else g.pixels
    )


def decide_per_pixel(
    C_in: int, C_out: int, C_b: int, kernel, keep_basis: bool, device="cpu"
) -> str:
    """The decision when the input size is unknown (``tritonbasis.convert`` without
    ``input_shape``): the cost model's per-pixel rule."""
    device = torch.device(device)
    KH, KW = kernel
    if device.type == "cuda" and C_b > MAX_BASIS_CHANNELS:
        return "weight"
    C_rest = C_out - C_b if keep_basis else C_out
    return _model(device.type, C_in, C_b, C_rest, C_out, KH, KW, None)
