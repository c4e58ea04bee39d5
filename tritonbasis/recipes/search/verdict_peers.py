"""The ladder's verdict: the chosen plan against every peer rule's best fitting setting
(:mod:`.peers`) -- MACs, params and measured time saved, the accuracy drop over the seeds
(paired, mean +- sample sd), and whether the chosen plan saves more than the best peer rule
and loses no more than it beyond the noise (the per-seed 95% measurement noise of the
difference of two accuracies, as :mod:`.verdict` computes it for chosen vs naive).

With ``gain="time"`` the objective is measured time: each plan's ``time_saved_ms`` (its
layers' forward+backward time saved, summed from the per-(layer, C_b) timings the search
took) is stated beside the MACs, the best peer rule is the one saving the most of it, and
``saves_more_time_than_every_peer`` compares it."""

from __future__ import annotations

from .final import mean_sd
from .final import noise_pp as _noise_pp
from .final import pct_saved as _pct_saved
from .peers import RULES

__all__ = ["peer_lines", "peer_verdict"]


def _entry(final: dict, name: str) -> dict:
    d, m = final["dense"], final[name]
    drops = m.get("drop_per_seed_pp", [m.get("drop_pp", 0.0)])
    mean, sd = mean_sd(drops)
    return {
        "macs_saved_pct": _pct_saved(m["macs"], d["macs"]),
        "params_saved_pct": _pct_saved(m["params"], d["params"]),
        "train_step_saved_pct": _pct_saved(m["train_step_ms"], d["train_step_ms"]),
        "infer_saved_pct": _pct_saved(m["infer_ms"], d["infer_ms"]),
        "drop_pp": round(mean, 4),
        "drop_sd_pp": round(sd, 4),
        "drop_per_seed_pp": drops,
        "converted": m.get("converted"),
    }


def peer_verdict(final: dict, ladder: dict, budget: float, val_size: int | None) -> dict:
    """Numbers of the comparison (empty without a ladder or a final comparison)."""
    if not ladder or not final or "chosen" not in final:
        return {}
    timed = ladder.get("gain") == "time"
    out = {"chosen": {**_entry(final, "chosen"), "source": ladder.get("source")}, "rules": {}}
    if timed:
        out["chosen"]["time_saved_ms"] = ladder["time_saved_ms"]
    for rule in RULES:
        p = ladder.get("peers", {}).get(rule)
        if p is None:
            continue
        row = {"setting": p["setting"], "fits": p["fits"], "verified_drop": p["verified_drop"]}
        if timed:
            row["time_saved_ms"] = p["saved"]
        if rule in final:
            row.update(_entry(final, rule))
        out["rules"][rule] = row
    scored = {r: v for r, v in out["rules"].items() if "macs_saved_pct" in v}
    if not scored:
        out["best_peer"] = None
        return out
    key = "time_saved_ms" if timed else "macs_saved_pct"  # the objective the search maximised
    best = max(scored, key=lambda r: (scored[r][key], -RULES.index(r)))
    b, c = scored[best], out["chosen"]
    diff = [x - y for x, y in zip(c["drop_per_seed_pp"], b["drop_per_seed_pp"])]
    noise = None
    if val_size:
        noise = [
            round(_noise_pp(pa, pb, val_size), 4)
            for pa, pb in zip(final["chosen"]["val_acc_per_seed"], final[best]["val_acc_per_seed"])
        ]
    macs_left = lambda v: max(100.0 - v["macs_saved_pct"], 1e-9)  # noqa: E731
    out.update(
        best_peer=best,
        chosen_minus_best_peer_drop_pp=round(mean_sd(diff)[0], 4),
        chosen_minus_best_peer_drop_sd_pp=round(mean_sd(diff)[1], 4),
        chosen_minus_best_peer_per_seed_pp=[round(x, 4) for x in diff],
        noise_per_seed_pp=noise,
        # "no worse": in every seed the chosen plan loses at most the noise more than the peer
        no_worse_than_best_peer=None if noise is None else all(x <= e for x, e in zip(diff, noise)),
        saves_more_macs_than_every_peer=all(
            c["macs_saved_pct"] > v["macs_saved_pct"] for v in scored.values()
        ),
        # the chosen model's MACs as a fraction of the best peer's (lower: smaller model)
        macs_vs_best_peer=round(macs_left(c) / macs_left(b), 4),
        chosen_seeds_within_budget=sum(x <= budget for x in c["drop_per_seed_pp"]),
    )
    if timed:
        out["saves_more_time_than_every_peer"] = all(
            c["time_saved_ms"] > v["time_saved_ms"] for v in scored.values()
        )
    return out


