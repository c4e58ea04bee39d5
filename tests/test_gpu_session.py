"""The GPU session runbook's CPU dry run (bench/gpu_session.sh PART --quick, issue 10).

Runs each part with $OUT in a temporary folder and checks the summary JSON: every step of
the part is present, the steps that can run on CPU succeeded, CUDA / ncu steps say skipped
with a reason, and the step folder came back packed in one archive (the device tool returns
at most 8 files). Parts 2 and 3 run the tiny end-to-end model and tuning (about 15 and 60 s
on 2 busy cores): marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_session.sh"

_spec = importlib.util.spec_from_file_location("gpu_session", REPO / "bench" / "gpu_session.py")
gs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gs)

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the dry run checks the CPU plumbing; with CUDA the GPU steps run for minutes")


def _run(part, out: Path, *extra, timeout=300):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("TRITONBASIS_CACHE_DIR", None)  # the runner points it into the part folder
    r = subprocess.run(["bash", str(SCRIPT), str(part), "--quick", *extra], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r


def _check_part(part: int, out: Path, r) -> dict:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / f"part{part}-summary.json").read_text())
    expected = [s.name for s in gs.steps_for(part, out / f"part{part}", quick=True)]
    assert [s["name"] for s in summary["steps"]] == expected
    assert summary["complete"] is True and summary["quick"] is True
    assert summary["cuda"] is False
    for st in summary["steps"]:
        assert st["status"] in ("ok", "skipped"), st
        assert isinstance(st["wall_s"], float)
        if st["status"] == "ok":
            assert st["rc"] == 0
        else:
            assert st["rc"] is None and st["reason"], st
        if "cuda" in st["needs"]:
            assert st["status"] == "skipped" and st["reason"] == "no CUDA", st
        elif "ncu" in st["needs"]:
            assert st["status"] == "skipped" and st["reason"] in ("no CUDA", "ncu not found")
    # the step folder is packed into one archive with a log per step
    assert summary["archive"] == f"part{part}.tar.gz"
    assert not (out / f"part{part}").exists()
    with tarfile.open(out / summary["archive"]) as tf:
        names = set(tf.getnames())
    for name in expected:
        assert f"part{part}/{name}.log" in names, name
    # the table at the end of the output names every step
    table = r.stdout[r.stdout.rindex(f"part {part} (quick)"):]
    for name in expected:
        assert name in table
    return summary


def _statuses(summary):
    return {s["name"]: s["status"] for s in summary["steps"]}


@needs_no_cuda
def test_part1_quick(tmp_path):
    r = _run(1, tmp_path)
    summary = _check_part(1, tmp_path, r)
    st = _statuses(summary)
    assert st["env"] == st["probe"] == st["bench_r18"] == "ok"
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert len(env["git"]["commit"] or "x" * 40) == 40
    with tarfile.open(tmp_path / "part1.tar.gz") as tf:
        jsons = [n for n in tf.getnames() if n.startswith("part1/bench_r18/") and
                 n.endswith(".json")]
        assert len(jsons) == 1
        doc = json.load(tf.extractfile(jsons[0]))
    got = {(rec["provider"], rec["direction"]) for rec in doc["records"]}
    assert got == {(p, d) for p in gs.PROVIDERS1.split(",") for d in ("fwd", "fwd+bwd")}


@needs_no_cuda
def test_part4_quick_driver_runs_ncu_skipped(tmp_path):
    r = _run(4, tmp_path)
    summary = _check_part(4, tmp_path, r)
    st = _statuses(summary)
    assert st["driver_128ch16px"] == st["driver_256ch8px"] == st["ncu_summary"] == "ok"
    with tarfile.open(tmp_path / "part4.tar.gz") as tf:
        log = tf.extractfile("part4/driver_128ch16px.log").read().decode()
    rec = json.loads(log.splitlines()[-1])
    assert rec["rel_err_vs_fp64"] < 1e-4 and rec["reps"] > 0
    assert rec["method"].startswith("torch.utils.benchmark")  # the one timer, on a CPU
    assert rec["p20_ms"] <= rec["median_ms"] <= rec["p80_ms"]


@needs_no_cuda
@pytest.mark.slow
def test_part2_quick(tmp_path):
    summary = _check_part(2, tmp_path, _run(2, tmp_path))
    st = _statuses(summary)
    assert st["bench_r18_compiled"] == st["bench_r50"] == "ok"


@needs_no_cuda
@pytest.mark.slow
def test_part3_quick(tmp_path):
    summary = _check_part(3, tmp_path, _run(3, tmp_path))
    assert all(s["status"] == "ok" for s in summary["steps"] if s["name"] != "install"), \
        summary["steps"]
    with tarfile.open(tmp_path / "part3.tar.gz") as tf:
        names = tf.getnames()
    assert "part3/profile/trace.json" in names
    assert "part3/plan_layer234.json" in names
    # the dry run's tuning went to the part folder, not the user's cache
    assert any(n.startswith("part3/tune-cache/") for n in names)


def test_budget_spent_skips_steps(tmp_path):
    """With no budget left every runnable step is skipped with the reason, not started."""
    r = _run(4, tmp_path, "--budget", "0", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "part4-summary.json").read_text())
    for st in summary["steps"]:
        assert st["status"] == "skipped", st
        if st["name"] == "install":  # skipped before the budget: the package imports
            assert st["reason"] == "already importable (--quick)", st
        elif not st["needs"]:
            assert st["reason"].startswith("part budget spent"), st


def test_timeout_kills_step_and_records_it(tmp_path):
    """A hanging step is killed at its timeout (its whole process group) and recorded."""
    step = gs.Step("hang", [sys.executable, "-c", "import time; time.sleep(60)"], 1)
    t = __import__("time").monotonic()
    rec = gs._run_step(step, step.cmd, 1.0, tmp_path / "hang.log", dict(os.environ))
    assert __import__("time").monotonic() - t < 30
    assert rec["status"] == "timeout" and rec["reason"] == "killed after 1 s"
    assert "killed after 1 s" in (tmp_path / "hang.log").read_text()


def test_failed_step_recorded(tmp_path):
    step = gs.Step("fail", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30)
    rec = gs._run_step(step, step.cmd, 30, tmp_path / "fail.log", dict(os.environ))
    assert rec["status"] == "failed" and rec["rc"] == 3
    assert gs._tail(tmp_path / "fail.log") == "boom"


def test_ncu_summary_reads_raw_csv(tmp_path):
    """The metric picker on a raw-page CSV laid out as ``ncu --page raw --csv`` writes it:
    a header row, a units row, one row per kernel (values here are made up)."""
    rows = [
        '$ ncu --import x.ncu-rep --page raw --csv',
        '"ID","Kernel Name","dram__throughput.avg.pct_of_peak_sustained_elapsed",'
        '"lts__throughput.avg.pct_of_peak_sustained_elapsed","smsp__cycles_active.avg"',
        '"","","%","%","cycle"',
        '"0","basis_conv_fwd_kernel","61.5","48.25","1000"',
    ]
    (tmp_path / "ncu_128ch16px_raw.log").write_text("\n".join(rows) + "\n")
    assert gs.tools.cmd_ncu_summary(str(tmp_path)) == 0
    out = json.loads((tmp_path / "ncu_summary.json").read_text())
    (k,) = out["ncu_128ch16px_raw"]
    assert k["kernel"] == "basis_conv_fwd_kernel"
    assert k["metrics"] == {"dram__throughput.avg.pct_of_peak_sustained_elapsed": "61.5 %",
                            "lts__throughput.avg.pct_of_peak_sustained_elapsed": "48.25 %"}


@pytest.mark.parametrize("part", [1, 2, 3])
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_bench_step_parses_with_the_bench_flags(part, quick, tmp_path):
    """The bench flags are generated from BenchConfig: every `tritonbasis bench` command of
    every part (full and dry run) must still parse, to the config it meant."""
    import argparse
    import dataclasses

    from tritonbasis.perf import bench as tbb
    from tritonbasis.util.config_args import from_args

    gs.tools.cmd_write_plan(str(tmp_path / "plan_layer234.json"))  # part 3's --plan file
    seen = 0
    for st in gs.steps_for(part, tmp_path, quick):
        cmd = st.quick_cmd if quick and st.quick_cmd is not None else st.cmd
        if cmd[1:4] != ["-m", "tritonbasis", "bench"]:
            continue
        p = argparse.ArgumentParser()
        tbb.add_arguments(p)
        cfg = from_args(tbb.BenchConfig, p.parse_args(cmd[4:]))
        assert cfg.out.startswith(str(tmp_path)), st.name
        tbb.resolve(dataclasses.replace(cfg, device="cpu"))  # every choice is valid
        seen += 1
    assert seen >= 1


def test_helper_commands_usage():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_session_tools.py")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_session_tools.py"), "env"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def test_usage_errors():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "5", "--quick"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_oversize_archive_leaves_largest_file_out(tmp_path, monkeypatch):
    """Over the device tool's per-file limit, the biggest outputs are dropped (and listed),
    not the whole archive."""
    code = ("import os, sys; open(os.path.join(sys.argv[1], 'big.bin'), 'wb')"
            ".write(os.urandom(300_000))")

    def steps(part, d, quick):
        return [gs.Step("big", [sys.executable, "-c", code, str(d)], 30)]

    monkeypatch.setattr(gs, "steps_for", steps)
    monkeypatch.setattr(gs, "_has_cuda", lambda: False)
    monkeypatch.setattr(gs, "MAX_ARCHIVE_BYTES", 100_000)
    assert gs.run_part(1, tmp_path, quick=True, budget=100, pack=True) == 0
    summary = json.loads((tmp_path / "part1-summary.json").read_text())
    assert summary["steps"][0]["status"] == "ok"
    assert [x.split()[0] for x in summary["left_out"]] == ["big.bin"]
    with tarfile.open(tmp_path / "part1.tar.gz") as tf:
        assert "part1/big.log" in tf.getnames() and "part1/big.bin" not in tf.getnames()


def test_install_falls_back_to_a_copy_when_pip_fails(tmp_path, monkeypatch):
    """pip install -e needs setuptools >= 77 where it runs; without it the package is copied
    (kernels/ as tritonbasis/kernels) and that copy imports."""
    shim = tmp_path / "site"
    monkeypatch.setattr(gs.tools, "SHIM", shim)
    monkeypatch.setattr(gs.tools, "_pip_install", lambda: 1)
    assert gs.tools.cmd_install(force=True) == 0
    assert (shim / "tritonbasis" / "kernels" / "forward.py").is_file()
    r = subprocess.run([sys.executable, "-c", "import tritonbasis.kernels as k; print(k.__file__)"],
                       cwd="/", capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(shim)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(str(shim))
