"""torchrun-distributed search and DDP training, on CPU: 2 processes, gloo.

* ``torchrun --nproc-per-node 2 -m tritonbasis search`` gives the single-process probe results
  (bitwise, from the same baseline), records world_size and the rank of every probe, and a run
  whose rank 1 dies resumes without redoing a finished probe.
* ``train(..., distributed=True)`` (DDP) on a converted BN-free model follows the single-process
  run on the same global batches within float tolerance (the gradients of the custom op's
  backward are all-reduced), the ranks stay bitwise equal, and an interrupted DDP run resumes to
  the uninterrupted weights; ``tritonbasis train`` under torchrun writes its result on rank 0
  and resumes.

What is compared for the search: per-layer zero-shot/probe accuracy, drop and loss delta, the
group probes, the selection (chosen layers, verifications, back-offs), the plan and the
baseline numbers. Not compared: timings (``*_ms``, seconds) and ``rank``/``world_size``.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import tritonbasis as tb
from tritonbasis.cli import main
from tritonbasis.recipes import distributed as D
from tritonbasis.recipes.data import digits
from tritonbasis.recipes.train import TrainConfig, train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

SEARCH = [
    "search",
    "--width",
    "0.125",
    "--image-size",
    "8",
    "--epochs",
    "1",
    "--probe-steps",
    "2",
    "--max-drop",
    "3",
    "--no-ladder",
    "--quiet",
]
PROBE_KEYS = (
    "zero_shot_acc",
    "zero_shot_drop",
    "zero_shot_loss_delta",
    "probe_acc",
    "probe_drop",
    "probe_loss_delta",
)


def _torchrun(args, cwd, env=None, nproc=2, timeout=300):
    """``torchrun --standalone --nproc-per-node N -m tritonbasis ARGS`` (one thread per rank,
    as torchrun's default and the in-process reference)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "tritonbasis",
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full_env.pop(D.TEST_EXIT_ENV, None)
    full_env.update(env or {})
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )


def _probe_fields(report):
    return {r["fqn"]: {k: r[k] for k in PROBE_KEYS} for r in report["layers"]}


