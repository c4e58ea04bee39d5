"""What several subcommands share: the one-line usage errors, the cross-argument checks, the
run folder (writable, locked, rank 0 only under torchrun), the model flags (``--model``,
``--width``, ``--plan``/``--ratio``) and the model they build, flags generated from a config
dataclass and the config built back (a refused value is a usage error naming its flag), and
the demo's digits batch."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..util.config_args import add_dataclass_arguments, field_flags, from_args
from .guard import (
    RunLock,
    check_writable,
    positive_int,
    readable_file,
    unit_ratio,
    width_float,
)

__all__ = [
    "MIN_IMAGE_SIZE",
    "MIN_IMAGE_SIZE_TORCHVISION",
    "Parser",
    "SubcommandErrors",
    "UsageError",
    "add_config_arguments",
    "add_model_args",
    "check_args",
    "check_data_dir",
    "config_from_args",
    "converted_model",
    "digits_batch",
    "is_writer_rank",
    "load_plan_file",
    "plan_from_args",
    "run_folder",
]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``prog: error: ...``, exit 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class SubcommandErrors:
    """``tritonbasis CMD: error: ...`` (exit 2) for a check made after parsing."""

    def __init__(self, p, cmd):
        self.p, self.cmd = p, cmd

    def error(self, message):
        self.p.exit(
            2, f"tritonbasis {self.cmd}: error: {message} (see tritonbasis {self.cmd} -h)\n"
        )


class UsageError(ValueError):
    """A refused start (exit code 2): conflicting flags, a finished run without --resume."""


# Smallest input side a model family is meaningful at: resnet18_cifar halves the map in 3
# stages (8 -> 4 -> 2 -> 1); torchvision's ImageNet models in 5 (32 -> 1). Below it the last
# stages run on padding only (an --image-size 1 run "trained" without complaint).
MIN_IMAGE_SIZE = {"resnet18_cifar": 8}
MIN_IMAGE_SIZE_TORCHVISION = 32


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Cross-argument checks every command shares, at parse time: one line, exit 2."""
    e = SubcommandErrors(p, args.cmd)
    size = getattr(args, "image_size", None)
    model = getattr(args, "model", None)
    if size is not None and model is not None:
        need = MIN_IMAGE_SIZE.get(model, MIN_IMAGE_SIZE_TORCHVISION)
        if size < need:
            e.error(f"--image-size {size} is too small for {model} (minimum {need})")
    if (
        getattr(args, "plan", None)
        and getattr(args, "ratio", None) is not None
        and args.cmd in ("convert", "train", "tune", "profile")
    ):
        e.error("give --plan or --ratio, not both")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        e.error("give --resume or --overwrite, not both")


def check_data_dir(p: argparse.ArgumentParser, args) -> None:
    if args.data == "cifar10" and args.data_dir is None:
        SubcommandErrors(p, args.cmd).error(
            "--data cifar10 needs --data-dir (the folder holding cifar-10-batches-py/)"
        )


# --------------------------------------------------------------------------------------------
# flags from a config dataclass


def _present(cls, mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``mapping`` that name a field of ``cls`` (a command's per-field
    settings survive a field renamed or removed in the dataclass)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (mapping or {}).items() if k in names}


def add_config_arguments(
    p,
    cls,
    *,
    exclude=(),
    help: Mapping[str, str] | None = None,
    fallback_help: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    choices: Mapping[str, Any] | None = None,
) -> None:
    """:func:`~tritonbasis.util.config_args.add_dataclass_arguments` with the command's
    settings for fields the class has (the others left out, so a class that changes keeps
    its command working; every field it has becomes a flag)."""
    add_dataclass_arguments(
        p,
        cls,
        exclude=exclude,
        help=_present(cls, help),
        fallback_help=fallback_help,
        names=_present(cls, names),
        types=_present(cls, types),
        choices=_present(cls, choices),
    )


