"""Fused vs weight per layer shape, measured (``tritonbasis tune``, :func:`tritonbasis.tune`).

:func:`tune_model` times ``mode="fused"`` against ``mode="weight"`` for every distinct
:class:`~tritonbasis.BasisConv2d` call shape of a model (on CUDA this also autotunes the Triton
kernels), stores the timings in the tuning cache, and :func:`tune` sets each ``mode="auto"``
layer's resolved mode to the faster one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Literal

import torch

from ..nn.functional import basis_conv2d, choose_mode
from ..nn.layer import BasisConv2d
from ..op import tune_cache
from ..op.geometry import check_inputs
from ..util.probe import module_calls
from ..util.timing import time_fn
from .bench.providers import memory_format

__all__ = ["TuneConfig", "layer_geometries", "tune", "tune_cache_disabled", "tune_model"]


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The settings of :func:`tune_model` / :func:`tune` (and the ``tritonbasis tune`` flags,
    generated from these fields by :mod:`tritonbasis.util.config_args`). The one place their
    defaults live. ``dtype`` / ``layout`` ``None``: by device (:meth:`for_device`)."""

    dtype: Literal["bfloat16", "float16", "float32"] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "dtype of the timed inputs (default bfloat16 on CUDA, "
            "what bf16 autocast runs; float32 on CPU)"
        },
    )
    layout: Literal["channels_last", "contiguous"] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "memory layout of the timed inputs (default "
            "channels_last on CUDA, contiguous on CPU)"
        },
    )
    objective: Literal["train", "infer"] = dataclasses.field(
        default="train", metadata={"help": "compare forward+backward (train) or forward (infer)"}
    )
    warmup_ms: float = dataclasses.field(default=25.0, metadata={"help": "warm-up per timing, ms"})
    rep_ms: float = dataclasses.field(
        default=100.0, metadata={"help": "timed budget per timing, ms"}
    )
    min_reps: int = dataclasses.field(
        default=10, metadata={"help": "timed calls per timing (GPU), timed blocks (CPU), at least"}
    )

    def __post_init__(self):
        for name, ok in (
            ("dtype", (None, "bfloat16", "float16", "float32")),
            ("layout", (None, "channels_last", "contiguous")),
            ("objective", ("train", "infer")),
        ):
            if getattr(self, name) not in ok:
                raise ValueError(
                    f"TuneConfig.{name} must be one of "
                    f"{', '.join(map(str, ok))}, got {getattr(self, name)!r}"
                )
        for name, positive in (("warmup_ms", False), ("rep_ms", True)):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (v > 0 if positive else v >= 0)
            ):
                raise ValueError(
                    f"TuneConfig.{name} must be {'> 0' if positive else '>= 0'}, got {v!r}"
                )
        v = self.min_reps
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"TuneConfig.min_reps must be a positive int, got {v!r}")

    def for_device(self, device) -> TuneConfig:
        """This config with ``dtype`` / ``layout`` decided where ``None``: bfloat16
        channels_last on CUDA, float32 contiguous elsewhere."""
        cuda = torch.device(device).type == "cuda"
        return dataclasses.replace(
            self,
            dtype=self.dtype or ("bfloat16" if cuda else "float32"),
            layout=self.layout or ("channels_last" if cuda else "contiguous"),
        )


def layer_geometries(model: torch.nn.Module, input_shape) -> list[tuple[list[str], Any, tuple]]:
    """The distinct BasisConv2d call shapes of ``model`` at ``input_shape`` ``(N, C, H, W)``:
    ``[(fqns, first module, its input shape at batch N), ...]`` (the shape probe:
    :func:`tritonbasis.util.probe.module_calls`)."""
    n = int(tuple(input_shape)[0])
    seen: dict[tuple, tuple[list[str], Any, tuple]] = {}
    for fqn, call in module_calls(model, input_shape, (BasisConv2d,)).items():
        m = call.module
        in_shape = (n, *call.in_shape)
        key = (
            in_shape,
            tuple(m.basis.shape),
            tuple(m.coeff.shape),
            m.stride,
            m.op_padding,
            m.dilation,
            m.keep_basis,
            m.out_perm is not None,
            m.bias is not None,
        )
        if key in seen:
            seen[key][0].append(fqn)
        else:
            seen[key] = ([fqn], m, in_shape)
    return list(seen.values())


