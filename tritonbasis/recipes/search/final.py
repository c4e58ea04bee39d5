"""Stage 5, the final comparison over seeds: for each seed (``seed``, ``seed + 1``, ...) its
own dense model (seed 0's is the search's baseline; the others are trained the same way from
their own initialisation), and the chosen-subset and the "convert every layer" (naive) models
made by converting *that trained dense model* and fine-tuning it ``final_epochs`` epochs.

Converting the trained model is the point: trained from scratch, even the naive model at
C_b = C_out/16 loses only about 1 pp on digits (docs/experiments.md), so a from-scratch
comparison would not show what a plan costs. The plan is the one searched with ``seed``;
drops are paired per seed (each converted model against its own dense model).

What a run computes never depends on a timing: fused and weight mode are the same function
but round differently, so a layer whose measured mode flipped with the machine's load would
fine-tune to other weights (seen: a naive drop of 23.33 pp in one run, 24.67 pp in the next,
same seed). The converted models are therefore fine-tuned and evaluated in the modes
``convert`` resolves without timings (the cost model's per-pixel rule, the modes the probes
ran); the modes the search measured faster are used where speed is the point: the step
times, measured once, on seed 0's models, ``time_rounds`` times interleaved (the spread of
those rounds is the timing noise the summary states), and the report's ``mode`` column."""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...nn.layer import BasisConv2d
from .. import distributed as D
from ..evaluation import evaluate
from ..measure import count_macs, count_params, measure_step_time
from ..train import train
from .context import SearchContext
from .ladder import rung_key
from .probes import convert_only, pp

__all__ = [
    "FinalInputs",
    "apply_modes",
    "mean_sd",
    "measure",
    "noise_pp",
    "pct_saved",
    "run_final",
]

NAMES = ("dense", "chosen", "naive")


@dataclass
class FinalInputs:
    """What the final stage compares, beside the :class:`.context.SearchContext`."""

    model: nn.Module  # the caller's model: the architecture the final models are built from
    init_state: dict  # its initial weights (kept for callers; the final converts trained models)
    dense: nn.Module  # the trained baseline
    baseline: dict  # the baseline stage's numbers (val_acc, val_loss, ...)
    chosen: list[str]  # the selected layers
    candidates: list[str]  # every candidate layer (the naive model converts them all)
    gains: dict = field(default_factory=dict)  # per layer, with the measured faster "mode"
    # ladder: {name: {layer: BasisSpec}} of mixed-rank plans ("chosen" replaces the subset;
    # the peer rules' names add models), and the C_b the gains were timed at, per layer
    plans: dict = field(default_factory=dict)
    base_cb: dict = field(default_factory=dict)
    # ladder with gain="time": {"layer@C_b": timings with the measured faster "mode"} of the
    # other rungs (forward+backward only)
    rung_gains: dict = field(default_factory=dict)

    def layers(self) -> dict:
        """``{model name: layers (list: at the spec) or plan (dict: own specs)}``."""
        out = {"dense": [], "chosen": self.chosen, "naive": self.candidates}
        out.update(self.plans)
        return out


def mean_sd(xs) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    xs = [float(x) for x in xs]
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pct_saved(after: float, before: float) -> float:
    """Percent of ``before`` saved by ``after`` (one decimal)."""
    return round(100.0 * (1.0 - after / before), 1) if before else 0.0


def noise_pp(p_a: float, p_b: float, n: int) -> float:
    """95% half-width (pp) of the difference of two accuracies measured on ``n`` images
    (binomial, normal approximation)."""
    return 100.0 * 1.96 * math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / n)


