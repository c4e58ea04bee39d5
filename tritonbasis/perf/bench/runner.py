"""The runner (``tritonbasis bench``): one :class:`BenchConfig` -> every variant x provider x
direction timed by :func:`tritonbasis.util.timing.time_fn`, the peaks, the end-to-end models,
and the results files. The command's flags are generated from :class:`BenchConfig`
(:mod:`tritonbasis.util.config_args`), so the CLI and ``run(BenchConfig(...))`` share one set of
defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import torch

from ...util.config_args import add_dataclass_arguments, from_args
from ...util.timing import GRAPH_REPLAYS, Timing, time_fn
from .cases import (
    CASES,
    DIRECTIONS,
    DTYPES,
    LAYOUTS,
    PROVIDERS,
    Case,
    Variant,
    parse_choice,
    parse_ratios,
    select_cases,
    variants,
)
from .e2e import BUILTIN_PLAN_LABEL, bench_end_to_end
from .peaks import measure_peaks
from .providers import ROTATE_BYTES, Problem, Skip, fused_implementation, short_error
from .report import (
    FORMAT,
    claim_result_paths,
    device_description,
    git_commit,
    make_record,
    markdown,
    triton_version,
    write_results,
)

__all__ = [
    "GRAPH_MAX_OUT_ELEMS",
    "BenchConfig",
    "add_arguments",
    "bench_variant",
    "run",
    "run_from_args",
    "use_graph",
]

# Outputs with at most this many elements are "small": fwd and fwd+bwd are timed as CUDA-graph
# replays (ResNet18-CIFAR 256 ch @ 8 px and 512 @ 4 px at batch 256, ResNet-50 14 and 7 px at
# batch 64: 10-50 us per call, where a few us of launch overhead per kernel would dominate).
GRAPH_MAX_OUT_ELEMS = 2**22


@dataclasses.dataclass
class BenchConfig:
    """What ``tritonbasis bench`` runs; every field is a flag of the command (same name with
    dashes, except ``dtypes`` -> ``--dtype``, ``layouts`` -> ``--layout``, ``e2e`` ->
    ``--no-e2e``, ``ops`` -> ``--e2e-only``). ``None`` means "decided by the device and
    ``quick``" (the help texts say how). From Python the list fields also take lists
    (``cases=["quick.3x3.16ch.8px"]``, ``ratios=[0.25]``) and ``plan`` a plan dict."""

    quick: bool = False
    cases: str | Sequence[str | Case] | None = None
    ratios: str | Sequence[float | Fraction] | None = None
    dtypes: str | Sequence[str] | None = None
    layouts: str | Sequence[str] | None = None
    providers: str | Sequence[str] | None = None
    directions: str | Sequence[str] | None = None
    device: str | torch.device | None = None
    tf32: bool = True
    compile_mode: str = "auto"
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    warmup_ms: float | None = None
    rep_ms: float | None = None
    e2e: bool = True
    ops: bool = True
    plan: str | Path | dict | None = None
    e2e_ratio: float = 0.25
    e2e_steps: int | None = None
    out: str | Path = "bench/results"


HELP = {
    "quick": "small shapes, few repetitions, tiny end-to-end model (CPU smoke run)",
    "cases": "comma list of case names, groups (resnet18_cifar, resnet50, quick, all) or "
    "patterns (default: resnet18_cifar,resnet50; quick with --quick); --list shows "
    "them",
    "ratios": "C_b/C_out, comma list (default 1/8,1/4,1/2; 1/4 with --quick)",
    "dtypes": "comma list of bfloat16, float16, float32, or all (default bfloat16 on CUDA, "
    "float32 on CPU)",
    "layouts": "channels_last, contiguous, or all (default channels_last)",
    "providers": f"comma list of {', '.join(PROVIDERS)} (default all)",
    "directions": "comma list of fwd, bwd, fwd+bwd (default all)",
    "device": "cuda or cpu (default: cuda if available)",
    "tf32": "fp32 convolutions and matmuls on TF32 tensor cores (default on, PyTorch's conv "
    "default; stated in the results)",
    "compile_mode": "torch.compile mode of unfused_compiled; auto = max-autotune on CUDA, "
    "default on CPU; 'none' skips the provider",
    "cuda_graphs": "time fwd/fwd+bwd through triton.testing.do_bench_cudagraph: auto = "
    f"outputs <= 2**{GRAPH_MAX_OUT_ELEMS.bit_length() - 1} elements",
    "warmup_ms": "warm-up per measurement (default 25; 5 with --quick)",
    "rep_ms": "timed budget per measurement (default 100; 20 with --quick)",
    "e2e": "skip the end-to-end model timings",
    "ops": "only the end-to-end timings",
    "plan": "plan JSON for the end-to-end 'plan' model (default: a built-in plan, layers 3-4 "
    "at C_b = C_out/4)",
    "e2e_ratio": "C_b/C_out of the all-3x3 model",
    "e2e_steps": "timed steps end to end (default 20; 2 with --quick)",
    "out": "results folder (default bench/results); files are never overwritten",
}
NAMES = {"dtypes": "--dtype", "layouts": "--layout", "ops": "--e2e-only"}


def add_arguments(p) -> None:
    """The ``tritonbasis bench`` options (argparse): every :class:`BenchConfig` field, plus
    ``--list``."""
    add_dataclass_arguments(p, BenchConfig, help=HELP, names=NAMES, choices={"tf32": ("on", "off")})
    p.add_argument("--list", action="store_true", help="list the cases and exit")


def run_from_args(args, log=print) -> int:
    if args.list:
        for c in CASES:
            ho, wo = c.out_hw
            log(
                f"{c.name:44s} {c.group:15s} N={c.N:<4d} {c.C_in:4d}->{c.C_out:<4d} "
                f"{c.k}x{c.k} s{c.stride} p{c.padding} {c.H}x{c.W} -> {ho}x{wo}"
            )
        return 0
    cfg = from_args(BenchConfig, args)
    try:  # before anything is written: a rejected run leaves no files
        r = resolve(cfg)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if r.device.type != "cuda" and not cfg.quick and cfg.ops and cfg.cases is None:
        log(
            "note: the full ResNet cases at batch 256/64 on a CPU take a long time; "
            "--quick runs CPU-sized cases"
        )
    res = run(cfg, log=log)
    log("")
    log(markdown(res))
    log(f"wrote {res['settings']['files']['json']} and .md")
    return 0


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A :class:`BenchConfig` with every default decided for the device: what runs."""

    device: torch.device
    cases: list[Case]
    ratios: list[Fraction]
    dtypes: list[str]
    layouts: list[str]
    providers: list[str]
    directions: list[str]
    compile_mode: str | None
    warmup_ms: float
    rep_ms: float
    min_reps: int
    plan: Any
    plan_label: str

    def timing(self) -> dict[str, Any]:
        """``time_fn`` keyword arguments (CPU: blocks for at least ``rep_ms``)."""
        return {
            "warmup_ms": self.warmup_ms,
            "rep_ms": self.rep_ms,
            "min_time_s": self.rep_ms / 1e3,
            "min_reps": self.min_reps,
        }


