"""The ladder's stage (``ladder=True``), run after the single-ratio selection: rung probes,
the ladder's plan, the peer rules' best fitting settings (:mod:`.ladder`, :mod:`.peers`),
a refinement, and the chosen plan: the refinement starts from the plan saving the most
``gain`` among those whose combined probe fits the budget (the ladder's, unless a peer rule's
saves strictly more) and adds rank steps while they fit; ``source`` names where the plan
started ("ladder", a rule's name, or "ladder from <rule>" when steps were added to it)."""

from __future__ import annotations

from .context import Probe, SearchContext
from .ladder import (
    Costs,
    PlanProbes,
    plan_specs,
    run_ladder_probes,
    run_ladder_refine,
    run_ladder_selection,
)
from .peers import RULES, run_peers

__all__ = ["final_plans", "run_ladder_stage"]


def run_ladder_stage(
    ctx: SearchContext,
    dense,
    cands: list[str],
    conv_rows: dict,
    probes: dict,
    selection: dict,
    probe_fn: Probe,
) -> dict:
    """``{"rungs", "probes", "selection", "peers", "plan", "source", "base_cb"}`` (see the
    module docstring); every part resumable through the state."""
    cfg = ctx.cfg
    costs = Costs(dense, ctx.spec, ctx.shape, cands, conv_rows)
    base_cb = {f: int(conv_rows[f].C_b) for f in cands}
    rungs = costs.rungs(cfg.ladder_ratios)
    base = {f: (base_cb[f], probes[f]) for f in cands if f in probes}
    rung_probes = run_ladder_probes(ctx, rungs, base, probe_fn)
    verify = PlanProbes(ctx, probe_fn, costs)
    sel = run_ladder_selection(ctx, rungs, rung_probes, costs, verify)
    peers = run_peers(ctx, costs, verify, selection, base_cb) if cfg.peers else {}
    # the best verified plan so far: the ladder's, or a peer rule's that saves strictly more
    start, start_drop, source = {}, 0.0, "ladder"
    if sel["within_budget"]:
        start, start_drop = dict(sel["plan"]), sel["verified_drop"]
    best = max(
        (p for p in peers.values() if p["fits"]),
        key=lambda p: (p["saved"], -RULES.index(p["rule"])),
        default=None,
    )
    if best is not None and best["saved"] > costs.plan_saved(start, cfg.gain):
        start, start_drop, source = dict(best["plan"]), best["verified_drop"], best["rule"]
    seq = sel.get("sequence", [])
    ref = run_ladder_refine(ctx, start, start_drop, seq, rung_probes, costs, verify)
    plan = dict(ref["plan"])
    if ref["n_steps"]:
        source = f"ladder from {source}" if source != "ladder" else "ladder"
    return {
        "rungs": rungs,
        "probes": rung_probes,
        "selection": sel,
        "peers": peers,
        "plan": plan,
        "source": source,
        "refine": ref,
        "verified_drop": ref["verified_drop"],
        "saved": costs.plan_saved(plan, cfg.gain),
        "base_cb": base_cb,
        "macs_saved": costs.plan_saved(plan, "macs"),
        "params_saved": costs.plan_saved(plan, "params"),
    }


def final_plans(ctx: SearchContext, lad: dict) -> dict:
    """``{model name: {layer: BasisSpec}}`` the final stage fine-tunes beside dense and
    naive: the chosen plan and each peer rule's best fitting plan."""
    plans = {"chosen": plan_specs(lad["plan"], ctx.spec)}
    for rule in RULES:
        p = lad["peers"].get(rule)
        if p and p["fits"] and p["plan"]:
            plans[rule] = plan_specs(p["plan"], ctx.spec)
    return plans
