"""Compile tier: every kernel x autotune config compiled ahead of time for sm_90 (H100) and
sm_80 (A100) with triton's bundled ptxas -- no GPU needed.

Each config is compiled for the representative shape of ``tools/aot.py`` (ResNet-like
3x3, C_in = C_out = 64, C_b = 32, channels_last, bias, keep-basis) with the exact arguments the
launcher passes, and must: compile; fit the arch's shared memory per block; reach the tensor
cores with the instruction Triton emits for that tile (wgmma on sm_90 where the tile allows it,
mma.sync otherwise); report its registers and spills; and not spill if ``configs.prune`` keeps
it for that shape and dtype (what the autotuner can run) or it is the FIXED config.

bf16 covers every config on both archs; fp16 and fp32 (TF32) the first config of each kernel
(compiling all of them triples the time for little new information: the tiles are the same).

Benchmark shapes (``aot.bench_shapes()``: the ResNet18-CIFAR cases of ``tritonbasis bench`` at
batch 256, C_b = C_out/4, keep-basis, channels_last bf16): every config ``configs.prune``
keeps there, for every kernel, is compiled for sm_90 and must be **wgmma with 0 spills**;
the forward must be one software-pipelined K loop with async copies. There the v2
forward's configs are checked on sm_90 (instead of at the representative shape); sm_80
compiles them at the representative shape.

Configs that prune drops for a shape may spill there (the register model in ``configs.prune``
was calibrated on these reports); ``TRITONBASIS_STRICT_COMPILE_TIER=1`` requires every config
to be spill-free.

The compiles run in worker processes (the session runs the interpreter without CUDA; see
``aot._interpreted_process``), all selected cases in one batch on every CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

triton = pytest.importorskip("triton", reason="the compile tier needs triton (a CPU-only install)")

import aot  # noqa: E402  (tools/aot.py; pyproject: pytest's pythonpath)
from tritonbasis.kernels import configs  # noqa: E402

from tritonbasis.op import geometry  # noqa: E402

_TOOLCHAIN_OK, _TOOLCHAIN_WHY = aot.toolchain_available()
pytestmark = [
    pytest.mark.compile_tier,
    pytest.mark.skipif(not _TOOLCHAIN_OK, reason=_TOOLCHAIN_WHY or "no toolchain"),
]

ARCHS = (90, 80)
STRICT = os.environ.get("TRITONBASIS_STRICT_COMPILE_TIER", "0") == "1"

# Spills one Triton release's toolchain makes in a config prune keeps, measured, each with its
# bound in bytes: the check fails if one grows past it or a spill appears anywhere else.
# Triton 3.8 runs its ptxas (CUDA 12.9) with --regAllocOptLevel=2, which holds grad_z's
# m32_n32 tile at 128 registers with an 8 B stack frame (12 B of spill traffic); Triton 3.6
# gives it 154 registers and 3.9 compiles it clean. Lifting the cap with .maxnreg would change
# 3.6's allocation too (154 -> 186 registers, fewer blocks per SM), untimed on a GPU, so the
# config stays as the GPU machine's Triton compiles it.
TOOLCHAIN_SPILLS = {("3.8", "grad_z", "m32_n32_w4_s2", 90, ""): 16}
_TRITON_MINOR = ".".join(triton.__version__.split(".")[:2])

# The largest basis the fused kernels accept, in a ResNet stage-4-like layer (14x14, 3x3).
MAX_CB_SHAPE = aot.Shape(N=32, C_in=256, H=14, W=14, C_out=512, C_b=configs.MAX_BLOCK_CB)


@dataclass(frozen=True)
class Case:
    kernel: str
    config: str
    arch: int
    dtype: str
    shape: aot.Shape = aot.REPRESENTATIVE
    tag: str = ""  # "" = representative shape

    @property
    def id(self) -> str:
        return "-".join(
            p for p in (self.kernel, self.config, f"sm{self.arch}", self.dtype, self.tag) if p
        )


# Shapes where the register model must hold: NCHW operands and fp32 (TF32) operands, with
# enough remaining channels (C_rest = 96) that the wide BLOCK_N configs are candidates.
NCHW_SHAPE = aot.Shape(C_out=128, channels_last=False)
WIDE_SHAPE = aot.Shape(C_out=128)


def _kept(kernel: str, shape: aot.Shape, dtype: str, arch: int = 90) -> list[str]:
    """The configs the launchers' autotuner prunes to for ``kernel`` at ``shape`` on
    ``sm_<arch>``."""
    kept = configs.prune(
        kernel, list(configs.CONFIGS[kernel].values()), aot.prune_shape(shape, dtype, arch, kernel)
    )
    return [aot.config_name(kernel, c) for c in kept]


BENCH_SHAPES = aot.bench_shapes()
# CI time, cold triton cache, 2 idle cores: the whole tier (337 cases, every benchmark shape)
# took 90 s on Triton 3.9 and 53 s on 3.6 (2026-11-23).
# Kernels whose sm_90 configs are checked at the benchmark shapes only (the v2 forward).
BENCH_ONLY_SM90 = ("fwd", "fwd_reduce")


# The v2 kernels' autotuned records (the v3 forward variants have their own cases below).
V2 = [n for n, r in configs.RECORDS.items() if r.configs and r.variant_of is None]


def _bench_cases() -> list[Case]:
    cases = []
    for kernel in V2:
        for tag, shape in BENCH_SHAPES.items():
            if kernel == "fwd_reduce" and aot.prune_shape(shape)["SPLIT_K"] == 1:
                continue  # not launched there
            cases += [Case(kernel, n, 90, "bf16", shape, tag) for n in _kept(kernel, shape, "bf16")]
    return cases


def _config_cases() -> list[Case]:
    cases = []
    for kernel in V2:
        names = list(aot.all_configs(kernel))
        for arch in ARCHS:
            if arch == 90 and kernel in BENCH_ONLY_SM90:
                cases += [Case(kernel, "FIXED", arch, "bf16")]
            else:
                cases += [Case(kernel, n, arch, "bf16") for n in names]
            cases += [Case(kernel, names[0], arch, dt) for dt in ("fp16", "fp32")]
            # every config the autotuner may run for NCHW bf16 and NHWC fp32 inputs
            cases += [
                Case(kernel, n, arch, "bf16", NCHW_SHAPE, "nchw")
                for n in _kept(kernel, NCHW_SHAPE, "bf16", arch)
            ]
            cases += [
                Case(kernel, n, arch, "fp32", WIDE_SHAPE, "wide")
                for n in _kept(kernel, WIDE_SHAPE, "fp32", arch)
            ]
    return cases


def _kept_at_max_cb(kernel: str) -> list[str]:
    return _kept(kernel, MAX_CB_SHAPE, "bf16")


def _max_cb_cases() -> list[Case]:
    return [
        Case(k, n, 90, "bf16", MAX_CB_SHAPE, "cbmax")
        for k in ("fwd", "grad_z")
        for n in _kept_at_max_cb(k)
    ]


# v3 forward variants (variant_of="fwd"): every config prune keeps at the ResNet18 3x3 stride-1
# benchmark shapes where the variant applies (the halo variant where Gluon can express it).
VARIANTS = configs.VARIANTS.get("fwd", ["fwd"])[1:]
VARIANT_SHAPES = {t: s for t, s in BENCH_SHAPES.items() if ".3x3." in t}


def _variant_cases() -> list[Case]:
    cases = []
    for name in VARIANTS:
        for tag, shape in VARIANT_SHAPES.items():
            if configs.RECORDS[name].applies(aot.prune_shape(shape, "bf16", 90, name)):
                cases += [Case(name, n, 90, "bf16", shape, tag) for n in _kept(name, shape, "bf16")]
    return cases


CONFIG_CASES = _config_cases()
MAX_CB_CASES = _max_cb_cases()
BENCH_CASES = _bench_cases()
VARIANT_CASES = _variant_cases()


def _counted(c: Case) -> bool:
    """Whether a case's report needs its main loop's counts (the forward kernels at the
    variants' shapes: the claims below compare them)."""
    return c.kernel in ("fwd", *VARIANTS) and c.tag in VARIANT_SHAPES


@pytest.fixture(scope="session")
def compiled(request) -> dict:
    """Reports for every Case selected in this pytest run, compiled in one parallel batch."""
    cases = []
    for item in request.session.items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if isinstance(case, Case) and case not in cases:
            cases.append(case)
    jobs = [
        {
            "name": c.kernel,
            "config": aot.all_configs(c.kernel)[c.config],
            "cfg_name": c.config,
            "arch": c.arch,
            "dtype": c.dtype,
            "shape": c.shape,
            "counts": _counted(c),
        }
        for c in cases
    ]
    yield dict(zip(cases, aot.compile_many(jobs)))
    aot.shutdown_workers()


def _describe(r: dict) -> str:
    return (
        f"{r['kernel']}/{r['config']} sm_{r['arch']} {r['dtype']}: regs={r['registers']} "
        f"stack={r['stack_bytes']}B spills={r['spills']}B shared={r['shared_bytes']}B "
        f"(limit {r['shared_limit']}B) mma={r['tensor_core_instr']}"
    )


def _check(case: Case, r: dict) -> None:
    assert "error" not in r, f"{case.id} failed to compile:\n{r.get('error')}"
    assert r["fits_shared"], f"needs more shared memory than sm_{case.arch} has: {_describe(r)}"
    assert r["uses_tensor_cores"], f"no tensor-core instruction in the PTX: {_describe(r)}"
    assert r["tensor_core_instr"] == r["expected_tensor_core_instr"], (
        f"expected {r['expected_tensor_core_instr']}: {_describe(r)}"
    )
    # cuobjdump is there (else the module skips), so both must be known: never skip silently.
    assert r["registers"] is not None and r["spills"] is not None, _describe(r)
    assert r["registers"] <= aot.MAX_REGISTERS, _describe(r)
    # The autotuner only ever runs configs that prune keeps for a shape; those must not spill.
    # A config pruned for this shape/dtype may spill (that is why prune drops it); with
    # TRITONBASIS_STRICT_COMPILE_TIER=1 every config must be spill-free.
    cfg = aot.all_configs(case.kernel)[case.config]
    kept = case.config == "FIXED" or aot.kept_by_prune(
        case.kernel, cfg, case.shape, case.dtype, case.arch
    )
    if kept or STRICT:
        allowed = TOOLCHAIN_SPILLS.get(
            (_TRITON_MINOR, case.kernel, case.config, case.arch, case.tag), 0
        )
        assert r["spills"] <= allowed, (
            f"register spills in a config prune keeps ({'kept' if kept else 'strict'}): "
            f"{_describe(r)}"
        )


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_config_compiles_within_limits(case: Case, compiled: dict) -> None:
    _check(case, compiled[case])


def test_max_basis_channels_matches_kernels() -> None:
    # tritonbasis.op.geometry's limit is read without importing triton; it must not drift.
    assert geometry.MAX_BASIS_CHANNELS == configs.MAX_BLOCK_CB
    assert configs.block_cb(configs.MAX_BLOCK_CB) == configs.MAX_BLOCK_CB


@pytest.mark.parametrize("kernel", V2)
def test_prune_keeps_configs_at_max_basis(kernel: str) -> None:
    shape = aot.prune_shape(MAX_CB_SHAPE, kernel=kernel)
    kept = configs.prune(kernel, list(configs.CONFIGS[kernel].values()), shape)
    assert kept, "prune must keep at least one config"
    assert all(c in configs.CONFIGS[kernel].values() for c in kept)
    # Kept by the rule, not by prune's last-resort fallback: accumulators within the budget.
    for c in kept:
        regs = configs.acc_registers(
            kernel, c, shape["BLOCK_CB"], shape["elem_bytes"], shape["SPLIT_K"]
        )
        assert regs <= configs.budget(shape, kernel), (aot.config_name(kernel, c), regs)


def test_prune_drops_what_spilled() -> None:
    """The register models drop the configs the compile tier saw spill: v2 forward m128_k64 at
    C_b = 128 with the epilogue in the launch (80-440 B on Triton 3.6/3.9), 1x1 forward k64 /
    m128 at C_b = 128 (368-1592 B), fwd_reduce m128 at C_b = 128 (16 B on 3.9). And they keep
    what compiled clean: BLOCK_M 64 and 128 at C_b = 64, BLOCK_M 128 at C_b = 128 with
    split-K, BLOCK_M 64 at C_b = 128."""
    cb128 = aot.Shape(N=256, C_in=256, H=8, W=8, C_out=256, C_b=128, bias=False)
    names = _kept("fwd", cb128, "bf16")
    for spilled in ("m128_k64_n64_w4_s3", "m128_k64_n32_w4_s3"):
        assert spilled not in names, names
    assert "m128_k32_n64_w4_s4" not in names, names  # 104 B with a bias (max-C_b case)
    assert "m64_k64_n64_w4_s4" in names and "m64_k64_n128_w4_s3" in names, names
    one = BENCH_SHAPES["r18.layer4.0.downsample.1x1s2.256to512.8px.cb128"]
    assert set(_kept("fwd", one, "bf16")) == {"m64_k32_n64_w4_s4", "m64_k16_n32_w4_s4"}
    split = BENCH_SHAPES["r18.layer4.3x3.512ch.4px.cb128"]
    assert aot.prune_shape(split)["SPLIT_K"] == 2
    assert "m128_k64_n64_w4_s3" in _kept("fwd", split, "bf16")  # no epilogue in that launch
    assert "m128_n64_w4" not in _kept("fwd_reduce", split, "bf16")
    cb64 = BENCH_SHAPES["r18.layer3.3x3.256ch.8px.cb64"]
    kept64 = _kept("fwd", cb64, "bf16")
    assert {"m128_k64_n64_w4_s3", "m64_k64_n64_w4_s4"} <= set(kept64), kept64


@pytest.mark.parametrize("case", BENCH_CASES, ids=[c.id for c in BENCH_CASES])
def test_kept_configs_at_benchmark_shapes_are_wgmma_without_spills(
    case: Case, compiled: dict
) -> None:
    """Every config prune keeps at a benchmark shape compiles to wgmma on sm_90 with
    0 spills; the forward is one software-pipelined K loop fed by async copies."""
    r = compiled[case]
    _check(case, r)
    assert r["tensor_core_instr"] == "wgmma", _describe(r)
    assert r["spills"] == 0, _describe(r)
    if case.kernel == "fwd":
        # the K loop, plus the epilogue's loop over coefficient tiles when it runs here
        assert r["async_copies"] and r["pipelined_loops"] >= 1, _describe(r)
        assert r["loops"] <= 2, (
            f"{r['loops']} loops (one loop per tap drains 9 times): {_describe(r)}"
        )


@pytest.mark.parametrize("case", MAX_CB_CASES, ids=[c.id for c in MAX_CB_CASES])
def test_kept_configs_at_max_basis_compile_sm90(case: Case, compiled: dict) -> None:
    """C_b = MAX_BLOCK_CB: the configs prune keeps for the fused kernels (fwd, grad_z) compile
    for sm_90 within the limits and without spilling."""
    _check(case, compiled[case])


# --------------------------------------------------------------------------------------------
# Cache keys: the compile tier's sources must hash like a launch's, so that compiling ahead of
# time (tools/compile_report.py --bench on the GPU host) fills ~/.triton/cache under the keys
# the launchers look up, and the autotuner then only benchmarks.

_KEY_PROBE = """
import json, sys
import aot
from tritonbasis.kernels import configs

shapes = {"representative": aot.REPRESENTATIVE,
          "bench": aot.bench_shapes()["r18.layer4.3x3.512ch.4px.cb128"]}
out = []
for name, rec in configs.RECORDS.items():
    for tag, shape in shapes.items():
        cfg = next(iter(rec.configs.values()), rec.fixed)
        out.append([name, tag, aot.cache_key(name, cfg, "bf16", shape),
                    aot.runtime_cache_key(name, cfg, "bf16", shape)])
print(json.dumps(out))
"""


def test_aot_cache_keys_match_the_runtime() -> None:
    """For every kernel, at a shape with 16-divisible and other ints and at a benchmark shape:
    the key of ``aot.build_source``'s compile equals the key a launch computes (its binder's
    specialisation and attributes, packed as ``JITFunction.run`` packs them)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tools = str(Path(__file__).resolve().parents[2] / "tools")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tools, env.get("PYTHONPATH")) if p)
    r = subprocess.run(
        [sys.executable, "-c", _KEY_PROBE], capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert {n for n, *_ in rows} >= {"fwd", "fwd_reduce", "grad_z", "grad_x", "wgrad", "bwd_reduce"}
    differ = [(n, tag) for n, tag, aot_key, rt_key in rows if aot_key != rt_key]
    assert not differ, f"AOT and runtime cache keys differ for {differ}"


# --------------------------------------------------------------------------------------------
# Forward v3 variants: compile facts behind bench/NOTES.md's byte model (counts from the compiled
# code: tools/kernel_counts.py). The v2 forward's counts at the same shapes come from its
# BENCH_CASES, compiled in the same batch.


def _v2_at(tag: str, compiled: dict) -> list[tuple[Case, dict]]:
    """The v2 forward's reports at benchmark shape ``tag`` (compiled here when this pytest
    run did not select their own tests)."""
    cases = [c for c in BENCH_CASES if c.kernel == "fwd" and c.tag == tag]
    todo = [c for c in cases if c not in compiled]
    if todo:
        jobs = [
            {
                "name": c.kernel,
                "config": aot.all_configs(c.kernel)[c.config],
                "cfg_name": c.config,
                "arch": 90,
                "dtype": "bf16",
                "shape": c.shape,
                "counts": True,
            }
            for c in todo
        ]
        compiled.update(zip(todo, aot.compile_many(jobs)))
    return [(c, compiled[c]) for c in cases]


def _per_forward_activation_bytes(case: Case, r: dict) -> int:
    """Activation bytes one forward requests: tiles x C_in blocks x the main loop's count
    per C_in block (tiles: the grid without persistence, one program per tile)."""
    cfg = aot.all_configs(case.kernel)[case.config]
    blocks_ = {**cfg["blocks"], "RESIDENT": 0}
    tiles = aot.kernel_launch(case.kernel, "bf16", case.shape).grid(blocks_)[0]
    blocks = -(-case.shape.C_in // cfg["blocks"]["BLOCK_K"])
    return tiles * blocks * r["main_loop"]["loads_per_cblock"]["activations"]


@pytest.mark.parametrize("case", VARIANT_CASES, ids=[c.id for c in VARIANT_CASES])
def test_variant_kept_configs_compile_to_wgmma_without_spills(case: Case, compiled: dict):
    r = compiled[case]
    _check(case, r)
    assert r["tensor_core_instr"] == "wgmma" and r["spills"] == 0, _describe(r)
    ml = r["main_loop"]
    assert ml and ml["wgmma"] and ml["loads_per_cblock"]["activations"] > 0, ml
    kinds = r["load_kinds"]
    if case.kernel == "fwd_l1":  # plain L1-cached loads, nothing asynchronous
        assert kinds["ld.global.ca"] > 0 and kinds["cp.async"] == 0 and kinds["tma"] == 0
    if case.kernel == "fwd_tma":  # the activation boxes come by TMA: no per-element loads
        assert kinds["tma"] > 0 and kinds["ld.global"] == 0, kinds


@pytest.mark.parametrize(
    "case", [c for c in VARIANT_CASES if c.kernel == "fwd_tma"], ids=lambda c: c.id
)
def test_tma_variant_issues_fewer_instructions_per_wgmma_than_v2(case: Case, compiled: dict):
    """No address or mask arithmetic per activation row: the main loop issues fewer
    instructions per wgmma than any v2 config kept at the shape."""
    v2 = min(r["main_loop"]["instructions_per_wgmma"] for _, r in _v2_at(case.tag, compiled))
    assert compiled[case]["main_loop"]["instructions_per_wgmma"] < v2


@pytest.mark.parametrize(
    "case", [c for c in VARIANT_CASES if c.kernel == "fwd_halo"], ids=lambda c: c.id
)
def test_halo_variant_reads_a_fifth_of_v2s_activation_bytes(case: Case, compiled: dict):
    """The point of the halo tile, counted from both compiled kernels: the activation bytes
    one forward requests from global (L2) are <= 1/5 of v2's at every 3x3 stride-1 benchmark
    shape, for every config prune keeps."""
    v2 = min(_per_forward_activation_bytes(c, r) for c, r in _v2_at(case.tag, compiled))
    halo = _per_forward_activation_bytes(case, compiled[case])
    assert halo * 5 <= v2, (case.id, halo, v2)


def test_halo_variant_exists_where_gluon_can_express_it() -> None:
    """Triton 3.6 (the GPU machine's) compiles it; Triton 3.8 and 3.9 refuse the re-view of
    the halo from an offset (a view larger than the one-pixel entry it starts from), so there
    the variant is absent and v2 runs (where it is present, the variant cases above compile
    it)."""
    from tritonbasis.kernels import forward_halo

    present = any(c.kernel == "fwd_halo" for c in VARIANT_CASES)
    if triton.__version__.startswith("3.6."):
        assert forward_halo.AVAILABLE and present
    else:
        assert not forward_halo.AVAILABLE and not present, triton.__version__
