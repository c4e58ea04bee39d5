"""The verdict a user reads: what was chosen, what it saves (params, MACs, measured time, with
the timing noise), what it costs in accuracy over the seeds (mean +- sample standard
deviation, per seed), how naive compares, and whether the chosen-vs-naive difference is
larger than the noise -- as numbers (``report.json``) and in words (``summary.md``, the CLI).

"Larger than the noise": in every seed, the paired difference (naive drop - chosen drop)
exceeds that seed's measurement noise -- the 95% half-width of the difference of two
accuracies measured on ``val_size`` images, 1.96 sqrt(p_c (1 - p_c) / n + p_n (1 - p_n) / n)
(binomial, normal approximation; about 1.3 pp for one 98% accurate model on 450 images).
Beside it, across seeds: whether the mean difference is above twice its standard error
(sd / sqrt(seeds)); a model whose recovery varies a lot from seed to seed (naive at 1/16
starts near chance) can fail that with 3 seeds while losing more in every one of them.

"Not slower": the chosen model's median step time is at most the dense one's plus the timing
noise: two robust standard deviations (2 x 1.4826 x the median absolute deviation) of the
timing rounds, the larger of the two models'. Robust because one round disturbed by another
job on a shared machine (seen: 28 -> 146 ms) would make a max - min spread so wide that
"not slower" says nothing; the max - min spread is reported beside it."""

from __future__ import annotations

import math
import statistics

from .final import mean_sd
from .final import noise_pp as _noise_pp
from .final import pct_saved as _pct_saved
from .verdict_peers import peer_lines

__all__ = ["verdict", "verdict_lines"]


def _spread(xs) -> float:
    return (max(xs) - min(xs)) if xs else 0.0


def _robust_noise(xs) -> float:
    """2 robust standard deviations: 2 x 1.4826 x the median absolute deviation."""
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    return 2 * 1.4826 * statistics.median(abs(x - med) for x in xs)


def _timing(final: dict, key: str) -> dict:
    d, c = final["dense"], final["chosen"]
    rd, rc = d.get(f"{key}_rounds", []), c.get(f"{key}_rounds", [])
    noise = max(_robust_noise(rd), _robust_noise(rc))
    return {
        "dense_ms": d[key],
        "chosen_ms": c[key],
        "naive_ms": final["naive"][key],
        "noise_ms": round(noise, 4),
        "spread_ms": round(max(_spread(rd), _spread(rc)), 4),
        "rounds": len(d.get(f"{key}_rounds", [])),
        "not_slower": c[key] <= d[key] + noise,
    }


def verdict(final: dict, selection: dict, n_layers: int, val_size: int | None = None) -> dict:
    """The verdict's numbers (empty without a final comparison); ``val_size``: the number of
    validation images (None: the per-seed noise is not known)."""
    if not final or not all(n in final for n in ("dense", "chosen", "naive")):
        return {}
    d, c, n = final["dense"], final["chosen"], final["naive"]
    budget = selection.get("max_drop")
    dc, dn = (
        c.get("drop_per_seed_pp", [c.get("drop_pp", 0.0)]),
        n.get("drop_per_seed_pp", [n.get("drop_pp", 0.0)]),
    )
    diff = [b - a for a, b in zip(dc, dn)]
    diff_mean, diff_sd = mean_sd(diff)
    se = diff_sd / math.sqrt(len(diff)) if len(diff) > 1 else None
    noise = (
        [
            round(_noise_pp(a, b, val_size), 4)
            for a, b in zip(
                c.get("val_acc_per_seed", [c["val_acc"]]), n.get("val_acc_per_seed", [n["val_acc"]])
            )
        ]
        if val_size
        else None
    )
    above = None if noise is None else sum(x > e for x, e in zip(diff, noise))
    return {
        "seeds": len(dc),
        "budget_pp": budget,
        "chosen_layers": len(selection["chosen"]),
        "candidate_layers": n_layers,
        "chosen_params_saved_pct": _pct_saved(c["params"], d["params"]),
        "chosen_macs_saved_pct": _pct_saved(c["macs"], d["macs"]),
        "naive_params_saved_pct": _pct_saved(n["params"], d["params"]),
        "naive_macs_saved_pct": _pct_saved(n["macs"], d["macs"]),
        "chosen_drop_pp": round(mean_sd(dc)[0], 4),
        "chosen_drop_sd_pp": round(mean_sd(dc)[1], 4),
        "chosen_drop_per_seed_pp": dc,
        "naive_drop_pp": round(mean_sd(dn)[0], 4),
        "naive_drop_sd_pp": round(mean_sd(dn)[1], 4),
        "naive_drop_per_seed_pp": dn,
        "chosen_within_budget": budget is not None and mean_sd(dc)[0] <= budget,
        "chosen_seeds_within_budget": sum(x <= budget for x in dc) if budget is not None else 0,
        "naive_over_budget": budget is not None and mean_sd(dn)[0] > budget,
        "naive_minus_chosen_pp": round(diff_mean, 4),
        "naive_minus_chosen_sd_pp": round(diff_sd, 4),
        "naive_minus_chosen_per_seed_pp": [round(x, 4) for x in diff],
        "noise_per_seed_pp": noise,
        "seeds_above_noise": above,
        "larger_than_noise": None if noise is None else above == len(diff),
        "noise_2se_pp": None if se is None else round(2 * se, 4),
        "mean_above_2se": None if se is None else bool(diff_mean > 2 * se),
        "train_step": _timing(final, "train_step_ms"),
        "infer": _timing(final, "infer_ms"),
    }


