"""Backward kernels (v2: at most 4 launches, deterministic, no atomics, no zero-fills).

With G = dL/dY, G_b = G[:, :C_b], G_r = G[:, C_b:] (keep-basis form; the full form has no G_b
and G_r = G), Z the basis outputs:

1. ``basis_conv_grad_z_kernel`` reads G once and writes dZ = G_b + coeff^T G_r (NHWC), and
   per-program fp32 partial sums of d coeff = sum_pixels G_r (x) Z and d bias = sum_pixels G.
   Z is read from the forward output (Z_FROM_OUT, keep-basis: out[:, perm[:C_b]] - bias) or
   from the Z the forward saved (the full form, and keep-basis with a bias in a 16-bit dtype,
   where out - bias would carry the rounding error ulp(|Z + bias|) instead of ulp(|Z|)). It
   also copies the basis into the K-contiguous layout grad_x reads ((KH*KW, C_in, C_b), C_b
   fastest), so that copy costs no launch of its own.
2. ``basis_conv_grad_x_kernel``: dX = conv_transpose(dZ, B) as ONE flattened K loop over
   (tap, C_b block) that Triton software-pipelines (9 separate tap loops would each drain).
   Any stride is split into sub-pixel phases: an input pixel's parity (ih % s_h, iw % s_w)
   decides which taps reach an output pixel, so each phase loops only over its own taps and no
   masked-out tap is multiplied (stride 2, 3x3: 4, 2, 2, 1 taps instead of 9 for every phase).
   All phases run in one grid (phase = program_id(0) // tiles).
3. ``basis_conv_wgrad_kernel``: d basis with x stationary. The GEMM is
   dB[(tap, cb), ci] = sum_{input pixels p} dZ[o(p, tap), cb] * x[p, ci]: one x tile
   [BLOCK_P, BLOCK_X] is loaded per K step and serves every (tap, cb) row of the program's
   BLOCK_A rows (BLOCK_A // C_b taps at once), so x is read ceil(taps*C_b / BLOCK_A) times
   instead of once per tap; the small dZ (C_b = C_out/4 channels) is the gathered operand.
   Stride > 1 uses the same phases as grad_x (each tap belongs to exactly one phase), so no
   zero rows are multiplied. The pixel reduction is split in SPLIT slices, each writing its own
   fp32 partial (no atomics).
4. ``bwd_reduce_kernel`` sums the partials of up to three buffers (d basis, d coeff, d bias)
   over their slice axis in a fixed order and writes the final dtype: bitwise identical results
   run to run, whatever the scheduling.
"""

import triton
import triton.language as tl


@triton.jit
def _phase_taps(ph, pad, dil, stride, K: tl.constexpr):
    """Taps k of one axis that reach an output pixel from input pixels with i % stride == ph:
    (ph + pad - k*dil) must be a multiple of stride. They form k0, k0 + step, ... (step =
    stride / gcd(stride, dil), passed by the launcher); returns (first valid k, count)."""
    k0 = K + 0 * ph  # sentinel K = none found (a tensor, so the loop below can update it)
    cnt = 0 * ph
    for k in tl.static_range(K):
        # + K*dil*stride keeps the dividend positive (C-style % on negatives)
        ok = ((ph + pad - k * dil + K * dil * stride) % stride) == 0
        cnt += ok.to(tl.int32)
        k0 = tl.where(ok & (k0 == K), k, k0)
    return k0, cnt


