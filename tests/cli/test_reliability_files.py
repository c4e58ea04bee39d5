"""Every file the package reads may be anything, and writes may fail: a FIFO, a device or a
directory where a file belongs, a huge file, deep nesting, wrong types, NaN/Infinity,
non-UTF-8, a layer that does not exist, a full disk, an impossible lock, an --out that is a
dangling link. Each is one line naming the file (and the field), exit 1 (2 at parse time),
no hang, nothing written; the last good state stays loadable.

Hang guards: a read that blocks (a FIFO opened for reading waits for a writer) is cut by
SIGALRM after a few seconds and fails the test instead of stalling the suite."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tritonbasis.cli import main
from tritonbasis.cli.guard import LOCK_NAME, RunLock, RunLockedError, check_writable
from tritonbasis.op import tune_cache
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.models import resnet18_cifar
from tritonbasis.recipes.search import final, probes
from tritonbasis.recipes.train import TrainConfig, train
from tritonbasis.util import fileio
from tritonbasis.util.fileio import CheckpointError, load_checkpoint

TINY = ["--width", "0.125", "--image-size", "8", "--quiet"]
TRAIN = [
    "train",
    *TINY,
    "--epochs",
    "2",
    "--batch-size",
    "256",
    "--max-steps",
    "6",
    "--ratio",
    "0.25",
    "--time-steps",
    "1",
    "--seed",
    "3",
]
SEARCH = [
    "search",
    *TINY,
    "--no-ladder",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--probe-steps",
    "0",
    "--verify-steps",
    "0",
    "--no-probe-groups",
    "--final-epochs",
    "0",
    "--final-seeds",
    "1",
    "--time-rounds",
    "1",
    "--time-steps",
    "1",
    "--time-batch",
    "4",
]


class Hung(BaseException):
    """Raised by :func:`no_hang`: a BaseException, so that no ``except OSError`` (a
    TimeoutError is one) or ``except Exception`` in the code under test swallows it."""


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail (:class:`Hung`) instead of blocking forever."""

    def alarm(*_):
        raise Hung(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys, *args) -> tuple[int, list[str]]:
    """``tritonbasis ARGS`` in this process: exit code and the stderr lines (warnings from
    the tuning cache aside)."""
    capsys.readouterr()
    with no_hang(60):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: exit 2 after its one line
            rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def one_line(capsys, code: int, *args, names=()) -> str:
    rc, lines = cli(capsys, *args)
    assert rc == code, (rc, lines)
    assert len(lines) == 1, lines
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a regular file by content, anything else by kind."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            out[str(p)] = "special"
        elif p.stat().st_size > 1 << 26:  # the sparse "huge" files: not read into memory
            out[str(p)] = f"{p.stat().st_size} bytes, mtime {p.stat().st_mtime_ns}"
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make(path: Path, kind: str) -> Path:
    """Put a hostile ``kind`` of thing at ``path`` (replacing what is there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "huge":  # sparse: 3 GiB of zeros that take no disk
        with open(path, "wb") as f:
            f.truncate(3 << 30)
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "deep-but-parses":  # within json's own recursion limit, beyond ours
        path.write_text('{"a": ' * 200 + "1" + "}" * 200)
    elif kind == "nan":
        path.write_text('{"format": 1, "x": NaN}')
    elif kind == "infinity":
        path.write_text('{"format": 1, "x": -Infinity}')
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81 not utf-8 \xc3\x28")
    else:
        raise ValueError(kind)
    return path


FILE_KINDS = [
    "fifo",
    "directory",
    "device",
    "huge",
    "deep",
    "deep-but-parses",
    "nan",
    "infinity",
    "binary",
]


# --------------------------------------------------------------------------------------------
# the search state: one schema, every field


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A finished tiny search (with the final stage) made by the CLI, timings injected."""
    out = tmp_path_factory.mktemp("search") / "run"
    fake_times = {"train_step_ms": 1.0, "infer_ms": 0.5, "device_name": "cpu"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probes, "time_fwd_bwd", lambda m, x, s: 1.0)
        mp.setattr(probes, "time_infer", lambda m, x, s: 1.0)
        mp.setattr(final, "measure_step_time", lambda *a, **k: dict(fake_times))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main([*SEARCH, "--out", str(out)]) == 0
        finally:
            torch.set_num_threads(n)
    return out


