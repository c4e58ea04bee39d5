"""``tritonbasis`` command line.

  demo      build a basis-conv layer, check it against the float64 reference on real images
            (scikit-learn's bundled digits, no download), print its parameter/FLOP/time saving
  convert   print the conversion report of a model under a plan (or one spec for every conv)
  train     train a model (dense, or converted by a plan) on digits or a local CIFAR-10
  search    layer-sensitivity search: which convs tolerate a basis (the main job; with no
            arguments it runs on the embedded digits in a few minutes on a CPU)
  bench     benchmark the op against its baselines (and a model end to end); writes
            bench/results/<gpu>-<date>-<commit>.json and .md (--quick: a CPU smoke run)
  tune      pre-tune a model's layer shapes: autotune the kernels and time fused vs weight
            for mode="auto" (results in the tuning cache; needs CUDA unless --device cpu)
  profile   training steps under torch.profiler: Chrome trace, op / kernel / layer tables

The subcommands are thin: they call the same Python API (tritonbasis.convert, .train, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..nn.functional import basis_conv2d
from ..nn.layer import BasisConv2d
from ..op import reference
from ..op.geometry import check_inputs
from ..op.registry import resolve_backend
from .guard import (
    RunLock,
    check_writable,
    debug_enabled,
    device_arg,
    known_errors,
    nonneg_float,
    nonneg_int,
    one_line,
    positive_float,
    positive_int,
    readable_file,
    unit_ratio,
)


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


# --------------------------------------------------------------------------------------------
# guards: checked before any work (see tritonbasis._guard)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``prog: error: ...``, exit 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class _SubcommandErrors:
    def __init__(self, p, cmd):
        self.p, self.cmd = p, cmd

    def error(self, message):
        self.p.exit(2, f"tritonbasis {self.cmd}: error: {message} (see tritonbasis {self.cmd} "
                       "-h)\n")


class UsageError(ValueError):
    """A refused start (exit code 2): conflicting flags, a finished run without --resume."""


# Smallest input side a model family is meaningful at: resnet18_cifar halves the map in 3
# stages (8 -> 4 -> 2 -> 1); torchvision's ImageNet models in 5 (32 -> 1). Below it the last
# stages run on padding only (an --image-size 1 run "trained" without complaint).
MIN_IMAGE_SIZE = {"resnet18_cifar": 8}
MIN_IMAGE_SIZE_TORCHVISION = 32


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """Cross-argument checks at parse time: one line, exit 2 (as argparse's own errors)."""
    p = _SubcommandErrors(p, args.cmd)
    size = getattr(args, "image_size", None)
    model = getattr(args, "model", None)
    if size is not None and model is not None:
        need = MIN_IMAGE_SIZE.get(model, MIN_IMAGE_SIZE_TORCHVISION)
        if size < need:
            p.error(f"--image-size {size} is too small for {model} (minimum {need})")
    if getattr(args, "plan", None) and getattr(args, "ratio", None) is not None \
            and args.cmd in ("convert", "train", "tune", "profile"):
        p.error("give --plan or --ratio, not both")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        p.error("give --resume or --overwrite, not both")
    if args.cmd == "train" and args.data == "cifar10" and args.data_dir is None:
        p.error("--data cifar10 needs --data-dir (the folder holding cifar-10-batches-py/)")
    if args.cmd == "search" and args.data == "cifar10" and args.data_dir is None:
        p.error("--data cifar10 needs --data-dir (the folder holding cifar-10-batches-py/)")


def _is_writer_rank() -> bool:
    """Under torchrun only rank 0 writes the output folder (and holds its lock)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


TRAIN_OUTPUTS = ("last.pt", "result.json")
# what `search --overwrite` deletes: only names the search itself writes
SEARCH_OUTPUTS = ("state.json", "report.json", "plan.json", "summary.md", "sensitivity.png",
                  "tradeoff.png", "baseline.pt")
SEARCH_DIRS = ("baseline", "probe_tmp", "final_chosen", "final_naive")


def _guard_train_out(out: Path, args) -> None:
    """Refuse to overwrite a run unless --resume / --overwrite; with --overwrite remove its
    files (only those train writes) once the lock is held."""
    if not _is_writer_rank():  # under torchrun rank 0 alone checks and deletes
        return
    found = [n for n in TRAIN_OUTPUTS if (out / n).exists()]
    if found and not (args.resume or args.overwrite):
        raise UsageError(
            f"{str(out)!r} already holds a run ({', '.join(found)}); pass --resume to continue "
            f"it, --overwrite to replace it, or choose another --out")
    if args.overwrite:
        for n in found:
            (out / n).unlink()


def _guard_search_out(out: Path, args) -> None:
    if not args.overwrite or not _is_writer_rank():
        return
    import shutil

    for n in SEARCH_OUTPUTS:
        if (out / n).is_file():
            (out / n).unlink()
    for n in SEARCH_DIRS:
        if (out / n).is_dir():
            shutil.rmtree(out / n)


@contextlib.contextmanager
def _run_folder(out: Path, command: str):
    """Writable check + lock for the whole command (rank 0 only under torchrun)."""
    if not _is_writer_rank():
        yield out
        return
    existed = out.exists()
    check_writable(out)
    try:
        with RunLock(out, command=command):
            yield out
    except BaseException:
        # a start refused before it wrote anything leaves no empty folder behind
        if not existed:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        raise


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


def _add_model_args(p):
    p.add_argument("--model", default="resnet18_cifar",
                   help="resnet18_cifar (default) or a torchvision classification model name")
    p.add_argument("--width", type=positive_float, default=1.0,
                   help="channel width multiplier (resnet18_cifar only; default 1.0)")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--plan", default=None, type=readable_file,
                   help="plan JSON (fully qualified name -> spec)")
    p.add_argument("--ratio", type=unit_ratio, default=None,
                   help="without --plan: convert every candidate conv at C_b = ratio * C_out")
    p.add_argument("--keep-basis", action="store_true", help="with --ratio: keep-basis form")


def _plan_from_args(args):
    from ..conversion.plan import load_plan
    from ..nn.spec import BasisSpec

    if args.plan and args.ratio is not None:
        raise SystemExit("give --plan or --ratio, not both")
    if args.plan:
        return load_plan(args.plan)
    if args.ratio is not None:
        return {"_default": BasisSpec(ratio=args.ratio, keep_basis=args.keep_basis)}
    return None


def cmd_convert(args) -> int:
    from ..conversion.convert import convert
    from ..recipes.models import get_model

    plan = _plan_from_args(args)
    if plan is None:
        raise SystemExit("convert needs --plan PLAN.json or --ratio R")
    model = get_model(args.model, num_classes=args.num_classes, width=args.width)
    _, report = convert(model, plan, input_shape=(3, args.image_size, args.image_size),
                        return_report=True, inplace=True)
    print(f"{args.model} (width {args.width}) at {args.image_size}x{args.image_size}, "
          f"plan: {args.plan or f'ratio {args.ratio}'}")
    print(report.table())
    if args.json:
        Path(args.json).write_text(report.to_json(indent=1))
        print(f"report written to {args.json}")
    return 0


def cmd_train(args) -> int:
    """Checks first (plan, config, output folder writable and not locked, no finished run
    overwritten), then :func:`_train_run` under the folder's lock."""
    from ..recipes.train import TrainConfig

    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    plan = _plan_from_args(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      schedule=args.schedule, seed=args.seed, device=args.device,
                      max_steps=args.max_steps, num_workers=args.workers)
    with _run_folder(out, "train"):
        _guard_train_out(out, args)
        return _train_run(args, out, plan, cfg)


def _train_run(args, out: Path, plan, cfg) -> int:
    from ..conversion.convert import convert
    from ..recipes.data import get_data
    from ..recipes.models import get_model
    from ..recipes.train import _seed_all, count_macs, count_params, measure_step_time, train
    from ..util.fileio import atomic_write_text

    kw = {"size": args.image_size} if args.data == "digits" else {}
    train_data, val_data, num_classes, info = get_data(args.data, args.data_dir, **kw)
    # same command, same run: the model's init (and a random-init conversion) from --seed too
    _seed_all(args.seed)
    model = get_model(args.model, num_classes=num_classes, width=args.width)
    report = None
    shape = tuple(train_data[0][0].shape)
    if plan is not None:
        model, report = convert(model, plan, input_shape=shape, return_report=True,
                                inplace=True)
        print(report.table())
    print(f"training {args.model} (width {args.width}) on {args.data} "
          f"({len(train_data)} train / {len(val_data)} val, {shape[1]}x{shape[2]}), "
          f"{cfg.epochs} epochs; checkpoints in {out}")
    from ..recipes import distributed as D

    result = train(model, train_data, val_data, cfg, checkpoint_dir=out, resume=args.resume,
                   progress=not args.quiet, distributed=D.is_distributed())
    if not D.is_main():  # under torchrun rank 0 alone measures and writes the result
        return 0
    macs = count_macs(model, shape)
    timing = measure_step_time(model, (args.batch_size, *shape), steps=args.time_steps,
                               device=cfg.device)
    result.extra.update({"macs_per_image": macs, "timing": timing, "data": info,
                         "model": args.model, "width": args.width,
                         "plan": args.plan, "ratio": args.ratio,
                         "conversion": report.to_dict() if report else None,
                         "world_size": D.world_size()})
    atomic_write_text(out / "result.json", result.to_json())
    print()
    print(f"{'val accuracy':24s} {100 * result.final_val_acc:.2f}% "
          f"(best {100 * result.best_val_acc:.2f}% at epoch {result.best_epoch})")
    print(f"{'parameters':24s} {count_params(model):,}")
    print(f"{'MACs per image':24s} {macs:,}")
    print(f"{'train step (batch ' + str(args.batch_size) + ')':24s} "
          f"{timing['train_step_ms']:.1f} ms  (p20 {timing['train_step_ms_p20']:.1f}, "
          f"p80 {timing['train_step_ms_p80']:.1f}) on {timing['device_name']}")
    print(f"{'inference (same batch)':24s} {timing['infer_ms']:.1f} ms")
    print(f"result: {out / 'result.json'}")
    return 0


SEARCH_DEFAULT = {"model": "resnet18_cifar", "width": 0.25, "image_size": 16, "epochs": 8}


def cmd_search(args) -> int:
    """Config checked first (nothing written for a refused start), then the output folder
    (writable, not locked by a live search), then :func:`_search_run` under its lock."""
    from ..recipes.search import SearchConfig

    out = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
    spec = {"ratio": args.ratio, "keep_basis": args.keep_basis}
    cfg = SearchConfig(spec=spec, max_drop=args.max_drop, baseline_epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, probe_steps=args.probe_steps,
                       probe_lr=args.probe_lr, probe_only_converted=args.probe_only_converted,
                       gain=args.gain, final=not args.no_final, seed=args.seed,
                       device=args.device)
    with _run_folder(out, "search"):
        _guard_search_out(out, args)
        return _search_run(args, out, cfg)


def _search_run(args, out: Path, cfg) -> int:
    from ..recipes.data import get_data
    from ..recipes.models import get_model
    from ..recipes.search import sensitivity_search

    kw = {"size": args.image_size} if args.data == "digits" else {}
    train_data, val_data, num_classes, info = get_data(args.data, args.data_dir, **kw)
    torch.manual_seed(args.seed)
    model = get_model(args.model, num_classes=num_classes, width=args.width)
    is_default = (args.data == "digits" and args.model == SEARCH_DEFAULT["model"]
                  and args.width == SEARCH_DEFAULT["width"])
    print(f"tritonbasis search: {args.model} (width {args.width}) on {args.data} "
          f"({len(train_data)} train / {len(val_data)} val, "
          f"{'x'.join(map(str, info['input_shape'][1:]))} px), C_b = {args.ratio} C_out, "
          f"budget {args.max_drop} pp -> {out}")
    if is_default:
        print("  (default run sized for a CPU: a quarter-width ResNet18 on 16x16 digits; for "
              "the real experiment use --data cifar10 --data-dir DIR --width 1 on a GPU)")
    identity = {"model": args.model, "width": args.width, "data": info}
    report = sensitivity_search(model, train_data, val_data, config=cfg, out=out,
                                identity=identity, progress=not args.quiet)
    print()
    print(report.table())
    print()
    s = report.selection
    print(f"chosen {len(s['chosen'])}/{len(report.layers)} layers, predicted drop "
          f"{s['predicted_drop']:.2f} pp, verified {s['verified_drop']:.2f} pp "
          f"(budget {args.max_drop}); zero-shot vs probe Spearman rho "
          f"{report.spearman_zero_shot_vs_probe}; {report.seconds:.0f} s")
    print(f"outputs: {out}/report.json, plan.json, summary.md, sensitivity.png, tradeoff.png")
    print(f"next: tritonbasis train --plan {out}/plan.json --width {args.width} "
          f"--image-size {args.image_size}")
    return 0


def cmd_bench(args) -> int:
    from ..perf.bench import run_from_args

    return run_from_args(args)


def _converted_model(args, default_ratio=None):
    """The model of --model/--width/--num-classes converted by --plan or --ratio (or, with
    neither, by ``default_ratio`` on every candidate conv if given)."""
    from ..conversion.convert import convert
    from ..nn.spec import BasisSpec
    from ..recipes.models import get_model

    plan = _plan_from_args(args)
    if plan is None and default_ratio is not None:
        plan = {"_default": BasisSpec(ratio=default_ratio, keep_basis=args.keep_basis)}
    model = get_model(args.model, num_classes=args.num_classes, width=args.width)
    report = None
    if plan is not None:
        model, report = convert(model, plan, input_shape=(3, args.image_size, args.image_size),
                                return_report=True, inplace=True)
    return model, report


def cmd_tune(args) -> int:
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
    model, report = _converted_model(args, default_ratio=0.25)
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


def cmd_profile(args) -> int:
    from ..perf.profiling import profile_training

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    model, report = _converted_model(args, default_ratio=0.25)
    batch = args.batch or (256 if device.type == "cuda" else 16)
    out = Path(args.out or f"runs/profile-{time.strftime('%Y%m%d-%H%M%S')}")
    n = sum(1 for r in report.layers if r.converted) if report else 0
    print(f"tritonbasis profile: {args.model} (width {args.width}), {n} BasisConv2d layers, "
          f"batch {batch} at {args.image_size}x{args.image_size}, {args.steps} steps -> {out}")
    with _run_folder(out, "profile"):  # writable and ours before the first step
        profile_training(model, (batch, 3, args.image_size, args.image_size),
                         steps=args.steps, out_dir=out, device=device, amp=not args.no_amp,
                         warmup=args.warmup, nvtx=args.nvtx, trace=not args.no_trace,
                         row_limit=args.rows)
    return 0


def main(argv=None) -> int:
    """The ``tritonbasis`` command. Errors our code raises on purpose (bad values, unreadable
    or corrupt files, a locked or read-only output folder) end as one line on stderr,
    ``tritonbasis: error: ...``, with exit code 1 (2 for usage errors); ``--debug`` or
    ``TRITONBASIS_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("tritonbasis: interrupted (finished stages are saved; rerun with the same "
              "arguments to resume)", file=sys.stderr)
        return 130
    except known_errors() as e:
        if debug:
            raise
        print(f"tritonbasis: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


def _main(argv) -> int:
    p = _Parser(prog="tritonbasis", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show Python tracebacks (also TRITONBASIS_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="check a basis-conv layer against the reference and show "
                                    "its parameter/FLOP/time saving")
    d.add_argument("--channels", type=positive_int, default=128,
                   help="C_in = C_out (default 128)")
    d.add_argument("--ratio", type=positive_int, default=4,
                   help="C_b = C_out / ratio (default 4)")
    d.add_argument("--batch", type=positive_int, default=64, help="images (default 64)")
    d.add_argument("--size", type=positive_int, default=16,
                   help="image side in pixels (default 16)")
    d.add_argument("--reps", type=positive_int, default=5,
                   help="timing repetitions (default 5)")
    d.add_argument("--device", default=None, type=device_arg,
                   help="cpu or cuda (default: cuda if available)")
    c = sub.add_parser("convert", help="print the conversion report of a model and a plan")
    _add_model_args(c)
    c.add_argument("--image-size", type=positive_int, default=32,
                   help="input size for MACs (32)")
    c.add_argument("--json", default=None, help="also write the report as JSON here")
    t = sub.add_parser("train", help="train a dense or converted model; report accuracy, "
                                     "params, MACs, step time")
    _add_model_args(t)
    t.add_argument("--data", default="digits", choices=["digits", "cifar10"],
                   help="digits: scikit-learn's bundled images (default); cifar10: a local "
                        "folder given by --data-dir (never downloaded)")
    t.add_argument("--data-dir", default=None, help="CIFAR-10 folder (cifar-10-batches-py)")
    t.add_argument("--image-size", type=positive_int, default=32,
                   help="digits are resized to this")
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", type=positive_float, default=0.05)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "onecycle"])
    t.add_argument("--max-steps", type=positive_int, default=None,
                   help="cap on optimizer steps")
    t.add_argument("--seed", type=nonneg_int, default=0,
                   help="seeds everything: model init, conversion, shuffling (default 0)")
    t.add_argument("--device", default=None, type=device_arg,
                   help="cpu or cuda (default: cuda if available)")
    t.add_argument("--workers", type=nonneg_int, default=0, help="data loader workers")
    t.add_argument("--out", default=None, help="run folder (default runs/train-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a finished or interrupted run in OUT (refused otherwise)")
    t.add_argument("--time-steps", type=positive_int, default=10,
                   help="steps timed at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    se = sub.add_parser("search", help="layer-sensitivity search (the main job)")
    se.add_argument("--model", default=SEARCH_DEFAULT["model"])
    se.add_argument("--width", type=positive_float, default=SEARCH_DEFAULT["width"],
                    help=f"channel width (default {SEARCH_DEFAULT['width']}: CPU-sized)")
    se.add_argument("--data", default="digits", choices=["digits", "cifar10"])
    se.add_argument("--data-dir", default=None)
    se.add_argument("--image-size", type=positive_int, default=SEARCH_DEFAULT["image_size"],
                    help="digits are resized to this (default 16)")
    se.add_argument("--ratio", type=unit_ratio, default=0.25,
                    help="C_b / C_out (default 0.25)")
    se.add_argument("--keep-basis", action="store_true")
    se.add_argument("--max-drop", type=nonneg_float, default=0.5,
                    help="accuracy budget in percentage points (default 0.5)")
    se.add_argument("--epochs", type=positive_int, default=SEARCH_DEFAULT["epochs"],
                    help="baseline / final training budget (default 8)")
    se.add_argument("--batch-size", type=positive_int, default=128)
    se.add_argument("--lr", type=positive_float, default=0.05)
    se.add_argument("--probe-steps", type=nonneg_int, default=20)
    se.add_argument("--probe-lr", type=positive_float, default=0.01)
    se.add_argument("--probe-only-converted", action="store_true",
                    help="probes fine-tune only the converted conv and BN layers")
    se.add_argument("--gain", default="macs", choices=["macs", "params", "time"])
    se.add_argument("--no-final", action="store_true",
                    help="skip training the chosen and naive models")
    se.add_argument("--seed", type=nonneg_int, default=0)
    se.add_argument("--device", default=None, type=device_arg)
    se.add_argument("--out", default=None, help="output folder (default runs/search-<time>); "
                                                "an existing one is resumed")
    se.add_argument("--overwrite", action="store_true",
                    help="delete the search files in OUT and start over (instead of resuming)")
    se.add_argument("--quiet", action="store_true")
    b = sub.add_parser("bench", help="benchmark the op vs dense/unfused/compiled/weight-mod "
                                     "baselines and a model end to end; JSON + Markdown",
                       description="Benchmark suite (bench/README.md): cases x C_b ratios x "
                                   "dtypes x layouts x providers x directions, plus "
                                   "resnet18_cifar end to end. Results are written to "
                                   "OUT/<gpu>-<date>-<commit>.json and .md, never over an "
                                   "earlier run.")
    from ..perf.bench import add_arguments as _bench_arguments

    _bench_arguments(b)
    tu = sub.add_parser("tune", help="pre-tune a model's layer shapes (Triton autotune + "
                                     "fused-vs-weight timings for mode='auto', cached on disk)")
    _add_model_args(tu)
    tu.add_argument("--image-size", type=positive_int, default=32,
                    help="input size (default 32)")
    tu.add_argument("--batch", type=positive_int, default=256, help="batch size (default 256)")
    tu.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="default bfloat16 on CUDA (what bf16 autocast runs), float32 on CPU")
    tu.add_argument("--layout", default="channels_last", choices=["channels_last",
                                                                   "contiguous"])
    tu.add_argument("--objective", default="train", choices=["train", "infer"],
                    help="compare forward+backward (train, default) or forward (infer)")
    tu.add_argument("--device", default=None,
                    help="default cuda; without CUDA the command explains and exits unless "
                         "--device cpu (times the CPU torch paths)")
    tu.add_argument("--warmup-ms", type=nonneg_float, default=25.0)
    tu.add_argument("--rep-ms", type=positive_float, default=100.0)
    tu.add_argument("--min-reps", type=positive_int, default=10)
    tu.add_argument("--show", action="store_true",
                    help="print the cache location and what it holds, and exit")
    pr = sub.add_parser("profile", help="training steps under torch.profiler: Chrome trace, "
                                        "op/kernel/layer tables")
    _add_model_args(pr)
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
    args = p.parse_args(argv)
    _check_args(p, args)
    fn = {"demo": demo, "convert": cmd_convert, "train": cmd_train,
          "search": cmd_search, "bench": cmd_bench, "tune": cmd_tune,
          "profile": cmd_profile}[args.cmd]
    if args.cmd in ("train", "search"):  # under torchrun: one rank of a distributed job
        from ..recipes.distributed import run_command

        return run_command(fn, args)
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
