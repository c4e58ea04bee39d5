"""Reliability of long runs and saved state: every failure case, mostly as a subprocess of
the real CLI -- exit code, one clear line on stderr without a traceback, and nothing in the
output folder damaged or left behind by a refused start.

Tiny settings as tests/cli/test_cli.py (quarter-of-a-quarter ResNet18 on 8x8 digits, a few
steps): one CLI training run is ~10 s on the 2-core CI machine."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonbasis as tb
from tritonbasis.cli.guard import LOCK_NAME, RunLock, RunLockedError
from tritonbasis.op import tune_cache
from tritonbasis.op.geometry import check_inputs
from tritonbasis.recipes import search as S
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.models import resnet18_cifar
from tritonbasis.recipes.train import TrainConfig, train
from tritonbasis.util.fileio import CheckpointError

TINY_TRAIN = [
    "train",
    "--width",
    "0.125",
    "--image-size",
    "8",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--max-steps",
    "3",
    "--ratio",
    "0.25",
    "--quiet",
    "--time-steps",
    "1",
    "--seed",
    "3",
]
TINY_SEARCH = [
    "search",
    "--width",
    "0.125",
    "--image-size",
    "8",
    "--epochs",
    "1",
    "--probe-steps",
    "1",
    "--quiet",
    "--no-final",
    "--no-ladder",
]


def _cli(*args, env=None, timeout=600):
    e = {k: v for k, v in os.environ.items() if k != "TRITONBASIS_DEBUG"}
    # one thread: bitwise-reproducible CPU runs, and kind to the shared 2 cores
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "tritonbasis", *map(str, args)],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
    )


def _refused(r, code: int, *needles: str) -> str:
    """The run ended with ``code`` and exactly one stderr line, no traceback, holding
    ``needles``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _flip_tensor_bytes(path: Path, n: int = 50) -> None:
    """Flip ``n`` bytes inside the largest tensor record of a torch zip checkpoint (the data,
    not the pickle or the zip headers: what a bad disk or copy does unnoticed)."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra field, then the stored (uncompressed) data
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    step = max(1, info.file_size // (n + 1))
    for i in range(n):
        raw[start + (i + 1) * step - 1] ^= 0x5A
    path.write_bytes(bytes(raw))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lock.write_text(
        json.dumps(
            {
                "pid": pid,
                "host": host or socket.gethostname(),
                "command": "search",
                "started": started,
            }
        )
    )
    return lock


# --------------------------------------------------------------------------------------------
# two CLI training runs, shared by several cases


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run A: a stale lock (dead pid) planted in its folder and a binary mode-timings.json in
    its cache. Run B: a cache whose entries hold dicts where strings/lists belong. Same
    command and seed otherwise."""
    root = tmp_path_factory.mktemp("runs")
    cache_a, cache_b = root / "cache_a", root / "cache_b"
    cache_a.mkdir()
    cache_b.mkdir()
    (cache_a / tune_cache.TIMINGS_FILE).write_bytes(b"\xff\xfe\x00\x81 not utf-8 \xc3\x28")
    (cache_b / tune_cache.TIMINGS_FILE).write_text(
        json.dumps(
            {
                "format": tune_cache.FORMAT,
                "kind": "mode-timings",
                "entries": {
                    "k": {
                        "ident": [{"a": 1}],
                        "device": {"b": 2},
                        "geometry": [{"c": 3}],
                        "mode": {"d": 4},
                    }
                },
            }
        )
    )
    _write_lock(root / "a", _dead_pid())
    ra = _cli(*TINY_TRAIN, "--out", root / "a", env={"TRITONBASIS_CACHE_DIR": str(cache_a)})
    rb = _cli(*TINY_TRAIN, "--out", root / "b", env={"TRITONBASIS_CACHE_DIR": str(cache_b)})
    return root, ra, rb


