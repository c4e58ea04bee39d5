"""The index schedule of the halo-tile forward (``forward_halo.py``): which activations a
program stages in shared memory per C_in block, and where each tap finds its operand in them.
Plain Python on ints: the Gluon kernel evaluates these at compile time (they are
``constexpr_function``s, so they are part of its cache key) and the torch emulation
(``tests/kernels/test_halo_schedule.py``) runs the same functions against the float64 reference.

**Virtual grid.** The input of a stride-``s`` conv is split into ``s_h * s_w`` sub-pixel
*planes*: plane ``(py, px)`` holds input pixels ``(j * s_h + py, c * s_w + px)``. Along one axis
tap ``k`` reads input ``o * s + k * dil - pad = (o + a) * s + p`` with ``p = (k dil - pad) mod s``
(its plane) and ``a = floor((k dil - pad) / s)`` (its shift in plane rows). Every plane is laid
out on one *virtual grid* of ``Hv x Wv`` per image, row-major, images one after another: plane
row ``j`` of image ``n`` at virtual row ``n * Hv + j``, everything outside the plane's pixels
zero. An output pixel ``(n, oh, ow)`` is virtual index ``u = (n Hv + oh) Wv + ow``, and tap
``(kh, kw)`` reads its plane at ``u + a_h Wv + a_w``: one constant offset per tap. That holds
because the pitches leave enough zero rows and columns: ``Hv >= rows + max(0, -a_min)`` (a read
above row 0 lands in the zero rows that end the previous image; the first image's land before
index 0, also zero) and ``Hv >= Ho + a_max`` (a read below the image stays in its own zero
rows), the same for columns (a read left of column 0 lands in the zero columns that end the
previous virtual row). At 3x3, stride 1, padding 1 that is one zero row and one zero column
between images and rows: ``Hv = H + 1``, ``Wv = W + 1``.

**Dense grid.** A same-size stride-1 conv (``Ho == H``, ``Wo == W``: 3x3 with padding 1, the
common case) needs no zero rows or columns: the grid is the input itself (``Hv = H``,
``Wv = W``), and the reads that would cross an image edge -- into the previous or next row,
or the neighbouring image -- are zeroed in the tap's A operand instead (:func:`tap_mask`:
output row ``oh`` keeps tap ``(a_h, a_w)`` iff ``0 <= oh + a_h < H`` and
``0 <= ow + a_w < W``). No output is wasted and the window holds only real pixels.

**Tiles.** A program computes ``BLOCK_M`` consecutive virtual outputs (some are the zero rows
and columns: computed, not stored). Per plane, its operands lie in one contiguous *window* of
the virtual grid, ``BLOCK_M + (largest - smallest tap offset)`` long (at 3x3 s1:
``BLOCK_M + 2 Wv + 2``), staged once per C_in block; each tap's A operand is the window slice
starting at ``tap offset - smallest offset``. The window is filled in power-of-two pieces
(Gluon's tensor shapes are powers of two), rounded up to a multiple of 8 pixels.
"""

from __future__ import annotations

try:
    from triton.runtime.jit import constexpr_function
except ImportError:  # a triton without it: plain functions (the kernel is then unavailable)

    def constexpr_function(fn):
        return fn


PIECE_MULTIPLE = 8  # window lengths are rounded up to whole 8-pixel groups


@constexpr_function
def _ints(g):
    """The geometry tuple as plain ints (a kernel passes its elements as constexprs)."""
    return tuple(int(getattr(v, "value", v)) for v in g)


@constexpr_function
def axis_tap(k, stride, pad, dil):
    """(plane, shift) of tap ``k`` along one axis: the input of output ``o`` is pixel
    ``shift + o`` of plane ``plane`` (floor division: Python's, on purpose)."""
    q = k * dil - pad
    return q % stride, q // stride