def tune_model(
    model: torch.nn.Module,
    input_shape,
    *,
    device,
    config: TuneConfig | None = None,
    log=print,
    measure=None,
    **overrides,
) -> list[dict]:
    """Pre-tune every distinct BasisConv2d shape of ``model`` at ``input_shape`` on
    ``device``: run the fused op forward and backward (on CUDA this autotunes the Triton
    kernels; the best configs land in the tuning cache), time ``mode="fused"`` against
    ``mode="weight"`` (forward, forward+backward) and store the timings and the faster mode in
    the cache, which ``mode="auto"`` then uses (``objective``: ``train`` compares
    forward+backward, ``infer`` forward). Returns one row per shape.

    ``measure(mode, layer, in_shape) -> {"fwd": ms, "fwd+bwd": ms}`` replaces the timer (tests
    inject one); the default times the call with :func:`tritonbasis.util.timing.time_fn`
    (``torch.utils.benchmark`` on CPU, ``triton.testing.do_bench`` on GPU; ``min_reps``: at
    least that many timed calls on GPU, blocks on CPU).

    The settings (``dtype``, ``layout``, ``objective``, ``warmup_ms``, ``rep_ms``,
    ``min_reps``) are :class:`TuneConfig`'s fields, its defaults unless given: ``config=``,
    and/or the fields as keywords on top (``tune_model(m, shape, device=d, rep_ms=20)``)."""
    from ..op.launchers import source_hash, triton_version
    from ..op.registry import resolve_backend

    device = torch.device(device)
    cfg = dataclasses.replace(config or TuneConfig(), **overrides).for_device(device)
    dtype, layout, objective = cfg.dtype, cfg.layout, cfg.objective
    tdtype = getattr(torch, dtype)
    fmt = memory_format(layout)
    dev_name = tune_cache.device_name(device)
    rows = []
    for fqns, m, in_shape in layer_geometries(model, input_shape):
        t = _layer_tensors(m, in_shape, device, tdtype, fmt)
        g = t["g"]
        backend = resolve_backend(t["xs"][0], g)
        row = {
            "layers": fqns,
            "shape": list(in_shape),
            "C_b": g.C_b,
            "C_out": g.C_out,
            "k": g.KH,
            "stride": g.stride[0],
            "backend": backend,
            "flop_model": None,
            "fused_ms": {},
            "weight_ms": {},
            "mode": None,
        }
        if device.type == "cuda" and backend != "triton":
            row["skipped"] = (
                f"the fused op runs its torch path here (C_b={g.C_b}); mode='auto' uses weight"
            )
            rows.append(row)
            log(f"  {fqns[0]:28s} skipped: {row['skipped']}")
            continue
        for mode in ("fused", "weight"):
            row[f"{mode}_ms"] = (
                measure(mode, m, tuple(in_shape))
                if measure is not None
                else _time_modes(
                    mode,
                    t["xs"],
                    t["dys"],
                    t["basis"],
                    t["coeff"],
                    t["bias"],
                    t["perm"],
                    m,
                    device=device,
                    warmup_ms=cfg.warmup_ms,
                    rep_ms=cfg.rep_ms,
                    min_reps=cfg.min_reps,
                )
            )
        key = "fwd+bwd" if objective == "train" else "fwd"
        row["mode"] = "fused" if row["fused_ms"][key] <= row["weight_ms"][key] else "weight"
        with tune_cache_disabled():
            row["flop_model"] = choose_mode(g, device)
        kernel = (triton_version(), source_hash()) if backend == "triton" else None
        tune_cache.store_timing(
            dev_name,
            g,
            fused_ms=row["fused_ms"],
            weight_ms=row["weight_ms"],
            mode=row["mode"],
            dtype=dtype,
            layout=layout,
            objective=objective,
            kernel=kernel,
            extra={"layers": fqns},
        )
        rows.append(row)
        log(
            f"  {fqns[0]:28s} x{len(fqns)} {tuple(in_shape)} C_b={g.C_b:<4d} "
            f"fused {row['fused_ms'][key]:8.3f} ms  weight {row['weight_ms'][key]:8.3f} ms "
            f"({key}) -> {row['mode']:6s} (FLOP model: {row['flop_model']})"
        )
    return rows


