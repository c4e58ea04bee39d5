"""Check one forward kernel variant for correctness on the GPU and time it beside v2.

    python bench/variants.py --list
    python bench/variants.py --variant NAME --out FILE.json [--quick]

``--list`` prints the forward kernels this install can run, one record name per line, v2's
(``fwd``) first. ``--variant NAME`` forces that kernel
(``tritonbasis.op.launchers.force_forward_variant``) at the four ResNet18-CIFAR stride-1 3x3
layers (64 channels at 32 px, 128 at 16, 256 at 8, 512 at 4; batch 256, bf16, channels_last,
C_b = C_out / 4, keep-basis with a bias and an output-channel permutation), checks that it
really ran, compares its output with an fp32 reference (cuDNN conv and matmul with TF32 off)
and with v2's error on the same inputs, and times both (``tritonbasis.util.timing.time_fn``:
``triton.testing.do_bench``, CUDA events). It writes ``FILE.json``::

    {"variant", "ok", "shapes": [{"name", "ran", "error": {"variant", "v2"},
     "time_ms": {"variant", "v2"}, "ok"}], "gpu", "capability", "torch", "triton",
     "source_hash", "commit", "date"}

and exits 1 when not ok. Passing means, per shape: the variant ran, no NaN, and its largest
error (relative to the largest reference value) is at most twice v2's or 2**-7. A passing
file is what ``python tools/record_verified.py FILE.json`` adds to kernels/verified.json, the
list the launchers pick variants from by default.

Without CUDA, ``--variant`` needs ``--quick`` (else it says so and exits 2): one tiny shape
(fp32) through Triton's interpreter (TRITON_INTERPRET=1, set here before triton is
imported) against a float64 reference, no timing; a variant the interpreter cannot run (the
Gluon halo kernel) runs its torch emulation (``kernels/halo_emulation.py``) instead.
``--quick`` on a GPU runs the same tiny shape there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# (C, H) of the ResNet18-CIFAR stride-1 3x3 layers; C_in = C_out = C, C_b = C / 4
SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]
BATCH = 256
QUICK = (2, 8, 6)  # batch, channels, size of the --quick shape (C_b = 2)


def _problem(n: int, c: int, h: int, dtype, device, seed: int = 0):
    """x, basis, coeff, bias, perm of a keep-basis layer with C_b = c / 4."""
    g = torch.Generator().manual_seed(seed)
    cb = c // 4

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    x = r(n, c, h, h).contiguous(memory_format=torch.channels_last)
    basis = r(cb, c, 3, 3, scale=(c * 9) ** -0.5)
    coeff = r(c - cb, cb, scale=cb**-0.5)
    bias = r(c, scale=0.1)
    perm = torch.randperm(c, generator=g).to(device)
    return x, basis, coeff, bias, perm


def _reference(x, basis, coeff, bias, perm, dtype):
    from tritonbasis.op.reference import basis_conv2d_reference

    up = [t.to(dtype) for t in (x, basis, coeff, bias)]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return basis_conv2d_reference(*up, padding=1, keep_basis=True, perm=perm)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _geometry(x, basis, coeff, bias, perm):
    from tritonbasis.op import geometry

    return geometry.check_inputs(x, basis, coeff, bias, (1, 1), (1, 1), (1, 1), True, perm)


def _run(variant: str, args):
    """(output, the kernel that ran) of the op with ``variant`` forced."""
    import tritonbasis as tb
    from tritonbasis.op import launch_plan, launchers

    launchers.force_forward_variant(variant)
    launch_plan.clear_caches()
    ran = launchers.forward_variant(*args, _geometry(*args), False)
    x, basis, coeff, bias, perm = args
    with torch.no_grad(), tb.use_backend("triton"):
        y = tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=perm)
    return y, ran


def _error(y, ref) -> float:
    """Largest |y - ref| over the largest |ref| (inf with a NaN)."""
    y = y.to(ref.dtype)
    if torch.isnan(y).any():
        return float("inf")
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _timed(variant: str, args) -> float:
    import tritonbasis as tb
    from tritonbasis.op import launchers
    from tritonbasis.util.timing import time_fn

    launchers.force_forward_variant(variant)
    x, basis, coeff, bias, perm = args

    def call():
        with torch.no_grad(), tb.use_backend("triton"):
            tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=perm)

    return time_fn(call, device=x.device, warmup_ms=25.0, rep_ms=100.0, min_reps=10).median_ms


def _check_shape(
    variant: str, n: int, c: int, h: int, device, dtype, ref_dtype, time_it: bool
) -> dict:
    args = _problem(n, c, h, dtype, device)
    ref = _reference(*args, ref_dtype)
    y, ran = _run(variant, args)
    y2, _ = _run("fwd", args)
    err, err2 = _error(y, ref), _error(y2, ref)
    ok = ran == variant and err <= max(2 * err2, 2.0**-7)
    row = {
        "name": f"{c}ch@{h}px",
        "N": n,
        "C": c,
        "H": h,
        "C_b": c // 4,
        "ran": ran,
        "error": {"variant": err, "v2": err2},
        "ok": bool(ok),
        "time_ms": None,
    }
    if time_it:
        row["time_ms"] = {"variant": _timed(variant, args), "v2": _timed("fwd", args)}
    return row


def _emulated(variant: str) -> dict:
    """The halo kernel's schedule emulated at the --quick shape (float64)."""
    from tritonbasis.kernels.halo_emulation import emulate

    n, c, h = QUICK
    x, basis, *_ = _problem(n, c, h, torch.float64, "cpu")
    got = emulate(x, basis, (1, 1), (1, 1), (1, 1), block_m=64, block_k=32)
    want = torch.nn.functional.conv2d(x, basis, padding=1)
    err = _error(got, want)
    return {
        "name": f"{c}ch@{h}px (emulation)",
        "N": n,
        "C": c,
        "H": h,
        "C_b": c // 4,
        "ran": f"{variant} (torch emulation)",
        "error": {"variant": err, "v2": None},
        "ok": err <= 1e-12,
        "time_ms": None,
    }


