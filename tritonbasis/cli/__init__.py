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
# One module per subcommand (demo, convert, train, search, bench, tune, profile), each with
# add_parser(subparsers), run(args) and optionally check(parser, args) (parse-time checks);
# the shared helpers in .common, the guards (locks, argparse types, one-line errors) in .guard.

from __future__ import annotations

import argparse
import sys

from . import bench, convert, demo, profile, search, train, tune
from .common import Parser, UsageError, check_args
from .guard import debug_enabled, known_errors, one_line, out_of_memory

__all__ = ["COMMANDS", "UsageError", "main"]

# name -> module, in the order `tritonbasis -h` lists them
COMMANDS = {
    "demo": demo,
    "convert": convert,
    "train": train,
    "search": search,
    "bench": bench,
    "tune": tune,
    "profile": profile,
}
DISTRIBUTED = ("train", "search")  # under torchrun: one rank of a distributed job


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tritonbasis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--debug", action="store_true", help="show Python tracebacks (also TRITONBASIS_DEBUG=1)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for mod in COMMANDS.values():
        mod.add_parser(sub)
    return p


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
        print(
            "tritonbasis: interrupted (finished stages are saved; rerun with the same "
            "arguments to resume)",
            file=sys.stderr,
        )
        return 130
    except known_errors() as e:
        if debug:
            raise
        print(f"tritonbasis: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory(e)
        if debug or line is None:
            raise
        print(f"tritonbasis: error: {line}", file=sys.stderr)
        return 1


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    mod = COMMANDS[args.cmd]
    if hasattr(mod, "check"):
        mod.check(p, args)
    if args.cmd in DISTRIBUTED:
        from ..recipes.distributed import run_command

        return run_command(mod.run, args)
    return mod.run(args)


if __name__ == "__main__":
    sys.exit(main())
