"""The rank ladder and the peer rules: the upgrade sequence, the peers' settings and pruning,
resume of the ladder stages with a synthetic probe (no training), and a cut-down run of the
whole ladder + peers experiment end to end (report structure and invariants, the plan through
conversion, the same plan whatever the timings)."""

import json

import pytest
import torch

import tritonbasis as tb
from tritonbasis.conversion.plan import load_plan
from tritonbasis.recipes import search as S
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.models import resnet18_cifar
from tritonbasis.recipes.search import final, ladder, peers, probes


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Bitwise-reproducible CPU runs, fast on the 2-core CI machine (conftest's fixture)."""


@pytest.fixture(scope="module")
def data8():
    return digits(size=8, seed=0)


def _model():
    torch.manual_seed(0)
    return resnet18_cifar(num_classes=10, width=0.125)


def _config(**kw):
    base = dict(
        spec={"ratio": 0.25},
        max_drop=2.0,
        baseline_epochs=1,
        batch_size=64,
        probe_steps=2,
        probe_lr=0.01,
        verify_steps=2,
        probe_groups=False,
        time_batch=8,
        time_steps=1,
        final_seeds=2,
        final_epochs=1,
        time_rounds=1,
        ladder=True,
        ladder_ratios=[0.25, 0.5],
        peer_energies=[0.5, 0.9],
        seed=0,
    )
    base.update(kw)
    return S.SearchConfig(**base)


class _Costs:
    """A Costs stand-in: saving = C_out - C_b per layer."""

    def __init__(self, c_out):
        self.c_out = c_out

    def saved(self, f, cb, what):
        return self.c_out[f] - cb

    def plan_saved(self, plan, what):
        return sum(self.saved(f, cb, what) for f, cb in plan.items())


def _p(drop, loss):
    return {"probe_drop": drop, "probe_loss_delta": loss}


def test_upgrade_sequence_keeps_each_layers_rungs_in_order_and_ranks_by_score():
    rungs = {"a": [8, 4, 2], "b": [8, 4, 2]}
    pr = {
        "a@8": _p(0.0, 0.01),
        "a@4": _p(0.5, 0.02),
        "a@2": _p(3.0, 0.5),  # over the 2 pp stop: not a step
        "b@8": _p(0.5, 0.2),
        "b@4": _p(0.6, 0.21),  # cheap step after an expensive one
        "b@2": _p(0.7, 0.22),
    }
    seq = ladder.upgrade_sequence(rungs, pr, _Costs({"a": 16, "b": 16}), "macs", "loss", 2.0)
    steps = [(s["fqn"], s["C_b"]) for s in seq]
    assert ("a", 2) not in steps and len(steps) == 5
    for f in ("a", "b"):  # a layer's harsher rung never comes before its milder one
        cbs = [cb for g, cb in steps if g == f]
        assert cbs == sorted(cbs, reverse=True)
    assert steps[0] == ("a", 8)  # 8 saved for 0.01 loss: the best first step
    # b@4 and b@2 (high score) become available only after b@8 (low score)
    assert steps.index(("b", 8)) < steps.index(("b", 4)) < steps.index(("b", 2))
    assert ladder.plan_of_prefix(seq[:3]) == dict(steps[:3])


def test_harsher_or_equal_prunes_plans_that_include_a_failed_one():
    failed = {"a": 4}
    assert ladder.harsher_or_equal({"a": 4, "b": 8}, failed)
    assert ladder.harsher_or_equal({"a": 2}, failed)
    assert not ladder.harsher_or_equal({"a": 8, "b": 2}, failed)
    assert not ladder.harsher_or_equal({"b": 2}, failed)


def _synthetic_probe(calls):
    """A probe without training: each converted layer costs (C_out / C_b - 1) * 0.3 pp, and
    layers interact a little (+10 % per extra layer), at most 100 pp; deterministic."""

    def probe(dense, fqns, setup, steps):
        calls.append(steps)
        specs = fqns if isinstance(fqns, dict) else {f: setup.spec for f in fqns}
        cost = 0.0
        for f, spec in specs.items():
            c_out = dense.get_submodule(f).out_channels
            cb = spec.channels_for(c_out)
            cost += 0.3 * (c_out / cb - 1)
        cost *= 1 + 0.1 * max(len(specs) - 1, 0)
        d = round(min(cost, 100.0), 4)  # an accuracy drop: at most 100 pp
        return {
            "zero_shot_acc": 0.5,
            "zero_shot_drop": d,
            "zero_shot_loss_delta": d / 10,
            "probe_acc": 0.5,
            "probe_drop": d,
            "probe_loss_delta": d / 10,
        }

    return probe


def _search(data8, out, cfg, **kw):
    tr, va = data8
    return S.sensitivity_search(
        _model(), tr, va, config=cfg, out=out, progress=False, log=lambda *a: None, **kw
    )


def test_ladder_stages_resume_and_pick_ranks_within_the_verified_budget(
    data8, tmp_path, monkeypatch
):
    """With a synthetic probe: the ladder's plan mixes ranks, fits the budget in its own
    combined probe, saves at least what every fitting peer rule saves; a search killed
    inside the ladder probes resumes to the same report, re-probing only what was missing."""
    monkeypatch.setattr(probes, "time_fwd_bwd", lambda *a: 1.0)
    monkeypatch.setattr(probes, "time_infer", lambda *a: 1.0)
    cfg = _config(baseline_epochs=0, final=False, max_drop=3.0, ladder_ratios=[0.125, 0.25, 0.5])
    calls = []
    monkeypatch.setattr(S, "_probe", _synthetic_probe(calls))
    ref = _search(data8, tmp_path / "a", cfg)
    lad = ref.ladder
    assert set(lad["peers"]) == set(peers.RULES)
    plan = lad["plan"]
    assert plan and len(set(plan.values())) >= 1
    state = json.loads((tmp_path / "a" / "state.json").read_text())["stages"]
    mine = [
        v for v in state["plan_probes"] if v["plan"] == [[f, cb] for f, cb in sorted(plan.items())]
    ]
    assert mine and mine[0]["probe_drop"] <= cfg.max_drop
    for p in lad["peers"].values():
        if p["fits"]:
            assert lad["saved"] >= p["saved"]
    # the ladder stopped climbing at the first rung over the budget alone
    for f, cbs in lad["rungs"].items():
        seen = [cb for cb in cbs if f"{f}@{cb}" in lad["probes"]]
        assert seen == cbs[: len(seen)]
        over = [cb for cb in seen if lad["probes"][f"{f}@{cb}"]["probe_drop"] > cfg.max_drop]
        assert len(over) <= 1 and (not over or over[0] == seen[-1])
    # the report rows and plan.json carry each layer's chosen C_b
    doc = json.loads((tmp_path / "a" / "plan.json").read_text())["plan"]
    for r in ref.layers:
        assert r["chosen_C_b"] == plan.get(r["fqn"])
        assert (doc[r["fqn"]] or {}).get("basis_channels") == plan.get(r["fqn"])

    # killed during the 3rd ladder probe, then resumed
    n = {"k": 0}
    real = _synthetic_probe([])

    def dying(dense, fqns, setup, steps):
        if isinstance(fqns, dict) and len(fqns) == 1:
            n["k"] += 1
            if n["k"] == 3:
                raise KeyboardInterrupt("killed")
        return real(dense, fqns, setup, steps)

    monkeypatch.setattr(S, "_probe", dying)
    with pytest.raises(KeyboardInterrupt):
        _search(data8, tmp_path / "b", cfg)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())["stages"]
    assert len(saved["ladder_probes"]) == 2
    again = []
    monkeypatch.setattr(S, "_probe", _synthetic_probe(again))
    resumed = _search(data8, tmp_path / "b", cfg)
    assert len(again) < len(calls) - 2
    a, b = ref.to_dict(), resumed.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_peer_settings_follow_their_rules(data8):
    tr, _ = data8
    m = _model()
    cands, rows = probes.candidates(m, tb.BasisSpec(ratio=0.25), tuple(tr[0][0].shape))
    costs = ladder.Costs(m, tb.BasisSpec(ratio=0.25), tuple(tr[0][0].shape), cands, rows)
    cfg = _config()
    uni = peers.settings("uniform", costs, cfg, tb.BasisSpec(ratio=0.25))
    assert [s["ratio"] for s, _ in uni] == [0.25, 0.5]
    for s, plan in uni:
        for f, cb in plan.items():
            assert cb == max(1, round(s["ratio"] * rows[f].C_out))
    ch = peers.settings("channels", costs, cfg, tb.BasisSpec(ratio=0.25))
    for s, plan in ch:
        assert all(min(rows[f].C_in, rows[f].C_out) >= s["min_channels"] for f in plan)
    en = dict(
        (s["energy"], p) for s, p in peers.settings("energy", costs, cfg, tb.BasisSpec(ratio=0.25))
    )
    # the conversion's own energy rule: a higher threshold never gets a smaller basis
    for f in en[0.5]:
        assert en[0.9].get(f, rows[f].C_out) >= en[0.5][f]
    for f, cb in en[0.9].items():
        layer = tb.convert(m, {f: tb.BasisSpec(energy=0.9)}).get_submodule(f)
        assert layer.basis_channels == cb