def _pm(m, s):
    return f"{m:+.2f} +- {s:.2f} pp"


def verdict_lines(v: dict) -> list[str]:
    """The verdict in words, one sentence a line."""
    if not v:
        return ["No final comparison was run (final=False): no verdict."]
    k = v["seeds"]
    per = lambda xs: " / ".join(f"{x:+.2f}" for x in xs)  # noqa: E731
    lines = [
        f"Chosen: {v['chosen_layers']} of {v['candidate_layers']} layers, "
        f"{v['chosen_params_saved_pct']:.0f}% fewer params, {v['chosen_macs_saved_pct']:.0f}% "
        f"fewer MACs than dense.",
        f"Accuracy cost of the chosen plan: {_pm(v['chosen_drop_pp'], v['chosen_drop_sd_pp'])} "
        f"over {k} seed{'s' if k > 1 else ''} (per seed {per(v['chosen_drop_per_seed_pp'])}): "
        f"{'within' if v['chosen_within_budget'] else 'OVER'} the {v['budget_pp']} pp budget on "
        f"average; {v['chosen_seeds_within_budget']} of {k} seeds within it.",
        f"Naive (all {v['candidate_layers']} layers, {v['naive_params_saved_pct']:.0f}% fewer "
        f"params, {v['naive_macs_saved_pct']:.0f}% fewer MACs): "
        f"{_pm(v['naive_drop_pp'], v['naive_drop_sd_pp'])} (per seed "
        f"{per(v['naive_drop_per_seed_pp'])}): "
        f"{'over' if v['naive_over_budget'] else 'within'} the budget.",
    ]
    diff = (
        f"Chosen vs naive: naive loses {v['naive_minus_chosen_pp']:+.2f} +- "
        f"{v['naive_minus_chosen_sd_pp']:.2f} pp more (paired per seed: "
        f"{per(v['naive_minus_chosen_per_seed_pp'])})"
    )
    if v["larger_than_noise"] is None:
        diff += "; the validation size is unknown: no per-seed noise"
    else:
        lo, hi = min(v["noise_per_seed_pp"]), max(v["noise_per_seed_pp"])
        diff += (
            f": {'LARGER' if v['larger_than_noise'] else 'NOT larger'} than the noise "
            f"({v['seeds_above_noise']} of {k} seeds above their 95% measurement "
            f"noise, {lo:.2f}-{hi:.2f} pp)"
        )
    if v["mean_above_2se"] is None:
        diff += "; one seed: no spread across seeds."
    else:
        diff += (
            f"; across seeds the mean is {'above' if v['mean_above_2se'] else 'NOT above'}"
            f" 2 standard errors ({v['noise_2se_pp']:.2f} pp)."
        )
    lines.append(diff)
    for what, t in (("Train step", v["train_step"]), ("Inference", v["infer"])):
        speed = "not slower than dense within the noise" if t["not_slower"] else "SLOWER than dense"
        lines.append(
            f"{what}: chosen {t['chosen_ms']:.2f} ms vs dense {t['dense_ms']:.2f} ms (naive "
            f"{t['naive_ms']:.2f}; timing noise {t['noise_ms']:.2f} ms, 2 robust sd of "
            f"{t['rounds']} rounds, whose max - min spread is {t.get('spread_ms', 0):.2f} "
            f"ms): chosen is {speed}."
        )
    if v.get("ladder"):
        lines += peer_lines(v["ladder"])
    return lines