def resolve(cfg: BenchConfig) -> Resolved:
    """Decide every default of ``cfg`` for its device; bad values are a ValueError naming
    them (before anything is written)."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    cuda = device.type == "cuda"
    if not cfg.e2e and not cfg.ops:
        raise ValueError("give --no-e2e or --e2e-only, not both")
    if cfg.cuda_graphs not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graphs must be auto, on or off, got {cfg.cuda_graphs!r}")
    plan, plan_label = None, BUILTIN_PLAN_LABEL
    if isinstance(cfg.plan, dict):
        plan, plan_label = cfg.plan, "a plan dict (Python)"
    elif cfg.plan:
        from ...conversion.plan import load_plan

        plan, plan_label = load_plan(cfg.plan), str(cfg.plan)
    compile_mode = cfg.compile_mode
    if compile_mode == "auto":
        compile_mode = "max-autotune" if cuda else "default"
    return Resolved(
        device=device,
        cases=select_cases(cfg.cases, cfg.quick),
        ratios=parse_ratios(cfg.ratios, cfg.quick),
        dtypes=parse_choice(cfg.dtypes, DTYPES, ["bfloat16" if cuda else "float32"], "dtype"),
        layouts=parse_choice(cfg.layouts, LAYOUTS, ["channels_last"], "layout"),
        providers=parse_choice(cfg.providers, PROVIDERS, list(PROVIDERS), "provider"),
        directions=parse_choice(cfg.directions, DIRECTIONS, list(DIRECTIONS), "direction"),
        compile_mode=None if compile_mode == "none" else compile_mode,
        warmup_ms=cfg.warmup_ms if cfg.warmup_ms is not None else (5.0 if cfg.quick else 25.0),
        rep_ms=cfg.rep_ms if cfg.rep_ms is not None else (20.0 if cfg.quick else 100.0),
        min_reps=3 if cfg.quick else 10,
        plan=plan,
        plan_label=plan_label,
    )


# --------------------------------------------------------------------------------------------
# One variant: every provider x direction


def use_graph(v: Variant, direction: str, device: torch.device, cuda_graphs: str) -> bool:
    if device.type != "cuda" or direction == "bwd" or cuda_graphs == "off":
        return False
    return cuda_graphs == "on" or v.case.out_elems() <= GRAPH_MAX_OUT_ELEMS


def _measure(
    prob: Problem,
    provider: str,
    direction: str,
    *,
    cuda_graphs: str,
    compile_mode: str | None,
    timing: dict,
) -> tuple[Timing, list[str]]:
    """Time one provider x direction; the notes say where it was timed another way than
    plain ``do_bench`` (a CUDA graph, or the fallback from one)."""
    device = prob.device
    fn = prob.timed(provider, direction)
    graph = use_graph(prob.v, direction, device, cuda_graphs)
    notes = []
    if provider == "unfused_compiled" and direction == "bwd":
        notes.append(
            "compiled apart with donated_buffer=False: the timed backward reuses one "
            "forward graph (retain_graph=True)"
        )
    if (
        graph
        and provider == "unfused_compiled"
        and compile_mode in ("max-autotune", "reduce-overhead")
    ):
        # Inductor captures its own CUDA graphs in these modes; a capture inside ours would
        # nest graphs
        graph = False
        notes.append(
            f"timed with CUDA events: mode={compile_mode!r} replays Inductor's own CUDA graphs"
        )
    if not graph:
        return time_fn(fn, device=device, **timing), notes
    try:
        t = time_fn(fn, device=device, cuda_graph=True, **timing)
    except Exception as e:  # capture failed (e.g. a provider that syncs): time without a graph
        notes.append(f"CUDA graph capture failed ({short_error(e)}); timed with CUDA events")
        torch.cuda.synchronize(device)
        return time_fn(fn, device=device, **timing), notes
    return t, [*notes, f"timed as {t.method}"]


def bench_variant(
    v: Variant,
    device,
    providers,
    directions,
    peaks,
    *,
    compile_mode,
    cuda_graphs="auto",
    timing: dict | None = None,
    log=print,
) -> tuple[list[dict], list[dict], list[dict]]:
    """All providers x directions of one variant: (records, skipped, notes). A provider that
    cannot run or fails is recorded in ``skipped`` with the reason; the run goes on."""
    device = torch.device(device)
    timing = timing or {}
    records, skipped, notes = [], [], []
    prob = Problem(v, device, compile_mode=compile_mode)
    try:
        for direction in directions:
            for provider in providers:
                where = {
                    "case": v.case.name,
                    "C_b": v.c_b,
                    "dtype": v.dtype,
                    "layout": v.layout,
                    "direction": direction,
                    "provider": provider,
                }
                try:
                    t, why = _measure(
                        prob,
                        provider,
                        direction,
                        cuda_graphs=cuda_graphs,
                        compile_mode=compile_mode,
                        timing=timing,
                    )
                except Skip as e:
                    skipped.append({**where, "reason": str(e)})
                    log(f"  skip {provider:16s} {direction:8s} {e}")
                    continue
                except Exception as e:  # never lose a whole run to one provider
                    skipped.append({**where, "reason": f"error: {short_error(e)}"})
                    log(f"  FAIL {provider:16s} {direction:8s} {short_error(e)}")
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.empty_cache()
                    continue
                notes += [{**where, "note": n} for n in why]
                rec = make_record(v, direction, provider, t, peaks)
                records.append(rec)
                _log_record(log, rec)
    finally:
        prob.release()
        del prob
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records, skipped, notes


def _log_record(log, rec: dict) -> None:
    roof = rec["roofline_pct"]
    log(
        f"  {rec['provider']:16s} {rec['direction']:8s} {rec['median_ms']:9.4f} ms "
        f"[{rec['p20_ms']:.4f}, {rec['p80_ms']:.4f}] {rec['tflops']:8.3f} TFLOP/s "
        f"{rec['gbps']:8.1f} GB/s {'' if roof is None else f'{roof:5.1f}% roofline'}"
    )


# --------------------------------------------------------------------------------------------
# The run


def run(config: BenchConfig | None = None, *, log=print, **overrides) -> dict:
    """Run the benchmark of ``config`` (a :class:`BenchConfig`; keyword ``overrides`` replace
    its fields, ``run(quick=True)`` works too) and write ``<out>/<gpu>-<date>-<commit>.json``
    and ``.md`` (the JSON is rewritten after every variant, so a stopped run keeps what it
    measured, marked ``settings.complete = false``). Returns the results dict."""
    cfg = dataclasses.replace(config or BenchConfig(), **overrides)
    r = resolve(cfg)
    now = dt.datetime.now(dt.timezone.utc)
    commit, dirty = git_commit()
    json_path, md_path = claim_result_paths(cfg.out, r.device, now.strftime("%Y-%m-%d"), commit)
    with _torch_flags(cfg.tf32):
        res = {
            "device": device_description(r.device),
            "torch": torch.__version__,
            "triton": triton_version(),
            "commit": commit,
            "date": now.isoformat(timespec="seconds"),
            "settings": _settings(cfg, r, dirty, json_path, md_path),
            "records": [],
        }
        s = res["settings"]
        write_results(res, json_path)
        log(
            f"tritonbasis bench on {res['device']} (torch {res['torch']}, triton "
            f"{res['triton']}, commit {commit}) -> {json_path}"
        )
        if cfg.ops:
            _run_ops(res, cfg, r, json_path, log)
        if cfg.e2e:
            _run_e2e(res, cfg, r, log)
        s["complete"] = True
        write_results(res, json_path, md_path)
        return res


@contextlib.contextmanager
def _torch_flags(tf32: bool):
    """cudnn.benchmark on (a fair cuDNN baseline) and TF32 as asked, restored afterwards."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved


