"""The ladder's stage (``ladder=True``), run after the single-ratio selection: rung probes,
the ladder's plan, the peer rules' best fitting settings (:mod:`.ladder`, :mod:`.peers`),
a refinement, and the chosen plan: the refinement starts from the plan saving the most
``gain`` among those whose combined probe fits the budget (the ladder's, unless a peer rule's
saves strictly more) and adds rank steps while they fit; ``source`` names where the plan
started ("ladder", a rule's name, or "ladder from <rule>" when steps were added to it).

With ``gain="time"`` the savings are measured: after the rung probes, every (layer, C_b)
the selection, the refinement or a peer rule can use is timed once (:func:`run_rung_timings`)
and kept in the state, so "saves more" compares summed measured forward+backward time."""

from __future__ import annotations

from collections.abc import Iterable

from . import probes as P
from .context import Probe, SearchContext
from .ladder import (
    Costs,
    PlanProbes,
    parse_rung_key,
    plan_specs,
    run_ladder_probes,
    run_ladder_refine,
    run_ladder_selection,
    rung_key,
)
from .peers import RULES, run_peers, settings
from .probes import convert_only, layer_inputs, timed_on_main

__all__ = ["final_plans", "run_ladder_stage", "run_rung_timings", "timed_pairs"]

_TIME_KEYS = ("time_dense_ms", "time_basis_ms", "time_saved_ms", "mode")


def timed_pairs(ctx: SearchContext, costs: Costs, rungs: dict, rung_probes: dict, selection):
    """The (layer, C_b) pairs whose time saving the stage can ask for: every rung the
    selection may step to (probed within the budget on its own, up to the layer's first
    rung over it), and with ``peers`` every pair of every peer setting's plan (a rule's
    settings are tried by saving, so each is compared in time) and the subset's."""
    cfg, pairs = ctx.cfg, set()
    for f, cbs in rungs.items():
        for cb in cbs:
            p = rung_probes.get(rung_key(f, cb))
            if p is None or p["probe_drop"] > cfg.max_drop:
                break
            pairs.add((f, cb))
    if cfg.peers:
        for rule in RULES[:-1]:
            for _, plan in settings(rule, costs, cfg, ctx.spec):
                pairs |= {(f, int(cb)) for f, cb in plan.items()}
        pairs |= {(f, int(costs.layer[f].C_b)) for f in selection["chosen"]}
    return sorted(pairs)


def run_rung_timings(
    ctx: SearchContext, dense, pairs: Iterable[tuple[str, int]], gains: dict, base_cb: dict
) -> dict[str, dict]:
    """``{rung_key: timings}`` of ``pairs`` (:func:`.probes.time_layer`, forward+backward:
    the training step the time gain is about): the dense conv's time is the layer's row in
    ``gains`` (timed once per layer, so a layer's rungs differ only by their basis timings),
    and a pair at the search spec's C_b is that row itself. The others are timed on the main
    rank, saved in the state's ``"rung_gains"`` as they are taken and broadcast
    (:func:`.probes.timed_on_main`): a resume re-uses them, never re-times."""
    pairs = sorted({(f, int(cb)) for f, cb in pairs})
    have = ctx.state.get("rung_gains") or {}
    rounds: list[dict[str, int]] = []  # one conversion per round of distinct layers
    for f, cb in pairs:
        if cb != base_cb[f] and rung_key(f, cb) not in have:
            batch = next((b for b in rounds if f not in b), None)
            if batch is None:
                rounds.append(batch := {})
            batch[f] = cb
    todo = [rung_key(f, cb) for b in rounds for f, cb in b.items()]
    if todo:
        ctx.log(
            f"[4/5] ladder gains: timing {len(todo)} (layer, rank) pairs, dense conv vs "
            "basis op (forward+backward)"
        )

        def time_all(keys):
            xs = layer_inputs(ctx, dense, sorted({parse_rung_key(k)[0] for k in todo}))
            model, batch = None, None
            for k in keys:
                f, cb = parse_rung_key(k)
                if batch is None or batch.get(f) != cb:
                    batch = next(b for b in rounds if b.get(f) == cb)
                    model = convert_only(dense, plan_specs(batch, ctx.spec), ctx.spec)
                layer = model.get_submodule(f)
                # P.time_layer: looked up per call, so one patch counts or fakes every timing
                row = P.time_layer(
                    dense.get_submodule(f), layer, xs[f], ctx.cfg.time_steps, infer=False,
                    dense=gains[f],
                )  # fmt: skip
                yield k, row

        have = timed_on_main(ctx, "rung_gains", todo, time_all, "timing")
        dense.zero_grad(set_to_none=True)
    out = {}
    for f, cb in pairs:
        row = gains[f] if cb == base_cb[f] else have[rung_key(f, cb)]
        out[rung_key(f, cb)] = {k: row[k] for k in _TIME_KEYS if k in row}
    return out


def run_ladder_stage(
    ctx: SearchContext,
    dense,
    cands: list[str],
    conv_rows: dict,
    probes: dict,
    selection: dict,
    probe_fn: Probe,
) -> dict:
    """``{"gain", "rungs", "probes", "selection", "peers", "plan", "source", "base_cb", ...}``
    (see the module docstring; with ``gain="time"`` also ``"rung_gains"``, the timings of
    every pair it used, and the plan's ``"time_saved_ms"``); every part resumable through
    the state."""
    cfg = ctx.cfg
    costs = Costs(dense, ctx.spec, ctx.shape, cands, conv_rows)
    base_cb = {f: int(conv_rows[f].C_b) for f in cands}
    rungs = costs.rungs(cfg.ladder_ratios)
    base = {f: (base_cb[f], probes[f]) for f in cands if f in probes}
    rung_probes = run_ladder_probes(ctx, rungs, base, probe_fn)
    rung_gains = {}
    if cfg.gain == "time":  # the layers' own timings: measure_gains, run before this stage
        pairs = timed_pairs(ctx, costs, rungs, rung_probes, selection)
        rung_gains = run_rung_timings(ctx, dense, pairs, ctx.state.get("gains"), base_cb)
        costs.times = {parse_rung_key(k): v["time_saved_ms"] for k, v in rung_gains.items()}
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
    timed = {}
    if cfg.gain == "time":  # measured: each (layer, C_b)'s timings and the plan's sum
        timed = {"rung_gains": rung_gains, "time_saved_ms": costs.plan_saved(plan, "time")}
    return {
        "gain": cfg.gain,
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
        **timed,
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
