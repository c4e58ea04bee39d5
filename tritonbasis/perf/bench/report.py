"""Results: the figures of one measurement (basis FLOPs and bytes, TFLOP/s, GB/s, % of the
measured roofline), the record, provenance (git commit, device, versions), result paths that
never overwrite an earlier run, and the Markdown report (bench/README.md, "Results format").
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from ...util.fileio import atomic_write_text
from ...util.timing import Timing
from .cases import PROVIDERS, Variant

__all__ = [
    "FORMAT",
    "RECORD_KEYS",
    "SHAPE_KEYS",
    "basis_bytes",
    "basis_flops",
    "claim_result_paths",
    "device_description",
    "git_commit",
    "make_record",
    "markdown",
    "write_results",
]

FORMAT = "tritonbasis.bench/1"
SHAPE_KEYS = ("N", "C_in", "C_out", "C_b", "H", "W", "k", "stride", "padding", "dilation")
RECORD_KEYS = (
    "case",
    "shape",
    "dtype",
    "layout",
    "direction",
    "provider",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "tflops",
    "gbps",
    "roofline_pct",
)


# --------------------------------------------------------------------------------------------
# FLOPs and bytes of the basis op (the same for every provider)


def basis_flops(v: Variant, direction: str) -> int:
    """The fused op's registered FLOP formulas (what FlopCounterMode counts) at this shape;
    backward: the gradients of x, basis and coeff."""
    from ...op.registry import basis_conv2d_backward_flops, basis_conv2d_flops

    c = v.case
    args = (
        (c.N, c.C_in, c.H, c.W),
        (v.c_b, c.C_in, c.k, c.k),
        (c.C_out - v.c_b, v.c_b),
        (c.stride, c.stride),
        (c.padding, c.padding),
        (c.dilation, c.dilation),
        True,
    )
    fwd = basis_conv2d_flops(*args)
    bwd = basis_conv2d_backward_flops(*args, (True, True, True, False))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]


def basis_bytes(v: Variant, direction: str) -> int:
    """Fewest bytes the fused basis op moves: fwd reads x and the weights and writes y; bwd
    reads dY, x (for d basis), Z (the first C_b output channels, for d coeff) and the weights,
    and writes dx and the weight gradients."""
    c, cb = v.case, v.c_b
    ho, wo = c.out_hw
    e = torch.empty(0, dtype=getattr(torch, v.dtype)).element_size()
    x = c.N * c.C_in * c.H * c.W
    y = c.N * c.C_out * ho * wo
    z = c.N * cb * ho * wo
    w = cb * c.C_in * c.k * c.k + (c.C_out - cb) * cb
    fwd = (x + y + w) * e
    bwd = (y + x + z + x + 2 * w) * e
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]


def make_record(v: Variant, direction: str, provider: str, t: Timing, peaks: dict) -> dict:
    """One record (RECORD_KEYS): the timing and the figures, with the roofline against the
    ``peaks`` measured in this run (None where a peak is missing)."""
    flops = basis_flops(v, direction)
    nbytes = basis_bytes(v, direction)
    s = t.median_ms * 1e-3
    peak = (peaks.get("matmul_tflops") or {}).get(v.dtype)
    bw = peaks.get("copy_gbps")
    roof = None
    if peak and bw:
        floor_s = max(flops / (peak * 1e12), nbytes / (bw * 1e9))
        roof = 100.0 * floor_s / s
    return {
        "case": v.case.name,
        "shape": v.shape(),
        "dtype": v.dtype,
        "layout": v.layout,
        "direction": direction,
        "provider": provider,
        "median_ms": t.median_ms,
        "p20_ms": t.p20_ms,
        "p80_ms": t.p80_ms,
        "tflops": flops / s / 1e12,
        "gbps": nbytes / s / 1e9,
        "roofline_pct": roof,
    }


# --------------------------------------------------------------------------------------------
# Provenance and output files


def _repo_dir() -> Path:
    return Path(__file__).resolve().parents[2]


def git_commit() -> tuple[str, bool | None]:
    """(short commit, dirty?) of the checkout this package runs from; ("unknown", None)
    outside a git checkout."""
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=_repo_dir(),
            timeout=30,
        )
        if r.returncode != 0 or not r.stdout.strip():
            return "unknown", None
        d = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=_repo_dir(),
            timeout=30,
        )
        return r.stdout.strip(), bool(d.stdout.strip()) if d.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def device_description(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return triton.__version__


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s or "unknown"


def claim_result_paths(out_dir, device: torch.device, date: str, commit: str) -> tuple[Path, Path]:
    """``<out>/<gpu>-<date>-<commit>.json`` and ``.md``, with ``-1``, ``-2``, ... appended
    when taken; the .json is created exclusively so two runs never pick the same name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    stem = f"{dev}-{date}-{commit}"
    for i in range(10000):
        name = stem if i == 0 else f"{stem}-{i}"
        j, m = out / f"{name}.json", out / f"{name}.md"
        if m.exists():
            continue
        try:
            fd = os.open(j, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return j, m
    raise RuntimeError(f"no free result name for {stem} in {out}")


def write_results(res: dict, json_path: Path, md_path: Path | None = None) -> None:
    atomic_write_text(Path(json_path), json.dumps(res, indent=1) + "\n")
    if md_path is not None:
        atomic_write_text(Path(md_path), markdown(res))


# --------------------------------------------------------------------------------------------
# Markdown


def _f(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(res: dict) -> str:
    """The results as Markdown: settings, "fused vs each provider", every provider with the
    ratio columns, end to end, what was not measured."""
    ops = [r for r in res["records"] if not r["case"].startswith("e2e.")]
    e2e = [r for r in res["records"] if r["case"].startswith("e2e.")]
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in ops)]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in ops:
        k = (r["case"], r["shape"]["C_b"], r["dtype"], r["layout"], r["direction"])
        groups.setdefault(k, {})[r["provider"]] = r
    s = res["settings"]
    lines = _md_header(res)
    if "fused" in providers and groups:
        lines += _md_fused_table(groups, [p for p in providers if p != "fused"])
    if groups:
        lines += _md_providers_table(groups, providers)
    if e2e:
        lines += _md_e2e_table(e2e, s.get("e2e", {}))
    if s.get("skipped"):
        lines += _md_skipped_table(s["skipped"])
    return "\n".join(lines)