def _run_ops(res: dict, cfg: BenchConfig, r: Resolved, json_path: Path, log) -> None:
    s = res["settings"]
    s["peaks"] = measure_peaks(r.device, r.dtypes, cfg.quick, r.warmup_ms, r.rep_ms)
    log(
        f"peaks: matmul TFLOP/s {s['peaks']['matmul_tflops']}, copy "
        f"{s['peaks']['copy_gbps']:.1f} GB/s"
    )
    for v in variants(r.cases, r.ratios, r.dtypes, r.layouts):
        log(f"{v.case.name} C_b={v.c_b} {v.dtype} {v.layout}")
        recs, skipped, notes = bench_variant(
            v,
            r.device,
            r.providers,
            r.directions,
            s["peaks"],
            compile_mode=r.compile_mode,
            cuda_graphs=cfg.cuda_graphs,
            timing=r.timing(),
            log=log,
        )
        res["records"] += recs
        s["skipped"] += skipped
        s["notes"] += notes
        write_results(res, json_path)


def _run_e2e(res: dict, cfg: BenchConfig, r: Resolved, log) -> None:
    s = res["settings"]
    log("end to end: resnet18_cifar")
    try:
        recs, info = bench_end_to_end(
            r.device,
            quick=cfg.quick,
            plan=r.plan,
            plan_label=r.plan_label,
            ratio=cfg.e2e_ratio,
            steps=cfg.e2e_steps,
            log=log,
        )
        res["records"] += recs
        s["e2e"] = info
    except Exception as e:
        s["skipped"].append({"case": "e2e.resnet18_cifar", "reason": f"error: {short_error(e)}"})
        log(f"  e2e FAIL {short_error(e)}")


