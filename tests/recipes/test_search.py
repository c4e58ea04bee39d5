"""The layer-sensitivity search: a tiny end-to-end search, a deliberately fragile layer,
kill-and-resume equality, and refusal of mismatched or corrupt state."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import DictState

import tritonbasis as tb
from tritonbasis.recipes import search as S
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.models import resnet18_cifar
from tritonbasis.recipes.search import final, probes, selection
from tritonbasis.recipes.train import TrainConfig, evaluate, train


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Bitwise-reproducible CPU runs, fast on the 2-core CI machine (conftest's fixture)."""


@pytest.fixture(scope="module")
def data8():
    return digits(size=8, seed=0)


def _tiny_config(**kw):
    base = dict(
        spec={"ratio": 0.25},
        max_drop=2.0,
        baseline_epochs=2,
        batch_size=64,
        lr=0.05,
        probe_steps=4,
        probe_lr=0.01,
        time_batch=8,
        time_steps=2,
        final=True,
        final_seeds=1,
        final_epochs=1,
        time_rounds=1,
        verify_steps=None,
        ladder=False,
        seed=0,
    )
    base.update(kw)
    return S.SearchConfig(**base)


def _tiny_model():
    torch.manual_seed(0)
    return resnet18_cifar(num_classes=10, width=0.125)


def _strip_timing(d):
    """Wall-clock measurements differ run to run; everything else must not."""
    if isinstance(d, dict):
        return {
            k: _strip_timing(v)
            for k, v in d.items()
            if not (
                k.endswith(("_ms", "_ms_rounds"))
                or k in ("seconds", "timing_device", "train_step", "infer")
            )
        }
    if isinstance(d, list):
        return [_strip_timing(v) for v in d]
    return d


