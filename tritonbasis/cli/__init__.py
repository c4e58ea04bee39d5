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
convert, train, search, tune and profile need the [search] extra (models, data, training):
pip install "tritonbasis[search]"; demo and bench run on torch alone.
"""
# One module per subcommand (demo, convert, train, search, bench, tune, profile), each with
# add_parser(subparsers), run(args) and optionally check(parser, args) (parse-time checks);
# the shared helpers in .common, the guards (locks, argparse types, one-line errors) in .guard.
# The subcommand modules load when the parser is built: search and train import the recipes,
# which need the [search] extra; without it they stay listed and say so in one line (as do
# convert, tune and profile when they reach the recipes).

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Mapping
from types import ModuleType

from ..util.extras import extra_of, message
from .common import Parser, UsageError, check_args
from .guard import debug_enabled, known_errors, one_line, out_of_memory

__all__ = ["COMMANDS", "UsageError", "main"]

# in the order `tritonbasis -h` lists them
_NAMES = ("demo", "convert", "train", "search", "bench", "tune", "profile")
DISTRIBUTED = ("train", "search")  # under torchrun: one rank of a distributed job


class _Commands(Mapping[str, ModuleType]):
    """name -> subcommand module, imported on first access."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in _NAMES:
            raise KeyError(name)
        return importlib.import_module(f"{__name__}.{name}")

    def __iter__(self) -> Iterator[str]:
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)


COMMANDS: Mapping[str, ModuleType] = _Commands()


def _missing_extra(e: ImportError) -> str | None:
    """The extra whose absence ``e`` reports, or None (a real bug: re-raised)."""
    if not isinstance(e, ModuleNotFoundError):
        return None
    return extra_of(e.name)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tritonbasis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--debug", action="store_true", help="show Python tracebacks (also TRITONBASIS_DEBUG=1)"
    )
    p.needs_extra = {}  # command -> the missing extra it needs
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in _NAMES:
        try:
            mod = COMMANDS[name]
        except ModuleNotFoundError as e:
            extra = _missing_extra(e)
            if extra is None:
                raise
            # listed, takes any arguments, and _main answers with the one line
            sub.add_parser(name, help=f"(needs the [{extra}] extra)", add_help=False)
            p.needs_extra[name] = extra
            continue
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
    except ModuleNotFoundError as e:
        extra = _missing_extra(e)
        if debug or extra is None:
            raise
        print(message(f"tritonbasis {_command(argv)}".rstrip(), extra), file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory(e)
        if debug or line is None:
            raise
        print(f"tritonbasis: error: {line}", file=sys.stderr)
        return 1


def _command(argv) -> str:
    """The subcommand named in ``argv`` ("" if none)."""
    return next((a for a in argv if a in _NAMES), "")


def _main(argv) -> int:
    p = build_parser()
    cmd = _command(argv)
    if cmd in p.needs_extra:  # before parsing: its arguments are not known here
        print(message(f"tritonbasis {cmd}", p.needs_extra[cmd]), file=sys.stderr)
        return 1
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
