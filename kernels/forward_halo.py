"""Forward v3 variant c, **halo tile in shared memory** (Gluon, sm_90): each activation byte
leaves L2 once per C_in block instead of once per tap.

Per program and C_in block, the activations of its output tile plus the halo the taps reach
are copied to shared memory once (one window per sub-pixel plane; the schedule, shared with
the torch emulation of the tests, is ``halo_schedule.py``), and all KH*KW taps take their A
operand from that buffer: tap ``t``'s operand is the window slice starting at a constant
offset. v2 reads the activation tile from L2 for every tap (9x the input at 3x3, stride 1);
here the L2 reads per C_in block are one window, ``BLOCK_M + 2 Wv + 2`` pixels at 3x3 s1 (1.2-
1.6x the tile), and the basis tiles of all taps of the block (as in v2).

How the shifted operands are expressed. A subview in Gluon must start at a multiple of its own
length, and a one-pixel shift also breaks the 128-byte swizzle wgmma reads shared operands
with, so the A operand goes through registers (wgmma's register-A form): the window lives in a
bank-padded layout (each pixel's BLOCK_K channels followed by 8 unused elements, so the 8 rows
a warp reads at once sit in different banks) and tap ``t``'s operand is that buffer re-viewed
from pixel ``start`` on (``index(start)`` of a one-pixel-per-entry buffer, reinterpreted as
``[BLOCK_M, BLOCK_K]``): ~4 shared loads per wgmma, offsets known at compile time. Triton 3.6
cannot ``cp.async`` into the padded layout, so the window is staged by ``cp.async`` in a plain
layout (double-buffered: block c+1's copies fly while block c computes) and copied once per
block into the padded one (+1 read and write of the window against 9 reads by the taps). The
basis tiles (B operand, all taps of the block) are ``cp.async``'d into NVMMA layout and read
by wgmma from shared memory. Each tap's wgmma overlaps the next tap's operand load and is
waited for before that operand's registers can be reused.

Not interpretable (Gluon has no interpreter): the CPU tier checks the schedule by emulation,
and this kernel compiles for sm_90 from the same schedule functions
(tests/kernels/test_compile_tier.py).
Triton 3.6 only: Triton 3.8 and 3.9 reject the re-view (its footprint exceeds the one-pixel
view it starts from; 3.9 offers ``shared_memory_descriptor.gather`` instead, not used here).

16-bit operands only (bf16 / fp16), NHWC activations and a C_in-contiguous basis (the
record's ``applies``); split-K writes the same fp32 workspace as v2, summed by ``fwd_reduce``.
"""

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as _cp
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from . import halo_schedule as hs
from .gluon_epilogue import fwd_epilogue

# Gluon's names that differ between Triton releases
_async_copy = getattr(_cp, "async_copy_global_to_shared", None) or _cp.async_load
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
# The re-view of a one-pixel entry as BLOCK_M pixels (``_reinterpret``): Triton 3.6 compiles
# it; 3.8 has the method too but refuses a view larger than its source ("source and result must
# have the same logical storage size"), and 3.9 has none. Only the release where it compiles
# turns the variant on (others run v2).
AVAILABLE = triton.__version__.startswith("3.6.")

# elements after each pixel's BLOCK_K channels: 16 bytes at 16 bits, so the 8 rows (pixels) a
# warp's A-operand load touches at once start in 8 different 4-bank groups (pitch 80 or 144 B)
BANK_PAD = 8


@gluon.jit
def _view(buf, start, length: gl.constexpr, layout: gl.constexpr):
    """``[length, BLOCK_K]`` rows of a one-pixel-per-entry buffer from pixel ``start`` on."""
    return buf.index(start)._reinterpret(buf.dtype, [length, buf.shape[2]], layout)


@gluon.constexpr_function
def _padded(block_k, rows):
    """The bank-padded layout of ``rows`` pixels of ``block_k`` channels."""
    return gl.PaddedSharedLayout.with_identity_for([[block_k, BANK_PAD]], [rows, block_k], [1, 0])