def runnable() -> list[str]:
    """The forward kernels this install can run at the benchmark layers: v2 and every
    variant whose record applies to the first of them (on meta tensors: the geometry, the
    dtype and what this Triton can compile; a GPU adds its compute capability at run time)."""
    from tritonbasis.kernels import RECORDS, VARIANTS

    from tritonbasis.op import launch_plan, launchers

    c, h = SHAPES[0]
    args = _problem(BATCH, c, h, torch.bfloat16, "meta")
    g = _geometry(*args)
    out = []
    for name in VARIANTS.get("fwd", ["fwd"]):
        (lc, *_), _ = launch_plan.plan_forward(*args, g, False, 132, variant=name)
        rec = RECORDS[name]
        if rec.applies is None or rec.applies(launchers._named(lc)):
            out.append(name)
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return None


def check(variant: str, quick: bool) -> dict:
    import triton
    from tritonbasis.kernels import RECORDS, VARIANTS

    from tritonbasis.op import launchers

    if variant not in VARIANTS.get("fwd", ["fwd"]):
        raise SystemExit(f"unknown variant {variant!r}; --list shows them")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rows = []
    if quick and not cuda and not RECORDS[variant].interpretable:
        rows.append(_emulated(variant))
    elif quick:
        n, c, h = QUICK
        dtype = torch.bfloat16 if cuda else torch.float32
        rows.append(
            _check_shape(
                variant,
                n,
                c,
                h,
                device,
                dtype,
                torch.float32 if cuda else torch.float64,
                time_it=False,
            )
        )
    else:
        for c, h in SHAPES:
            rows.append(
                _check_shape(
                    variant, BATCH, c, h, device, torch.bfloat16, torch.float32, time_it=True
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    launchers.force_forward_variant(None)
    cap = torch.cuda.get_device_capability() if cuda else None
    return {
        "variant": variant,
        "ok": all(r["ok"] for r in rows),
        "quick": quick,
        "shapes": rows,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "capability": f"{cap[0]}.{cap[1]}" if cap else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "source_hash": launchers.source_hash(variant),
        "commit": _git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the runnable forward kernels")
    p.add_argument("--variant", help="the forward kernel to check (a name --list prints)")
    p.add_argument("--out", help="where to write the JSON result (with --variant)")
    p.add_argument("--quick", action="store_true", help="one tiny shape (CPU: interpreter)")
    args = p.parse_args(argv)
    if args.list == bool(args.variant):
        p.error("give exactly one of --list and --variant")
    if args.variant and not args.out:
        p.error("--variant needs --out FILE.json")
    if args.variant and not torch.cuda.is_available():
        if not args.quick:
            print(
                "bench/variants.py needs CUDA (or --quick for the interpreter dry run)",
                file=sys.stderr,
            )
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    if args.list:
        print("\n".join(runnable()))
        return 0
    result = check(args.variant, args.quick)
    from tritonbasis.util.fileio import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"{args.variant}: {'ok' if result['ok'] else 'NOT OK'} -> {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
