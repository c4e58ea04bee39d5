"""The default experiment, cut down to CI time (about 35 s on one thread): a quarter-width
ResNet18 on 8x8 digits, the default rank-ladder search (rungs C_out x {1/16, 1/8, 1/4, 1/2})
with the default budget (1 pp), shorter training and probes, 2 seeds. Converting every layer
at C_b = C_out/16 must lose more than the budget and the searched plan must stay within it,
each by a margin larger than the seed-to-seed spread measured here; the mixed-rank plan must
save more MACs than the single-ratio subset search and than every other peer rule that
fits. The same check at full size is the committed run
(bench/results/search-ladder-cpu-digits-*); docs/experiments.md records this cut-down's numbers."""

import pytest

from tritonbasis.recipes import search as S
from tritonbasis.recipes.search import probes


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Bitwise-reproducible CPU runs, fast on the 2-core CI machine (conftest's fixture)."""


def _layer_time(module, x, steps):
    """Injected per-layer timings (not what this test is about; real ones take >= 0.2 s per
    layer and mode)."""
    return 1.0


CUT_DOWN = dict(
    baseline_epochs=6,
    probe_steps=5,
    verify_steps=10,
    probe_groups=False,
    final_epochs=3,
    final_seeds=2,
    time_rounds=1,
    time_steps=1,
    time_batch=8,
)


def test_cut_down_default_naive_over_budget_chosen_within(tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "time_fwd_bwd", _layer_time)
    monkeypatch.setattr(probes, "time_infer", _layer_time)
    exp = S.ExperimentConfig(width=0.25, image_size=8)  # ratio 1/16, full form: the default
    cfg = S.SearchConfig(**CUT_DOWN)  # budget, lrs, sensitivity, selection: the defaults
    assert cfg.max_drop == 1.0 and exp.ratio == 0.0625
    rep = S.run_experiment(exp, cfg, out=tmp_path, progress=False, log=lambda *a: None)
    v = rep.verdict
    budget = v["budget_pp"]
    assert v["seeds"] == 2 and v["chosen_layers"] >= 1
    assert rep.selection["within_budget"]
    # every seed: naive over the budget, chosen within it
    assert min(v["naive_drop_per_seed_pp"]) > budget, v
    assert max(v["chosen_drop_per_seed_pp"]) <= budget, v
    # the margins exceed the seed-to-seed spread (sample sd over the 2 seeds)
    assert v["naive_drop_pp"] - budget > v["naive_drop_sd_pp"], v
    assert budget - v["chosen_drop_pp"] > v["chosen_drop_sd_pp"], v
    assert v["naive_minus_chosen_pp"] > v["naive_minus_chosen_sd_pp"], v
    assert v["larger_than_noise"] is True and v["naive_over_budget"]
    assert v["chosen_within_budget"]
    # the default is the rank ladder: the chosen plan is its mixed-rank plan
    assert rep.config["ladder"] is True and rep.ladder["plan"], rep.ladder
    lad, rules = v["ladder"], v["ladder"]["rules"]
    assert lad["chosen_seeds_within_budget"] == v["seeds"], lad
    assert lad["saves_more_macs_than_every_peer"], lad
    assert rules["subset"]["fits"], rules["subset"]
    assert v["chosen_macs_saved_pct"] > rules["subset"]["macs_saved_pct"], (v, rules)
    text = (tmp_path / "summary.md").read_text()
    assert "LARGER than the noise" in text and "within the 1.0 pp budget" in text