@gluon.jit
def virtual_source(
    v,
    py: gl.constexpr,
    px: gl.constexpr,
    HV: gl.constexpr,
    WV: gl.constexpr,
    ROWS: gl.constexpr,
    COLS: gl.constexpr,
    N,
    SH: gl.constexpr,
    SW: gl.constexpr,
):
    """Input pixel (image, row, col) of virtual index ``v`` of plane (py, px) and whether it
    is one (else the virtual grid holds a zero there). Arithmetic only: the torch emulation
    calls the same function on tensors (``virtual_source.fn``)."""
    img = v // (HV * WV)
    j = (v // WV) % HV
    c = v % WV
    ok = (v >= 0) & (img < N) & (j < ROWS) & (c < COLS)
    return img, j * SH + py, c * SW + px, ok


@gluon.jit
def tap_mask(u, AH: gl.constexpr, AW: gl.constexpr, HV: gl.constexpr, WV: gl.constexpr):
    """Dense grid: whether virtual output ``u`` keeps the tap shifted by (AH, AW), i.e. its
    read stays inside the image (the grid has no zero border to catch it)."""
    oh = (u // WV) % HV
    ow = u % WV
    return (oh + AH >= 0) & (oh + AH < HV) & (ow + AW >= 0) & (ow + AW < WV)


@gluon.jit
def _keep_rows(a, keep):
    """``a`` with the rows where ``keep`` is False zeroed: one 32-bit AND per register (two
    16-bit elements; a select on the elements unpacks and repacks every pair, 4 instructions
    per register)."""
    bits = gl.where(keep, -1, 0).to(gl.int16)[:, None] + gl.zeros_like(a).to(gl.int16)
    return gl.inline_asm_elementwise(
        "and.b32 $0, $1, $2;", "=r,r,r", [a, bits], dtype=a.dtype, is_pure=True, pack=2
    )


@gluon.jit
def virtual_output(u, HV: gl.constexpr, WV: gl.constexpr, HO: gl.constexpr, WO: gl.constexpr, N):
    """Output pixel (image, row, col) of virtual output ``u`` and whether it is one."""
    img = u // (HV * WV)
    oh = (u // WV) % HV
    ow = u % WV
    return img, oh, ow, (img < N) & (oh < HO) & (ow < WO)


@gluon.jit
def _load_block(stage, bsm, s, cblk, x_ptr, w_ptr, u0, N, C_in: gl.constexpr, C_b,
                sx_n, sx_h, sx_w, sw_o, sw_h, sw_w, G: gl.constexpr, BLOCK_M: gl.constexpr,
                BLOCK_K: gl.constexpr, BLOCK_CB: gl.constexpr, WIN: gl.constexpr,
                BASIS: gl.constexpr):  # fmt: skip
    """cp.async C_in block ``cblk``'s window of the tile at virtual output ``u0`` (every
    plane) into stage ``s`` (unless ``BASIS == 2``), and its basis tiles (every tap) into
    ``bsm[s * TAPS + t]`` (``BASIS`` 1 or 2); one commit group."""
    num_warps: gl.constexpr = gl.num_warps()
    fill: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_K // 8), BLOCK_K // 8], [num_warps, 1], [1, 0]
    )
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    HV: gl.constexpr = hs.pitch(G, 0)
    WV: gl.constexpr = hs.pitch(G, 1)
    NP: gl.constexpr = hs.num_planes(G)
    TAPS: gl.constexpr = G[4] * G[5]
    c0 = cblk * BLOCK_K
    if BASIS != 2:
        kk = c0 + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, fill))
        k_ok = kk < C_in
        for p in gl.static_range(NP):
            for i in gl.static_range(hs.num_pieces(G, BLOCK_M, p)):
                v = (
                    u0
                    + hs.window_first(G, BLOCK_M, p)
                    + hs.piece_start(G, BLOCK_M, p, i)
                    + gl.arange(0, hs.piece_len(G, BLOCK_M, p, i), layout=gl.SliceLayout(1, fill))
                )
                img, ih, iw, ok = virtual_source(
                    v,
                    hs.plane_field(G, p, 0),
                    hs.plane_field(G, p, 1),
                    HV,
                    WV,
                    hs.plane_field(G, p, 2),
                    hs.plane_field(G, p, 3),
                    N,
                    G[6],
                    G[7],
                )
                src = x_ptr + (img * sx_n + ih * sx_h + iw * sx_w)[:, None] + kk[None, :]
                dst = _view(
                    stage,
                    (s * NP + p) * WIN + hs.piece_start(G, BLOCK_M, p, i),
                    hs.piece_len(G, BLOCK_M, p, i),
                    plain,
                )
                _async_copy(dst, src, mask=ok[:, None] & k_ok[None, :])  # l2: activations
    if BASIS != 0:
        cb = gl.arange(0, BLOCK_CB, layout=gl.SliceLayout(1, fill))
        kb = c0 + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, fill))
        b_ok = (cb < C_b)[:, None] & (kb < C_in)[None, :]
        b_rows = w_ptr + cb[:, None] * sw_o + kb[None, :]
        for t in gl.static_range(TAPS):
            _async_copy(
                bsm.index(s * TAPS + t), b_rows + (t // G[5]) * sw_h + (t % G[5]) * sw_w, mask=b_ok
            )
    _cp.commit_group()


@gluon.jit
def _window_and_basis(stage, bsm, s, it, pid, n_prog, nblk, c_lo, x_ptr, w_ptr, N, C_b,
                      sx_n, sx_h, sx_w, sw_o, sw_h, sw_w, G: gl.constexpr,
                      C_in: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr,
                      BLOCK_CB: gl.constexpr, WIN: gl.constexpr,
                      BASIS: gl.constexpr):  # fmt: skip
    """Copies of step ``it`` (this program's ``it // nblk``-th tile, C_in block
    ``c_lo + it % nblk``) into stage ``s``: the window, and the basis tiles if ``BASIS``."""
    u0 = (pid + (it // nblk) * n_prog) * BLOCK_M
    _load_block(
        stage,
        bsm,
        s,
        c_lo + it % nblk,
        x_ptr,
        w_ptr,
        u0,
        N,
        C_in,
        C_b,
        sx_n,
        sx_h,
        sx_w,
        sw_o,
        sw_h,
        sw_w,
        G,
        BLOCK_M,
        BLOCK_K,
        BLOCK_CB,
        WIN,
        BASIS,
    )


@gluon.jit
def basis_conv_fwd_halo_kernel(
    x_ptr,  # (N, C_in, H, W), NHWC in memory (sx_c == 1)
    w_ptr,  # basis (C_b, C_in, KH, KW), C_in-contiguous (sw_c == 1)
    c_ptr, b_ptr, p_ptr, y_ptr, z_ptr, ws_ptr,  # as basis_conv_fwd_kernel
    M, M_KEY, N, C_b, C_rest,
    sx_n, sx_c, sx_h, sx_w,
    sw_o, sw_c, sw_h, sw_w,
    sc_o, sc_b,
    sy_n, sy_c, sy_h, sy_w,
    sz_n, sz_c, sz_h, sz_w,
    # the geometry is compile-time: it fixes the schedule (halo_schedule.py)
    C_in: gl.constexpr, H: gl.constexpr, W: gl.constexpr, Ho: gl.constexpr,
    Wo: gl.constexpr, KH: gl.constexpr, KW: gl.constexpr, stride_h: gl.constexpr,
    stride_w: gl.constexpr, pad_h: gl.constexpr, pad_w: gl.constexpr, dil_h: gl.constexpr,
    dil_w: gl.constexpr,
    HAS_BIAS: gl.constexpr, HAS_PERM: gl.constexpr, KEEP_BASIS: gl.constexpr,
    STORE_Z: gl.constexpr, INT64: gl.constexpr, PRECISION: gl.constexpr,
    SPLIT_K: gl.constexpr,
    BLOCK_CB: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr, BLOCK_N: gl.constexpr,
    RESIDENT: gl.constexpr,
):  # fmt: skip
    """Tiles ``pid, pid + programs, ...`` of the virtual grid (one per program unless
    ``RESIDENT``: then a persistent program loads the whole basis once, keeps it in shared
    memory, and runs its tiles), each over this split-K slice's C_in blocks. The steps (tile, C_in
    block) are numbered across tiles so that the next step's copies -- the next tile's first
    block after a tile's last -- always fly while this one computes."""
    G: gl.constexpr = (H, W, Ho, Wo, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    HV: gl.constexpr = hs.pitch(G, 0)
    WV: gl.constexpr = hs.pitch(G, 1)
    NP: gl.constexpr = hs.num_planes(G)
    WIN: gl.constexpr = hs.window_stride(G, BLOCK_M)
    TAPS: gl.constexpr = KH * KW
    NCB: gl.constexpr = (C_in + BLOCK_K - 1) // BLOCK_K
    DENSE: gl.constexpr = hs.dense(G)
    num_warps: gl.constexpr = gl.num_warps()
    dtype = x_ptr.dtype.element_ty

    stage = gl.allocate_shared_memory(
        dtype, [2 * NP * WIN, 1, BLOCK_K], gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    )
    halo = gl.allocate_shared_memory(dtype, [NP * WIN, 1, BLOCK_K], _padded(BLOCK_K, 1))
    b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_CB, BLOCK_K], dtype)
    # the basis tiles of every tap: double-buffered per C_in block, or all blocks (RESIDENT)
    bsm = gl.allocate_shared_memory(
        dtype, [(NCB if RESIDENT else 2) * TAPS, BLOCK_CB, BLOCK_K], b_layout
    )
    ct_smem = gl.allocate_shared_memory(
        dtype, [BLOCK_N, BLOCK_CB], gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_CB], dtype)
    )

    mma: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_CB, 16]
    )
    dot_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    fill: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_K // 8), BLOCK_K // 8], [num_warps, 1], [1, 0]
    )
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    padded: gl.constexpr = _padded(BLOCK_K, BLOCK_M)
    out_l: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_CB // 8), BLOCK_CB // 8], [num_warps, 1], [1, 0]
    )

    pid = gl.program_id(0)
    n_prog = gl.num_programs(0)
    my_tiles = (gl.cdiv(N * HV * WV, BLOCK_M) - pid + n_prog - 1) // n_prog
    # split-K splits the C_in blocks (each slice runs all taps of its blocks)
    if SPLIT_K == 1:
        c_lo = 0
        c_hi = NCB
    else:
        per = gl.cdiv(NCB, SPLIT_K)
        c_lo = gl.program_id(1) * per
        c_hi = gl.minimum(c_lo + per, NCB)
    nblk = gl.maximum(c_hi - c_lo, 0)
    steps = my_tiles * nblk

    if RESIDENT:  # every C_in block's basis tiles, once (SPLIT_K == 1 here: prune)
        for cb0 in range(0, NCB):
            _load_block(
                stage,
                bsm,
                cb0,
                cb0,
                x_ptr,
                w_ptr,
                0,
                N,
                C_in,
                C_b,
                sx_n,
                sx_h,
                sx_w,
                sw_o,
                sw_h,
                sw_w,
                G,
                BLOCK_M,
                BLOCK_K,
                BLOCK_CB,
                WIN,
                2,
            )
    if steps > 0:
        _window_and_basis(
            stage,
            bsm,
            0,
            0,
            pid,
            n_prog,
            nblk,
            c_lo,
            x_ptr,
            w_ptr,
            N,
            C_b,
            sx_n,
            sx_h,
            sx_w,
            sw_o,
            sw_h,
            sw_w,
            G,
            C_in,
            BLOCK_M,
            BLOCK_K,
            BLOCK_CB,
            WIN,
            0 if RESIDENT else 1,
        )

    for ti in range(0, my_tiles):
        u0 = (pid + ti * n_prog) * BLOCK_M
        u_a = u0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dot_a))  # A operand rows
        acc = gl.zeros([BLOCK_M, BLOCK_CB], gl.float32, mma)
        for cblk in range(c_lo, c_hi):
            it = ti * nblk + cblk - c_lo  # the step: its stage, and the next step's copies
            s = it % 2
            if it + 1 < steps:  # the next step's copies fly while this one computes
                _window_and_basis(
                    stage,
                    bsm,
                    1 - s,
                    it + 1,
                    pid,
                    n_prog,
                    nblk,
                    c_lo,
                    x_ptr,
                    w_ptr,
                    N,
                    C_b,
                    sx_n,
                    sx_h,
                    sx_w,
                    sw_o,
                    sw_h,
                    sw_w,
                    G,
                    C_in,
                    BLOCK_M,
                    BLOCK_K,
                    BLOCK_CB,
                    WIN,
                    0 if RESIDENT else 1,
                )
                _cp.wait_group(1)
            else:
                _cp.wait_group(0)
            # this thread's cp.async writes (generic proxy) before wgmma reads the basis
            # tiles (async proxy); then every thread's are complete
            fence_async_shared()
            _barrier()
            # staging (plain) -> halo (bank-padded), once per step: read by ld.shared only
            for p in gl.static_range(NP):
                for i in gl.static_range(hs.num_pieces(G, BLOCK_M, p)):
                    vals = _view(
                        stage,
                        (s * NP + p) * WIN + hs.piece_start(G, BLOCK_M, p, i),
                        hs.piece_len(G, BLOCK_M, p, i),
                        plain,
                    ).load(fill)
                    _view(
                        halo,
                        p * WIN + hs.piece_start(G, BLOCK_M, p, i),
                        hs.piece_len(G, BLOCK_M, p, i),
                        _padded(BLOCK_K, hs.piece_len(G, BLOCK_M, p, i)),
                    ).store(vals)
            _barrier()
            # all taps from the halo: A through registers, B (this tap's basis tile) from smem
            b0 = cblk * TAPS if RESIDENT else s * TAPS
            a_next = _view(
                halo, hs.tap_plane(G, 0) * WIN + hs.tap_start(G, BLOCK_M, 0), BLOCK_M, padded
            ).load(dot_a)
            for t in gl.static_range(TAPS):
                a = a_next
                if DENSE:  # zero the rows whose read crosses an image edge (dense grid)
                    keep = tap_mask(u_a, hs.tap_shift(G, t, 0), hs.tap_shift(G, t, 1), HV, WV)
                    a = _keep_rows(a, keep)
                acc = warpgroup_mma(a, bsm.index(b0 + t).permute((1, 0)), acc, is_async=True)
                if t + 1 < TAPS:
                    a_next = _view(
                        halo,
                        hs.tap_plane(G, t + 1) * WIN + hs.tap_start(G, BLOCK_M, t + 1),
                        BLOCK_M,
                        padded,
                    ).load(dot_a)
                acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a))
            _barrier()  # every warp is done with this step's halo and stage before reuse

        # the tile's outputs
        u = u0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_l))
        img, oh, ow, m_ok = virtual_output(u, HV, WV, Ho, Wo, N)
        if INT64:
            img = img.to(gl.int64)
        if SPLIT_K == 1:
            fwd_epilogue(
                acc,
                img,
                oh,
                ow,
                m_ok,
                ct_smem,
                c_ptr,
                b_ptr,
                p_ptr,
                y_ptr,
                z_ptr,
                C_b,
                C_rest,
                sc_o,
                sc_b,
                sy_n,
                sy_c,
                sy_h,
                sy_w,
                sz_n,
                sz_c,
                sz_h,
                sz_w,
                HAS_BIAS,
                HAS_PERM,
                KEEP_BASIS,
                STORE_Z,
                BLOCK_M,
                BLOCK_CB,
                BLOCK_N,
            )
        else:
            # partial Z of this C_in range (zeros for an empty slice), rows in v2's order
            rows = gl.program_id(1) * M + (img * Ho + oh) * Wo + ow
            offs_cb = gl.arange(0, BLOCK_CB, layout=gl.SliceLayout(0, out_l))
            gl.store(
                ws_ptr + rows[:, None] * BLOCK_CB + offs_cb[None, :],
                gl.convert_layout(acc, out_l),
                mask=m_ok[:, None],
            )