def apply_modes(model: nn.Module, fqns, gains: dict, device) -> None:
    """Run each converted layer in the modes the search measured faster (its ``gains`` row:
    ``mode`` with autograd, ``mode_infer`` without);
    a state from before modes were recorded falls back to the layer's own decision."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    for f in fqns:
        g = gains.get(f, {})
        mode, infer = g.get("mode"), g.get("mode_infer")  # mode_infer: absent in old states
        m = model.get_submodule(f)
        if mode in ("fused", "weight") and isinstance(m, BasisConv2d) and m.mode == "auto":
            m.set_resolved(mode, dev, infer=infer if infer in ("fused", "weight") else None)


def measure(ctx: SearchContext, m: nn.Module) -> dict:
    """Params, MACs per image and the step times (batch ``time_batch``) of one model."""
    cfg = ctx.cfg
    t = measure_step_time(m, (cfg.time_batch, *ctx.shape), steps=cfg.time_steps, device=cfg.device)
    return {
        "params": count_params(m),
        "macs": count_macs(m, ctx.shape),
        "train_step_ms": round(t["train_step_ms"], 4),
        "infer_ms": round(t["infer_ms"], 4),
        "timing_device": t["device_name"],
    }


def _reinit(m: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for mod in m.modules():
        if hasattr(mod, "reset_parameters") and mod is not m:
            mod.reset_parameters()


def _dense_for_seed(ctx: SearchContext, inp: FinalInputs, seed: int) -> nn.Module:
    """Seed ``seed``'s trained dense model: the search's baseline for the search seed (and for
    every seed when the baseline is given, ``baseline_epochs=0``), else trained from its own
    initialisation like the baseline (checkpointed, so a resume continues inside it)."""
    cfg = ctx.cfg
    if seed == cfg.seed or cfg.baseline_epochs == 0:
        return inp.dense
    m = copy.deepcopy(inp.model)
    _reinit(m, seed)
    ctx.log(f"[5/5] final seed {seed}: training its dense model ({cfg.baseline_epochs} epochs)")
    train(
        m,
        ctx.train_data,
        None,
        cfg.train_config(cfg.baseline_epochs, seed=seed),
        checkpoint_dir=ctx.out / f"final_seed{seed}" / "dense",
        resume=True,
        progress=ctx.progress,
        distributed=D.is_distributed(),
    )
    return m


def _converted(
    ctx: SearchContext, inp: FinalInputs, dense: nn.Module, name: str, layers: list[str], seed: int
) -> nn.Module:
    """``dense`` with ``layers`` converted, fine-tuned ``final_epochs`` epochs at ``final_lr``
    with seed ``seed``; every converted layer runs the mode ``convert`` resolved without
    timings (never the measured one: see the module docstring)."""
    cfg = ctx.cfg
    m = convert_only(dense, layers, ctx.spec) if layers else copy.deepcopy(dense)
    if layers and cfg.final_epochs > 0:
        ctx.log(
            f"[5/5] final seed {seed}: {name} ({len(layers)} converted layers), "
            f"fine-tuning {cfg.final_epochs} epochs"
        )
        train(
            m,
            ctx.train_data,
            None,
            cfg.train_config(cfg.final_epochs, lr=cfg.final_lr, schedule="cosine", seed=seed),
            checkpoint_dir=ctx.out / f"final_seed{seed}" / name,
            resume=True,
            progress=ctx.progress,
            distributed=D.is_distributed(),
        )
    return m


def _run_seeds(ctx: SearchContext, inp: FinalInputs) -> dict:
    """``{seed: {name: {"val_acc", "val_loss"}}}``, each entry saved as it is done."""
    runs = ctx.state.get("final_runs", {})
    layers = inp.layers()
    for seed in ctx.cfg.final_seed_list():
        r = runs.setdefault(str(seed), {})
        if all(n in r for n in layers):
            continue
        dense = _dense_for_seed(ctx, inp, seed)
        for name in layers:
            if name in r:
                continue
            m = dense if name == "dense" else _converted(ctx, inp, dense, name, layers[name], seed)
            loss, acc = evaluate(m, ctx.val_data, ctx.cfg.device, ctx.cfg.batch_size)
            r[name] = {"val_acc": acc, "val_loss": loss}
            ctx.state.put("final_runs", D.broadcast_object(runs))
    return ctx.state.get("final_runs", runs)


def _timings(ctx: SearchContext, inp: FinalInputs) -> dict:
    """``{name: {"train_step_ms": [per round], "infer_ms": [...], params, macs, ...}}`` of
    seed 0's three models (weights do not change a step's time), rounds interleaved; each
    converted layer in the modes the search measured faster."""
    timing = ctx.state.get("final_timing")
    if timing is not None:
        return timing
    names = list(inp.layers())
    ctx.log(f"[5/5] final: timing {' / '.join(names)} ({ctx.cfg.time_rounds} rounds)")
    models = {"dense": inp.dense}
    for name, layers in inp.layers().items():
        if name == "dense":
            continue
        m = convert_only(inp.dense, layers, ctx.spec) if layers else copy.deepcopy(inp.dense)
        # each layer's measured modes: its gains row at the spec's C_b; at another rank its
        # rung's row where the ladder timed it (gain="time"), else the mode convert resolves
        rows = {}
        for f in layers:
            cb = layers[f].basis_channels if isinstance(layers, dict) else inp.base_cb.get(f)
            row = (
                inp.gains.get(f)
                if cb == inp.base_cb.get(f)
                else inp.rung_gains.get(rung_key(f, cb))
            )
            if row is not None:
                rows[f] = row
        apply_modes(m, list(rows), rows, ctx.cfg.device)
        models[name] = m
    timing = {n: {"train_step_ms": [], "infer_ms": []} for n in names}
    for _ in range(ctx.cfg.time_rounds):
        for n in names:
            t = measure(ctx, models[n])
            for k in ("train_step_ms", "infer_ms"):
                timing[n][k].append(t[k])
            timing[n].update(params=t["params"], macs=t["macs"], timing_device=t["timing_device"])
    ctx.state.put("final_timing", D.broadcast_object(timing))
    return ctx.state.get("final_timing")


def run_final(ctx: SearchContext, inp: FinalInputs) -> dict:
    """``{"dense", "chosen", "naive": numbers}``: per model the validation accuracy per seed
    and its mean, the paired drop per seed (pp, against that seed's dense model) with mean
    and sample standard deviation, params, MACs, and the step times (median of the rounds,
    with every round's value). Resumable: each seed's models and the timings are saved in the
    state as they are done."""
    runs = _run_seeds(ctx, inp)
    timing = _timings(ctx, inp)
    seeds = [str(s) for s in ctx.cfg.final_seed_list()]
    final = {}
    all_layers = inp.layers()
    for name in all_layers:
        accs = [runs[s][name]["val_acc"] for s in seeds]
        drops = [pp(runs[s]["dense"]["val_acc"], runs[s][name]["val_acc"]) for s in seeds]
        t = timing[name]
        acc_mean, acc_sd = mean_sd(accs)
        drop_mean, drop_sd = mean_sd(drops)
        final[name] = {
            "val_acc": acc_mean,
            "val_acc_sd": acc_sd,
            "val_acc_per_seed": accs,
            "val_loss": mean_sd([runs[s][name]["val_loss"] for s in seeds])[0],
            "drop_pp": round(drop_mean, 4),
            "drop_sd_pp": round(drop_sd, 4),
            "drop_per_seed_pp": drops,
            "seeds": [int(s) for s in seeds],
            "converted": len(all_layers[name]),
            "params": t["params"],
            "macs": t["macs"],
            "train_step_ms": round(statistics.median(t["train_step_ms"]), 4),
            "train_step_ms_rounds": t["train_step_ms"],
            "infer_ms": round(statistics.median(t["infer_ms"]), 4),
            "infer_ms_rounds": t["infer_ms"],
            "timing_device": t["timing_device"],
        }
    ctx.state.put("final", final)
    return D.broadcast_object(final)
