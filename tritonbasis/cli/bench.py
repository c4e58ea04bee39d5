"""``tritonbasis bench``: the benchmark suite (bench/README.md); its flags are
:class:`~tritonbasis.perf.bench.BenchConfig`'s, declared by :mod:`tritonbasis.perf.bench`."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..perf.bench import add_arguments

    b = sub.add_parser(
        "bench",
        help="benchmark the op vs dense/unfused/compiled/weight-mod "
        "baselines and a model end to end; JSON + Markdown",
        description="Benchmark suite (bench/README.md): cases x C_b ratios x "
        "dtypes x layouts x providers x directions, plus "
        "resnet18_cifar end to end. Results are written to "
        "OUT/<gpu>-<date>-<commit>.json and .md, never over an "
        "earlier run.",
    )
    add_arguments(b)


def run(args) -> int:
    from ..perf.bench import run_from_args

    return run_from_args(args)
