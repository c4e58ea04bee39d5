"""First measurement of the fused op (issue: core op), now a preset of the benchmark suite
(:mod:`tritonbasis.perf.bench`, ``tritonbasis bench``): forward and forward+backward at the
ResNet18-CIFAR 3x3 stride-1 layer shapes, C_b = C_out/4, ``dense_cudnn``, ``unfused_eager``,
``weight_mod`` and ``fused`` side by side, no end-to-end timing. Equivalent to

    tritonbasis bench --cases 'r18.layer?.3x3.*' --ratios 1/4 --directions fwd,fwd+bwd \\
        --providers dense_cudnn,unfused_eager,weight_mod,fused --no-e2e

Results: bench/results/<gpu>-<date>-<commit>.json and .md (never overwritten: a suffix is
added), in the suite's format (bench/README.md). Other ``tritonbasis bench`` options pass
through (``--dtype``, ``--layout``, ``--out``, ...).

    python bench/bench_core.py               # GPU: bf16, channels_last, batch 256
    python bench/bench_core.py --quick       # CPU smoke run (the quick cases)
"""

from __future__ import annotations

import sys

from tritonbasis.cli import main as cli_main

PRESET = [
    "--ratios",
    "1/4",
    "--directions",
    "fwd,fwd+bwd",
    "--providers",
    "dense_cudnn,unfused_eager,weight_mod,fused",
    "--no-e2e",
]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    cases = [] if "--cases" in argv or "--quick" in argv else ["--cases", "r18.layer?.3x3.*"]
    return cli_main(["bench", *cases, *PRESET, *argv])


if __name__ == "__main__":
    raise SystemExit(main())
