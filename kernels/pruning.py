"""What the kernel records (``configs.py``) are made of, besides the kernels: the shape helpers
the launch plans use (``block_cb``, ``m_bucket``, ``split_k``), the register models and budgets
that decide which autotune configs would spill, the rules measured by the compile tier beyond
those models, and the pruning itself (:func:`prune_record`). Nothing here knows a kernel by
name: each record names its own model, budget, caps and rules.
"""

from __future__ import annotations

from collections.abc import Callable

from . import halo_schedule as hs


def cfg(num_warps: int, num_stages: int, **blocks) -> dict:
    """A named config: block sizes, warps, pipeline stages."""
    return {"blocks": blocks, "num_warps": num_warps, "num_stages": num_stages}


# Largest basis block the fused kernels hold in registers (BLOCK_M x BLOCK_CB fp32 accumulator
# per program). 128, measured by the compile tier (bench/results/compile-report-*): at 256 every
# forward config spills on sm_90 (104 B to 6.5 KB) and one needs more shared memory than sm_80
# has. Above it the op falls back (weight modification / the torch path).
MAX_BLOCK_CB = 128

# Register model budget per thread (see the ``*_registers`` models), by operand element size and
# layout. Calibrated on the compile tier's sm_80/sm_90 reports (bench/results/compile-report-*):
# with 16-bit NHWC operands, configs estimated <= 128 compiled without spills and those at
# 144-152 spilled; NCHW operands (strided channel loads, no 16-byte vectors) and fp32 operands
# spill earlier. A heuristic, checked config by config by tests/kernels/test_compile_tier.py.
ACC_BUDGET = {(2, False): 128, (2, True): 96, (4, False): 100, (4, True): 80}

# The v2 forward's register model (`fwd_registers`, wgmma tiles) budget, calibrated on sm_90
# compiles of every fwd config at the ResNet18-CIFAR benchmark shapes (batch 256, C_b = C_out/4,
# plus C_b = 128 without split-K) with Triton 3.6 and 3.9 (bench/results/compile-report-v2-*):
# bf16 NHWC configs scoring <= 288 compiled spill-free on both (m128_k64_n64 at C_b = 64: 158-192
# registers); m128_k32_n64 at C_b = 128 with the epilogue (320) compiled clean at 256ch@8px but
# spilled 104 B with a bias at 256->512ch@14px (the compile tier's max-C_b case), the two above
# it (352, 384) spilled 80-440 B: at C_b = 128 BLOCK_M = 128 is kept only with split-K (no
# epilogue in that launch: 208-236 registers, clean). NCHW and fp32 (TF32) operands: lower,
# checked by the compile tier's NCHW / fp32 cases.
WGMMA_BUDGET = {(2, False): 300, (2, True): 256, (4, False): 256, (4, True): 224}


# The L1-served forward's budget (fwd_l1_registers): its 16-bit NHWC configs estimated <= 280
# compiled spill-free at the ResNet18 3x3 shapes; m128_k64 at C_b = 16 (286) spilled 64 B. The
# other layouts are scaled like WGMMA_BUDGET (not compiled: a spill there costs speed only).
L1_BUDGET = {(2, False): 280, (2, True): 240, (4, False): 240, (4, True): 210}


# The halo forward's budget (fwd_halo_registers): see its docstring. It runs 16-bit NHWC
# operands only (its record's `applies`), so every entry is that one.
HALO_BUDGET = {(2, False): 260, (2, True): 260, (4, False): 260, (4, True): 260}


def _pow2_at_least(v: int, lo: int = 16) -> int:
    """The smallest power of two >= max(v, lo) (``lo`` a power of two)."""
    return max(lo, 1 << (int(v) - 1).bit_length()) if v > 1 else lo


def m_bucket(m: int) -> int:
    """The autotune key of a GEMM M extent: M rounded up to a power of two (>= 1)."""
    return _pow2_at_least(max(int(m), 1), 1)


