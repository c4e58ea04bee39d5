"""Benchmark harness (``tritonbasis bench``; bench/README.md documents the cases, providers,
timing and results format). ``tritonbasis bench`` (the runner) and the pytest-benchmark tests
in ``bench/test_bench_ops.py`` share everything here:

* :mod:`.cases` -- the layer shapes, groups, ratios and choices, :class:`Variant`;
* :mod:`.providers` -- :class:`Problem`: the five providers as timed callables (inputs rotate
  inside the call);
* :mod:`.peaks` -- matmul and copy rates measured in the same run;
* :mod:`.report` -- FLOPs / bytes / roofline per record, provenance, result files, Markdown;
* :mod:`.e2e` -- resnet18_cifar training step and inference, dense vs converted;
* :mod:`.runner` -- :class:`BenchConfig` (the command's flags are generated from it),
  :func:`run`, :func:`run_from_args`.

Every measurement goes through the one timer, :func:`tritonbasis.util.timing.time_fn`
(``triton.testing.do_bench`` / ``do_bench_cudagraph`` on CUDA, ``torch.utils.benchmark`` on
CPU). Figures: ``tflops`` on the basis FLOPs (the fused op's registered FLOP formula -- the
same count for every provider), ``gbps`` on the fewest bytes the basis op must move,
``roofline_pct`` = 100 x max(FLOPs/peak, bytes/bandwidth) / time against the peaks measured
in the same run.
"""

from ...util.timing import Timing
from .cases import (
    CASES,
    DEFAULT_CASES,
    DIRECTIONS,
    DTYPES,
    GROUPS,
    LAYOUTS,
    PROVIDERS,
    RATIOS,
    Case,
    Variant,
    parse_choice,
    parse_ratios,
    select_cases,
    variants,
)
from .e2e import BUILTIN_PLAN, E2E_VARIANTS, bench_end_to_end
from .peaks import measure_peaks
from .providers import ROTATE_BYTES, Problem, Skip, fused_implementation, fused_unavailable
from .report import (
    FORMAT,
    RECORD_KEYS,
    SHAPE_KEYS,
    basis_bytes,
    basis_flops,
    claim_result_paths,
    make_record,
    markdown,
    write_results,
)
from .runner import (
    GRAPH_MAX_OUT_ELEMS,
    BenchConfig,
    add_arguments,
    bench_variant,
    resolve,
    run,
    run_from_args,
    use_graph,
)

__all__ = [
    "BUILTIN_PLAN",
    "CASES",
    "DEFAULT_CASES",
    "DIRECTIONS",
    "DTYPES",
    "E2E_VARIANTS",
    "FORMAT",
    "GRAPH_MAX_OUT_ELEMS",
    "GROUPS",
    "LAYOUTS",
    "PROVIDERS",
    "RATIOS",
    "RECORD_KEYS",
    "ROTATE_BYTES",
    "SHAPE_KEYS",
    "BenchConfig",
    "Case",
    "Problem",
    "Skip",
    "Timing",
    "Variant",
    "add_arguments",
    "basis_bytes",
    "basis_flops",
    "bench_end_to_end",
    "bench_variant",
    "claim_result_paths",
    "fused_implementation",
    "fused_unavailable",
    "make_record",
    "markdown",
    "measure_peaks",
    "parse_choice",
    "parse_ratios",
    "resolve",
    "run",
    "run_from_args",
    "select_cases",
    "use_graph",
    "variants",
    "write_results",
]
