"""``tritonbasis profile``: training steps under torch.profiler (Chrome trace, op / kernel /
layer tables), or under NVTX ranges for nsys / ncu."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .common import add_model_args, converted_model, run_folder
from .guard import nonneg_int, positive_int


def add_parser(sub) -> None:
    pr = sub.add_parser("profile", help="training steps under torch.profiler: Chrome trace, "
                                        "op/kernel/layer tables")
    add_model_args(pr)
    pr.add_argument("--image-size", type=positive_int, default=32,
                    help="input size (default 32)")
    pr.add_argument("--batch", type=positive_int, default=None,
                    help="default 256 (CUDA), 16 (CPU)")
    pr.add_argument("--steps", type=positive_int, default=5, help="profiled training steps (5)")
    pr.add_argument("--warmup", type=nonneg_int, default=2, help="untimed steps first (2)")
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    pr.add_argument("--out", default=None, help="output folder (default runs/profile-<time>)")
    pr.add_argument("--nvtx", action="store_true",
                    help="NVTX ranges per layer (FQN) and per step, for nsys / ncu")
    pr.add_argument("--no-trace", action="store_true",
                    help="no torch.profiler (to run under nsys or ncu; use with --nvtx)")
    pr.add_argument("--no-amp", action="store_true",
                    help="fp32 on CUDA instead of bf16 autocast + channels_last")
    pr.add_argument("--rows", type=positive_int, default=25, help="rows per table (25)")


def run(args) -> int:
    from ..perf.profiling import profile_training

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    model, report = converted_model(args, default_ratio=0.25)
    batch = args.batch or (256 if device.type == "cuda" else 16)
    out = Path(args.out or f"runs/profile-{time.strftime('%Y%m%d-%H%M%S')}")
    n = sum(1 for r in report.layers if r.converted) if report else 0
    print(f"tritonbasis profile: {args.model} (width {args.width}), {n} BasisConv2d layers, "
          f"batch {batch} at {args.image_size}x{args.image_size}, {args.steps} steps -> {out}")
    with run_folder(out, "profile"):  # writable and ours before the first step
        profile_training(model, (batch, 3, args.image_size, args.image_size),
                         steps=args.steps, out_dir=out, device=device, amp=not args.no_amp,
                         warmup=args.warmup, nvtx=args.nvtx, trace=not args.no_trace,
                         row_limit=args.rows)
    return 0
