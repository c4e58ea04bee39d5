"""The halo-tile forward (``forward_halo.py``) emulated in torch: what the kernel computes,
scheduled the way it schedules it, from the same functions -- the schedule
(``halo_schedule.py``) and the kernel's arithmetic helpers (``virtual_source``,
``virtual_output``, ``tap_mask``: their Python bodies run on torch tensors). Gluon has no
interpreter, so this is how the CPU tier checks the kernel's indexing
(tests/kernels/test_halo_schedule.py fuzzes it against the float64 convolution) and what
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
    x: torch.Tensor,
    basis: torch.Tensor,
    stride,
    padding,
    dilation,
    block_m: int,
    block_k: int,
    programs: int | None = None,
) -> torch.Tensor:
    """The halo kernel's forward Z = conv(x, basis) (no coefficients: the epilogue is v2's),
    computed the way the kernel schedules it, in float64: ``programs`` persistent programs
    (None: one per tile), each walking its tiles ``pid, pid + programs, ...`` and every C_in
    block of each, as the kernel's flat loop of steps does."""
    N, C_in, H, W = x.shape
    C_b, _, KH, KW = basis.shape
    Ho = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    g = (H, W, Ho, Wo, KH, KW, *stride, *padding, *dilation)
    hv, wv = hs.grid_pitches(g)
    out = forward_halo.virtual_output.fn
    y = torch.zeros(N, C_b, Ho, Wo, dtype=x.dtype)
    written = torch.zeros(N, Ho, Wo, dtype=torch.int64)
    tiles = hs.num_tiles(g, N, block_m)
    programs = programs or tiles
    nblk = -(-C_in // block_k)
    for pid in range(programs):
        my_tiles = (tiles - pid + programs - 1) // programs
        acc = None
        for it in range(my_tiles * nblk):
            u0 = (pid + (it // nblk) * programs) * block_m
            cblk = it % nblk
            kk = torch.arange(cblk * block_k, (cblk + 1) * block_k)
            k_ok = kk < C_in
            halo = _stage_windows(x, g, u0, kk, k_ok, block_m)
            step = torch.zeros(block_m, C_b, dtype=x.dtype)
            for t in range(KH * KW):
                p, start = hs.tap_plane(g, t), hs.tap_start(g, block_m, t)
                a = halo[p][start : start + block_m]
                _check(a.shape[0] == block_m, "a tap reads past its window")
                if hs.dense(g):  # reads across an image edge are zeroed in the operand
                    u = u0 + torch.arange(block_m)
                    keep = forward_halo.tap_mask.fn(
                        u, hs.tap_shift(g, t, 0), hs.tap_shift(g, t, 1), hv, wv
                    )
                    a = torch.where(keep[:, None], a, 0.0)
                b = basis[:, kk.clamp(max=C_in - 1), t // KW, t % KW].T * k_ok[:, None]
                step += a @ b
            # the first block starts afresh
            acc = step if cblk == 0 or acc is None else acc + step
            if cblk < nblk - 1:
                continue
            img, oh, ow, ok = out(u0 + torch.arange(block_m), hv, wv, Ho, Wo, N)
            _check(not torch.isnan(acc[ok]).any(), "an output read an unfilled halo element")
            y[img[ok], :, oh[ok], ow[ok]] = acc[ok]
            written[img[ok], oh[ok], ow[ok]] += 1
    _check(torch.equal(written, torch.ones_like(written)), "outputs not written exactly once")
    return y


def _stage_windows(x, g, u0: int, kk, k_ok, block_m: int) -> dict[int, torch.Tensor]:
    """Every plane's window of the tile at virtual output ``u0``, channels ``kk``, copied
    piece by piece as the kernel does (NaN where no piece wrote: a gap would show)."""
    N, C_in, H, W = x.shape
    hv, wv = hs.grid_pitches(g)
    xs = x.permute(0, 2, 3, 1)  # NHWC, as the kernel reads it
    win = hs.window_stride(g, block_m)
    halo = {}
    for p in range(hs.num_planes(g)):
        first, length = hs.window(g, block_m, p)
        _check(length <= win, "a window is longer than its reserved stride")
        buf = torch.full((length, len(kk)), float("nan"), dtype=x.dtype)
        covered = 0
        py, px, rows, cols = hs.plane_of(g, p)
        for i in range(hs.num_pieces(g, block_m, p)):
            start, n = hs.piece(g, block_m, p, i)
            _check(start == covered and n & (n - 1) == 0, "pieces not contiguous powers of 2")
            covered += n
            v = u0 + first + start + torch.arange(n)
            img, ih, iw, ok = forward_halo.virtual_source.fn(
                v, py, px, hv, wv, rows, cols, N, g[6], g[7]
            )
            ok = ok[:, None] & k_ok[None, :]
            vals = xs[img.clamp(0, N - 1), ih.clamp(0, H - 1), iw.clamp(0, W - 1)]
            buf[start : start + n] = torch.where(ok, vals[:, kk.clamp(max=C_in - 1)], 0.0)
        _check(covered == length, "pieces do not cover the window")
        halo[p] = buf
    return halo