def _settings(cfg: BenchConfig, r: Resolved, dirty, json_path: Path, md_path: Path) -> dict:
    from ...op.registry import get_backend

    cuda = r.device.type == "cuda"
    return {
        "format": FORMAT,
        "quick": cfg.quick,
        "complete": False,
        "device": str(r.device),
        "git_dirty": dirty,
        "cases": [c.name for c in r.cases],
        "ratios": [str(x) for x in r.ratios],
        "dtypes": list(r.dtypes),
        "layouts": list(r.layouts),
        "providers": list(r.providers),
        "directions": list(r.directions),
        "keep_basis": True,
        "bias": False,
        "cudnn_benchmark": True,
        "tf32": {"cudnn": cfg.tf32, "matmul": cfg.tf32},
        "fp32_precision": "tf32" if (cfg.tf32 and cuda) else "ieee",
        "compile_mode": r.compile_mode if r.compile_mode else "none (skipped)",
        "compile_mode_note": (
            None
            if cuda or r.compile_mode in (None, "max-autotune")
            else "CPU run: Inductor's default mode (max-autotune tunes GPU GEMM/conv "
            "templates; on a CPU it only adds compile time)"
        ),
        "fused_implementation": fused_implementation(r.device),
        "backend": get_backend(),
        "autotune": os.environ.get("TRITONBASIS_AUTOTUNE", "1") != "0",
        "cpu_threads": torch.get_num_threads(),
        "timing": _timing_settings(cfg, r),
        "figures": {
            "tflops": "basis FLOPs (the fused op's FLOP formula) / median, for every provider",
            "gbps": "fewest bytes of the basis op / median",
            "roofline_pct": "100 * max(FLOPs / peak(dtype), bytes / bandwidth) / median, peak "
            "and bandwidth measured in this run",
        },
        "peaks": {},
        "skipped": [],
        "notes": [],
        "files": {"json": str(json_path), "md": str(md_path)},
    }