@constexpr_function
def plane_size(size, stride, plane):
    """Input pixels ``i`` in ``[0, size)`` with ``i % stride == plane``."""
    return max(0, (size - plane + stride - 1) // stride)


@constexpr_function
def virtual_pitch(size, out, K, stride, pad, dil):
    """Rows (or columns) per image (row) of the virtual grid along one axis (module doc)."""
    shifts = [axis_tap(k, stride, pad, dil)[1] for k in range(K)]
    most = max(plane_size(size, stride, p) for p in range(stride))
    return max(most + max(0, -min(shifts)), out + max(shifts), out, 1)


@constexpr_function
def dense(g):
    """Whether geometry ``g`` runs on the dense grid (module doc): stride 1, same size."""
    g = _ints(g)
    return g[6] == 1 and g[7] == 1 and g[2] == g[0] and g[3] == g[1]


@constexpr_function
def grid_pitches(g):
    """(Hv, Wv) of geometry ``g = (H, W, Ho, Wo, KH, KW, sh, sw, ph, pw, dh, dw)``."""
    g = _ints(g)
    H, W, Ho, Wo, KH, KW, sh, sw, ph, pw, dh, dw = g
    if dense(g):
        return H, W
    return (virtual_pitch(H, Ho, KH, sh, ph, dh), virtual_pitch(W, Wo, KW, sw, pw, dw))


@constexpr_function
def tap_shift(g, t, axis):
    """Tap ``t``'s shift along ``axis`` (0: rows, 1: columns) in its plane."""
    g = _ints(g)
    if axis == 0:
        return axis_tap(t // g[5], g[6], g[8], g[10])[1]
    return axis_tap(t % g[5], g[7], g[9], g[11])[1]


@constexpr_function
def num_planes(g):
    g = _ints(g)
    return g[6] * g[7]


@constexpr_function
def plane_of(g, p):
    """(py, px, rows, cols) of plane ``p`` (``p = py * sw + px``)."""
    g = _ints(g)
    H, W, _, _, _, _, sh, sw = g[:8]
    py, px = p // sw, p % sw
    return py, px, plane_size(H, sh, py), plane_size(W, sw, px)


@constexpr_function
def tap_of(g, t):
    """(plane, virtual offset) of tap ``t = kh * KW + kw``."""
    g = _ints(g)
    H, W, Ho, Wo, KH, KW, sh, sw, ph, pw, dh, dw = g
    py, ah = axis_tap(t // KW, sh, ph, dh)
    px, aw = axis_tap(t % KW, sw, pw, dw)
    return py * sw + px, ah * grid_pitches(g)[1] + aw


@constexpr_function
def window(g, block_m, p):
    """(first offset, length) of plane ``p``'s window for a tile of ``block_m`` virtual
    outputs: ``[u0 + first, u0 + first + length)``; length 0 if no tap reads the plane."""
    g = _ints(g)
    offs = [tap_of(g, t)[1] for t in range(g[4] * g[5]) if tap_of(g, t)[0] == p]
    if not offs:
        return 0, 0
    n = block_m + max(offs) - min(offs)
    return min(offs), -(-n // PIECE_MULTIPLE) * PIECE_MULTIPLE


@constexpr_function
def window_stride(g, block_m):
    """Pixels reserved per plane in shared memory: the longest window."""
    g = _ints(g)
    return max(window(g, block_m, p)[1] for p in range(num_planes(g)))


@constexpr_function
def tap_start(g, block_m, t):
    """Where tap ``t``'s A operand starts in its plane's window."""
    g = _ints(g)
    p, off = tap_of(g, t)
    return off - window(g, block_m, p)[0]


@constexpr_function
def pieces(length):
    """Power-of-two pieces ``((start, length), ...)`` covering ``[0, length)``, longest
    first (``length`` a multiple of 8)."""
    out, start, bit = [], 0, 1 << max(0, length.bit_length() - 1)
    while bit >= 1:
        if length - start >= bit:
            out.append((start, bit))
            start += bit
        bit //= 2
    return tuple(out)


@constexpr_function
def num_pieces(g, block_m, p):
    g = _ints(g)
    return len(pieces(window(g, block_m, p)[1]))


@constexpr_function
def piece(g, block_m, p, i):
    """(start, length) of piece ``i`` of plane ``p``'s window."""
    g = _ints(g)
    return pieces(window(g, block_m, p)[1])[i]


@constexpr_function
def num_tiles(g, n_images, block_m):
    """Programs along M: the virtual outputs of ``n_images`` images in tiles of block_m."""
    g = _ints(g)
    hv, wv = grid_pitches(g)
    return -(-n_images * hv * wv // block_m)


@constexpr_function
def valid_fraction(g):
    """Share of the virtual outputs that are real output pixels (the rest is computed and
    dropped: the MMA work the virtual grid costs)."""
    g = _ints(g)
    hv, wv = grid_pitches(g)
    return g[2] * g[3] / (hv * wv)


@constexpr_function
def shared_bytes(g, block_m, block_k, block_cb, elem_bytes, pad, c_blocks=0):
    """Shared memory of one program: the double-buffered staging of every plane's window,
    the bank-padded halo (``pad`` extra elements per pixel), and the basis tiles of all taps
    -- double-buffered per C_in block, or all ``c_blocks`` of them when resident (> 0)."""
    g = _ints(g)
    win = num_planes(g) * window_stride(g, block_m)
    basis = (c_blocks or 2) * g[4] * g[5] * block_cb * block_k
    return elem_bytes * (2 * win * block_k + win * (block_k + pad) + basis)


# Scalar accessors for the kernel (a Gluon kernel takes ints from constexpr functions; a tuple
# result cannot be bound to a name inside a static loop).


@constexpr_function
def plane_field(g, p, i):
    """Field ``i`` of :func:`plane_of` (0 py, 1 px, 2 rows, 3 cols)."""
    return plane_of(g, p)[i]


@constexpr_function
def window_first(g, block_m, p):
    return window(g, block_m, p)[0]


@constexpr_function
def piece_start(g, block_m, p, i):
    return piece(g, block_m, p, i)[0]


@constexpr_function
def piece_len(g, block_m, p, i):
    return piece(g, block_m, p, i)[1]


@constexpr_function
def tap_plane(g, t):
    return tap_of(g, t)[0]


@constexpr_function
def pitch(g, axis):
    """Hv (axis 0) or Wv (axis 1)."""
    return grid_pitches(g)[axis]


@constexpr_function
def fill_rows(block_k, num_warps):
    """Pixels one pass of the kernel's window-copy layout covers: each thread copies 16 bytes
    (8 channels), ``block_k / 8`` threads a pixel. A piece shorter than this is copied by
    several threads at once (the same bytes requested again)."""
    return num_warps * 32 * 8 // block_k


@constexpr_function
def loaded_pixels(g, block_m, block_k, num_warps):
    """Pixels the window copies request per C_in block and tile, every plane, counting a
    short piece as the :func:`fill_rows` its copy layout spans."""
    rows = fill_rows(block_k, num_warps)
    return sum(
        max(n, rows) for p in range(num_planes(g)) for _, n in pieces(window(g, block_m, p)[1])
    )
