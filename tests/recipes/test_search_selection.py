"""The search's selection by combined-probe bisection (a fake probe with an interaction the
summed single-layer drops cannot predict) and the summary a user reads (verdict words, the
tables, the mode per layer, the plots), on fabricated results: no training, no timing."""

import pytest
from helpers import DictState

from tritonbasis.recipes import search as S
from tritonbasis.recipes.search import selection
from tritonbasis.recipes.search.verdict import verdict


def _result(drop, loss=0.0):
    return {
        "zero_shot_acc": 0.9,
        "zero_shot_drop": drop,
        "zero_shot_loss_delta": loss,
        "probe_acc": 0.9,
        "probe_drop": round(drop, 4),
        "probe_loss_delta": loss,
    }


def _rows(names_scores, drop=0.3):
    return [{"fqn": f, "probe_drop": drop, "score": s, "chosen": False} for f, s in names_scores]


def _interacting_probe(calls):
    """Each layer alone costs 0.3 pp; d and e together cost 5 pp more (the interaction)."""

    def probe(fqns, steps):
        calls.append((sorted(fqns), steps))
        return _result(0.3 * len(fqns) + (5.0 if {"d", "e"} <= set(fqns) else 0.0))

    return probe


def test_bisect_finds_the_longest_fitting_prefix_by_combined_probes():
    rows = _rows(
        [("a", 6.0), ("b", 5.0), ("c", 4.0), ("d", 3.0), ("e", 2.0), ("f", 1.0), ("zero", 0.0)]
    )  # a layer with no gain is never a candidate
    calls = []
    cfg = S.SearchConfig(max_drop=2.0, probe_steps=3, verify_steps=7, selection="bisect")
    state = DictState()
    sel = selection.select(rows, _interacting_probe(calls), cfg, state, log=lambda *a: None)
    # prefix lengths probed: 3 (fits), 5 (d+e: over), 4 (fits) -> a, b, c, d
    assert [len(c[0]) for c in calls] == [3, 5, 4] and all(c[1] == 7 for c in calls)
    assert sel["chosen"] == ["a", "b", "c", "d"] and sel["within_budget"]
    assert sel["verified_drop"] == pytest.approx(1.2)
    assert sel["predicted_drop"] == pytest.approx(1.2)
    assert sel["backoffs"] == 1 and sel["method"] == "bisect"
    assert sel["order"] == ["a", "b", "c", "d", "e", "f"]
    # every step reports predicted (sum of singles) vs verified (combined); the 5-layer
    # prefix is where the sum mispredicts: 1.5 predicted, 6.5 verified
    assert [
        (s["n_layers"], s["predicted_drop"], s["verified_drop"], s["fits"]) for s in sel["steps"]
    ] == [(3, 0.9, 0.9, True), (5, 1.5, 6.5, False), (4, 1.2, 1.2, True)]
    # the summed singles would have taken all six (1.8 pp <= 2): the greedy does, then
    # needs two back-offs to get under budget
    gcalls = []
    g = selection.select(
        rows,
        _interacting_probe(gcalls),
        S.SearchConfig(max_drop=2.0, verify_steps=7, selection="greedy"),
        DictState(),
        log=lambda *a: None,
    )
    assert g["chosen"] == ["a", "b", "c", "d"] and g["backoffs"] == 2 and len(gcalls) == 3
    # a second run on the same state re-uses the saved combined probes
    again = selection.select(rows, _interacting_probe(calls), cfg, state, log=lambda *a: None)
    assert len(calls) == 3 and again["chosen"] == sel["chosen"]


def test_bisect_stopped_by_max_backoff_is_flagged_over_budget():
    rows = _rows([(f, 10.0 - i) for i, f in enumerate("abcdefgh")], drop=0.0)

    def probe(fqns, steps):  # alone nothing, together 50 pp
        return _result(0.0 if len(fqns) == 1 else 50.0)

    cfg = S.SearchConfig(max_drop=0.5, max_backoff=2, selection="bisect")
    sel = selection.select(rows, probe, cfg, DictState(), log=lambda *a: None)
    assert not sel["within_budget"] and sel["backoffs"] == 2
    assert sel["chosen"] == list("ab") and sel["verified_drop"] == 50.0
    # with enough probes it finds the one layer that fits
    ok = selection.select(
        rows,
        probe,
        S.SearchConfig(max_drop=0.5, selection="bisect"),
        DictState(),
        log=lambda *a: None,
    )
    assert ok["chosen"] == ["a"] and ok["within_budget"]


