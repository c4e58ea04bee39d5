"""``tritonbasis tune``: pre-tune a model's layer shapes (Triton autotune, and the
fused-vs-weight timings ``mode="auto"`` reads), results in the tuning cache."""

from __future__ import annotations

import json

import torch

from .common import add_model_args, converted_model
from .guard import nonneg_float, positive_float, positive_int


def add_parser(sub) -> None:
    tu = sub.add_parser("tune", help="pre-tune a model's layer shapes (Triton autotune + "
                                     "fused-vs-weight timings for mode='auto', cached on disk)")
    add_model_args(tu)
    tu.add_argument("--image-size", type=positive_int, default=32,
                    help="input size (default 32)")
    tu.add_argument("--batch", type=positive_int, default=256, help="batch size (default 256)")
    tu.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="default bfloat16 on CUDA (what bf16 autocast runs), float32 on CPU")
    tu.add_argument("--layout", default="channels_last", choices=["channels_last",
                                                                   "contiguous"],
                    help="memory layout of the timed inputs (default channels_last)")
    tu.add_argument("--objective", default="train", choices=["train", "infer"],
                    help="compare forward+backward (train, default) or forward (infer)")
    tu.add_argument("--device", default=None,
                    help="default cuda; without CUDA the command explains and exits unless "
                         "--device cpu (times the CPU torch paths)")
    tu.add_argument("--warmup-ms", type=nonneg_float, default=25.0,
                    help="warm-up per timing (default 25)")
    tu.add_argument("--rep-ms", type=positive_float, default=100.0,
                    help="timed budget per timing (default 100)")
    tu.add_argument("--min-reps", type=positive_int, default=10,
                    help="timed calls per timing, at least (default 10)")
    tu.add_argument("--show", action="store_true",
                    help="print the cache location and what it holds, and exit")


def run(args) -> int:
    from ..op import tune_cache

    if args.show:
        print(json.dumps(tune_cache.summary(), indent=1))
        return 0
    if args.device is None and not torch.cuda.is_available():
        print("tritonbasis tune: no CUDA device, nothing to tune. The Triton kernels autotune "
              "on a GPU, and the fused-vs-weight timings that mode='auto' reads are GPU "
              "measurements; on this machine mode='auto' uses the FLOP model. "
              "(--device cpu times the CPU torch paths into the cache anyway.)")
        return 0
    from ..perf.tune import tune_model

    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    model, report = converted_model(args, default_ratio=0.25)
    n = sum(1 for r in report.layers if r.converted) if report else 0
    shape = (args.batch, 3, args.image_size, args.image_size)
    print(f"tritonbasis tune: {args.model} (width {args.width}), {n} converted convs, input "
          f"{shape}, {dtype}, {args.layout}, objective {args.objective}, on "
          f"{tune_cache.device_name(device)}; cache: {tune_cache.cache_dir()}")
    rows = tune_model(model.to(device), shape, device=device, dtype=dtype, layout=args.layout,
                      objective=args.objective, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                      min_reps=args.min_reps)
    tuned = [r for r in rows if r["mode"]]
    print(f"{len(tuned)} layer shapes timed ({sum(r['mode'] == 'fused' for r in tuned)} fused, "
          f"{sum(r['mode'] == 'weight' for r in tuned)} weight; "
          f"{sum(r['mode'] != r['flop_model'] for r in tuned)} differ from the FLOP model), "
          f"{len(rows) - len(tuned)} skipped; mode='auto' now uses these timings "
          f"(TRITONBASIS_TUNE_CACHE=0 ignores them)")
    return 0