def split_k(M: int, C_in: int, KH: int, KW: int, C_b: int, sms: int) -> int:
    """Forward split-K factor (1 = off) on a GPU with ``sms`` SMs.

    Split while the M tiles (counted at BLOCK_M = 64, the smallest wgmma tile) fill less than
    half the SMs per slice, keeping >= 8 K iterations of BLOCK_K = 64 per slice (so the
    pipeline still fills) and at most 8 slices. ResNet18-CIFAR at batch 256 on an H100 (132
    SMs): 512ch@4px has M = 4096 -> 64 tiles, K = 9 * 512 -> 72 iterations: SPLIT_K = 2 (128
    programs); 256ch@8px has 256 tiles: no split. The workspace (SPLIT_K, M, BLOCK_CB) fp32
    stays below 2**31 elements (the kernels index it with int32 slice offsets)."""
    tiles = -(-M // 64)
    k_iters = KH * KW * -(-C_in // 64)
    split = 1
    while (
        split < 8
        and tiles * split * 2 <= sms
        and k_iters >= 8 * split * 2
        and split * 2 * M * block_cb(C_b) < 2**31
    ):
        split *= 2
    return split


def block_cb(c_b: int) -> int:
    """C_b padded to a tl.dot-able power of two (>= 16)."""
    return _pow2_at_least(c_b)


# --------------------------------------------------------------------------------------------
# Register models: estimated 32-bit registers per thread held by a program's tiles, as a
# function of (config, BLOCK_CB, operand element bytes, split-K factor). One per kernel; a
# record names its own.


def fwd_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """v2 forward, every config a wgmma tile: wgmma reads the K loop's operands from shared
    memory (cp.async fills it), so operand *data* costs no registers. What does:

    * the Z accumulator, BLOCK_M x BLOCK_CB fp32;
    * with the epilogue in this launch (no split-K): Z's input-dtype copy (the register A
      operand of the coefficient dot) and that dot's BLOCK_M x BLOCK_N fp32 accumulator;
    * 2 registers per element of one BLOCK_M x BLOCK_K activation tile / thread, the addresses
      and masks of its async copies (fitted: without it, m128_k64 and m128_k32 at C_b = 128
      score alike, but k64 spilled 80-440 B and k32 did not)."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    m, n = b["BLOCK_M"], b["BLOCK_N"]
    acc = m * block_cb_ + ((m * block_cb_ * elem_bytes / 4 + m * n) if split_k_ == 1 else 0)
    return (acc + 2 * m * b["BLOCK_K"]) / threads


def fwd_l1_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """L1-served forward (synchronous ``ld.global``, taps unrolled): v2's accumulators, plus
    both operand tiles of one step passing through registers on their way to shared memory,
    plus their addresses: the 9 taps' row bases are loop-invariant across C blocks, so the
    compiler keeps 9 x 2 registers per 8-element vector live (3x3 assumed; a 1x1 is
    over-estimated). Fitted on sm_90 compiles at the ResNet18 3x3 shapes (Triton 3.6):
    estimates <= 292 compiled clean (m64_k64 at C_b = 64: 256 -> 250 registers), 286 and
    above spilled except two at 288 / 292 (see L1_BUDGET)."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    m, n, k = b["BLOCK_M"], b["BLOCK_N"], b["BLOCK_K"]
    w = elem_bytes / 4
    acc = m * block_cb_ + ((m * block_cb_ * w + m * n) if split_k_ == 1 else 0)
    per_elem = w + 9 * 2 / 8  # data + hoisted addresses of 9 taps
    return (acc + per_elem * (m * k + k * block_cb_)) / threads


def fwd_tma_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """TMA forward: v2's accumulators only; the tensor-memory accelerator fetches whole boxes,
    so there are no per-element address or mask registers in the K loop."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    m, n = b["BLOCK_M"], b["BLOCK_N"]
    acc = m * block_cb_ + ((m * block_cb_ * elem_bytes / 4 + m * n) if split_k_ == 1 else 0)
    return acc / threads


def fwd_halo_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """Halo-tile forward (Gluon), the larger of its two phases:

    * the tap loop: the Z accumulator, the register A operand of two taps (the one a wgmma
      reads, the next one loaded meanwhile), the next C_in block's copy addresses, which the
      compiler hoists out of the loop (loop-invariant but for the channel offset): ~3
      registers per 8-element chunk of the window (<= 1.8 BLOCK_M pixels, drop_halo_long_window)
      and of the basis tiles of all 9 taps (3x3 assumed), and ~48 for the dense grid's row
      coordinates and edge masks;
    * the epilogue: Z, its input-dtype copy and the coefficient dot's accumulator.

    Fitted on sm_90 compiles at the ResNet18 3x3 shapes (Triton 3.6): estimates <= 247
    compiled clean (149-239 registers); 327 (m128_k64 at C_b = 64) and 338 (m128_k32 at
    C_b = 128) spilled 16-20 B."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    m, n, k, cb = b["BLOCK_M"], b["BLOCK_N"], b["BLOCK_K"], block_cb_
    w = elem_bytes / 4
    chunk = 8 * 4 / elem_bytes / 2  # elements per 16-byte copy (8 at 16 bits)
    basis = 0 if b.get("RESIDENT") else 9 * k * cb  # a resident basis is copied once, before
    loop = m * cb + 2 * m * k * w + 3 * (1.8 * m * k + basis) / chunk + 48 * threads
    epilogue = (m * cb + m * cb * w + m * n) if split_k_ == 1 else 0
    return max(loop, epilogue) / threads


def fwd_reduce_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """Split-K epilogue launch: the reduced Z (BLOCK_M x BLOCK_CB fp32), its input-dtype copy,
    the coefficient dot's BLOCK_M x BLOCK_N accumulator, and the workspace slice being added."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    m, n = b["BLOCK_M"], b["BLOCK_N"]
    acc = m * block_cb_ + m * block_cb_ * elem_bytes / 4 + m * n
    return (acc + m * block_cb_) / threads


def grad_z_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """v2 grad_z: the dZ accumulator (BLOCK_M x BLOCK_CB fp32), the d coeff partial (BLOCK_N x
    BLOCK_CB fp32), the G_r, coefficient and Z tiles. Checked by compiling at C_b = 128:
    estimate 208 -> m64_n64_w4 spills 280 B, 104 -> m64_n64_w8 compiles spill-free."""
    b, threads, w = cfg["blocks"], 32 * cfg["num_warps"], elem_bytes / 4
    m, n, cb = b["BLOCK_M"], b["BLOCK_N"], block_cb_
    return (m * cb + n * cb + (m * n + n * cb + m * cb) * w) / threads


def grad_x_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """grad_x: the BLOCK_M x BLOCK_N accumulator and one K step of both operand tiles."""
    b, threads, w = cfg["blocks"], 32 * cfg["num_warps"], elem_bytes / 4
    m, n, k = b["BLOCK_M"], b["BLOCK_N"], b["BLOCK_K"]
    return (m * n + (m * k + k * n) * w) / threads


def wgrad_registers(cfg: dict, block_cb_: int, elem_bytes: int, split_k_: int) -> float:
    """wgrad: the BLOCK_A x BLOCK_X accumulator and one pixel step of both operand tiles."""
    b, threads, w = cfg["blocks"], 32 * cfg["num_warps"], elem_bytes / 4
    a_, x, p = b["BLOCK_A"], b["BLOCK_X"], b["BLOCK_P"]
    return (a_ * x + (a_ * p + p * x) * w) / threads


# --------------------------------------------------------------------------------------------
# Rules measured by the compile tier beyond the register models: ``rule(cfg, shape)`` is True
# when the config must be dropped for that shape (``shape`` as :func:`prune_record` gets it).


def _eb(shape: dict) -> int:
    return 4 if shape.get("elem_bytes", 2) >= 4 else 2


def drop_nchw_wide(cfg: dict, shape: dict) -> bool:
    """Strided (NCHW) operand loads spill with BLOCK_K = 64 or BLOCK_M = 128 (sm_80, sm_90)."""
    b = cfg["blocks"]
    return bool(shape.get("nchw")) and (b.get("BLOCK_K", 0) > 32 or b.get("BLOCK_M", 0) > 64)


def drop_fp32_wide(cfg: dict, shape: dict) -> bool:
    """fp32 operands spill with BLOCK_K = 64 or with 2 warps."""
    return _eb(shape) == 4 and (cfg["blocks"].get("BLOCK_K", 0) > 32 or cfg["num_warps"] < 4)


def drop_fwd_1x1_cb128(cfg: dict, shape: dict) -> bool:
    """A 1x1 forward keeps its address tensors live across the K loop (loop-carried
    increments there, not recomputed from the tap as in a 3x3), so at C_b = 128 with the
    epilogue in the same launch every BLOCK_K = 64 config spilled 368-1592 B and BLOCK_M = 128
    spilled; m64_k32_n64 and m64_k16_n32 compiled clean (sm_90, Triton 3.6 and 3.9)."""
    b = cfg["blocks"]
    one_by_one = shape.get("KH", 3) * shape.get("KW", 3) == 1
    return (
        one_by_one
        and shape.get("BLOCK_CB", 16) >= 128
        and int(shape.get("SPLIT_K", 1)) == 1
        and (b["BLOCK_K"] > 32 or b["BLOCK_M"] > 64)
    )


def drop_wgrad_mma_sync_p64(cfg: dict, shape: dict) -> bool:
    """v2 wgrad on mma.sync GPUs (shape["arch"] < 90, e.g. A100), measured by the compile tier:
    with BLOCK_P = 64 and a 4096-element (32 registers / thread) accumulator, Triton 3.8 + its
    ptxas 12.9 allocate exactly 128 registers and spill 8-24 B (a128_x32_p64 at the
    representative shape and 7 of 12 benchmark shapes, a64_x64_p64 at 2); Triton 3.6 (ptxas
    12.8) compiled both clean (91-152 registers), and on sm_90 (wgmma) both are clean on 3.6 and
    3.8. The register model cannot see it (a128_x64_p32 scores higher and compiles clean at 190
    registers): ptxas trades a few spilled bytes for occupancy. Dropped there on every Triton;
    unknown arch (None): no rule."""
    b, arch = cfg["blocks"], shape.get("arch")
    return (
        arch is not None
        and arch < 90
        and b["BLOCK_P"] >= 64
        and b["BLOCK_A"] * b["BLOCK_X"] >= 4096
    )


def drop_grad_z_tile(cfg: dict, shape: dict) -> bool:
    """v2 grad_z, measured (Triton 3.9): with NCHW or fp32 operands every BLOCK_N = 64 config
    spills on sm_80 (mma.sync holds G_r and its transpose for the d coeff dot in registers:
    40-632 B at C_b = 32); m32_n32 compiles clean on sm_80 and sm_90. With 16-bit NHWC operands
    BLOCK_N = 32 is left out while C_rest > 32: the d coeff dot's M extent is BLOCK_N, and 64
    keeps it on wgmma (sm_90)."""
    n = cfg["blocks"]["BLOCK_N"]
    if bool(shape.get("nchw")) or _eb(shape) == 4:
        return n > 32
    return n < 64 and (shape.get("C_rest") or 64) > 32


def drop_tma_partial_tile(cfg: dict, shape: dict) -> bool:
    """TMA forward tiles are 2-D: only full-width row bands (TILE_W the output width rounded
    up to a power of two, at most 128 columns; a narrower tile loads the same box halo for
    more programs, a wider one multiplies zero columns), at most the image's rows, and
    several images stacked only when each is whole (else the stacked boxes leave rows of each
    image to another program)."""
    b = cfg["blocks"]
    wo, ho = shape.get("Wo"), shape.get("Ho")
    if wo is not None and b["TILE_W"] != min(_pow2_at_least(wo, 1), 128):
        return True
    if ho is None:
        return False
    rows = _pow2_at_least(ho, 1)
    return b["TILE_H"] > rows or (b["TILE_N"] > 1 and b["TILE_H"] < rows)


def drop_halo_shared(cfg: dict, shape: dict) -> bool:
    """Halo forward: the staged windows, the padded halo and the basis tiles of all taps
    (double-buffered, or every C_in block's when RESIDENT) must fit the 227 KiB of shared
    memory a block may have on sm_90. RESIDENT programs also run the whole C_in range: not
    with split-K."""
    b = cfg["blocks"]
    resident = b.get("RESIDENT", 0)
    if resident and int(shape.get("SPLIT_K", 1)) > 1:
        return True
    blocks = -(-shape["C_in"] // b["BLOCK_K"]) if resident else 0
    need = hs.shared_bytes(
        _geometry(shape),
        b["BLOCK_M"],
        b["BLOCK_K"],
        shape.get("BLOCK_CB", 16),
        _eb(shape),
        8,
        blocks,
    )
    # + the epilogue's coefficient tile and the compiler's layout-conversion scratch: measured
    # 8.3-9.1 KB with 4 warps, 16.4-17.3 KB with 8 (sm_90, Triton 3.6, the ResNet18 shapes)
    scratch = 2304 * cfg["num_warps"]
    return need + 2 * b["BLOCK_N"] * shape.get("BLOCK_CB", 16) + scratch > 232448


def drop_halo_long_window(cfg: dict, shape: dict) -> bool:
    """Halo forward: a tile whose window copies (its pixels plus the halo the taps reach, the
    copy layout's replication of a short piece included) request more than 9/5 of the tile
    reads more than a fifth of what v2's 9 tap tiles read per C_in block -- the point of the
    variant. Wide images need BLOCK_M = 128 (32 px: 200 pixels for 128 outputs, 136 for 64),
    and 8 warps copy 64 pixels at a time at BLOCK_K = 32 (a 200-pixel window then costs 256)."""
    b = cfg["blocks"]
    n = hs.loaded_pixels(_geometry(shape), b["BLOCK_M"], b["BLOCK_K"], cfg["num_warps"])
    return n * 5 > 9 * b["BLOCK_M"]


def _geometry(shape: dict) -> tuple:
    """The halo schedule's geometry tuple from a launch's named arguments."""
    return tuple(
        shape[k]
        for k in (
            "H",
            "W",
            "Ho",
            "Wo",
            "KH",
            "KW",
            "stride_h",
            "stride_w",
            "pad_h",
            "pad_w",
            "dil_h",
            "dil_w",
        )
    )


def budget_of(table: dict, shape: dict) -> int:
    """The register budget of ``table`` for the operand element size and layout in ``shape``
    (``elem_bytes``: 2 or 4, default 2; ``nchw``: channel stride != 1, default False)."""
    return table[(_eb(shape), bool(shape.get("nchw")))]


def prune_record(rec, configs: list[dict], shape: dict) -> list[dict]:
    """Drop configs whose blocks overshoot the dimension they tile (``rec.caps``), whose
    accumulators exceed the register budget (``rec.registers`` against ``rec.budget``: they
    would spill), or that one of ``rec.rules`` drops (measured beyond the model; the compute
    capability is ``shape["arch"]`` when known). Always keeps at least one config: the one with
    the smallest register estimate (with the epilogue counted)."""
    bcb = shape.get("BLOCK_CB", 16)
    eb = _eb(shape)
    split = int(shape.get("SPLIT_K", 1))
    limit = budget_of(rec.budget, shape)
    caps = {blk: shape.get(dim) for blk, dim in rec.caps.items()}
    kept = []
    for c in configs:
        b = c["blocks"]
        if any(v is not None and b[k] > _pow2_at_least(v) for k, v in caps.items()):
            continue
        if rec.registers(c, bcb, eb, split) > limit:
            continue
        if any(rule(c, shape) for rule in rec.rules):
            continue
        kept.append(c)
    if not kept:
        kept = [min(configs, key=lambda c: rec.registers(c, bcb, eb, 1))]
    return kept


RegisterModel = Callable[[dict, int, int, int], float]
Rule = Callable[[dict, dict], bool]
