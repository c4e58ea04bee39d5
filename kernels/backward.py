"""Backward kernels. With G = dL/dY, G_b = G[:, :C_b], G_r = G[:, C_b:] (keep-basis form):

* ``basis_conv_grad_z_kernel``: dZ = G_b + coeff^T G_r (keep-basis) or coeff^T G (full), per
  pixel, plus d bias = sum of G over pixels (atomic fp32 adds; G is read once for both).
* ``basis_conv_grad_x_kernel``: dX = conv_transpose(dZ, B), implicit GEMM over K = C_b*KH*KW
  for each *input* pixel; stride handled by divisibility masks (a tap contributes to input row
  ih iff (ih + pad - kh*dil) is a non-negative multiple of the stride), never by zero insertion.
* ``channel_wgrad_kernel``: out[a, b, kh, kw] += sum_p A[p, a] * X[shift_tap(p), b], a split
  reduction over pixels (grid axis 2) with fp32 atomic adds into a zeroed buffer. It computes
  d basis (A = dZ, X = x, the conv's taps) and d coeff (A = G_r, X = Z as a 1x1 "conv"; in the
  keep-basis form Z = Y[:, :C_b] - bias, so X comes with a per-channel SHIFT and nothing extra
  was saved in the forward).
"""

import triton
import triton.language as tl


