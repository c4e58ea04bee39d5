"""What a model costs: parameters, multiply-accumulates per forward pass, and the time of a
training step and an inference forward.

MACs come from ``torch.utils.flop_counter`` (the registered FLOP formula of
``torch.ops.tritonbasis.basis_conv2d``, which is :func:`tritonbasis.op.geometry.forward_macs`);
times from :func:`tritonbasis.util.timing.time_fn`, the one timer (``triton.testing`` on CUDA,
``torch.utils.benchmark`` on CPU), so a step time here means what a benchmark's number means.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..nn.layer import BasisConv2d
from ..util.timing import time_fn
from .evaluation import autocast, resolve_device, to_device

__all__ = ["count_macs", "count_params", "measure_step_time"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); ``trainable_only`` counts those with
    ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _full_shape(input_shape: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    return shape


def count_macs(
    model: nn.Module, input_shape: Iterable[int], *, device="meta", fused: bool = True
) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter``
    (MACs = FLOPs / 2: convolutions, linear layers and ``torch.ops.tritonbasis.basis_conv2d``,
    whose registered formula counts ``C_b*C_in*k^2 + C_rest*C_b`` per output pixel;
    element-wise ops, BN and pooling are not counted).

    ``input_shape``: ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``. ``device="meta"`` (default)
    counts on shape-only tensors through ``torch.func.functional_call`` -- no compute, no copy
    of the model; pass ``"cpu"`` (or the model's device) to run it for real. The model is run
    in eval mode; its modules' modes are restored.

    ``fused=True`` counts every BasisConv2d as the fused op (the method's arithmetic) whatever
    mode it would run in; ``fused=False`` counts what the modules run as configured (a layer
    in ``"weight"`` mode then costs its dense conv plus building ``W``).
    """
    shape = _full_shape(input_shape)
    device = torch.device(device)
    ref = next(model.parameters(), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    basis_modes = {m: m.mode for m in model.modules() if isinstance(m, BasisConv2d)}
    try:
        model.eval()
        if fused:
            for m in basis_modes:
                m.mode = "fused"
        x = torch.zeros(shape, device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        with torch.no_grad():
            if device.type == "meta":
                state = {
                    k: torch.empty_like(v, device="meta")
                    for k, v in list(model.named_parameters(remove_duplicate=False))
                    + list(model.named_buffers(remove_duplicate=False))
                }
                with counter:
                    torch.func.functional_call(model, state, (x,))
            else:
                with counter:
                    model(x)
    finally:
        for m, mode in basis_modes.items():
            m.mode = mode
        for m, t in modes.items():
            m.training = t
    return int(counter.get_total_flops()) // 2


def measure_step_time(
    model: nn.Module,
    input_shape: Iterable[int],
    steps: int = 20,
    device=None,
    *,
    warmup: int = 3,
    amp: bool = True,
    lr: float = 0.01,
    min_time_s: float = 0.2,
) -> dict[str, Any]:
    """Time a training step (forward, cross-entropy on random labels, backward, SGD with
    momentum step) and an inference forward (eval mode, ``inference_mode``) on random inputs
    of ``input_shape`` ``(N, C, H, W)`` (``(C, H, W)`` means batch 1), each through
    :func:`tritonbasis.util.timing.time_fn` after ``warmup`` untimed calls: on CUDA
    ``triton.testing.do_bench`` (CUDA events), on CPU ``torch.utils.benchmark`` (blocks of
    calls for at least ``min_time_s``). ``steps`` is the least number of timed calls (CUDA)
    or blocks (CPU) each number is taken over.

    Runs on a deep copy of the model (the caller's weights, BN statistics and grads are
    untouched). ``amp``: bf16 autocast + channels_last, on CUDA only, as
    :func:`tritonbasis.recipes.train.train`. ``device=None``: CUDA if available. Returns a
    JSON-ready dict: ``train_step_ms`` and ``infer_ms`` (medians) with ``_p20``/``_p80``,
    ``train_images_per_s``, ``infer_images_per_s``, the calls timed (``train_step_reps``,
    ``infer_reps``), the timer (``method``) and what was measured (shape, device, dtype,
    layout, torch version, CPU threads)."""
    if not isinstance(steps, int) or steps < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    shape = _full_shape(input_shape)
    device = resolve_device(device)
    use_amp = amp and device.type == "cuda"
    m = copy.deepcopy(model).to(device)
    if use_amp:
        m = m.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    m.eval()
    with torch.no_grad():
        num_classes = m(x[:1].to(device)).shape[-1]
    y = torch.randint(0, num_classes, (shape[0],), generator=g)
    x, y = to_device(x, y, device, use_amp)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, use_amp):
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast(device, use_amp):
            m(x)

    def timed(fn):
        for _ in range(warmup):
            fn()
        return time_fn(fn, device=device, min_time_s=min_time_s, min_reps=steps)

    m.train()
    tr = timed(train_step)
    m.eval()
    inf = timed(infer_step)
    p = next(m.parameters())
    return {
        "train_step_ms": tr.median_ms,
        "train_step_ms_p20": tr.p20_ms,
        "train_step_ms_p80": tr.p80_ms,
        "infer_ms": inf.median_ms,
        "infer_ms_p20": inf.p20_ms,
        "infer_ms_p80": inf.p80_ms,
        "train_images_per_s": shape[0] / (tr.median_ms / 1e3),
        "infer_images_per_s": shape[0] / (inf.median_ms / 1e3),
        "train_step_reps": tr.reps,
        "infer_reps": inf.reps,
        "method": tr.method,
        "input_shape": list(shape),
        "steps": steps,
        "warmup": warmup,
        "min_time_s": min_time_s,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": "bfloat16 (autocast)" if use_amp else str(p.dtype).replace("torch.", ""),
        "channels_last": use_amp,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
