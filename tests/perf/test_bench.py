"""The benchmark harness in quick mode on the CPU: the results JSON has exactly the issue's
shape with consistent figures, files are never overwritten, the case list, the Markdown
ratios, the one timer (util.timing.time_fn: torch.utils.benchmark on CPU, triton.testing's
do_bench / do_bench_cudagraph on CUDA, the latter checked against a stand-in), the providers'
input rotation, the flags generated from BenchConfig, and the bench / tune CLI. (No timing is
asserted: these check the instrument, not the speed.)"""

import argparse
import dataclasses
import json
import math
import sys
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tritonbasis.cli import main
from tritonbasis.op import tune_cache
from tritonbasis.op.geometry import check_inputs
from tritonbasis.perf import bench as tbb
from tritonbasis.util import timing
from tritonbasis.util.config_args import from_args

TOP_KEYS = {"device", "torch", "triton", "commit", "date", "settings", "records"}
RECORD_KEYS = {
    "case",
    "shape",
    "dtype",
    "layout",
    "direction",
    "provider",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "tflops",
    "gbps",
    "roofline_pct",
}
SHAPE_KEYS = {"N", "C_in", "C_out", "C_b", "H", "W", "k", "stride", "padding", "dilation"}
QUICK = ["bench", "--quick", "--warmup-ms", "1", "--rep-ms", "2", "--e2e-steps", "1"]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flops(s: dict, direction: str) -> int:
    """Basis FLOPs from the record's shape, written out independently of the harness."""
    ho = (s["H"] + 2 * s["padding"] - s["dilation"] * (s["k"] - 1) - 1) // s["stride"] + 1
    wo = (s["W"] + 2 * s["padding"] - s["dilation"] * (s["k"] - 1) - 1) // s["stride"] + 1
    p, cb, rest = s["N"] * ho * wo, s["C_b"], s["C_out"] - s["C_b"]
    conv = p * cb * s["C_in"] * s["k"] ** 2
    fwd = 2 * (conv + p * rest * cb)
    bwd = 2 * (2 * conv + 2 * p * rest * cb)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick CPU run of the whole runner (one case, all providers and directions, the
    end-to-end models), shared by the checks below."""
    out = tmp_path_factory.mktemp("bench")
    rc = main([*QUICK, "--cases", "quick.3x3s2.16to32.8px", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == 1, jsons
    return out, jsons[0], json.loads(jsons[0].read_text())


@pytest.mark.slow
def test_quick_json_has_the_issue_shape(quick_run):
    out, path, res = quick_run
    assert set(res) == TOP_KEYS
    for k in ("device", "torch", "commit", "date"):
        assert isinstance(res[k], str) and res[k], k
    assert res["torch"] == torch.__version__
    assert res["triton"] is None or isinstance(res["triton"], str)
    datetime.fromisoformat(res["date"])
    assert isinstance(res["settings"], dict) and isinstance(res["records"], list)
    # file name: <gpu>-<date>-<commit>.json
    assert path.name == f"cpu-{res['date'][:10]}-{res['commit']}.json"
    assert path.with_suffix(".md").is_file()
    assert res["settings"]["complete"] is True and res["settings"]["quick"] is True

    ops = [r for r in res["records"] if not r["case"].startswith("e2e.")]
    e2e = [r for r in res["records"] if r["case"].startswith("e2e.")]
    for r in res["records"]:
        assert set(r) == RECORD_KEYS, sorted(r)
        assert set(r["shape"]) == SHAPE_KEYS, sorted(r["shape"])
        assert r["dtype"] in tbb.DTYPES and r["layout"] in tbb.LAYOUTS
        assert r["direction"] in ("fwd", "bwd", "fwd+bwd")
        for k in ("median_ms", "p20_ms", "p80_ms", "tflops"):
            assert _is_num(r[k]) and r[k] > 0, (k, r)
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
    # every provider x direction of the case was measured (nothing is skipped on a CPU)
    assert res["settings"]["skipped"] == []
    assert {(r["provider"], r["direction"]) for r in ops} == {
        (p, d) for p in tbb.PROVIDERS for d in tbb.DIRECTIONS
    }
    assert len(ops) == len(tbb.PROVIDERS) * len(tbb.DIRECTIONS)
    for r in ops:
        assert r["case"] == "quick.3x3s2.16to32.8px" and r["provider"] in tbb.PROVIDERS
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in r["shape"].values())
        assert r["shape"] == {
            "N": 4,
            "C_in": 16,
            "C_out": 32,
            "C_b": 8,
            "H": 8,
            "W": 8,
            "k": 3,
            "stride": 2,
            "padding": 1,
            "dilation": 1,
        }
        assert r["dtype"] == "float32" and r["layout"] == "channels_last"
        assert _is_num(r["gbps"]) and r["gbps"] > 0
        assert _is_num(r["roofline_pct"]) and r["roofline_pct"] > 0
    # end to end: train step and inference of each model variant
    assert {(r["provider"], r["direction"]) for r in e2e} == {
        (v, d) for v in tbb.E2E_VARIANTS for d in ("fwd", "fwd+bwd")
    }
    for r in e2e:
        assert r["case"] == "e2e.resnet18_cifar"
        assert r["gbps"] is None and r["roofline_pct"] is None
        assert r["shape"]["C_b"] is None and r["shape"]["C_in"] == 3
        assert isinstance(r["shape"]["N"], int) and isinstance(r["shape"]["H"], int)


def test_quick_figures_follow_from_time_flops_and_measured_peaks(quick_run):
    _, _, res = quick_run
    s = res["settings"]
    peaks = s["peaks"]
    assert _is_num(peaks["copy_gbps"]) and peaks["copy_gbps"] > 0
    assert _is_num(peaks["matmul_tflops"]["float32"]) and peaks["matmul_tflops"]["float32"] > 0
    assert "bfloat16" in peaks["matmul_tflops"]  # the issue's bf16 matmul, always measured
    assert s["fp32_precision"] == "ieee" and s["tf32"] == {"cudnn": True, "matmul": True}
    assert s["compile_mode"] == "default" and s["compile_mode_note"]
    # every number came from the one timer, torch.utils.benchmark on a CPU
    assert s["timing"]["timer"] == "tritonbasis.util.timing.time_fn"
    assert s["timing"]["method"].startswith("torch.utils.benchmark")
    assert peaks["method"].startswith("torch.utils.benchmark blocked_autorange")
    # no CUDA graphs on a CPU; the one note: compiled bwd's own graph without buffer donation
    assert [(n["provider"], n["direction"]) for n in s["notes"]] == [("unfused_compiled", "bwd")]
    assert "donated_buffer=False" in s["notes"][0]["note"]
    for r in res["records"]:
        if r["case"].startswith("e2e."):
            continue
        sec = r["median_ms"] * 1e-3
        flops = _flops(r["shape"], r["direction"])
        assert r["tflops"] == pytest.approx(flops / sec / 1e12, rel=1e-9)
        nbytes = r["gbps"] * 1e9 * sec
        floor = max(
            flops / (peaks["matmul_tflops"]["float32"] * 1e12), nbytes / (peaks["copy_gbps"] * 1e9)
        )
        assert r["roofline_pct"] == pytest.approx(100 * floor / sec, rel=1e-9)
    # bytes: fwd reads x and writes y (+ weights); fwd+bwd = fwd + bwd
    by = {(r["provider"], r["direction"]): r for r in res["records"]}
    r = by[("fused", "fwd")]
    x, y = 4 * 16 * 8 * 8, 4 * 32 * 4 * 4
    w = 8 * 16 * 9 + 24 * 8
    assert r["gbps"] * r["median_ms"] * 1e6 == pytest.approx((x + y + w) * 4, rel=1e-9)
    fb = by[("fused", "fwd+bwd")]
    b = by[("fused", "bwd")]
    assert (fb["gbps"] * fb["median_ms"]) == pytest.approx(
        r["gbps"] * r["median_ms"] + b["gbps"] * b["median_ms"], rel=1e-9
    )


def test_quick_markdown_lists_every_provider_and_ratio(quick_run):
    _, path, res = quick_run
    md = path.with_suffix(".md").read_text()
    assert "## fused vs each provider" in md and "## end to end" in md
    for p in tbb.PROVIDERS:
        assert f"÷ {p}" in md
    assert "quick.3x3s2.16to32.8px" in md
    assert md == tbb.markdown(res)


def test_markdown_speedups_are_ratios_of_one_run():
    shape = {
        "N": 1,
        "C_in": 4,
        "C_out": 8,
        "C_b": 2,
        "H": 4,
        "W": 4,
        "k": 3,
        "stride": 1,
        "padding": 1,
        "dilation": 1,
    }

    def rec(provider, ms):
        return {
            "case": "c",
            "shape": shape,
            "dtype": "float32",
            "layout": "contiguous",
            "direction": "fwd",
            "provider": provider,
            "median_ms": ms,
            "p20_ms": ms,
            "p80_ms": ms,
            "tflops": 1.0,
            "gbps": 1.0,
            "roofline_pct": 50.0,
        }

    res = {
        "device": "d",
        "torch": "t",
        "triton": None,
        "commit": "abc",
        "date": "2026-01-01",
        "settings": {
            "quick": True,
            "complete": True,
            "dtypes": ["float32"],
            "layouts": ["contiguous"],
            "ratios": ["1/4"],
            "fp32_precision": "ieee",
            "tf32": {"cudnn": False, "matmul": False},
            "cudnn_benchmark": True,
            "peaks": {},
            "timing": {"method": "m"},
            "fused_implementation": "f",
            "compile_mode": "default",
            "skipped": [],
        },
        "records": [rec("dense_cudnn", 3.0), rec("unfused_eager", 8.0), rec("fused", 2.0)],
    }
    md = tbb.markdown(res)
    summary = [line for line in md.splitlines() if line.startswith("| c | 2 |")][0]
    assert "| 2.0000 | 1.50 | 4.00 |" in summary  # fused 1.5x dense, 4x unfused
    dense_row = [line for line in md.splitlines() if "| dense_cudnn | 3.0000" in line][0]
    assert dense_row.endswith("| 1.00 | 2.67 | 0.67 |")


def test_result_files_are_never_overwritten(tmp_path):
    dev = torch.device("cpu")
    j1, m1 = tbb.claim_result_paths(tmp_path, dev, "2026-01-02", "abc1234")
    assert j1.name == "cpu-2026-01-02-abc1234.json" and m1.name == "cpu-2026-01-02-abc1234.md"
    j1.write_text("first")
    j2, m2 = tbb.claim_result_paths(tmp_path, dev, "2026-01-02", "abc1234")
    assert j2.name == "cpu-2026-01-02-abc1234-1.json" and m2.name.endswith("-1.md")
    (tmp_path / "cpu-2026-01-02-abc1234-2.md").write_text("an orphan .md also blocks -2")
    j3, _ = tbb.claim_result_paths(tmp_path, dev, "2026-01-02", "abc1234")
    assert j3.name == "cpu-2026-01-02-abc1234-3.json"
    assert j1.read_text() == "first"


def test_case_list_matches_the_issue():
    r18 = tbb.select_cases("resnet18_cifar")
    assert all(c.N == 256 for c in r18)
    s1 = {(c.C_in, c.H) for c in r18 if c.k == 3 and c.stride == 1}
    assert s1 == {(64, 32), (128, 16), (256, 8), (512, 4)}
    s2 = [(c.C_in, c.C_out, c.H, c.k) for c in r18 if c.stride == 2]
    assert sorted(s2) == sorted(
        [
            (64, 128, 32, 3),
            (128, 256, 16, 3),
            (256, 512, 8, 3),
            (64, 128, 32, 1),
            (128, 256, 16, 1),
            (256, 512, 8, 1),
        ]
    )
    r50 = tbb.select_cases("resnet50")
    assert [(c.N, c.C_in, c.H) for c in r50] == [
        (64, 64, 56),
        (64, 128, 28),
        (64, 256, 14),
        (64, 512, 7),
    ]
    assert tbb.select_cases(None) == r18 + r50
    assert tbb.select_cases(None, quick=True) == tbb.GROUPS["quick"]
    assert [c.name for c in tbb.select_cases("r18.*1x1s2*")] == [c.name for c in r18 if c.k == 1]
    with pytest.raises(ValueError, match="no benchmark case matches"):
        tbb.select_cases("resnet19")
    assert tbb.parse_ratios(None) == [Fraction(1, 8), Fraction(1, 4), Fraction(1, 2)]
    assert tbb.parse_ratios("0.25,1/2") == [Fraction(1, 4), Fraction(1, 2)]
    with pytest.raises(ValueError, match="ratio"):
        tbb.parse_ratios("3/2")
    assert tbb.select_cases("r18.layer4.3x3.512ch.4px")[0].c_b(Fraction(1, 8)) == 64


def test_time_fn_on_cpu_is_torch_benchmark_with_quantiles_and_min_reps():
    calls = []
    t = timing.time_fn(lambda: calls.append(1), device="cpu", min_time_s=1e-4, min_reps=7)
    assert t.method.startswith("torch.utils.benchmark blocked_autorange")
    assert t.p20_ms <= t.median_ms <= t.p80_ms and t.median_ms > 0
    # reps counts timed calls: at least min_reps blocks of >= 1 call, plus the untimed first
    assert t.reps >= 7 and len(calls) >= t.reps + 1
    assert set(t.to_dict()) == {"median_ms", "p20_ms", "p80_ms", "reps", "method"}


class _FakeTritonTesting:
    """Stands in for triton.testing: records the calls, returns per-call times."""

    def __init__(self, per_call):
        self.per_call, self.calls = list(per_call), []

    def do_bench(self, fn, warmup, rep, return_mode):
        self.calls.append(("do_bench", warmup, rep, return_mode))
        fn()
        return self.per_call.pop(0)

    def do_bench_cudagraph(self, fn, rep, return_mode):
        self.calls.append(("do_bench_cudagraph", rep, return_mode))
        fn()
        return self.per_call.pop(0)


@pytest.fixture
def fake_cuda(monkeypatch):
    """time_fn's CUDA branch without a GPU: device context and synchronize are no-ops."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())

    def install(per_call):
        fake = _FakeTritonTesting(per_call)
        monkeypatch.setattr(timing, "_triton_testing", lambda: fake)
        return fake

    return install