def config_from_args(p, cls, args, *, names: Mapping[str, str] | None = None, **overrides):
    """``from_args(cls, args, **overrides)``; a value the dataclass refuses is a usage error
    (exit 2, one line) with its field named by its flag (``SearchConfig.max_drop`` ->
    ``--max-drop``)."""
    try:
        return from_args(cls, args, **overrides)
    except (ValueError, TypeError) as e:
        msg = str(e)
        flags = field_flags(cls, _present(cls, names))
        for name in sorted(flags, key=len, reverse=True):
            msg = msg.replace(f"{cls.__name__}.{name}", flags[name])
        SubcommandErrors(p, args.cmd).error(" ".join(msg.split()))


# --------------------------------------------------------------------------------------------
# run folder


def is_writer_rank() -> bool:
    """Under torchrun only rank 0 writes the output folder (and holds its lock)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


@contextlib.contextmanager
def run_folder(out: Path, command: str):
    """Writable check + lock for the whole command (rank 0 only under torchrun)."""
    if not is_writer_rank():
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


# --------------------------------------------------------------------------------------------
# model flags


def add_model_args(p):
    p.add_argument(
        "--model",
        default="resnet18_cifar",
        help="resnet18_cifar (default) or a torchvision classification model name",
    )
    p.add_argument(
        "--width",
        type=width_float,
        default=1.0,
        help="channel width multiplier (resnet18_cifar only; default 1.0)",
    )
    p.add_argument(
        "--num-classes", type=positive_int, default=10, help="classifier outputs (default 10)"
    )
    p.add_argument(
        "--plan", default=None, type=readable_file, help="plan JSON (fully qualified name -> spec)"
    )
    p.add_argument(
        "--ratio",
        type=unit_ratio,
        default=None,
        help="without --plan: convert every candidate conv at C_b = ratio * C_out",
    )
    p.add_argument("--keep-basis", action="store_true", help="with --ratio: keep-basis form")


def load_plan_file(path) -> dict:
    """A plan JSON file read as every file the package reads (util.fileio.load_json: a
    regular file, size-capped, UTF-8, no NaN/Infinity, bounded nesting), then checked as
    ``conversion.plan.load_plan`` checks it; every problem one ValueError naming the file."""
    from ..conversion.plan import normalize_plan
    from ..util.fileio import load_json

    doc = load_json(path, "plan file")
    plan = doc["plan"] if isinstance(doc, dict) and "plan" in doc else doc
    try:
        return normalize_plan(plan)
    except (TypeError, ValueError) as e:
        raise ValueError(f"plan file {path}: {e}") from None


def plan_from_args(args):
    from ..nn.spec import BasisSpec

    if args.plan and args.ratio is not None:
        raise SystemExit("give --plan or --ratio, not both")
    if args.plan:
        return load_plan_file(args.plan)
    if args.ratio is not None:
        return {"_default": BasisSpec(ratio=args.ratio, keep_basis=args.keep_basis)}
    return None


def converted_model(args, default_ratio=None):
    """The model of --model/--width/--num-classes converted by --plan or --ratio (or, with
    neither, by ``default_ratio`` on every candidate conv if given)."""
    from ..conversion.convert import convert_with_report
    from ..nn.spec import BasisSpec
    from ..recipes.models import get_model

    plan = plan_from_args(args)
    if plan is None and default_ratio is not None:
        plan = {"_default": BasisSpec(ratio=default_ratio, keep_basis=args.keep_basis)}
    model = get_model(args.model, num_classes=args.num_classes, width=args.width)
    report = None
    if plan is not None:
        shape = (3, args.image_size, args.image_size)
        model, report = convert_with_report(model, plan, input_shape=shape, inplace=True)
    return model, report


def digits_batch(n: int, size: int, channels: int, device, dtype) -> tuple[torch.Tensor, str]:
    """``(images, what)``: n real handwritten digits (8x8, scikit-learn's bundled copy), resized
    to size x size and lifted to `channels` channels by a fixed random 1x1 projection, and
    ``"digits"``; without scikit-learn n random images and ``"random"`` (the caller names
    what it ran on)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # the demo still runs; say so
        print("scikit-learn not installed: using random images instead of digits")
        return torch.randn(n, channels, size, size, device=device, dtype=dtype), "random"
    imgs = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0
    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    proj = torch.randn(channels, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = F.conv2d(imgs - imgs.mean(), proj)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last), "digits"