def _first(d: dict) -> str:
    return next(iter(d))


STATE_EDITS = {
    "final_runs accuracy a string": (
        lambda st: st["final_runs"]["0"]["chosen"].update(val_acc="high"),
        "stages.final_runs['0'].chosen.val_acc",
    ),
    "final_timing rounds of strings": (
        lambda st: st["final_timing"]["dense"].update(train_step_ms=["x"]),
        "stages.final_timing.dense.train_step_ms[0]",
    ),
    "final params negative": (
        lambda st: st["final"]["naive"].update(params=-5),
        "stages.final.naive.params",
    ),
    "final_runs seed not a number": (
        lambda st: st["final_runs"].update(zero=st["final_runs"].pop("0")),
        "stages.final_runs key is 'zero'",
    ),
    "chosen layer that does not exist": (
        lambda st: st["selection"].update(chosen=["layer9.0.conv9"]),
        "stages.selection.chosen[0] is 'layer9.0.conv9'",
    ),
    "probe of a layer that does not exist": (
        lambda st: st["probes"].update({"fc": st["probes"][_first(st["probes"])]}),
        "stages.probes key is 'fc'",
    ),
    "gain mode not a mode": (
        lambda st: st["gains"][_first(st["gains"])].update(mode="turbo"),
        ".mode",
    ),
    "accuracy above 1": (
        lambda st: st["probes"][_first(st["probes"])].update(probe_acc=7.5),
        ".probe_acc",
    ),
    "backoffs a float": (
        lambda st: st["selection"].update(backoffs=1.5),
        "stages.selection.backoffs",
    ),
    "unknown stage": (lambda st: st.update(finale={}), "stages.finale"),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS), ids=list(STATE_EDITS))
def test_state_edited_by_hand_is_refused_naming_file_and_field(edit, search_run, tmp_path, capsys):
    change, field = STATE_EDITS[edit]
    out = tmp_path / "run"
    shutil.copytree(search_run, out)
    doc = json.loads((out / "state.json").read_text())
    change(doc["stages"])
    (out / "state.json").write_text(json.dumps(doc))
    before = digest(out)
    line = one_line(capsys, 1, *SEARCH, "--out", out, names=("state.json", field))
    assert "corrupt" in line
    assert digest(out) == before  # nothing written: no report claiming what the plan lacks


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_state_file_of_any_kind_is_one_line(kind, search_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(search_run, out)
    make(out / "state.json", kind)
    before = digest(out)
    one_line(capsys, 1, *SEARCH, "--out", out, names=("state.json",))
    assert digest(out) == before


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "other-weights"])
def test_baseline_weights_of_any_kind_are_one_line(kind, search_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(search_run, out)
    if kind == "other-weights":  # a valid torch file that is not this model's state_dict
        torch.save({"w": torch.zeros(2)}, out / "baseline.pt")
    else:
        make(out / "baseline.pt", kind)
    before = digest(out)
    one_line(capsys, 1, *SEARCH, "--out", out, names=("baseline.pt",))
    assert digest(out) == before


def test_a_valid_state_still_resumes(search_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(search_run, out)
    rc, _ = cli(capsys, *SEARCH, "--out", out, "--no-final")  # another config: refused...
    assert rc == 1
    with pytest.MonkeyPatch.context() as mp:  # ...the same one resumes, every stage done
        mp.setattr(final, "measure_step_time", lambda *a, **k: pytest.fail("re-timed"))
        rc, lines = cli(capsys, *SEARCH, "--out", out)
    assert rc == 0, lines


# --------------------------------------------------------------------------------------------
# checkpoints, plans, the tuning cache, the lock


@pytest.fixture(scope="module")
def data8():
    return digits(size=8, seed=0)


def _tiny_train(data8, out: Path, resume: bool, epochs: int = 1):
    torch.manual_seed(0)
    m = resnet18_cifar(num_classes=10, width=0.125)
    cfg = TrainConfig(epochs=epochs, batch_size=256, lr=0.05, seed=0, max_steps=epochs)
    return train(m, data8[0], None, cfg, checkpoint_dir=out, resume=resume, progress=False)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "dangling"])