def test_time_fn_on_cuda_is_do_bench_with_every_call_timed(fake_cuda):
    # a 60 ms call at rep_ms=100: do_bench times 1 call; time_fn tops up to min_reps=4
    fake = fake_cuda([[60.0], [50.0, 70.0, 80.0]])
    t = timing.time_fn(lambda: None, device="cuda", warmup_ms=25, rep_ms=100, min_reps=4)
    assert fake.calls[0] == ("do_bench", 25, 100, "all")
    assert fake.calls[1][0] == "do_bench" and fake.calls[1][3] == "all"
    assert fake.calls[1][2] == pytest.approx(3 * 60.0 * 1.25)  # 3 more calls' worth
    assert t.reps == 4 and t.method.startswith("triton.testing.do_bench (CUDA events")
    assert (t.p20_ms, t.median_ms, t.p80_ms) == pytest.approx(
        tuple(np.percentile([60.0, 50.0, 70.0, 80.0], [20, 50, 80]))
    )


def test_time_fn_cuda_graph_is_do_bench_cudagraph_over_replays(fake_cuda):
    replays = [0.01 + 0.001 * i for i in range(timing.GRAPH_REPLAYS)]
    fake = fake_cuda([replays])
    t = timing.time_fn(lambda: None, device="cuda", rep_ms=100, cuda_graph=True)
    # one graph of rep_ms / GRAPH_REPLAYS of calls, replayed GRAPH_REPLAYS times
    assert fake.calls == [("do_bench_cudagraph", 100 / timing.GRAPH_REPLAYS, "all")]
    assert t.median_ms == pytest.approx(float(np.median(replays)))
    calls = int(10.0 / np.median(replays))
    assert t.reps == calls * timing.GRAPH_REPLAYS
    assert "do_bench_cudagraph" in t.method and f"~{calls} calls" in t.method
    assert "no L2 flush" in t.method