@pytest.fixture(scope="module")
def dist_search(tmp_path_factory):
    """One complete 2-rank search (no final trainings)."""
    out = tmp_path_factory.mktemp("dist") / "search"
    p = _torchrun([*SEARCH, "--no-final", "--out", str(out)], cwd=out.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_rank_search_equals_single_process(dist_search, tmp_path, one_thread):
    rep = json.loads((dist_search / "report.json").read_text())
    state = json.loads((dist_search / "state.json").read_text())["stages"]
    assert rep["world_size"] == 2
    assert {r["rank"] for r in rep["layers"]} == {0, 1}  # both ranks ran probes
    # dealt in rounds of 2: probe i on rank i % 2, each probe once
    assert [r["rank"] for r in rep["layers"]] == [i % 2 for i in range(len(rep["layers"]))]
    assert state["probe_runs"] == [{"world_size": 2, "probes": [r["fqn"] for r in rep["layers"]]}]

    # the single-process search from the same baseline (the DDP-trained one: a BN model's
    # baseline differs between 1 and 2 ranks, see tritonbasis.distributed)
    single = tmp_path / "single"
    single.mkdir()
    doc = json.loads((dist_search / "state.json").read_text())
    doc["stages"] = {k: v for k, v in doc["stages"].items() if k.startswith("baseline")}
    (single / "state.json").write_text(json.dumps(doc))
    shutil.copy(dist_search / "baseline.pt", single / "baseline.pt")
    assert main([*SEARCH, "--no-final", "--out", str(single)]) == 0
    ref = json.loads((single / "report.json").read_text())
    assert ref["world_size"] == 1 and {r["rank"] for r in ref["layers"]} == {0}
    assert _probe_fields(rep) == _probe_fields(ref)
    assert [{k: g[k] for k in (*PROBE_KEYS, "layers")} for g in rep["groups"]] == [
        {k: g[k] for k in (*PROBE_KEYS, "layers")} for g in ref["groups"]
    ]
    for key in ("selection", "plan", "baseline", "spearman_zero_shot_vs_probe"):
        assert rep[key] == ref[key], key


@pytest.mark.slow
def test_killed_rank_resumes_without_redoing_probes(dist_search, tmp_path):
    out = tmp_path / "killed"
    # with the final trainings (DDP), cut to one seed and one fine-tuning epoch
    args = [*SEARCH, "--final-seeds", "1", "--final-epochs", "1", "--out", str(out)]
    p = _torchrun(args, cwd=tmp_path, env={D.TEST_EXIT_ENV: "1:1"})  # rank 1 dies at its 2nd
    assert p.returncode != 0
    assert "exiting after 1 probes" in p.stderr
    saved = json.loads((out / "state.json").read_text())["stages"]
    assert "report.json" not in os.listdir(out)
    # round 1 (both ranks) was gathered and saved; rank 0's probe of round 2 may be too
    assert 2 <= len(saved["probes"]) <= 3
    assert saved["probe_runs"][0]["probes"] == list(saved["probes"])

    p = _torchrun(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())["stages"]
    rep = json.loads((out / "report.json").read_text())
    runs = state["probe_runs"]
    assert [r["world_size"] for r in runs] == [2, 2]
    first, second = runs[0]["probes"], runs[1]["probes"]
    assert not set(first) & set(second)  # nothing redone
    assert sorted(first + second) == sorted(r["fqn"] for r in rep["layers"])
    for f, v in saved["probes"].items():
        assert state["probes"][f] == v
    # and the interrupted 2-rank search ends where the uninterrupted one did
    assert _probe_fields(rep) == _probe_fields(
        json.loads((dist_search / "report.json").read_text())
    )
    assert set(rep["final"]) == {"dense", "chosen", "naive"}
    assert rep["final"]["naive"]["converted"] == len(rep["layers"])


@pytest.mark.slow
def test_batch_that_does_not_split_is_refused_before_any_state(tmp_path):
    out = tmp_path / "odd"
    p = _torchrun([*SEARCH, "--batch-size", "63", "--out", str(out)], cwd=tmp_path)
    assert p.returncode != 0
    assert "must split evenly over 2 ranks" in p.stderr
    # one line from our ranks (torchrun itself then prints its own launcher traceback)
    assert not re.search(r'File ".*tritonbasis/\w+\.py"', p.stderr)
    assert not (out / "state.json").exists()  # the corrected rerun is not blocked


# --------------------------------------------------------------------------------------------
# DDP training


def _converted_model():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    m = tb.convert(m, {"_default": {"ratio": 0.25}})
    assert sum(isinstance(x, tb.BasisConv2d) for x in m.modules()) == 2
    return m


def _data():
    """256 training samples: 4 global batches of 64 per epoch, so 8 steps span 2 epochs."""
    from torch.utils.data import TensorDataset

    train_data, val_data = digits(size=8, seed=0)
    return TensorDataset(train_data.images[:256], train_data.targets[:256]), val_data


def _config(**kw):
    base = dict(epochs=2, batch_size=64, lr=0.05, seed=0, max_steps=8, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _ddp_worker(rank, folder, world):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        train_data, val_data = _data()
        with pytest.raises(ValueError, match="split evenly"):
            D.DDPTraining(63, len(train_data), torch.device("cpu"))
        # uninterrupted
        m = _converted_model()
        res = train(
            m,
            train_data,
            val_data,
            _config(),
            checkpoint_dir=f"{folder}/full",
            distributed=True,
            progress=False,
        )
        torch.save(
            {"state": m.state_dict(), "history": res.history}, f"{folder}/full_rank{rank}.pt"
        )
        # interrupted at the start of epoch 2 on every rank, then resumed
        real = D.DDPTraining.start_epoch

        def dying(self, seed, epoch):
            if epoch == 1:
                raise KeyboardInterrupt("killed")
            return real(self, seed, epoch)

        D.DDPTraining.start_epoch = dying
        try:
            with pytest.raises(KeyboardInterrupt):
                train(
                    _converted_model(),
                    train_data,
                    val_data,
                    _config(),
                    checkpoint_dir=f"{folder}/cut",
                    distributed=True,
                    progress=False,
                )
        finally:
            D.DDPTraining.start_epoch = real
        m = _converted_model()
        res = train(
            m,
            train_data,
            val_data,
            _config(),
            checkpoint_dir=f"{folder}/cut",
            resume=True,
            distributed=True,
            progress=False,
        )
        torch.save(
            {
                "state": m.state_dict(),
                "history": res.history,
                "resumed_from": res.resumed_from_epoch,
            },
            f"{folder}/resumed_rank{rank}.pt",
        )
        del m, res
        _leave_together()
    finally:
        dist.destroy_process_group()


def _leave_together() -> None:
    """Both ranks reach the teardown together, holding no collective's work objects: gloo's
    worker threads still holding one while a peer exits can abort the process at interpreter
    finalization ("terminate called without an active exception", SIGABRT), as the package's
    own run_command does with its barrier."""
    import gc

    gc.collect()
    dist.barrier()


@pytest.mark.slow
def test_ddp_training_matches_single_process_and_resumes(tmp_path, one_thread):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path), 2), nprocs=2, join=True)
    train_data, val_data = _data()
    m = _converted_model()
    ref = train(m, train_data, val_data, _config(), progress=False)
    full = [torch.load(tmp_path / f"full_rank{r}.pt", weights_only=True) for r in (0, 1)]
    resumed = [torch.load(tmp_path / f"resumed_rank{r}.pt", weights_only=True) for r in (0, 1)]
    # DDP keeps the replicas identical
    for k, v in full[0]["state"].items():
        assert torch.equal(v, full[1]["state"][k]), k
    # same global batches, gradients averaged over the ranks: the single-process weights up to
    # float32 summation order -- a few eps relative per step, carried through 8 steps and
    # amplified up to 1/(1 - momentum) = 10x (measured: <= 7.5e-9, this bound: 9.5e-6) -- while
    # the training moved every weight tensor by far more than that (checked, so the
    # comparison is not vacuous)
    ref_state = m.state_dict()
    init = _converted_model().state_dict()
    steps = 8
    for k, v in full[0]["state"].items():
        if not v.is_floating_point():
            continue
        scale = max(1.0, ref_state[k].abs().max().item())
        tol = steps * 10 * torch.finfo(torch.float32).eps * scale
        err = (v - ref_state[k]).abs().max().item()
        assert err <= tol, (k, err, tol)
        assert (ref_state[k] - init[k]).abs().max().item() > 100 * tol, k
    for h, r in zip(full[0]["history"], ref.history, strict=True):
        assert h["train_loss"] == pytest.approx(r["train_loss"], rel=1e-5)
        assert h["train_acc"] == r["train_acc"]
        assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-5)
        assert abs(h["val_acc"] - r["val_acc"]) <= 1 / len(val_data) + 1e-12
    # the checkpoint was written by rank 0 only and resumes to the uninterrupted weights
    assert resumed[0]["resumed_from"] == 1
    for r in (0, 1):
        for k, v in full[0]["state"].items():
            assert torch.equal(v, resumed[r]["state"][k]), (r, k)
    assert sorted(os.listdir(tmp_path / "full")) == ["last.pt"]
    ckpt = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 8


