"""The GPU session's parts as steps (bench/gpu_session.py runs them; bench/README.md "GPU
session runbook" lists them with their budgets). Each step is a command run as its own process
in the checkout under its own timeout; ``quick_*`` is what the CPU dry run does instead.

Flags are written as one string per command and split on spaces (no flag value here contains
one); paths are passed as separate arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import gpu_digest as digests  # noqa: E402  (beside this file)
import gpu_ncu  # noqa: E402
import gpu_session_tools as tools  # noqa: E402

PY = sys.executable
TOOLS = str(HERE / "gpu_session_tools.py")
NCU = str(HERE / "gpu_ncu.py")

R18 = ",".join(tools.R18_CASES)
QUICK_CASE = "quick.3x3.16ch.8px"
PROVIDERS1 = "fused,dense_cudnn,unfused_eager,weight_mod"
# ncu shapes, most decisive first: (name, C, H, C_b) at N = 256, bf16, channels_last, 3x3 s1.
NCU_SHAPES = (("256ch8px", 256, 8, 64), ("128ch16px", 128, 16, 32))
QUICK_NCU = "--device cpu --batch 2 --channels 8 --size 6 --cb 2"
QUICK_BENCH = f"--quick --cases {QUICK_CASE} --no-e2e --compile-mode none --warmup-ms 1 --rep-ms 2"


class Step:
    """One step: ``cmd`` under ``timeout`` s; ``needs`` ("cuda", "ncu"); ``setup``: rerun in
    every call that runs its part (a machine given back keeps nothing); ``skip_if()``: a
    reason to skip decided when the step is reached; ``digest(step_dir, log)``: the result's
    headline for the summary; ``env``: added to the step's environment."""

    def __init__(
        self,
        name,
        cmd,
        timeout,
        needs=(),
        env=None,
        quick_cmd=None,
        quick_timeout=None,
        quick_skip=None,
        setup=False,
        skip_if=None,
        digest=None,
    ):
        self.name, self.cmd, self.timeout, self.needs = name, cmd, timeout, tuple(needs)
        self.env = env or {}
        self.quick_cmd, self.quick_timeout, self.quick_skip = quick_cmd, quick_timeout, quick_skip
        self.setup, self.skip_if, self.digest = setup, skip_if, digest


def _f(flags: str) -> list[str]:
    return flags.split()


def _tb(flags: str, *paths) -> list[str]:
    return [PY, "-m", "tritonbasis", *_f(flags), *paths]


def _bench(out: str, flags: str) -> list[str]:
    return _tb(f"bench {flags} --out", out)


def _pytest(
    d: Path,
    name: str,
    targets: str,
    m: str | None = None,
    k: str | None = None,
    workers: int = 0,
    per_test_s: int = 0,
    extra: str = "",
) -> list[str]:
    """pytest on ``targets`` (``-m m``, ``-k k``), verbose (one line per test as it finishes: a
    killed step still shows what passed), junit XML, collection errors elsewhere in tests/ not
    fatal; ``workers``: pytest-xdist processes (compiles in parallel), ``per_test_s``:
    pytest-timeout's limit, each only when installed; ``extra``: more flags (xdist's)."""
    cmd = [
        PY,
        "-m",
        "pytest",
        *_f("-v -rfE -p no:cacheprovider --continue-on-collection-errors"),
        f"--junitxml={d}/{name}.xml",
        *_f(targets),
    ]
    if workers and tools._has_module("xdist"):
        cmd += ["-n", str(workers), *_f(extra)]
    if per_test_s and tools._has_module("pytest_timeout"):
        cmd.append(f"--timeout={per_test_s}")
    return cmd + (["-m", m] if m else []) + (["-k", k] if k else [])


def _cpus() -> int:
    return os.cpu_count() or 1


def _variants_missing() -> str | None:
    return None if tools.VARIANTS.is_file() else "bench/variants.py is not in this checkout"


def _setup_steps(d: Path, warm: bool) -> list[Step]:
    steps = [
        Step(
            "install",
            [PY, TOOLS, "install", "--force"],
            60,
            setup=True,
            quick_skip="dry run: no pip install (the import check still runs)",
        ),
        Step("env", [PY, TOOLS, "env", str(d / "env.json")], 45, setup=True),
    ]
    if warm:
        # ~83 compiles of the four shapes on all CPUs (~1-1.5 s each): 10-25 s; the bench's
        # autotuner then only times (once the compile tier's cache keys equal the runtime's)
        warm_json = f"{d}/warm.json"
        steps.append(
            Step(
                "warm",
                [PY, TOOLS, "warm", "--workers", str(_cpus()), "--out", warm_json],
                75,
                setup=True,
                quick_skip="dry run: the job list is checked by tests/perf/test_gpu_session.py",
                digest=digests.json_file("warm.json"),
            )
        )
    return steps


def steps_for(part: int, d: Path, quick: bool) -> list[Step]:
    """The steps of one part; ``d`` is the part's step folder."""
    parts = {1: _part1, 2: _part2, 3: _part3, 4: _part4}
    if part not in parts:
        raise ValueError(f"part must be 1, 2, 3 or 4, got {part}")
    return parts[part](d, quick)


