"""The peer rules the ladder is compared with, each at its own best setting that fits the
budget, in the same run (``ladder=True`` with ``peers=True``):

* ``uniform`` -- every layer at one ratio (the ``ladder_ratios``): the harshest that fits;
* ``energy`` -- every layer at the smallest C_b whose basis keeps at least a threshold of its
  filters' energy (BasisConv's rule; thresholds ``peer_energies``, C_b from the conversion's
  own energy rule): the lowest threshold that fits;
* ``channels`` -- every conv with at least K input and output channels at one ratio
  (Composer-style factorization): the (K, ratio) that saves most and fits;
* ``subset`` -- the single-ratio subset search (:mod:`.selection`, the search's default).

"Fits" means the setting's combined probe (``verify_steps``, the check every ladder step
gets) loses at most ``max_drop``. Settings are tried by saving, largest first; the first that
fits is the rule's best. A setting that converts at least every layer of a setting already
over budget, each at no larger C_b, is assumed over budget without a probe; a rule stops after
``max_backoff`` over-budget probes. Each rule's best plan is then fine-tuned and scored over
the seeds like the chosen plan (:mod:`.final`)."""

from __future__ import annotations

from dataclasses import replace

from ...conversion.convert import convert_with_report
from ...nn.spec import BasisSpec
from .. import distributed as D
from .context import SearchContext
from .ladder import Costs, PlanProbes, harsher_or_equal

__all__ = ["RULES", "run_peers", "settings"]

RULES = ("uniform", "energy", "channels", "subset")


def _ratio_plan(costs: Costs, ratio: float, layers) -> dict[str, int]:
    plan = {}
    for f in layers:
        cb = BasisSpec(ratio=float(ratio)).channels_for(costs.layer[f].C_out)
        costs.ensure([(f, cb)])
        if costs.rows[(f, cb)]["converted"]:
            plan[f] = cb
    return plan


def _energy_plan(costs: Costs, spec: BasisSpec, threshold: float) -> dict[str, int]:
    """C_b per layer by the conversion's energy rule (one source with ``convert``)."""
    e = replace(spec, ratio=None, basis_channels=None, energy=float(threshold), init="svd")
    _, rep = convert_with_report(costs.dense, {f: e for f in costs.cands}, input_shape=costs.shape)
    return {r.fqn: int(r.C_b) for r in rep.layers if r.fqn in costs.cands and r.converted}


def settings(rule: str, costs: Costs, cfg, spec: BasisSpec) -> list[tuple[dict, dict]]:
    """``[(setting, plan)]`` of one rule, every setting that converts something."""
    out = []
    if rule == "uniform":
        for r in cfg.ladder_ratios:
            out.append(({"ratio": float(r)}, _ratio_plan(costs, r, costs.cands)))
    elif rule == "energy":
        for t in cfg.peer_energies:
            out.append(({"energy": float(t)}, _energy_plan(costs, spec, t)))
    elif rule == "channels":
        ks = sorted({min(costs.layer[f].C_in, costs.layer[f].C_out) for f in costs.cands})
        for k in ks:
            layers = [f for f in costs.cands if min(costs.layer[f].C_in, costs.layer[f].C_out) >= k]
            for r in cfg.ladder_ratios:
                out.append(({"min_channels": k, "ratio": float(r)}, _ratio_plan(costs, r, layers)))
    return [(s, p) for s, p in out if p]


def _savings(costs: Costs, plan: dict, gain: str) -> dict:
    """``saved`` in the search's ``gain``, and the MACs beside it when that is not MACs."""
    out = {"saved": costs.plan_saved(plan, gain)}
    if gain != "macs":
        out["macs_saved"] = costs.plan_saved(plan, "macs")
    return out


def _best(rule, cands, costs: Costs, verify: PlanProbes, cfg, log) -> dict:
    """The first setting by saving (largest first) whose combined probe fits. A setting
    that saves nothing (measured time: its layers run no faster than dense) is not tried:
    staying dense beats it at no accuracy cost."""
    order = sorted(
        cands, key=lambda sp: (-costs.plan_saved(sp[1], cfg.gain), str(sorted(sp[0].items())))
    )
    tried, fails = [], 0
    for setting, plan in order:
        if costs.plan_saved(plan, cfg.gain) <= 0:
            break  # sorted: none after it saves anything either
        if fails >= cfg.max_backoff:
            break
        if any(harsher_or_equal(plan, a) for a in verify.failed(cfg.max_drop)):
            tried.append({**setting, "verified_drop": None, "fits": False, "skipped": True})
            continue
        done = verify(plan)
        fits = done["probe_drop"] <= cfg.max_drop
        tried.append({**setting, "verified_drop": done["probe_drop"], "fits": fits})
        log(
            f"      peer {rule} {setting}: {len(plan)} layers, verified "
            f"{done['probe_drop']:.2f} pp ({'fits' if fits else 'over budget'})"
        )
        if fits:
            return {
                "rule": rule,
                "setting": setting,
                "plan": plan,
                **_savings(costs, plan, cfg.gain),
                "verified_drop": done["probe_drop"],
                "fits": True,
                "tried": tried,
            }
        fails += 1
    return {"rule": rule, "setting": {}, "plan": {}, **_savings(costs, {}, cfg.gain),
            "verified_drop": 0.0, "fits": False, "tried": tried}  # fmt: skip


def run_peers(
    ctx: SearchContext, costs: Costs, verify: PlanProbes, selection: dict, base_cb: dict
) -> dict:
    """``{rule: best}`` for every rule (see the module docstring), each saved in the state's
    ``"peers"`` as it is found; ``selection``: the single-ratio subset search's result and
    ``base_cb`` its C_b per layer."""
    peers = dict(ctx.state.get("peers", {}))
    cfg = ctx.cfg
    for rule in RULES:
        if rule in peers:
            continue
        ctx.log(f"[4/5] peer rule {rule}: its best setting within {cfg.max_drop} pp")
        if rule == "subset":
            plan = {f: base_cb[f] for f in selection["chosen"]}
            best = {
                "rule": rule,
                "setting": {"ratio_spec": dict(cfg.spec)},
                "plan": plan,
                **_savings(costs, plan, cfg.gain),
                "verified_drop": selection["verified_drop"] if plan else 0.0,
                "fits": bool(plan) and selection["within_budget"],
                "tried": [],
            }
        else:
            best = _best(rule, settings(rule, costs, cfg, ctx.spec), costs, verify, cfg, ctx.log)
        peers[rule] = best
        ctx.state.put("peers", D.broadcast_object(peers))
    return ctx.state.get("peers")