def test_problem_rotates_inputs_inside_the_timed_call():
    v = tbb.Variant(
        tbb.select_cases("quick.3x3.16ch.8px")[0], Fraction(1, 4), "float32", "contiguous"
    )
    prob = tbb.Problem(v, "cpu", compile_mode=None, rotate=3)
    try:
        for direction in tbb.DIRECTIONS:
            fn = prob.timed("unfused_eager", direction)
            seen = []
            for _ in range(6):
                fn()
                seen.append(prob.i)
            assert sorted(set(seen)) == [0, 1, 2], direction  # every buffer, in turn
            assert all(b == (a + 1) % 3 for a, b in zip(seen, seen[1:])), direction
        # bwd runs backward through the forward graph built for that buffer: the gradients
        # equal a fresh forward + backward on the same buffer (same ops, CPU: bitwise)
        fn = prob.timed("fused", "bwd")
        got = fn()
        i = prob.i
        f = prob.forward_fn("fused")
        want = torch.autograd.grad(f(prob.xs[i]), [prob.xs[i], *prob.params("fused")], prob.dys[i])
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        with pytest.raises(ValueError, match="unknown direction"):
            prob.timed("fused", "sideways")
    finally:
        prob.release()
    assert prob._held == []


def test_bench_flags_are_the_config_defaults():
    p = argparse.ArgumentParser()
    tbb.add_arguments(p)
    args = p.parse_args([])
    assert from_args(tbb.BenchConfig, args) == tbb.BenchConfig()
    args = p.parse_args(
        [
            "--quick",
            "--dtype",
            "all",
            "--layout",
            "contiguous",
            "--tf32",
            "off",
            "--no-e2e",
            "--cuda-graphs",
            "off",
            "--rep-ms",
            "3",
            "--e2e-steps",
            "2",
            "--compile-mode",
            "none",
        ]
    )
    cfg = from_args(tbb.BenchConfig, args)
    assert cfg == tbb.BenchConfig(
        quick=True,
        dtypes="all",
        layouts="contiguous",
        tf32=False,
        e2e=False,
        cuda_graphs="off",
        rep_ms=3.0,
        e2e_steps=2,
        compile_mode="none",
    )
    r = tbb.resolve(dataclasses.replace(cfg, device="cpu"))
    assert r.dtypes == list(tbb.DTYPES) and r.layouts == ["contiguous"]
    assert r.compile_mode is None and r.rep_ms == 3.0 and r.warmup_ms == 5.0
    assert r.cases == tbb.GROUPS["quick"] and r.ratios == [Fraction(1, 4)]
    assert from_args(tbb.BenchConfig, p.parse_args(["--e2e-only"])).ops is False
    with pytest.raises(ValueError, match="not both"):
        tbb.resolve(tbb.BenchConfig(e2e=False, ops=False, device="cpu"))
    # Python callers may pass lists where the command line takes comma lists
    r = tbb.resolve(
        tbb.BenchConfig(
            device="cpu",
            cases=["quick.1x1s2.16to32.8px"],
            ratios=[0.5, Fraction(1, 8)],
            dtypes=["float32"],
        )
    )
    assert [c.name for c in r.cases] == ["quick.1x1s2.16to32.8px"]
    assert r.ratios == [Fraction(1, 2), Fraction(1, 8)] and r.dtypes == ["float32"]


