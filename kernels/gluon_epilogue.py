"""The forward epilogue in Gluon (``forward._fwd_epilogue``'s, for the Gluon forward kernels):
from Z, the fp32 accumulator of a tile, the basis outputs (keep-basis form), the saved Z, and
the remaining channels ``coeff . Z`` (+ bias) on wgmma, every channel through ``perm``."""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # renamed in later Tritons


@gluon.jit
def fwd_epilogue(
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
    HAS_BIAS: gl.constexpr,
    HAS_PERM: gl.constexpr,
    KEEP_BASIS: gl.constexpr,
    STORE_Z: gl.constexpr,
    BLOCK_M: gl.constexpr,
    BLOCK_CB: gl.constexpr,
    BLOCK_N: gl.constexpr,
):
    """v2's epilogue (``forward._fwd_epilogue``) for Gluon: basis outputs (keep-basis), saved
    Z, and coeff . Z (+ bias) on wgmma, channels through perm. ``img, oh, ow, m_ok`` are in
    the slice layout of rows of ``out_l`` below."""
    num_warps: gl.constexpr = gl.num_warps()
    dtype = y_ptr.dtype.element_ty
    out_l: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_CB // 8), BLOCK_CB // 8], [num_warps, 1], [1, 0]
    )
    zb = gl.convert_layout(acc, out_l)
    offs_cb = gl.arange(0, BLOCK_CB, layout=gl.SliceLayout(0, out_l))
    cb_ok = offs_cb < C_b
    y_pix = y_ptr + img * sy_n + oh * sy_h + ow * sy_w
    if KEEP_BASIS:
        if HAS_PERM:
            oc_b = gl.load(p_ptr + offs_cb, mask=cb_ok, other=0)
        else:
            oc_b = offs_cb
        if HAS_BIAS:
            zb += gl.load(b_ptr + oc_b, mask=cb_ok, other=0.0).to(gl.float32)[None, :]
        gl.store(
            y_pix[:, None] + oc_b[None, :] * sy_c, zb.to(dtype), mask=m_ok[:, None] & cb_ok[None, :]
        )
        c_off = C_b
    else:
        c_off = 0
    if STORE_Z:
        zs = gl.convert_layout(acc, out_l)
        z_pix = z_ptr + img * sz_n + oh * sz_h + ow * sz_w
        gl.store(
            z_pix[:, None] + offs_cb[None, :] * sz_c,
            zs.to(z_ptr.dtype.element_ty),
            mask=m_ok[:, None] & cb_ok[None, :],
        )
    # coeff . Z in the input dtype (Z rounded once, as the unfused pair does), on wgmma
    mma: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
    )
    zc = gl.convert_layout(
        acc.to(dtype), gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    )
    ct_l: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_CB // 8), BLOCK_CB // 8], [num_warps, 1], [1, 0]
    )
    jr = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ct_l))
    cbc = gl.arange(0, BLOCK_CB, layout=gl.SliceLayout(0, ct_l))
    o_l: gl.constexpr = gl.BlockedLayout(
        [1, 8], [32 // (BLOCK_N // 8), BLOCK_N // 8], [num_warps, 1], [1, 0]
    )
    jn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, o_l))
    y_pix2 = gl.convert_layout(y_pix, gl.SliceLayout(1, o_l))
    m_ok2 = gl.convert_layout(m_ok, gl.SliceLayout(1, o_l))
    for j0 in range(0, C_rest, BLOCK_N):
        ct = gl.load(
            c_ptr + (j0 + jr)[:, None] * sc_o + cbc[None, :] * sc_b,
            mask=((j0 + jr) < C_rest)[:, None] & (cbc < C_b)[None, :],
            other=0.0,
        )
        _barrier()  # the previous tile's wgmma has read ct_smem (it was waited for)
        ct_smem.store(ct)
        fence_async_shared()
        _barrier()
        out = warpgroup_mma(
            zc,
            ct_smem.permute((1, 0)),
            gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma),
            use_acc=False,
        )
        out = gl.convert_layout(out, o_l)
        jj = j0 + jn
        j_ok = jj < C_rest
        ch = c_off + jj
        if HAS_PERM:
            ch = gl.load(p_ptr + ch, mask=j_ok, other=0)
        if HAS_BIAS:
            out += gl.load(b_ptr + ch, mask=j_ok, other=0.0).to(gl.float32)[None, :]
        gl.store(
            y_pix2[:, None] + ch[None, :] * sy_c, out.to(dtype), mask=m_ok2[:, None] & j_ok[None, :]
        )
