"""The rank ladder (``ladder=True``): each layer's C_b chosen among the ``ladder_ratios``
rungs (or dense), not just yes/no at one ratio.

* **rung probes** (:func:`run_ladder_probes`): per layer, the same skip-training probe as the
  single-ratio stage, from the mildest rung to harsher ones, in waves (wave k probes the next
  rung of every layer still climbing, spread over the ranks like every probe); a layer stops
  at the first rung whose probe loses more than ``max_drop`` on its own (a harsher rung would
  not fit either), so a layer that cares costs one or two probes, not one per rung. A rung
  whose C_b the single-ratio stage already probed re-uses that probe (same conversion).
* **selection** (:func:`run_ladder_selection`): every step "one layer one rung harsher" gets
  a score, the saving it adds (``gain``) per unit of the sensitivity it adds (the probe's
  loss increase or accuracy drop, floored as in :mod:`.selection`); the steps are merged
  best score first (a layer's next rung becomes available once its milder one is taken).
  The plan is the longest prefix of that sequence whose *combined* probe fits the budget,
  found by bisection over the prefix length (about log2(steps) combined probes), each step
  recorded with its predicted and verified drop, like the single-ratio selection.
* **refinement** (:func:`run_ladder_refine`): from the best verified plan so far (the
  ladder's, or a peer rule's that saves more), the remaining steps one at a time in score
  order, each kept only if the combined probe still fits.

Plans are ``{layer: C_b}``; a layer not in a plan stays dense. Combined probes of plans are
cached in the state (``"plan_probes"``), shared with the peer rules (:mod:`.peers`): a plan
two rules propose is probed once. With ``gain`` macs or params nothing here reads a timing:
the same seed gives the same plan on any machine load. With ``gain="time"`` the saving of a
(layer, C_b) is its measured forward+backward time saved (:attr:`Costs.times`, timed once
and kept in the state by :mod:`.ladder_stage`), so the plan depends on the machine and its
load when the timings were taken -- what optimising measured time means."""

from __future__ import annotations

import heapq

import torch.nn as nn

from ...conversion.convert import convert_with_report
from ...nn.spec import BasisSpec
from .. import distributed as D
from .context import Probe, SearchContext
from .selection import SCORE_FLOOR_LOSS, SCORE_FLOOR_PP, _bisect, sensitivity_of, spec_with

__all__ = [
    "Costs",
    "PlanProbes",
    "parse_rung_key",
    "plan_specs",
    "rung_key",
    "run_ladder_probes",
    "run_ladder_refine",
    "run_ladder_selection",
    "spec_with",
    "upgrade_sequence",
]


def plan_specs(plan: dict[str, int], spec: BasisSpec) -> dict[str, BasisSpec]:
    """A ``{layer: C_b}`` plan as the ``{layer: BasisSpec}`` that ``convert`` takes."""
    return {f: spec_with(spec, cb) for f, cb in sorted(plan.items())}


def rung_key(fqn: str, cb: int) -> str:
    """The state's key of one layer's probe (or timing) at C_b ``cb``."""
    return f"{fqn}@{int(cb)}"


def parse_rung_key(key: str) -> tuple[str, int]:
    """``(layer, C_b)`` of a :func:`rung_key`."""
    fqn, cb = key.rsplit("@", 1)
    return fqn, int(cb)


def plan_key(plan: dict[str, int]) -> list[list]:
    return [[f, int(cb)] for f, cb in sorted(plan.items())]