def test_loss_sensitivity_ranks_by_validation_loss():
    """Two layers with the same accuracy drop (one image) but different loss increases:
    ranked by loss, the one that hurts the loss less comes first."""

    class Row:
        def __init__(self, fqn):
            self.fqn, self.C_in, self.C_out, self.kernel, self.stride = fqn, 8, 8, (3, 3), (1, 1)
            self.C_b, self.out_pixels = 1, 16
            self.params_before, self.params_after = 576, 80
            self.macs_before, self.macs_after = 9216, 1280

    conv_rows = {"x": Row("x"), "y": Row("y")}
    pr = {"x": _result(0.2, loss=0.08), "y": _result(0.2, loss=0.01)}
    gains = {f: {"time_saved_ms": 0.0, "mode": "weight"} for f in "xy"}
    by_loss = selection.layer_rows(["x", "y"], conv_rows, pr, gains, "macs", "loss")
    assert by_loss[1]["score"] == pytest.approx(8 * by_loss[0]["score"])
    by_acc = selection.layer_rows(["x", "y"], conv_rows, pr, gains, "macs", "accuracy")
    assert by_acc[0]["score"] == by_acc[1]["score"]


def _final(dense_acc, chosen_acc, naive_acc, times):
    def entry(accs, name, params, macs, converted):
        drops = [round(100 * (d - a), 4) for d, a in zip(dense_acc, accs)]
        m = sum(drops) / len(drops)
        sd = (sum((x - m) ** 2 for x in drops) / (len(drops) - 1)) ** 0.5
        return {
            "val_acc": sum(accs) / len(accs),
            "val_acc_sd": 0.003,
            "val_loss": 0.1,
            "val_acc_per_seed": accs,
            "drop_pp": m,
            "drop_sd_pp": sd,
            "drop_per_seed_pp": drops,
            "converted": converted,
            "params": params,
            "macs": macs,
            "train_step_ms": times[name][1],
            "train_step_ms_rounds": times[name],
            "infer_ms": times[name][1] / 4,
            "infer_ms_rounds": [t / 4 for t in times[name]],
            "timing_device": "cpu",
        }

    return {
        "dense": entry(dense_acc, "dense", 1000, 5000, 0),
        "chosen": entry(chosen_acc, "chosen", 320, 3450, 2),
        "naive": entry(naive_acc, "naive", 100, 1000, 3),
    }


def _report(final):
    layers = []
    for i, (f, mode) in enumerate((("l1", "fused"), ("l2", "weight"), ("l3", "weight"))):
        layers.append(
            {
                "fqn": f,
                "C_in": 8,
                "C_out": 16,
                "kernel": [3, 3],
                "stride": [1, 1],
                "C_b": 1,
                "zero_shot_drop": 3.0,
                "probe_drop": 0.2 * i,
                "probe_loss_delta": 0.01,
                "macs_saved": 100,
                "time_saved_ms": -0.1,
                "mode": mode,
                "chosen": i < 2,
            }
        )
    sel = {
        "method": "bisect",
        "chosen": ["l1", "l2"],
        "predicted_drop": 0.2,
        "verified_drop": 0.5,
        "within_budget": True,
        "backoffs": 1,
        "max_drop": 1.0,
        "verifications": [],
        "steps": [
            {
                "n_layers": 2,
                "predicted_drop": 0.2,
                "verified_drop": 0.5,
                "verified_loss_delta": 0.02,
                "fits": True,
            },
            {
                "n_layers": 3,
                "predicted_drop": 0.6,
                "verified_drop": 4.0,
                "verified_loss_delta": 0.3,
                "fits": False,
            },
        ],
    }
    cfg = {**S.SearchConfig(ladder=False).__dict__, "final_seeds": 3}
    return S.SearchReport(
        config=cfg,
        identity={"model": "m", "width": 0.25},
        layers=layers,
        groups=[],
        baseline={"val_acc": 0.98, "params": 1000, "macs": 5000},
        spearman_zero_shot_vs_probe=None,
        selection=sel,
        final=final,
        plan={},
        verdict=verdict(final, sel, len(layers), val_size=450),
    )


