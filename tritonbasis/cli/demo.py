"""``tritonbasis demo``: one basis-conv layer on real images (scikit-learn's bundled digits),
checked against the float64 reference, with its parameter / MAC / time saving."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.functional import basis_conv2d
from ..nn.layer import BasisConv2d
from ..op import reference
from ..op.geometry import check_inputs
from ..op.registry import resolve_backend
from ..util.timing import time_fn
from .common import digits_batch
from .guard import device_arg, positive_int


def add_parser(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="check a basis-conv layer against the reference and show "
        "its parameter/FLOP/time saving",
    )
    d.add_argument("--channels", type=positive_int, default=128, help="C_in = C_out (default 128)")
    d.add_argument("--ratio", type=positive_int, default=4, help="C_b = C_out / ratio (default 4)")
    d.add_argument("--batch", type=positive_int, default=64, help="images (default 64)")
    d.add_argument(
        "--size", type=positive_int, default=16, help="image side in pixels (default 16)"
    )
    d.add_argument(
        "--reps", type=positive_int, default=5, help="timed repetitions, at least (default 5)"
    )
    d.add_argument(
        "--device", default=None, type=device_arg, help="cpu or cuda (default: cuda if available)"
    )


def run(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32
    C, cb = args.channels, max(1, args.channels // args.ratio)
    torch.manual_seed(0)
    x, images = digits_batch(args.batch, args.size, C, device, dtype)
    layer = BasisConv2d(C, C, 3, basis_channels=cb, padding=1, mode="fused").to(device)
    g = check_inputs(x, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True)
    backend = resolve_backend(x, g)
    print(
        f"tritonbasis demo: BasisConv2d({C} -> {C}, 3x3, C_b={cb}) on {args.batch} "
        f"{images} images at {args.size}x{args.size}, {device}, backend={backend}"
    )

    # 1. correctness against the float64 reference
    y = layer(x)
    ref = reference.basis_conv2d_reference(
        x.double(), layer.basis.double(), layer.coeff.double(), layer.bias.double(), padding=1
    )
    err = (y.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    ok = err <= 1e-4 * scale if device.type == "cpu" else err <= 2e-2 * scale
    print(
        f"  max |op - float64 reference| = {err:.2e} (output scale {scale:.2f}): "
        f"{'OK' if ok else 'MISMATCH'}"
    )

    # 2. what the basis saves
    dense_params = C * C * 9 + C
    basis_params = sum(p.numel() for p in layer.parameters())
    macs = g.macs()
    print(
        f"  parameters: dense {dense_params:,} -> basis {basis_params:,} "
        f"({dense_params / basis_params:.2f}x fewer)"
    )
    print(
        f"  forward MACs: dense {macs['dense']:,} -> fused {macs['fused']:,} "
        f"({macs['dense'] / macs['fused']:.2f}x fewer)"
    )

    # 3. forward+backward time beside the dense conv and the weight-modification path
    dense_w = torch.randn(C, C, 3, 3, device=device, requires_grad=True)
    xg = x.detach().requires_grad_()

    def fb_dense():
        F.conv2d(xg, dense_w, None, 1, 1).sum().backward()

    def fb(mode):
        return lambda: (
            basis_conv2d(xg, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True, mode=mode)
            .sum()
            .backward()
        )

    def ms(fn) -> float:
        return time_fn(fn, device=device, min_reps=args.reps).median_ms

    t_dense, t_fused, t_weight = ms(fb_dense), ms(fb("fused")), ms(fb("weight"))
    print(
        f"  forward+backward ms: dense conv {t_dense:.2f} | fused {t_fused:.2f} "
        f"({t_dense / t_fused:.2f}x) | weight-mod {t_weight:.2f} ({t_dense / t_weight:.2f}x)"
    )
    print("  (median of util.timing.time_fn on this machine; see bench/ for real benchmarks)")
    return 0 if ok else 1
