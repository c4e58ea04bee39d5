"""``tritonbasis`` command line. For now one job, ``demo``: build a basis-conv layer, check it
against the float64 reference on real images (scikit-learn's bundled digits, no download), and
print its parameter/FLOP saving and a CPU/GPU timing beside the dense conv."""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from . import reference
from ._checks import check_inputs
from .functional import basis_conv2d
from .layer import BasisConv2d
from .ops import resolve_backend


def _digits_batch(n: int, size: int, channels: int, device, dtype) -> torch.Tensor:
    """n real handwritten digits (8x8, scikit-learn's bundled copy), resized to size x size and
    lifted to `channels` channels by a fixed random 1x1 projection."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # the demo still runs; say so
        print("scikit-learn not installed: using random images instead of digits")
        return torch.randn(n, channels, size, size, device=device, dtype=dtype)
    imgs = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0
    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    proj = torch.randn(channels, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = F.conv2d(imgs - imgs.mean(), proj)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def _time(fn, reps: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def demo(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32
    C, cb = args.channels, max(1, args.channels // args.ratio)
    torch.manual_seed(0)
    x = _digits_batch(args.batch, args.size, C, device, dtype)
    layer = BasisConv2d(C, C, 3, cb, padding=1, mode="fused").to(device)
    g = check_inputs(x, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True)
    backend = resolve_backend(x, g)
    print(f"tritonbasis demo: BasisConv2d({C} -> {C}, 3x3, C_b={cb}) on {args.batch} "
          f"digits images at {args.size}x{args.size}, {device}, backend={backend}")

    # 1. correctness against the float64 reference
    y = layer(x)
    ref = reference.basis_conv2d_reference(
        x.double(), layer.basis.double(), layer.coeff.double(), layer.bias.double(), padding=1
    )
    err = (y.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    ok = err <= 1e-4 * scale if device.type == "cpu" else err <= 2e-2 * scale
    print(f"  max |op - float64 reference| = {err:.2e} (output scale {scale:.2f}): "
          f"{'OK' if ok else 'MISMATCH'}")

    # 2. what the basis saves
    dense_params = C * C * 9 + C
    basis_params = sum(p.numel() for p in layer.parameters())
    macs = g.macs()
    print(f"  parameters: dense {dense_params:,} -> basis {basis_params:,} "
          f"({dense_params / basis_params:.2f}x fewer)")
    print(f"  forward MACs: dense {macs['dense']:,} -> fused {macs['fused']:,} "
          f"({macs['dense'] / macs['fused']:.2f}x fewer)")

    # 3. forward+backward time beside the dense conv and the weight-modification path
    dense_w = torch.randn(C, C, 3, 3, device=device, requires_grad=True)
    xg = x.detach().requires_grad_()

    def fb_dense():
        F.conv2d(xg, dense_w, None, 1, 1).sum().backward()

    def fb(mode):
        return lambda: basis_conv2d(xg, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True,
                                    mode=mode).sum().backward()

    t_dense = _time(fb_dense, args.reps)
    t_fused = _time(fb("fused"), args.reps)
    t_weight = _time(fb("weight"), args.reps)
    print(f"  forward+backward ms: dense conv {t_dense:.2f} | fused {t_fused:.2f} "
          f"({t_dense / t_fused:.2f}x) | weight-mod {t_weight:.2f} ({t_dense / t_weight:.2f}x)")
    print("  (timings are one run on this machine; see bench/ for real benchmarks)")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tritonbasis", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="check a basis-conv layer against the reference and show "
                                    "its parameter/FLOP/time saving")
    d.add_argument("--channels", type=int, default=128, help="C_in = C_out (default 128)")
    d.add_argument("--ratio", type=int, default=4, help="C_b = C_out / ratio (default 4)")
    d.add_argument("--batch", type=int, default=64, help="images (default 64)")
    d.add_argument("--size", type=int, default=16, help="image side in pixels (default 16)")
    d.add_argument("--reps", type=int, default=5, help="timing repetitions (default 5)")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = p.parse_args(argv)
    if args.cmd == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