def test_resume_from_a_checkpoint_of_any_kind_is_refused_not_restarted(kind, data8, tmp_path):
    """A FIFO where last.pt belongs must not read as "no checkpoint" (the run would silently
    start over and replace the FIFO)."""
    path = tmp_path / "last.pt"
    if kind == "dangling":
        path.symlink_to(tmp_path / "moved-away.pt")
    else:
        make(path, kind)
    with no_hang(), pytest.raises((CheckpointError, FileNotFoundError), match="last.pt"):
        _tiny_train(data8, tmp_path, resume=True)
    assert path.is_symlink() or not path.is_file()  # left as it was


def test_hand_made_checkpoint_with_wrong_types_names_the_field(data8, tmp_path):
    _tiny_train(data8, tmp_path, resume=False)
    ck = load_checkpoint(tmp_path / "last.pt")
    ck["epoch"], ck["rng"]["numpy"]["pos"] = "one", None
    fileio.save_checkpoint(ck, tmp_path / "last.pt")  # a valid checksum over wrong content
    with pytest.raises(CheckpointError, match=r"last\.pt.*epoch is a string"):
        _tiny_train(data8, tmp_path, resume=True)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_plan_file_of_any_kind_is_one_line(kind, tmp_path, capsys):
    plan = make(tmp_path / "plan.json", kind)
    rc, lines = cli(capsys, "convert", "--width", "0.125", "--plan", plan)
    assert rc in (1, 2) and len(lines) == 1 and "plan.json" in lines[0], (rc, lines)


@pytest.mark.parametrize("kind", [*FILE_KINDS, "nan-in-entry"])
def test_tuning_cache_of_any_kind_is_ignored_with_a_warning(kind, tmp_path, monkeypatch):
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path))
    path = tmp_path / tune_cache.TIMINGS_FILE
    if kind == "nan-in-entry":
        entry = '{"device": "cpu (x86_64)", "mode": "fused", "fused_ms": NaN}'
        path.write_text(
            f'{{"format": "{tune_cache.FORMAT}", "kind": "mode-timings", '
            f'"entries": {{"k": {entry}}}}}'
        )
    else:
        make(path, kind)
    layer_g = _geometry()
    tune_cache.clear_memory()
    try:
        with no_hang(), pytest.warns(RuntimeWarning, match=str(path)):
            assert tune_cache.lookup_mode(layer_g, "cpu") is None
    finally:
        tune_cache.clear_memory()


def _geometry():
    import tritonbasis as tb
    from tritonbasis.op.geometry import check_inputs

    x = torch.randn(2, 8, 8, 8)
    layer = tb.BasisConv2d(8, 8, 3, basis_channels=2, padding=1)
    return check_inputs(x, layer.basis, layer.coeff, layer.bias, 1, 1, 1, True)


def test_fifo_tuning_cache_does_not_block_a_command(tmp_path, capsys, monkeypatch):
    """The issue's case: a FIFO where the tuning cache file should be blocked `train`
    forever (every command that converts a model reads the cache)."""
    monkeypatch.setenv(tune_cache.ENV_DIR, str(tmp_path))
    os.mkfifo(tmp_path / tune_cache.TIMINGS_FILE)
    tune_cache.clear_memory()
    try:
        with pytest.warns(RuntimeWarning, match="FIFO"):
            rc, _ = cli(
                capsys, "convert", "--width", "0.125", "--image-size", "8", "--ratio", "0.25"
            )
    finally:
        tune_cache.clear_memory()
    assert rc == 0