def _part1(d: Path, quick: bool) -> list[Step]:
    """The decisive questions, most decisive first (bench/README.md has the budget table)."""
    s = str(d)
    both = f"--directions fwd,fwd+bwd --providers {PROVIDERS1}"
    steps = _setup_steps(d, warm=True) + [
        # the go/no-go number per shape; TRITON_PRINT_AUTOTUNING: the configs chosen, in the log
        Step(
            "bench_r18",
            _bench(
                f"{s}/bench_r18", f"--cases {R18} --ratios 1/4 {both} --compile-mode none --no-e2e"
            ),
            150,
            env={"TRITON_PRINT_AUTOTUNING": "1"},
            quick_cmd=_bench(f"{s}/bench_r18", f"{QUICK_BENCH} {both}"),
            quick_timeout=90,
            digest=digests.bench("bench_r18"),
        ),
        # every autotuned launch's candidates and winner (Triton prints only what it tuned)
        Step(
            "autotune_log",
            [PY, TOOLS, "autotune-log", f"{s}/autotune.json"],
            20,
            digest=digests.json_file("autotune.json"),
        ),
        # every kept config of every kernel forced at the production shapes (bias + perm)
        Step(
            "configs",
            _pytest(d, "configs", "tests", m="gpu_configs", workers=_cpus(), per_test_s=150),
            100,
            needs=("cuda",),
            digest=digests.pytest_log,
        ),
    ]
    for name, c, h, cb in NCU_SHAPES:
        out = f"{s}/ncu_{name}.json"
        steps.append(
            Step(
                f"ncu_{name}",
                [
                    PY,
                    NCU,
                    "run",
                    "--out",
                    out,
                    "--timeout",
                    "40",
                    "--",
                    *_f(f"--channels {c} --size {h} --cb {cb}"),
                ],
                45,
                needs=("cuda", "ncu"),
                digest=digests.json_file(f"ncu_{name}.json"),
            )
        )
    steps += [
        # --dist loadgroup: xdist_group keeps the two ~40 GB INT64 tests on one worker
        Step(
            "extra",
            _pytest(
                d,
                "extra",
                "tests",
                m="gpu_int64 or gpu_splitk or gpu_dcoeff",
                workers=4,
                per_test_s=90,
                extra="--dist loadgroup",
            ),
            90,
            needs=("cuda",),
            digest=digests.pytest_log,
        ),
        Step(
            "variants",
            [PY, TOOLS, "variants", "--out", f"{s}/variants", *_f("--budget 80 --per-variant 45")],
            90,
            skip_if=_variants_missing,
            quick_cmd=[
                PY,
                TOOLS,
                "variants",
                "--out",
                f"{s}/variants",
                *_f("--budget 60 --per-variant 60 --quick --first-only"),
            ],
            digest=digests.json_file("variants/variants.json"),
        ),
        # last, cut by the budget: the interpreter tier's tests on the real kernels with the
        # FIXED configs (few compiles; logic bugs on real hardware)
        Step(
            "kernel_tests",
            _pytest(
                d,
                "kernel_tests",
                "tests/kernels/test_kernels.py tests/kernels/test_backward_v2.py",
                workers=_cpus(),
                per_test_s=120,
            ),
            150,
            needs=("cuda",),
            env={"TRITONBASIS_AUTOTUNE": "0"},
            digest=digests.pytest_log,
        ),
    ]
    return steps


def _part2(d: Path, quick: bool) -> list[Step]:
    """Baselines and the other dtypes and shapes."""
    s = str(d)
    both = "--directions fwd,fwd+bwd --compile-mode none --no-e2e"
    return _setup_steps(d, warm=True) + [
        # max-autotune compiles fwd and fwd+bwd graphs per shape (minutes in all); the JSON
        # is rewritten after each variant, so a timeout keeps the shapes already measured.
        # (Inductor's C++ build on a 2-core CPU takes minutes: the dry run has it off.)
        Step(
            "bench_r18_compiled",
            _bench(
                f"{s}/bench_r18_compiled",
                f"--cases {R18} --ratios 1/4 --directions fwd,fwd+bwd "
                "--providers fused,dense_cudnn,unfused_compiled --compile-mode max-autotune "
                "--no-e2e",
            ),
            200,
            quick_cmd=_bench(
                f"{s}/bench_r18_compiled",
                f"{QUICK_BENCH} --directions fwd --providers fused,dense_cudnn",
            ),
            quick_timeout=90,
            digest=digests.bench("bench_r18_compiled"),
        ),
        Step(
            "bench_fp16_tf32",
            _bench(
                f"{s}/bench_fp16_tf32",
                "--cases r18.layer2.3x3.128ch.16px,r18.layer3.3x3.256ch.8px "
                "--ratios 1/4 --dtype float16,float32 --tf32 on "
                f"--providers fused,dense_cudnn,unfused_eager {both}",
            ),
            90,
            needs=("cuda",),
            digest=digests.bench("bench_fp16_tf32"),
        ),
        Step(
            "bench_fp32_ieee",
            _bench(
                f"{s}/bench_fp32_ieee",
                "--cases r18.layer2.3x3.128ch.16px --ratios 1/4 "
                f"--dtype float32 --tf32 off --providers fused,dense_cudnn,unfused_eager {both}",
            ),
            60,
            needs=("cuda",),
            digest=digests.bench("bench_fp32_ieee"),
        ),
        Step(
            "bench_r50",
            _bench(
                f"{s}/bench_r50", f"--cases resnet50 --ratios 1/4 --providers {PROVIDERS1} {both}"
            ),
            130,
            quick_skip="dry run: bench_r18_compiled ran the bench plumbing (flags: parsed by "
            "tests/perf/test_gpu_session.py)",
            digest=digests.bench("bench_r50"),
        ),
        # the GPU tier's bf16 third (its fp32 / fp16 two thirds: part 4)
        Step(
            "gpu_tests_bf16",
            _pytest(
                d, "gpu_tests_bf16", "tests", m="gpu", k="bfloat16", workers=_cpus(), per_test_s=120
            ),
            120,
            needs=("cuda",),
            digest=digests.pytest_log,
        ),
    ]