def test_mixed_rank_plan_converts_through_the_plan_file(tmp_path):
    m = _model()
    plan = {"layer3.0.conv2": 4, "layer4.0.conv1": 16, "layer4.1.conv2": 32}
    from tritonbasis.conversion.plan import save_plan

    save_plan(ladder.plan_specs(plan, tb.BasisSpec(ratio=0.25)), tmp_path / "p.json")
    conv = tb.convert(m, load_plan(tmp_path / "p.json"))
    for f, cb in plan.items():
        assert isinstance(conv.get_submodule(f), tb.BasisConv2d)
        assert conv.get_submodule(f).basis_channels == cb
    assert conv.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_cut_down_ladder_and_peers_end_to_end_same_plan_whatever_the_timings(
    data8, tmp_path, monkeypatch
):
    """The whole ladder + peers experiment, cut down (tiny model, 8 px digits, 2 seeds, 2
    probe steps), twice with timings that make every layer's measured mode differ: the
    report's structure and invariants, and the same plan and numbers both times."""
    monkeypatch.setattr(
        final,
        "measure_step_time",
        lambda *a, **k: {"train_step_ms": 1.0, "infer_ms": 1.0, "device_name": "cpu"},
    )
    reps = {}
    for fast in ("fused", "weight"):
        t = lambda module, x, steps, fast=fast: {fast: 1.0, None: 1.5}.get(  # noqa: E731
            getattr(module, "mode", None), 2.0
        )
        monkeypatch.setattr(probes, "time_fwd_bwd", t)
        monkeypatch.setattr(probes, "time_infer", t)
        reps[fast] = _search(data8, tmp_path / fast, _config())
    rep = reps["fused"]
    lad, v = rep.ladder, rep.verdict
    # chosen plan within the budget in its own verified probe
    assert lad["verified_drop"] <= rep.config["max_drop"]
    # every peer rule present, each fitting one fine-tuned and scored over the same seeds
    assert set(lad["peers"]) == set(peers.RULES)
    for rule, p in lad["peers"].items():
        if p["fits"] and p["plan"]:
            assert rule in rep.final and rep.final[rule]["seeds"] == rep.final["chosen"]["seeds"]
            assert p["verified_drop"] <= rep.config["max_drop"]
    # naive shown; the verdict compares the chosen plan with the peer rules
    assert rep.final["naive"]["converted"] == len(rep.layers)
    assert v["ladder"]["chosen"]["source"] == lad["source"]
    assert set(v["ladder"]["rules"]) == set(lad["peers"])
    assert (tmp_path / "fused" / "ladder_tradeoff.png").stat().st_size > 0
    assert "Rank ladder" in (tmp_path / "fused" / "summary.md").read_text()
    # same seed -> same plan and numbers, whatever the timings
    plans = [json.loads((tmp_path / f / "plan.json").read_text()) for f in ("fused", "weight")]
    assert plans[0] == plans[1]
    a, b = ({k: reps[f].to_dict()[k] for k in ("ladder", "selection")} for f in ("fused", "weight"))
    assert a == b
    for name in rep.final:
        assert rep.final[name]["val_acc_per_seed"] == reps["weight"].final[name]["val_acc_per_seed"]