@triton.jit
def basis_conv_grad_z_kernel(
    g_ptr,  # G (N, C_out, Ho, Wo), any strides
    c_ptr,  # coeff (C_rest, C_b)
    dz_ptr,  # dZ out (N, C_b, Ho, Wo) -- written only if STORE_DZ
    db_ptr,  # d bias, fp32 (C_out,), zero-initialised -- accumulated only if NEED_DBIAS
    p_ptr,  # perm (C_out,): computed channel c lives in G's channel perm[c] (HAS_PERM)
    M, C_b, C_rest, Ho, Wo,
    sg_n, sg_c, sg_h, sg_w,
    sc_o, sc_b,
    sd_n, sd_c, sd_h, sd_w,
    KEEP_BASIS: tl.constexpr, STORE_DZ: tl.constexpr, NEED_DBIAS: tl.constexpr,
    HAS_PERM: tl.constexpr, INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_CB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64:
        offs_m = offs_m.to(tl.int64)
    m_ok = offs_m < M
    hw = Ho * Wo
    n = offs_m // hw
    rem = offs_m % hw
    oh = rem // Wo
    ow = rem % Wo
    g_pix = g_ptr + n * sg_n + oh * sg_h + ow * sg_w
    offs_cb = tl.arange(0, BLOCK_CB)
    cb_ok = offs_cb < C_b

    acc = tl.zeros((BLOCK_M, BLOCK_CB), dtype=tl.float32)
    if KEEP_BASIS:
        if HAS_PERM:
            oc_b = tl.load(p_ptr + offs_cb, mask=cb_ok, other=0)
        else:
            oc_b = offs_cb
        gb = tl.load(
            g_pix[:, None] + oc_b[None, :] * sg_c,
            mask=m_ok[:, None] & cb_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += gb
        if NEED_DBIAS:  # d bias is indexed by output channel
            tl.atomic_add(db_ptr + oc_b, tl.sum(gb, axis=0), mask=cb_ok)
        c_off = C_b
    else:
        c_off = 0
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(0, C_rest, BLOCK_N):
        jj = j0 + offs_n
        j_ok = jj < C_rest
        if HAS_PERM:
            oc = tl.load(p_ptr + c_off + jj, mask=j_ok, other=0)
        else:
            oc = c_off + jj
        gr = tl.load(
            g_pix[:, None] + oc[None, :] * sg_c,
            mask=m_ok[:, None] & j_ok[None, :],
            other=0.0,
        )
        if STORE_DZ:
            cj = tl.load(
                c_ptr + jj[:, None] * sc_o + offs_cb[None, :] * sc_b,
                mask=j_ok[:, None] & cb_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(gr, cj, acc, input_precision=PRECISION)
        if NEED_DBIAS:
            tl.atomic_add(db_ptr + oc, tl.sum(gr.to(tl.float32), axis=0), mask=j_ok)
    if STORE_DZ:
        dz_pix = dz_ptr + n * sd_n + oh * sd_h + ow * sd_w
        tl.store(
            dz_pix[:, None] + offs_cb[None, :] * sd_c,
            acc.to(dz_ptr.dtype.element_ty),
            mask=m_ok[:, None] & cb_ok[None, :],
        )


@triton.jit
def basis_conv_grad_x_kernel(
    dz_ptr,  # dZ (N, C_b, Ho, Wo), any strides
    w_ptr,  # basis (C_b, C_in, KH, KW)
    dx_ptr,  # dX out (N, C_in, H, W)
    M, C_in, H, W, C_b, Ho, Wo,
    sd_n, sd_c, sd_h, sd_w,
    sw_o, sw_c, sw_h, sw_w,
    sx_n, sx_c, sx_h, sx_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels
    if INT64:
        offs_m = offs_m.to(tl.int64)
    m_ok = offs_m < M
    hw = H * W
    n = offs_m // hw
    rem = offs_m % hw
    ih = rem // W
    iw = rem % W
    offs_ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = offs_ci < C_in
    offs_k = tl.arange(0, BLOCK_K)
    dz_img = dz_ptr + n * sd_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in tl.static_range(KH):
        th = ih + pad_h - kh * dil_h
        oh = th // stride_h
        h_ok = m_ok & (th >= 0) & (th % stride_h == 0) & (oh < Ho)
        for kw in tl.static_range(KW):
            tw = iw + pad_w - kw * dil_w
            ow = tw // stride_w
            ok = h_ok & (tw >= 0) & (tw % stride_w == 0) & (ow < Wo)
            dz_pix = dz_img + oh * sd_h + ow * sd_w
            w_tap = w_ptr + kh * sw_h + kw * sw_w
            for k0 in range(0, C_b, BLOCK_K):
                kk = k0 + offs_k
                k_ok = kk < C_b
                a = tl.load(
                    dz_pix[:, None] + kk[None, :] * sd_c,
                    mask=ok[:, None] & k_ok[None, :],
                    other=0.0,
                )
                b = tl.load(
                    w_tap + kk[:, None] * sw_o + offs_ci[None, :] * sw_c,
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
def channel_wgrad_kernel(
    a_ptr,  # A (N, CA, Ho, Wo), any strides: dZ for d basis, G_r for d coeff
    x_ptr,  # X (N, CX, H, W), any strides: x for d basis, Z's source for d coeff
    s_ptr,  # per-channel shift of X, indexed like X's channels -- read only if HAS_SHIFT
    ap_ptr,  # (CA,) channel of A for each a -- read only if A_PERM (G_r under a permutation)
    xp_ptr,  # (CX,) channel of X (and of the shift) for each x -- read only if X_PERM
    o_ptr,  # out, fp32 (CA, CX, KH, KW), zero-initialised, accumulated atomically
    M, CA, CX, H, W, Ho, Wo, SPLIT,
    sa_n, sa_c, sa_h, sa_w,
    sx_n, sx_c, sx_h, sx_w,
    so_a, so_x, so_h, so_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr,
    HAS_SHIFT: tl.constexpr, A_PERM: tl.constexpr, X_PERM: tl.constexpr,
    INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_a = tl.program_id(0)
    pid_xt = tl.program_id(1)  # (X-channel tile, tap) flattened: one tap per program
    pid_s = tl.program_id(2)  # which slice of the pixel reduction
    tiles_x = tl.cdiv(CX, BLOCK_X)
    tap = pid_xt // tiles_x
    pid_x = pid_xt % tiles_x
    kh = tap // KW
    kw = tap % KW

    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < CA
    offs_x = pid_x * BLOCK_X + tl.arange(0, BLOCK_X)
    x_ok = offs_x < CX
    if A_PERM:
        ch_a = tl.load(ap_ptr + offs_a, mask=a_ok, other=0)
    else:
        ch_a = offs_a
    if X_PERM:
        ch_x = tl.load(xp_ptr + offs_x, mask=x_ok, other=0)
    else:
        ch_x = offs_x
    if HAS_SHIFT:
        shift = tl.load(s_ptr + ch_x, mask=x_ok, other=0.0).to(tl.float32)

    chunk = tl.cdiv(tl.cdiv(M, BLOCK_P), SPLIT) * BLOCK_P
    p_lo = pid_s * chunk
    p_hi = tl.minimum(p_lo + chunk, M)
    hw = Ho * Wo
    acc = tl.zeros((BLOCK_A, BLOCK_X), dtype=tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        if INT64:
            offs_p = offs_p.to(tl.int64)
        p_ok = offs_p < p_hi
        n = offs_p // hw
        rem = offs_p % hw
        oh = rem // Wo
        ow = rem % Wo
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        in_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        at = tl.load(
            a_ptr + (n * sa_n + oh * sa_h + ow * sa_w)[None, :] + ch_a[:, None] * sa_c,
            mask=a_ok[:, None] & p_ok[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + (n * sx_n + ih * sx_h + iw * sx_w)[:, None] + ch_x[None, :] * sx_c,
            mask=in_ok[:, None] & x_ok[None, :],
            other=0.0,
        )
        if HAS_SHIFT:
            xs = xt.to(tl.float32) - shift[None, :]
            xt = tl.where(in_ok[:, None] & x_ok[None, :], xs, 0.0).to(xt.dtype)
        acc = tl.dot(at, xt, acc, input_precision=PRECISION)
    tl.atomic_add(
        o_ptr + offs_a[:, None] * so_a + offs_x[None, :] * so_x + kh * so_h + kw * so_w,
        acc,
        mask=a_ok[:, None] & x_ok[None, :],
    )