@pytest.mark.slow
def test_tiny_search_end_to_end(data8, tmp_path):
    train_data, val_data = data8
    rep = S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=_tiny_config(),
        out=tmp_path,
        progress=False,
        log=lambda *a: None,
    )
    sel = rep.selection
    assert sel["within_budget"]
    if sel["chosen"]:
        assert sel["verified_drop"] <= rep.config["max_drop"]
        assert sel["verifications"][-1]["layers"] == sorted(sel["chosen"])
    assert len(rep.layers) == 20  # every conv of resnet18_cifar saves something at 1/4
    for r in rep.layers:
        for k in (
            "zero_shot_drop",
            "probe_drop",
            "macs_saved",
            "params_saved",
            "time_dense_ms",
            "time_basis_ms",
        ):
            assert k in r, k
        assert r["macs_saved"] > 0
    assert set(rep.final) == {"dense", "chosen", "naive"}
    assert (
        rep.final["naive"]["params"] < rep.final["chosen"]["params"] <= rep.final["dense"]["params"]
    )
    assert rep.final["naive"]["converted"] == 20
    # the final converts the trained baseline: one seed, paired drops against it
    assert rep.final["dense"]["val_acc"] == pytest.approx(rep.baseline["val_acc"])
    assert rep.final["chosen"]["drop_per_seed_pp"] == [rep.final["chosen"]["drop_pp"]]
    assert rep.verdict["seeds"] == 1 and rep.verdict["mean_above_2se"] is None
    assert len(rep.verdict["noise_per_seed_pp"]) == 1  # from the validation-set size
    # every layer's mode is the faster of its two measured ones
    for r in rep.layers:
        assert r["mode"] == ("fused" if r["time_fused_ms"] <= r["time_weight_ms"] else "weight")
        assert r["mode_infer"] == (
            "fused" if r["time_fused_infer_ms"] <= r["time_weight_infer_ms"] else "weight"
        )
    # outputs: JSON report, plan, summary, plots
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["selection"]["chosen"] == sel["chosen"]
    for f in ("plan.json", "summary.md", "sensitivity.png", "tradeoff.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    # the plan converts exactly the chosen layers
    plan = tb.load_plan(tmp_path / "plan.json")
    conv, crep = tb.convert_with_report(_tiny_model(), plan)
    assert sorted(r.fqn for r in crep.converted) == sorted(sel["chosen"])


def _fragile_setup(data8):
    """A small CNN trained on digits whose convs c1 and c3 are trained as rank-4 basis convs
    and merged back into plain Conv2d (so converting them at C_b = 4 is exact), while c2 is an
    ordinary full-rank conv: the deliberately fragile one."""
    train_data, _ = data8
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("c1", tb.BasisConv2d(3, 16, 3, basis_channels=4, padding=1, keep_basis=False))
    m.add_module("b1", nn.BatchNorm2d(16))
    m.add_module("r1", nn.ReLU())
    m.add_module("c2", nn.Conv2d(16, 16, 3, padding=1))
    m.add_module("b2", nn.BatchNorm2d(16))
    m.add_module("r2", nn.ReLU())
    m.add_module("c3", tb.BasisConv2d(16, 16, 3, basis_channels=4, padding=1, keep_basis=False))
    m.add_module("b3", nn.BatchNorm2d(16))
    m.add_module("r3", nn.ReLU())
    m.add_module("pool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flat", nn.Flatten())
    m.add_module("fc", nn.Linear(16, 10))
    train(
        m, train_data, None, TrainConfig(epochs=6, batch_size=64, lr=0.05, seed=0), progress=False
    )
    return tb.merge(m)


def test_fragile_layer_is_ranked_most_sensitive(data8, tmp_path):
    train_data, val_data = data8
    m = _fragile_setup(data8)
    _, base_acc = evaluate(m, val_data, "cpu")
    assert base_acc > 0.5  # the model works, so a drop can show
    cfg = _tiny_config(
        baseline_epochs=0, probe_steps=0, max_drop=1.0, final=False, probe_groups=False
    )
    rep = S.sensitivity_search(
        m, train_data, val_data, config=cfg, out=tmp_path, progress=False, log=lambda *a: None
    )
    rows = {r["fqn"]: r for r in rep.layers}
    assert set(rows) == {"c1", "c2", "c3"}
    # rank-4 layers convert exactly at C_b = 4: no drop at all (up to one flipped sample)
    for name in ("c1", "c3"):
        assert abs(rows[name]["zero_shot_drop"]) <= 100 / len(val_data) + 1e-9, rows[name]
    assert rows["c2"]["probe_drop"] == max(r["probe_drop"] for r in rep.layers)
    assert rows["c2"]["probe_drop"] > 1.0
    assert "c2" not in rep.chosen and {"c1", "c3"} <= set(rep.chosen)


def _fake_layer_time(module, x, steps):
    """Deterministic per-layer timings: the basis path measured slower than the weight path
    on every odd-width layer (so both modes occur), independent of the machine's load."""
    if isinstance(module, tb.BasisConv2d):
        return 1.0 if (module.mode == "fused") == (module.out_channels % 16 == 0) else 2.0
    return 1.5


def _fake_infer_time(module, x, steps):
    """Inference timings that disagree with :func:`_fake_layer_time` on every layer (so the
    training and inference modes differ)."""
    if isinstance(module, tb.BasisConv2d):
        return 2.0 if (module.mode == "fused") == (module.out_channels % 16 == 0) else 1.0
    return 1.5


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_report(data8, tmp_path, monkeypatch):
    """Kill during the probes, resume: the same report. The layer timings are injected only
    to keep the test fast (real ones take >= 0.2 s per layer and mode); what the runs compute
    does not depend on them (test_same_seed_gives_the_same_search_whatever_the_timings)."""
    train_data, val_data = data8
    monkeypatch.setattr(probes, "time_fwd_bwd", _fake_layer_time)
    monkeypatch.setattr(probes, "time_infer", _fake_infer_time)
    cfg = _tiny_config(baseline_epochs=1, probe_steps=2)
    ref = S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=cfg,
        out=tmp_path / "a",
        progress=False,
        log=lambda *a: None,
    )
    # second run: killed during the 6th probe (S._probe: the probe the orchestrator binds and
    # hands to every stage that probes -- layers, groups, verifications)
    real = S._probe
    calls = {"n": 0}

    def dying_probe(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(S, "_probe", dying_probe)
    with pytest.raises(KeyboardInterrupt):
        S.sensitivity_search(
            _tiny_model(),
            train_data,
            val_data,
            config=cfg,
            out=tmp_path / "b",
            progress=False,
            log=lambda *a: None,
        )
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert len(state["stages"]["probes"]) == 5  # finished probes were saved
    monkeypatch.setattr(S, "_probe", real)
    counted = {"n": 0}

    def counting_probe(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(S, "_probe", counting_probe)
    resumed = S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=cfg,
        out=tmp_path / "b",
        progress=False,
        log=lambda *a: None,
    )
    # only the unfinished probes (+ groups and verifications) ran again
    n_layers = len(ref.layers)
    assert counted["n"] <= n_layers - 5 + 2 + len(ref.selection["verifications"])
    assert _strip_timing(resumed.to_dict()) == _strip_timing(ref.to_dict())


def _mode_timer(fast: str):
    """Per-layer timings in which mode ``fast`` wins every layer (a dense conv, which has no
    ``mode``, in between)."""

    def layer_time(module, x, steps):
        return {fast: 1.0, None: 1.5}.get(getattr(module, "mode", None), 2.0)

    return layer_time


def test_same_seed_gives_the_same_search_whatever_the_timings(data8, tmp_path, monkeypatch):
    """Two runs of one search with one seed, timed so that every layer's measured mode is
    fused in the first run and weight in the second (what machine load did to two real runs:
    the modes round differently, fine-tuning diverged, 23.33 vs 24.67 pp): accuracies,
    losses, the plan and every report field but the timings and the modes they pick are
    equal, bitwise on CPU."""
    cfg = _tiny_config(
        baseline_epochs=1,
        probe_steps=1,
        verify_steps=1,
        probe_groups=False,
        final_epochs=1,
        time_steps=1,
    )
    # the whole-model step times are timing fields too (left out of the comparison): faked,
    # only to keep the test short
    monkeypatch.setattr(
        final,
        "measure_step_time",
        lambda *a, **k: {"train_step_ms": 1.0, "infer_ms": 1.0, "device_name": "cpu"},
    )
    reports = {}
    for fast in ("fused", "weight"):
        monkeypatch.setattr(probes, "time_fwd_bwd", _mode_timer(fast))
        monkeypatch.setattr(probes, "time_infer", _mode_timer(fast))
        reports[fast] = _run(data8, tmp_path / fast, cfg).to_dict()
    for fast, rep in reports.items():  # the timings did pick other modes
        assert {(r["mode"], r["mode_infer"]) for r in rep["layers"]} == {(fast, fast)}

    def numbers(d):
        if isinstance(d, dict):
            return {k: numbers(v) for k, v in d.items() if k not in ("mode", "mode_infer")}
        return [numbers(v) for v in d] if isinstance(d, list) else d

    a, b = (numbers(_strip_timing(reports[f])) for f in ("fused", "weight"))
    assert a["final"]["naive"]["converted"] == 20 and a["final"]["chosen"]["converted"] >= 1
    assert a == b
    plans = [json.loads((tmp_path / f / "plan.json").read_text()) for f in ("fused", "weight")]
    assert plans[0] == plans[1]


@pytest.mark.slow
def test_mismatched_or_corrupt_state_is_refused(data8, tmp_path):
    train_data, val_data = data8
    cfg = _tiny_config(baseline_epochs=0, probe_steps=0, final=False, probe_groups=False)
    S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=cfg,
        out=tmp_path,
        progress=False,
        log=lambda *a: None,
    )
    other = _tiny_config(
        baseline_epochs=0, probe_steps=0, final=False, probe_groups=False, max_drop=0.1
    )
    with pytest.raises(S.SearchStateError, match="different configuration"):
        S.sensitivity_search(
            _tiny_model(),
            train_data,
            val_data,
            config=other,
            out=tmp_path,
            progress=False,
            log=lambda *a: None,
        )
    # another data set (identity) is refused too
    with pytest.raises(S.SearchStateError, match="different configuration"):
        S.sensitivity_search(
            _tiny_model(),
            train_data,
            val_data,
            config=cfg,
            out=tmp_path,
            identity={"data": "something else"},
            progress=False,
            log=lambda *a: None,
        )
    (tmp_path / "state.json").write_text("{ truncated")
    with pytest.raises(S.SearchStateError, match="corrupt"):
        S.sensitivity_search(
            _tiny_model(),
            train_data,
            val_data,
            config=cfg,
            out=tmp_path,
            progress=False,
            log=lambda *a: None,
        )


