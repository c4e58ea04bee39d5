"""Keep-basis d coeff with a large bias: error of each way of getting Z, against float64.

    python bench/dcoeff_bias.py [--device cpu|cuda] [--dtype bfloat16,float16]
                                [--backend torch|triton] [--bias 8] [--z-rms 0.1] [--json FILE]

The keep-basis backward needs Z (the basis outputs before bias) for d coeff = sum_pixels
G_r (x) Z. Read back as ``out[:, :C_b] - bias`` from the rounded 16-bit output, Z carries the
rounding error of |Z + bias| instead of |Z|: with bias 8 and |Z| ~ 0.1 a bf16 step is 0.0625.
Rows (each d coeff against float64 on the same dtype-rounded inputs):

* ``emulated, Z from out``: float64 math on round(round(Z) + bias) - bias (the error source
  alone); ``emulated, Z saved``: on round(Z);
* ``op, Z from out``: the op called with ``need_z=False`` (it then recovers Z from its output);
  ``op, default``: the op as layers call it (``need_z=True``: it saves Z where
  ``geometry.saves_z`` says so);
* ``unfused``: F.conv2d + the coefficient conv + bias in the dtype, autograd (Z from the conv).

On CPU ``--backend triton`` runs the kernels through Triton's interpreter (set here), which
handles float16 but not bfloat16 (numpy has no bfloat16: its results are garbage), so that
pairing is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default="bfloat16,float16")
    p.add_argument("--backend", default="torch", choices=("torch", "triton"))
    p.add_argument("--bias", type=float, default=8.0)
    p.add_argument("--z-rms", type=float, default=0.1)
    p.add_argument("--shape", default="8,32,8,8,8,24", help="N,C_in,H,W,C_b,C_rest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def measure(device: str, dtype, backend: str, bias: float, z_rms: float, shape, seed=0) -> dict:
    """Relative Frobenius errors of d coeff (and of Z recovered from the output) vs float64."""
    import torch
    import torch.nn.functional as F

    import tritonbasis as tb

    N, C_in, H, W, C_b, C_rest = shape
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    x = r(N, C_in, H, W)
    basis = r(C_b, C_in, 3, 3, scale=z_rms / (9 * C_in) ** 0.5)  # rms(Z) ~ z_rms
    coeff = r(C_rest, C_b, scale=C_b**-0.5)
    b = r(C_b + C_rest, scale=0.0, shift=bias)
    grad = r(N, C_b + C_rest, H, W)
    x, basis, coeff, b, grad = (t.to(device) for t in (x, basis, coeff, b, grad))

    def rel(a, ref):
        a, ref = a.double().cpu(), ref.double().cpu()
        return ((a - ref).norm() / ref.norm()).item()

    # float64 reference on the same (rounded) inputs
    z64 = F.conv2d(x.double(), basis.double(), padding=1)
    g_r = grad[:, C_b:].double()

    def dcoeff_from(z):
        return torch.einsum("njhw,nchw->jc", g_r, z.double())

    ref = dcoeff_from(z64)
    z_round = z64.to(dtype)
    z_out = (z_round + b[:C_b, None, None]).to(dtype).double() - b[:C_b, None, None].double()
    out = {
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "backend": backend,
        "bias": bias,
        "z_rms": rms(z64),
        "shape": list(shape),
        "z_rel_err_from_out": rel(z_out, z64),
        "z_rel_err_saved": rel(z_round, z64),
        "emulated_from_out": rel(dcoeff_from(z_out), ref),
        "emulated_saved": rel(dcoeff_from(z_round), ref),
    }

    def op_dcoeff(need_z):
        c = coeff.clone().requires_grad_()
        with tb.use_backend(backend):
            y = torch.ops.tritonbasis.basis_conv2d(
                x, basis, c, b, None, [1, 1], [1, 1], [1, 1], True, need_z
            )[0]
            y.backward(grad)
        return c.grad

    out["op_from_out"] = rel(op_dcoeff(False), ref)
    out["op_default"] = rel(op_dcoeff(True), ref)
    c = coeff.clone().requires_grad_()
    z = F.conv2d(x, basis, padding=1)
    y = torch.cat([z, F.conv2d(z, c[:, :, None, None])], 1) + b[None, :, None, None]
    y.backward(grad)
    out["unfused"] = rel(c.grad, ref)
    return out


def rms(t) -> float:
    return t.double().pow(2).mean().sqrt().item()


ROWS = (
    ("z_rel_err_from_out", "Z read back as out - bias (rel. error of Z)"),
    ("z_rel_err_saved", "Z saved, rounded once (rel. error of Z)"),
    ("emulated_from_out", "d coeff, emulated, Z from out"),
    ("emulated_saved", "d coeff, emulated, Z saved"),
    ("op_from_out", "d coeff, op with need_z=False (Z from out)"),
    ("op_default", "d coeff, op as layers call it (Z saved)"),
    ("unfused", "d coeff, unfused (conv + coeff conv + bias)"),
)


def main(argv=None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    if a.backend == "triton" and a.device in (None, "cpu"):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports the kernels
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = tuple(int(v) for v in a.shape.split(","))
    results = []
    for name in a.dtype.split(","):
        dtype = getattr(torch, name)
        if a.backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
            print(f"skipped {name}: Triton's interpreter computes bfloat16 wrongly")
            continue
        results.append(measure(device, dtype, a.backend, a.bias, a.z_rms, shape, a.seed))
    head = " | ".join(f"{r['dtype']} ({r['backend']}, {r['device']})" for r in results)
    print(
        f"bias {a.bias}, rms(Z) {results[0]['z_rms']:.3f}, shape N,C_in,H,W,C_b,C_rest = "
        f"{a.shape}: relative Frobenius error vs float64"
    )
    print(f"| quantity | {head} |")
    print("|---|" + "---:|" * len(results))
    for key, label in ROWS:
        print(f"| {label} | " + " | ".join(f"{r[key]:.2e}" for r in results) + " |")
    if a.json:
        from tritonbasis.util.fileio import atomic_write_text

        atomic_write_text(a.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
