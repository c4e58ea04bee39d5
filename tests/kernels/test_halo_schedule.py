"""The halo-tile forward's index schedule (kernels/halo_schedule.py), checked by emulation.

Gluon has no interpreter, so the kernel itself cannot run on CPU. What it computes is fixed by
the schedule -- tiles of the virtual grid, each plane's window, the pieces the window is
filled in, each tap's offset into it -- and by two arithmetic helpers of the kernel module
(``virtual_source``, ``virtual_output``, ``tap_mask``). The emulation (kernels/halo_emulation.py)
runs exactly those (the helpers' Python bodies on torch tensors), stages each window per C_in
block, takes every tap's operand as the window slice the kernel reads (zeroing the rows the
dense grid masks), and must reproduce the float64 convolution over a fuzz of
geometries: strides 1-3, padding, dilation, odd and tiny sizes, several images per tile, tiles
that start in one image and end in the next. Any schedule error (a window too short, a wrong
offset, a zero row missing from the virtual grid) gives an O(1) error or an out-of-window
slice. The kernel compiles for sm_90 from the same functions (tests/kernels/test_compile_tier.py).
"""

from __future__ import annotations

import random
import zlib

import pytest
import torch

pytest.importorskip("triton", reason="the schedule's constexpr functions come from triton")

from tritonbasis.kernels import halo_schedule as hs  # noqa: E402

try:
    from tritonbasis.kernels.halo_emulation import emulate
except ImportError:  # no Gluon in this triton
    emulate = None

pytestmark = pytest.mark.skipif(emulate is None, reason="this triton has no Gluon")


def _geometries(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = (rng.choice([1, 2, 3, 3, 5]), rng.choice([1, 3, 3, 4]))
        s = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 2]))
        p = (rng.randint(0, k[0]), rng.randint(0, k[1]))
        H, W = rng.randint(1, 13), rng.randint(1, 13)
        if any(sz + 2 * pp < dd * (kk - 1) + 1 for sz, pp, dd, kk in zip((H, W), p, d, k)):
            continue
        out.append(
            dict(
                N=rng.randint(1, 4),
                C_in=rng.randint(1, 6),
                C_b=rng.randint(1, 4),
                H=H,
                W=W,
                k=k,
                stride=s,
                padding=p,
                dilation=d,
                block_m=rng.choice([16, 32, 64, 128]),
                block_k=rng.choice([2, 4, 8]),
                programs=rng.choice([None, None, 1, 3]),  # persistent programs (RESIDENT)
            )
        )
    return out


FUZZ = _geometries(60)
# the benchmark layers' geometry (3x3, stride 1, pad 1) at their image sizes, and a stride-2
# downsampling one, with the kernel's tile sizes; batch and channels cut down
FIXED = [
    dict(
        N=3,
        C_in=5,
        C_b=3,
        H=h,
        W=h,
        k=(3, 3),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
        block_m=bm,
        block_k=4,
        programs=programs,
    )
    for h in (4, 8, 16)
    for bm, programs in ((64, None), (128, None), (128, 2))
]
FIXED.append(
    dict(
        N=2,
        C_in=3,
        C_b=2,
        H=16,
        W=16,
        k=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        dilation=(1, 1),
        block_m=128,
        block_k=4,
        programs=None,
    )
)


def _id(c: dict) -> str:
    return (
        f"n{c['N']}_{c['H']}x{c['W']}_k{c['k'][0]}x{c['k'][1]}_s{c['stride'][0]}"
        f"{c['stride'][1]}_p{c['padding'][0]}{c['padding'][1]}_d{c['dilation'][0]}"
        f"{c['dilation'][1]}_m{c['block_m']}_p{c['programs'] or 'all'}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("c", FIXED + FUZZ, ids=[_id(c) for c in FIXED + FUZZ])
def test_emulated_schedule_matches_float64_convolution(c):
    gen = torch.Generator().manual_seed(zlib.crc32(_id(c).encode()))
    x = torch.randn(c["N"], c["C_in"], c["H"], c["W"], generator=gen, dtype=torch.float64)
    basis = torch.randn(c["C_b"], c["C_in"], *c["k"], generator=gen, dtype=torch.float64)
    got = emulate(
        x,
        basis,
        c["stride"],
        c["padding"],
        c["dilation"],
        c["block_m"],
        c["block_k"],
        c["programs"],
    )
    want = torch.nn.functional.conv2d(
        x, basis, stride=c["stride"], padding=c["padding"], dilation=c["dilation"]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_emulation_catches_a_wrong_tap_offset(monkeypatch):
    """The check can fail: one tap reading one pixel off gives a wrong result."""
    c = FIXED[2]
    real = hs.tap_start

    def off_by_one(g, block_m, t):
        return real(g, block_m, t) + (1 if t == 4 else 0)

    monkeypatch.setattr(hs, "tap_start", off_by_one)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(c["N"], c["C_in"], c["H"], c["W"], generator=gen, dtype=torch.float64)
    basis = torch.randn(c["C_b"], c["C_in"], *c["k"], generator=gen, dtype=torch.float64)
    got = emulate(x, basis, c["stride"], c["padding"], c["dilation"], c["block_m"], 4)
    want = torch.nn.functional.conv2d(x, basis, padding=c["padding"])
    assert not torch.allclose(got, want)


def test_l2_window_per_block_is_at_most_a_fifth_of_v2s_tap_reads():
    """The claim at the ResNet18 3x3 stride-1 benchmark shapes, for every config prune keeps
    there: per tile and C_in block the window is <= 1/5 of the 9 tap tiles v2 reads (the
    kernel's own counts, from the compiled code, are in bench/results/compile-*)."""
    import aot  # tools/aot.py
    from tritonbasis.kernels import configs

    rec = configs.RECORDS["fwd_halo"]
    seen = 0
    for tag, shape in aot.bench_shapes().items():
        if ".3x3." not in tag or "s2" in tag:
            continue
        ps = aot.prune_shape(shape, "bf16", 90, "fwd_halo")
        g = (ps["H"], ps["W"], ps["Ho"], ps["Wo"], 3, 3, 1, 1, 1, 1, 1, 1)
        for cfg in configs.prune("fwd_halo", list(rec.configs.values()), ps):
            bm, bk = cfg["blocks"]["BLOCK_M"], cfg["blocks"]["BLOCK_K"]
            assert hs.loaded_pixels(g, bm, bk, cfg["num_warps"]) * 5 <= 9 * bm, (tag, cfg)
            seen += 1
    assert seen >= 4