def test_search_config_validation():
    with pytest.raises(ValueError, match="exactly one of"):
        S.SearchConfig(spec={})
    with pytest.raises(ValueError, match="gain must be"):
        S.SearchConfig(gain="speed")
    with pytest.raises(ValueError, match="max_drop"):
        S.SearchConfig(max_drop=-1)


def test_selection_backs_off_to_a_verified_subset():
    """The selection stage alone, with a probe passed in: layers alone drop 0.3 pp each but
    'c' and 'd' together cost 5 pp (an interaction the sum cannot predict). Greedy by score
    takes a, b, c, d (predicted 1.2 pp <= 2); verification fails until 'd' is dropped; a
    second run on the same state re-uses the saved verifications instead of probing again."""
    rows = [
        {"fqn": f, "probe_drop": 0.3, "score": s, "chosen": False}
        for f, s in (("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0))
    ]
    calls = []

    def probe(fqns, steps):
        calls.append((sorted(fqns), steps))
        drop = 0.3 * len(fqns) + (5.0 if {"c", "d"} <= set(fqns) else 0.0)
        return {
            "zero_shot_acc": 0.9,
            "zero_shot_drop": drop,
            "zero_shot_loss_delta": 0.0,
            "probe_acc": 0.9,
            "probe_drop": round(drop, 4),
            "probe_loss_delta": 0.0,
        }

    cfg = _tiny_config(max_drop=2.0, probe_steps=3, max_backoff=3, selection="greedy")
    state = DictState()
    sel = selection.select(rows, probe, cfg, state, log=lambda *a: None)
    assert sel["chosen"] == ["a", "b", "c"] and sel["backoffs"] == 1
    assert sel["within_budget"] and sel["verified_drop"] == pytest.approx(0.9)
    assert sel["predicted_drop"] == pytest.approx(0.9)
    assert calls == [(["a", "b", "c", "d"], 6), (["a", "b", "c"], 6)]  # 2 x probe_steps
    assert [v["layers"] for v in state.get("verifications")] == [
        ["a", "b", "c", "d"],
        ["a", "b", "c"],
    ]
    again = selection.select(rows, probe, cfg, state, log=lambda *a: None)
    assert again == sel and len(calls) == 2


def test_killed_timing_resumes_with_the_saved_timings(data8, tmp_path, monkeypatch):
    """Killed while timing the layers: a resume times only the layers not yet timed (a
    re-timed layer could flip its mode) and ends with every layer's saved timings intact."""
    cfg = _tiny_config(baseline_epochs=0, probe_steps=0, final=False, probe_groups=False)
    calls = {"n": 0}

    def dying(module, x, steps):
        calls["n"] += 1
        if calls["n"] == 3 * 5 + 1:  # dense, fused, weight per layer: 5 layers done
            raise KeyboardInterrupt("killed")
        return _fake_layer_time(module, x, steps)

    monkeypatch.setattr(probes, "time_fwd_bwd", dying)
    monkeypatch.setattr(probes, "time_infer", _fake_infer_time)
    with pytest.raises(KeyboardInterrupt):
        _run(data8, tmp_path, cfg)
    saved = json.loads((tmp_path / "state.json").read_text())["stages"]["gains"]
    assert len(saved) == 5
    calls["n"] = -(10**6)  # no more kills
    rep = _run(data8, tmp_path, cfg)
    assert calls["n"] == -(10**6) + 3 * (len(rep.layers) - 5)
    rows = {r["fqn"]: r for r in rep.layers}
    for f, g in saved.items():
        assert rows[f]["mode"] == g["mode"] and rows[f]["time_fused_ms"] == g["time_fused_ms"]


def _run(data8, out, cfg):
    train_data, val_data = data8
    return S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=cfg,
        out=out,
        progress=False,
        log=lambda *a: None,
    )


def test_state_without_a_new_field_resumes_as_its_default(data8, tmp_path, monkeypatch):
    """A state written before a SearchConfig field existed (its config lacks it, its hash
    differs) resumes when this run uses the field's default, and is refused, naming the
    field, when it does not."""
    monkeypatch.setattr(probes, "time_fwd_bwd", _fake_layer_time)
    monkeypatch.setattr(probes, "time_infer", _fake_infer_time)
    cfg = _tiny_config(baseline_epochs=0, probe_steps=0, final=False, probe_groups=False)
    first = _run(data8, tmp_path, cfg)
    path = tmp_path / "state.json"
    doc = json.loads(path.read_text())
    for k in ("sensitivity", "selection", "final_seeds", "final_lr"):
        del doc["config"][k]
    doc["config_hash"] = "0" * 64  # as hashed by the code of before those fields
    path.write_text(json.dumps(doc))
    again = _run(
        data8,
        tmp_path,
        _tiny_config(
            baseline_epochs=0, probe_steps=0, final=False, probe_groups=False, final_seeds=3
        ),
    )
    assert again.selection == first.selection
    with pytest.raises(
        S.SearchStateError, match=r"differs in selection \(state 'bisect', now 'greedy'\)\)"
    ):
        _run(
            data8,
            tmp_path,
            _tiny_config(
                baseline_epochs=0,
                probe_steps=0,
                final=False,
                probe_groups=False,
                final_seeds=3,
                selection="greedy",
            ),
        )


def test_state_from_before_the_ladder_existed_reads_as_single_ratio(data8, tmp_path, monkeypatch):
    """The rank ladder became the default after states without a ``ladder`` field were
    written: such a state ran the single-ratio search, so it resumes with ``ladder=False``
    and is refused, naming the field, by the (new default) ladder search."""
    monkeypatch.setattr(probes, "time_fwd_bwd", _fake_layer_time)
    monkeypatch.setattr(probes, "time_infer", _fake_infer_time)
    kw = dict(baseline_epochs=0, probe_steps=0, final=False, probe_groups=False)
    first = _run(data8, tmp_path, _tiny_config(**kw))
    path = tmp_path / "state.json"
    doc = json.loads(path.read_text())
    for k in [k for k in doc["config"] if k.startswith(("ladder", "peer"))]:
        del doc["config"][k]
    doc["config_hash"] = "0" * 64
    path.write_text(json.dumps(doc))
    assert _run(data8, tmp_path, _tiny_config(**kw)).selection == first.selection
    assert S.SearchConfig().ladder is True
    with pytest.raises(S.SearchStateError, match=r"ladder \(state False, now True\)"):
        _run(data8, tmp_path, _tiny_config(**kw, ladder=True))
