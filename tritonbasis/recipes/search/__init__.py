"""Layer-sensitivity search with skip-training: which convs can become basis convs without
hurting the final model.

Stages, one module each, run in order by :func:`sensitivity_search` (each saved atomically in
``<out>/state.json``, :mod:`.state`; a killed search resumes without redoing finished work; a
state written under another configuration is refused, naming the differing fields;
``state.json`` is checked against its schema and ``baseline.pt`` against the digest recorded in
it, so a corrupt file is an error, never trusted):

1. **baseline** (:mod:`.baseline`) -- train the dense model for the full budget (or take the
   given weights with ``baseline_epochs=0``), checkpointed through
   :func:`tritonbasis.recipes.train.train`.
2. **probes** (:mod:`.probes`) -- for each candidate conv: start from the baseline weights
   (skip-training: no training from scratch), convert only that conv (SVD init), record the
   *zero-shot* drop (right after conversion), fine-tune briefly (``probe_steps``; optionally
   only the converted conv and the BN layers) and record the *probe* drop in validation
   accuracy (percentage points) and loss. Optionally the same for layer groups ("light" /
   "heavy" by parameter count). Spearman's rho says how well the free zero-shot ranking
   predicts the probe ranking.
3. **gains** (:mod:`.probes`) -- parameters and MACs saved per layer, and the measured
   forward+backward time of the dense conv vs the real op at that layer's shape on the current
   device.
4. **selection** (:mod:`.selection`) -- rank the layers by gain per unit of sensitivity (the
   probe's validation-loss increase by default); choose the longest score-ordered prefix whose
   *combined* probe fits ``max_drop`` (bisection over the prefix length; ``greedy``: summed
   drops, then back-off), recording predicted vs verified drop for every step.
5. **final** (:mod:`.final`) -- for ``final_seeds`` seeds, each with its own trained dense
   model: convert it (the chosen subset; every layer, "naive") and fine-tune
   ``final_epochs``; paired drops per seed, params, MACs, train step and inference time
   (``time_rounds`` interleaved rounds); the verdict (:mod:`.verdict`) in numbers and words.

With ``ladder=True`` (:mod:`.ladder_stage`), after stage 4: rung probes per (layer, C_b) and
a per-layer-rank plan (:mod:`.ladder`), the peer rules at their best fitting settings
(:mod:`.peers`), a refinement from the best verified plan; the final stage then fine-tunes
that plan ("chosen") and every peer rule's beside dense and naive.

:func:`run_experiment` (:mod:`.experiment`) runs the whole default experiment -- data, model,
search, final over seeds, summary, plots -- from an :class:`ExperimentConfig` and a
:class:`SearchConfig` (what ``tritonbasis search`` calls).

Outputs in ``<out>`` (:mod:`.report`): ``report.json`` (:class:`SearchReport`), ``plan.json``
(for ``tritonbasis convert`` / ``train --plan``), ``summary.md`` and PNG plots.

Every stage gets the search's fixed inputs as one :class:`.context.SearchContext`, and the
stages that probe get the probe as a function ``(layers, steps) -> drops``; the probe they get
is this package's ``_probe`` (:func:`.probes.probe`) bound to the baseline, looked up when the
search runs -- the one place to swap the probe (tests replace it to count or fail probes).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from ...conversion.convert import candidate_convs
from ...nn.spec import BasisSpec
from .. import distributed as D
from ..measure import count_params
from .baseline import run_baseline
from .config import ExperimentConfig, SearchConfig, help_texts
from .context import SearchContext
from .final import FinalInputs, run_final
from .ladder_stage import final_plans, run_ladder_stage
from .probes import (
    ProbeSetup,
    candidates,
    measure_gains,
    run_group_probes,
    run_layer_probes,
    spearman,
)
from .probes import probe as _probe
from .report import SearchReport, plot, summary_markdown, write_outputs
from .selection import layer_rows, mark_ladder, plan_of, run_selection
from .state import SearchState, SearchStateError, config_hash
from .state import default_device as _default_device  # noqa: F401 (S._default_device)
from .verdict import verdict, verdict_lines
from .verdict_peers import peer_verdict

__all__ = [
    "ExperimentConfig",
    "SearchConfig",
    "SearchReport",
    "SearchStateError",
    "config_hash",
    "help_texts",
    "plot",
    "run_experiment",
    "sensitivity_search",
    "summary_markdown",
    "verdict_lines",
    "write_outputs",
]


def sensitivity_search(
    model: nn.Module,
    train_data,
    val_data,
    *,
    spec: BasisSpec | dict | None = None,
    max_drop: float | None = None,
    config: SearchConfig | None = None,
    out: str | os.PathLike = "runs/search",
    identity: dict | None = None,
    progress: bool = True,
    log=print,
) -> SearchReport:
    """Run (or resume) the search; see the package docstring.

    Args:
        model: the dense model (its weights are the baseline if ``baseline_epochs == 0``;
            otherwise it is the initialisation the baseline, chosen and naive models share).
        train_data, val_data: Datasets of ``(image, label)``.
        spec, max_drop: shortcuts for ``config.spec`` / ``config.max_drop``.
        config: :class:`SearchConfig`.
        out: folder for the state, checkpoints, report, plan, summary and plots.
        identity: JSON-able description of the model and data (part of the state hash, so a
            state from another model or data set is refused).
    """
    cfg = _resolved_config(config, spec, max_drop)
    identity = _identity(identity, model, train_data, val_data)
    ctx = _open(
        cfg,
        identity,
        train_data,
        val_data,
        Path(out),
        progress,
        log,
        [f for f, _ in candidate_convs(model)],
    )
    t_start = time.perf_counter()
    init_state = copy.deepcopy(model.state_dict())  # the shared initialisation

    dense, baseline = run_baseline(ctx, model)  # 1
    setup = ProbeSetup(
        cfg, ctx.spec, train_data, val_data, baseline["val_acc"], baseline["val_loss"]
    )

    def probe(fqns, steps):  # the package's _probe, looked up now (tests swap it)
        return _probe(dense, fqns, setup, steps)

    cands, conv_rows = candidates(dense, ctx.spec, ctx.shape)  # 2
    # every layer the state names must be one of these (an energy spec's C_b, so whether a
    # conv saves anything, depends on the trained weights: known only now)
    D.on_main(lambda: ctx.state.check(cands))
    probes = run_layer_probes(ctx, cands, probe)
    groups = run_group_probes(ctx, cands, conv_rows, probes, probe)
    gains = measure_gains(ctx, dense, cands)  # 3
    rows = layer_rows(cands, conv_rows, probes, gains, cfg.gain, cfg.sensitivity)  # 4
    selection = run_selection(ctx, rows, probe)
    lad, plans, chosen = {}, {}, sorted(selection["chosen"])
    if cfg.ladder:  # per-layer ranks, and the peer rules at their best fitting settings
        lad = run_ladder_stage(ctx, dense, cands, conv_rows, probes, selection, probe)
        plans, chosen = final_plans(ctx, lad), sorted(lad["plan"])
        mark_ladder(rows, lad)
    final = ctx.state.get("final", {})  # 5
    if cfg.final:
        final = run_final(
            ctx,
            FinalInputs(
                model,
                init_state,
                dense,
                baseline,
                chosen,
                cands,
                gains,
                plans=plans,
                base_cb=lad.get("base_cb", {}),
                rung_gains=lad.get("rung_gains", {}),
            ),
        )
    chosen_sel = {**selection, "chosen": chosen}

    report = SearchReport(
        config=asdict(cfg),
        identity=identity,
        baseline={k: v for k, v in baseline.items() if k != "history"},
        layers=rows,
        groups=groups,
        spearman_zero_shot_vs_probe=spearman(
            [r["zero_shot_drop"] for r in rows], [r["probe_drop"] for r in rows]
        ),
        selection=selection,
        final=final,
        plan=plan_of(rows, ctx.spec, lad.get("plan")),
        seconds=round(ctx.state.get("seconds", 0.0) + time.perf_counter() - t_start, 2),
        world_size=D.world_size(),
        verdict=(
            verdict(final, chosen_sel, len(rows), identity.get("val_size")) if cfg.final else {}
        ),
        ladder={k: v for k, v in lad.items() if k != "base_cb"},
    )
    if report.verdict and lad:
        report.verdict["ladder"] = peer_verdict(
            final, report.ladder, cfg.max_drop, identity.get("val_size")
        )
    ctx.state.put("seconds", report.seconds)
    if D.is_main():
        write_outputs(report, ctx.out)
    return report


def _resolved_config(config, spec, max_drop) -> SearchConfig:
    """The caller's config (copied) with the ``spec`` / ``max_drop`` shortcuts applied,
    validated again."""
    cfg = copy.deepcopy(config) if config is not None else SearchConfig()
    if spec is not None:
        cfg.spec = spec.to_dict() if isinstance(spec, BasisSpec) else dict(spec)
    if max_drop is not None:
        cfg.max_drop = max_drop
    cfg.__post_init__()
    return cfg


def _identity(identity, model, train_data, val_data) -> dict:
    """The caller's identity, completed with the model class, its size and the data sizes."""
    identity = dict(identity or {})
    identity.setdefault("model_class", type(model).__name__)
    identity.setdefault("params", count_params(model))
    identity.setdefault("train_size", len(train_data))
    identity.setdefault("val_size", len(val_data))
    return identity


def _open(
    cfg: SearchConfig, identity: dict, train_data, val_data, out: Path, progress: bool, log, layers
) -> SearchContext:
    """Check what can be checked before anything is written, then read (or create) the
    state (``layers``: the convs its layer names may be): under torchrun rank 0 owns
    ``state.json`` (and every file); the other ranks get a replica."""
    if cfg.baseline_epochs > 0 or cfg.final:  # these stages train with DDP under torchrun
        D.check_global_batch(cfg.batch_size, len(train_data))
    state = D.main_state(
        lambda: SearchState(out, config_hash(cfg, identity), identity, asdict(cfg), layers=layers)
    )
    return SearchContext(
        cfg=cfg,
        spec=BasisSpec.from_dict(cfg.spec),
        train_data=train_data,
        val_data=val_data,
        out=out,
        state=state,
        shape=tuple(train_data[0][0].shape),
        progress=progress,
        log=log,
    )


def run_experiment(*a, **kw):
    """:func:`.experiment.run_experiment` (imported on first use: it imports the data and
    model modules)."""
    from .experiment import run_experiment as run

    return run(*a, **kw)
