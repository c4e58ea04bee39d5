"""The tuning caches: the kernels' autotune results in triton's own cache (second process reads
them, NCHW and NHWC apart), and the measured fused-vs-weight timings of tune_cache (round
trip, across processes, corrupt files, key changes) steering mode='auto'."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON

import tritonbasis as tb
from tritonbasis.nn.functional import choose_mode
from tritonbasis.op import reference, tune_cache
from tritonbasis.op.geometry import check_inputs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder, and a process-fresh view of it before and after."""
    d = tmp_path / "tbcache"
    monkeypatch.setenv(tune_cache.ENV_DIR, str(d))
    monkeypatch.delenv(tune_cache.ENV_ENABLE, raising=False)
    tune_cache.clear_memory()
    yield d
    tune_cache.clear_memory()


def _entries(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["format"] == tune_cache.FORMAT
    return data["entries"]


# --------------------------------------------------------------------------------------------
# location


def test_cache_dir_env_xdg_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(tune_cache.ENV_DIR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert tune_cache.cache_dir() == Path.home() / ".cache" / "tritonbasis"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tune_cache.cache_dir() == tmp_path / "xdg" / "tritonbasis"
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path / "mine"))
    assert tune_cache.cache_dir() == tmp_path / "mine"


# --------------------------------------------------------------------------------------------
# the store (now holding the timings only): file round trip, processes, corruption, key changes


def _geo(n=2, c_b=8):
    x = torch.zeros(n, 16, 6, 6)
    return check_inputs(
        x, torch.zeros(c_b, 16, 3, 3), torch.zeros(16 - c_b, c_b), None, 1, 1, 1, True
    )


def _timing(g, device="cpu (x86_64)", mode="weight", kernel=None):
    tune_cache.store_timing(
        device,
        g,
        fused_ms={"fwd": 1.0},
        weight_ms={"fwd": 0.5},
        mode=mode,
        dtype="float32",
        layout="contiguous",
        objective="infer",
        kernel=kernel,
    )


def test_timing_round_trip_through_the_file(cache, monkeypatch):
    monkeypatch.setattr(tune_cache, "device_name", lambda device: "DEV-A")
    g = _geo()
    assert tune_cache.lookup_mode(g, "cpu") is None
    _timing(g, "DEV-A")
    f = cache / tune_cache.TIMINGS_FILE
    (entry,) = _entries(f).values()
    assert entry["mode"] == "weight" and entry["device"] == "DEV-A"
    assert entry["geometry"] == list(tune_cache.geometry_key(g))
    # atomic write: nothing but the file and its lock is left behind
    assert sorted(p.name for p in cache.iterdir()) == [
        tune_cache.TIMINGS_FILE,
        tune_cache.TIMINGS_FILE + ".lock",
    ]
    tune_cache.clear_memory()  # as a new process: read back from disk
    assert tune_cache.lookup_mode(g, "cpu") == "weight"


def test_second_process_reads_the_timings(cache):
    g = _geo()
    _timing(g, tune_cache.device_name("cpu"))
    code = textwrap.dedent("""
        import torch
        from tritonbasis.op import tune_cache
        from tritonbasis.op.geometry import check_inputs
        x = torch.zeros(2, 16, 6, 6)
        g = check_inputs(x, torch.zeros(8, 16, 3, 3), torch.zeros(8, 8), None, 1, 1, 1, True)
        print(tune_cache.lookup_mode(g, "cpu"))
    """)
    env = {**os.environ, tune_cache.ENV_DIR: str(cache)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "weight"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2, 3]",
        '{"format": "something-else/9", "entries": {}}',
        '{"format": "tritonbasis.tune_cache/1", "entries": [1]}',
        "\x00\xff garbage",
    ],
    ids=["truncated", "list", "other-format", "bad-entries", "binary"],
)
def test_corrupt_file_is_ignored_with_a_warning_and_rewritten(cache, content):
    cache.mkdir(parents=True)
    f = cache / tune_cache.TIMINGS_FILE
    f.write_text(content, encoding="utf-8", errors="surrogateescape")
    g = _geo()
    with pytest.warns(RuntimeWarning, match="corrupt tuning cache"):
        assert tune_cache.lookup_mode(g, "cpu") is None
    _timing(g, tune_cache.device_name("cpu"))
    entries = _entries(f)  # valid cache JSON again, holding the new entry
    assert [e["mode"] for e in entries.values()] == ["weight"]
    tune_cache.clear_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file reads cleanly
        assert tune_cache.lookup_mode(g, "cpu") == "weight"


