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
    "layer_inputs",
    "measure_gains",
    "pp",
    "probe",
    "run_group_probes",
    "run_layer_probes",
    "spearman",
    "time_fwd_bwd",
    "time_layer",
    "timed_on_main",
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


def time_layer(
    dense_layer: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    steps: int,
    *,
    infer: bool = True,
    dense: dict | None = None,
) -> dict:
    """One (layer, spec)'s timings, the one source of every per-layer time the search uses:
    the dense conv's forward+backward (:func:`time_fwd_bwd`) against the basis ``layer``'s in
    both modes; the faster mode (:func:`tritonbasis.nn.modes.from_timings`) is the one the
    layer runs in training and its time the basis time. With ``infer``, the same for the
    forward without autograd (:func:`time_infer`): ``mode_infer``, what the layer runs at
    inference (a fused path that wins fwd+bwd can lose the forward alone). ``dense``: the
    dense conv's timings already taken at this input (the row of another spec of the same
    layer), re-used instead of timed again. ``layer.mode`` is left at ``"auto"``."""
    if dense is None:
        dense = {"time_dense_ms": round(time_fwd_bwd(dense_layer, x, steps), 4)}
        if infer:
            dense["time_dense_infer_ms"] = round(time_infer(dense_layer, x, steps), 4)
    t, t_inf = {}, {}
    for mode in ("fused", "weight"):
        layer.mode = mode
        t[mode] = time_fwd_bwd(layer, x, steps)
        if infer:
            t_inf[mode] = time_infer(layer, x, steps)
    layer.mode = "auto"
    mode = from_timings(t)
    row = {
        "time_dense_ms": dense["time_dense_ms"],
        "time_basis_ms": round(t[mode], 4),
        "time_saved_ms": round(dense["time_dense_ms"] - t[mode], 4),
        "time_fused_ms": round(t["fused"], 4),
        "time_weight_ms": round(t["weight"], 4),
        "mode": mode,
    }
    if infer:  # without autograd (inference): weight mode reuses its merged weight
        row.update(
            time_dense_infer_ms=dense["time_dense_infer_ms"],
            time_fused_infer_ms=round(t_inf["fused"], 4),
            time_weight_infer_ms=round(t_inf["weight"], 4),
            mode_infer=from_timings(t_inf),
        )
    return row


def layer_inputs(ctx: SearchContext, dense: nn.Module, fqns) -> dict[str, torch.Tensor]:
    """Per layer a random input of its shape at batch ``time_batch`` (channels-last on CUDA,
    the layout the models train in), what :func:`time_layer` times it at."""
    device = next(dense.parameters()).device
    out = {}
    for f, c in module_calls(dense, ctx.shape, fqns=list(fqns)).items():
        x = torch.randn(ctx.cfg.time_batch, *c.in_shape, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out[f] = x
    return out


def timed_on_main(ctx: SearchContext, key: str, todo: list, time_all, desc: str) -> dict:
    """The state's ``key`` (``{name: timings}``) completed for every name of ``todo``:
    ``time_all(todo)`` yields ``(name, timings)`` pairs and runs on the main rank only (the
    other ranks would time on the same machine at the same moment and slow each other; an
    error there reaches every rank, :func:`tritonbasis.recipes.distributed.on_main`). Each
    is saved in the state as it is taken (a resumed search re-uses them, never re-times: a
    re-timed layer could flip its mode or its rank on a loaded machine); rank 0's values
    are then every rank's, so every rank selects from the same numbers."""

    def run():
        done = dict(ctx.state.get(key) or {})
        for name, row in time_all(ctx.bar(todo, desc=desc, unit="layer")):
            done[name] = row
            ctx.state.put(key, done)
        return done

    ctx.state.put(key, D.on_main(run))
    return ctx.state.get(key)


def measure_gains(ctx: SearchContext, dense: nn.Module, cands: list[str]) -> dict:
    """Per layer: :func:`time_layer` of the dense conv against the converted one (the
    search's spec) at the layer's input shape (batch ``time_batch``), in training and at
    inference; saved in the state as ``"gains"`` as they are taken (a resume re-uses them:
    the final models run the modes measured here, and a re-timed layer could flip its mode
    on a loaded machine)."""
    gains = ctx.state.get("gains") or {}
    todo = [f for f in cands if f not in gains]
    if not todo:
        return gains
    ctx.log(
        f"[3/5] gains: timing dense conv vs basis op per layer shape ({len(todo)} of "
        f"{len(cands)} layers)"
    )

    def time_all(fqns):
        xs, converted = layer_inputs(ctx, dense, todo), convert_only(dense, todo, ctx.spec)
        for f in fqns:
            layer = converted.get_submodule(f)
            yield f, time_layer(dense.get_submodule(f), layer, xs[f], ctx.cfg.time_steps)

    gains = timed_on_main(ctx, "gains", todo, time_all, "timing")
    dense.zero_grad(set_to_none=True)
    return gains
