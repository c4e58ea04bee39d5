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
    "fwd": {
        "m128_k32_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=32, BLOCK_N=64),
        "m128_k64_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_K=64, BLOCK_N=64),
        "m64_k32_n64_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_K=32, BLOCK_N=64),
        "m64_k64_n128_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_K=64, BLOCK_N=128),
        "m64_k16_n64_w4_s2": _cfg(4, 2, BLOCK_M=64, BLOCK_K=16, BLOCK_N=64),
        "m32_k64_n64_w4_s3": _cfg(4, 3, BLOCK_M=32, BLOCK_K=64, BLOCK_N=64),
        "m32_k32_n32_w2_s3": _cfg(2, 3, BLOCK_M=32, BLOCK_K=32, BLOCK_N=32),
    },
    "grad_z": {
        "m128_n64_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64),
        "m64_n64_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64),
        "m64_n128_w8_s3": _cfg(8, 3, BLOCK_M=64, BLOCK_N=128),
        "m32_n64_w2_s2": _cfg(2, 2, BLOCK_M=32, BLOCK_N=64),
    },
    "grad_x": {
        "m128_n64_k32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32),
        "m128_n128_k32_w4_s3": _cfg(4, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
        "m64_n64_k64_w4_s3": _cfg(4, 3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
        "m64_n128_k32_w4_s4": _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32),
        "m32_n64_k32_w2_s3": _cfg(2, 3, BLOCK_M=32, BLOCK_N=64, BLOCK_K=32),
        "m64_n32_k16_w4_s2": _cfg(4, 2, BLOCK_M=64, BLOCK_N=32, BLOCK_K=16),
    },
    "wgrad": {
        "a64_x64_p64_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=64, BLOCK_P=64),
        "a128_x64_p32_w4_s3": _cfg(4, 3, BLOCK_A=128, BLOCK_X=64, BLOCK_P=32),
        "a64_x128_p32_w4_s3": _cfg(4, 3, BLOCK_A=64, BLOCK_X=128, BLOCK_P=32),
        "a32_x64_p64_w4_s4": _cfg(4, 4, BLOCK_A=32, BLOCK_X=64, BLOCK_P=64),
        "a16_x32_p64_w2_s3": _cfg(2, 3, BLOCK_A=16, BLOCK_X=32, BLOCK_P=64),
    },
}

# Interpreter / no-autotune configs: small tiles (the interpreter runs one program at a time in
# numpy; these keep tiny test shapes at a few programs each) and every dim >= 16 for tl.dot.
FIXED: dict[str, dict] = {
    "fwd": _cfg(4, 2, BLOCK_M=32, BLOCK_K=16, BLOCK_N=16),
    "grad_z": _cfg(4, 2, BLOCK_M=32, BLOCK_N=16),
    "grad_x": _cfg(4, 2, BLOCK_M=32, BLOCK_N=16, BLOCK_K=16),
    "wgrad": _cfg(4, 2, BLOCK_A=16, BLOCK_X=16, BLOCK_P=32),
}

# Shape arguments that change the best config (the autotune cache key).
KEYS: dict[str, list[str]] = {
    "fwd": ["M", "C_in", "C_b", "C_rest", "KH", "KW", "stride_h", "stride_w", "KEEP_BASIS"],
    "grad_z": ["M", "C_b", "C_rest", "KEEP_BASIS", "STORE_DZ"],
    "grad_x": ["M", "C_in", "C_b", "KH", "KW", "stride_h", "stride_w"],
    "wgrad": ["M", "CA", "CX", "KW", "stride_h", "stride_w"],
}

# Accumulated outputs that autotune must zero between trials.
RESET_TO_ZERO: dict[str, list[str]] = {"grad_z": ["db_ptr"], "wgrad": ["o_ptr"]}

# Largest basis block the fused kernels hold in registers (BLOCK_M x BLOCK_CB fp32 accumulator
# per program). Above it the op falls back to weight modification (one cuDNN conv).
MAX_BLOCK_CB = 256


def _pow2_at_least(v: int, lo: int = 16) -> int:
    p = lo
    while p < v:
        p *= 2
    return p


def block_cb(c_b: int) -> int:
    """C_b padded to a tl.dot-able power of two (>= 16)."""
    return _pow2_at_least(c_b)


def prune(kernel: str, configs: list[dict], shape: dict) -> list[dict]:
    """Drop configs whose blocks overshoot the dimension they tile, or whose fp32 accumulators
    exceed ~128 registers per thread. Always keeps at least one config."""
    caps = {
        "fwd": {"BLOCK_K": shape.get("C_in"), "BLOCK_N": shape.get("C_rest")},
        "grad_z": {"BLOCK_N": shape.get("C_rest")},
        "grad_x": {"BLOCK_N": shape.get("C_in"), "BLOCK_K": shape.get("C_b")},
        "wgrad": {"BLOCK_A": shape.get("CA"), "BLOCK_X": shape.get("CX")},
    }[kernel]
    bcb = shape.get("BLOCK_CB", 16)
    kept = []
    for cfg in configs:
        b = cfg["blocks"]
        if any(v is not None and b[k] > _pow2_at_least(v) for k, v in caps.items() if k in b):
            continue
        acc = {
            "fwd": b.get("BLOCK_M", 0) * bcb,
            "grad_z": b.get("BLOCK_M", 0) * bcb,
            "grad_x": b.get("BLOCK_M", 0) * b.get("BLOCK_N", 0),
            "wgrad": b.get("BLOCK_A", 0) * b.get("BLOCK_X", 0),
        }[kernel]
        if acc / (32 * cfg["num_warps"]) > 128:
            continue
        kept.append(cfg)
    if not kept:  # smallest accumulator as the fallback
        kept = [min(configs, key=lambda c: _acc_size(kernel, c, bcb))]
    return kept


def _acc_size(kernel: str, cfg: dict, bcb: int) -> int:
    b = cfg["blocks"]
    if kernel in ("fwd", "grad_z"):
        return b["BLOCK_M"] * bcb
    if kernel == "grad_x":
        return b["BLOCK_M"] * b["BLOCK_N"]
    return b["BLOCK_A"] * b["BLOCK_X"]