def test_summary_has_the_verdict_the_tables_and_the_modes(tmp_path):
    final = _final(
        [0.98, 0.985, 0.975],
        [0.978, 0.984, 0.97],
        [0.92, 0.90, 0.93],
        {"dense": [76.0, 76.5, 77.5], "chosen": [75.0, 76.9, 77.0], "naive": [68.0, 68.8, 70.0]},
    )
    rep = _report(final)
    v = rep.verdict
    assert v["chosen_params_saved_pct"] == 68.0 and v["chosen_macs_saved_pct"] == 31.0
    assert v["chosen_within_budget"] and v["naive_over_budget"]
    assert v["larger_than_noise"] is True and v["mean_above_2se"] is True
    assert v["seeds_above_noise"] == 3 and v["train_step"]["not_slower"]
    # the per-seed noise: 95% half-width of two accuracies on 450 images (binomial)
    p_c, p_n = 0.978, 0.92
    assert v["noise_per_seed_pp"][0] == pytest.approx(
        196 * ((p_c * (1 - p_c) + p_n * (1 - p_n)) / 450) ** 0.5, abs=1e-3
    )
    # 2 robust sd: dense's rounds deviate 0.5 / 0 / 1.0 from their median (MAD 0.5)
    assert v["train_step"]["noise_ms"] == pytest.approx(2 * 1.4826 * 0.5)
    assert v["train_step"]["spread_ms"] == pytest.approx(2.0)  # chosen: 75.0 -> 77.0
    paths = S.write_outputs(rep, tmp_path)
    text = (tmp_path / "summary.md").read_text()
    for words in (
        "## Verdict",
        "within the 1.0 pp budget",
        "over the budget",
        "LARGER than the noise (3 of 3 seeds",
        "not slower than dense within the noise",
        "68% fewer params",
        "31% fewer MACs",
        "## Selection steps",
        "| 2 | 3 | 0.60 | 4.00 |",
    ):
        assert words in text, words
    table = text[text.index("```") :]
    for f, mode in (("l1", "fused"), ("l2", "weight"), ("l3", "weight")):
        line = next(x for x in table.splitlines() if x.startswith(f))
        assert mode in line.split(), line  # the mode each layer runs
    for name in ("dense", "chosen", "naive"):
        assert any(x.startswith(name) for x in table.splitlines()), name
    for kind in ("sensitivity_png", "tradeoff_png"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind


def test_verdict_says_when_the_difference_is_noise():
    # naive loses 1 pp more on average, but the seeds disagree wildly
    final = _final(
        [0.98, 0.98, 0.98],
        [0.97, 0.98, 0.99],
        [0.99, 0.94, 0.97],
        {"dense": [70.0, 70.0, 70.0], "chosen": [80.0, 80.0, 80.0], "naive": [60.0] * 3},
    )
    rep = _report(final)
    assert rep.verdict["larger_than_noise"] is False and rep.verdict["seeds_above_noise"] == 2
    assert rep.verdict["mean_above_2se"] is False
    assert not rep.verdict["train_step"]["not_slower"]
    # one disturbed round does not widen the noise until "not slower" says nothing
    rounds = {"dense": [27.0, 27.5, 146.0], "chosen": [29.6, 29.5, 29.7], "naive": [29.0] * 3}
    v = _report(_final([0.98] * 3, [0.98] * 3, [0.9] * 3, rounds)).verdict
    assert v["train_step"]["spread_ms"] == pytest.approx(119.0)
    assert v["train_step"]["noise_ms"] < 2 and not v["train_step"]["not_slower"]
    words = "\n".join(S.verdict_lines(rep.verdict))
    assert "NOT larger than the noise" in words and "SLOWER than dense" in words
