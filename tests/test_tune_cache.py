"""The on-disk tuning cache: autotune configs (round trip, across processes, corrupt files, key
changes), its use by the launcher, and measured timings steering mode='auto'."""

import json
import math
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

CFG = {"blocks": {"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 64}, "num_warps": 4, "num_stages": 4}
KEY = (4096, 64, 16, 48, 3, 3, 1, 1, True, "torch.bfloat16", False)


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
# configs


def test_config_round_trip_through_the_file(cache):
    assert tune_cache.lookup_config("fwd", "GPU-A", "3.2.0", "src1", KEY) is None
    tune_cache.store_config("fwd", "GPU-A", "3.2.0", "src1", KEY, CFG)
    f = cache / tune_cache.CONFIGS_FILE
    (entry,) = _entries(f).values()
    assert entry["config"] == CFG and entry["gpu"] == "GPU-A" and entry["src"] == "src1"
    assert entry["key"] == list(KEY)
    # atomic write: nothing but the file and its lock is left behind
    assert sorted(p.name for p in cache.iterdir()) == [tune_cache.CONFIGS_FILE,
                                                       tune_cache.CONFIGS_FILE + ".lock"]
    tune_cache.clear_memory()  # as a new process: read back from disk
    assert tune_cache.lookup_config("fwd", "GPU-A", "3.2.0", "src1", KEY) == CFG


def test_second_process_reads_the_configs(cache):
    tune_cache.store_config("grad_x", "GPU-A", "3.2.0", "src1", KEY, CFG)
    code = textwrap.dedent(f"""
        import json
        from tritonbasis.op import tune_cache
        print(json.dumps(tune_cache.lookup_config("grad_x", "GPU-A", "3.2.0", "src1",
                                                  {KEY!r})))
    """)
    env = {**os.environ, tune_cache.ENV_DIR: str(cache)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == CFG


@pytest.mark.parametrize("content", [
    "{not json", "[1, 2, 3]", '{"format": "something-else/9", "entries": {}}',
    '{"format": "tritonbasis.tune_cache/1", "entries": [1]}', "\x00\xff garbage"],
    ids=["truncated", "list", "other-format", "bad-entries", "binary"])
def test_corrupt_file_is_ignored_with_a_warning_and_rewritten(cache, content):
    cache.mkdir(parents=True)
    f = cache / tune_cache.CONFIGS_FILE
    f.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.warns(RuntimeWarning, match="corrupt tuning cache"):
        assert tune_cache.lookup_config("fwd", "GPU-A", "3.2.0", "src1", KEY) is None
    tune_cache.store_config("fwd", "GPU-A", "3.2.0", "src1", KEY, CFG)
    entries = _entries(f)  # valid cache JSON again, holding the new entry
    assert [e["config"] for e in entries.values()] == [CFG]
    tune_cache.clear_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file reads cleanly
        assert tune_cache.lookup_config("fwd", "GPU-A", "3.2.0", "src1", KEY) == CFG


@pytest.mark.parametrize("change", ["gpu", "triton", "src", "key", "kernel"])
def test_key_change_invalidates(cache, change):
    base = {"kernel": "fwd", "gpu": "GPU-A", "triton": "3.2.0", "src": "src1", "key": KEY}
    tune_cache.store_config(*base.values(), CFG)
    other = dict(base)
    other[change] = {"gpu": "GPU-B", "triton": "3.6.0", "src": "src2",
                     "key": (*KEY[:-1], True), "kernel": "grad_x"}[change]
    tune_cache.clear_memory()
    assert tune_cache.lookup_config(*other.values()) is None
    assert tune_cache.lookup_config(*base.values()) == CFG


def test_new_source_drops_stale_entries_of_that_kernel_and_gpu(cache):
    tune_cache.store_config("fwd", "GPU-A", "3.2.0", "old", KEY, CFG)
    tune_cache.store_config("fwd", "GPU-B", "3.2.0", "old", KEY, CFG)  # other GPU: kept
    tune_cache.store_config("wgrad", "GPU-A", "3.2.0", "old", KEY, CFG)  # other kernel: kept
    tune_cache.store_config("fwd", "GPU-A", "3.2.0", "new", KEY, CFG)
    kept = {(e["kernel"], e["gpu"], e["src"])
            for e in _entries(cache / tune_cache.CONFIGS_FILE).values()}
    assert kept == {("fwd", "GPU-B", "old"), ("wgrad", "GPU-A", "old"), ("fwd", "GPU-A", "new")}


def test_unwritable_cache_warns_once_and_keeps_results_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(tune_cache.ENV_DIR, str(blocker / "sub"))
    tune_cache.clear_memory()
    try:
        with pytest.warns(RuntimeWarning, match="cannot write tuning cache"):
            tune_cache.store_config("fwd", "GPU-A", "3.2.0", "s", KEY, CFG)
        assert tune_cache.lookup_config("fwd", "GPU-A", "3.2.0", "s", KEY) == CFG
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only once per file
            tune_cache.store_config("fwd", "GPU-A", "3.2.0", "s", (*KEY[:-1], True), CFG)
    finally:
        tune_cache.clear_memory()


# --------------------------------------------------------------------------------------------
# the launcher: a second process launches the cached config instead of re-tuning


class _FakeTuner:
    """Stands in for triton.autotune (which needs a GPU to benchmark): counts tuning runs,
    launches one named config and reports it as best_config."""

    def __init__(self, name, cfg_name, runs):
        from tritonbasis.op import launchers as _triton

        self.kernels, configs = _triton._kernels()
        self.name, self.cfg, self.runs = name, configs.CONFIGS[name][cfg_name], runs
        self.best_config = None

    def __getitem__(self, grid):
        import triton

        def run(*args, **kwargs):
            self.runs.append(self.name)
            c = self.cfg
            self.best_config = triton.Config(dict(c["blocks"]), num_warps=c["num_warps"],
                                             num_stages=c["num_stages"])
            self.kernels.KERNELS[self.name][grid(c["blocks"])](
                *args, **kwargs, **c["blocks"], num_warps=c["num_warps"],
                num_stages=c["num_stages"])
        return run


@pytest.fixture
def kernel_device():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from tritonbasis.op import launchers as _triton

    if HAS_CUDA:
        return torch.device("cuda")
    if not _triton.interpreted():
        pytest.skip("no CUDA and the kernels were not decorated under TRITON_INTERPRET=1")
    return torch.device("cpu")


def _fwd_inputs(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 6, 6, generator=g).to(device)
    basis = torch.randn(16, 16, 3, 3, generator=g).to(device) / 12
    coeff = torch.randn(16, 16, generator=g).to(device) / 4
    geo = tb.check_inputs(x, basis, coeff, None, 1, 1, 1, True)
    ref = reference.basis_conv2d_reference(x.double(), basis.double(), coeff.double(), None,
                                           1, 1)
    return x, basis, coeff, geo, ref


@pytest.mark.kernels
def test_launch_tunes_once_then_launches_the_cached_config(cache, kernel_device, monkeypatch):
    from tritonbasis.op import launchers as _triton

    runs, launched = [], []
    monkeypatch.setattr(_triton, "autotune_enabled", lambda: True)
    monkeypatch.setattr(_triton, "_autotuned",
                        lambda name: _FakeTuner(name, _smallest("fwd"), runs))
    real_launch_config = _triton._launch_config
    monkeypatch.setattr(_triton, "_launch_config",
                        lambda name, grid, cfg, a, k: launched.append(cfg)
                        or real_launch_config(name, grid, cfg, a, k))
    x, basis, coeff, geo, ref = _fwd_inputs(kernel_device)
    tol = 1e-4 * ref.abs().max().item()

    y, _ = _triton.forward(x, basis, coeff, None, None, geo, False)
    assert runs == ["fwd"] and launched == []
    assert (y.double().cpu() - ref).abs().max().item() <= tol
    (entry,) = _entries(cache / tune_cache.CONFIGS_FILE).values()
    want = _triton._kernels()[1].CONFIGS["fwd"][_smallest("fwd")]
    assert entry["kernel"] == "fwd" and entry["config"] == want
    assert entry["gpu"] == tune_cache.device_name(kernel_device)
    assert entry["triton"] == _triton.triton_version()
    assert entry["src"] == _triton.source_hash("fwd")

    tune_cache.clear_memory()  # a second process: reads the file, does not tune
    y2, _ = _triton.forward(x, basis, coeff, None, None, geo, False)
    assert runs == ["fwd"], "re-tuned although the cache had this key"
    assert launched == [want]
    assert (y2.double().cpu() - ref).abs().max().item() <= tol

    # an edited kernel source invalidates: tuned again, the stale entry dropped
    monkeypatch.setattr(_triton, "source_hash", lambda name=None: "edited-source")
    tune_cache.clear_memory()
    _triton.forward(x, basis, coeff, None, None, geo, False)
    assert runs == ["fwd", "fwd"]
    assert [e["src"] for e in _entries(cache / tune_cache.CONFIGS_FILE).values()] == [
        "edited-source"]

    # and with the cache off, every process tunes
    monkeypatch.setenv(tune_cache.ENV_ENABLE, "0")
    _triton.forward(x, basis, coeff, None, None, geo, False)
    assert runs == ["fwd", "fwd", "fwd"]


def _smallest(name: str) -> str:
    """The config of kernel ``name`` with the fewest tile elements (fastest to interpret)."""
    from tritonbasis.op import launchers as _triton

    cfgs = _triton._kernels()[1].CONFIGS[name]
    return min(cfgs, key=lambda n: math.prod(cfgs[n]["blocks"].values()))


@pytest.mark.kernels
def test_forward_backward_kernels_all_cached(cache, kernel_device, monkeypatch):
    """Every kernel of a forward+backward goes through the cache: tuned in the first
    "process", launched from the cache in the second, with the same (correct) results."""
    from tritonbasis.op import launchers as _triton

    runs = []
    monkeypatch.setattr(_triton, "autotune_enabled", lambda: True)
    monkeypatch.setattr(_triton, "_autotuned",
                        lambda name: _FakeTuner(name, _smallest(name), runs))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 5, generator=g).to(kernel_device).requires_grad_()
    basis = (torch.randn(4, 8, 3, 3, generator=g) / 8).to(kernel_device).requires_grad_()
    coeff = (torch.randn(12, 4, generator=g) / 2).to(kernel_device).requires_grad_()
    bias = torch.randn(16, generator=g).to(kernel_device).requires_grad_()
    dy = torch.randn(2, 16, 3, 3, generator=g).to(kernel_device)

    def grads():
        with tb.use_backend("triton"):  # forward and backward on the kernels
            y = tb.basis_conv2d(x, basis, coeff, bias, stride=2, padding=1)
            return [y.detach(), *torch.autograd.grad(y, [x, basis, coeff, bias], dy)]

    first = grads()
    # each autotuned launch shape tuned once (which backward kernels autotune, and how many
    # launch shapes they have, is the backward's business: take what the first run tuned)
    tuned = sorted(runs)
    assert runs.count("fwd") == 1 and "grad_x" in runs, runs
    ref_y = reference.basis_conv2d_reference(x, basis, coeff, bias, 2, 1)
    ref = [ref_y.detach(), *torch.autograd.grad(ref_y, [x, basis, coeff, bias], dy)]
    for a, b in zip(first, ref):
        assert (a - b).abs().max().item() <= 1e-4 * (1 + b.abs().max().item())
    in_file = sorted(e["kernel"] for e in _entries(cache / tune_cache.CONFIGS_FILE).values())
    assert in_file == tuned
    tune_cache.clear_memory()
    second = grads()
    assert sorted(runs) == tuned, "a kernel was re-tuned despite the cache"
    for a, b in zip(second, ref):
        assert (a - b).abs().max().item() <= 1e-4 * (1 + b.abs().max().item())


@pytest.mark.kernels
def test_tune_key_sees_dtype_layout_and_shape(kernel_device):
    from tritonbasis.op import launchers as _triton

    def key(x, c_b=8):
        basis = torch.zeros(c_b, x.shape[1], 3, 3, dtype=x.dtype)
        coeff = torch.zeros(24 - c_b, c_b, dtype=x.dtype)
        args = (x, basis, coeff, x, x, x, x, x, 100, 128, x.shape[1], 6, 6, c_b, 24 - c_b, 6, 6,
                *x.stride(), *basis.stride(), *coeff.stride(), 1, 1, 1, 1, 0, 0, 0, 0,
                1, 1, 1, 1, 1, 1)
        return _triton.tune_key("fwd", args, {"KH": 3, "KW": 3, "KEEP_BASIS": True,
                                              "STORE_Z": False, "SPLIT_K": 1})

    x = torch.zeros(2, 16, 6, 6)
    base = key(x)
    assert key(x) == base
    assert key(x.to(torch.float64)) != base
    assert key(x.contiguous(memory_format=torch.channels_last)) != base
    assert key(x, c_b=4) != base
    assert key(torch.zeros(2, 8, 6, 6)) != base


# --------------------------------------------------------------------------------------------
# measured timings -> mode="auto"


def _wide_layer_geometry(n=2):
    # 128 channels, C_b=32 (was 32/8): the CPU cost model (tritonbasis.modes, calibrated on
    # CPU) needs this much work per call to pick fused; the tests need its pick to be fused
    x = torch.randn(n, 128, 8, 8)
    m = tb.BasisConv2d(128, 128, 3, 32, padding=1, mode="auto")
    return x, m, tb.check_inputs(x, m.basis, m.coeff, m.bias, 1, 1, 1, True)


def _store(g, device_name, mode, kernel=None):
    tune_cache.store_timing(device_name, g, fused_ms={"fwd": 1.0, "fwd+bwd": 3.0},
                            weight_ms={"fwd": 0.5, "fwd+bwd": 2.0}, mode=mode,
                            dtype="float32", layout="contiguous", objective="train",
                            kernel=kernel)


def test_choose_mode_uses_a_cached_timing(cache, monkeypatch):
    x, m, g = _wide_layer_geometry()
    assert choose_mode(g, "cpu") == "fused"  # the cost model: 3.7x fewer MACs
    _store(g, tune_cache.device_name("cpu"), "weight")
    assert choose_mode(g, "cpu") == "weight"
    assert m.resolved_mode(x) == "weight"
    calls = []
    real = reference.weight_modified
    monkeypatch.setattr(reference, "weight_modified",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    y = m(x)
    assert calls == [1], "mode='auto' did not dispatch to the measured winner"
    assert torch.allclose(y, reference.basis_conv2d_reference(x, m.basis, m.coeff, m.bias,
                                                              padding=1), atol=1e-5)
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
    monkeypatch.setattr(reference, "forward",
                        lambda *a, **k: calls.append(1) or real_fwd(*a, **k))

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
    g = tb.check_inputs(x, basis, coeff, None, 1, 1, 1, True)
    _store(g, "FakeGPU", "fused")
    assert choose_mode(g, "cuda") == "weight"


def test_store_timing_rejects_bad_mode(cache):
    _, _, g = _wide_layer_geometry()
    with pytest.raises(ValueError, match="mode must be"):
        _store(g, "cpu", "auto")
