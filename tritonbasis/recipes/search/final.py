"""Stage 5, the final comparison: the chosen-subset model and the "convert every layer"
(naive) model trained for the full budget from the baseline's initialisation (or fine-tuned
from the baseline weights with ``baseline_epochs=0``), each layer run in the mode the search
measured faster; accuracy, params, MACs, training step and inference time of both beside the
dense baseline."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ...nn.layer import BasisConv2d
from .. import distributed as D
from ..evaluation import evaluate
from ..measure import count_macs, count_params, measure_step_time
from ..train import train
from ..train_config import TrainConfig
from .context import SearchContext
from .probes import convert_only, pp

__all__ = ["FinalInputs", "apply_modes", "measure", "run_final"]


@dataclass
class FinalInputs:
    """What the final stage compares, beside the :class:`.context.SearchContext`."""

    model: nn.Module  # the caller's model: the architecture the final models are built from
    init_state: dict  # its initial weights (the baseline's initialisation)
    dense: nn.Module  # the trained baseline
    baseline: dict  # the baseline stage's numbers (val_acc, val_loss, ...)
    chosen: list[str]  # the selected layers
    candidates: list[str]  # every candidate layer (the naive model converts them all)
    gains: dict = field(default_factory=dict)  # per layer, with the measured faster "mode"


def apply_modes(model: nn.Module, fqns, gains: dict, device) -> None:
    """Run each converted layer in the mode the search measured faster (its ``gains`` row);
    a state from before modes were recorded falls back to the layer's own decision."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    for f in fqns:
        mode = gains.get(f, {}).get("mode")
        m = model.get_submodule(f)
        if mode in ("fused", "weight") and isinstance(m, BasisConv2d) and m.mode == "auto":
            m.set_resolved(mode, dev)


def measure(ctx: SearchContext, m: nn.Module) -> dict:
    """Params, MACs per image and the step times (batch ``time_batch``) of one model."""
    cfg = ctx.cfg
    t = measure_step_time(m, (cfg.time_batch, *ctx.shape), steps=cfg.time_steps,
                          device=cfg.device)
    return {"params": count_params(m), "macs": count_macs(m, ctx.shape),
            "train_step_ms": round(t["train_step_ms"], 4),
            "infer_ms": round(t["infer_ms"], 4), "timing_device": t["device_name"]}


def _final_model(ctx: SearchContext, inp: FinalInputs, name: str, layers: list[str]) -> dict:
    cfg = ctx.cfg
    epochs = cfg.baseline_epochs
    ctx.log(f"[5/5] final: {name} ({len(layers)} converted layers), "
            f"{'training ' + str(epochs) + ' epochs' if epochs else 'fine-tuning'}")
    m = copy.deepcopy(inp.model)
    if epochs > 0:
        m.load_state_dict(inp.init_state)  # the baseline's initialisation
    else:
        m.load_state_dict(inp.dense.state_dict())
    m = convert_only(m, layers, ctx.spec) if layers else m
    apply_modes(m, layers, inp.gains, cfg.device)
    if epochs > 0:
        train(m, ctx.train_data, ctx.val_data, cfg.train_config(epochs),
              checkpoint_dir=ctx.out / f"final_{name}", resume=True, progress=ctx.progress,
              distributed=D.is_distributed())
    elif layers and cfg.probe_steps:
        train(m, ctx.train_data, None, TrainConfig(
            epochs=1, batch_size=cfg.batch_size, lr=cfg.probe_lr, seed=cfg.seed,
            device=cfg.device, max_steps=2 * cfg.probe_steps), progress=False,
            distributed=D.is_distributed())
    loss, acc = evaluate(m, ctx.val_data, cfg.device, cfg.batch_size)
    return {"val_acc": acc, "val_loss": loss, "converted": len(layers),
            "drop_pp": pp(inp.baseline["val_acc"], acc), **measure(ctx, m)}


def run_final(ctx: SearchContext, inp: FinalInputs) -> dict:
    """``{"dense", "chosen", "naive": numbers}``; each entry saved in the state as it is done
    (a resume trains only what is missing, itself resuming from its checkpoints)."""
    final = ctx.state.get("final", {})
    if "dense" not in final:
        final["dense"] = {"val_acc": inp.baseline["val_acc"],
                          "val_loss": inp.baseline["val_loss"], **measure(ctx, inp.dense)}
        ctx.state.put("final", final)
    for name, layers in (("chosen", inp.chosen), ("naive", inp.candidates)):
        if name not in final:
            final[name] = _final_model(ctx, inp, name, layers)
            ctx.state.put("final", final)
    return D.broadcast_object(final)