@triton.jit
def basis_conv_grad_z_kernel(
    g_ptr,  # G (N, C_out, Ho, Wo), any strides
    c_ptr,  # coeff (C_rest, C_b)
    dz_ptr,  # dZ out (N, C_b, Ho, Wo) -- written only if STORE_DZ
    z_ptr,  # Z source (NEED_DC): out (N, C_out, ..) if Z_FROM_OUT, else Z saved (N, C_b, ..)
    b_ptr,  # bias (C_out,), output order -- read only if NEED_DC and Z_FROM_OUT and HAS_BIAS
    p_ptr,  # perm (C_out,): computed channel c lives in G's channel perm[c] (HAS_PERM)
    wsc_ptr,  # fp32 (P, C_rest, C_b): d coeff partial of each program (NEED_DC)
    wsb_ptr,  # fp32 (P, C_out): d bias partial of each program, output order (NEED_DBIAS)
    w_ptr,  # basis (C_b, C_in, KH, KW), any strides (COPY_W)
    wt_ptr,  # out (KH*KW, C_in, C_b) contiguous: the K-contiguous basis for grad_x (COPY_W)
    M,
    M_KEY,
    C_b,
    C_rest,
    C_in,
    KW,
    LW,
    CHUNK,
    W_CHUNK,
    Ho,
    Wo,
    sg_n,
    sg_c,
    sg_h,
    sg_w,
    sc_o,
    sc_b,
    sd_n,
    sd_c,
    sd_h,
    sd_w,
    sz_n,
    sz_c,
    sz_h,
    sz_w,
    sw_o,
    sw_c,
    sw_h,
    sw_w,
    KEEP_BASIS: tl.constexpr,
    STORE_DZ: tl.constexpr,
    NEED_DC: tl.constexpr,
    NEED_DBIAS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PERM: tl.constexpr,
    Z_FROM_OUT: tl.constexpr,
    COPY_W: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_CB: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    p_lo = pid * CHUNK
    if INT64:
        p_lo = p_lo.to(tl.int64)
    p_hi = tl.minimum(p_lo + CHUNK, M)
    hw = Ho * Wo
    offs_cb = tl.arange(0, BLOCK_CB)
    cb_ok = offs_cb < C_b
    offs_n = tl.arange(0, BLOCK_N)
    if KEEP_BASIS:
        if HAS_PERM:
            oc_b = tl.load(p_ptr + offs_cb, mask=cb_ok, other=0)
        else:
            oc_b = offs_cb
        c_off = C_b
    else:
        oc_b = offs_cb
        c_off = 0
    C_out = C_rest + c_off
    if NEED_DC:
        if Z_FROM_OUT:
            z_ch = oc_b  # Z = out[:, perm[:C_b]] - bias[perm[:C_b]]
            if HAS_BIAS:
                z_shift = tl.load(b_ptr + oc_b, mask=cb_ok, other=0.0).to(tl.float32)
        else:
            z_ch = offs_cb
    dbias_b = tl.zeros((BLOCK_CB,), dtype=tl.float32)

    for p0 in range(p_lo, p_hi, BLOCK_M):
        offs_m = p0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < p_hi
        n = offs_m // hw
        rem = offs_m % hw
        oh = rem // Wo
        ow = rem % Wo
        g_pix = g_ptr + n * sg_n + oh * sg_h + ow * sg_w
        mcb = m_ok[:, None] & cb_ok[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_CB), dtype=tl.float32)
        if KEEP_BASIS:
            gb = tl.load(g_pix[:, None] + oc_b[None, :] * sg_c, mask=mcb, other=0.0)
            acc += gb.to(tl.float32)
            if NEED_DBIAS:
                dbias_b += tl.sum(gb.to(tl.float32), axis=0)
        if NEED_DC:
            zt = tl.load(
                (z_ptr + n * sz_n + oh * sz_h + ow * sz_w)[:, None] + z_ch[None, :] * sz_c,
                mask=mcb,
                other=0.0,
            )
            if Z_FROM_OUT and HAS_BIAS:
                zt = tl.where(mcb, zt.to(tl.float32) - z_shift[None, :], 0.0)
            zt = zt.to(g_ptr.dtype.element_ty)
        # The partial rows below are read-modify-written by this program only, once per pixel
        # block; the barrier orders the previous block's stores (maybe by other threads of the
        # CTA, the tile layouts differ) before this block's loads.
        tl.debug_barrier()
        # (a vector, not a scalar: the interpreter rejects a scalar comparison as a mask)
        not_first = (tl.zeros((BLOCK_N,), dtype=tl.int32) + p0) > p_lo
        for j0 in range(0, C_rest, BLOCK_N):
            jj = j0 + offs_n
            j_ok = jj < C_rest
            if HAS_PERM:
                oc = tl.load(p_ptr + c_off + jj, mask=j_ok, other=0)
            else:
                oc = c_off + jj
            gr = tl.load(
                g_pix[:, None] + oc[None, :] * sg_c, mask=m_ok[:, None] & j_ok[None, :], other=0.0
            )
            if STORE_DZ:
                cj = tl.load(
                    c_ptr + jj[:, None] * sc_o + offs_cb[None, :] * sc_b,
                    mask=j_ok[:, None] & cb_ok[None, :],
                    other=0.0,
                )
                acc = tl.dot(gr, cj, acc, input_precision=PRECISION)
            if NEED_DC:
                part = tl.dot(tl.trans(gr), zt, input_precision=PRECISION)  # (BLOCK_N, C_b)
                jcb = j_ok[:, None] & cb_ok[None, :]
                wp = wsc_ptr + pid * (C_rest * C_b) + jj[:, None] * C_b + offs_cb[None, :]
                prev = tl.load(wp, mask=jcb & not_first[:, None], other=0.0)
                tl.store(wp, prev + part, mask=jcb)
            if NEED_DBIAS:
                bp = wsb_ptr + pid * C_out + oc
                prev_b = tl.load(bp, mask=j_ok & not_first, other=0.0)
                tl.store(bp, prev_b + tl.sum(gr.to(tl.float32), axis=0), mask=j_ok)
        if STORE_DZ:
            dz_pix = dz_ptr + n * sd_n + oh * sd_h + ow * sd_w
            tl.store(
                dz_pix[:, None] + offs_cb[None, :] * sd_c, acc.to(dz_ptr.dtype.element_ty), mask=mcb
            )
    if NEED_DBIAS and KEEP_BASIS:
        tl.store(wsb_ptr + pid * C_out + oc_b, dbias_b, mask=cb_ok)

    if COPY_W:
        # wt[tap, ci, cb] = basis[cb, ci, kh, kw]: W_CHUNK elements per program (tiny: at most
        # 128 * 512 * 9 elements in all), so grad_x's basis tiles are 16-byte vector loads.
        e_lo = pid * W_CHUNK
        e_hi = tl.minimum(e_lo + W_CHUNK, LW)
        for e0 in range(e_lo, e_hi, BLOCK_W):
            e = e0 + tl.arange(0, BLOCK_W)
            e_ok = e < e_hi
            cb = e % C_b
            t = e // C_b
            ci = t % C_in
            tap = t // C_in
            v = tl.load(
                w_ptr + cb * sw_o + ci * sw_c + (tap // KW) * sw_h + (tap % KW) * sw_w,
                mask=e_ok,
                other=0.0,
            )
            tl.store(wt_ptr + e, v, mask=e_ok)


@triton.jit
def basis_conv_grad_x_kernel(
    dz_ptr,  # dZ (N, C_b, Ho, Wo), any strides (the launcher passes NHWC)
    wt_ptr,  # basis, K-contiguous: (KH*KW, C_in, C_b), C_b fastest
    dx_ptr,  # dX out (N, C_in, H, W)
    N,
    M_KEY,
    C_in,
    H,
    W,
    C_b,
    Ho,
    Wo,
    sd_n,
    sd_c,
    sd_h,
    sd_w,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    step_h,
    step_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Programs: (phase, pixel tile) flattened on axis 0; every phase gets the tile count of
    # phase (0, 0), the largest; tiles past a smaller phase's end are fully masked.
    tiles = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)
    pid0 = tl.program_id(0)
    phase = pid0 // tiles
    tile = pid0 % tiles
    pid_n = tl.program_id(1)
    ph = phase // stride_w
    pw = phase % stride_w
    Hp = (H - ph + stride_h - 1) // stride_h  # input rows of this phase
    Wp = (W - pw + stride_w - 1) // stride_w
    kh0, nth = _phase_taps(ph, pad_h, dil_h, stride_h, KH)
    kw0, ntw = _phase_taps(pw, pad_w, dil_w, stride_w, KW)

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # pixels of this phase
    if INT64:
        offs_m = offs_m.to(tl.int64)
    m_ok = offs_m < N * Hp * Wp
    hwp = Hp * Wp
    n = offs_m // hwp
    rem = offs_m % hwp
    ih = (rem // Wp) * stride_h + ph
    iw = (rem % Wp) * stride_w + pw
    offs_ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = offs_ci < C_in
    offs_k = tl.arange(0, BLOCK_K)
    dz_img = dz_ptr + n * sd_n

    n_cbb = tl.cdiv(C_b, BLOCK_K)
    ntw1 = tl.maximum(ntw, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # ONE loop over (tap of this phase, C_b block): Triton pipelines it as a whole.
    for k in range(0, nth * ntw * n_cbb):
        t = k // n_cbb
        kk = (k % n_cbb) * BLOCK_K + offs_k
        kh = kh0 + (t // ntw1) * step_h
        kw = kw0 + (t % ntw1) * step_w
        th = ih + pad_h - kh * dil_h  # a multiple of stride_h for this phase's taps
        tw = iw + pad_w - kw * dil_w
        oh = th // stride_h
        ow = tw // stride_w
        ok = m_ok & (th >= 0) & (oh < Ho) & (tw >= 0) & (ow < Wo)
        k_ok = kk < C_b
        a = tl.load(
            dz_img[:, None] + (oh * sd_h + ow * sd_w)[:, None] + kk[None, :] * sd_c,
            mask=ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        tap = kh * KW + kw
        b = tl.load(
            wt_ptr + (tap * C_in + offs_ci[None, :]) * C_b + kk[:, None],
            mask=k_ok[:, None] & ci_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    dx_pix = dx_ptr + n * sx_n + ih * sx_h + iw * sx_w
    tl.store(
        dx_pix[:, None] + offs_ci[None, :] * sx_c,
        acc.to(dx_ptr.dtype.element_ty),
        mask=m_ok[:, None] & ci_ok[None, :],
    )


@triton.jit
def basis_conv_wgrad_kernel(
    dz_ptr,  # dZ (N, C_b, Ho, Wo), any strides (NHWC from the launcher)
    x_ptr,  # x (N, C_in, H, W), any strides
    ws_ptr,  # fp32 (SPLIT, C_b, C_in, KH, KW) contiguous: one partial per pixel slice
    N,
    M_KEY,
    C_in,
    H,
    W,
    C_b,
    Ho,
    Wo,
    SPLIT,
    sd_n,
    sd_c,
    sd_h,
    sd_w,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    step_h,
    step_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_r = tl.program_id(0)  # tile of the (tap of this phase, cb) rows
    pid_x = tl.program_id(1)  # tile of C_in
    pid_ps = tl.program_id(2)  # (phase, pixel slice)
    phase = pid_ps // SPLIT
    sl = pid_ps % SPLIT
    ph = phase // stride_w
    pw = phase % stride_w
    Hp = (H - ph + stride_h - 1) // stride_h
    Wp = (W - pw + stride_w - 1) // stride_w
    kh0, nth = _phase_taps(ph, pad_h, dil_h, stride_h, KH)
    kw0, ntw = _phase_taps(pw, pad_w, dil_w, stride_w, KW)
    ntw1 = tl.maximum(ntw, 1)

    offs_r = pid_r * BLOCK_A + tl.arange(0, BLOCK_A)
    r_ok = offs_r < nth * ntw * C_b
    t = offs_r // C_b
    cb = offs_r % C_b
    kh = kh0 + (t // ntw1) * step_h
    kw = kw0 + (t % ntw1) * step_w
    offs_x = pid_x * BLOCK_X + tl.arange(0, BLOCK_X)
    x_ok = offs_x < C_in

    Mp = N * Hp * Wp
    hwp = Hp * Wp
    chunk = tl.cdiv(tl.cdiv(Mp, BLOCK_P), SPLIT) * BLOCK_P
    p_lo = sl * chunk
    p_hi = tl.minimum(p_lo + chunk, Mp)
    acc = tl.zeros((BLOCK_A, BLOCK_X), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        if INT64:
            offs_p = offs_p.to(tl.int64)
        p_ok = offs_p < p_hi
        n = offs_p // hwp
        rem = offs_p % hwp
        ih = (rem // Wp) * stride_h + ph
        iw = (rem % Wp) * stride_w + pw
        # the stationary operand: one x tile, used by all BLOCK_A (tap, cb) rows
        xt = tl.load(
            x_ptr + (n * sx_n + ih * sx_h + iw * sx_w)[:, None] + offs_x[None, :] * sx_c,
            mask=p_ok[:, None] & x_ok[None, :],
            other=0.0,
        )
        th = ih[None, :] + pad_h - (kh * dil_h)[:, None]  # (BLOCK_A, BLOCK_P)
        tw = iw[None, :] + pad_w - (kw * dil_w)[:, None]
        oh = th // stride_h
        ow = tw // stride_w
        ok = r_ok[:, None] & p_ok[None, :] & (th >= 0) & (oh < Ho) & (tw >= 0) & (ow < Wo)
        at = tl.load(
            dz_ptr + n[None, :] * sd_n + oh * sd_h + ow * sd_w + (cb * sd_c)[:, None],
            mask=ok,
            other=0.0,
        )
        acc = tl.dot(at, xt, acc, input_precision=PRECISION)
    # Every (slice, tap) is written by exactly one program (each tap has one phase), zeros
    # included when the slice is empty: the reduce reads no uninitialised partial.
    L = C_b * C_in * KH * KW
    tap = kh * KW + kw
    o = ws_ptr + sl * L + (cb * (C_in * KH * KW) + tap)[:, None] + offs_x[None, :] * (KH * KW)
    tl.store(o, acc, mask=r_ok[:, None] & x_ok[None, :])


@triton.jit
def _reduce_slices(ws_ptr, o_ptr, S, L, tile, BLOCK: tl.constexpr):
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    ok = offs < L
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, S):  # fixed order: deterministic
        acc += tl.load(ws_ptr + s * L + offs, mask=ok, other=0.0)
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=ok)


@triton.jit
def bwd_reduce_kernel(
    w1_ptr,
    o1_ptr,
    S1,
    L1,  # fp32 (S1, L1) partials -> o1 (L1,) in o1's dtype; L1 = 0: none
    w2_ptr,
    o2_ptr,
    S2,
    L2,
    w3_ptr,
    o3_ptr,
    S3,
    L3,
    BLOCK: tl.constexpr,
):
    """Up to three sums over a slice axis in one launch (d basis, d coeff, d bias)."""
    pid = tl.program_id(0)
    t1 = tl.cdiv(L1, BLOCK)
    t2 = tl.cdiv(L2, BLOCK)
    if pid < t1:
        _reduce_slices(w1_ptr, o1_ptr, S1, L1, pid, BLOCK)
    elif pid < t1 + t2:
        _reduce_slices(w2_ptr, o2_ptr, S2, L2, pid - t1, BLOCK)
    else:
        _reduce_slices(w3_ptr, o3_ptr, S3, L3, pid - t1 - t2, BLOCK)