@pytest.mark.parametrize("change", ["device", "shape", "basis"])
def test_key_change_misses(cache, change):
    g = _geo()
    _timing(g, tune_cache.device_name("cpu"))
    tune_cache.clear_memory()
    if change == "device":
        other_dev, other = "cuda", g  # another device's name: no entry (and no crash)
    else:
        other_dev, other = "cpu", _geo(n=3) if change == "shape" else _geo(c_b=4)
    assert tune_cache.lookup_mode(other, other_dev) is None
    assert tune_cache.lookup_mode(g, "cpu") == "weight"


def test_unwritable_cache_warns_once_and_keeps_results_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(tune_cache.ENV_DIR, str(blocker / "sub"))
    tune_cache.clear_memory()
    name = tune_cache.device_name("cpu")
    try:
        with pytest.warns(RuntimeWarning, match="cannot write tuning cache"):
            _timing(_geo(), name)
        assert tune_cache.lookup_mode(_geo(), "cpu") == "weight"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once per file
            _timing(_geo(n=3), name, mode="fused")
        assert tune_cache.lookup_mode(_geo(n=3), "cpu") == "fused"
    finally:
        tune_cache.clear_memory()


# --------------------------------------------------------------------------------------------
# autotune results: triton's own cache (triton.autotune(..., cache_results=True))
#
# The real autotuner runs in a subprocess without TRITON_INTERPRET (the test process interprets
# without CUDA, and triton switches its result cache off when interpreting), with a stand-in
# driver: GPUTarget sm_90 (what triton's cache key reads) and a fake benchmarker that times
# each config by a fixed rule; the kernel's launch is replaced by a recorder. Everything else
# -- our tuner, its key and prune, triton's on-disk cache -- is the real code.

_TUNER_PROBE = textwrap.dedent("""
    import json, sys
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from tritonbasis.op import geometry, launch_plan, launchers

    benched, launched = [], []

    class FakeDriver:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_benchmarker(self):
            def bench(kernel_call, quantiles=None):
                kernel_call()
                cfg = launched.pop()
                benched.append(cfg)
                # a fixed, config-dependent "time": the smallest BLOCK_M * BLOCK_K wins
                t = float(cfg["BLOCK_M"] * cfg["BLOCK_K"] + cfg["BLOCK_N"])
                return [t, t, t]
            return bench

    driver.set_active(FakeDriver())
    print(json.dumps({n: {"cache_results": launchers._autotuned(n).cache_results,
                          "keys": list(launchers._autotuned(n).keys)}
                      for n in launchers.PRUNE_LAYOUT}))
    tuner = launchers._autotuned("fwd")

    def record(*args, grid=None, warmup=False, **kw):
        launched.append({k: kw[k] for k in ("BLOCK_M", "BLOCK_K", "BLOCK_N")})

    tuner.fn.run = record  # the launch itself needs a GPU
    for layout in sys.argv[1].split(","):
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        x = torch.randn(8, 64, 16, 16, dtype=torch.bfloat16).contiguous(memory_format=fmt)
        basis = torch.randn(16, 64, 3, 3, dtype=torch.bfloat16)
        coeff = torch.randn(48, 16, dtype=torch.bfloat16)
        g = geometry.check_inputs(x, basis, coeff, None, 1, 1, 1, True)
        (lc,), _ = launch_plan.plan_forward(x, basis, coeff, None, None, g, False, sms=132)
        benched.clear()
        tuner[lc.grid](*lc.args, **lc.consts)
        print(json.dumps({"layout": layout, "benched": len(benched), "ran": launched.pop(),
                          "best": dict(tuner.best_config.kwargs)}))
""")