def _layer_tensors(m, in_shape, device, tdtype, fmt) -> dict[str, Any]:
    """Random inputs (two rotating x / dY buffers), weights, bias and permutation of one
    layer call shape, and its checked geometry ``g``."""
    gen = torch.Generator(device=device).manual_seed(0)

    def mk(*s, scale=1.0, grad=True):
        t = torch.randn(*s, device=device, dtype=tdtype, generator=gen) * scale
        return (t.contiguous(memory_format=fmt) if len(s) == 4 else t).requires_grad_(grad)

    xs = [mk(*in_shape) for _ in range(2)]
    basis = mk(*m.basis.shape, scale=m.basis[0].numel() ** -0.5)
    coeff = mk(*m.coeff.shape, scale=m.basis.shape[0] ** -0.5)
    bias = mk(*m.bias.shape) if m.bias is not None else None
    perm = (
        torch.randperm(m.out_channels, generator=torch.Generator().manual_seed(0)).to(device)
        if m.out_perm is not None
        else None
    )
    g = check_inputs(
        xs[0], basis, coeff, bias, m.stride, m.op_padding, m.dilation, m.keep_basis, perm
    )
    dys = [mk(g.N, g.C_out, g.Ho, g.Wo, grad=False) for _ in range(2)]
    return {
        "xs": xs,
        "dys": dys,
        "basis": basis,
        "coeff": coeff,
        "bias": bias,
        "perm": perm,
        "g": g,
    }


def _time_modes(
    mode, xs, dys, basis, coeff, bias, perm, m, *, device, warmup_ms, rep_ms, min_reps
) -> dict[str, float]:
    """Medians (ms) of one BasisConv2d call shape in ``mode``: fwd (no grad) and fwd+bwd, each
    call on the next of the rotating inputs (a dict update inside the timed call, ~0.1 us)."""
    state = {"i": 0}
    params = [p for p in (basis, coeff, bias) if p is not None]

    def nxt() -> int:
        state["i"] = (state["i"] + 1) % len(xs)
        return state["i"]

    def f(x):
        return basis_conv2d(
            x,
            basis,
            coeff,
            bias,
            m.stride,
            m.op_padding,
            m.dilation,
            m.keep_basis,
            mode=mode,
            perm=perm,
        )

    def fwd():
        x = xs[nxt()]
        with torch.no_grad():
            f(x)

    def fb():
        i = nxt()
        torch.autograd.grad(f(xs[i]), [xs[i], *params], dys[i])

    # CPU: blocks of calls for >= rep_ms (>= 1 ms), as the search's per-layer timings
    return {
        d: time_fn(
            fn,
            device=device,
            warmup_ms=warmup_ms,
            rep_ms=rep_ms,
            min_time_s=max(rep_ms, 1.0) / 1e3,
            min_reps=min_reps,
        ).median_ms
        for d, fn in (("fwd", fwd), ("fwd+bwd", fb))
    }


@contextlib.contextmanager
def tune_cache_disabled():
    """Temporarily switch the tuning cache off (this thread's process environment)."""

    old = os.environ.get(tune_cache.ENV_ENABLE)
    os.environ[tune_cache.ENV_ENABLE] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(tune_cache.ENV_ENABLE, None)
        else:
            os.environ[tune_cache.ENV_ENABLE] = old


def tune(
    model: torch.nn.Module,
    input_shape,
    *,
    device=None,
    config: TuneConfig | None = None,
    log=None,
    measure=None,
    **overrides,
) -> list[dict]:
    """Measure fused vs weight for every distinct :class:`~tritonbasis.BasisConv2d` call shape
    of ``model`` at ``input_shape`` ``(N, C, H, W)`` on ``device`` (default: the model's),
    store the timings in the tuning cache (:func:`tune_model`) and set each
    ``mode="auto"`` layer's resolved mode to the faster one (``objective``: ``train`` compares
    forward+backward, ``infer`` forward). Layers with a fixed mode keep it. Defaults: bfloat16
    channels_last on CUDA, float32 contiguous on CPU. ``config`` / keyword settings and
    ``measure``: see ``tune_model``. Returns ``tune_model``'s rows."""
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    rows = tune_model(
        model,
        input_shape,
        device=device,
        config=config,
        log=log or (lambda *a, **k: None),
        measure=measure,
        **overrides,
    )
    for row in rows:
        # a skipped shape (CUDA, C_b beyond the kernel): the fused op would run its torch path
        mode = row["mode"] or "weight"
        for fqn in row["layers"]:
            m = model.get_submodule(fqn)
            if isinstance(m, BasisConv2d) and m.mode == "auto":
                m.set_resolved(mode, device)
    return rows