class Costs:
    """What converting a layer to C_b saves: MACs per image and parameters from the
    conversion report of the trained model (one source with ``convert``), cached; ``"time"``:
    the measured forward+backward ms saved, from :attr:`times` (filled by the caller from
    :func:`tritonbasis.recipes.search.probes.time_layer`'s rows; a pair not timed is an
    error, never a guess)."""

    def __init__(self, dense: nn.Module, spec: BasisSpec, shape, cands: list[str], conv_rows):
        self.dense, self.spec, self.shape, self.cands = dense, spec, shape, list(cands)
        self.rows: dict[tuple[str, int], dict] = {}
        self.layer = conv_rows  # {layer: LayerReport}: its C_in, C_out
        self.times: dict[tuple[str, int], float] = {}  # (layer, C_b) -> ms saved (may be < 0)

    def ensure(self, pairs) -> None:
        """Conversion-report rows for every ``(layer, C_b)`` in ``pairs`` (one conversion
        per round of distinct layers)."""
        todo = sorted({(f, int(cb)) for f, cb in pairs} - set(self.rows))
        while todo:
            batch, rest, seen = {}, [], set()
            for f, cb in todo:
                if f in seen:
                    rest.append((f, cb))
                else:
                    seen.add(f)
                    batch[f] = cb
            _, rep = convert_with_report(
                self.dense, plan_specs(batch, self.spec), input_shape=self.shape
            )
            for r in rep.layers:
                if r.fqn in batch:
                    self.rows[(r.fqn, batch[r.fqn])] = {
                        "converted": bool(r.converted),
                        "macs": r.macs_before - r.macs_after if r.converted else 0,
                        "params": r.params_before - r.params_after if r.converted else 0,
                    }
            todo = rest

    def saved(self, fqn: str, cb: int, what: str) -> int | float:
        if what == "time":
            t = self.times.get((fqn, int(cb)))
            if t is None:
                raise KeyError(f"no time measured for {fqn} at C_b {int(cb)}")
            return t
        self.ensure([(fqn, cb)])
        return self.rows[(fqn, int(cb))][what]

    def plan_saved(self, plan: dict[str, int], what: str) -> int | float:
        if what == "time":  # ms, rounded as the timings are (a sum of floats)
            return round(sum(self.saved(f, cb, what) for f, cb in plan.items()), 4)
        self.ensure(plan.items())
        return sum(self.rows[(f, int(cb))][what] for f, cb in plan.items())

    def rungs(self, ratios) -> dict[str, list[int]]:
        """Per layer: the distinct C_b of ``ratios`` that save something, mildest first."""
        out = {}
        for f in self.cands:
            c_out = self.layer[f].C_out
            cbs = sorted(
                {BasisSpec(ratio=float(r)).channels_for(c_out) for r in ratios}, reverse=True
            )
            self.ensure((f, cb) for cb in cbs)
            out[f] = [cb for cb in cbs if self.rows[(f, cb)]["converted"]]
        return out


def run_ladder_probes(
    ctx: SearchContext,
    rungs: dict[str, list[int]],
    base: dict[str, tuple[int, dict]],
    probe_fn: Probe,
) -> dict[str, dict]:
    """``{rung_key: probe}`` of every rung a layer reaches (see the module docstring);
    ``base``: ``{layer: (C_b, probe)}`` of the single-ratio stage, re-used where a rung has
    that C_b. Saved as they finish; a resume probes only what is missing."""
    stop = ctx.cfg.max_drop
    done = dict(ctx.state.get("ladder_probes", {}))

    def known(f, cb):
        if f in base and base[f][0] == cb:
            return base[f][1]
        return done.get(rung_key(f, cb))

    wave = 0
    while True:
        todo = []
        for f, cbs in rungs.items():
            for cb in cbs:
                r = known(f, cb)
                if r is None:
                    todo.append(rung_key(f, cb))
                    break
                if r["probe_drop"] > stop:
                    break
        if not todo:
            break
        wave += 1
        ctx.log(
            f"[2/5] ladder probes, wave {wave}: {len(todo)} (layer, rank) probes "
            f"({ctx.cfg.probe_steps} steps each)"
        )

        def one(key):
            f, cb = parse_rung_key(key)
            return probe_fn(plan_specs({f: cb}, ctx.spec), ctx.cfg.probe_steps)

        done = dict(D.run_probes(todo, one, ctx.state, key="ladder_probes", bar=ctx.bar))
    return {
        rung_key(f, cb): known(f, cb)
        for f, cbs in rungs.items()
        for cb in cbs
        if known(f, cb) is not None
    }


def upgrade_sequence(
    rungs: dict[str, list[int]], probes: dict[str, dict], costs: Costs, gain: str, how: str, stop
) -> list[dict]:
    """The steps "layer one rung harsher", best score first (see the module docstring);
    each step: layer, C_b, the saving and sensitivity it adds, its score and its probe drop.
    Only rungs probed within ``stop`` pp on their own are steps, and only those that save
    more than the layer's milder step before them (see below)."""
    floor = SCORE_FLOOR_LOSS if how == "loss" else SCORE_FLOOR_PP
    options: dict[str, list[dict]] = {}
    for f, cbs in rungs.items():
        prev_saved, prev_sens, steps = 0, 0.0, []
        for cb in cbs:
            p = probes.get(rung_key(f, cb))
            if p is None or p["probe_drop"] > stop:
                break
            saved, sens = costs.saved(f, cb, gain), sensitivity_of(p, how)
            if saved <= prev_saved:
                # A rung that saves no more than the layer's milder one (MACs and params
                # always grow with a harsher rung; measured time need not: a basis conv
                # slower than dense, or a smaller C_b on a worse kernel tile) is never
                # worth its accuracy. Ranking it last would not keep it out -- the
                # bisection takes the longest prefix that fits -- so it is no step: the
                # layer's next step jumps over it to the next rung that saves more.
                continue
            d_saved = saved - prev_saved
            steps.append(
                {
                    "fqn": f,
                    "C_b": cb,
                    "saved": round(d_saved, 4) if gain == "time" else d_saved,
                    "score": round(d_saved / max(sens - prev_sens, floor), 6),
                    "probe_drop": p["probe_drop"],
                }
            )
            prev_saved, prev_sens = saved, max(prev_sens, sens)
        if steps:
            options[f] = steps
    heap = [(-s[0]["score"], f, 0) for f, s in options.items()]
    heapq.heapify(heap)
    seq = []
    while heap:
        _, f, i = heapq.heappop(heap)
        seq.append(options[f][i])
        if i + 1 < len(options[f]):
            heapq.heappush(heap, (-options[f][i + 1]["score"], f, i + 1))
    return seq


