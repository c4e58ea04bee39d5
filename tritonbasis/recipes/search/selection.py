"""Stage 4, selection: rank the layers by gain per unit of sensitivity, then choose which to
convert, with the *combined* probe of the chosen set (all of them converted at once) as the
ground truth -- single-layer drops do not add up (layers interact), so a sum of them is only a
prediction, reported beside every verification.

* ``bisect`` (default): the longest score-ordered prefix of layers whose combined probe fits
  ``max_drop``, found by bisection over the prefix length (about log2(layers) combined probes;
  each step's predicted and verified drop is recorded). It assumes a longer prefix never loses
  less; a chosen prefix is always one that was probed and fitted.
* ``greedy``: add layers while the summed single-layer drops fit, verify the set with one
  combined probe, and back off (drop the lowest-scoring layer) while it does not.

Either stops after ``max_backoff`` over-budget combined probes; one that stops without a
verified set within budget keeps the smallest set it probed, flagged OVER BUDGET."""

from __future__ import annotations

import sys
from dataclasses import replace

from ...conversion.convert import LayerReport
from ...nn.spec import BasisSpec
from .. import distributed as D
from .config import SearchConfig
from .context import Probe, SearchContext

__all__ = [
    "layer_rows",
    "mark_ladder",
    "plan_of",
    "run_selection",
    "select",
    "sensitivity_of",
    "spec_with",
    "warn_over_budget",
]

# sensitivity floors in the score: layers that lose nothing still rank by their gain
SCORE_FLOOR_PP = 0.05  # accuracy drop, percentage points
SCORE_FLOOR_LOSS = 0.005  # validation-loss increase, nats


def sensitivity_of(probe: dict, how: str) -> float:
    """A layer's sensitivity as the score divides by: its probe's validation-loss increase
    (``how="loss"``) or accuracy drop in pp (``"accuracy"``), floored."""
    if how == "loss":
        return max(probe["probe_loss_delta"], SCORE_FLOOR_LOSS)
    return max(probe["probe_drop"], SCORE_FLOOR_PP)


def layer_rows(
    cands: list[str],
    conv_rows: dict[str, LayerReport],
    probes: dict,
    gains: dict,
    gain: str,
    sensitivity: str = "loss",
) -> list[dict]:
    """One report row per candidate: its shape, savings, probe and timing results and its
    ``score`` (``gain`` -- macs, params or time saved -- per unit of ``sensitivity``)."""
    rows = []
    for f in cands:
        lr_ = conv_rows[f]
        g = gains[f]
        saved = {
            "macs": lr_.macs_before - lr_.macs_after,
            "params": lr_.params_before - lr_.params_after,
            "time": g["time_saved_ms"],
        }[gain]
        rows.append(
            {
                "fqn": f,
                "C_in": lr_.C_in,
                "C_out": lr_.C_out,
                "kernel": list(lr_.kernel),
                "stride": list(lr_.stride),
                "C_b": lr_.C_b,
                "out_pixels": lr_.out_pixels,
                "params_before": lr_.params_before,
                "params_after": lr_.params_after,
                "params_saved": lr_.params_before - lr_.params_after,
                "macs_before": lr_.macs_before,
                "macs_after": lr_.macs_after,
                "macs_saved": lr_.macs_before - lr_.macs_after,
                **probes[f],
                **g,
                "score": (saved / sensitivity_of(probes[f], sensitivity)) if saved > 0 else 0.0,
                "chosen": False,
            }
        )
    return rows


def _predicted(rows_by_fqn: dict, layers) -> float:
    """The sum of the layers' single-layer probe drops (negative ones count as 0)."""
    return round(sum(max(rows_by_fqn[f]["probe_drop"], 0.0) for f in layers), 4)


class _Verifier:
    """Combined probes, each saved in the state's ``"verifications"`` as it finishes (a
    resume re-uses them), and one record per selection step (predicted vs verified)."""

    def __init__(self, probe_fn: Probe, steps: int, state, rows_by_fqn: dict, log):
        self.probe_fn, self.steps, self.state, self.log = probe_fn, steps, state, log
        self.rows = rows_by_fqn
        self.verifications = state.get("verifications", [])
        self.steps_log: list[dict] = []

    def __call__(self, layers: list[str], budget: float) -> dict:
        key = sorted(layers)
        done = next((v for v in self.verifications if v["layers"] == key), None)
        if done is None:
            done = {"layers": key, **self.probe_fn(list(layers), self.steps)}
            self.verifications.append(done)
            self.state.put("verifications", self.verifications)
        pred = _predicted(self.rows, layers)
        fits = done["probe_drop"] <= budget
        self.steps_log.append(
            {
                "n_layers": len(layers),
                "predicted_drop": pred,
                "verified_drop": done["probe_drop"],
                "verified_loss_delta": done.get("probe_loss_delta"),
                "fits": fits,
            }
        )
        self.log(
            f"      combined probe of {len(layers)} layers: predicted {pred:.2f} pp, "
            f"verified {done['probe_drop']:.2f} pp ({'fits' if fits else 'over budget'})"
        )
        return done


def _bisect(order: list[str], verify: _Verifier, cfg: SearchConfig):
    """The longest prefix of ``order`` whose combined probe fits: ``lo`` is the longest
    prefix known to fit (0: none yet), ``hi`` the longest that may still fit."""
    lo, hi, fails, best, smallest_fail = 0, len(order), 0, None, None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        done = verify(order[:mid], cfg.max_drop)
        if done["probe_drop"] <= cfg.max_drop:
            lo, best = mid, done
        else:
            hi = mid - 1
            fails += 1
            if smallest_fail is None or mid < smallest_fail[0]:
                smallest_fail = (mid, done)
            if fails >= cfg.max_backoff and lo < hi:
                break
    if best is None and smallest_fail is not None and lo < hi:
        # stopped by max_backoff with nothing verified: the smallest set probed, over budget
        return order[: smallest_fail[0]], smallest_fail[1], fails
    return order[:lo], best, fails


