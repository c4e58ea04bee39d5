"""The default experiment in one call: data, model, search (baseline, probes, timings,
selection), the final comparison over seeds, the verdict, summary and plots -- what
``tritonbasis search`` runs. Its settings are an :class:`.config.ExperimentConfig` (model and
data) and a :class:`.config.SearchConfig`; ``docs/experiments.md`` says how the defaults were
chosen."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from ..data import get_data
from ..models import get_model
from .config import ExperimentConfig, SearchConfig
from .report import SearchReport

__all__ = ["build", "run_experiment"]


def build(exp: ExperimentConfig, search: SearchConfig):
    """``(model, train_data, val_data, search_config, identity)`` of an experiment: the data
    split, the seeded initial model, the search config with the experiment's spec (ratio,
    keep_basis), and the identity hashed into the search state."""
    kw = (
        {"size": exp.image_size, "val_fraction": exp.val_fraction, "seed": exp.split_seed}
        if exp.data == "digits"
        else {}
    )
    train_data, val_data, num_classes, info = get_data(exp.data, exp.data_dir, **kw)
    torch.manual_seed(search.seed)
    model = get_model(exp.model, num_classes=num_classes, width=exp.width)
    cfg = replace(search, spec={**search.spec, **exp.spec()})
    identity = {"model": exp.model, "width": exp.width, "data": info}
    return model, train_data, val_data, cfg, identity


def run_experiment(
    exp: ExperimentConfig | None = None,
    search: SearchConfig | None = None,
    *,
    out: str | os.PathLike = "runs/search",
    progress: bool = True,
    log=print,
) -> SearchReport:
    """Run (or resume, from ``out``) the whole experiment; returns the report (also written
    to ``out``: report.json, plan.json, summary.md, sensitivity.png, tradeoff.png)."""
    from . import sensitivity_search

    exp = exp if exp is not None else ExperimentConfig()
    search = search if search is not None else SearchConfig()
    model, train_data, val_data, cfg, identity = build(exp, search)
    return sensitivity_search(
        model,
        train_data,
        val_data,
        config=cfg,
        out=out,
        identity=identity,
        progress=progress,
        log=log,
    )
