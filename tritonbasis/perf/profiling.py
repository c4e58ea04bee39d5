"""Profiling: per-layer ranges named by fully qualified name, and training steps under
``torch.profiler`` with a Chrome trace and op / kernel / layer tables (``tritonbasis profile``).

Layer ranges: :func:`name_layers` gives every :class:`~tritonbasis.BasisConv2d` of a model a
``profile_name`` (its FQN, e.g. ``layer2.0.conv1``); while it is set, the layer's forward runs
inside ``torch.profiler.record_function(<fqn>)`` and, with ``nvtx=True`` on CUDA, inside an
NVTX range of the same name (``torch.cuda.nvtx``) for Nsight Systems / Nsight Compute. Layers
without a name (the default) do nothing extra: one attribute check; under ``torch.compile``
the ranges are left out so compiled graphs stay whole.

Triton kernels appear in traces under their function names -- ``basis_conv_fwd_kernel``,
``basis_conv_fwd_reduce_kernel``, ``basis_conv_grad_z_kernel``, ``basis_conv_grad_x_kernel``,
``basis_conv_wgrad_kernel``, ``bwd_reduce_kernel``, and the forward variants
``basis_conv_fwd_{l1,tma,halo}_kernel`` where one runs (the
cubin entry is the ``@triton.jit`` function's name) -- and the op's CPU side as
``tritonbasis::basis_conv2d`` / ``tritonbasis::basis_conv2d_backward``. See docs/profiling.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..util.ranges import layer_range
from ..util.timing import time_fn

__all__ = ["KERNEL_NAMES", "ProfileConfig", "layer_range", "name_layers", "profile_training"]

# The compiled kernels' entry names (what profilers and `ncu --kernel-name` see).
KERNEL_NAMES = (
    "basis_conv_fwd_kernel",
    "basis_conv_fwd_reduce_kernel",
    "basis_conv_grad_z_kernel",
    "basis_conv_grad_x_kernel",
    "basis_conv_wgrad_kernel",
    "bwd_reduce_kernel",
    # forward variants: they run only where forced or recorded as verified on the device
    "basis_conv_fwd_l1_kernel",
    "basis_conv_fwd_tma_kernel",
    "basis_conv_fwd_halo_kernel",
)


@contextlib.contextmanager
def name_layers(model: torch.nn.Module, nvtx: bool = False) -> Iterator[list[str]]:
    """Set ``profile_name`` = FQN (and ``profile_nvtx``) on every BasisConv2d of ``model`` for
    the duration of the block; yields the FQNs. Restores the previous values on exit."""
    from ..nn.layer import BasisConv2d

    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, BasisConv2d)]
    saved = [
        (m, m.__dict__.get("profile_name", _UNSET), m.__dict__.get("profile_nvtx", _UNSET))
        for _, m in layers
    ]
    for fqn, m in layers:
        m.profile_name = fqn or type(m).__name__
        m.profile_nvtx = bool(nvtx)
    try:
        yield [fqn or type(m).__name__ for fqn, m in layers]
    finally:
        for m, name, nv in saved:
            for attr, v in (("profile_name", name), ("profile_nvtx", nv)):
                if v is _UNSET:
                    m.__dict__.pop(attr, None)
                else:
                    setattr(m, attr, v)


_UNSET = object()


def _sort_key() -> str:
    # torch >= 2.4 names device time "device"; older ones "cuda"
    probe = torch.autograd.profiler_util.FunctionEventAvg()
    return (
        "self_device_time_total"
        if hasattr(probe, "self_device_time_total")
        else "self_cuda_time_total"
    )


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table: cols = (key, header, format)."""
    cells = [[h for _, h, _ in cols]] + [
        [("-" if r.get(k) is None else format(r[k], f)) for k, _, f in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    out = []
    for j, row in enumerate(cells):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """The settings of :func:`profile_training` (and the ``tritonbasis profile`` flags, generated
    from these fields by :mod:`tritonbasis.util.config_args`: ``row_limit`` -> ``--rows``,
    ``amp`` -> ``--no-amp``, ``trace`` -> ``--no-trace``). The one place their defaults live."""

    steps: int = dataclasses.field(default=5, metadata=_help("profiled training steps"))
    warmup: int = dataclasses.field(
        default=2,
        metadata=_help(
            "untimed training steps first (autotune, cuDNN benchmark, allocator warm-up)"
        ),
    )
    amp: bool = dataclasses.field(
        default=True,
        metadata=_help("bf16 autocast + channels_last on CUDA (off: fp32; ignored on CPU)"),
    )
    nvtx: bool = dataclasses.field(
        default=False,
        metadata=_help("NVTX ranges per layer (FQN) and per step, for nsys / ncu (CUDA only)"),
    )
    trace: bool = dataclasses.field(
        default=True,
        metadata=_help(
            "run the steps under torch.profiler (off: to run under nsys or ncu; use with --nvtx)"
        ),
    )
    lr: float = dataclasses.field(
        default=0.01, metadata=_help("SGD learning rate of the profiled steps (momentum 0.9)")
    )
    row_limit: int = dataclasses.field(default=25, metadata=_help("rows per op / kernel table"))

    def __post_init__(self):
        for name, low in (("steps", 1), ("warmup", 0), ("row_limit", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                rule = "a positive int" if low else "a non-negative int"
                raise ValueError(f"ProfileConfig.{name} must be {rule}, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"ProfileConfig.lr must be a positive number, got {self.lr!r}")


def profile_training(
    model: torch.nn.Module,
    input_shape,
    *,
    out_dir: str | Path = "runs/profile",
    device=None,
    config: ProfileConfig | None = None,
    log=print,
    **overrides,
) -> dict[str, Any]:
    """Run ``warmup`` untimed and then ``steps`` profiled training steps (forward, cross-entropy
    on random labels, backward, SGD with momentum) of a copy of ``model`` on random inputs of
    ``input_shape`` ``(N, C, H, W)``; bf16 autocast + channels_last on CUDA when ``amp``.

    The settings (``steps``, ``warmup``, ``amp``, ``nvtx``, ``trace``, ``lr``, ``row_limit``)
    are :class:`ProfileConfig`'s fields, its defaults unless given: ``config=``, and/or the
    fields as keywords on top (``profile_training(model, shape, steps=3)``).

    Every BasisConv2d runs inside a range named by its FQN (:func:`name_layers`). With
    ``trace=True`` (default) the steps run under ``torch.profiler`` and ``out_dir`` gets
    ``trace.json`` (Chrome trace: chrome://tracing or https://ui.perfetto.dev), ``ops.txt``
    (top ops by self time), ``layers.txt`` (per-layer range times), ``kernels.txt`` (GPU
    kernels by total time, CUDA only) and ``summary.json`` (the same tables as JSON).
    ``trace=False`` runs exactly ``warmup + steps`` steps without torch.profiler, for an
    external profiler (nsys, ncu) -- use ``nvtx=True`` then, so the layers and steps carry
    NVTX ranges; nothing else runs (so ``step_ms`` is None: the external tool's timeline is
    the measurement).

    With ``trace=True``, ``step_ms`` (and ``step_timing``) is the step time measured by
    :func:`tritonbasis.util.timing.time_fn` after the warm-up and before the profiled steps,
    without the profiler's overhead. Returns the summary dict (paths, tables, step time)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = dataclasses.replace(config or ProfileConfig(), **overrides)
    steps, warmup, row_limit = cfg.steps, cfg.warmup, cfg.row_limit
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    use_amp = cfg.amp and cuda
    nvtx = cfg.nvtx and cuda
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    m, step = _training_step(model, shape, device, use_amp, nvtx, cfg.lr)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    summary: dict[str, Any] = {
        "device": str(device),
        "input_shape": list(shape),
        "steps": steps,
        "warmup": warmup,
        "amp": "bf16 autocast + channels_last" if use_amp else "off",
        "nvtx": nvtx,
        "torch": torch.__version__,
    }
    with name_layers(m, nvtx=nvtx) as fqns:
        summary["layers"] = fqns
        for i in range(warmup):  # autotune, cuDNN benchmark, allocator warm-up: not profiled
            step(-1 - i)
        sync()
        if not cfg.trace:
            for i in range(steps):
                step(i)
            sync()
            summary["step_ms"] = None
            summary["files"] = {}
            log(
                f"ran {steps} steps without torch.profiler ({len(fqns)} BasisConv2d layers"
                f"{' with NVTX ranges' if nvtx else ''}); timings: the external profiler's"
            )
            return summary
        # the step time without the profiler's overhead, from the one timer (its runs are
        # not in the trace); step(None): no NVTX step range, so train_step#i are the profiled
        t = time_fn(lambda: step(None), device=device)
        summary["step_ms"], summary["step_timing"] = t.median_ms, t.to_dict()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities, record_shapes=False) as prof:
            for i in range(steps):
                step(i)
                prof.step()
            sync()

    tables = _write_outputs(prof, out, summary, fqns, steps, cuda, row_limit)
    log(
        f"profiled {steps} training steps of {shape} on {device} "
        f"({summary['amp']}); {summary['step_ms']:.2f} ms/step without the profiler "
        f"({t.method})"
    )
    _log_tables(log, summary, tables, row_limit)
    return summary


def _write_outputs(
    prof, out: Path, summary: dict, fqns: list[str], steps: int, cuda: bool, row_limit: int
) -> dict[str, str]:
    """trace.json, the op / layer / kernel tables (.txt) and summary.json into ``out``;
    ``summary`` gains the tables and file paths. Returns the tables' text."""
    trace_path = out / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    sort_by = _sort_key() if cuda else "self_cpu_time_total"
    tables = {
        "ops": prof.key_averages().table(
            sort_by=sort_by, row_limit=row_limit, max_name_column_width=72
        )
    }
    layer_rows, kernel_rows = _trace_tables(trace_path, fqns, steps)
    tables["layers"] = _table(
        layer_rows,
        [
            ("layer", "BasisConv2d (FQN)", ""),
            ("calls", "calls", "d"),
            ("cpu_ms_per_step", "CPU ms/step", ".3f"),
            ("gpu_ms_per_step", "GPU ms/step", ".3f"),
        ],
    )
    if cuda:
        tables["kernels"] = _table(
            kernel_rows[:row_limit],
            [
                ("kernel", "GPU kernel", ""),
                ("calls", "calls", "d"),
                ("ms_per_step", "ms/step", ".3f"),
                ("pct", "% GPU", ".1f"),
            ],
        )
    files = {"trace": str(trace_path), "summary": str(out / "summary.json")}
    for name, text in tables.items():
        (out / f"{name}.txt").write_text(text + "\n")
        files[name] = str(out / f"{name}.txt")
    summary.update(
        {
            "files": files,
            "sort_by": sort_by,
            "layer_table": layer_rows,
            "kernel_table": kernel_rows[:200],
            "tritonbasis_kernels_seen": sorted(
                {r["kernel"] for r in kernel_rows if r["tritonbasis"]}
            ),
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return tables


def _training_step(model, shape, device, use_amp: bool, nvtx: bool, lr: float):
    """(a copy of ``model`` on ``device``, ``step(i)``): one training step (forward,
    cross-entropy on fixed random labels, backward, SGD with momentum) on a fixed random
    batch; ``step(i)`` with an int runs inside the NVTX range ``train_step#i`` when ``nvtx``."""
    import copy

    import torch.nn.functional as F

    m = copy.deepcopy(model).to(device)
    fmt = torch.channels_last if use_amp else torch.contiguous_format
    if use_amp:
        m = m.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
    m.eval()
    with torch.no_grad():
        num_classes = m(x[:1]).shape[-1]
    y = torch.randint(0, num_classes, (shape[0],), generator=g).to(device)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    m.train()

    def step(i: int | None):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
        ranged = nvtx and i is not None
        if ranged:
            torch.cuda.nvtx.range_push(f"train_step#{i}")
        try:
            opt.zero_grad(set_to_none=True)
            with ctx:
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        finally:
            if ranged:
                torch.cuda.nvtx.range_pop()

    return m, step


def _trace_tables(trace_path: Path, fqns: list[str], steps: int) -> tuple[list, list]:
    """Tables from the exported trace (what a trace viewer shows): per layer, the CPU time of
    its record_function range ("user_annotation") and the GPU time of the mirrored range
    ("gpu_user_annotation", newer torch); per GPU kernel / memcpy / memset, its time."""
    data = json.loads(trace_path.read_text())
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    names = set(fqns)
    layers: dict[str, dict] = {
        n: {"layer": n, "calls": 0, "cpu_ms": 0.0, "gpu_ms": None} for n in fqns
    }
    kernels: dict[str, dict] = {}
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat, name, dur_ms = e.get("cat", ""), e.get("name"), float(e.get("dur", 0)) / 1e3
        if name in names and cat == "user_annotation":
            layers[name]["calls"] += 1
            layers[name]["cpu_ms"] += dur_ms
        elif name in names and cat == "gpu_user_annotation":
            layers[name]["gpu_ms"] = (layers[name]["gpu_ms"] or 0.0) + dur_ms
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            k = kernels.setdefault(name, {"kernel": name, "calls": 0, "total_ms": 0.0})
            k["calls"] += 1
            k["total_ms"] += dur_ms
    layer_rows = list(layers.values())
    for r in layer_rows:
        r["cpu_ms_per_step"] = r["cpu_ms"] / steps
        r["gpu_ms_per_step"] = None if r["gpu_ms"] is None else r["gpu_ms"] / steps
    kernel_rows = sorted(kernels.values(), key=lambda r: -r["total_ms"])
    total_gpu = sum(r["total_ms"] for r in kernel_rows) or None
    for r in kernel_rows:
        r["ms_per_step"] = r["total_ms"] / steps
        r["pct"] = 100.0 * r["total_ms"] / total_gpu if total_gpu else None
        r["tritonbasis"] = r["kernel"] in KERNEL_NAMES
    return layer_rows, kernel_rows


def _log_tables(log, summary: dict, tables: dict[str, str], row_limit: int) -> None:
    log("")
    log(f"ops by {summary['sort_by']} (top {row_limit}):")
    log(tables["ops"])
    if "kernels" in tables:
        log(
            f"GPU kernels by total time (top {row_limit}; tritonbasis kernels: "
            f"{', '.join(summary['tritonbasis_kernels_seen']) or 'none'}):"
        )
        log(tables["kernels"])
        log("")
    log("BasisConv2d layers (forward ranges named by FQN):")
    log(tables["layers"] if summary["layer_table"] else "  (no BasisConv2d layers in this model)")
    log("")
    log("files: " + ", ".join(f"{k}={v}" for k, v in summary["files"].items()))
