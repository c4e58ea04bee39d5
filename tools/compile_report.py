"""Compile report: every Triton kernel x autotune config compiled ahead of time (no GPU needed)
for the given archs and dtypes, with registers, spills, shared memory and tensor-core use.

    python tools/compile_report.py [--arch 90 80] [--dtype bf16 ...] [--out bench/results]
                                   [--layout channels_last|nchw] [--shape resnet|max-cb]
    python tools/compile_report.py --bench [--ratios 1/4 ...] [--arch 90]
    python tools/compile_report.py --variants [--workers N]

Writes, per arch, ``compile-report-sm<arch>-<date>-<shortcommit>[-<suffix>].json`` (every
report plus who/what/where) and a markdown table ``.md`` with the same name. The suffix names
whatever differs from the default run (bf16, channels_last, representative shape).

``--bench``: per benchmark case shape (``aot.bench_shapes`` (tools/aot.py): the ResNet18-CIFAR
cases of ``tritonbasis bench`` at batch 256, C_b = ratio * C_out, keep-basis, channels_last
bf16) and per kernel, the configs ``configs.prune`` keeps there (what the autotuner can run),
with tensor_core_instr, wgmma shapes, spills, registers, shared_bytes, loops and pipelined
loops; the name carries the triton version (``compile-report-bench-sm90-triton3.6.0-...``), so
one run per triton install gives one report each.

``--variants``: the forward's v2 kernel and its v3 variants (``variant_of="fwd"`` records) at
the ResNet18 benchmark shapes where each applies, every kept config, with the main loop's
counts read off the compiled code (``kernel_counts``: instructions per wgmma, global bytes
per C_in block, activations apart) and the byte model built from them
(``variant_model.py``); ``compile-variants-sm90-triton<version>-<date>-<commit>.json/.md``.
Run on the GPU host it also fills triton's cache for ``bench/variants.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time

import aot  # tools/aot.py, beside this script (tools/ is not installed)
import aot_toolchain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    "resnet": aot.REPRESENTATIVE,
    # The largest basis the fused kernels accept (MAX_BLOCK_CB), in a stage-4-like layer.
    "max-cb": aot.Shape(N=32, C_in=256, H=14, W=14, C_out=512, C_b=128),
}


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return ""


def _versions() -> dict:
    import torch
    import triton

    try:
        out = subprocess.run(
            [aot_toolchain.tool("ptxas", 90), "--version"], capture_output=True, text=True
        ).stdout
        m = re.search(r"release [\d.]+, (V[\d.]+)", out)
        ptxas = m.group(1) if m else out.strip().splitlines()[-1]
    except Exception:
        ptxas = None
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": ptxas,  # sm_90
        "python": platform.python_version(),
    }


def _row(r: dict) -> str:
    if "error" in r:
        err = r["error"].splitlines()[0][:120].replace("|", "/")
        head = f"| {r['kernel']} | {r['config']} | {r['dtype']} | sm_{r['arch']} |"
        return f"{head} compile error: {err} |{' |' * 5}"
    regs = "?" if r["registers"] is None else str(r["registers"])
    spills = "?" if r["spills"] is None else str(r["spills"])
    tc = r["tensor_core_instr"] or "none"
    if r["tensor_core_instr"] != r["expected_tensor_core_instr"]:
        tc += f" (expected {r['expected_tensor_core_instr']})"
    b = r["blocks"]
    tile = "x".join(str(v) for v in b.values())
    return (
        f"| {r['kernel']} | {r['config']} | {r['dtype']} | sm_{r['arch']} | {tile} "
        f"w{r['num_warps']} s{r['num_stages']} | {regs} | {spills} | "
        f"{r['shared_bytes'] / 1024:.1f} | {tc} | {'yes' if r['fits_shared'] else '**NO**'} |"
    )


def _findings(reports: list[dict]) -> list[str]:
    out = []
    for r in reports:
        name = f"{r['kernel']}/{r['config']} {r['dtype']} sm_{r['arch']}"
        if "error" in r:
            out.append(f"{name}: does not compile ({r['error'].splitlines()[0][:200]})")
            continue
        if r["spills"]:
            out.append(
                f"{name}: spills {r['spills']} B ({r['spill_store_bytes']} B stores, "
                f"{r['spill_load_bytes']} B loads) at {r['registers']} registers"
            )
        if not r["fits_shared"]:
            out.append(
                f"{name}: needs {r['shared_bytes']} B shared memory, limit {r['shared_limit']} B"
            )
        if r["tensor_core_instr"] != r["expected_tensor_core_instr"]:
            out.append(
                f"{name}: MMA {r['tensor_core_instr']}, expected {r['expected_tensor_core_instr']}"
            )
        elif r["arch"] >= 90 and r["tensor_core_instr"] != "wgmma":
            out.append(
                f"{name}: mma.sync, not wgmma (tile: {r['num_warps']} warps, M block "
                f"{r['blocks'].get('BLOCK_M', r['blocks'].get('BLOCK_A'))}; wgmma needs "
                "a multiple of 4 warps and of 64 rows)"
            )
    return out


def _bench_jobs(arch: int, ratios) -> list[dict]:
    from tritonbasis.kernels import configs

    jobs = []
    for tag, shape in aot.bench_shapes(ratios=ratios).items():
        ps = aot.prune_shape(shape, "bf16", arch)
        for name, rec in configs.RECORDS.items():
            if not rec.configs or rec.variant_of is not None:
                continue
            if name == "fwd_reduce" and ps["SPLIT_K"] == 1:
                continue  # only launched with split-K
            kps = aot.prune_shape(shape, "bf16", arch, name)  # what the autotuner prunes with
            for cfg in configs.prune(name, list(rec.configs.values()), kps):
                jobs.append(
                    {
                        "name": name,
                        "config": cfg,
                        "cfg_name": aot.config_name(name, cfg),
                        "arch": arch,
                        "dtype": "bf16",
                        "shape": shape,
                        "tag": tag,
                        "split_k": ps["SPLIT_K"],
                    }
                )
    return jobs


def _variant_jobs(ratios) -> list[dict]:
    from tritonbasis.kernels import configs

    jobs = []
    for tag, shape in aot.bench_shapes(ratios=ratios).items():
        for name in configs.VARIANTS.get("fwd", ["fwd"]):
            rec = configs.RECORDS[name]
            kps = aot.prune_shape(shape, "bf16", 90, name)
            if rec.applies is not None and not rec.applies(kps):
                continue
            if ".3x3." not in tag:
                continue  # the variants are about the taps of 3x3 convs
            lc = aot.kernel_launch(name, "bf16", shape, 90)
            for cfg in configs.prune(name, list(rec.configs.values()), kps):
                programs = lc.grid(cfg["blocks"])[0]
                # tiles: the grid without persistence (one program per tile)
                tiles = lc.grid({**cfg["blocks"], "RESIDENT": 0})[0]
                jobs.append(
                    {
                        "name": name,
                        "config": cfg,
                        "cfg_name": aot.config_name(name, cfg),
                        "arch": 90,
                        "dtype": "bf16",
                        "shape": shape,
                        "tag": tag,
                        "split_k": kps["SPLIT_K"],
                        "programs": programs,
                        "tiles": tiles,
                        "counts": True,
                    }
                )
    return jobs


def _variants_main(args, meta_common: dict, short: str, now) -> int:
    import triton
    import variant_model

    t0 = time.perf_counter()
    jobs = _variant_jobs(args.ratios)
    extra = [{k: j.pop(k) for k in ("tag", "split_k", "programs", "tiles")} for j in jobs]

    def progress(r):
        state = (
            r.get("error", "").splitlines()[0][:80]
            if "error" in r
            else (f"regs={r['registers']} spills={r['spills']} {r['tensor_core_instr']}")
        )
        print(f"{r['kernel']:9s} {r['config']:20s} {state}", flush=True)

    reports = aot.compile_many(jobs, args.workers, progress)
    for r, e in zip(reports, extra):
        r.update(e)
    meta = {
        **meta_common,
        "arch": 90,
        "ratios": list(args.ratios),
        "seconds": time.perf_counter() - t0,
        "model": variant_model.ASSUMPTIONS,
    }
    meta.pop("shape", None)
    model = variant_model.model(reports, aot.bench_shapes(ratios=args.ratios))
    stem = "-".join(
        ["compile-variants-sm90", f"triton{triton.__version__}", now.strftime("%Y-%m-%d"), short]
    )
    base = os.path.join(args.out, stem)
    _io_write(
        base + ".json",
        json.dumps({"meta": meta, "reports": reports, "model": model}, indent=1) + "\n",
    )
    _io_write(base + ".md", variant_model.markdown(meta, reports, model, _provenance(meta)))
    print(f"wrote {base}.json and .md ({meta['seconds']:.0f} s)")
    aot.shutdown_workers()
    return 0


def _provenance(meta: dict) -> list[str]:
    """The versions / date / commit lines every compile report starts with."""
    v = meta["versions"]
    return [
        f"* triton {v['triton']}, torch {v['torch']}, ptxas {v['ptxas']}, Python {v['python']}",
        f"* date {meta['date']}, git commit {meta['commit']}"
        + (" (working tree had uncommitted changes)" if meta["dirty"] else ""),
    ]


def _bench_markdown(meta: dict, reports: list[dict]) -> str:
    v = meta["versions"]
    lines = [
        f"# Compile report, benchmark shapes: sm_{meta['arch']}, triton {v['triton']}",
        "",
        *_provenance(meta),
        f"* compiled on {meta['host']} (no GPU): triton.compile for GPUTarget('cuda', "
        f"{meta['arch']}, 32), {meta['seconds']:.0f} s wall (triton's on-disk compile cache "
        "applies)",
        f"* shapes: tritonbasis bench group resnet18_cifar (batch 256), C_b = "
        f"{', '.join(meta['ratios'])} of C_out, keep-basis, no bias, channels_last, bf16; per "
        "kernel the configs configs.prune keeps there (split-K as the launcher picks it with "
        f"{aot.SMS[meta['arch']]} SMs)",
        "* regs: cuobjdump; spills: ptxas -v (bytes stored + loaded); loops: scf.for in the "
        "TTGIR, pipelined: those issuing async copies (cp.async / TMA)",
        "",
        "| shape | kernel | config | split-K | regs | spills (B) | shared (KiB) | MMA | wgmma "
        "shapes | loops (pipelined) |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in reports:
        if "error" in r:
            lines.append(
                f"| {r['tag']} | {r['kernel']} | {r['config']} | | compile error: "
                f"{r['error'].splitlines()[0][:100].replace('|', '/')} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['tag']} | {r['kernel']} | {r['config']} | {r['split_k']} | {r['registers']} "
            f"| {r['spills']} | {r['shared_bytes'] / 1024:.0f} | {r['tensor_core_instr']} | "
            f"{' '.join(r.get('wgmma_shapes', []))} | {r.get('loops')} "
            f"({r.get('pipelined_loops')}) |"
        )
    bad = [
        r for r in reports if "error" in r or r["spills"] != 0 or r["tensor_core_instr"] != "wgmma"
    ]
    lines += ["", "## Findings", ""]
    if not bad:
        lines.append(f"* every kept config ({len(reports)}) compiles to wgmma with 0 spills")
    for r in bad:
        why = (
            r.get("error", "").splitlines()[0][:200]
            if "error" in r
            else (f"MMA {r['tensor_core_instr']}, spills {r['spills']} B")
        )
        lines.append(f"* {r['tag']} {r['kernel']}/{r['config']}: {why}")
    return "\n".join(lines) + "\n"


def _bench_main(args, meta_common: dict, short: str, now) -> int:
    import triton

    for arch in args.arch:
        t0 = time.perf_counter()
        jobs = _bench_jobs(arch, args.ratios)
        extra = [{"tag": j.pop("tag"), "split_k": j.pop("split_k")} for j in jobs]

        def progress(r):
            state = (
                r.get("error", "").splitlines()[0][:80]
                if "error" in r
                else (f"regs={r['registers']} spills={r['spills']} {r['tensor_core_instr']}")
            )
            print(f"sm_{r['arch']} {r['kernel']:10s} {r['config']:22s} {state}", flush=True)

        reports = aot.compile_many(jobs, args.workers, progress)
        for r, e in zip(reports, extra):
            r.update(e)
        meta = {
            **meta_common,
            "arch": arch,
            "ratios": list(args.ratios),
            "shapes": {
                t: dataclasses.asdict(s) for t, s in aot.bench_shapes(ratios=args.ratios).items()
            },
            "seconds": time.perf_counter() - t0,
        }
        meta.pop("shape", None)
        stem = "-".join(
            [
                f"compile-report-bench-sm{arch}",
                f"triton{triton.__version__}",
                now.strftime("%Y-%m-%d"),
                short,
            ]
        )
        base = os.path.join(args.out, stem)
        _io_write(base + ".json", json.dumps({"meta": meta, "reports": reports}, indent=1) + "\n")
        _io_write(base + ".md", _bench_markdown(meta, reports))
        print(f"wrote {base}.json and .md ({meta['seconds']:.0f} s)")
    aot.shutdown_workers()
    return 0


def _io_write(path: str, text: str) -> None:
    from tritonbasis.util.fileio import atomic_write_text  # the project's one atomic-write helper

    atomic_write_text(path, text)


def _markdown(meta: dict, reports: list[dict]) -> str:
    s = meta["shape"]
    lines = [
        f"# Compile report: sm_{meta['arch']} ({', '.join(meta['dtypes'])}, {meta['layout']})",
        "",
        *_provenance(meta),
        f"* compiled on {meta['host']} (no GPU needed): triton.compile for "
        f"GPUTarget('cuda', {meta['arch']}, 32), {meta['seconds']:.0f} s wall "
        "(triton's on-disk compile cache applies)",
        f"* shape: N={s['N']} C_in={s['C_in']} HxW={s['H']}x{s['W']} C_out={s['C_out']} "
        f"C_b={s['C_b']} {s['KH']}x{s['KW']} stride={s['stride']} pad={s['padding']} "
        f"dil={s['dilation']} bias={s['bias']} keep_basis={s['keep_basis']} "
        f"channels_last={s['channels_last']}; arguments specialised as a real launch would be",
        f"* shared memory limit per block: {meta['shared_limit']} B "
        f"({meta['shared_limit'] / 1024:.0f} KiB); registers per thread: at most 255",
        "* regs: cuobjdump; spills: ptxas -v (bytes stored + loaded), 0 when the stack frame is 0;"
        " fp32 is TF32",
        "",
        "| kernel | config | dtype | arch | tile, warps, stages | regs | spills (B) | shared (KiB) "
        "| tensor cores | fits shared |",
        "|---|---|---|---|---|---:|---:|---:|---|---|",
        *(_row(r) for r in reports),
        "",
        "## Findings",
        "",
    ]
    found = _findings(reports)
    lines += [f"* {f}" for f in found] if found else ["* none"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=None,
        choices=sorted(aot.ARCHS),
        help="default: 90 80 (90 with --bench)",
    )
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=sorted(aot.DTYPES))
    p.add_argument("--out", default=os.path.join("bench", "results"))
    p.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    p.add_argument("--shape", choices=sorted(SHAPES), default="resnet")
    p.add_argument("--kernels", nargs="+", default=None, help="default: all")
    p.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    p.add_argument(
        "--bench",
        action="store_true",
        help="the configs prune keeps at each benchmark shape (sm_90 by default)",
    )
    p.add_argument("--ratios", nargs="+", default=["1/4"], help="C_b / C_out (with --bench)")
    p.add_argument(
        "--variants",
        action="store_true",
        help="the forward's v2 and v3 kernels at the benchmark shapes, with counts "
        "and the byte model (sm_90)",
    )
    args = p.parse_args(argv)
    if args.arch is None:
        args.arch = [90] if args.bench else [90, 80]

    ok, why = aot.toolchain_available()
    if not ok:
        print(f"cannot compile: {why}", file=sys.stderr)
        return 2
    shape = SHAPES[args.shape]
    if args.layout == "nchw":
        shape = aot.Shape(**{**dataclasses.asdict(shape), "channels_last": False})
    now = dt.datetime.now(dt.timezone.utc)
    short = _git("rev-parse", "--short", "HEAD") or "nogit"
    meta_common = {
        "versions": _versions(),
        "date": now.isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD") or None,
        "dirty": bool(_git("status", "--porcelain")),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "dtypes": args.dtype,
        "layout": args.layout,
        "shape_preset": args.shape,
        "shape": dataclasses.asdict(shape),
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
    }
    suffix = [d for d in args.dtype if args.dtype != ["bf16"]]
    suffix += ["nchw"] if args.layout == "nchw" else []
    suffix += ["cbmax"] if args.shape == "max-cb" else []
    os.makedirs(args.out, exist_ok=True)
    if args.variants:
        return _variants_main(args, meta_common, short, now)
    if args.bench:
        return _bench_main(args, meta_common, short, now)

    for arch in args.arch:
        t0 = time.perf_counter()

        def progress(r):
            state = (
                r.get("error", "").splitlines()[0][:80]
                if "error" in r
                else (f"regs={r['registers']} spills={r['spills']} shared={r['shared_bytes']}")
            )
            print(
                f"sm_{r['arch']} {r['dtype']} {r['kernel']:7s} {r['config']:22s} {state}",
                flush=True,
            )

        reports = aot.compile_all(
            archs=(arch,),
            dtypes=tuple(args.dtype),
            kernels=args.kernels,
            shape=shape,
            workers=args.workers,
            progress=progress,
        )
        meta = {
            **meta_common,
            "arch": arch,
            "shared_limit": aot.SHARED_LIMIT[arch],
            "seconds": time.perf_counter() - t0,
        }
        stem = "-".join([f"compile-report-sm{arch}", now.strftime("%Y-%m-%d"), short, *suffix])
        base = os.path.join(args.out, stem)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "reports": reports}, f, indent=1)
            f.write("\n")
        with open(base + ".md", "w") as f:
            f.write(_markdown(meta, reports))
        print(f"wrote {base}.json and .md ({meta['seconds']:.0f} s)")
    aot.shutdown_workers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