def test_ladder_config_is_validated():
    with pytest.raises(ValueError, match="ladder_ratios"):
        S.SearchConfig(ladder=True, ladder_ratios=[0.0])
    with pytest.raises(ValueError, match="peer_energies"):
        S.SearchConfig(peer_energies=[])
    # measured time is an objective of the ladder too
    assert S.SearchConfig(ladder=True, gain="time").gain == "time"


def test_state_schema_checks_ladder_fields():
    from tritonbasis.recipes.search.state import state_problems

    probe = {
        "zero_shot_acc": 0.5,
        "zero_shot_drop": 0.0,
        "zero_shot_loss_delta": 0.0,
        "probe_acc": 0.5,
        **_p(0.1, 0.0),
    }

    def doc(stages):
        return {
            "format": "tritonbasis-search-state/1",
            "config_hash": "0" * 64,
            "identity": {},
            "stages": stages,
        }

    assert state_problems(doc({"ladder_probes": {"conv1@4": probe}}), layers=["conv1"]) == []
    found = state_problems(doc({"ladder_probes": {"nope@4": probe}}), layers=["conv1"])
    assert any("nope@4" in x for x in found)
    found = state_problems(doc({"ladder_probes": {"conv1": probe}}), layers=["conv1"])
    assert any("ladder_probes" in x for x in found)
    found = state_problems(doc({"peers": {"uniform": {"rule": "bogus"}}}), layers=["conv1"])
    assert any("peers" in x for x in found)
    timing = {"time_dense_ms": 2.0, "time_basis_ms": 1.0, "time_saved_ms": 1.0, "mode": "fused"}
    assert state_problems(doc({"rung_gains": {"conv1@4": timing}}), layers=["conv1"]) == []
    found = state_problems(doc({"rung_gains": {"nope@4": timing}}), layers=["conv1"])
    assert any("nope@4" in x for x in found)
    found = state_problems(
        doc({"rung_gains": {"conv1@4": {**timing, "mode": "x"}}}), layers=["conv1"]
    )
    assert any("rung_gains" in x for x in found)


