"""The GPU session runbook on CPU (bench/gpu_session.sh PART|next --quick, bench/README.md).

The dry run covers every part in two calls, the way GPU windows continue each other: the
first (``next``) runs parts 1-3 (the most one call's 8 returned files hold), the second
continues from the first's state file with part 4. Each summary must list the part's steps,
CPU steps ok, CUDA / ncu steps skipped with the reason, and the step folder packed in one
archive. Then the install fallback (a failed pip install, run the way the steps run), the
runner's plumbing (timeouts, budget, archive limit, state), the step digests and the helper
commands on stand-ins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_session.sh"

_spec = importlib.util.spec_from_file_location("gpu_session", REPO / "bench" / "gpu_session.py")
gs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gs)
tools, digests, ncu = gs.tools, gs.digests, gs.gpu_ncu

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the dry run checks the CPU plumbing; with CUDA the GPU steps run for minutes",
)


def _run(out: Path, *args, timeout=300, env=None):
    env = dict(os.environ if env is None else env, OUT=str(out), PYTHON=sys.executable)
    env.pop("TRITONBASIS_CACHE_DIR", None)  # the runner points it into its work folder
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_part(out: Path, part: int, r, setup_done=()) -> dict:
    summary = json.loads((out / f"part{part}-summary.json").read_text())
    expected = [
        s.name for s in gs.steps_for(part, Path("d"), quick=True) if s.name not in setup_done
    ]
    assert [s["name"] for s in summary["steps"]] == expected
    assert summary["complete"] is True and summary["quick"] is True and summary["cuda"] is False
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
    assert summary["archive"] == f"part{part}.tar.gz"
    with tarfile.open(out / summary["archive"]) as tf:
        names = set(tf.getnames())
    for name in expected:
        assert f"part{part}/{name}.log" in names, name
    table = r.stdout[r.stdout.index(f"part {part} (quick)") :]
    for name in expected:
        assert name in table
    return summary


def _statuses(summary):
    return {s["name"]: s["status"] for s in summary["steps"]}


@pytest.mark.slow
@needs_no_cuda
def test_dry_run_every_part_in_two_windows(tmp_path):
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    r = _run(out1, "next", "--quick", "--state", str(tmp_path / "none.json"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # at most 8 files come back: 2 per part, env.json, the state
    assert sorted(p.name for p in out1.iterdir()) == [
        "env.json",
        "gpu-session-state.json",
        "part1-summary.json",
        "part1.tar.gz",
        "part2-summary.json",
        "part2.tar.gz",
        "part3-summary.json",
        "part3.tar.gz",
    ]
    s1 = _check_part(out1, 1, r)
    setup = ("install", "env", "warm")
    _check_part(out1, 2, r, setup_done=setup)
    s3 = _check_part(out1, 3, r, setup_done=setup)
    st = _statuses(s1)
    assert st["env"] == st["bench_r18"] == st["autotune_log"] == "ok"
    assert _statuses(s3)["tune"] == "ok"
    # the import check ran the way the steps run, and found this checkout's kernels
    assert s1["install"]["mode"] == "as is" and s1["install"]["check"]["ok"]
    kernels = os.path.realpath(REPO / "kernels")
    assert all(
        os.path.dirname(s1["install"]["check"][k]["kernels"]) == kernels
        for k in ("module", "script")
    )
    env = json.loads((out1 / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    with tarfile.open(out1 / "part1.tar.gz") as tf:
        (js,) = [
            n for n in tf.getnames() if n.startswith("part1/bench_r18/") and n.endswith(".json")
        ]
        doc = json.load(tf.extractfile(js))
    got = {(rec["provider"], rec["direction"]) for rec in doc["records"]}
    assert got == {(p, d) for p in gs.PROVIDERS1.split(",") for d in ("fwd", "fwd+bwd")}
    bench_digest = next(s for s in s1["steps"] if s["name"] == "bench_r18")["digest"]
    assert bench_digest["table"][0].lower().startswith("## fused vs")

    # the second window continues from the first one's state: part 4 only
    r = _run(out2, "next", "--quick", "--state", str(out1 / gs.STATE_NAME))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (out2 / "part1-summary.json").exists()
    s4 = _check_part(out2, 4, r)
    assert _statuses(s4)["driver_256ch8px"] == _statuses(s4)["ncu_summary"] == "ok"
    with tarfile.open(out2 / "part4.tar.gz") as tf:
        log = tf.extractfile("part4/driver_256ch8px.log").read().decode()
    rec = json.loads(log.splitlines()[-1])
    assert rec["rel_err_vs_fp64"] < 1e-4 and rec["reps"] > 0
    assert rec["method"].startswith("torch.utils.benchmark")  # the one timer, on a CPU
    state = json.loads((out2 / gs.STATE_NAME).read_text())
    assert all(gs.pending(state, p, quick=True) == [] for p in (1, 2, 3, 4))
    assert gs.pending(state, 1, quick=False)  # dry-run records never count for a GPU window


def _repo_copy(dst: Path) -> Path:
    """tritonbasis/, kernels/ and bench/*.py of this checkout (no install of its own)."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tritonbasis", dst / "tritonbasis", ignore=ignore)
    shutil.copytree(REPO / "kernels", dst / "kernels", ignore=ignore)
    (dst / "bench").mkdir()
    for f in (REPO / "bench").glob("*.py"):
        shutil.copy(f, dst / "bench")
    shutil.copy(SCRIPT, dst / "bench")
    return dst


@pytest.mark.slow
def test_install_fallback_imports_kernels_the_way_steps_run(tmp_path):
    """A machine where ``pip install -e .`` fails (setuptools < 77 there): simulated by
    GPU_SESSION_PIP=fail in a copy of the checkout, with this interpreter's own install of
    tritonbasis hidden (a sitecustomize drops its editable finder). Without the fallback,
    ``python -c`` from the checkout finds the checkout's tritonbasis/, which has no kernels/;
    the runner's fallback (link + PYTHONPATH) makes both ways the steps run import the copy's
    kernels, and the next step (env) imports the package."""
    repo = _repo_copy(tmp_path / "repo")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path
                            if "editable" not in str(getattr(f, "__module__", ""))]
    """)
    )
    env = dict(os.environ, PYTHONPATH=str(site), GPU_SESSION_PIP="fail")
    r = subprocess.run(
        [sys.executable, "-c", "import tritonbasis.kernels"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "No module named 'tritonbasis.kernels'" in r.stderr
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            str(repo / "bench" / "gpu_session.py"),
            "4",
            "--steps",
            "install",
            "--out",
            str(out),
            "--state",
            str(tmp_path / "no.json"),
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # (exit 0: the failed pip install is not a failure of the call once the fallback imports)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "part4-summary.json").read_text())
    assert _statuses(summary) == {"install": "failed", "env": "ok"}  # (setup steps always run)
    inst = summary["install"]
    assert inst["mode"] == "link + PYTHONPATH" and not inst["check"]["ok"]
    kernels = os.path.realpath(repo / "kernels")
    for way in ("module", "script"):
        assert os.path.dirname(inst["check_after"][way]["kernels"]) == kernels, inst
    assert (repo / "tritonbasis" / "kernels").is_symlink()
    facts = json.loads((out / "env.json").read_text())  # the next step, with that environment
    assert facts["tritonbasis"]["file"] == str(repo / "tritonbasis")


def test_budget_spent_skips_steps(tmp_path):
    """With no budget left every runnable step is skipped with the reason, not started."""
    sess = gs.Session(tmp_path / "out", tmp_path / "work", True, 0, True, gs.load_state(None))
    sess.setup_done.add("tritonbasis_import")  # (the import check: the dry-run test's job)
    (tmp_path / "out").mkdir()
    summary = sess.run_part(4)
    steps = {s.name: s for s in gs.steps_for(4, tmp_path, True)}
    for st in summary["steps"]:
        assert st["status"] == "skipped", st
        if not st["needs"] and steps[st["name"]].quick_skip is None:
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


def test_results_reach_out_after_every_step_and_archive_limit(tmp_path, monkeypatch):
    """The summary, state and archive are in OUT after each step (a killed call still
    returns them); over the device tool's per-file limit the biggest outputs are left out
    (and listed), not the archive."""
    code = (
        "import os, sys; open(os.path.join(sys.argv[1], 'big.bin'), 'wb')"
        ".write(os.urandom(300_000))"
    )
    out = tmp_path / "out"
    seen = []

    def check_out(*a):  # the second step looks at what the first one left in OUT
        summary = json.loads((out / "part1-summary.json").read_text())
        seen.append([s["name"] for s in summary["steps"]])
        return None

    def steps(part, d, quick):
        return [
            gs.Step("big", [sys.executable, "-c", code, str(d)], 30),
            gs.Step("after", [sys.executable, "-c", "pass"], 30, skip_if=check_out),
        ]

    monkeypatch.setattr(gs, "steps_for", steps)
    monkeypatch.setattr(gs, "MAX_ARCHIVE_BYTES", 100_000)
    out.mkdir()
    sess = gs.Session(out, tmp_path / "work", True, 100, True, gs.load_state(None))
    summary = sess.run_part(1)
    assert seen == [["big"]]
    assert [s["status"] for s in summary["steps"]] == ["ok", "ok"]
    assert [x.split()[0] for x in summary["left_out"]] == ["big.bin"]
    with tarfile.open(out / "part1.tar.gz") as tf:
        assert "part1/big.log" in tf.getnames() and "part1/big.bin" not in tf.getnames()
    state = json.loads((out / gs.STATE_NAME).read_text())
    assert state["parts"]["1"]["big"]["status"] == "ok"


def test_state_and_pending(tmp_path):
    assert gs.load_state(None)["parts"] == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert gs.load_state(bad)["parts"] == {}
    names = [s.name for s in gs.steps_for(1, tmp_path, False) if not s.setup]
    state = {
        "format": "tritonbasis.gpu_session_state/1",
        "parts": {
            "1": {
                "bench_r18": {"status": "ok", "quick": False},
                "configs": {"status": "timeout", "quick": False},
                "variants": {"status": "skipped", "quick": False},
            }
        },
    }
    todo = gs.pending(state, 1, quick=False)
    assert "bench_r18" not in todo and {"configs", "variants"} <= set(todo)
    assert todo == [n for n in names if n != "bench_r18"]


def test_part1_order_budget_and_markers(tmp_path):
    """Part 1 asks the decisive questions first and fits its default budget; the GPU tests
    are selected by marker, never by file."""
    steps = gs.steps_for(1, tmp_path, False)
    names = [s.name for s in steps]
    assert names[:4] == ["install", "env", "warm", "bench_r18"]
    assert names.index("configs") < names.index("ncu_256ch8px") < names.index("extra")
    assert names[-2:] == ["variants", "kernel_tests"]
    assert gs.DEFAULT_BUDGET_S <= 480
    cmds = {s.name: s.cmd for s in steps}
    for name, mark in (
        ("configs", "gpu_configs"),
        ("extra", "gpu_int64 or gpu_splitk or gpu_dcoeff"),
    ):
        cmd = cmds[name]
        assert cmd[cmd.index("-m", 3) + 1] == mark and "tests" in cmd
        assert not any(c.endswith(".py") for c in cmd[3:]), cmd
    text = (REPO / "pyproject.toml").read_text()
    for mark in ("gpu_configs", "gpu_int64", "gpu_splitk", "gpu_dcoeff"):
        assert f'"{mark}:' in text, mark


def test_warm_jobs_are_the_four_r18_shapes():
    jobs = tools.warm_jobs()
    tags = {j["tag"].rsplit(".cb", 1)[0] for j in jobs}
    assert tags == set(tools.R18_CASES)
    assert {j["name"] for j in jobs} >= {"fwd", "grad_z", "grad_x", "wgrad"}
    assert all(j["arch"] == 90 and j["dtype"] == "bf16" for j in jobs)


@pytest.mark.parametrize("part", [1, 2, 3, 4])
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_cli_step_parses(part, quick, tmp_path):
    """Every ``python -m tritonbasis`` command of every part (full and dry run) parses with
    the CLI's own parser; bench commands resolve to a valid config writing under the part
    folder."""
    import dataclasses

    from tritonbasis.cli import build_parser
    from tritonbasis.perf import bench as tbb
    from tritonbasis.util.config_args import from_args

    tools.cmd_write_plan(str(tmp_path / "plan_layer234.json"), str(tmp_path / "plan_quick.json"))
    seen = 0
    for st in gs.steps_for(part, tmp_path, quick):
        cmd = st.quick_cmd if quick and st.quick_cmd is not None else st.cmd
        if cmd[1:3] != ["-m", "tritonbasis"]:
            continue
        args = build_parser().parse_args(cmd[3:])
        if cmd[3] == "bench":
            p = __import__("argparse").ArgumentParser()
            tbb.add_arguments(p)
            cfg = from_args(tbb.BenchConfig, p.parse_args(cmd[4:]))
            assert cfg.out.startswith(str(tmp_path)), st.name
            tbb.resolve(dataclasses.replace(cfg, device="cpu"))
        assert args.cmd == cmd[3]
        seen += 1
    assert seen >= (0 if part == 4 else 1)


def test_digests(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(
        "tests/a.py::t1 PASSED\nFAILED tests/a.py::t2 - AssertionError: no\n"
        "===== 1 failed, 3 passed, 2 skipped in 4.20s =====\n"
    )
    d = digests.pytest_log(tmp_path, log)
    assert (d["failed"], d["passed"], d["skipped"]) == (1, 3, 2)
    assert d["failures"] == ["tests/a.py::t2"]
    log.write_text(
        "[gw0] [ 10%] PASSED tests/a.py::t1\n[gw1] [ 20%] FAILED tests/a.py::t2\n"
        "[gw0] [ 30%] PASSED tests/a.py::t3\n\n[gpu_session] killed after 9 s\n"
    )
    d = digests.pytest_log(tmp_path, log)
    assert (d["passed"], d["failed"]) == (2, 1) and "killed" in d["summary"]
    (tmp_path / "w.json").write_text(json.dumps({"digest": {"jobs": 3}}))
    assert digests.json_file("w.json")(tmp_path, log) == {"jobs": 3}
    assert digests.json_file("none.json")(tmp_path, log) == {"missing": "none.json"}


def test_autotune_log_reads_triton_cache(tmp_path, monkeypatch):
    """Triton prints its choice only when it benchmarks: the log reads the on-disk results
    (one ``*.autotune.json`` per tuned launch key; the layout Triton 3.6 writes)."""
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / "basis_conv_fwd_kernel.autotune.json").write_text(
        json.dumps(
            {
                "key": [256, 64],
                "configs_timings": [
                    [{"kwargs": {"BLOCK_M": 128}, "num_warps": 4, "num_stages": 3}, [0.021, 0.02]],
                    [{"kwargs": {"BLOCK_M": 64}, "num_warps": 4, "num_stages": 4}, [0.019, 0.018]],
                ],
            }
        )
    )
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assert tools.cmd_autotune_log(str(tmp_path / "a.json")) == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    (row,) = doc["results"]
    assert row["kernel"] == "basis_conv_fwd_kernel" and row["best"] == {"BLOCK_M": 64}
    assert doc["digest"] == {"tuned_launch_keys": 1}


def test_variants_step_isolates_failures(tmp_path, monkeypatch):
    """bench/variants.py's contract on a stand-in: each variant after the baseline in its own
    process; a failing or hanging one is reported and excluded, never fatal."""
    fake = tmp_path / "variants.py"
    fake.write_text(
        textwrap.dedent("""
        import json, sys, time
        if "--list" in sys.argv:
            print("UserWarning: stderr is not a variant", file=sys.stderr)
            print("v2\\nfast\\nbroken\\nhang")
            sys.exit(0)
        name = sys.argv[sys.argv.index("--variant") + 1]
        out = sys.argv[sys.argv.index("--out") + 1]
        if name == "broken":
            sys.exit("wrong results")
        if name == "hang":
            time.sleep(60)
        json.dump({"ok": True, "speedup": 1.3}, open(out, "w"))
    """)
    )
    monkeypatch.setattr(tools, "VARIANTS", fake)
    args = __import__("argparse").Namespace(
        out=str(tmp_path / "v"), budget=20.0, per_variant=3.0, quick=False, first_only=False
    )
    assert tools.cmd_variants(args) == 0
    doc = json.loads((tmp_path / "v" / "variants.json").read_text())
    assert doc["digest"] == {"fast": "ok", "broken": "failed", "hang": "timeout"}
    assert doc["variants"]["fast"]["result"]["speedup"] == 1.3
    monkeypatch.setattr(tools, "VARIANTS", tmp_path / "missing.py")
    assert tools.cmd_variants(args) == 0
    assert (
        "not in this checkout"
        in json.loads((tmp_path / "v" / "variants.json").read_text())["skipped"]
    )


def test_ncu_raw_csv_digest_and_metric_filter(tmp_path):
    """The metric picker on an ``ncu --csv --page raw`` output laid out as Nsight Compute
    writes it (the driver's own line before it; values made up), the digest, and the metric
    list filtered by what this ncu knows (a stand-in ncu printing --query-metrics)."""
    text = "\n".join(
        [
            '{"device": "cuda", "median_ms": 0.02}',
            '"ID","Kernel Name","gpu__time_duration.sum","lts__t_bytes.sum",'
            '"lts__throughput.avg.pct_of_peak_sustained_elapsed",'
            '"smsp__inst_executed.avg.per_cycle_active","other.metric"',
            '"","","usecond","Mbyte","%","inst/cycle",""',
            '"0","basis_conv_fwd_kernel","21.5","125.3","71.2","0.62","1"',
        ]
    )
    (k,) = ncu.parse_raw_csv(text)
    assert k["kernel"] == "basis_conv_fwd_kernel" and "other.metric" not in k["metrics"]
    assert k["metrics"]["lts__t_bytes.sum"] == "125.3 Mbyte"
    d = ncu.digest(k)
    assert (d["time"], d["l2_bytes"], d["l2_pct"], d["ipc_per_smsp"]) == (21.5, 125.3, 71.2, 0.62)
    (tmp_path / "ncu_256ch8px_raw.log").write_text(text + "\n")
    assert ncu.cmd_summary(str(tmp_path)) == 0
    assert (
        json.loads((tmp_path / "ncu_summary.json").read_text())["ncu_256ch8px_raw"][0]["kernel"]
        == "basis_conv_fwd_kernel"
    )
    fake = tmp_path / "ncu"
    listed = [m.split(".")[0] for m in ncu.DECIDING if not m.startswith("sm__pipe_tensor_op")]
    listed += [f"filler__metric_{i}" for i in range(60)]
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{m}  Counter  # text'\n" for m in listed))
    fake.chmod(0o755)
    kept, dropped = ncu.known_metrics(str(fake))
    assert dropped == [m for m in ncu.DECIDING if m.startswith("sm__pipe_tensor_op")]
    assert kept == [m for m in ncu.DECIDING if m not in dropped]


def test_helper_commands_usage():
    for script, args in (
        ("gpu_session_tools.py", []),
        ("gpu_session_tools.py", ["env"]),
        ("gpu_ncu.py", []),
        ("gpu_ncu.py", ["summary"]),
    ):
        r = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "usage" in r.stderr, (script, args)


def test_usage_errors():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(
        ["bash", str(SCRIPT), "5", "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr
