"""Stage 1, the baseline: the dense model trained for the full budget (or the given weights
with ``baseline_epochs=0``), evaluated, saved as ``baseline.pt``."""

from __future__ import annotations

import copy

import torch.nn as nn

from ...util.fileio import atomic_torch_save, content_digest
from .. import distributed as D
from ..evaluation import evaluate
from ..measure import count_macs, count_params
from ..train import train
from .context import SearchContext
from .state import load_baseline

__all__ = ["run_baseline"]


def run_baseline(ctx: SearchContext, model: nn.Module) -> tuple[nn.Module, dict]:
    """``(dense, baseline)``: a copy of ``model`` holding the baseline weights (on every rank,
    read by rank 0 and broadcast), and the baseline's numbers (``val_acc``, ``val_loss``,
    ``params``, ``macs``, ``history``). Trained through
    :func:`tritonbasis.recipes.train.train` with checkpoints in ``<out>/baseline``, so a
    search killed during the baseline resumes inside it."""
    cfg, state, out = ctx.cfg, ctx.state, ctx.out
    base_path = out / "baseline.pt"
    baseline = state.get("baseline")
    dense = copy.deepcopy(model)
    if baseline is None:
        if cfg.baseline_epochs > 0:
            ctx.log(f"[1/5] baseline: training the dense model for {cfg.baseline_epochs} epochs")
            res = train(
                dense,
                ctx.train_data,
                ctx.val_data,
                cfg.train_config(cfg.baseline_epochs),
                checkpoint_dir=out / "baseline",
                resume=True,
                progress=ctx.progress,
                distributed=D.is_distributed(),
            )
            hist = res.history
        else:
            ctx.log("[1/5] baseline: using the given weights (baseline_epochs=0)")
            hist = []
        loss, acc = evaluate(dense, ctx.val_data, cfg.device, cfg.batch_size)
        if D.is_main():
            atomic_torch_save(dense.state_dict(), base_path)
        baseline = {
            "val_acc": acc,
            "val_loss": loss,
            "params": count_params(dense),
            "macs": count_macs(dense, ctx.shape),
            "history": hist,
        }
        # baseline.pt stays a plain state_dict (load_state_dict(torch.load(...)) works); its
        # digest lives in the state and is checked on every resume
        state.doc["stages"]["baseline_sha256"] = content_digest(dense.state_dict())
        state.put("baseline", D.broadcast_object(baseline))
        baseline = state.get("baseline")
    else:
        ctx.log(f"[1/5] baseline: done (val acc {100 * baseline['val_acc']:.2f}%)")
    # rank 0 reads (checked: digest, names, shapes), broadcasts
    D.load_on_main(dense, lambda: load_baseline(base_path, state, dense))
    return dense, baseline