def _greedy(order: list[str], rows_by_fqn: dict, verify: _Verifier, cfg: SearchConfig):
    chosen, predicted = [], 0.0
    for f in order:
        d = max(rows_by_fqn[f]["probe_drop"], 0.0)
        if predicted + d <= cfg.max_drop:
            chosen.append(f)
            predicted += d
    tries, done = 0, None
    while chosen:
        done = verify(chosen, cfg.max_drop)
        if done["probe_drop"] <= cfg.max_drop or tries >= cfg.max_backoff:
            break
        chosen = chosen[:-1]  # back off: drop the lowest-scoring chosen layer
        tries += 1
    return chosen, done, tries


def select(rows: list[dict], probe_fn: Probe, cfg: SearchConfig, state, log) -> dict:
    """The choice by ``cfg.selection`` (see the module docstring); every combined probe is
    saved in the state's ``"verifications"`` as it finishes (a resume re-uses them)."""
    order = [
        r["fqn"] for r in sorted((r for r in rows if r["score"] > 0), key=lambda r: -r["score"])
    ]
    by_fqn = {r["fqn"]: r for r in rows}
    steps = cfg.verify_steps if cfg.verify_steps is not None else 2 * cfg.probe_steps
    log(
        f"[4/5] selection ({cfg.selection}): {len(order)} layers by score "
        f"({cfg.gain} saved per unit of probe {cfg.sensitivity}), budget {cfg.max_drop} pp; "
        f"combined probes of {steps} steps"
    )
    verify = _Verifier(probe_fn, steps, state, by_fqn, log)
    if cfg.selection == "bisect":
        chosen, done, fails = _bisect(order, verify, cfg)
    else:
        chosen, done, fails = _greedy(order, by_fqn, verify, cfg)
    verified = done["probe_drop"] if (done is not None and chosen) else 0.0
    return {
        "method": cfg.selection,
        "order": order,
        "chosen": list(chosen),
        "predicted_drop": _predicted(by_fqn, chosen),
        # the verification of the final chosen set (on resume it need not be the last one)
        "verified_drop": verified,
        "verified_loss_delta": (
            done.get("probe_loss_delta") if (done is not None and chosen) else 0.0
        ),
        "within_budget": (not chosen) or verified <= cfg.max_drop,
        "steps": verify.steps_log,
        "verifications": verify.verifications,
        "backoffs": fails,
        "max_drop": cfg.max_drop,
    }


def run_selection(ctx: SearchContext, rows: list[dict], probe_fn: Probe) -> dict:
    """The stage: :func:`select` unless the state has its result; warns when over budget and
    marks the chosen rows (``row["chosen"]``)."""
    selection = ctx.state.get("selection")
    if selection is None:
        selection = select(rows, probe_fn, ctx.cfg, ctx.state, ctx.log)
        ctx.state.put("selection", D.broadcast_object(selection))
        selection = ctx.state.get("selection")
    warn_over_budget(selection, ctx.log)
    chosen = set(selection["chosen"])
    for r in rows:
        r["chosen"] = r["fqn"] in chosen
    return selection


def plan_of(rows: list[dict], spec: BasisSpec, ranks: dict | None = None) -> dict:
    """The plan (FQN -> spec dict, or None to keep the conv) of the chosen rows; with
    ``ranks`` (a ladder's ``{layer: C_b}``) each chosen layer gets its own C_b."""
    if ranks is not None:
        return {
            r["fqn"]: (spec_with(spec, ranks[r["fqn"]]).to_dict() if r["fqn"] in ranks else None)
            for r in rows
        }
    return {r["fqn"]: (spec.to_dict() if r["chosen"] else None) for r in rows}


def spec_with(spec: BasisSpec, cb: int) -> BasisSpec:
    """``spec`` (its form, init, mode) with C_b fixed to ``cb``."""
    return replace(spec, ratio=None, energy=None, basis_channels=int(cb))


def mark_ladder(rows: list[dict], lad: dict) -> None:
    """Per row: the ladder's rung probes (``ladder``: C_b -> probe drop), the chosen C_b
    (``chosen_C_b``, None: dense) and ``chosen`` = converted by the chosen plan."""
    for r in rows:
        f = r["fqn"]
        r["ladder"] = {
            str(cb): lad["probes"][f"{f}@{cb}"]["probe_drop"]
            for cb in lad["rungs"].get(f, [])
            if f"{f}@{cb}" in lad["probes"]
        }
        r["chosen_C_b"] = lad["plan"].get(f)
        r["chosen"] = f in lad["plan"]


def warn_over_budget(selection: dict, log) -> str | None:
    """The loud warning for a plan whose verified drop breaks the budget (stderr, the log and
    summary.md): over-budget probes are capped by ``max_backoff``, so the search can end over
    budget."""
    if selection.get("within_budget", True):
        return None
    msg = (
        f"WARNING: the chosen plan is OVER BUDGET: verified drop "
        f"{selection['verified_drop']:.2f} pp > budget {selection['max_drop']} pp after "
        f"{selection['backoffs']} over-budget combined probes (the max_backoff limit). Do "
        f"not use plan.json as is: drop more layers from it, raise max_backoff, or raise "
        f"the budget."
    )
    print(msg, file=sys.stderr, flush=True)
    if log is not print:
        log(msg)
    return msg