def plan_of_prefix(seq: list[dict]) -> dict[str, int]:
    """The plan a prefix of the upgrade sequence gives: each layer at its last (harshest)
    rung in the prefix."""
    plan = {}
    for s in seq:
        plan[s["fqn"]] = s["C_b"]
    return plan


class PlanProbes:
    """Combined probes of ``{layer: C_b}`` plans at ``verify_steps``, cached in the state's
    ``"plan_probes"`` (a resume and a second rule proposing the same plan re-use them)."""

    def __init__(self, ctx: SearchContext, probe_fn: Probe, costs: Costs):
        cfg = ctx.cfg
        self.ctx, self.probe_fn, self.costs = ctx, probe_fn, costs
        self.steps = cfg.verify_steps if cfg.verify_steps is not None else 2 * cfg.probe_steps
        self.done = list(ctx.state.get("plan_probes", []))

    def known(self, plan: dict[str, int]) -> dict | None:
        key = plan_key(plan)
        return next((v for v in self.done if v["plan"] == key), None)

    def __call__(self, plan: dict[str, int]) -> dict:
        hit = self.known(plan)
        if hit is None:
            r = self.probe_fn(plan_specs(plan, self.ctx.spec), self.steps)
            hit = {"plan": plan_key(plan), **D.broadcast_object(r)}
            self.done.append(hit)
            self.ctx.state.put("plan_probes", self.done)
        return hit

    def failed(self, budget: float) -> list[dict[str, int]]:
        """The plans probed over ``budget``."""
        return [{f: cb for f, cb in v["plan"]} for v in self.done if v["probe_drop"] > budget]


def harsher_or_equal(b: dict[str, int], a: dict[str, int]) -> bool:
    """Plan ``b`` converts every layer ``a`` converts, each to at most ``a``'s C_b: if ``a``
    loses more than the budget, ``b`` is assumed to as well (no probe spent on it)."""
    return all(f in b and b[f] <= cb for f, cb in a.items())


def run_ladder_selection(
    ctx: SearchContext,
    rungs: dict[str, list[int]],
    probes: dict[str, dict],
    costs: Costs,
    verify: PlanProbes,
) -> dict:
    """The ladder's plan (see the module docstring), saved in the state as
    ``"ladder_selection"``; a resume re-uses it (and every combined probe it made)."""
    sel = ctx.state.get("ladder_selection")
    if sel is not None:
        return sel
    cfg = ctx.cfg
    seq = upgrade_sequence(rungs, probes, costs, cfg.gain, cfg.sensitivity, cfg.max_drop)
    ctx.log(
        f"[4/5] ladder selection: {len(seq)} rank steps by score ({cfg.gain} saved per unit "
        f"of probe {cfg.sensitivity}), budget {cfg.max_drop} pp; combined probes of "
        f"{verify.steps} steps"
    )
    check, log_steps = _checker(ctx, {}, probes, costs, verify)
    chosen, done, fails = _bisect(seq, check, cfg)
    plan = plan_of_prefix(chosen)
    verified = done["probe_drop"] if (done is not None and plan) else 0.0
    sel = {
        "sequence": seq,
        "n_steps": len(chosen),
        "plan": plan,
        "saved": costs.plan_saved(plan, cfg.gain),
        "verified_drop": verified,
        "verified_loss_delta": done.get("probe_loss_delta") if (done and plan) else 0.0,
        "within_budget": (not plan) or verified <= cfg.max_drop,
        "steps": log_steps,
        "backoffs": fails,
        "max_drop": cfg.max_drop,
    }
    ctx.state.put("ladder_selection", D.broadcast_object(sel))
    return ctx.state.get("ladder_selection")