@pytest.mark.slow
def test_two_rank_ladder_equals_single_process(tmp_path, one_thread):
    """The ladder's rung probes spread over 2 torchrun ranks give the single-process rung
    probes, ladder selection, peers and plan (same baseline: the DDP-trained one)."""
    import shutil

    import torch.distributed as dist

    from tritonbasis.cli import main

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    from test_distributed import SEARCH, _torchrun

    args = [*SEARCH, "--no-final", "--ladder", "--ladder-ratios", "0.25", "0.5"]
    args += ["--peer-energies", "0.8", "--no-probe-groups"]
    out = tmp_path / "dist"
    p = _torchrun([*args, "--out", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert {v["rank"] for v in rep["ladder"]["probes"].values() if "rank" in v} == {0, 1}
    single = tmp_path / "single"
    single.mkdir()
    doc = json.loads((out / "state.json").read_text())
    doc["stages"] = {k: v for k, v in doc["stages"].items() if k.startswith("baseline")}
    (single / "state.json").write_text(json.dumps(doc))
    shutil.copy(out / "baseline.pt", single / "baseline.pt")
    assert main([*args, "--out", str(single)]) == 0
    ref = json.loads((single / "report.json").read_text())

    def strip(lad):
        lad = json.loads(json.dumps(lad))
        for v in lad["probes"].values():
            v.pop("rank", None)
        return lad

    assert strip(rep["ladder"]) == strip(ref["ladder"])
    assert rep["plan"] == ref["plan"]


def test_upgrade_sequence_jumps_over_rungs_that_save_no_more_time():
    """Measured time need not grow with a harsher rung: a rung saving no more than the
    layer's milder one is no step (the next step jumps over it), and a layer slower than
    dense at every rung has no step at all."""
    saved = {("a", 8): 1.0, ("a", 4): 0.5, ("a", 2): 3.0, ("b", 8): -1.0, ("b", 4): -0.2}

    class Times:
        def saved(self, f, cb, what):
            return saved[(f, cb)]

    pr = {f"{f}@{cb}": _p(0.1, 0.01 * (9 - cb)) for f, cb in saved}
    seq = ladder.upgrade_sequence({"a": [8, 4, 2], "b": [8, 4]}, pr, Times(), "time", "loss", 2.0)
    assert [(s["fqn"], s["C_b"], s["saved"]) for s in seq] == [("a", 8, 1.0), ("a", 2, 2.0)]


def _time_search_config(**kw):
    return _config(
        baseline_epochs=0, final=False, max_drop=3.0, ladder_ratios=[0.125, 0.25, 0.5],
        gain="time", **kw,
    )  # fmt: skip


def _basis_ms(module, x, steps):
    """Fake per-layer timings: dense 10 ms; a basis layer 2 + 0.1 C_b ms fused, 1 ms more
    in weight mode (fused is the faster mode, so a (layer, C_b) saves 8 - 0.1 C_b ms)."""
    if isinstance(module, tb.BasisConv2d):
        return 2.0 + 0.1 * module.basis_channels + (0.0 if module.mode == "fused" else 1.0)
    return 10.0


def test_ladder_with_gain_time_saves_recorded_timings_and_resumes_without_retiming(
    data8, tmp_path, monkeypatch
):
    """gain=time with the ladder and the peers: every (layer, C_b) the selection or a peer
    rule compares is timed once (the real time_layer over a fake timer), kept in the state,
    and the plan's and the peers' savings are the sums of those timings; a search killed
    during the rung timings resumes re-timing nothing it had timed, and a finished one
    re-times nothing."""
    monkeypatch.setattr(probes, "time_fwd_bwd", _basis_ms)
    monkeypatch.setattr(probes, "time_infer", _basis_ms)
    monkeypatch.setattr(S, "_probe", _synthetic_probe([]))
    real, calls = probes.time_layer, []

    def counted(*a, **k):
        calls.append(k.get("infer", True))
        return real(*a, **k)

    monkeypatch.setattr(probes, "time_layer", counted)
    cfg = _time_search_config()
    ref = _search(data8, tmp_path / "a", cfg)
    lad = ref.ladder
    state = json.loads((tmp_path / "a" / "state.json").read_text())["stages"]
    ms = lambda cb: 8.0 - 0.1 * cb  # noqa: E731
    for k, v in state["rung_gains"].items():
        assert v["time_saved_ms"] == pytest.approx(ms(int(k.rsplit("@", 1)[1])), abs=1e-4)
        assert v["mode"] == "fused" and v["time_dense_ms"] == 10.0
    n_layers, n_rungs = len(ref.layers), len(state["rung_gains"])
    assert calls.count(True) == n_layers and calls.count(False) == n_rungs
    assert lad["gain"] == "time" and lad["plan"]
    assert lad["saved"] == lad["time_saved_ms"]
    assert lad["time_saved_ms"] == pytest.approx(
        sum(ms(cb) for cb in lad["plan"].values()), abs=1e-3
    )
    for p in lad["peers"].values():
        assert p["saved"] == pytest.approx(sum(ms(cb) for cb in p["plan"].values()), abs=1e-3)
        assert "macs_saved" in p
        if p["fits"]:
            assert lad["saved"] >= p["saved"]
    # every pair a plan holds was timed (or is the layer's own gains row)
    for plan in [lad["plan"], *(p["plan"] for p in lad["peers"].values())]:
        assert all(f"{f}@{cb}" in lad["rung_gains"] for f, cb in plan.items())
    assert "time saved (ms) per C_b" in (tmp_path / "a" / "summary.md").read_text()

    calls.clear()  # finished: a rerun re-times nothing
    again = _search(data8, tmp_path / "a", cfg)
    assert calls == [] and again.ladder == lad

    def dying(*a, **k):  # killed during the 3rd rung timing
        if not k.get("infer", True) and calls.count(False) == 2:
            raise KeyboardInterrupt("killed")
        return counted(*a, **k)

    calls.clear()
    monkeypatch.setattr(probes, "time_layer", dying)
    with pytest.raises(KeyboardInterrupt):
        _search(data8, tmp_path / "b", cfg)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())["stages"]
    assert len(saved["rung_gains"]) == 2
    calls.clear()
    monkeypatch.setattr(probes, "time_layer", counted)
    resumed = _search(data8, tmp_path / "b", cfg)
    assert calls.count(True) == 0 and calls.count(False) == n_rungs - 2
    assert resumed.ladder == lad


def test_ladder_with_gain_time_follows_the_measured_savings(data8, tmp_path, monkeypatch):
    """Faked timings: one small layer's mildest rung saves far more time than anything else
    (and its harsher rungs less), the layer with the largest MAC saving runs slower than
    dense at every rung: the selection takes the fast rung first, never a harsher rung of
    that layer, and never the slow layer -- the measured objective drives the choice."""
    fast, slow = "layer1.0.conv1", "layer4.1.conv2"
    model = _model()
    model.get_submodule(fast)._fake = "fast"
    model.get_submodule(slow)._fake = "slow"

    def fake(dense_layer, layer, x, steps, *, infer=True, dense=None):
        kind, cb, c_out = (
            getattr(dense_layer, "_fake", ""),
            layer.basis_channels,
            layer.out_channels,
        )
        t = {"fast": 0.1 if cb == c_out // 2 else 9.5, "slow": 12.0}.get(kind, 9.0 + cb / c_out)
        row = {"time_dense_ms": 10.0, "time_basis_ms": t, "time_saved_ms": round(10.0 - t, 4),
               "time_fused_ms": t, "time_weight_ms": t + 1.0, "mode": "fused"}  # fmt: skip
        if infer:
            row.update(time_dense_infer_ms=5.0, time_fused_infer_ms=t / 2,
                       time_weight_infer_ms=t / 2, mode_infer="weight")  # fmt: skip
        return row

    monkeypatch.setattr(probes, "time_layer", fake)
    monkeypatch.setattr(S, "_probe", _synthetic_probe([]))
    tr, va = data8
    rep = S.sensitivity_search(
        model, tr, va, config=_time_search_config(peers=False), out=tmp_path,
        progress=False, log=lambda *a: None,
    )  # fmt: skip
    lad = rep.ladder
    seq = [(s["fqn"], s["C_b"]) for s in lad["selection"]["sequence"]]
    assert seq[0] == (fast, 4)
    assert [cb for f, cb in seq if f == fast] == [4]
    assert all(f != slow for f, _ in seq)
    assert lad["plan"][fast] == 4 and slow not in lad["plan"]
    # without the peers, only the rungs the selection may step to are timed
    usable = set()
    for f, cbs in lad["rungs"].items():
        for cb in cbs:
            p = lad["probes"].get(f"{f}@{cb}")
            if p is None or p["probe_drop"] > rep.config["max_drop"]:
                break
            usable.add(f"{f}@{cb}")
    assert set(lad["rung_gains"]) == usable
    assert lad["time_saved_ms"] == pytest.approx(
        sum(lad["rung_gains"][f"{f}@{cb}"]["time_saved_ms"] for f, cb in lad["plan"].items())
    )


def test_peer_verdict_compares_measured_time_where_the_search_optimises_it():
    """gain=time: the best peer rule is the one saving the most summed per-layer time (not
    the most MACs), and the verdict and its words state the time saved beside the MACs."""
    from tritonbasis.recipes.search.verdict_peers import peer_lines, peer_verdict

    def model(macs, drops):
        return {"macs": macs, "params": macs // 10, "train_step_ms": 10.0, "infer_ms": 5.0,
                "drop_per_seed_pp": drops, "val_acc_per_seed": [0.9 - d / 100 for d in drops],
                "converted": 3}  # fmt: skip

    final = {
        "dense": model(1000, [0.0, 0.0]),
        "chosen": model(700, [0.5, 0.4]),
        "uniform": model(500, [0.6, 0.5]),  # the most MACs saved
        "energy": model(800, [0.2, 0.3]),  # the most time saved among the peers
    }

    def peer(saved):
        return {"setting": {}, "fits": True, "verified_drop": 0.5, "saved": saved, "plan": {}}

    lad = {"gain": "time", "source": "ladder", "time_saved_ms": 4.0}
    lad["peers"] = {"uniform": peer(1.0), "energy": peer(3.0)}
    pv = peer_verdict(final, lad, 1.0, 500)
    assert pv["best_peer"] == "energy" and pv["chosen"]["time_saved_ms"] == 4.0
    assert pv["rules"]["uniform"]["time_saved_ms"] == 1.0
    assert pv["saves_more_time_than_every_peer"] is True
    assert pv["saves_more_macs_than_every_peer"] is False
    words = " ".join(peer_lines(pv))
    assert "4.000 ms" in words and "saves more time than every peer rule" in words
    lad["peers"]["energy"] = peer(5.0)
    assert peer_verdict(final, lad, 1.0, 500)["saves_more_time_than_every_peer"] is False
    # gain macs: no time in the verdict, the best peer by MACs
    pv = peer_verdict(final, {**lad, "gain": "macs"}, 1.0, 500)
    assert pv["best_peer"] == "uniform" and "saves_more_time_than_every_peer" not in pv
    assert "time_saved_ms" not in pv["chosen"]


def test_final_times_a_ladder_layer_in_its_rungs_measured_mode(data8, tmp_path, monkeypatch):
    """gain=time: the final's step times run each plan layer in the mode its own rung was
    measured faster in (a layer at the spec's C_b: its gains row), not the spec's mode."""
    monkeypatch.setattr(S, "_probe", _synthetic_probe([]))

    def fake(dense_layer, layer, x, steps, *, infer=True, dense=None):
        # at the spec's C_b (C_out/4) fused is faster; C_out/2 saves more, in weight mode
        spec_cb = max(1, layer.out_channels // 4)
        t = 5.0 if layer.basis_channels == spec_cb else 3.0
        mode = "fused" if layer.basis_channels == spec_cb else "weight"
        row = {"time_dense_ms": 10.0, "time_basis_ms": t, "time_saved_ms": 10.0 - t,
               "time_fused_ms": t, "time_weight_ms": t, "mode": mode}  # fmt: skip
        if infer:
            row.update(time_dense_infer_ms=5.0, time_fused_infer_ms=2.0,
                       time_weight_infer_ms=2.0, mode_infer="fused")  # fmt: skip
        return row

    monkeypatch.setattr(probes, "time_layer", fake)
    applied = {}
    real_apply = final.apply_modes

    def recording(model, fqns, gains, device):
        for f in fqns:
            applied.setdefault(id(model), {})[f] = gains[f]["mode"]
        return real_apply(model, fqns, gains, device)

    monkeypatch.setattr(final, "apply_modes", recording)
    cfg = _config(
        baseline_epochs=0, max_drop=3.0, gain="time", peers=False,
        final=True, final_epochs=0, final_seeds=1, time_rounds=1,
    )  # fmt: skip
    rep = _search(data8, tmp_path, cfg)
    plan, base = rep.ladder["plan"], {r["fqn"]: r["C_b"] for r in rep.layers}
    assert any(cb != base[f] for f, cb in plan.items()), plan  # a layer at another rung
    chosen = [m for m in applied.values() if set(m) == set(plan)]
    assert chosen, applied
    for f, cb in plan.items():
        assert chosen[0][f] == ("fused" if cb == base[f] else "weight"), (f, cb)