def peer_lines(pv: dict) -> list[str]:
    """The comparison in words."""
    if not pv:
        return []
    c = pv["chosen"]
    per = lambda xs: " / ".join(f"{x:+.2f}" for x in xs)  # noqa: E731
    # with gain=time: the summed per-layer timings the plans were chosen by
    ms = lambda v: (  # noqa: E731
        f", {v['time_saved_ms']:.3f} ms per-layer time saved" if "time_saved_ms" in v else ""
    )
    lines = [
        f"Ladder plan (source: {c['source']}): {c['macs_saved_pct']:.1f}% fewer MACs, "
        f"{c['params_saved_pct']:.1f}% fewer params{ms(c)}, train step "
        f"{c['train_step_saved_pct']:+.1f}% saved; drop {c['drop_pp']:+.2f} +- "
        f"{c['drop_sd_pp']:.2f} pp (per seed {per(c['drop_per_seed_pp'])})."
    ]
    for rule, v in pv["rules"].items():
        if "macs_saved_pct" not in v:
            lines.append(f"Peer {rule}: no setting fits the budget (nothing fine-tuned).")
            continue
        lines.append(
            f"Peer {rule} {v['setting']}: {v['macs_saved_pct']:.1f}% fewer MACs, "
            f"{v['params_saved_pct']:.1f}% fewer params{ms(v)}, drop {v['drop_pp']:+.2f} +- "
            f"{v['drop_sd_pp']:.2f} pp (per seed {per(v['drop_per_seed_pp'])})."
        )
    if pv.get("best_peer"):
        b = pv["rules"][pv["best_peer"]]
        noise = pv["noise_per_seed_pp"]
        nz = "" if noise is None else f", 95% noise {min(noise):.2f}-{max(noise):.2f} pp"
        lines.append(
            f"Against the best peer rule ({pv['best_peer']}, {b['macs_saved_pct']:.1f}% fewer "
            f"MACs): the chosen plan keeps {100 * pv['macs_vs_best_peer']:.0f}% of its MACs "
            f"and "
            f"{'saves more MACs than every peer rule' if pv['saves_more_macs_than_every_peer'] else 'does NOT save more MACs than every peer rule'}"  # noqa: E501
            f"; it loses {pv['chosen_minus_best_peer_drop_pp']:+.2f} +- "
            f"{pv['chosen_minus_best_peer_drop_sd_pp']:.2f} pp more (per seed "
            f"{per(pv['chosen_minus_best_peer_per_seed_pp'])}{nz})"
            + (
                ""
                if pv["no_worse_than_best_peer"] is None
                else f": {'within' if pv['no_worse_than_best_peer'] else 'BEYOND'} the noise"
            )
            + "."
        )
        if "saves_more_time_than_every_peer" in pv:
            more = "saves" if pv["saves_more_time_than_every_peer"] else "does NOT save"
            lines.append(
                "Measured time (the search's objective): the chosen plan saves "
                f"{c['time_saved_ms']:.3f} ms of per-layer forward+backward time, the best "
                f"peer rule {b['time_saved_ms']:.3f} ms; it {more} more time than every peer "
                "rule."
            )
    return lines