def _checker(ctx: SearchContext, start: dict, probes: dict, costs: Costs, verify: PlanProbes):
    """``(check, log)``: ``check(prefix, budget)`` verifies the plan ``start`` updated by a
    prefix of upgrade steps (one combined probe, cached) and records the step in ``log``."""
    cfg, log_steps = ctx.cfg, []

    def check(prefix, budget):
        plan = {**start, **plan_of_prefix(prefix)}
        done = verify(plan)
        pred = round(
            sum(
                max(probes.get(rung_key(f, cb), {}).get("probe_drop", 0.0), 0.0)
                for f, cb in plan.items()
            ),
            4,
        )
        fits = done["probe_drop"] <= budget
        log_steps.append(
            {
                "n_steps": len(prefix),
                "n_layers": len(plan),
                "saved": costs.plan_saved(plan, cfg.gain),
                "predicted_drop": pred,
                "verified_drop": done["probe_drop"],
                "verified_loss_delta": done.get("probe_loss_delta"),
                "fits": fits,
            }
        )
        ctx.log(
            f"      ladder plan of {len(prefix)} steps ({len(plan)} layers): predicted "
            f"{pred:.2f} pp, verified {done['probe_drop']:.2f} pp "
            f"({'fits' if fits else 'over budget'})"
        )
        return done

    return check, log_steps


def run_ladder_refine(
    ctx: SearchContext,
    start: dict[str, int],
    start_drop: float,
    seq: list[dict],
    probes: dict,
    costs: Costs,
    verify: PlanProbes,
) -> dict:
    """From ``start`` -- the plan that saves most among those verified within the budget
    (the ladder's or a peer rule's) -- the remaining upgrade steps (the rungs harsher than
    ``start``'s), one at a time in score order: a step is kept when the combined probe of
    the plan with it still fits, and skipped otherwise (a bisection over them stalls on one
    bad early step); a step harsher than a plan already over budget, or one that saves
    no more than the plan (measured time), is skipped without a probe; it stops after
    ``max_backoff`` over-budget probes. Saved as ``"ladder_refine"`` (a resume re-uses it,
    and every combined probe through the state's cache)."""
    ref = ctx.state.get("ladder_refine")
    if ref is not None:
        return ref
    cfg = ctx.cfg
    big = 1 << 30
    rest = [s for s in seq if s["C_b"] < start.get(s["fqn"], big)]
    ctx.log(f"[4/5] ladder refinement: {len(rest)} rank steps on top of the best plan so far")
    plan, drop, fails, kept, log_steps = dict(start), start_drop, 0, 0, []
    for i, step in enumerate(rest):
        if fails >= cfg.max_backoff:
            break
        f, cb = step["fqn"], step["C_b"]
        if cb >= plan.get(f, big):
            continue
        cand = {**plan, f: cb}
        if costs.plan_saved(cand, cfg.gain) <= costs.plan_saved(plan, cfg.gain):
            continue  # measured time: slower than the plan's own C_b (MACs never are)
        if any(harsher_or_equal(cand, a) for a in verify.failed(cfg.max_drop)):
            continue
        done = verify(cand)
        fits = done["probe_drop"] <= cfg.max_drop
        log_steps.append(
            {
                "n_steps": i + 1,
                "n_layers": len(cand),
                "saved": costs.plan_saved(cand, cfg.gain),
                "predicted_drop": round(
                    sum(
                        max(probes.get(rung_key(g, c), {}).get("probe_drop", 0.0), 0.0)
                        for g, c in cand.items()
                    ),
                    4,
                ),
                "verified_drop": done["probe_drop"],
                "verified_loss_delta": done.get("probe_loss_delta"),
                "fits": fits,
            }
        )
        ctx.log(
            f"      + {f} at C_b {cb}: verified {done['probe_drop']:.2f} pp "
            f"({'kept' if fits else 'over budget, skipped'})"
        )
        if fits:
            plan, drop, kept = cand, done["probe_drop"], kept + 1
        else:
            fails += 1
    ref = {
        "start": dict(start),
        "n_steps": kept,
        "plan": plan,
        "saved": costs.plan_saved(plan, cfg.gain),
        "verified_drop": drop,
        "within_budget": True,
        "steps": log_steps,
        "backoffs": fails,
    }
    ctx.state.put("ladder_refine", D.broadcast_object(ref))
    return ctx.state.get("ladder_refine")
