"""Byte and time model of the forward kernels (v2 and its v3 variants) at the benchmark shapes,
built from the compile tier's counts (``compile_report.py --variants``): per kept config, the
global bytes its main loop loads per C_in block (activations apart, read off the PTX), the
SASS instructions per C_in block, the program count of its launch. PREDICTIONS, to be replaced
by the GPU run's measurements (``bench/variants.py``); the assumptions are :data:`ASSUMPTIONS`.
"""

from __future__ import annotations

import math

ASSUMPTIONS = {
    "gpu": "H200 SXM: 132 SMs x 4 schedulers at 1.98 GHz, 989 TFLOP/s dense bf16, 4.8 TB/s HBM",
    "l2_rate_tb_s": [7.0, 5.5],
    "tensor_efficiency": 0.7,
    "launch_us": 1.5,
    "time": "max(FLOPs / (0.7 peak), main-loop issue at 1 instruction/clock/scheduler, L2 bytes "
    "/ L2 rate) + 1.5 us per launch; HBM floor = x + y + basis once at 4.8 TB/s",
    "l2_bytes": "the bytes the main loop requests, counted (masked-off lanes included), for "
    "v2, TMA and halo (cp.async.cg and TMA read L2); for the L1 variant two bounds: "
    "requested (no L1 hit) and 'halo' (each tile's pixels plus the 2 rows + 2 "
    "pixels its 3x3 taps reach fetched once per C_in block: perfect L1 reuse); "
    "+ the output written, + the split-K workspace written and read",
}
PEAK, HBM, CLOCK, SMS, SCHED = 989e12, 4.8e12, 1.98e9, 132, 4


def _row(r: dict, shape) -> dict | None:
    ml = r.get("main_loop") or {}
    per_cb = ml.get("loads_per_cblock")
    if "error" in r or not per_cb or not ml.get("instructions"):
        return None
    b = r["blocks"]
    bk, bm = b["BLOCK_K"], b["BLOCK_M"]
    taps = shape.KH * shape.KW
    n_cblk = math.ceil(shape.C_in / bk)
    programs, tiles, split = r["programs"], r["tiles"], r["split_k"]
    M, eb = shape.M, 2
    block_cb = max(16, 1 << (shape.C_b - 1).bit_length())
    act = tiles * n_cblk * per_cb["activations"]
    other = tiles * n_cblk * per_cb["other"]
    if b.get("RESIDENT"):  # the basis is copied once per (persistent) program, before the loop
        other = programs * n_cblk * taps * block_cb * bk * eb
    act_l2 = act
    if r["kernel"] == "fwd_l1":  # perfect L1 reuse: the tile and its halo once per C_in block
        act_l2 = act * (bm + (shape.KH - 1) * shape.dilation * shape.W + shape.KW - 1) / (taps * bm)
    y = M * shape.C_out * eb + (2 * split * M * block_cb * 4 if split > 1 else 0)
    flops = 2 * tiles * bm * block_cb * shape.C_in * taps + 2 * M * shape.C_rest * shape.C_b
    instr = ml["instructions"] * (taps if ml["iteration"] == "tap" else 1)
    issue = tiles * n_cblk * instr * r["num_warps"] / (SMS * SCHED * CLOCK)
    tensor = flops / (0.7 * PEAK)
    launches = 2 if split > 1 else 1
    times = [
        max(tensor, issue, (act_l2 + other + y) / (rate * 1e12)) + 1.5e-6 * launches
        for rate in ASSUMPTIONS["l2_rate_tb_s"]
    ]
    return {
        "kernel": r["kernel"],
        "config": r["config"],
        "registers": r["registers"],
        "spills": r["spills"],
        "instructions_per_wgmma": ml.get("instructions_per_wgmma"),
        "act_per_cblock": per_cb["activations"],
        "other_per_cblock": per_cb["other"],
        "programs": programs,
        "split_k": split,
        "act_mb": act / 1e6,
        "act_l2_mb": act_l2 / 1e6,
        "other_mb": other / 1e6,
        "y_mb": y / 1e6,
        "gflop": flops / 1e9,
        "tensor_us": tensor * 1e6,
        "issue_us": issue * 1e6,
        "predicted_us": [t * 1e6 for t in times],
    }