def _md_header(res: dict) -> list[str]:
    s = res["settings"]
    peaks = s.get("peaks", {})
    mm = ", ".join(f"{k} {_f(v, '.1f')}" for k, v in peaks.get("matmul_tflops", {}).items())
    return [
        f"# tritonbasis bench: {res['device']}",
        "",
        f"torch {res['torch']}, triton {res['triton']}, commit {res['commit']}"
        f"{' (dirty tree)' if s.get('git_dirty') else ''}, {res['date']}"
        f"{'' if s.get('complete') else ' -- INCOMPLETE (run stopped early)'}",
        "",
        f"* mode: {'quick' if s.get('quick') else 'full'}; dtypes {', '.join(s['dtypes'])}; "
        f"layouts {', '.join(s['layouts'])}; C_b/C_out {', '.join(s['ratios'])}; "
        f"keep-basis form, no bias",
        f"* fp32: {s['fp32_precision']} (cudnn.allow_tf32={s['tf32']['cudnn']}, "
        f"matmul.allow_tf32={s['tf32']['matmul']}); cudnn.benchmark={s['cudnn_benchmark']}",
        f"* measured peaks: matmul TFLOP/s {mm}; copy {_f(peaks.get('copy_gbps'), '.1f')} GB/s",
        f"* timing: {s['timing']['method']}",
        f"* fused = {s['fused_implementation']}; unfused_compiled = "
        f"torch.compile(mode={s['compile_mode']!r})",
        "* ratio columns: how many times faster this row's provider is than the column's "
        "(column ms / row ms, same run); TFLOP/s on basis FLOPs; roofline % = "
        "max(FLOPs/peak, bytes/bandwidth) / time",
        "",
    ]


