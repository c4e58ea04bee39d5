"""One record per kernel: everything the launchers, the pruning, the compile tier and the
reports need to know about it, in one place (:class:`KernelRecord`, :data:`RECORDS`).

A record holds the ``@triton.jit`` function, its named autotune configs (block sizes, warps,
stages; turned into ``triton.Config`` objects lazily, on first use on a GPU: nothing here
queries a device), the ``fixed`` config used by the interpreter tier and whenever autotuning is
off (``TRITONBASIS_AUTOTUNE=0``), the autotune key, the operand whose dtype and channel stride
decide the register budget, the blocks capped by the dimension they tile, the register model
and budget and the measured pruning rules (``pruning.py``), the block that is every dot's M
extent (wgmma needs it a multiple of 64), the name of its argument builder in
``tritonbasis/op/launch_plan.py`` and, for a v3 forward variant, the kernel it stands in for.
Adding a kernel, or a variant, is adding a record: the launchers, ``prune``, ``tools/aot.py``,
the compile report and the compile tier iterate :data:`RECORDS`, and
tests/kernels/test_kernel_records.py checks that every record is complete and consistent with its
kernel's parameters and argument builder. No field has a default, so nothing is borrowed
from another kernel.

``num_warps`` stays <= 4 on the plain-Triton conv loops (fwd and its variants, grad_x): Triton
has miscompiled non-1x1 conv loops with 8 warps, and Inductor's conv template caps at 4 for the
same reason. The Gluon halo kernel lays out its tiles itself and has 8-warp configs (two
warpgroups), like every variant unused until a GPU run passes it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType

from . import pruning
from .backward import (
    basis_conv_grad_x_kernel,
    basis_conv_grad_z_kernel,
    basis_conv_wgrad_kernel,
    bwd_reduce_kernel,
)
from .forward import basis_conv_fwd_kernel, basis_conv_fwd_reduce_kernel
from .forward_v3 import basis_conv_fwd_l1_kernel, basis_conv_fwd_tma_kernel
from .pruning import (  # noqa: F401  (the shape helpers the launch plans and tests use)
    ACC_BUDGET,
    MAX_BLOCK_CB,
    WGMMA_BUDGET,
    block_cb,
    m_bucket,
    split_k,
)

_cfg = pruning.cfg


@dataclasses.dataclass(frozen=True)
class KernelRecord:
    """Everything about one kernel. Fields that do not apply are set to None (or empty)
    explicitly: a kernel without autotune configs (``configs == {}``) is launched with
    ``fixed`` only and has no key, layout operand, register model or budget."""

    name: str  # the name launches, reports and the compile tier use
    fn: object  # the @triton.jit (or @gluon.jit) function
    configs: dict[str, dict]  # named autotune configs ({}: never autotuned)
    fixed: dict  # interpreter / no-autotune config
    key: tuple[str, ...]  # triton.autotune key (argument names; triton adds the dtypes)
    layout: tuple[str, str] | None  # (operand, its channel stride) the budget depends on
    caps: dict[str, str]  # block -> shape argument it tiles (dropped when wider)
    registers: pruning.RegisterModel | None  # register model of a config
    budget: dict | None  # register budget by (element bytes, NCHW)
    rules: tuple[pruning.Rule, ...]  # measured pruning rules beyond the model
    dot_m: str | None  # the block that is every dot's M extent (None: no dot)
    builder: str  # its argument builder in tritonbasis/op/launch_plan.py
    # one iteration of its main loop, for the compile tier's counts per C_in block: "tap" (a
    # tap x channel block), "cblock" (a C_in block, all taps), "pixels", None (no K loop)
    iteration: str | None
    variant_of: str | None  # the kernel a v3 variant stands in for (None: a v2 kernel)
    applies: Callable[[dict], bool] | None  # variants: whether it runs a launch's arguments
    interpretable: bool  # runs under TRITON_INTERPRET=1 (Gluon kernels do not)


_COMMON_RULES = (pruning.drop_nchw_wide, pruning.drop_fp32_wide)

# M_KEY = m_bucket(M): M rounded up to a power of two, so a new batch size re-tunes only when it
# crosses a power of two (the launcher passes it as an extra kernel argument: triton.autotune
# keys on argument values, it has no key transform). The last entry of every key is the channel
# stride of the layout operand (1 for NHWC, H*W for NCHW): prune keeps other configs for NCHW,
# and without it in the key an NCHW launch would reuse the config tuned for an NHWC one of the
# same shape in memory.
_FWD_KEY = (
    "M_KEY",
    "C_in",
    "C_b",
    "C_rest",
    "KH",
    "KW",
    "stride_h",
    "stride_w",
    "KEEP_BASIS",
    "STORE_Z",
    "SPLIT_K",
    "sx_c",
)

FWD = KernelRecord(
    name="fwd",
    fn=basis_conv_fwd_kernel,
    # v2 forward (one pipelined K loop). Every config is wgmma-shaped on sm_90: 4 warps (one
    # warpgroup) and BLOCK_M a multiple of 64. Which of them prune keeps per shape, and why, is
    # in the rules; the compile tier checks every kept one (wgmma, 0 spills, Triton 3.6, 3.9).
    configs={
        "m128_k64_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=64, BLOCK_N=64),
        "m128_k32_n64_w4_s4": _cfg(4, 4, BLOCK_M=128, BLOCK_K=32, BLOCK_N=64),
        "m128_k64_n32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=64, BLOCK_N=32),
        "m64_k64_n64_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=64, BLOCK_N=64),
        "m64_k64_n128_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_K=64, BLOCK_N=128),
        "m64_k32_n64_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=32, BLOCK_N=64),
        "m64_k64_n32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=64, BLOCK_N=32),
        "m64_k16_n32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=16, BLOCK_N=32),
    },
    # interpreter configs: small tiles (the interpreter runs one program at a time in numpy;
    # these keep tiny test shapes at a few programs each), every dim >= 16 for tl.dot
    fixed=_cfg(4, 2, BLOCK_M=32, BLOCK_K=16, BLOCK_N=16),
    key=_FWD_KEY,
    layout=("x_ptr", "sx_c"),
    caps={"BLOCK_K": "C_in", "BLOCK_N": "C_rest"},
    registers=pruning.fwd_registers,
    budget=WGMMA_BUDGET,
    rules=(pruning.drop_fwd_1x1_cb128, *_COMMON_RULES),
    dot_m="BLOCK_M",
    builder="fwd_args",
    iteration="tap",
    variant_of=None,
    applies=None,
    interpretable=True,
)

FWD_REDUCE = KernelRecord(
    name="fwd_reduce",
    fn=basis_conv_fwd_reduce_kernel,
    # split-K second launch: reads SPLIT_K fp32 slices of Z, runs the forward epilogue
    configs={
        "m64_n64_w4": _cfg(4, 1, BLOCK_M=64, BLOCK_N=64),
        "m64_n32_w4": _cfg(4, 1, BLOCK_M=64, BLOCK_N=32),
        "m128_n64_w4": _cfg(4, 1, BLOCK_M=128, BLOCK_N=64),
    },
    fixed=_cfg(4, 1, BLOCK_M=32, BLOCK_N=16),
    key=("M_KEY", "C_b", "C_rest", "KEEP_BASIS", "STORE_Z", "SPLIT_K", "sy_c"),
    layout=("c_ptr", "sy_c"),
    caps={"BLOCK_N": "C_rest"},
    registers=pruning.fwd_reduce_registers,
    budget=WGMMA_BUDGET,
    rules=_COMMON_RULES,
    dot_m="BLOCK_M",
    builder="fwd_reduce_args",
    iteration=None,
    variant_of=None,
    applies=None,
    interpretable=True,
)

GRAD_Z = KernelRecord(
    name="grad_z",
    fn=basis_conv_grad_z_kernel,
    # v2 grad_z: two dots per C_rest block, dZ += G_r coeff (M extent BLOCK_M) and the d coeff
    # partial G_r^T Z (M extent BLOCK_N): both multiples of 64 with whole warpgroups -> wgmma.
    # 8 warps for C_b = 128 (the 4-warp m64_n64 spills 280 B there, Triton 3.9, sm_90).
    configs={
        "m128_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64),
        "m64_n64_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64),
        "m64_n64_w8_s3": _cfg(8, 3, BLOCK_M=64, BLOCK_N=64),
        "m64_n128_w8_s3": _cfg(8, 3, BLOCK_M=64, BLOCK_N=128),
        # NCHW / fp32 operands (see drop_grad_z_tile) and C_rest <= 32: mma.sync, spill-free on
        # sm_80 and sm_90 with Triton 3.6 and 3.9 (m64_n32_w4 spilled 124-148 B on 3.6, sm_80)
        "m32_n32_w4_s2": _cfg(4, 2, BLOCK_M=32, BLOCK_N=32),
    },
    fixed=_cfg(4, 2, BLOCK_M=32, BLOCK_N=16),
    key=("M_KEY", "C_b", "C_rest", "KEEP_BASIS", "STORE_DZ", "NEED_DC", "NEED_DBIAS", "sg_c"),
    layout=("g_ptr", "sg_c"),
    caps={"BLOCK_N": "C_rest"},
    registers=pruning.grad_z_registers,
    budget=ACC_BUDGET,
    rules=(pruning.drop_grad_z_tile, *_COMMON_RULES),
    dot_m="BLOCK_M",
    builder="grad_z_args",
    iteration="pixels",
    variant_of=None,
    applies=None,
    interpretable=True,
)

GRAD_X = KernelRecord(
    name="grad_x",
    fn=basis_conv_grad_x_kernel,
    # v2 grad_x: one pipelined (tap, C_b block) loop; 4 warps and BLOCK_M >= 64: wgmma only
    configs={
        "m128_n64_k32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32),
        "m128_n128_k32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
        "m64_n64_k64_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
        "m64_n128_k32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32),
        "m64_n32_k16_w4_s2": _cfg(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_K=16),
        # C_b = 16 (64-channel layers at C_b = C_out/4): BLOCK_K is capped at 16 there, and a
        # BLOCK_N = 64 tile covers C_in = 64 in one program, so dZ is gathered once per tap
        "m128_n64_k16_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=16),
        "m64_n64_k16_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16),
    },
    fixed=_cfg(4, 2, BLOCK_M=32, BLOCK_N=16, BLOCK_K=16),
    # M_KEY buckets the input pixels of the largest sub-pixel phase
    key=("M_KEY", "C_in", "C_b", "KH", "KW", "stride_h", "stride_w", "sx_c"),
    layout=("dz_ptr", "sx_c"),
    caps={"BLOCK_N": "C_in", "BLOCK_K": "C_b"},
    registers=pruning.grad_x_registers,
    budget=ACC_BUDGET,
    rules=_COMMON_RULES,
    dot_m="BLOCK_M",
    builder="grad_x_args",
    iteration="tap",
    variant_of=None,
    applies=None,
    interpretable=True,
)

WGRAD = KernelRecord(
    name="wgrad",
    fn=basis_conv_wgrad_kernel,
    # v2 wgrad (x stationary): BLOCK_A tiles the (tap, C_b) rows -- 9 * C_b of them at stride 1,
    # 144..1152 at the benchmark shapes -- so every config is a wgmma tile (4 warps, BLOCK_A a
    # multiple of 64); BLOCK_X tiles C_in (>= 64 at the benchmark shapes).
    configs={
        "a128_x64_p32_w4_s3": _cfg(4, 3, BLOCK_A=128, BLOCK_X=64, BLOCK_P=32),
        "a64_x64_p64_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=64, BLOCK_P=64),
        "a64_x128_p32_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=128, BLOCK_P=32),
        "a128_x32_p64_w4_s3": _cfg(4, 3, BLOCK_A=128, BLOCK_X=32, BLOCK_P=64),
        "a64_x32_p64_w4_s4": _cfg(4, 4, BLOCK_A=64, BLOCK_X=32, BLOCK_P=64),
    },
    fixed=_cfg(4, 2, BLOCK_A=16, BLOCK_X=16, BLOCK_P=32),
    key=("M_KEY", "C_in", "C_b", "KH", "KW", "stride_h", "stride_w", "sx_c"),
    layout=("x_ptr", "sx_c"),
    # BLOCK_A tiles taps * C_b rows (never fewer than 64 at 3x3), BLOCK_X C_in
    caps={"BLOCK_X": "C_in"},
    registers=pruning.wgrad_registers,
    budget=ACC_BUDGET,
    rules=(pruning.drop_wgrad_mma_sync_p64, *_COMMON_RULES),
    dot_m="BLOCK_A",
    builder="wgrad_args",
    iteration="pixels",
    variant_of=None,
    applies=None,
    interpretable=True,
)

BWD_REDUCE = KernelRecord(
    name="bwd_reduce",
    fn=bwd_reduce_kernel,
    configs={},  # a memory-bound sum: launched with `fixed` only, on GPU too
    fixed=_cfg(4, 1, BLOCK=512),
    key=(),
    layout=None,
    caps={},
    registers=None,
    budget=None,
    rules=(),
    dot_m=None,
    builder="bwd_reduce_args",
    iteration=None,
    variant_of=None,
    applies=None,
    interpretable=True,
)

# --------------------------------------------------------------------------------------------
# Forward v3 variants (variant_of="fwd"): each runs where its `applies` holds, chosen by
# measurement once verified on the device (tritonbasis.op.launchers), else v2.


def _always(named: dict) -> bool:
    return True


def _aligned16(t, *strides) -> bool:
    e = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * e) % 16 == 0 for s in strides)


def tma_applies(named: dict) -> bool:
    """The TMA forward's boxes: stride 1 (a box is contiguous in H and W), NHWC activations
    and a basis laid out (C_b, KH*KW, C_in) (the launcher passes it channels_last), base
    pointers and every non-unit stride 16-byte aligned (a tensor descriptor's
    requirement)."""
    c_in, taps = named["C_in"], named["KH"] * named["KW"]
    packed = (
        named["sw_c"] == 1
        and named["sw_o"] == taps * c_in
        and (taps == 1 or (named["sw_w"] == c_in and named["sw_h"] == named["KW"] * c_in))
    )
    return (
        named["stride_h"] == 1
        and named["stride_w"] == 1
        and named["sx_c"] == 1
        and packed
        and _aligned16(named["x_ptr"], named["sx_n"], named["sx_h"], named["sx_w"])
        and _aligned16(named["w_ptr"], named["sw_o"], c_in)
    )


FWD_L1 = KernelRecord(
    name="fwd_l1",
    fn=basis_conv_fwd_l1_kernel,
    # num_stages = 1 everywhere: no software pipeline, hence plain ld.global.ca (L1-cached)
    # instead of cp.async.cg; one warpgroup, BLOCK_M 64 / 128 (wgmma)
    configs={
        "m128_k64_n64_w4_s1": _cfg(4, 1, BLOCK_M=128, BLOCK_K=64, BLOCK_N=64),
        "m128_k32_n64_w4_s1": _cfg(4, 1, BLOCK_M=128, BLOCK_K=32, BLOCK_N=64),
        "m64_k64_n64_w4_s1": _cfg(4, 1, BLOCK_M=64, BLOCK_K=64, BLOCK_N=64),
        "m64_k64_n128_w4_s1": _cfg(4, 1, BLOCK_M=64, BLOCK_K=64, BLOCK_N=128),
        "m64_k32_n64_w4_s1": _cfg(4, 1, BLOCK_M=64, BLOCK_K=32, BLOCK_N=64),
        "m64_k16_n32_w4_s1": _cfg(4, 1, BLOCK_M=64, BLOCK_K=16, BLOCK_N=32),
    },
    fixed=_cfg(4, 1, BLOCK_M=32, BLOCK_K=16, BLOCK_N=16),
    key=_FWD_KEY,
    layout=("x_ptr", "sx_c"),
    caps={"BLOCK_K": "C_in", "BLOCK_N": "C_rest"},
    registers=pruning.fwd_l1_registers,
    budget=pruning.L1_BUDGET,
    rules=(pruning.drop_fwd_1x1_cb128, *_COMMON_RULES),
    dot_m="BLOCK_M",
    builder="fwd_args",
    iteration="cblock",
    variant_of="fwd",
    applies=_always,
    interpretable=True,
)


def _tma(n: int, h: int, w: int, k: int, stages: int) -> dict:
    return _cfg(4, stages, BLOCK_M=n * h * w, TILE_N=n, TILE_H=h, TILE_W=w, BLOCK_K=k, BLOCK_N=64)


FWD_TMA = KernelRecord(
    name="fwd_tma",
    fn=basis_conv_fwd_tma_kernel,
    # 2-D tiles of BLOCK_M = 64 or 128 output pixels: full-width row bands for rows of 16-128
    # pixels, whole images stacked for 4 and 8 (drop_tma_partial_tile keeps the ones that fit)
    configs={
        "t1x1x128_k64_s3": _tma(1, 1, 128, 64, 3),
        "t1x2x64_k64_s3": _tma(1, 2, 64, 64, 3),
        "t1x4x32_k64_s3": _tma(1, 4, 32, 64, 3),
        "t1x2x32_k64_s4": _tma(1, 2, 32, 64, 4),
        "t1x8x16_k64_s3": _tma(1, 8, 16, 64, 3),
        "t1x4x16_k64_s4": _tma(1, 4, 16, 64, 4),
        "t2x8x8_k64_s3": _tma(2, 8, 8, 64, 3),
        "t1x8x8_k64_s4": _tma(1, 8, 8, 64, 4),
        "t8x4x4_k64_s3": _tma(8, 4, 4, 64, 3),
        "t4x4x4_k64_s4": _tma(4, 4, 4, 64, 4),
        "t8x4x4_k32_s4": _tma(8, 4, 4, 32, 4),
        "t2x8x8_k32_s4": _tma(2, 8, 8, 32, 4),
    },
    fixed=_cfg(4, 2, BLOCK_M=32, TILE_N=2, TILE_H=2, TILE_W=8, BLOCK_K=16, BLOCK_N=16),
    key=_FWD_KEY,
    layout=("x_ptr", "sx_c"),
    caps={"BLOCK_K": "C_in", "BLOCK_N": "C_rest"},  # the tiles: drop_tma_partial_tile
    registers=pruning.fwd_tma_registers,
    budget=WGMMA_BUDGET,
    rules=(pruning.drop_tma_partial_tile, *_COMMON_RULES),
    dot_m="BLOCK_M",
    builder="fwd_tma_args",
    iteration="tap",
    variant_of="fwd",
    applies=tma_applies,
    interpretable=True,
)


def halo_applies(named: dict) -> bool:
    """The halo forward: 16-bit operands, NHWC activations and a C_in-contiguous basis, int32
    offsets, a Triton whose Gluon can re-view the halo (3.6), and an sm_90 GPU (meta and CPU
    tensors pass: the compile tier asks about the geometry only)."""
    x = named["x_ptr"]
    if getattr(x, "is_cuda", False):
        import torch

        if torch.cuda.get_device_capability(x.device)[0] != 9:
            return False
    return (
        forward_halo is not None
        and forward_halo.AVAILABLE
        and x.element_size() == 2
        and named["sx_c"] == 1
        and named["sw_c"] == 1
        and not named["INT64"]
    )


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


# Gluon ships with Triton >= 3.5; without it there is no halo variant
forward_halo = _optional("forward_halo")

_HALO_KEY = ("M_KEY", "C_in", "C_b", "C_rest", "H", "W", "KH", "KW", "stride_h", "stride_w",
             "KEEP_BASIS", "STORE_Z", "SPLIT_K", "sx_c")  # fmt: skip


def _halo(num_warps: int, block_m: int, block_k: int, resident: int = 0) -> dict:
    return _cfg(num_warps, 1, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=64, RESIDENT=resident)


def _halo_record() -> KernelRecord:
    assert forward_halo is not None  # only built when Gluon imports
    return KernelRecord(
        name="fwd_halo",
        fn=forward_halo.basis_conv_fwd_halo_kernel,
        # wgmma rows 64 / 128 on one or two warpgroups; BLOCK_K 64 / 32 (drop_halo_shared keeps
        # those whose staged windows and basis tiles fit); the kernel pipelines itself
        configs={
            "m128_k64_n64_w4": _halo(4, 128, 64),
            "m128_k32_n64_w4": _halo(4, 128, 32),
            "m64_k64_n64_w4": _halo(4, 64, 64),
            "m64_k32_n64_w4": _halo(4, 64, 32),
            # two warpgroups on 128 rows: half the registers per thread, for C_b = 128 where
            # one warpgroup's BLOCK_M = 128 spills (and BLOCK_M = 64 reads the basis twice)
            "m128_k32_n64_w8": _halo(8, 128, 32),
            "m128_k64_n64_w8": _halo(8, 128, 64),
            # persistent programs with the whole basis resident in shared memory (loaded once
            # per program instead of once per tile; drop_halo_shared keeps them where it fits)
            "m128_k64_n64_w4_res": _halo(4, 128, 64, resident=1),
            "m128_k32_n64_w4_res": _halo(4, 128, 32, resident=1),
            "m128_k64_n64_w8_res": _halo(8, 128, 64, resident=1),
        },
        fixed=_halo(4, 64, 32),
        key=_HALO_KEY,
        layout=("x_ptr", "sx_c"),
        caps={"BLOCK_K": "C_in", "BLOCK_N": "C_rest"},
        registers=pruning.fwd_halo_registers,
        budget=pruning.HALO_BUDGET,
        rules=(pruning.drop_halo_shared, pruning.drop_halo_long_window),
        dot_m="BLOCK_M",
        builder="fwd_halo_args",
        iteration="cblock",
        variant_of="fwd",
        applies=halo_applies,
        interpretable=False,
    )


_HALO = () if forward_halo is None else (_halo_record(),)

RECORDS: dict[str, KernelRecord] = {
    r.name: r for r in (FWD, FWD_REDUCE, GRAD_Z, GRAD_X, WGRAD, BWD_REDUCE, FWD_L1, FWD_TMA, *_HALO)
}

# Views by name, derived from the records (what callers that index one field use).
CONFIGS: dict[str, dict[str, dict]] = {n: r.configs for n, r in RECORDS.items() if r.configs}
FIXED: dict[str, dict] = {n: r.fixed for n, r in RECORDS.items()}
KEYS: dict[str, list[str]] = {n: list(r.key) for n, r in RECORDS.items() if r.configs}
# The forward variants of each kernel that has any, v2's first: ("fwd": ["fwd", ...]).
VARIANTS: dict[str, list[str]] = {}
for _r in RECORDS.values():
    if _r.variant_of is not None:
        VARIANTS.setdefault(_r.variant_of, [_r.variant_of]).append(_r.name)


def acc_registers(
    kernel: str, cfg: dict, block_cb_: int = 16, elem_bytes: int = 2, split_k_: int = 1
) -> float:
    """Estimated 32-bit registers per thread of ``cfg`` for ``kernel`` (its record's model;
    KeyError for a kernel without a record or without a model)."""
    model = RECORDS[kernel].registers
    if model is None:
        raise KeyError(f"kernel {kernel!r} has no register model (it is not autotuned)")
    return model(cfg, block_cb_, elem_bytes, split_k_)


def budget(shape: dict, kernel: str) -> int:
    """The register budget of ``kernel`` for the operand element size and layout in
    ``shape``."""
    table = RECORDS[kernel].budget
    if table is None:
        raise KeyError(f"kernel {kernel!r} has no register budget (it is not autotuned)")
    return pruning.budget_of(table, shape)


def prune(kernel: str, configs: list[dict], shape: dict) -> list[dict]:
    """The configs of ``kernel`` that can help ``shape`` (see :func:`pruning.prune_record`)."""
    return pruning.prune_record(RECORDS[kernel], configs, shape)
