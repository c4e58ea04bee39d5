"""Autotune configs as named data.

Each kernel has a list of named configs (block sizes, warps, stages) that the launcher turns into
``triton.Config`` objects lazily, on first use on a GPU (nothing here queries a device), and a
``FIXED`` config used by the interpreter tier and whenever autotuning is switched off
(``TRITONBASIS_AUTOTUNE=0``). ``KEYS`` lists the shape arguments that change the best config;
``prune`` drops configs that cannot help a given shape (blocks wider than the dimension they
tile) or that would spill (fp32 accumulator too large for the warps).

``num_warps`` stays <= 4 on the conv loops (fwd, grad_x): Triton has miscompiled non-1x1 conv
loops with 8 warps, and Inductor's conv template caps at 4 for the same reason (DESIGN.md §1).
"""

from __future__ import annotations


def _cfg(num_warps: int, num_stages: int, **blocks) -> dict:
    return {"blocks": blocks, "num_warps": num_warps, "num_stages": num_stages}


CONFIGS: dict[str, dict[str, dict]] = {
    # v2 forward (one pipelined K loop). Every config is wgmma-shaped on sm_90: 4 warps (one
    # warpgroup) and BLOCK_M a multiple of 64. Which of them prune keeps per shape, and why, is
    # in `prune`; the compile tier checks every kept one (wgmma, 0 spills, Triton 3.6 and 3.9).
    "fwd": {
        "m128_k64_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=64, BLOCK_N=64),
        "m128_k32_n64_w4_s4": _cfg(4, 4, BLOCK_M=128, BLOCK_K=32, BLOCK_N=64),
        "m128_k64_n32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=64, BLOCK_N=32),
        "m64_k64_n64_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=64, BLOCK_N=64),
        "m64_k64_n128_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_K=64, BLOCK_N=128),
        "m64_k32_n64_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=32, BLOCK_N=64),
        "m64_k64_n32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=64, BLOCK_N=32),
        "m64_k16_n32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=16, BLOCK_N=32),
    },
    # split-K second launch: reads SPLIT_K fp32 slices of Z, runs the forward epilogue
    "fwd_reduce": {
        "m64_n64_w4": _cfg(4, 1, BLOCK_M=64, BLOCK_N=64),
        "m64_n32_w4": _cfg(4, 1, BLOCK_M=64, BLOCK_N=32),
        "m128_n64_w4": _cfg(4, 1, BLOCK_M=128, BLOCK_N=64),
    },
    # v2 grad_z: two dots per C_rest block, dZ += G_r coeff (M extent BLOCK_M) and the d coeff
    # partial G_r^T Z (M extent BLOCK_N): both multiples of 64 with whole warpgroups -> wgmma.
    # 8 warps for C_b = 128 (the 4-warp m64_n64 spills 280 B there, Triton 3.9, sm_90).
    "grad_z": {
        "m128_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64),
        "m64_n64_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64),
        "m64_n64_w8_s3": _cfg(8, 3, BLOCK_M=64, BLOCK_N=64),
        "m64_n128_w8_s3": _cfg(8, 3, BLOCK_M=64, BLOCK_N=128),
        # NCHW / fp32 operands (see prune) and C_rest <= 32: mma.sync, spill-free on sm_80 and
        # sm_90 with Triton 3.6 and 3.9 (m64_n32_w4 spilled 124-148 B on 3.6, sm_80, NCHW)
        "m32_n32_w4_s2": _cfg(4, 2, BLOCK_M=32, BLOCK_N=32),
    },
    # v2 grad_x: one pipelined (tap, C_b block) loop; 4 warps and BLOCK_M >= 64: wgmma only
    "grad_x": {
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
    # v2 wgrad (x stationary): BLOCK_A tiles the (tap, C_b) rows -- 9 * C_b of them at stride 1,
    # 144..1152 at the benchmark shapes -- so every config is a wgmma tile (4 warps, BLOCK_A a
    # multiple of 64); BLOCK_X tiles C_in (>= 64 at the benchmark shapes).
    "wgrad": {
        "a128_x64_p32_w4_s3": _cfg(4, 3, BLOCK_A=128, BLOCK_X=64, BLOCK_P=32),
        "a64_x64_p64_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=64, BLOCK_P=64),
        "a64_x128_p32_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=128, BLOCK_P=32),
        "a128_x32_p64_w4_s3": _cfg(4, 3, BLOCK_A=128, BLOCK_X=32, BLOCK_P=64),
        "a64_x32_p64_w4_s4": _cfg(4, 4, BLOCK_A=64, BLOCK_X=32, BLOCK_P=64),
    },
}

# Interpreter / no-autotune configs: small tiles (the interpreter runs one program at a time in
# numpy; these keep tiny test shapes at a few programs each) and every dim >= 16 for tl.dot.
FIXED: dict[str, dict] = {
    "fwd": _cfg(4, 2, BLOCK_M=32, BLOCK_K=16, BLOCK_N=16),
    "fwd_reduce": _cfg(4, 1, BLOCK_M=32, BLOCK_N=16),
    "grad_z": _cfg(4, 2, BLOCK_M=32, BLOCK_N=16),
    "grad_x": _cfg(4, 2, BLOCK_M=32, BLOCK_N=16, BLOCK_K=16),
    "wgrad": _cfg(4, 2, BLOCK_A=16, BLOCK_X=16, BLOCK_P=32),
    # backward's deterministic sum of partials (launched with this config only, on GPU too)
    "bwd_reduce": _cfg(4, 1, BLOCK=512),
}

# Arguments that change the best config: triton.autotune's key (triton adds every tensor
# argument's dtype), so also the key of its on-disk result cache (cache_results=True).
KEYS: dict[str, list[str]] = {
    # M_KEY = m_bucket(M): M rounded up to a power of two, so a new batch size re-tunes only
    # when it crosses a power of two (the launcher passes it as an extra, unused-by-the-math
    # kernel argument: triton.autotune keys on argument values, it has no key transform).
    # The last entry is the channel stride of the operand `prune` reads the layout from
    # (1 for NHWC, H*W for NCHW): prune keeps other configs for NCHW, and without it in the key
    # an NCHW launch would reuse the config tuned for an NHWC one of the same shape in memory.
    "fwd": ["M_KEY", "C_in", "C_b", "C_rest", "KH", "KW", "stride_h", "stride_w", "KEEP_BASIS",
            "STORE_Z", "SPLIT_K", "sx_c"],
    "fwd_reduce": ["M_KEY", "C_b", "C_rest", "KEEP_BASIS", "STORE_Z", "SPLIT_K", "sy_c"],
    "grad_z": ["M_KEY", "C_b", "C_rest", "KEEP_BASIS", "STORE_DZ", "NEED_DC", "NEED_DBIAS",
               "sg_c"],
    # grad_x / wgrad: M_KEY buckets the input pixels of the largest sub-pixel phase
    "grad_x": ["M_KEY", "C_in", "C_b", "KH", "KW", "stride_h", "stride_w", "sx_c"],
    "wgrad": ["M_KEY", "C_in", "C_b", "KH", "KW", "stride_h", "stride_w", "sx_c"],
}

# Accumulated outputs that autotune must zero between trials.
# (none since the v2 backward: its kernels write partials and outputs, never accumulate into them)
RESET_TO_ZERO: dict[str, list[str]] = {}

# Largest basis block the fused kernels hold in registers (BLOCK_M x BLOCK_CB fp32 accumulator
# per program). 128, measured by the compile tier (bench/results/compile-report-*): at 256 every
# forward config spills on sm_90 (104 B to 6.5 KB) and one needs more shared memory than sm_80
# has. Above it the op falls back (weight modification / the torch path).
MAX_BLOCK_CB = 128

# Register model (see `acc_registers`) budget per thread, by operand element size and layout.
# Calibrated on the compile tier's sm_80/sm_90 reports (bench/results/compile-report-*): with
# 16-bit NHWC operands, configs estimated <= 128 compiled without spills and those at 144-152
# spilled; NCHW operands (strided channel loads, no 16-byte vectors) and fp32 operands spill
# earlier. A heuristic, checked config by config by tests/test_compile_tier.py.
ACC_BUDGET = {(2, False): 128, (2, True): 96, (4, False): 100, (4, True): 80}

# The v2 forward's register model (`acc_registers`, wgmma tiles) budget, calibrated on sm_90
# compiles of every fwd config at the ResNet18-CIFAR benchmark shapes (batch 256, C_b = C_out/4,
# plus C_b = 128 without split-K) with Triton 3.6 and 3.9 (bench/results/compile-report-v2-*):
# bf16 NHWC configs scoring <= 288 compiled spill-free on both (m128_k64_n64 at C_b = 64: 158-192
# registers); m128_k32_n64 at C_b = 128 with the epilogue (320) compiled clean at 256ch@8px but
# spilled 104 B with a bias at 256->512ch@14px (the compile tier's max-C_b case), the two above
# it (352, 384) spilled 80-440 B: at C_b = 128 BLOCK_M = 128 is kept only with split-K (no
# epilogue in that launch: 208-236 registers, clean). NCHW and fp32 (TF32) operands: lower,
# checked by the compile tier's NCHW / fp32 cases.
WGMMA_BUDGET = {(2, False): 300, (2, True): 256, (4, False): 256, (4, True): 224}


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
    while (split < 8 and tiles * split * 2 <= sms and k_iters >= 8 * split * 2
           and split * 2 * M * block_cb(C_b) < 2**31):
        split *= 2
    return split


def block_cb(c_b: int) -> int:
    """C_b padded to a tl.dot-able power of two (>= 16)."""
    return _pow2_at_least(c_b)


def acc_registers(kernel: str, cfg: dict, block_cb_: int = 16, elem_bytes: int = 2,
                  split_k_: int = 1) -> float:
    """Estimated 32-bit registers per thread held by a program's tiles: the fp32 accumulators
    (BLOCK_M x BLOCK_CB for Z or dZ, plus the BLOCK_M x BLOCK_N epilogue/prologue tile for fwd
    and grad_z; BLOCK_M x BLOCK_N for grad_x; BLOCK_A x BLOCK_X for wgrad) plus the operand
    tiles of one K step and the coefficient tile, at ``elem_bytes`` per element."""
    b, threads = cfg["blocks"], 32 * cfg["num_warps"]
    w = elem_bytes / 4
    if kernel in ("fwd", "fwd_reduce"):
        # v2 forward, every config a wgmma tile: wgmma reads the K loop's operands from shared
        # memory (cp.async fills it), so operand *data* costs no registers. What does:
        # * the Z accumulator, BLOCK_M x BLOCK_CB fp32;
        # * with the epilogue in this launch (fwd_reduce, or fwd without split-K): Z's
        #   input-dtype copy (the register A operand of the coefficient dot) and that dot's
        #   BLOCK_M x BLOCK_N fp32 accumulator;
        # * fwd: 2 registers per element of one BLOCK_M x BLOCK_K activation tile / thread,
        #   the addresses and masks of its async copies (fitted: without it, m128_k64 and
        #   m128_k32 at C_b = 128 score alike, but k64 spilled 80-440 B and k32 did not);
        #   fwd_reduce: the fp32 workspace slice being added, BLOCK_M x BLOCK_CB.
        m, n, cb = b["BLOCK_M"], b["BLOCK_N"], block_cb_
        epilogue = kernel == "fwd_reduce" or split_k_ == 1
        acc = m * cb + ((m * cb * w + m * n) if epilogue else 0)
        operands = 2 * m * b["BLOCK_K"] if kernel == "fwd" else m * cb
        return (acc + operands) / threads
    if kernel == "grad_z":
        # v2: the dZ accumulator (BLOCK_M x BLOCK_CB fp32), the d coeff partial (BLOCK_N x
        # BLOCK_CB fp32), the G_r, coefficient and Z tiles. Checked by compiling at C_b = 128:
        # estimate 208 -> m64_n64_w4 spills 280 B, 104 -> m64_n64_w8 compiles spill-free.
        m, n, cb = b["BLOCK_M"], b["BLOCK_N"], block_cb_
        return (m * cb + n * cb + (m * n + n * cb + m * cb) * w) / threads
    if kernel == "grad_x":
        m, n, k = b["BLOCK_M"], b["BLOCK_N"], b["BLOCK_K"]
        return (m * n + (m * k + k * n) * w) / threads
    a_, x, p = b["BLOCK_A"], b["BLOCK_X"], b["BLOCK_P"]
    return (a_ * x + (a_ * p + p * x) * w) / threads


def budget(shape: dict, kernel: str | None = None) -> int:
    """Accumulator budget for the operand element size and layout in ``shape``
    (``elem_bytes``: 2 or 4, default 2; ``nchw``: channel stride != 1, default False), for
    the v2 forward kernels (``WGMMA_BUDGET``) or the others (``ACC_BUDGET``)."""
    table = WGMMA_BUDGET if kernel in ("fwd", "fwd_reduce") else ACC_BUDGET
    return table[(4 if shape.get("elem_bytes", 2) >= 4 else 2, bool(shape.get("nchw")))]


def prune(kernel: str, configs: list[dict], shape: dict) -> list[dict]:
    """Drop configs whose blocks overshoot the dimension they tile, or whose accumulators
    exceed the register budget (they would spill), or that the compile tier measured spilling
    beyond the model (rules below; ``shape["arch"]``, the compute capability as 80 / 90, when
    known). Always keeps at least one config: the one with the smallest accumulator."""
    caps = {
        "fwd": {"BLOCK_K": shape.get("C_in"), "BLOCK_N": shape.get("C_rest")},
        "fwd_reduce": {"BLOCK_N": shape.get("C_rest")},
        "grad_z": {"BLOCK_N": shape.get("C_rest")},
        "grad_x": {"BLOCK_N": shape.get("C_in"), "BLOCK_K": shape.get("C_b")},
        # v2 wgrad: BLOCK_A tiles taps * C_b rows (never fewer than 64 at 3x3), BLOCK_X C_in
        "wgrad": {"BLOCK_X": shape.get("C_in")},
    }[kernel]
    bcb = shape.get("BLOCK_CB", 16)
    eb = 4 if shape.get("elem_bytes", 2) >= 4 else 2
    limit = budget(shape, kernel)
    nchw = bool(shape.get("nchw"))
    split = int(shape.get("SPLIT_K", 1))
    one_by_one = shape.get("KH", 3) * shape.get("KW", 3) == 1
    kept = []
    for cfg in configs:
        b = cfg["blocks"]
        if any(v is not None and b[k] > _pow2_at_least(v) for k, v in caps.items() if k in b):
            continue
        if acc_registers(kernel, cfg, bcb, eb, split) > limit:
            continue
        # Measured (sm_90, Triton 3.6 and 3.9), beyond the model: a 1x1 forward keeps its
        # address tensors live across the K loop (they are loop-carried increments there, not
        # recomputed from the tap as in a 3x3), so at C_b = 128 with the epilogue in the same
        # launch every BLOCK_K = 64 config spilled 368-1592 B and BLOCK_M = 128 spilled;
        # m64_k32_n64 and m64_k16_n32 compiled clean.
        if (kernel == "fwd" and one_by_one and bcb >= 128 and split == 1
                and (b["BLOCK_K"] > 32 or b["BLOCK_M"] > 64)):
            continue
        # Measured by the compile tier (sm_80 and sm_90), beyond what the register model sees:
        # strided (NCHW) operand loads spill with BLOCK_K = 64 or BLOCK_M = 128; fp32 operands
        # spill with BLOCK_K = 64 or with 2 warps.
        if nchw and (b.get("BLOCK_K", 0) > 32 or b.get("BLOCK_M", 0) > 64):
            continue
        if eb == 4 and (b.get("BLOCK_K", 0) > 32 or cfg["num_warps"] < 4):
            continue
        # v2 wgrad on mma.sync GPUs (shape["arch"] < 90, e.g. A100), measured by the compile
        # tier: with BLOCK_P = 64 and a 4096-element (32 registers / thread) accumulator,
        # Triton 3.8 + its ptxas 12.9 allocate exactly 128 registers and spill 8-24 B
        # (a128_x32_p64 at the representative shape and 7 of 12 benchmark shapes, a64_x64_p64
        # at 2); Triton 3.6 (ptxas 12.8) compiled both clean (91-152 registers), and on sm_90
        # (wgmma) both are clean on 3.6 and 3.8. The register model cannot see it (a128_x64_p32
        # scores higher and compiles clean at 190 registers): ptxas trades a few spilled bytes
        # for occupancy. Dropped there on every Triton; a128_x64_p32, a64_x128_p32 and
        # a64_x32_p64 remain. Unknown arch (None): no rule.
        arch = shape.get("arch")
        if (kernel == "wgrad" and arch is not None and arch < 90 and b["BLOCK_P"] >= 64
                and b["BLOCK_A"] * b["BLOCK_X"] >= 4096):
            continue
        # v2 grad_z, measured (Triton 3.9): with NCHW or fp32 operands every BLOCK_N = 64
        # config spills on sm_80 (mma.sync holds G_r and its transpose for the d coeff dot in
        # registers: 40-632 B at C_b = 32); m32_n32 compiles clean on sm_80 and sm_90. With
        # 16-bit NHWC operands BLOCK_N = 32 is left out while C_rest > 32: the d coeff dot's
        # M extent is BLOCK_N, and 64 keeps it on wgmma (sm_90).
        if kernel == "grad_z":
            slow_operands = nchw or eb == 4
            if slow_operands and b["BLOCK_N"] > 32:
                continue
            if not slow_operands and b["BLOCK_N"] < 64 and (shape.get("C_rest") or 64) > 32:
                continue
        kept.append(cfg)
    if not kept:
        kept = [min(configs, key=lambda c: acc_registers(kernel, c, bcb, eb))]
    return kept
