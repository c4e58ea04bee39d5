"""The halo-tile forward (``forward_halo.py``) emulated in torch: what the kernel computes,
scheduled the way it schedules it, from the same functions -- the schedule
(``halo_schedule.py``) and the kernel's arithmetic helpers (``virtual_source``,
``virtual_output``, ``tap_mask``: their Python bodies run on torch tensors). Gluon has no
interpreter, so this is how the CPU tier checks the kernel's indexing
(tests/test_halo_schedule.py fuzzes it against the float64 convolution) and what
``bench/variants.py --quick`` runs for the halo variant without a GPU.
"""

from __future__ import annotations

import torch

from . import forward_halo
from . import halo_schedule as hs


class ScheduleError(RuntimeError):
    """The schedule broke one of its own invariants (a bug in ``halo_schedule.py``)."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ScheduleError(what)


def emulate(
    x: torch.Tensor, basis: torch.Tensor, stride, padding, dilation, block_m: int, block_k: int
) -> torch.Tensor:
    """The halo kernel's forward Z = conv(x, basis) (no coefficients: the epilogue is v2's),
    computed the way the kernel schedules it, in float64."""
    N, C_in, H, W = x.shape
    C_b, _, KH, KW = basis.shape
    Ho = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    g = (H, W, Ho, Wo, KH, KW, *stride, *padding, *dilation)
    hv, wv = hs.grid_pitches(g)
    src, out = forward_halo.virtual_source.fn, forward_halo.virtual_output.fn
    xs = x.permute(0, 2, 3, 1)  # NHWC, as the kernel reads it
    y = torch.zeros(N, C_b, Ho, Wo, dtype=x.dtype)
    written = torch.zeros(N, Ho, Wo, dtype=torch.int64)
    win = hs.window_stride(g, block_m)
    for tile in range(hs.num_tiles(g, N, block_m)):
        u0 = tile * block_m
        acc = torch.zeros(block_m, C_b, dtype=x.dtype)
        for c0 in range(0, C_in, block_k):
            kk = torch.arange(c0, c0 + block_k)
            k_ok = kk < C_in
            halo = {}
            for p in range(hs.num_planes(g)):
                first, length = hs.window(g, block_m, p)
                _check(length <= win, "a window is longer than its reserved stride")
                buf = torch.full((length, block_k), float("nan"), dtype=x.dtype)
                covered = 0
                for i in range(hs.num_pieces(g, block_m, p)):
                    start, n = hs.piece(g, block_m, p, i)
                    _check(
                        start == covered and n & (n - 1) == 0, "pieces not contiguous powers of 2"
                    )
                    covered += n
                    py, px, rows, cols = hs.plane_of(g, p)
                    v = u0 + first + start + torch.arange(n)
                    img, ih, iw, ok = src(v, py, px, hv, wv, rows, cols, N, *stride)
                    ok = ok[:, None] & k_ok[None, :]
                    vals = xs[img.clamp(0, N - 1), ih.clamp(0, H - 1), iw.clamp(0, W - 1)][
                        :, kk.clamp(max=C_in - 1)
                    ]
                    buf[start : start + n] = torch.where(ok, vals, 0.0)
                _check(covered == length, "pieces do not cover the window")
                halo[p] = buf
            for t in range(KH * KW):
                p, start = hs.tap_plane(g, t), hs.tap_start(g, block_m, t)
                a = halo[p][start : start + block_m]
                _check(a.shape[0] == block_m, "a tap reads past its window")
                if hs.dense(g):  # reads across an image edge are zeroed in the operand
                    keep = forward_halo.tap_mask.fn(
                        u0 + torch.arange(block_m),
                        hs.tap_shift(g, t, 0),
                        hs.tap_shift(g, t, 1),
                        hv,
                        wv,
                    )
                    a = torch.where(keep[:, None], a, 0.0)
                b = basis[:, kk.clamp(max=C_in - 1), t // KW, t % KW].T * k_ok[:, None]
                acc += a @ b
        img, oh, ow, ok = out(u0 + torch.arange(block_m), hv, wv, Ho, Wo, N)
        _check(not torch.isnan(acc[ok]).any(), "an output read an unfilled halo element")
        y[img[ok], :, oh[ok], ow[ok]] = acc[ok]
        written[img[ok], oh[ok], ow[ok]] += 1
    _check(torch.equal(written, torch.ones_like(written)), "outputs not written exactly once")
    return y