def _part3(d: Path, quick: bool) -> list[Step]:
    """Tuning, end to end, profile."""
    s = str(d)
    plan = f"{s}/plan_layer234.json"
    tune = "tune --model resnet18_cifar --ratio 0.25 --keep-basis"
    parsed = "dry run: minutes of CPU timing; flags parsed by tests/perf/test_gpu_session.py"
    return _setup_steps(d, warm=False) + [
        Step("write_plan", [PY, TOOLS, "write-plan", plan, f"{s}/plan_quick.json"], 30),
        # tune first: mode="auto" in the end-to-end models then uses measured timings; the
        # second run must find everything cached (Triton's autotune results, mode timings).
        # The dry run times one layer's shape (the plan's last layer), forward only.
        Step(
            "tune",
            _tb(tune),
            150,
            quick_timeout=90,
            quick_cmd=_tb(
                "tune --device cpu --width 0.125 --image-size 8 --batch 2 "
                "--objective infer --warmup-ms 1 --rep-ms 2 --min-reps 2 --plan",
                f"{s}/plan_quick.json",
            ),
        ),
        Step("tune_again", _tb(tune), 60, quick_skip="dry run: the same command as tune"),
        Step("tune_show", _tb("tune --show"), 30, quick_skip="dry run: tune ran the CLI"),
        Step(
            "e2e",
            _bench(f"{s}/e2e", "--e2e-only"),
            120,
            quick_skip=parsed,
            digest=digests.bench("e2e"),
        ),
        Step(
            "e2e_plan",
            _bench(f"{s}/e2e_plan", f"--e2e-only --plan {plan}"),
            100,
            quick_skip=parsed,
            digest=digests.bench("e2e_plan"),
        ),
        Step(
            "profile",
            _tb(
                "profile --ratio 0.25 --keep-basis --steps 3 --warmup 2 --nvtx --out",
                f"{s}/profile",
            ),
            90,
            quick_skip=parsed,
        ),
        # torch.compile registration routes on the GPU (Inductor's CPU build: minutes)
        Step("probe", [PY, "tools/probe_registration.py"], 60, needs=("cuda",)),
    ]


def _part4(d: Path, quick: bool) -> list[Step]:
    """Every ncu section at two shapes, and the rest of the GPU tier."""
    s = str(d)
    ncu = gpu_ncu.find_ncu() or "ncu"
    steps = _setup_steps(d, warm=False)
    for i, (name, c, h, cb) in enumerate(NCU_SHAPES):
        drv = _f(f"--channels {c} --size {h} --cb {cb}")
        rep = f"{s}/ncu_{name}"
        steps += [
            # the driver alone: checks the layer runs, prints its median
            Step(
                f"driver_{name}",
                [PY, NCU, "driver", *drv],
                60,
                quick_timeout=60,
                quick_cmd=[PY, NCU, "driver", *_f(QUICK_NCU)],
                quick_skip=f"dry run: driver_{NCU_SHAPES[0][0]} ran" if i else None,
            ),
            # every section (~40 replay passes of a 10-100 us kernel: seconds)
            Step(
                f"ncu_full_{name}",
                [PY, NCU, "run", "--set", "full", "--export", rep, "--timeout", "140", "--", *drv],
                150,
                needs=("cuda", "ncu"),
            ),
            Step(
                f"ncu_{name}_raw",
                [ncu, "--import", f"{rep}.ncu-rep", *_f("--page raw --csv")],
                40,
                needs=("ncu",),
            ),
        ]
    steps += [
        Step("ncu_summary", [PY, NCU, "summary", s], 30),
        Step(
            "gpu_tests_rest",
            _pytest(
                d,
                "gpu_tests_rest",
                "tests",
                m="gpu",
                k="not bfloat16",
                workers=_cpus(),
                per_test_s=120,
            ),
            150,
            needs=("cuda",),
            digest=digests.pytest_log,
        ),
    ]
    return steps