@pytest.mark.slow
def test_cli_train_is_reproducible_from_seed(two_runs):
    root, ra, rb = two_runs
    assert ra.returncode == 0, ra.stderr[-3000:]
    assert rb.returncode == 0, rb.stderr[-3000:]
    res = [json.loads((root / n / "result.json").read_text()) for n in ("a", "b")]
    assert res[0]["final_val_acc"] == res[1]["final_val_acc"]
    assert res[0]["history"][-1]["train_loss"] == res[1]["history"][-1]["train_loss"]
    wa = torch.load(root / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(root / "b" / "last.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # a model built with another seed starts elsewhere: the seed reaches the init
    torch.manual_seed(3)
    m3 = resnet18_cifar(num_classes=10, width=0.125)
    torch.manual_seed(4)
    m4 = resnet18_cifar(num_classes=10, width=0.125)
    assert not torch.equal(m3.fc.weight, m4.fc.weight)


def test_corrupt_cache_files_are_ignored_with_a_warning_naming_them(two_runs):
    root, ra, rb = two_runs
    assert ra.returncode == 0 and rb.returncode == 0
    assert str(root / "cache_a" / tune_cache.TIMINGS_FILE) in ra.stderr
    assert str(root / "cache_b" / tune_cache.TIMINGS_FILE) in rb.stderr
    assert "Traceback" not in ra.stderr + rb.stderr


def test_stale_lock_is_taken_over_with_a_message_and_released(two_runs):
    root, ra, rb = two_runs
    assert ra.returncode == 0
    assert "stale lock" in ra.stderr
    assert not (root / "a" / LOCK_NAME).exists() and not (root / "b" / LOCK_NAME).exists()


@pytest.mark.slow
def test_rerun_into_a_finished_train_folder_is_refused(two_runs, tmp_path):
    root, ra, _ = two_runs
    assert ra.returncode == 0
    out = tmp_path / "run"
    shutil.copytree(root / "a", out)
    before = _digest_tree(out)
    r = _cli(*TINY_TRAIN, "--out", out)
    _refused(r, 2, "already holds a run", "--resume", "--overwrite")
    assert _digest_tree(out) == before
    _refused(_cli(*TINY_TRAIN, "--out", out, "--resume", "--overwrite"), 2, "not both")
    assert _digest_tree(out) == before


@pytest.mark.slow
def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(two_runs, tmp_path):
    root, ra, _ = two_runs
    assert ra.returncode == 0
    out = tmp_path / "run"
    shutil.copytree(root / "a", out)
    _flip_tensor_bytes(out / "last.pt")
    # torch itself loads the damaged file without complaint: only the checksum can tell
    torch.load(out / "last.pt", weights_only=True)
    before = _digest_tree(out)
    r = _cli(*TINY_TRAIN, "--out", out, "--resume")
    _refused(r, 1, "last.pt", "checksum")
    assert _digest_tree(out) == before  # not "resumed", not restarted, nothing rewritten
    # truncated (a full disk, a killed copy)
    raw = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(raw[: len(raw) // 3])
    before = _digest_tree(out)
    _refused(_cli(*TINY_TRAIN, "--out", out, "--resume"), 1, "last.pt", "corrupt or truncated")
    assert _digest_tree(out) == before


# --------------------------------------------------------------------------------------------
# refused starts: exit 2 (usage) or 1, one line, nothing written


class _InProcess:
    """A finished in-process CLI call, shaped like subprocess.CompletedProcess."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _main_inprocess(capsys, *args):
    from tritonbasis.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse: exit 2 after printing its one line
        rc = e.code
    out = capsys.readouterr()
    return _InProcess(rc, out.out, out.err)


# One of each kind as a real subprocess (the console path: exit code, stderr, no traceback);
# the rest of the matrix in-process, where the same main() refuses them (saves ~1 min of
# interpreter start-ups on CI).
@pytest.mark.slow
def test_bad_arguments_in_a_subprocess(tmp_path):
    out = tmp_path / "s"
    _refused(
        _cli(*TINY_SEARCH, "--out", out, "--max-drop", "nan"),
        2,
        "tritonbasis search: error:",
        "--max-drop",
        "finite",
    )
    _refused(
        _cli(*TINY_TRAIN, "--out", out, "--epochs", "0"), 2, "tritonbasis train: error:", "--epochs"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "bad",
    [
        ["--max-drop", "nan"],
        ["--max-drop", "inf"],
        ["--max-drop", "-1"],
        ["--batch-size", "0"],
        ["--lr", "-1"],
        ["--epochs", "0"],
        ["--image-size", "3"],
        ["--ratio", "0"],
        ["--probe-steps", "x"],
    ],
    ids=lambda b: " ".join(b),
)
def test_search_bad_arguments_fail_at_parse_time(bad, tmp_path, capsys):
    out = tmp_path / "s"
    r = _main_inprocess(capsys, *TINY_SEARCH, "--out", out, *bad)
    _refused(r, 2, "tritonbasis search: error:", bad[0])
    assert not out.exists()


@pytest.mark.parametrize(
    "cmd",
    [
        ["train", "--epochs", "0"],
        ["train", "--image-size", "1"],
        ["train", "--lr", "nan"],
        ["train", "--plan", "."],
        ["train", "--plan", "no_such_plan.json"],
        ["train", "--device", "tpu"],
        ["demo", "--channels", "0"],
        ["demo", "--size", "0"],
        ["demo", "--ratio", "0"],
        ["convert", "--ratio", "1.5"],
    ],
    ids=lambda c: " ".join(c),
)
def test_cli_bad_arguments_fail_at_parse_time(cmd, tmp_path, capsys):
    out = tmp_path / "t"
    extra = ["--out", out] if cmd[0] == "train" else []
    r = _main_inprocess(capsys, *cmd, *extra)
    _refused(r, 2, f"tritonbasis {cmd[0]}: error:")
    assert not out.exists()


@pytest.mark.slow
def test_plan_file_problems_are_one_line(tmp_path):
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    _refused(_cli("convert", "--width", "0.125", "--plan", binary), 1, str(binary), "not a text")
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"layer1.0.conv1": {"ratio": "0.25"}}))
    _refused(
        _cli("convert", "--width", "0.125", "--plan", typed),
        1,
        str(typed),
        "ratio must be a finite number",
    )
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({"re:layer9\\..*": {"ratio": 0.25}}))
    r = _cli("convert", "--width", "0.125", "--plan", nothing)
    assert r.returncode == 0, r.stderr
    assert "match no Conv2d" in r.stderr and "converted 0/20" in r.stdout


@pytest.mark.slow
def test_missing_cifar_is_one_line_and_leaves_no_folder(tmp_path):
    out = tmp_path / "t"
    r = _cli("train", "--data", "cifar10", "--data-dir", tmp_path / "nope", "--out", out)
    line = _refused(r, 1, "tritonbasis: error:", "nope")
    assert "download option" not in line and "never downloads" in line
    assert not out.exists()


def test_unwritable_output_folder_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for cmd in (TINY_TRAIN, TINY_SEARCH):
        r = _cli(*cmd, "--out", blocker / "out")
        _refused(r, 1, "not writable", "a_file")
    assert blocker.read_text() == "x"


def test_read_only_folder_fails_before_any_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: file permissions do not stop writes (the a_file case "
            "above covers the same check)"
        )
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _refused(_cli(*TINY_SEARCH, "--out", ro), 1, "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_live_lock_refuses_a_second_search(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "s"
        lock = _write_lock(out, holder.pid)
        before = lock.read_bytes()
        r = _cli(*TINY_SEARCH, "--out", out)
        _refused(r, 1, "in use", f"pid {holder.pid}")
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # no state.json, nothing else
        assert lock.read_bytes() == before  # and the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_lock_from_another_host_is_refused_and_explained(tmp_path):
    _write_lock(tmp_path, 1, host="some-other-host")
    with pytest.raises(RunLockedError, match="some-other-host.*delete"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).unlink()
    with RunLock(tmp_path) as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    r = _cli(
        "--debug",
        "train",
        "--data",
        "cifar10",
        "--data-dir",
        tmp_path / "nope",
        "--out",
        tmp_path / "t",
    )
    assert r.returncode != 0 and "Traceback" in r.stderr


# --------------------------------------------------------------------------------------------
# saved search state (API: no training needed)


@pytest.fixture(scope="module")
def data8():
    return digits(size=8, seed=0)


def _tiny_model():
    torch.manual_seed(0)
    return resnet18_cifar(num_classes=10, width=0.125)


def _fast_config(**kw):
    base = dict(
        spec={"ratio": 0.25},
        max_drop=2.0,
        baseline_epochs=0,
        batch_size=64,
        lr=0.05,
        probe_steps=0,
        time_batch=4,
        time_steps=1,
        final=False,
        probe_groups=False,
        ladder=False,
        seed=0,
    )
    base.update(kw)
    return S.SearchConfig(**base)


def _search(data8, out, cfg, **kw):
    train_data, val_data = data8
    return S.sensitivity_search(
        _tiny_model(),
        train_data,
        val_data,
        config=cfg,
        out=out,
        progress=False,
        log=lambda *a: None,
        **kw,
    )


@pytest.mark.slow
def test_search_state_is_validated_and_config_changes_are_named(data8, tmp_path, one_thread):
    _search(data8, tmp_path, _fast_config())
    state = tmp_path / "state.json"
    # an explicit device equal to what the default resolves to is the same configuration
    _search(data8, tmp_path, _fast_config(device=S._default_device()))
    # a real change names its field(s)
    with pytest.raises(S.SearchStateError, match=r"differs in max_drop \(state 2.0, now 0.1\)"):
        _search(data8, tmp_path, _fast_config(max_drop=0.1))
    # malformed but valid JSON: a schema error, not a KeyError/TypeError deep inside
    doc = json.loads(state.read_text())
    good = json.dumps(doc)
    doc["stages"]["baseline"]["val_acc"] = "high"
    state.write_text(json.dumps(doc))
    with pytest.raises(
        S.SearchStateError, match=r"state\.json' is corrupt: stages\.baseline\.val_acc is a string"
    ):
        _search(data8, tmp_path, _fast_config())
    doc = json.loads(good)
    doc["stages"] = []
    state.write_text(json.dumps(doc))
    with pytest.raises(S.SearchStateError, match="stages is a list, not an object"):
        _search(data8, tmp_path, _fast_config())
    state.write_bytes(b"\xff\xfe binary")
    with pytest.raises(S.SearchStateError, match="corrupt"):
        _search(data8, tmp_path, _fast_config())
    # a corrupt baseline.pt is named, never silently used
    state.write_text(good)
    _flip_tensor_bytes(tmp_path / "baseline.pt")
    with pytest.raises(CheckpointError, match=r"baseline\.pt.*checksum"):
        _search(data8, tmp_path, _fast_config())


def test_refused_search_config_writes_nothing(data8, tmp_path):
    for bad in (
        {"max_drop": float("nan")},
        {"max_drop": float("inf")},
        {"batch_size": 0},
        {"lr": -1.0},
        {"probe_lr": 0.0},
        {"time_steps": 0},
        {"schedule": "nope"},
    ):
        with pytest.raises(ValueError):
            _search(data8, tmp_path / "s", _fast_config(**bad))
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_over_budget_plan_warns_loudly(data8, tmp_path, monkeypatch, capsys, one_thread):
    """Every layer alone costs nothing, together they cost 50 pp; with one back-off allowed
    the search must end over budget and say so on stderr and in summary.md."""

    def fake_probe(dense, fqns, *a, **k):
        d = 0.0 if len(fqns) == 1 else 50.0
        return {
            "zero_shot_acc": 0.5,
            "zero_shot_drop": d,
            "zero_shot_loss_delta": 0.0,
            "probe_acc": 0.5,
            "probe_drop": d,
            "probe_loss_delta": 0.0,
        }

    monkeypatch.setattr(S, "_probe", fake_probe)
    rep = _search(data8, tmp_path, _fast_config(max_drop=0.5, max_backoff=1))
    assert not rep.selection["within_budget"]
    assert rep.selection["verified_drop"] == 50.0 and rep.selection["backoffs"] == 1
    assert "OVER BUDGET" in capsys.readouterr().err
    assert "OVER BUDGET" in (tmp_path / "summary.md").read_text()
    # the resumed report still warns (the warning is not a one-off of the first run)
    _search(data8, tmp_path, _fast_config(max_drop=0.5, max_backoff=1))
    assert "OVER BUDGET" in capsys.readouterr().err


def test_truncated_training_checkpoint_is_a_clear_error(data8, tmp_path):
    train_data, _ = data8
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=0, max_steps=1)
    train(m, train_data, None, cfg, checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / "last.pt"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="last.pt.*corrupt or truncated"):
        train(m, train_data, None, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert path.read_bytes() == raw[: len(raw) // 2]


def test_tune_cache_of_any_content_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path))
    x = torch.randn(2, 8, 8, 8)
    layer = tb.BasisConv2d(8, 8, 3, basis_channels=2, padding=1, mode="auto")
    g = check_inputs(x, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True)
    junk = [
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'{"format": "tritonbasis.tune_cache/1", "entries": 3}',
        json.dumps(
            {
                "format": tune_cache.FORMAT,
                "entries": {"a": {"ident": [[{"x": 1}]], "config": {"blocks": {}}}},
            }
        ).encode(),
    ]
    for content in junk:
        (tmp_path / tune_cache.TIMINGS_FILE).write_bytes(content)
        # an older version's autotune-config file: not read, whatever it holds
        (tmp_path / "autotune-configs.json").write_bytes(content)
        tune_cache.clear_memory()
        try:
            with pytest.warns(RuntimeWarning, match=str(tmp_path)):
                assert tune_cache.lookup_mode(g, "cpu") is None
                layer(x)  # mode="auto" still runs
        finally:
            tune_cache.clear_memory()


# --------------------------------------------------------------------------------------------
# out_perm, export, +Inf


def test_out_perm_is_validated_on_load_and_gradients_use_the_same_mapping():
    torch.manual_seed(0)
    src = tb.BasisConv2d(3, 6, 3, basis_channels=2, padding=1, keep_basis=True).double()
    src.set_out_perm(torch.tensor([3, 0, 5, 1, 4, 2]))
    sd = src.state_dict()
    for bad, why in (
        (torch.tensor([0, 0, 1, 2, 3, 4]), "not a permutation"),
        (torch.tensor([0, 1, 2, 3, 4, 99]), "not a permutation"),
        (torch.tensor([0.0, 1, 2, 3, 4, 5]), "dtype"),
        (torch.tensor([0, 1, 2]), "shape"),
    ):
        dst = tb.BasisConv2d(3, 6, 3, basis_channels=2, padding=1, keep_basis=True).double()
        with pytest.raises(RuntimeError, match=f"out_perm .*{why}"):
            dst.load_state_dict({**sd, "out_perm": bad})
        assert dst.out_perm is None  # nothing adopted
    dst = tb.BasisConv2d(3, 6, 3, basis_channels=2, padding=1, keep_basis=True).double()
    dst.load_state_dict(sd)
    assert torch.equal(dst.out_perm, src.out_perm)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    for mode in ("fused", "weight"):
        dst.mode = mode
        assert torch.autograd.gradcheck(
            lambda x, b, c, bias, mode=mode: tb.basis_conv2d(
                x, b, c, bias, 1, 1, 1, True, mode=mode, perm=dst.out_perm
            ),
            (x, dst.basis, dst.coeff, dst.bias),
        )
    # the permuted layer is its merged dense conv
    torch.testing.assert_close(dst(x), F.conv2d(x, dst.merged_weight(), dst.bias, padding=1))


def test_export_with_dynamic_batch(one_thread):
    torch.manual_seed(0)
    m = nn.Sequential(
        tb.BasisConv2d(8, 16, 3, basis_channels=4, padding=1, mode="auto"),
        nn.ReLU(),
        tb.BasisConv2d(16, 16, 3, basis_channels=14, padding=1, mode="auto"),
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(m, (torch.randn(4, 8, 16, 16),), dynamic_shapes={"input": {0: batch}})
    for n in (1, 7):
        x = torch.randn(n, 8, 16, 16)
        torch.testing.assert_close(ep.module()(x), m(x))


def test_inf_inputs_fused_is_non_finite_where_the_dense_conv_is():
    """Documented behaviour (README, "Non-finite inputs"): weight mode is F.conv2d of the
    merged weight, Inf for Inf. Fused mode computes Z = conv(X, B) first; an Inf in Z times
    coefficients of both signs is Inf - Inf = NaN, so fused gives NaN at some positions where
    the dense conv gives +-Inf -- but it is non-finite at exactly the same positions."""
    torch.manual_seed(0)
    layer = tb.BasisConv2d(4, 8, 3, basis_channels=2, padding=1, keep_basis=True)
    x = torch.randn(2, 4, 6, 6)
    x[0, 0, 2, 2] = float("inf")
    x[1, :, 3, 1] = float("inf")
    with torch.no_grad():
        dense = F.conv2d(x, layer.merged_weight(), layer.bias, padding=1)
        layer.mode = "weight"
        weight = layer(x)
        layer.mode = "fused"
        fused = layer(x)
    assert dense.isinf().any() and not dense.isfinite().all()
    assert torch.equal(weight.isinf(), dense.isinf()) and torch.equal(weight.isnan(), dense.isnan())
    assert torch.equal(fused.isfinite(), dense.isfinite())
    fin = dense.isfinite()
    torch.testing.assert_close(fused[fin], dense[fin])