def _probe_tuner(tmp_path, layouts: str) -> list[dict]:
    """Run _TUNER_PROBE in a fresh process on triton cache dir ``tmp_path / "triton"``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONBASIS_AUTOTUNE")
    }
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    r = subprocess.run(
        [sys.executable, "-c", _TUNER_PROBE, layouts],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_autotuner_uses_tritons_result_cache_keyed_on_layout(tmp_path):
    """A second process reads the first one's autotune result from triton's cache instead of
    benchmarking again, and an NCHW launch of the same shape is tuned apart (the channel
    stride is in the key: configs.prune keeps other configs for NCHW)."""
    from tritonbasis.kernels import configs

    from tritonbasis.op import launchers

    first = _probe_tuner(tmp_path, "nhwc")
    meta, tuned = first
    # every autotuned kernel of the forward and backward: triton's cache, layout in the key
    assert set(meta) == set(configs.CONFIGS) == set(launchers.PRUNE_LAYOUT)
    for name, m in meta.items():
        assert m["cache_results"] is True, name
        assert m["keys"] == configs.KEYS[name], name
        assert launchers.PRUNE_LAYOUT[name][1] in m["keys"], name
    assert tuned["benched"] >= 2, tuned  # several configs survive prune: really tuned
    assert tuned["ran"] == tuned["best"]
    files = list((tmp_path / "triton").glob("*/basis_conv_fwd_kernel.autotune.json"))
    assert len(files) == 1, files

    _, again, nchw = _probe_tuner(tmp_path, "nhwc,nchw")
    assert again["benched"] == 0, "re-tuned although triton's cache had this key"
    assert again["best"] == again["ran"] == tuned["best"]
    assert nchw["benched"] >= 1, "an NCHW launch reused the NHWC result"
    assert len(list((tmp_path / "triton").glob("*/basis_conv_fwd_kernel.autotune.json"))) == 2


def test_old_config_file_is_ignored(cache):
    """Autotune configs are not stored here: a config file left by an older version is
    neither read nor reported."""
    cache.mkdir(parents=True)
    (cache / "autotune-configs.json").write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = tune_cache.summary()
    assert s["timings"]["entries"] == 0 and "configs" not in s


def test_tune_cache_does_not_import_the_launchers_at_import():
    """The op layer's one-way imports: launchers never imports tune_cache, and tune_cache
    imports the launchers only to name the kernels a timing was measured with."""
    import ast
    import inspect

    from tritonbasis.op import launchers

    src = inspect.getsource(launchers)
    names = {
        a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    assert "tune_cache" not in names


# --------------------------------------------------------------------------------------------
# measured timings -> mode="auto"


def _wide_layer_geometry(n=2):
    # 128 channels, C_b=32: the CPU cost model (tritonbasis.nn.modes, calibrated on
    # CPU) needs this much work per call to pick fused; the tests need its pick to be fused
    x = torch.randn(n, 128, 8, 8)
    m = tb.BasisConv2d(128, 128, 3, basis_channels=32, padding=1, mode="auto")
    return x, m, check_inputs(x, m.basis, m.coeff, m.bias, 1, 1, 1, True)


def _store(g, device_name, mode, kernel=None):
    tune_cache.store_timing(
        device_name,
        g,
        fused_ms={"fwd": 1.0, "fwd+bwd": 3.0},
        weight_ms={"fwd": 0.5, "fwd+bwd": 2.0},
        mode=mode,
        dtype="float32",
        layout="contiguous",
        objective="train",
        kernel=kernel,
    )


def test_choose_mode_uses_a_cached_timing(cache, monkeypatch):
    x, m, g = _wide_layer_geometry()
    assert choose_mode(g, "cpu") == "fused"  # the cost model: 3.7x fewer MACs
    _store(g, tune_cache.device_name("cpu"), "weight")
    assert choose_mode(g, "cpu") == "weight"
    assert m.resolved_mode(x) == "weight"
    calls = []
    real = reference.weight_modified
    monkeypatch.setattr(
        reference, "weight_modified", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    y = m(x)
    assert calls == [1], "mode='auto' did not dispatch to the measured winner"
    assert torch.allclose(
        y, reference.basis_conv2d_reference(x, m.basis, m.coeff, m.bias, padding=1), atol=1e-5
    )
    # another process sees it too; another shape (batch) is not measured: FLOP model
    tune_cache.clear_memory()
    assert choose_mode(g, "cpu") == "weight"
    assert choose_mode(_wide_layer_geometry(n=3)[2], "cpu") == "fused"
    # switched off: the FLOP model
    monkeypatch.setenv(tune_cache.ENV_ENABLE, "0")
    assert choose_mode(g, "cpu") == "fused"


def test_cached_timing_steers_compiled_graph(cache, monkeypatch):
    x, m, g = _wide_layer_geometry()
    calls = []
    real_fwd = reference.forward  # the op's CPU implementation (the fused path)
    monkeypatch.setattr(reference, "forward", lambda *a, **k: calls.append(1) or real_fwd(*a, **k))

    def compiled_call():
        torch._dynamo.reset()
        try:
            return torch.compile(m, fullgraph=True, backend="eager")(x)  # no graph break
        finally:
            torch._dynamo.reset()

    compiled_call()
    assert calls == [1]  # nothing measured: the FLOP model's fused op is in the graph
    _store(g, tune_cache.device_name("cpu"), "weight")
    tune_cache.preload("cpu")
    y = compiled_call()
    assert calls == [1], "the compiled graph ran the fused op although the cache says weight"
    assert torch.allclose(y, m.to_conv()(x), atol=1e-5)


def test_cuda_device_without_cuda_falls_back_to_flop_model(cache):
    if HAS_CUDA:
        pytest.skip("checks the fallback on a machine without CUDA")
    x, m, g = _wide_layer_geometry(n=64)  # 4096 output pixels: the FLOP model says fused
    _store(g, tune_cache.device_name("cpu"), "weight")
    assert choose_mode(g, "cpu") == "weight"
    assert choose_mode(g, "cuda") == "fused"  # no GPU name to look up: no crash, FLOP model


def test_gpu_timings_need_the_same_kernels(cache, monkeypatch):
    x, m, g = _wide_layer_geometry(n=64)  # 4096 output pixels: the FLOP model says fused
    monkeypatch.setattr(tune_cache, "device_name", lambda device: "FakeGPU")
    assert choose_mode(g, "cuda") == "fused"
    _store(g, "FakeGPU", "weight", kernel=("0.0.0", "some-old-source"))
    assert choose_mode(g, "cuda") == "fused", "a timing of other kernels was used"
    ident = tune_cache._kernel_identity()
    if ident is None:
        pytest.skip("triton is not importable: GPU timings are never used")
    _store(g, "FakeGPU", "weight", kernel=ident)
    assert choose_mode(g, "cuda") == "weight"


def test_basis_above_kernel_limit_stays_weight_on_cuda(cache, monkeypatch):
    monkeypatch.setattr(tune_cache, "device_name", lambda device: "FakeGPU")
    x = torch.randn(16, 256, 8, 8)
    basis, coeff = torch.randn(192, 256, 3, 3), torch.randn(64, 192)
    g = check_inputs(x, basis, coeff, None, 1, 1, 1, True)
    _store(g, "FakeGPU", "fused")
    assert choose_mode(g, "cuda") == "weight"


def test_store_timing_rejects_bad_mode(cache):
    _, _, g = _wide_layer_geometry()
    with pytest.raises(ValueError, match="mode must be"):
        _store(g, "cpu", "auto")
