"""Forward: implicit-GEMM convolution over the basis filters, coefficient product fused in the
epilogue.

GEMM view: M = N*Ho*Wo output pixels, K = C_in*KH*KW (tap-major: for each (kh, kw), C_in in
BLOCK_K chunks), N = C_b padded to BLOCK_CB (a power of two >= 16, masked). Each program owns
BLOCK_M pixels and the *whole* basis block, so Z = X*B stays in registers: the epilogue stores it
(keep-basis form) and multiplies it by coefficient tiles of BLOCK_N rows for the remaining
channels. Z never goes to memory unless the full form needs it saved for the backward.

Memory formats are handled through strides (NCHW and NHWC alike); padding by masked loads.
"""

import triton
import triton.language as tl


@triton.jit
def basis_conv_fwd_kernel(
    x_ptr,  # (N, C_in, H, W), any strides
    w_ptr,  # basis (C_b, C_in, KH, KW)
    c_ptr,  # coeff (C_rest, C_b)
    b_ptr,  # bias (C_out,), in output-channel order -- read only if HAS_BIAS
    p_ptr,  # perm (C_out,) int: computed channel c is stored to output channel perm[c] (HAS_PERM)
    y_ptr,  # out (N, C_out, Ho, Wo)
    z_ptr,  # saved Z (N, C_b, Ho, Wo) -- written only if STORE_Z
    M, C_in, H, W, C_b, C_rest, Ho, Wo,
    sx_n, sx_c, sx_h, sx_w,
    sw_o, sw_c, sw_h, sw_w,
    sc_o, sc_b,
    sy_n, sy_c, sy_h, sy_w,
    sz_n, sz_c, sz_h, sz_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PERM: tl.constexpr, KEEP_BASIS: tl.constexpr,
    STORE_Z: tl.constexpr, INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_CB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64:
        # n * sx_n passes 2**31 for tensors over 2G elements
        offs_m = offs_m.to(tl.int64)
    m_ok = offs_m < M
    hw = Ho * Wo
    n = offs_m // hw
    rem = offs_m % hw
    oh = rem // Wo
    ow = rem % Wo
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_img = x_ptr + n * sx_n

    offs_cb = tl.arange(0, BLOCK_CB)
    cb_ok = offs_cb < C_b
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_CB), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh * dil_h
        h_ok = m_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * dil_w
            pix_ok = h_ok & (iw >= 0) & (iw < W)
            x_pix = x_img + ih * sx_h + iw * sx_w
            w_tap = w_ptr + kh * sw_h + kw * sw_w
            for c0 in range(0, C_in, BLOCK_K):
                cc = c0 + offs_k
                c_ok = cc < C_in
                a = tl.load(
                    x_pix[:, None] + cc[None, :] * sx_c,
                    mask=pix_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                b = tl.load(
                    w_tap + cc[:, None] * sw_c + offs_cb[None, :] * sw_o,
                    mask=c_ok[:, None] & cb_ok[None, :],
                    other=0.0,
                )
                acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # ---- epilogue: Z is in registers (acc, fp32) -------------------------------------------
    y_pix = y_ptr + n * sy_n + oh * sy_h + ow * sy_w
    if KEEP_BASIS:
        # output channels of the basis block: offs_cb, or perm[offs_cb] (keep-basis conversion
        # of a trained conv keeps the original channel order without a pass over the output)
        if HAS_PERM:
            oc_b = tl.load(p_ptr + offs_cb, mask=cb_ok, other=0)
        else:
            oc_b = offs_cb
        zb = acc
        if HAS_BIAS:
            zb += tl.load(b_ptr + oc_b, mask=cb_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_pix[:, None] + oc_b[None, :] * sy_c,
            zb.to(y_ptr.dtype.element_ty),
            mask=m_ok[:, None] & cb_ok[None, :],
        )
        c_off = C_b
    else:
        c_off = 0
    if STORE_Z:
        z_pix = z_ptr + n * sz_n + oh * sz_h + ow * sz_w
        tl.store(
            z_pix[:, None] + offs_cb[None, :] * sz_c,
            acc.to(z_ptr.dtype.element_ty),
            mask=m_ok[:, None] & cb_ok[None, :],
        )
    # The combination runs in the input dtype, as the unfused pair would (Z rounded once).
    zc = acc.to(c_ptr.dtype.element_ty)
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(0, C_rest, BLOCK_N):
        jj = j0 + offs_n
        j_ok = jj < C_rest
        ct = tl.load(
            c_ptr + jj[None, :] * sc_o + offs_cb[:, None] * sc_b,
            mask=cb_ok[:, None] & j_ok[None, :],
            other=0.0,
        )
        out = tl.dot(zc, ct, input_precision=PRECISION)
        ch = c_off + jj
        if HAS_PERM:
            ch = tl.load(p_ptr + ch, mask=j_ok, other=0)
        if HAS_BIAS:
            out += tl.load(b_ptr + ch, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_pix[:, None] + ch[None, :] * sy_c,
            out.to(y_ptr.dtype.element_ty),
            mask=m_ok[:, None] & j_ok[None, :],
        )
