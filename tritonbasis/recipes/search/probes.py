"""Stages 2 and 3: probes (how much accuracy each layer loses as a basis conv) and gains (what
converting it saves: parameters, MACs, measured time).

A probe converts layers of a copy of the baseline (skip-training: no training from scratch),
records the *zero-shot* drop right after conversion (SVD init), fine-tunes briefly and records
the *probe* drop, in percentage points of validation accuracy (and the loss deltas). The
stages take the probe as a function (:data:`.context.Probe`), so a probe with another
experiment (seeds, steps, frozen layers) plugs in without touching them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ...conversion.convert import LayerReport, candidate_convs, convert, convert_with_report
from ...nn.modes import from_timings
from ...nn.spec import BasisSpec
from ...util.probe import module_calls
from ...util.timing import time_fn
from .. import distributed as D
from ..evaluation import evaluate
from ..train import train
from .config import SearchConfig
from .context import Probe, SearchContext

__all__ = [
    "ProbeSetup",
    "candidates",
    "convert_only",
    "measure_gains",
    "pp",
    "probe",
    "run_group_probes",
    "run_layer_probes",
    "spearman",
    "time_fwd_bwd",
]


def pp(acc_base: float, acc: float) -> float:
    """Accuracy drop in percentage points."""
    return round(100.0 * (acc_base - acc), 4)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho of two rankings (None when it is undefined)."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None  # a constant ranking has no correlation (scipy warns and returns NaN)
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return None if rho is None or not math.isfinite(rho) else round(float(rho), 4)


def convert_only(model: nn.Module, fqns, spec: BasisSpec) -> nn.Module:
    """A copy of ``model`` with exactly ``fqns`` converted: each to ``spec``, or, when
    ``fqns`` is a dict (a mixed-rank plan), each to its own spec."""
    if isinstance(fqns, dict):
        return convert(model, dict(fqns), inplace=False)
    return convert(model, {f: spec for f in fqns}, inplace=False)


def _freeze_all_but(model: nn.Module, fqns) -> None:
    keep = set()
    for f in fqns:
        keep |= {id(p) for p in model.get_submodule(f).parameters()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            keep |= {id(p) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


# --------------------------------------------------------------------------------------------
# probes


@dataclass(frozen=True)
class ProbeSetup:
    """What a probe needs besides the baseline model: the config, the spec, the data and the
    baseline's validation numbers the drops are measured against."""

    cfg: SearchConfig
    spec: BasisSpec
    train_data: Any
    val_data: Any
    base_acc: float
    base_loss: float


def probe(dense: nn.Module, fqns, setup: ProbeSetup, steps: int) -> dict:
    """Convert ``fqns`` of a copy of the baseline ``dense``, evaluate (zero-shot), fine-tune
    ``steps`` steps (seeded by the search seed, so the same on any rank), evaluate again."""
    cfg = setup.cfg
    m = convert_only(dense, fqns, setup.spec)
    zl, za = evaluate(m, setup.val_data, cfg.device, cfg.batch_size)
    pl, pa = zl, za
    if steps > 0:
        if cfg.probe_only_converted:
            _freeze_all_but(m, fqns)
        train(
            m,
            setup.train_data,
            None,
            cfg.probe_train_config(steps, len(setup.train_data)),
            progress=False,
        )
        pl, pa = evaluate(m, setup.val_data, cfg.device, cfg.batch_size)
        if not math.isfinite(pl):  # a finite training loss can still end in a NaN model
            raise FloatingPointError(
                f"probe of {', '.join(fqns)}: the validation loss became {pl} after {steps} "
                f"fine-tuning steps at probe_lr={cfg.probe_lr}; lower --probe-lr"
            )
    return {
        "zero_shot_acc": za,
        "zero_shot_drop": pp(setup.base_acc, za),
        "zero_shot_loss_delta": round(zl - setup.base_loss, 6),
        "probe_acc": pa,
        "probe_drop": pp(setup.base_acc, pa),
        "probe_loss_delta": round(pl - setup.base_loss, 6),
    }


def candidates(
    dense: nn.Module, spec: BasisSpec, shape: tuple[int, ...]
) -> tuple[list[str], dict[str, LayerReport]]:
    """The convs the search considers -- every candidate conv that ``spec`` converts with a
    saving -- and the conversion report's row of each (shapes, C_b, params and MACs before and
    after)."""
    cands = [f for f, _ in candidate_convs(dense)]
    _, rep = convert_with_report(dense, {f: spec for f in cands}, input_shape=shape)
    rows = {r.fqn: r for r in rep.layers}
    return [f for f in cands if rows[f].converted], rows  # drop convs with no saving


def run_layer_probes(ctx: SearchContext, cands: list[str], probe_fn: Probe) -> dict:
    """One probe per candidate layer that the state lacks, spread over the ranks under
    torchrun (:func:`tritonbasis.recipes.distributed.run_probes`), saved as they finish."""
    probes = ctx.state.get("probes", {})
    todo = [f for f in cands if f not in probes]
    if todo:
        ctx.log(
            f"[2/5] probes: {len(todo)} of {len(cands)} layers to probe "
            f"({ctx.cfg.probe_steps} fine-tuning steps each)"
        )
    return D.run_probes(todo, lambda f: probe_fn([f], ctx.cfg.probe_steps), ctx.state, bar=ctx.bar)