def model(reports: list[dict], shapes: dict) -> dict:
    """Per shape: every kept config's row, and per kernel the one with the lowest predicted
    time (what the autotuner should pick), with its activation L2 bytes against v2's."""
    out = {}
    for r in reports:
        row = _row(r, shapes[r["tag"]]) if r.get("tag") in shapes else None
        if row is not None:
            out.setdefault(r["tag"], {"rows": []})["rows"].append(row)
    for tag, entry in out.items():
        s = shapes[tag]
        best = {}
        for row in entry["rows"]:
            k = row["kernel"]
            if k not in best or row["predicted_us"][0] < best[k]["predicted_us"][0]:
                best[k] = row
        v2 = best.get("fwd")
        for row in best.values():
            row["act_l2_vs_v2"] = row["act_l2_mb"] / v2["act_l2_mb"] if v2 else None
        floor = (s.N * s.H * s.W * s.C_in + s.M * s.C_out + s.C_b * s.C_in * s.KH * s.KW) * 2
        entry.update(
            best=best,
            hbm_floor_us=floor / HBM * 1e6,
            dense_gflop=2 * s.M * s.C_out * s.C_in * s.KH * s.KW / 1e9,
        )
    return out


def markdown(meta: dict, reports: list[dict], model_: dict, provenance: list[str]) -> str:
    lines = [
        f"# Forward v2 and v3 variants: compile facts and byte model (sm_90, triton "
        f"{meta['versions']['triton']})",
        "",
        *provenance,
        "* shapes: the ResNet18-CIFAR benchmark layers at batch 256, C_b = C_out/4, bf16, "
        "channels_last, keep-basis, no bias; per kernel the configs prune keeps there",
        "* counts read off the compiled kernels (tools/kernel_counts.py): SASS instructions"
        " per wgmma in the main loop; global bytes per program per C_in block (PTX, "
        "activations apart; masked lanes included)",
        "",
    ]
    lines += [
        "| shape | kernel | config | regs | spills | shared KiB | instr / wgmma | "
        "act B / C_in block | other B / C_in block | programs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        if "error" in r:
            lines.append(
                f"| {r.get('tag')} | {r['kernel']} | {r['config']} | compile error: "
                f"{r['error'].splitlines()[0][:80]} | | | | | | |"
            )
            continue
        ml = r.get("main_loop") or {}
        per_cb = ml.get("loads_per_cblock") or {}
        lines.append(
            f"| {r['tag']} | {r['kernel']} | {r['config']} | {r['registers']} | {r['spills']} "
            f"| {r['shared_bytes'] / 1024:.0f} | {ml.get('instructions_per_wgmma')} | "
            f"{per_cb.get('activations')} | {per_cb.get('other')} | {r['programs']} |"
        )
    lines += [
        "",
        "## Byte model per shape (best kept config per kernel)",
        "",
        "Assumptions: " + "; ".join(f"{k}: {v}" for k, v in ASSUMPTIONS.items()),
        "",
        "| shape | kernel | config | GFLOP (computed) | act L2 MB | act vs v2 | other MB "
        "| y (+ws) MB | tensor us | issue us | predicted us (L2 7 / 5.5 TB/s) | HBM floor"
        " us |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, entry in model_.items():
        for row in entry["best"].values():
            lines.append(
                f"| {tag} | {row['kernel']} | {row['config']} | {row['gflop']:.2f} | "
                f"{row['act_l2_mb']:.1f} | {row['act_l2_vs_v2']:.2f} | {row['other_mb']:.1f} | "
                f"{row['y_mb']:.1f} | {row['tensor_us']:.1f} | {row['issue_us']:.1f} | "
                f"{row['predicted_us'][0]:.1f} / {row['predicted_us'][1]:.1f} | "
                f"{entry['hbm_floor_us']:.1f} |"
            )
    return "\n".join(lines) + "\n"
