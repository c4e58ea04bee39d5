"""Forward: implicit-GEMM convolution over the basis filters, coefficient product fused in the
epilogue (v2: one flattened, pipelined K loop).

GEMM view: M = N*Ho*Wo output pixels, K = KH*KW*C_in, N = C_b padded to BLOCK_CB (a power of
two >= 16, masked). Each program owns BLOCK_M pixels and the *whole* basis block, so Z = X*B
stays in registers: the epilogue stores it (keep-basis form) and multiplies it by coefficient
tiles of BLOCK_N rows for the remaining channels. Z never goes to memory unless the full form
needs it saved for the backward.

The K loop is ONE loop over (tap, C_in block) pairs, ``it = tap * cdiv(C_in, BLOCK_K) + c``,
the form of Inductor's conv template: Triton's software pipeliner sees a single scf.for of
KH*KW*cdiv(C_in, BLOCK_K) iterations (9-36 at C_in = 64-256, 3x3), so the cp.async / wgmma
pipeline fills once per tile instead of draining after every tap (9 static taps, each around
its own C_in loop of 1-4 iterations, would each drain: ``async_wait 0`` + ``wgmma wait 0``).

The basis is read through its strides; the launcher passes it with the input channel
contiguous (channels_last, i.e. (C_b, KH, KW, C_in) in memory), so a (BLOCK_K, BLOCK_CB) tile
is BLOCK_CB rows of BLOCK_K contiguous elements: 16-byte async copies, pipelined with the
activation tile (v1's OIHW basis gave ~72 scalar 16-bit loads per thread per tile).

Split-K (small M, e.g. 512ch@4px: N*16 pixels): SPLIT_K > 1 programs along grid axis 1 each
reduce a contiguous range of K iterations and write their fp32 partial Z to a workspace
(SPLIT_K, M, BLOCK_CB); ``basis_conv_fwd_reduce_kernel`` sums the SPLIT_K slices in a fixed
order (deterministic, no atomics) and runs the same epilogue once on the reduced Z. The
epilogue is linear in Z, so this is exact (up to fp32 summation order). 2 launches then.

Memory formats are handled through strides (NCHW and NHWC alike); padding by masked loads.
"""

import triton
import triton.language as tl