def run_group_probes(
    ctx: SearchContext,
    cands: list[str],
    conv_rows: dict[str, LayerReport],
    probes: dict,
    probe_fn: Probe,
) -> list[dict]:
    """With ``probe_groups``: the lighter and the heavier half of the layers (by parameter
    count), each probed as one group, beside the sum of its layers' own probe drops (how
    additive the drops are)."""
    groups = ctx.state.get("groups")
    if groups is not None:
        return groups
    groups = []
    if ctx.cfg.probe_groups and len(cands) >= 2:
        by_params = sorted(cands, key=lambda f: conv_rows[f].params_before)
        half = len(by_params) // 2
        for name, members in (("light", by_params[:half]), ("heavy", by_params[half:])):
            r = probe_fn(members, ctx.cfg.probe_steps)
            groups.append(
                {
                    "group": name,
                    "layers": members,
                    **r,
                    "sum_of_layer_probe_drops": round(
                        sum(probes[m]["probe_drop"] for m in members), 4
                    ),
                }
            )
    ctx.state.put("groups", D.broadcast_object(groups))  # rank 0's values on every rank
    return ctx.state.get("groups")


# --------------------------------------------------------------------------------------------
# gains


def time_fwd_bwd(module: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median ms of forward+backward of one layer through
    :func:`tritonbasis.util.timing.time_fn` (CUDA: ``triton.testing.do_bench``; CPU:
    ``torch.utils.benchmark`` blocks over >= 0.2 s), at least ``steps`` timed calls/blocks.
    These timings pick each layer's mode; a 5-call ``perf_counter`` median on a shared 2-core
    machine swung 1 -> 40 ms for one layer (a search run during CI)."""
    x = x.detach().requires_grad_()

    def step():
        module(x).sum().backward()

    return time_fn(
        step, device=x.device, min_time_s=max(0.2, 0.01 * steps), min_reps=steps
    ).median_ms


def time_infer(module: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median ms of one layer's forward in eval mode without autograd (inference), timed
    like :func:`time_fwd_bwd`; the layer's train/eval mode is restored."""
    x = x.detach()
    was_training = module.training
    module.eval()

    def step():
        with torch.no_grad():
            module(x)

    try:
        return time_fn(
            step, device=x.device, min_time_s=max(0.2, 0.01 * steps), min_reps=steps
        ).median_ms
    finally:
        module.train(was_training)


def measure_gains(ctx: SearchContext, dense: nn.Module, cands: list[str]) -> dict:
    """Per layer: the dense conv's forward+backward time at its input shape (batch
    ``time_batch``) against the converted layer's in both modes; the faster mode is the one the
    layer will run in training (:func:`tritonbasis.nn.modes.from_timings`) and its time the
    basis time. The same for the forward without autograd: ``mode_infer``, what the layer runs
    at inference (training and inference differ: a fused path that wins fwd+bwd can lose the
    forward alone).
    Each layer's timings are saved in the state as they are taken, so a resumed search re-uses
    them instead of re-timing (a re-timed layer could flip its mode on a loaded machine, and
    the final models -- which run those modes -- would then differ from the first run's)."""
    gains = dict(ctx.state.get("gains") or {})
    todo = [f for f in cands if f not in gains]
    if not todo:
        return gains
    cfg = ctx.cfg
    ctx.log(
        f"[3/5] gains: timing dense conv vs basis op per layer shape ({len(todo)} of "
        f"{len(cands)} layers)"
    )
    device = next(dense.parameters()).device
    in_shapes = {f: c.in_shape for f, c in module_calls(dense, ctx.shape, fqns=todo).items()}
    converted = convert_only(dense, todo, ctx.spec)
    for f in ctx.bar(todo, desc="timing", unit="layer"):
        x = torch.randn(cfg.time_batch, *in_shapes[f], device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        t_dense = time_fwd_bwd(dense.get_submodule(f), x, cfg.time_steps)
        t_dense_inf = time_infer(dense.get_submodule(f), x, cfg.time_steps)
        layer = converted.get_submodule(f)
        t, t_inf = {}, {}
        for mode in ("fused", "weight"):
            layer.mode = mode
            t[mode] = time_fwd_bwd(layer, x, cfg.time_steps)
            t_inf[mode] = time_infer(layer, x, cfg.time_steps)
        layer.mode = "auto"
        mode, mode_inf = from_timings(t), from_timings(t_inf)
        gains[f] = {
            "time_dense_ms": round(t_dense, 4),
            "time_basis_ms": round(t[mode], 4),
            "time_saved_ms": round(t_dense - t[mode], 4),
            "time_fused_ms": round(t["fused"], 4),
            "time_weight_ms": round(t["weight"], 4),
            "mode": mode,
            # without autograd (inference): weight mode reuses its merged weight
            "time_dense_infer_ms": round(t_dense_inf, 4),
            "time_fused_infer_ms": round(t_inf["fused"], 4),
            "time_weight_infer_ms": round(t_inf["weight"], 4),
            "mode_infer": mode_inf,
        }
        if D.is_main():
            ctx.state.put("gains", gains)
    dense.zero_grad(set_to_none=True)
    ctx.state.put("gains", D.broadcast_object(gains))
    return ctx.state.get("gains")
