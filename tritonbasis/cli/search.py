"""``tritonbasis search``: the main job, the default experiment of ``docs/experiments.md``
(:func:`tritonbasis.recipes.search.run_experiment`: data, baseline, search, the final
comparison over seeds, the verdict, summary and plots).

Its flags are generated (:mod:`tritonbasis.util.config_args`) from
:class:`~tritonbasis.recipes.search.ExperimentConfig` (model and data: ``--model``,
``--width``, ``--data``, ``--image-size``, ``--ratio``, ``--keep-basis``, ...) and
:class:`~tritonbasis.recipes.search.SearchConfig` (every field but ``spec``, which
``--ratio``/``--keep-basis`` build), so the defaults are the dataclasses' and a new field is a
new flag; ``--out``, ``--overwrite`` and ``--quiet`` are the command's own."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..recipes.search import ExperimentConfig, SearchConfig, verdict_lines
from ..recipes.train_config import SCHEDULES
from .common import (
    add_config_arguments,
    check_data_dir,
    config_from_args,
    is_writer_rank,
    run_folder,
)
from .guard import (
    device_arg,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    unit_ratio,
    width_float,
)

# the experiment the command runs by default (ExperimentConfig's defaults: sized for a CPU)
DEFAULT = {
    "model": ExperimentConfig.model,
    "width": ExperimentConfig.width,
    "image_size": ExperimentConfig.image_size,
}
# SearchConfig fields whose flag is not --field-name
NAMES = {"baseline_epochs": "--epochs"}
# parse-time validators (a bad value: one line, exit 2, before anything is written); fields
# without one are checked by SearchConfig itself, still at parse time (config_from_args)
TYPES = {
    "max_drop": nonneg_float,
    "baseline_epochs": positive_int,
    "batch_size": positive_int,
    "lr": positive_float,
    "probe_steps": nonneg_int,
    "probe_lr": positive_float,
    "verify_steps": nonneg_int,
    "max_backoff": nonneg_int,
    "time_batch": positive_int,
    "time_steps": positive_int,
    "seed": nonneg_int,
    "device": device_arg,
    "final_epochs": nonneg_int,
    "final_lr": positive_float,
    "final_seeds": positive_int,
    "time_rounds": positive_int,
}
CHOICES = {"gain": ("macs", "params", "time"), "schedule": SCHEDULES}
# the command's words where they differ from the field's: the command builds a fresh model, so
# the API's "0: the given weights are the baseline" has no meaning here (0 is refused)
HELP = {
    "baseline_epochs": "epochs of the dense baseline (and of every final seed's dense "
    "model), at least 1: the command trains its model from scratch"
}
EXP_TYPES = {
    "width": width_float,
    "image_size": positive_int,
    "ratio": unit_ratio,
    "split_seed": nonneg_int,
}
# what `search --overwrite` deletes: only names the search itself writes
SEARCH_OUTPUTS = (
    "state.json",
    "report.json",
    "plan.json",
    "summary.md",
    "sensitivity.png",
    "tradeoff.png",
    "ladder_tradeoff.png",
    "baseline.pt",
)
SEARCH_DIRS = ("baseline", "probe_tmp", "final_chosen", "final_naive")
SEARCH_DIR_GLOBS = ("final_seed*",)  # each final seed's dense / chosen / naive checkpoints


def add_parser(sub) -> None:
    se = sub.add_parser("search", help="layer-sensitivity search (the main job)")
    add_config_arguments(se, ExperimentConfig, types=EXP_TYPES)
    add_config_arguments(
        se, SearchConfig, exclude=("spec",), help=HELP, names=NAMES, types=TYPES, choices=CHOICES
    )
    # the ladder is the default; --ladder is still accepted, so commands written when it was
    # a switch run the same search
    se.add_argument(
        "--ladder",
        dest="ladder",
        action="store_true",
        default=SearchConfig.ladder,
        help="the rank-ladder search (the default; --no-ladder: the single-ratio search)",
    )
    se.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/search-<time>); an existing one is resumed",
    )
    se.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the search files in OUT and start over (instead of resuming)",
    )
    se.add_argument("--quiet", action="store_true", help="no progress bars")


def check(p, args) -> None:
    """Parse-time checks: the data folder, and the config built (a value SearchConfig
    refuses is a usage error naming its flag); the config is kept as ``args.config``."""
    check_data_dir(p, args)
    args.config = config(p, args)


def config(p, args) -> SearchConfig:
    args.experiment = config_from_args(p, ExperimentConfig, args)
    return config_from_args(p, SearchConfig, args, names=NAMES, spec=args.experiment.spec())


def _guard_out(out: Path, args) -> None:
    if not args.overwrite or not is_writer_rank():
        return
    for n in SEARCH_OUTPUTS:
        if (out / n).is_file():
            (out / n).unlink()
    dirs = [out / n for n in SEARCH_DIRS] + [d for g in SEARCH_DIR_GLOBS for d in out.glob(g)]
    for d in dirs:
        if d.is_dir():
            shutil.rmtree(d)


def run(args) -> int:
    """Config checked first (at parse time: nothing written for a refused start), then the
    output folder (writable, not locked by a live search), then :func:`_run` under its
    lock."""
    out = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
    with run_folder(out, "search"):
        _guard_out(out, args)
        return _run(args, out, args.config)


def _run(args, out: Path, cfg: SearchConfig) -> int:
    from ..recipes.search import run_experiment

    exp: ExperimentConfig = args.experiment
    is_default = (
        exp.data == "digits" and exp.model == DEFAULT["model"] and exp.width == DEFAULT["width"]
    )
    print(
        f"tritonbasis search: {exp.model} (width {exp.width}) on {exp.data}"
        f"{f' at {exp.image_size}x{exp.image_size} px' if exp.data == 'digits' else ''}, "
        f"C_b = {exp.ratio} C_out, budget {cfg.max_drop} pp, {cfg.final_seeds} final "
        f"seed(s) -> {out}"
    )
    if is_default:
        print(
            "  (default run sized for a CPU: a quarter-width ResNet18 on 16x16 digits, a few "
            "minutes on 2 cores; for the real experiment use --data cifar10 --data-dir DIR "
            "--width 1 on a GPU)"
        )
    report = run_experiment(exp, cfg, out=out, progress=not args.quiet)
    print()
    print(report.table())
    print()
    s = report.selection
    lad = report.ladder
    if lad:
        print(
            f"rank ladder: {len(lad['plan'])}/{len(report.layers)} layers converted at their "
            f"own C_b (source {lad['source']}), verified {lad['verified_drop']:.2f} pp; "
            f"{len(lad['probes'])} (layer, rank) probes"
        )
    print(
        f"{'single-ratio subset: ' if lad else ''}chosen "
        f"{len(s['chosen'])}/{len(report.layers)} layers, predicted drop "
        f"{s['predicted_drop']:.2f} pp, verified {s['verified_drop']:.2f} pp "
        f"(budget {cfg.max_drop}); zero-shot vs probe Spearman rho "
        f"{report.spearman_zero_shot_vs_probe}; {report.seconds:.0f} s"
    )
    print()
    print("Verdict:")
    for line in verdict_lines(report.verdict):
        print(f"  {line}")
    print()
    print(
        f"outputs: {out}/report.json, plan.json, summary.md, sensitivity.png, tradeoff.png"
        + (", ladder_tradeoff.png" if lad else "")
    )
    print(
        f"next: tritonbasis train --plan {out}/plan.json --width {exp.width} "
        f"--image-size {exp.image_size}"
    )
    return 0