def _timing_settings(cfg: BenchConfig, r: Resolved) -> dict:
    cuda = r.device.type == "cuda"
    if cuda:
        method = (
            "triton.testing.do_bench: CUDA events per call, triton's L2 flush buffer "
            "zeroed before each; fwd and fwd+bwd of outputs <= 2**22 elements through "
            f"triton.testing.do_bench_cudagraph ({GRAPH_REPLAYS} replays of one graph of "
            f"~rep_ms/{GRAPH_REPLAYS} of calls, no L2 flush; --cuda-graphs "
            f"{cfg.cuda_graphs})"
        )
        statistic = (
            "median, p20, p80 over the timed calls (do_bench) or the graph replays "
            "(do_bench_cudagraph, per call = replay / calls), after warm-up"
        )
    else:
        method = (
            f"torch.utils.benchmark.Timer.blocked_autorange ({torch.get_num_threads()} "
            "threads): blocks of calls for >= rep_ms"
        )
        statistic = "median, p20, p80 over the blocks' per-call means (at least min_reps blocks)"
    return {
        "method": method,
        "statistic": statistic,
        "timer": "tritonbasis.util.timing.time_fn",
        "warmup_ms": r.warmup_ms,
        "rep_ms": r.rep_ms,
        "min_reps": r.min_reps,
        "cuda_graphs": cfg.cuda_graphs if cuda else "n/a (CPU)",
        "cuda_graph_max_out_elems": GRAPH_MAX_OUT_ELEMS,
        "l2_flush_bytes": _l2_flush_bytes() if cuda else None,
        "rotating_inputs": (
            f">= 2 buffers, together >= {ROTATE_BYTES >> 20} MiB on CUDA" if cuda else "2 buffers"
        )
        + ", the next one on every timed call",
        "bwd": "the forward graph of each buffer built once before timing (unfused_compiled: "
        "one), the timed call is torch.autograd.grad(..., retain_graph=True)",
    }


def _l2_flush_bytes() -> int | None:
    """Size of the buffer ``do_bench`` zeroes before every call (triton's, 256 MiB in 3.6 and
    3.8), read from the triton in use."""
    try:
        from triton.runtime import driver

        buf = driver.active.get_empty_cache_for_benchmark()
        n = buf.numel() * buf.element_size()
        del buf
        return int(n)
    except Exception:
        return None
