"""Stage 4, selection: rank the layers by gain per unit of sensitivity, add them while the
predicted total drop (the sum of their probe drops) stays within ``max_drop``, verify the
chosen subset with one combined probe, and back off (drop the lowest-scoring layer) while the
verified drop breaks the budget, at most ``max_backoff`` times."""

from __future__ import annotations

import sys

from ...conversion.convert import LayerReport
from ...nn.spec import BasisSpec
from .. import distributed as D
from .config import SearchConfig
from .context import Probe, SearchContext

__all__ = ["layer_rows", "plan_of", "run_selection", "select", "warn_over_budget"]

# sensitivity floor (pp) in the score: layers that lose nothing still rank by their gain
SCORE_FLOOR_PP = 0.05


def layer_rows(cands: list[str], conv_rows: dict[str, LayerReport], probes: dict, gains: dict,
               gain: str) -> list[dict]:
    """One report row per candidate: its shape, savings, probe and timing results and its
    ``score`` (``gain`` -- macs, params or time saved -- per pp of probe drop)."""
    rows = []
    for f in cands:
        lr_ = conv_rows[f]
        g = gains[f]
        saved = {"macs": lr_.macs_before - lr_.macs_after,
                 "params": lr_.params_before - lr_.params_after,
                 "time": g["time_saved_ms"]}[gain]
        sens = max(probes[f]["probe_drop"], 0.0)
        rows.append({
            "fqn": f, "C_in": lr_.C_in, "C_out": lr_.C_out, "kernel": list(lr_.kernel),
            "stride": list(lr_.stride), "C_b": lr_.C_b, "out_pixels": lr_.out_pixels,
            "params_before": lr_.params_before, "params_after": lr_.params_after,
            "params_saved": lr_.params_before - lr_.params_after,
            "macs_before": lr_.macs_before, "macs_after": lr_.macs_after,
            "macs_saved": lr_.macs_before - lr_.macs_after,
            **probes[f], **g,
            "score": (saved / max(sens, SCORE_FLOOR_PP)) if saved > 0 else 0.0,
            "chosen": False,
        })
    return rows


def select(rows: list[dict], probe_fn: Probe, cfg: SearchConfig, state, log) -> dict:
    """The greedy choice, then verification with back-off. Every combined probe is saved in
    the state's ``"verifications"`` as it finishes (a resume re-uses them)."""
    order = sorted((r for r in rows if r["score"] > 0), key=lambda r: -r["score"])
    chosen, predicted = [], 0.0
    for r in order:
        d = max(r["probe_drop"], 0.0)
        if predicted + d <= cfg.max_drop:
            chosen.append(r["fqn"])
            predicted += d
    log(f"[4/5] selection: {len(chosen)} layers, predicted drop {predicted:.2f} pp "
        f"(budget {cfg.max_drop} pp); verifying")
    steps = cfg.verify_steps if cfg.verify_steps is not None else 2 * cfg.probe_steps
    verifications = state.get("verifications", [])
    tries = 0
    done = None
    while chosen:
        key = sorted(chosen)
        done = next((v for v in verifications if v["layers"] == key), None)
        if done is None:
            done = {"layers": key, **probe_fn(chosen, steps)}
            verifications.append(done)
            state.put("verifications", verifications)
        log(f"      combined probe of {len(chosen)} layers: drop {done['probe_drop']:.2f} pp")
        if done["probe_drop"] <= cfg.max_drop or tries >= cfg.max_backoff:
            break
        chosen = chosen[:-1]  # back off: drop the lowest-scoring chosen layer
        tries += 1
    return {"chosen": chosen, "predicted_drop": round(sum(
        max(r["probe_drop"], 0.0) for r in rows if r["fqn"] in chosen), 4),
        # the verification of the final chosen set (on resume it need not be the last one)
        "verified_drop": done["probe_drop"] if (done is not None and chosen) else 0.0,
        "within_budget": (not chosen) or done["probe_drop"] <= cfg.max_drop,
        "verifications": verifications, "backoffs": tries, "max_drop": cfg.max_drop}


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


def plan_of(rows: list[dict], spec: BasisSpec) -> dict:
    """The plan (FQN -> spec dict, or None to keep the conv) of the chosen rows."""
    return {r["fqn"]: (spec.to_dict() if r["chosen"] else None) for r in rows}


def warn_over_budget(selection: dict, log) -> str | None:
    """The loud warning for a plan whose verified drop breaks the budget (stderr, the log and
    summary.md): back-offs are capped by ``max_backoff``, so the search can end over budget."""
    if selection.get("within_budget", True):
        return None
    msg = (f"WARNING: the chosen plan is OVER BUDGET: verified drop "
           f"{selection['verified_drop']:.2f} pp > budget {selection['max_drop']} pp after "
           f"{selection['backoffs']} back-offs (the max_backoff limit). Do not use plan.json "
           f"as is: drop more layers from it, raise max_backoff, or raise the budget.")
    print(msg, file=sys.stderr, flush=True)
    if log is not print:
        log(msg)
    return msg