def _fsdp2_worker(rank, folder, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        mesh = init_device_mesh("cpu", (world,))
        m = _converted_model()
        for sub in m:
            if isinstance(sub, tb.BasisConv2d):
                fully_shard(sub, mesh=mesh)  # basis, coeff, bias sharded over the ranks
        fully_shard(m, mesh=mesh)
        x, y = _fsdp2_batch()
        b = len(x) // world
        loss = nn.functional.cross_entropy(
            m(x[rank * b : (rank + 1) * b]), y[rank * b : (rank + 1) * b]
        )
        loss.backward()
        grads = {n: p.grad.full_tensor() for n, p in m.named_parameters()}
        if rank == 0:
            torch.save(grads, f"{folder}/fsdp2_grads.pt")
        del m, loss, grads
        _leave_together()
    finally:
        dist.destroy_process_group()


def _fsdp2_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.slow
def test_fsdp2_gradients_match_single_process(tmp_path, one_thread):
    """FSDP2 (fully_shard) over the converted model on 2 gloo ranks: the reduce-scattered
    gradients of basis/coeff/bias equal the single-process ones on the whole batch."""
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) not in this torch")
    import torch.multiprocessing as mp

    mp.spawn(_fsdp2_worker, args=(str(tmp_path), 2), nprocs=2, join=True)
    grads = torch.load(tmp_path / "fsdp2_grads.pt", weights_only=True)
    m = _converted_model()
    x, y = _fsdp2_batch()
    nn.functional.cross_entropy(m(x), y).backward()
    # float32 reductions over K = batch x pixels = 16 x 64 terms in another order:
    # 8 u sqrt(K) relative (tests/helpers.py's bound), ~1.5e-5
    rel = 8 * 2.0**-24 * (16 * 64) ** 0.5
    for n, p in m.named_parameters():
        assert grads[n].shape == p.grad.shape, n
        err = (grads[n] - p.grad).abs().max().item()
        assert err <= rel * p.grad.abs().max().item() + 1e-12, (n, err)


@pytest.mark.slow
def test_cli_train_under_torchrun_writes_on_rank0_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = [
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
        "--out",
        str(out),
        "--quiet",
        "--time-steps",
        "2",
    ]
    p = _torchrun(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("val accuracy") == 1  # rank 1 prints nothing
    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == 3 and res["config"]["batch_size"] == 64
    assert res["extra"]["world_size"] == 2
    p = _torchrun([*args, "--resume"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res2 = json.loads((out / "result.json").read_text())
    assert res2["resumed_from_epoch"] == 1
    assert res2["final_val_acc"] == res["final_val_acc"]


def test_single_process_is_untouched(monkeypatch):
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    assert not D.launched() and not D.is_distributed()
    assert D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.on_main(lambda: 3) == 3
    with pytest.raises(RuntimeError, match="torchrun"):
        D.DDPTraining(64, 128, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert D.launched()
