"""Compile the v2 backward kernels (grad_z, grad_x, wgrad, bwd_reduce) for sm_90 at the
ResNet18-CIFAR benchmark shapes (batch 256, C_b = C_out/4) and print, per kept config, the
tensor-core instruction, spills, registers, shared memory and pipelined loops. Used for the
"v2 backward" section of bench/NOTES.md; run it with each Triton CI tests (3.6 and the
newest):

    python tools/compile_backward_v2.py [--all] [--json OUT]

``--all``: every config, not only those ``configs.prune`` keeps for the shape.
"""

from __future__ import annotations

import argparse
import json
import sys

import aot  # tools/aot.py, beside this script (tools/ is not installed)
from tritonbasis.kernels import configs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--kernels", default="grad_z,grad_x,wgrad,bwd_reduce")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    jobs = []
    shapes = aot.bench_shapes()
    if a.shapes:
        shapes = {k: v for k, v in shapes.items() if any(s in k for s in a.shapes.split(","))}
    for sname, shape in shapes.items():
        for k in a.kernels.split(","):
            if k == "bwd_reduce":
                cands = {"FIXED": configs.RECORDS[k].fixed}
            elif a.all:
                cands = dict(configs.RECORDS[k].configs)
            else:
                kept = configs.prune(
                    k, list(configs.RECORDS[k].configs.values()), aot.prune_shape(shape, kernel=k)
                )
                cands = {aot.config_name(k, c): c for c in kept}
            for cname, cfg in cands.items():
                jobs.append(
                    {
                        "name": k,
                        "config": cfg,
                        "cfg_name": cname,
                        "arch": 90,
                        "dtype": "bf16",
                        "shape": shape,
                        "_shape": sname,
                    }
                )
    meta = [j.pop("_shape") for j in jobs]
    reps = aot.compile_many(jobs, workers=a.workers)
    import triton

    out = []
    for sname, r in zip(meta, reps):
        r = {**r, "shape_name": sname}
        out.append(r)
        if "error" in r:
            print(f"{sname:52s} {r['kernel']:10s} {r['config']:20s} ERROR {r['error'][:300]}")
            continue
        print(
            f"{sname:52s} {r['kernel']:10s} {r['config']:20s} {r['tensor_core_instr']!s:9s} "
            f"{','.join(r.get('wgmma_shapes') or []):12s} spills={r['spills']} "
            f"regs={r['registers']} smem={r['shared_bytes']} "
            f"loops={r.get('loops')} pipelined={r.get('pipelined_loops')} "
            f"async={r.get('async_copies')}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"meta": {"versions": {"triton": triton.__version__}}, "reports": out}, f, indent=1
            )
    bad = [
        r
        for r in out
        if "error" in r
        or (r["kernel"] != "bwd_reduce" and (r["tensor_core_instr"] != "wgmma" or r["spills"] != 0))
    ]
    print(f"{len(out)} compiled, {len(bad)} not wgmma+0 spills (or failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
