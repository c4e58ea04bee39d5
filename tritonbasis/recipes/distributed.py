"""torch.distributed for tritonbasis: a torchrun-launched search and DDP training.

``torchrun --nproc-per-node N -m tritonbasis search|train ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address in their environment;
:func:`init` reads them (``init_method="env://"``), picks NCCL when the run uses CUDA (each rank
on GPU ``LOCAL_RANK``) and gloo on CPU. Nothing here is a process pool of our own: every
collective is torch.distributed's.

**Search** (:func:`run_probes`): the per-layer probes are independent, so they are dealt out in
rounds of ``world_size`` (probe ``i`` of a round on rank ``i``); after each round the results
are all-gathered, and rank 0 -- the only rank that writes anything -- records them in
``state.json`` (its own result before the gather, so a rank killed mid-round costs only the
probes that were still running). A resumed run, with any number of ranks, probes only what the
state lacks. Every probe is seeded by the search seed inside :func:`tritonbasis.recipes.train.train`
(not by rank or order) and evaluates the whole validation set, so on CPU a probe's numbers are
bitwise those of the single-process search. Stages that are one sequential chain (baseline
evaluation, group probes, timings, the verified selection with its back-offs, the final
measurements) run on every rank -- the others would only wait -- and rank 0's result is
broadcast, so every rank continues from the same values even where GPU atomics make ranks differ.

**Training** (:class:`DDPTraining`, ``train(..., distributed=True)``): DistributedDataParallel,
``config.batch_size`` is the *global* batch (each rank takes ``batch_size / world_size``). The
loader of a rank slices each global batch of the single-process loader (same seeded
permutation, same generator state in the checkpoint) instead of using DistributedSampler,
which reshuffles with its own seed and pads with duplicate samples: so step ``k`` sees exactly
the samples it sees in one process, and gradients (mean over the global batch after DDP's
all-reduce) are the single-process ones up to float summation order. What is *not* the same:
BatchNorm normalises with per-rank batch statistics (``batch_size / world_size`` samples) --
standard DDP; on CPU SyncBatchNorm does not exist -- and its running statistics are rank 0's
(synchronised at every epoch end). So a BN-free model trains to the single-process weights within
float tolerance (tested), a model with BN trains a (normal) different run. Random augmentation
draws are decorrelated across ranks by reseeding each rank per epoch from (seed, epoch, rank).
Rank 0 alone writes checkpoints; on resume it reads ``last.pt`` and broadcasts it (no shared
file system needed between nodes).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .evaluation import evaluate

__all__ = [
    "DDPTraining",
    "all_gather_object",
    "broadcast_module",
    "broadcast_object",
    "check_global_batch",
    "init",
    "is_distributed",
    "is_main",
    "launched",
    "load_on_main",
    "main_state",
    "on_main",
    "rank",
    "run_command",
    "run_probes",
    "shutdown",
    "world_size",
]

# Collective timeout. A rank waits in a collective while another finishes a longer probe of
# the same round or rank 0 writes a checkpoint; NCCL's default watchdog (10 min) would kill a
# job whose probes differ by that much on a large model.
TIMEOUT_ENV = "TRITONBASIS_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 60
# Test hook: "RANK:N" makes that rank exit (os._exit(EXIT_CODE)) when about to start its
# (N+1)-th probe of this run, as a killed rank would -- tests/recipes/test_distributed.py uses it.
TEST_EXIT_ENV = "TRITONBASIS_TEST_EXIT_RANK_AFTER_PROBES"
EXIT_CODE = 17


# --------------------------------------------------------------------------------------------
# process group


def launched() -> bool:
    """True in a process started by torchrun (or any env:// launcher) with WORLD_SIZE > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str | None = None) -> bool:
    """Under torchrun with WORLD_SIZE > 1 and no default process group yet: create it from the
    environment -- NCCL if ``device`` (``None``: CUDA when available) is CUDA, with this process
    on GPU ``LOCAL_RANK``; gloo otherwise. Returns True when this call created the group."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(
                f"under torchrun each rank uses GPU LOCAL_RANK; pass --device cuda "
                f"(without an index), not {device!r}"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local} but this node has "
                f"{torch.cuda.device_count()} GPUs: start at most that many "
                f"processes per node (--nproc-per-node)"
            )
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU everywhere
        backend = "nccl"
    else:
        backend = "gloo"
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_command(fn: Callable[[Any], int], args) -> int:
    """Run a CLI subcommand; under torchrun as one rank of the job: the process group is set up
    around it, and ranks other than 0 print nothing to stdout and show no progress bars (their
    errors still reach stderr)."""
    if not launched():
        return fn(args)
    created = init(getattr(args, "device", None))
    try:
        if is_main():
            rc = fn(args)
        else:
            if hasattr(args, "quiet"):
                args.quiet = True
            with contextlib.redirect_stdout(io.StringIO()):
                rc = fn(args)
        if created:
            dist.barrier()  # rank 0 may still be measuring/writing: leave together
        return rc
    finally:
        if created:
            shutdown()


# --------------------------------------------------------------------------------------------
# collectives on Python objects and modules (no-ops in one process)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; a copy on the others)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only; its result -- or the exception it raised -- reaches every rank
    (so an error found by rank 0, e.g. a state written under another configuration, stops every
    rank with the same message instead of leaving them waiting in the next collective)."""
    if not is_distributed():
        return fn()
    msg = None
    if is_main():
        try:
            msg = ("ok", fn())
        except Exception as e:
            msg = ("error", _picklable(e))
            dist.broadcast_object_list([msg], src=0)
            raise
    msg = broadcast_object(msg)
    if msg[0] == "error":
        raise msg[1]
    return msg[1]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, *, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers (or only the buffers: BatchNorm running
    statistics) into ``module`` on every rank, in place."""
    if not is_distributed():
        return
    nccl = dist.get_backend() == "nccl"
    tensors = (
        list(module.buffers()) if buffers_only else list(module.state_dict(keep_vars=True).values())
    )
    for t in tensors:
        t = t.data if isinstance(t, nn.Parameter) else t
        dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        direct = t.device == dev and t.is_contiguous()
        tmp = t if direct else t.to(dev).contiguous()
        dist.broadcast(tmp, src)
        if not direct:
            t.copy_(tmp)


def load_on_main(module: nn.Module, load: Callable[[], dict]) -> None:
    """``module.load_state_dict(load())`` on rank 0 (the only rank that may read our files: the
    others need not share its file system), then broadcast to every rank."""

    def load_here() -> None:
        module.load_state_dict(load())

    on_main(load_here)
    broadcast_module(module)


# --------------------------------------------------------------------------------------------
# search


def check_global_batch(batch_size: int, train_size: int) -> None:
    """Under DDP, before anything is written: ``batch_size`` (the global batch) must split
    evenly over the ranks and the training set must hold one global batch -- found at the
    baseline's first step instead, the error would leave a state.json behind that refuses the
    corrected rerun as another configuration."""
    if is_distributed():
        DDPTraining(batch_size, train_size, torch.device("cpu"))


class _StateReplica:
    """A rank's (not rank 0's) copy of the search state: rank 0's document, read and updated in
    memory, never written."""

    def __init__(self, doc: dict, path, out):
        self.doc, self.path, self.out = doc, path, out

    def get(self, key, default=None):
        return self.doc["stages"].get(key, default)

    def put(self, key, value) -> None:
        self.doc["stages"][key] = value

    def save(self) -> None:
        pass


def main_state(make: Callable[[], Any]):
    """The search state: ``make()`` (which reads, checks or creates ``state.json``) on rank 0;
    a replica of its document on the other ranks. An error in ``make()`` stops every rank."""
    if not is_distributed():
        return make()
    holder = {}

    def build():
        holder["state"] = make()
        s = holder["state"]
        return s.doc, s.path, s.out

    doc, path, out = on_main(build)
    return holder["state"] if is_main() else _StateReplica(doc, path, out)


def _test_exit(done_here: int) -> None:
    spec = os.environ.get(TEST_EXIT_ENV)
    if not spec:
        return
    r, n = (int(v) for v in spec.split(":"))
    if r == rank() and done_here >= n:
        print(
            f"[rank {rank()}] {TEST_EXIT_ENV}: exiting after {done_here} probes",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CODE)


def run_probes(
    todo: list[str],
    probe: Callable[[str], dict],
    state,
    *,
    key: str = "probes",
    bar: Callable = lambda it, **kw: it,
) -> dict[str, dict]:
    """Run ``probe(fqn)`` for every ``fqn`` in ``todo``, spread over the ranks in rounds of
    ``world_size``; each result gets ``"rank"`` (who ran it). Results are merged into
    ``state.get(key)`` and saved as they arrive (rank 0's own at once, the others' after each
    round's all-gather); ``state``'s ``"probe_runs"`` list records, per run, the world size and
    the probes that run computed (so a resume that redoes nothing can be checked). Returns the
    merged dict, identical on every rank."""
    probes = state.get(key, {})
    if not todo:
        return probes
    ws, me = world_size(), rank()
    runs = state.get("probe_runs", [])
    runs.append({"world_size": ws, "probes": []})

    def record(names: Iterable[str]) -> None:
        runs[-1]["probes"].extend(names)
        state.put("probe_runs", runs)
        state.put(key, probes)

    rounds = [todo[i : i + ws] for i in range(0, len(todo), ws)]
    done_here = 0
    shown = (
        bar(rounds, desc="probes", unit=f"round of {ws}" if ws > 1 else "layer")
        if me == 0
        else rounds
    )
    for chunk in shown:
        mine = chunk[me] if me < len(chunk) else None
        result = None
        if mine is not None:
            _test_exit(done_here)
            result = {**probe(mine), "rank": me}
            done_here += 1
            if me == 0:
                probes[mine] = result
                record([mine])
        if ws > 1:
            gathered = all_gather_object(result)
            for r, res in enumerate(gathered):
                if res is not None:
                    probes[chunk[r]] = res
            # rank 0 recorded its own result already; the other ranks only keep a replica
            record(
                [
                    chunk[r]
                    for r, res in enumerate(gathered)
                    if res is not None and not (me == 0 and r == 0)
                ]
            )
    return probes


# --------------------------------------------------------------------------------------------
# DDP training


class _RankBatches:
    """Batch sampler: rank ``r``'s slice ``batch[r * b:(r + 1) * b]`` of every global batch of
    ``inner`` (the single-process batch sampler), ``b = len(batch) / world_size``."""

    def __init__(self, inner, rank_: int, ws: int):
        self.inner, self.rank, self.ws = inner, rank_, ws

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            if len(batch) % self.ws:
                raise ValueError(
                    f"a global batch of {len(batch)} samples does not split over {self.ws} ranks"
                )
            b = len(batch) // self.ws
            yield batch[self.rank * b : (self.rank + 1) * b]


def _worker_init(rank_: int):
    def init_fn(worker_id: int) -> None:
        # DataLoader seeds worker w with base_seed + w, and base_seed comes from the loader's
        # generator -- the same on every rank (shared on purpose): offset by rank so the
        # ranks' augmentations differ
        s = (torch.initial_seed() + 1_000_003 * rank_) % 2**63
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        import random

        random.seed(s)

    return init_fn


class DDPTraining:
    """What :func:`tritonbasis.recipes.train.train` does differently under DDP (see the module
    docstring): loader, wrapper, per-epoch seeding, metric sums, evaluation, checkpoint
    reading and writing."""

    def __init__(self, batch_size: int, train_size: int, device: torch.device):
        if not is_distributed():
            raise RuntimeError(
                "DDP training needs an initialised process group with more than "
                "one rank (launch with torchrun)"
            )
        self.ws, self.rank, self.device = world_size(), rank(), torch.device(device)
        if batch_size % self.ws:
            raise ValueError(
                f"batch_size {batch_size} is the global batch and must split evenly "
                f"over {self.ws} ranks"
            )
        if train_size < batch_size:
            raise ValueError(
                f"DDP needs at least one full global batch ({batch_size} samples), "
                f"the training set has {train_size}"
            )
        self.is_main = self.rank == 0

    def loader(self, loader):
        """The single-process train loader (``make_loaders``) re-made to yield this rank's slice
        of each global batch; the shuffling generator is the same object (checkpointed)."""
        from torch.utils.data import DataLoader

        return DataLoader(
            loader.dataset,
            batch_sampler=_RankBatches(loader.batch_sampler, self.rank, self.ws),
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            generator=loader.generator,
            persistent_workers=loader.persistent_workers,
            worker_init_fn=_worker_init(self.rank) if loader.num_workers else None,
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = (
            [self.device.index if self.device.index is not None else torch.cuda.current_device()]
            if self.device.type == "cuda"
            else None
        )
        return DDP(model, device_ids=ids)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Reseed this rank's global RNGs from (seed, epoch, rank): augmentation draws differ
        across ranks, and a resume (always at an epoch start) continues exactly."""
        import random

        s = int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    def sum(self, *values):
        """All-reduced sums, returned as given: tensors (on their device) or Python numbers."""
        coll = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        out = []
        for v in values:
            if isinstance(v, torch.Tensor):
                t = v.detach().to(coll, copy=True)
            else:
                t = torch.tensor(
                    v, dtype=torch.float64 if isinstance(v, float) else torch.int64, device=coll
                )
            dist.all_reduce(t)
            out.append(t.to(v.device) if isinstance(v, torch.Tensor) else t.item())
        return out

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics everywhere (each rank updated its own copy
        with its own slice of the last batch)."""
        broadcast_module(model, buffers_only=True)

    def evaluate(self, model: nn.Module, val_data, batch_size: int, *, amp: bool = False):
        """(loss, accuracy) over the whole validation set, each rank evaluating every
        ``world_size``-th sample (a DataLoader given instead of a Dataset is evaluated whole
        on every rank)."""
        from torch.utils.data import DataLoader, Subset

        self.sync_buffers(model)
        if isinstance(val_data, DataLoader):
            return evaluate(model, val_data, self.device, batch_size, amp=amp)
        shard = Subset(val_data, range(self.rank, len(val_data), self.ws))
        loss_sum, correct, n = 0.0, 0, len(shard)
        if n:
            loss, acc = evaluate(model, shard, self.device, batch_size, amp=amp)
            loss_sum, correct = loss * n, round(acc * n)
        loss_sum, correct, n = self.sum(float(loss_sum), int(correct), int(n))
        if n == 0:
            raise ValueError("evaluate() got an empty dataset")
        return loss_sum / n, correct / n

    def read_checkpoint(self, read: Callable[[], Any]) -> Any:
        """``read()`` on rank 0 (None when there is nothing to resume), broadcast."""
        return on_main(read)