def _lock(folder: Path, pid, host=None, started=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    started = started or time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    (folder / LOCK_NAME).write_text(
        json.dumps(
            {
                "pid": pid,
                "host": socket.gethostname() if host is None else host,
                "command": "search",
                "started": started,
            }
        )
    )
    return folder / LOCK_NAME


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        return 1 << 22


@pytest.mark.parametrize(
    "pid", [0, -1, 2**31, 2**70, "pid_max+1", True, 10**30], ids=lambda p: repr(p)
)
def test_lock_whose_pid_cannot_be_live_is_stale(pid, tmp_path):
    """pid 0 / -1 signal a process group / every process (os.kill says "alive": told to wait
    forever); 2**31 and up overflow os.kill (a traceback)."""
    pid = _pid_max() + 1 if pid == "pid_max+1" else pid
    _lock(tmp_path, pid)
    said = []
    with RunLock(tmp_path, log=said.append) as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and "taking over" in said[0], said


def test_lock_of_a_reused_pid_is_stale_a_live_one_is_not(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # written before that process started (an hour ago): its pid was reused since
        _lock(
            tmp_path,
            other.pid,
            started=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 3600)),
        )
        said = []
        if not Path(f"/proc/{other.pid}/cmdline").exists():
            pytest.skip("no /proc: pid reuse cannot be told apart here")
        with RunLock(tmp_path, log=said.append):
            pass
        assert "pid now belongs to another process" in said[0]
        # written now, after it started: the holder lives, the folder is refused
        _lock(tmp_path, other.pid)
        with pytest.raises(RunLockedError, match=f"in use .*pid {other.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_lock_file_of_another_kind_is_refused_without_blocking(kind, tmp_path):
    make(tmp_path / LOCK_NAME, kind)
    with no_hang(), pytest.raises(RunLockedError, match=LOCK_NAME):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).is_symlink() or not (tmp_path / LOCK_NAME).is_file()


# --------------------------------------------------------------------------------------------
# --out, full disks


def test_out_that_is_a_dangling_symlink_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone")
    line = one_line(capsys, 1, *TRAIN, "--out", out, names=("symlink", "gone", "not exist"))
    assert "File exists" not in line
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(OSError, match="is a file"):
        check_writable(f)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="FIFO"):
        check_writable(tmp_path / "fifo")
    assert not (tmp_path / "gone").exists()


class _FullDisk:
    """Stand-in for a file on a full disk: every write fails with ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _disk_fills_after(monkeypatch, n_writes: int) -> None:
    """The file writes (atomic_open's os.fdopen in "w"/"wb") after the first ``n_writes``
    fail as on a full disk."""
    real, seen = os.fdopen, {"n": 0}

    def fdopen(fd, mode="r", *a, **k):
        f = real(fd, mode, *a, **k)
        if "w" not in mode or sys._getframe(1).f_code.co_name != "atomic_open":
            return f  # reads, and the lock file's own write
        seen["n"] += 1
        return f if seen["n"] <= n_writes else _FullDisk(f)

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


def test_full_disk_is_one_line_with_the_reason_and_the_last_checkpoint_loads(
    tmp_path, capsys, monkeypatch
):
    """torch.save on a full disk raised `RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos` (a traceback naming neither the cause nor the file)."""
    out = tmp_path / "run"
    _disk_fills_after(monkeypatch, 1)  # epoch 1's checkpoint fits, epoch 2's does not
    one_line(
        capsys, 1, *TRAIN, "--out", out, names=("No space left on device", str(out / "last.pt"))
    )
    monkeypatch.undo()
    ck = load_checkpoint(out / "last.pt")  # the previous checkpoint, intact
    assert ck["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]  # no temp file, no lock
    with pytest.raises(OSError, match=r"cannot write .*state\.json.*No space left"):
        _disk_fills_after(monkeypatch, 0)
        fileio.atomic_write_text(tmp_path / "state.json", "{}")


def test_full_tmpfs_is_one_line_and_the_last_checkpoint_loads(tmp_path, capsys):
    """The same on a real file system: a tmpfs with room for one checkpoint, not two (the
    atomic write needs the new file beside the old one)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    out = tmp_path / "run"
    out.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(out)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        line = one_line(
            capsys, 1, *TRAIN, "--out", out, names=("No space left on device", "last.pt")
        )
        assert "inline_container" not in line
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
    finally:
        subprocess.run(["umount", str(out)], check=False)
