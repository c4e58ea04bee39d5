"""bench/variants.py (the GPU runbook checks each forward variant with it) and
tools/record_verified.py (its passing results become kernels/verified.json entries): the CLI
and the JSON contract, dry-run on CPU (``--quick``: the interpreter, or the halo emulation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAS_CUDA, HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "variants.py"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )


def test_list_prints_v2_first_then_the_variants():
    r = _cli("--list")
    assert r.returncode == 0, r.stderr[-2000:]
    names = r.stdout.split()
    assert names[0] == "fwd" and {"fwd_l1", "fwd_tma"} <= set(names[1:]), names


def test_a_full_check_needs_cuda(tmp_path):
    if HAS_CUDA:
        pytest.skip("with CUDA the full check runs (the GPU runbook)")
    r = _cli("--variant", "fwd_l1", "--out", str(tmp_path / "r.json"))
    assert r.returncode == 2 and "needs CUDA" in r.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fwd_tma", "fwd_halo"])
def test_quick_dry_run_writes_the_result(tmp_path, variant):
    from tritonbasis.kernels import RECORDS

    if variant not in RECORDS:
        pytest.skip(f"this triton has no {variant}")
    out = tmp_path / "r.json"
    r = _cli("--variant", variant, "--out", str(out), "--quick")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["variant"] == variant and res["ok"] and res["quick"]
    assert {"gpu", "capability", "torch", "triton", "source_hash", "commit", "date"} <= set(res)
    (row,) = res["shapes"]
    assert row["ran"].startswith(variant) and row["error"]["variant"] < 1e-5


def _gpu_result(**over) -> dict:
    res = {
        "variant": "fwd_halo",
        "ok": True,
        "quick": False,
        "gpu": "NVIDIA H200",
        "capability": "9.0",
        "triton": "3.6.0",
        "torch": "2.11.0",
        "source_hash": "abc",
        "commit": "0" * 40,
        "date": "2026-12-04T00:00:00+00:00",
        "shapes": [
            {
                "name": "64ch@32px",
                "error": {"variant": 0.002, "v2": 0.002},
                "time_ms": {"variant": 0.02, "v2": 0.05},
                "ok": True,
            }
        ],
    }
    return {**res, **over}


def test_record_verified_takes_only_passing_full_gpu_runs(tmp_path):
    import record_verified  # tools/record_verified.py
    from tritonbasis.kernels import verified

    e = record_verified.entry(_gpu_result())
    assert e["speedup_vs_v2"] == {"64ch@32px": 2.5} and e["max_error"] == 0.002
    for bad in (dict(ok=False), dict(quick=True), dict(gpu=None), dict(variant="fwd")):
        with pytest.raises(ValueError):
            record_verified.entry(_gpu_result(**bad))
    path = tmp_path / "verified.json"
    verified.add(e, path)
    assert verified.passed(verified.load(path), "fwd_halo", "9.0", "3.6.0", "abc")