@triton.jit
def _fwd_epilogue(
    acc,
    offs_m,
    m_ok,
    offs_cb,
    cb_ok,
    c_ptr,
    b_ptr,
    p_ptr,
    y_ptr,
    z_ptr,
    C_b,
    C_rest,
    Ho,
    Wo,
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
    HAS_BIAS: tl.constexpr,
    HAS_PERM: tl.constexpr,
    KEEP_BASIS: tl.constexpr,
    STORE_Z: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """acc = Z (BLOCK_M x BLOCK_CB, fp32) of pixels offs_m -> basis outputs (keep-basis),
    saved Z (STORE_Z), combined outputs coeff . Z (+ bias), permuted channels (HAS_PERM)."""
    hw = Ho * Wo
    n = offs_m // hw
    rem = offs_m % hw
    oh = rem // Wo
    ow = rem % Wo
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


@triton.jit
def basis_conv_fwd_kernel(
    x_ptr,  # (N, C_in, H, W), any strides
    w_ptr,  # basis (C_b, C_in, KH, KW), any strides; the launcher passes sw_c == 1
    c_ptr,  # coeff (C_rest, C_b)
    b_ptr,  # bias (C_out,), in output-channel order -- read only if HAS_BIAS
    p_ptr,  # perm (C_out,) int: computed channel c is stored to output channel perm[c] (HAS_PERM)
    y_ptr,  # out (N, C_out, Ho, Wo)
    z_ptr,  # saved Z (N, C_b, Ho, Wo) -- written only if STORE_Z
    ws_ptr,  # fp32 workspace (SPLIT_K, M, BLOCK_CB) -- written only if SPLIT_K > 1
    M,
    M_KEY,  # M rounded up to a power of two: the autotune key (a new batch size does not re-tune)
    C_in,
    H,
    W,
    C_b,
    C_rest,
    Ho,
    Wo,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    sw_o,
    sw_c,
    sw_h,
    sw_w,
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
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_PERM: tl.constexpr,
    KEEP_BASIS: tl.constexpr,
    STORE_Z: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_CB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
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
    w_rows = w_ptr + offs_cb * sw_o

    n_cblk = tl.cdiv(C_in, BLOCK_K)
    k_iters = KH * KW * n_cblk
    if SPLIT_K == 1:
        k_lo = 0
        k_hi = k_iters
    else:
        per = tl.cdiv(k_iters, SPLIT_K)
        k_lo = tl.program_id(1) * per
        k_hi = tl.minimum(k_lo + per, k_iters)

    acc = tl.zeros((BLOCK_M, BLOCK_CB), dtype=tl.float32)
    for it in range(k_lo, k_hi):
        tap = it // n_cblk
        cc = (it - tap * n_cblk) * BLOCK_K + offs_k
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        c_ok = cc < C_in
        a = tl.load(  # l2: activations
            (x_img + ih * sx_h + iw * sx_w)[:, None] + cc[None, :] * sx_c,
            mask=pix_ok[:, None] & c_ok[None, :],
            other=0.0,
        )
        b = tl.load(
            (w_rows + kh * sw_h + kw * sw_w)[None, :] + cc[:, None] * sw_c,
            mask=c_ok[:, None] & cb_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if SPLIT_K == 1:
        _fwd_epilogue(
            acc,
            offs_m,
            m_ok,
            offs_cb,
            cb_ok,
            c_ptr,
            b_ptr,
            p_ptr,
            y_ptr,
            z_ptr,
            C_b,
            C_rest,
            Ho,
            Wo,
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
            PRECISION,
            BLOCK_N,
        )
    else:
        # partial Z of this K range; padded columns are 0 (masked basis loads)
        # int64 when INT64 (offs_m is); the launcher splits only while SPLIT_K * M * BLOCK_CB
        # < 2**31, so pid * M itself cannot overflow
        rows = tl.program_id(1) * M + offs_m
        tl.store(ws_ptr + rows[:, None] * BLOCK_CB + offs_cb[None, :], acc, mask=m_ok[:, None])


@triton.jit
def basis_conv_fwd_reduce_kernel(
    ws_ptr,  # fp32 (SPLIT_K, M, BLOCK_CB): partial Z of each K slice
    c_ptr,
    b_ptr,
    p_ptr,
    y_ptr,
    z_ptr,
    M,
    M_KEY,
    C_b,
    C_rest,
    Ho,
    Wo,
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
    HAS_BIAS: tl.constexpr,
    HAS_PERM: tl.constexpr,
    KEEP_BASIS: tl.constexpr,
    STORE_Z: tl.constexpr,
    INT64: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_CB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Second launch of a split-K forward: Z = sum of the SPLIT_K slices in slice order (the
    same order every run: deterministic), then the forward epilogue once."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64:
        offs_m = offs_m.to(tl.int64)
    m_ok = offs_m < M
    offs_cb = tl.arange(0, BLOCK_CB)
    cb_ok = offs_cb < C_b
    acc = tl.zeros((BLOCK_M, BLOCK_CB), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        rows = s * M + offs_m  # SPLIT_K * M * BLOCK_CB < 2**31 (launcher)
        acc += tl.load(
            ws_ptr + rows[:, None] * BLOCK_CB + offs_cb[None, :], mask=m_ok[:, None], other=0.0
        )
    _fwd_epilogue(
        acc,
        offs_m,
        m_ok,
        offs_cb,
        cb_ok,
        c_ptr,
        b_ptr,
        p_ptr,
        y_ptr,
        z_ptr,
        C_b,
        C_rest,
        Ho,
        Wo,
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
        PRECISION,
        BLOCK_N,
    )