def _md_fused_table(groups: dict, others: list[str]) -> list[str]:
    lines = [
        "## fused vs each provider",
        "",
        "| case | C_b | dtype | layout | dir | fused ms | "
        + " | ".join(f"× {p}" for p in others)
        + " | fused roofline % |",
        "|---" * (7 + len(others)) + "|",
    ]
    for (case, cb, dtype, layout, d), p in groups.items():
        f = p.get("fused")
        if f is None:
            continue
        ratios = [
            (_f(p[o]["median_ms"] / f["median_ms"], ".2f") if o in p else "–") for o in others
        ]
        lines.append(
            f"| {case} | {cb} | {dtype} | {layout} | {d} | "
            f"{f['median_ms']:.4f} | " + " | ".join(ratios) + f" | {_f(f['roofline_pct'], '.3g')} |"
        )
    return [*lines, ""]


def _md_providers_table(groups: dict, providers: list[str]) -> list[str]:
    lines = [
        "## all providers",
        "",
        "| case | C_b | dtype | layout | dir | provider | ms (p20–p80) | TFLOP/s | "
        "GB/s | roofline % | " + " | ".join(f"÷ {p}" for p in providers) + " |",
        "|---" * (10 + len(providers)) + "|",
    ]
    for (case, cb, dtype, layout, d), p in groups.items():
        for name in providers:
            r = p.get(name)
            if r is None:
                continue
            ratios = [
                (_f(p[o]["median_ms"] / r["median_ms"], ".2f") if o in p else "–")
                for o in providers
            ]
            lines.append(
                f"| {case} | {cb} | {dtype} | {layout} | {d} | {name} | "
                f"{r['median_ms']:.4f} ({r['p20_ms']:.4f}–{r['p80_ms']:.4f}) | "
                f"{r['tflops']:.3g} | {r['gbps']:.3g} | {_f(r['roofline_pct'], '.3g')} | "
                + " | ".join(ratios)
                + " |"
            )
    return [*lines, ""]


def _md_e2e_table(e2e: list[dict], info: dict) -> list[str]:
    lines = [
        "## end to end: resnet18_cifar",
        "",
        f"batch {info.get('batch')}, width {info.get('width')}, "
        f"{info.get('image_size')} px, {info.get('amp')}; all_3x3 = every 3x3 conv at "
        f"C_b = {info.get('ratio_all_3x3')} C_out (keep-basis, mode auto); plan = "
        f"{info.get('plan')}",
        "",
        "| model | direction | ms (p20–p80) | × dense | basis layers | auto modes |",
        "|---|---|---|---|---|---|",
    ]
    dense = {r["direction"]: r["median_ms"] for r in e2e if r["provider"] == "dense"}
    for r in e2e:
        v = info.get("variants", {}).get(r["provider"], {})
        d = dense.get(r["direction"])
        what = "train step" if r["direction"] == "fwd+bwd" else "inference"
        lines.append(
            f"| {r['provider']} | {what} | {r['median_ms']:.3f} "
            f"({r['p20_ms']:.3f}–{r['p80_ms']:.3f}) | "
            f"{_f(d / r['median_ms'] if d else None, '.2f')} | "
            f"{v.get('basis_layers', '–')} | {v.get('auto_modes', '–')} |"
        )
    return [*lines, ""]


def _md_skipped_table(skipped: list[dict]) -> list[str]:
    lines = [
        "## not measured",
        "",
        "| case | C_b | dtype | layout | dir | provider | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in skipped:
        lines.append(
            f"| {k.get('case')} | {k.get('C_b', '–')} | {k.get('dtype', '–')} | "
            f"{k.get('layout', '–')} | {k.get('direction', '–')} | "
            f"{k.get('provider', '–')} | {k['reason']} |"
        )
    return [*lines, ""]