def test_bench_cli_help_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--quick",
        "--cases",
        "--dtype",
        "--layout",
        "--out",
        "--providers",
        "--tf32",
        "--compile-mode",
        "--plan",
    ):
        assert opt in out
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "r18.layer1.3x3.64ch.32px" in out and "r50.layer4.3x3.512ch.7px" in out


def test_bench_cli_rejects_bad_choices(tmp_path):
    with pytest.raises(SystemExit, match="unknown dtype"):
        main(["bench", "--quick", "--dtype", "float8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no benchmark case"):
        main(["bench", "--quick", "--cases", "nope", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written for a rejected run


def test_bench_core_preset_runs_through_the_suite(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import bench_core
    finally:
        sys.path.pop(0)
    rc = bench_core.main(
        [
            "--quick",
            "--cases",
            "quick.1x1s2.16to32.8px",
            "--warmup-ms",
            "1",
            "--rep-ms",
            "1",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    (path,) = tmp_path.glob("*.json")
    res = json.loads(path.read_text())
    assert {r["provider"] for r in res["records"]} == {
        "dense_cudnn",
        "unfused_eager",
        "weight_mod",
        "fused",
    }
    assert {r["direction"] for r in res["records"]} == {"fwd", "fwd+bwd"}


# --------------------------------------------------------------------------------------------
# tune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path / "cache"))
    tune_cache.clear_memory()
    yield tmp_path / "cache"
    tune_cache.clear_memory()


def test_tune_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--plan", "--width", "--image-size", "--batch", "--objective", "--show"):
        assert opt in out


def test_tune_without_cuda_explains_and_succeeds(capsys, cache):
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    assert main(["tune"]) == 0
    assert "nothing to tune" in capsys.readouterr().out
    assert not cache.exists()


def test_tune_cpu_tiny_run_feeds_mode_auto(capsys, cache, one_thread):
    args = [
        "tune",
        "--device",
        "cpu",
        "--width",
        "0.125",
        "--image-size",
        "8",
        "--batch",
        "2",
        "--warmup-ms",
        "1",
        "--rep-ms",
        "1",
        "--min-reps",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layer shapes timed" in out and "layer4.0.conv1" in out
    data = json.loads((cache / tune_cache.TIMINGS_FILE).read_text())
    entries = list(data["entries"].values())
    assert len(entries) >= 5
    for e in entries:
        assert e["mode"] in ("fused", "weight") and e["device"] == tune_cache.device_name("cpu")
        winner = "fused" if e["fused_ms"]["fwd+bwd"] <= e["weight_ms"]["fwd+bwd"] else "weight"
        assert e["mode"] == winner
    # mode="auto" now follows the measurement for these layers
    from tritonbasis.conversion.convert import convert
    from tritonbasis.nn.spec import BasisSpec
    from tritonbasis.perf.tune import layer_geometries
    from tritonbasis.recipes.models import resnet18_cifar

    # convert resolves each auto layer for the input it will see: with the shape given, that
    # decision reads the tuning cache (without it, the per-pixel cost rule decides, and the
    # test passed only when every measured winner happened to be weight)
    model = convert(
        resnet18_cifar(width=0.125), {"_default": BasisSpec(ratio=0.25)}, input_shape=(2, 3, 8, 8)
    )
    by_geo = {tuple(e["geometry"]): e["mode"] for e in entries}
    checked = 0
    for _fqns, m, in_shape in layer_geometries(model, (2, 3, 8, 8)):
        x = torch.zeros(in_shape)
        g = check_inputs(x, m.basis, m.coeff, m.bias, m.stride, m.padding, m.dilation, m.keep_basis)
        assert m.resolved_mode(x) == by_geo[tune_cache.geometry_key(g)]
        checked += 1
    assert checked == len(entries)
    assert main(["tune", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["timings"]["entries"] == len(entries)
