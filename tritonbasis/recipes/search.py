"""Layer-sensitivity search with skip-training: which convs can become basis convs without
hurting the final model.

Stages (each saved atomically in ``<out>/state.json``; a killed search resumes without redoing
finished work; a state written under another configuration is refused, naming the differing
fields; ``state.json`` is checked against its schema and ``baseline.pt`` against the digest
recorded in it, so a corrupt file is an error, never trusted):

1. **baseline** -- train the dense model for the full budget (or take the given weights with
   ``baseline_epochs=0``), checkpointed through :func:`tritonbasis.recipes.train.train`.
2. **probes** -- for each candidate conv: start from the baseline weights (skip-training:
   no training from scratch), convert only that conv (SVD init), record the *zero-shot* drop
   (right after conversion), fine-tune briefly (``probe_steps``; optionally only the converted
   conv and the BN layers) and record the *probe* drop in validation accuracy (percentage
   points) and loss. Optionally the same for layer groups ("light" / "heavy" by parameter
   count). Spearman's rho says how well the free zero-shot ranking predicts the probe ranking.
3. **gains** -- parameters and MACs saved per layer, and the measured forward+backward time of
   the dense conv vs the real op at that layer's shape on the current device.
4. **selection** -- add layers by gain per unit of sensitivity while the predicted total drop
   (sum of probe drops) stays within ``max_drop``; verify the chosen subset with one combined
   probe; back off (drop the lowest-scoring layer) while the verified drop breaks the budget.
5. **final** -- train the chosen-subset model and the "convert every layer" (naive) model for
   the full budget from the same initialisation as the baseline; compare accuracy, params,
   MACs, training step time and inference time with the dense baseline.

Outputs in ``<out>``: ``report.json`` (:class:`SearchReport`), ``plan.json`` (for
``tritonbasis convert`` / ``train --plan``), ``summary.md`` and PNG plots.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..conversion.convert import candidate_convs, convert
from ..conversion.plan import save_plan
from ..nn.layer import BasisConv2d
from ..nn.modes import from_timings
from ..nn.spec import BasisSpec
from ..util.fileio import atomic_torch_save, atomic_write_text, content_digest, load_checkpoint
from ..util.probe import module_calls
from . import distributed as D
from .train import TrainConfig, count_macs, count_params, evaluate, measure_step_time, train

STATE_FORMAT = "tritonbasis-search-state/1"


class SearchStateError(RuntimeError):
    """The state folder belongs to another configuration, or is unreadable."""


@dataclass
class SearchConfig:
    """Everything that determines a search's results (hashed into its state)."""

    spec: dict = field(default_factory=lambda: {"ratio": 0.25})
    max_drop: float = 0.5  # percentage points of validation accuracy
    baseline_epochs: int = 10  # 0: the model's weights are the trained baseline
    batch_size: int = 128
    lr: float = 0.05
    schedule: str = "cosine"
    probe_steps: int = 30
    probe_lr: float = 0.01
    probe_only_converted: bool = False  # fine-tune only the converted conv + BN layers
    probe_groups: bool = True
    verify_steps: int | None = None  # combined-probe fine-tuning (default 2 x probe_steps)
    max_backoff: int = 8
    gain: str = "macs"  # what selection maximises per unit of sensitivity: macs|params|time
    final: bool = True  # train chosen and naive models for the full budget
    time_batch: int = 64
    time_steps: int = 5
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        _validate_search_config(self)

    def train_config(self, epochs: int, **kw) -> TrainConfig:
        return TrainConfig(epochs=max(1, epochs), batch_size=self.batch_size, lr=self.lr,
                           schedule=self.schedule, seed=self.seed, device=self.device, **kw)


def _validate_search_config(c: SearchConfig) -> None:
    """Every field checked before anything is written (a NaN budget used to run the whole
    search and die writing the report; a zero batch size left a state that blocked the
    corrected rerun)."""
    BasisSpec.from_dict(c.spec)  # validates
    if c.gain not in ("macs", "params", "time"):
        raise ValueError(f"gain must be macs, params or time, got {c.gain!r}")

    def number(name, lo, lo_open=False):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"SearchConfig.{name} must be a finite number, got {v!r}")
        if v < lo or (lo_open and v == lo):
            raise ValueError(f"SearchConfig.{name} must be {'>' if lo_open else '>='} {lo}, "
                             f"got {v}")

    def integer(name, lo, allow_none=False):
        v = getattr(c, name)
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"SearchConfig.{name} must be an int >= {lo}, got {v!r}")

    number("max_drop", 0)
    number("lr", 0, lo_open=True)
    number("probe_lr", 0, lo_open=True)
    for name in ("baseline_epochs", "probe_steps", "max_backoff", "seed"):
        integer(name, 0)
    for name in ("batch_size", "time_batch", "time_steps"):
        integer(name, 1)
    integer("verify_steps", 0, allow_none=True)
    # the training configs the stages will build, checked now (schedule, device, ...)
    c.train_config(c.baseline_epochs)
    TrainConfig(epochs=1, batch_size=c.batch_size, lr=c.probe_lr, seed=c.seed, device=c.device)


@dataclass
class SearchReport:
    config: dict
    identity: dict
    baseline: dict
    layers: list[dict]
    groups: list[dict]
    spearman_zero_shot_vs_probe: float | None
    selection: dict
    final: dict
    plan: dict
    seconds: float = 0.0
    world_size: int = 1  # ranks of the (last) run; each probe row says which rank ran it

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @property
    def chosen(self) -> list[str]:
        return [r["fqn"] for r in self.layers if r["chosen"]]

    def table(self) -> str:
        lines = [f"{'layer':28s} {'shape':>15s} {'C_b':>4s} {'zero-shot':>9s} {'probe':>7s} "
                 f"{'MACs saved':>11s} {'ms saved':>8s} {'runs':>6s}  chosen",
                 "-" * 103]
        for r in self.layers:
            shape = f"{r['C_in']}->{r['C_out']} {r['kernel'][0]}x{r['kernel'][1]}"
            ts = r.get("time_saved_ms")
            lines.append(
                f"{r['fqn'][:28]:28s} {shape:>15s} {r['C_b']:>4d} {r['zero_shot_drop']:>8.2f}p "
                f"{r['probe_drop']:>6.2f}p {r['macs_saved']:>11,} "
                f"{'' if ts is None else f'{ts:.3f}':>8s} {r.get('mode') or '':>6s}  "
                f"{'yes' if r['chosen'] else ''}")
        lines.append("(drops in percentage points of validation accuracy vs the baseline; "
                     "runs: the mode a converted layer runs, the faster of fused and weight "
                     "in the search's timing)")
        if self.final:
            lines.append("")
            lines.append(f"{'model':8s} {'val acc':>8s} {'params':>11s} {'MACs/img':>12s} "
                         f"{'train step ms':>14s} {'infer ms':>9s}")
            for name in ("dense", "chosen", "naive"):
                f = self.final.get(name)
                if f:
                    lines.append(f"{name:8s} {100 * f['val_acc']:>7.2f}% {f['params']:>11,} "
                                 f"{f['macs']:>12,} {f['train_step_ms']:>14.2f} "
                                 f"{f['infer_ms']:>9.2f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# state


class _State:
    """``state.json``: the config (and its hash) plus every finished stage's results, checked
    against :func:`_state_problems` when read."""

    def __init__(self, out: Path, config_hash: str, identity: dict, config: dict | None = None):
        self.path = out / "state.json"
        self.out = out
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:  # ValueError: JSON and UnicodeDecodeError
                raise SearchStateError(
                    f"{self.path} is corrupt ({' '.join(str(e).split())[:120]}); delete it or "
                    "use another --out folder"
                ) from None
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise SearchStateError(f"{self.path} is not a tritonbasis search state")
            problems = _state_problems(doc)
            if problems:
                raise SearchStateError(
                    f"{self.path} is corrupt (does not match the search-state schema: "
                    f"{'; '.join(problems[:4])}); delete it or use another --out folder")
            if doc["config_hash"] != config_hash:
                diffs = _config_diffs(doc, config, identity)
                if diffs is None or diffs:
                    what = (f"differs in {', '.join(diffs)}" if diffs else
                            f"state {doc['config_hash'][:12]}, now {config_hash[:12]}")
                    raise SearchStateError(
                        f"{self.path} was written by a search with a different configuration "
                        f"({what}); use another --out folder, or delete the folder to start "
                        "over")
            self.doc = doc
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.doc = {"format": STATE_FORMAT, "config_hash": config_hash,
                        "identity": identity, "stages": {}}
            if config is not None:
                self.doc["config"] = config
            self.save()

    def get(self, key, default=None):
        return self.doc["stages"].get(key, default)

    def put(self, key, value) -> None:
        self.doc["stages"][key] = value
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=1, allow_nan=False))


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalized(config: dict) -> dict:
    """A config dict as it will run: ``device=None`` is the device it resolves to (so an
    explicit ``--device cpu`` equals the default on a CPU machine)."""
    c = dict(config)
    dev = c.get("device")
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        c["device"] = str(torch.device(dev)) if dev is not None else _default_device()
    return c


def _config_diffs(doc: dict, config: dict | None, identity: dict) -> list[str] | None:
    """Names of the fields in which the saved config/identity differs from this run's (after
    :func:`_normalized`); None when the state predates stored configs."""
    saved = doc.get("config")
    if saved is None or config is None:
        return None
    a, b = _normalized(saved), _normalized(config)
    diffs = [f"{k} (state {a.get(k)!r}, now {b.get(k)!r})" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    si = doc.get("identity", {})
    diffs += [f"identity.{k} (state {si.get(k)!r}, now {identity.get(k)!r})"
              for k in sorted(set(si) | set(identity)) if si.get(k) != identity.get(k)]
    return diffs


_NUM = (int, float)
# stage -> (type, {field: type}) of each value (per-layer dicts for probes/gains)
_PROBE_FIELDS = {"zero_shot_acc": _NUM, "zero_shot_drop": _NUM, "zero_shot_loss_delta": _NUM,
                 "probe_acc": _NUM, "probe_drop": _NUM, "probe_loss_delta": _NUM}
_GAIN_FIELDS = {"time_dense_ms": _NUM, "time_basis_ms": _NUM, "time_saved_ms": _NUM}
_BASELINE_FIELDS = {"val_acc": _NUM, "val_loss": _NUM, "params": int, "macs": int,
                    "history": list}
_SELECTION_FIELDS = {"chosen": list, "predicted_drop": _NUM, "verified_drop": _NUM,
                     "within_budget": bool, "verifications": list, "backoffs": int,
                     "max_drop": _NUM}


def _fields_problems(where: str, d, fields: dict) -> list[str]:
    if not isinstance(d, dict):
        return [f"{where} is {type(d).__name__}, not an object"]
    out = []
    for k, t in fields.items():
        v = d.get(k)
        if k not in d:
            out.append(f"{where} lacks {k!r}")
        elif isinstance(v, bool) and t is not bool:
            out.append(f"{where}.{k} is a bool")
        elif not isinstance(v, t):
            out.append(f"{where}.{k} is {type(v).__name__}")
    return out


def _state_problems(doc: dict) -> list[str]:
    """What is wrong with a state document (empty if it matches the schema). A hand-written
    check: a malformed state used to fail deep in the search with a KeyError or TypeError."""
    p = []
    if not isinstance(doc.get("config_hash"), str):
        p.append("'config_hash' is not a string")
    if not isinstance(doc.get("identity"), dict):
        p.append("'identity' is not an object")
    if "config" in doc and not isinstance(doc["config"], dict):
        p.append("'config' is not an object")
    st = doc.get("stages")
    if not isinstance(st, dict):
        return p + ["'stages' is not an object"]
    if "baseline" in st:
        p += _fields_problems("baseline", st["baseline"], _BASELINE_FIELDS)
    if "baseline_sha256" in st and not isinstance(st["baseline_sha256"], str):
        p.append("baseline_sha256 is not a string")
    for name, fields in (("probes", _PROBE_FIELDS), ("gains", _GAIN_FIELDS)):
        if name in st:
            if not isinstance(st[name], dict):
                p.append(f"{name} is not an object")
            else:
                for k, v in st[name].items():
                    p += _fields_problems(f"{name}[{k!r}]", v, fields)
    for name in ("groups", "verifications"):
        if name in st:
            if not isinstance(st[name], list):
                p.append(f"{name} is not a list")
                continue
            for i, v in enumerate(st[name]):
                p += _fields_problems(f"{name}[{i}]", v, {**_PROBE_FIELDS, "layers": list})
    if "selection" in st:
        p += _fields_problems("selection", st["selection"], _SELECTION_FIELDS)
    if "final" in st:
        if not isinstance(st["final"], dict):
            p.append("final is not an object")
        else:
            for k, v in st["final"].items():
                p += _fields_problems(f"final[{k!r}]", v, {"val_acc": _NUM, "params": int,
                                                           "macs": int})
    if "seconds" in st and (isinstance(st["seconds"], bool)
                            or not isinstance(st["seconds"], _NUM)):
        p.append("seconds is not a number")
    return p


def config_hash(config: SearchConfig, identity: dict) -> str:
    blob = json.dumps({"config": asdict(config), "identity": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# helpers


def _pp(acc_base: float, acc: float) -> float:
    """Accuracy drop in percentage points."""
    return round(100.0 * (acc_base - acc), 4)


def _input_shape(data) -> tuple[int, ...]:
    return tuple(data[0][0].shape)


def _time_fwd_bwd(module: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median ms of forward+backward of one layer (synchronised on CUDA)."""
    x = x.detach().requires_grad_()

    def step():
        module(x).sum().backward()

    for _ in range(2):
        step()
    if not x.is_cuda:
        # CPU: torch.utils.benchmark's blocked median over >= 0.2 s. A 5-call median of
        # perf_counter on a shared 2-core machine swung 1 -> 40 ms for one layer (a search
        # run during CI), and these timings pick each layer's mode.
        from torch.utils.benchmark import Timer

        t = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
        return t.blocked_autorange(min_run_time=max(0.2, 0.01 * steps)).median * 1e3
    times = []
    for _ in range(steps):
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None  # a constant ranking has no correlation (scipy warns and returns NaN)
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return None if rho is None or not math.isfinite(rho) else round(float(rho), 4)


def _convert_only(model: nn.Module, fqns, spec: BasisSpec) -> nn.Module:
    return convert(model, {f: spec for f in fqns}, inplace=False)


def _freeze_all_but(model: nn.Module, fqns) -> None:
    keep = set()
    for f in fqns:
        keep |= {id(p) for p in model.get_submodule(f).parameters()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            keep |= {id(p) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


# --------------------------------------------------------------------------------------------
# the search


def sensitivity_search(
    model: nn.Module,
    train_data,
    val_data,
    *,
    spec: BasisSpec | dict | None = None,
    max_drop: float | None = None,
    config: SearchConfig | None = None,
    out: str | os.PathLike = "runs/search",
    identity: dict | None = None,
    progress: bool = True,
    log=print,
) -> SearchReport:
    """Run (or resume) the search; see the module docstring.

    Args:
        model: the dense model (its weights are the baseline if ``baseline_epochs == 0``;
            otherwise it is the initialisation the baseline, chosen and naive models share).
        train_data, val_data: Datasets of ``(image, label)``.
        spec, max_drop: shortcuts for ``config.spec`` / ``config.max_drop``.
        config: :class:`SearchConfig`.
        out: folder for the state, checkpoints, report, plan, summary and plots.
        identity: JSON-able description of the model and data (part of the state hash, so a
            state from another model or data set is refused).
    """
    cfg = copy.deepcopy(config) if config is not None else SearchConfig()
    if spec is not None:
        cfg.spec = spec.to_dict() if isinstance(spec, BasisSpec) else dict(spec)
    if max_drop is not None:
        cfg.max_drop = max_drop
    cfg.__post_init__()
    spec_obj = BasisSpec.from_dict(cfg.spec)
    identity = dict(identity or {})
    identity.setdefault("model_class", type(model).__name__)
    identity.setdefault("params", count_params(model))
    identity.setdefault("train_size", len(train_data))
    identity.setdefault("val_size", len(val_data))
    out = Path(out)
    if cfg.baseline_epochs > 0 or cfg.final:  # these stages train with DDP under torchrun
        D.check_global_batch(cfg.batch_size, len(train_data))
    # under torchrun: rank 0 owns state.json (and every file); the other ranks get a replica
    state = D.main_state(lambda: _State(out, config_hash(cfg, identity), identity,
                                        asdict(cfg)))
    t_start = time.perf_counter()
    shape = _input_shape(train_data)
    init_state = copy.deepcopy(model.state_dict())  # the shared initialisation

    def bar(it, **kw):
        if not progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, **kw)

    # 1. baseline ------------------------------------------------------------------------
    base_path = out / "baseline.pt"
    baseline = state.get("baseline")
    dense = copy.deepcopy(model)
    if baseline is None:
        if cfg.baseline_epochs > 0:
            log(f"[1/5] baseline: training the dense model for {cfg.baseline_epochs} epochs")
            res = train(dense, train_data, val_data, cfg.train_config(cfg.baseline_epochs),
                        checkpoint_dir=out / "baseline", resume=True, progress=progress,
                        distributed=D.is_distributed())
            hist = res.history
        else:
            log("[1/5] baseline: using the given weights (baseline_epochs=0)")
            hist = []
        loss, acc = evaluate(dense, val_data, cfg.device, cfg.batch_size)
        if D.is_main():
            atomic_torch_save(dense.state_dict(), base_path)
        baseline = {"val_acc": acc, "val_loss": loss, "params": count_params(dense),
                    "macs": count_macs(dense, shape), "history": hist}
        # baseline.pt stays a plain state_dict (load_state_dict(torch.load(...)) works); its
        # digest lives in the state and is checked on every resume
        state.doc["stages"]["baseline_sha256"] = content_digest(dense.state_dict())
        state.put("baseline", D.broadcast_object(baseline))
        baseline = state.get("baseline")
    else:
        log(f"[1/5] baseline: done (val acc {100 * baseline['val_acc']:.2f}%)")
    D.load_on_main(dense, lambda: _load_baseline(base_path, state))  # rank 0 reads, broadcasts
    device = next(dense.parameters()).device
    base_acc, base_loss = baseline["val_acc"], baseline["val_loss"]

    # 2. probes --------------------------------------------------------------------------
    cands = [f for f, _ in candidate_convs(dense)]
    _, rep = convert(dense, {f: spec_obj for f in cands}, input_shape=shape,
                     return_report=True)
    layer_rows = {r.fqn: r for r in rep.layers}
    cands = [f for f in cands if layer_rows[f].converted]  # drop convs with no saving
    probes = state.get("probes", {})
    todo = [f for f in cands if f not in probes]
    if todo:
        log(f"[2/5] probes: {len(todo)} of {len(cands)} layers to probe "
            f"({cfg.probe_steps} fine-tuning steps each)")
    # spread over the ranks under torchrun (tritonbasis.distributed); saved as they finish
    probes = D.run_probes(todo, lambda f: _probe(dense, [f], spec_obj, cfg, train_data, val_data,
                                                 base_acc, base_loss, out / "probe_tmp",
                                                 cfg.probe_steps), state, bar=bar)
    groups = state.get("groups")
    if groups is None:
        groups = []
        if cfg.probe_groups and len(cands) >= 2:
            by_params = sorted(cands, key=lambda f: layer_rows[f].params_before)
            half = len(by_params) // 2
            for name, members in (("light", by_params[:half]), ("heavy", by_params[half:])):
                r = _probe(dense, members, spec_obj, cfg, train_data, val_data, base_acc,
                           base_loss, out / "probe_tmp", cfg.probe_steps)
                groups.append({"group": name, "layers": members, **r,
                               "sum_of_layer_probe_drops": round(
                                   sum(probes[m]["probe_drop"] for m in members), 4)})
        state.put("groups", D.broadcast_object(groups))  # rank 0's values on every rank
        groups = state.get("groups")

    # 3. gains ---------------------------------------------------------------------------
    gains = state.get("gains")
    if gains is None:
        log("[3/5] gains: timing dense conv vs basis op per layer shape")
        in_shapes = {f: c.in_shape for f, c in module_calls(dense, shape, fqns=cands).items()}
        converted = _convert_only(dense, cands, spec_obj)
        gains = {}
        for f in bar(cands, desc="timing", unit="layer"):
            x = torch.randn(cfg.time_batch, *in_shapes[f], device=device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            t_dense = _time_fwd_bwd(dense.get_submodule(f), x, cfg.time_steps)
            # both paths of the converted layer: the faster one is the mode it will run
            # (tritonbasis.nn.modes.decide with these timings), and its time is the basis time
            layer = converted.get_submodule(f)
            t = {}
            for mode in ("fused", "weight"):
                layer.mode = mode
                t[mode] = _time_fwd_bwd(layer, x, cfg.time_steps)
            layer.mode = "auto"
            mode = from_timings(t)
            gains[f] = {"time_dense_ms": round(t_dense, 4), "time_basis_ms": round(t[mode], 4),
                        "time_saved_ms": round(t_dense - t[mode], 4),
                        "time_fused_ms": round(t["fused"], 4),
                        "time_weight_ms": round(t["weight"], 4), "mode": mode}
        dense.zero_grad(set_to_none=True)
        state.put("gains", D.broadcast_object(gains))
        gains = state.get("gains")

    # 4. selection -----------------------------------------------------------------------
    rows = []
    for f in cands:
        lr_ = layer_rows[f]
        g = gains[f]
        gain = {"macs": lr_.macs_before - lr_.macs_after,
                "params": lr_.params_before - lr_.params_after,
                "time": g["time_saved_ms"]}[cfg.gain]
        sens = max(probes[f]["probe_drop"], 0.0)
        rows.append({
            "fqn": f, "C_in": lr_.C_in, "C_out": lr_.C_out, "kernel": list(lr_.kernel),
            "stride": list(lr_.stride), "C_b": lr_.C_b, "out_pixels": lr_.out_pixels,
            "params_before": lr_.params_before, "params_after": lr_.params_after,
            "params_saved": lr_.params_before - lr_.params_after,
            "macs_before": lr_.macs_before, "macs_after": lr_.macs_after,
            "macs_saved": lr_.macs_before - lr_.macs_after,
            **probes[f], **g,
            # gain per unit of sensitivity; 0.05 pp floor so insensitive layers rank by gain
            "score": (gain / max(sens, 0.05)) if gain > 0 else 0.0,
            "chosen": False,
        })
    selection = state.get("selection")
    if selection is None:
        selection = _select(rows, dense, spec_obj, cfg, train_data, val_data, base_acc,
                            base_loss, out, state, log)
        state.put("selection", D.broadcast_object(selection))
        selection = state.get("selection")
    _warn_over_budget(selection, log)
    chosen = set(selection["chosen"])
    for r in rows:
        r["chosen"] = r["fqn"] in chosen
    plan = {r["fqn"]: (spec_obj.to_dict() if r["chosen"] else None) for r in rows}
    rho = _spearman([r["zero_shot_drop"] for r in rows], [r["probe_drop"] for r in rows])

    # 5. final ---------------------------------------------------------------------------
    final = state.get("final", {})
    if cfg.final:
        final = _final(model, init_state, dense, baseline, sorted(chosen), cands, spec_obj, cfg,
                       train_data, val_data, shape, out, state, final, progress, log,
                       gains=gains)
        final = D.broadcast_object(final)

    report = SearchReport(
        config=asdict(cfg), identity=identity,
        baseline={k: v for k, v in baseline.items() if k != "history"},
        layers=rows, groups=groups, spearman_zero_shot_vs_probe=rho, selection=selection,
        final=final, plan=plan,
        seconds=round(state.get("seconds", 0.0) + time.perf_counter() - t_start, 2),
        world_size=D.world_size(),
    )
    state.put("seconds", report.seconds)
    if D.is_main():
        write_outputs(report, out)
    return report


def _load_baseline(path: Path, state: _State) -> dict:
    if not path.is_file():
        raise SearchStateError(
            f"{state.path} says the baseline is done but {path} is missing; delete "
            f"{state.path.name} to start over, or restore the file")
    return load_checkpoint(path, expect_digest=state.get("baseline_sha256"),
                           require_checksum=False)


def _warn_over_budget(selection: dict, log) -> str | None:
    """The loud warning for a plan whose verified drop breaks the budget (stderr, the log and
    summary.md): back-offs are capped by ``max_backoff``, so the search can end over budget."""
    if selection.get("within_budget", True):
        return None
    msg = (f"WARNING: the chosen plan is OVER BUDGET: verified drop "
           f"{selection['verified_drop']:.2f} pp > budget {selection['max_drop']} pp after "
           f"{selection['backoffs']} back-offs (the max_backoff limit). Do not use plan.json "
           f"as is: drop more layers from it, raise max_backoff, or raise the budget.")
    print(msg, file=sys.stderr, flush=True)
    if log is not print:
        log(msg)
    return msg


def _probe(dense, fqns, spec, cfg, train_data, val_data, base_acc, base_loss, tmp, steps):
    """Convert ``fqns`` of a copy of the baseline, evaluate (zero-shot), fine-tune ``steps``
    steps, evaluate again."""
    m = _convert_only(dense, fqns, spec)
    zl, za = evaluate(m, val_data, cfg.device, cfg.batch_size)
    pl, pa = zl, za
    if steps > 0:
        if cfg.probe_only_converted:
            _freeze_all_but(m, fqns)
        tc = TrainConfig(epochs=max(1, math.ceil(steps * cfg.batch_size / len(train_data))),
                         batch_size=cfg.batch_size, lr=cfg.probe_lr, schedule="cosine",
                         seed=cfg.seed, device=cfg.device, max_steps=steps)
        train(m, train_data, None, tc, progress=False)
        pl, pa = evaluate(m, val_data, cfg.device, cfg.batch_size)
    return {"zero_shot_acc": za, "zero_shot_drop": _pp(base_acc, za),
            "zero_shot_loss_delta": round(zl - base_loss, 6),
            "probe_acc": pa, "probe_drop": _pp(base_acc, pa),
            "probe_loss_delta": round(pl - base_loss, 6)}


def _select(rows, dense, spec, cfg, train_data, val_data, base_acc, base_loss, out, state,
            log) -> dict:
    order = sorted((r for r in rows if r["score"] > 0), key=lambda r: -r["score"])
    chosen, predicted = [], 0.0
    for r in order:
        d = max(r["probe_drop"], 0.0)
        if predicted + d <= cfg.max_drop:
            chosen.append(r["fqn"])
            predicted += d
    log(f"[4/5] selection: {len(chosen)} layers, predicted drop {predicted:.2f} pp "
        f"(budget {cfg.max_drop} pp); verifying")
    steps = cfg.verify_steps if cfg.verify_steps is not None else 2 * cfg.probe_steps
    verifications = state.get("verifications", [])
    tries = 0
    done = None
    while chosen:
        key = sorted(chosen)
        done = next((v for v in verifications if v["layers"] == key), None)
        if done is None:
            r = _probe(dense, chosen, spec, cfg, train_data, val_data, base_acc, base_loss,
                       out / "probe_tmp", steps)
            done = {"layers": key, **r}
            verifications.append(done)
            state.put("verifications", verifications)
        log(f"      combined probe of {len(chosen)} layers: drop {done['probe_drop']:.2f} pp")
        if done["probe_drop"] <= cfg.max_drop or tries >= cfg.max_backoff:
            break
        chosen = chosen[:-1]  # back off: drop the lowest-scoring chosen layer
        tries += 1
    return {"chosen": chosen, "predicted_drop": round(sum(
        max(r["probe_drop"], 0.0) for r in rows if r["fqn"] in chosen), 4),
        # the verification of the final chosen set (on resume it need not be the last one)
        "verified_drop": done["probe_drop"] if (done is not None and chosen) else 0.0,
        "within_budget": (not chosen) or done["probe_drop"] <= cfg.max_drop,
        "verifications": verifications, "backoffs": tries, "max_drop": cfg.max_drop}


def _apply_modes(model: nn.Module, fqns, gains: dict, device) -> None:
    """Run each converted layer in the mode the search measured faster (its ``gains`` row);
    a state from before modes were recorded falls back to the layer's own decision."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    for f in fqns:
        mode = gains.get(f, {}).get("mode")
        m = model.get_submodule(f)
        if mode in ("fused", "weight") and isinstance(m, BasisConv2d) and m.mode == "auto":
            m.set_resolved(mode, dev)


def _final(model, init_state, dense, baseline, chosen, cands, spec, cfg, train_data, val_data,
           shape, out, state, final, progress, log, gains=None) -> dict:
    gains = gains or {}
    def measure(m):
        t = measure_step_time(m, (cfg.time_batch, *shape), steps=cfg.time_steps,
                              device=cfg.device)
        return {"params": count_params(m), "macs": count_macs(m, shape),
                "train_step_ms": round(t["train_step_ms"], 4),
                "infer_ms": round(t["infer_ms"], 4), "timing_device": t["device_name"]}

    if "dense" not in final:
        final["dense"] = {"val_acc": baseline["val_acc"], "val_loss": baseline["val_loss"],
                          **measure(dense)}
        state.put("final", final)
    epochs = cfg.baseline_epochs
    for name, layers in (("chosen", chosen), ("naive", cands)):
        if name in final:
            continue
        log(f"[5/5] final: {name} ({len(layers)} converted layers), "
            f"{'training ' + str(epochs) + ' epochs' if epochs else 'fine-tuning'}")
        m = copy.deepcopy(model)
        if epochs > 0:
            m.load_state_dict(init_state)  # the baseline's initialisation
        else:
            m.load_state_dict(dense.state_dict())
        m = _convert_only(m, layers, spec) if layers else m
        _apply_modes(m, layers, gains, cfg.device)
        if epochs > 0:
            train(m, train_data, val_data, cfg.train_config(epochs),
                  checkpoint_dir=out / f"final_{name}", resume=True, progress=progress,
                  distributed=D.is_distributed())
        elif layers and cfg.probe_steps:
            train(m, train_data, None, TrainConfig(
                epochs=1, batch_size=cfg.batch_size, lr=cfg.probe_lr, seed=cfg.seed,
                device=cfg.device, max_steps=2 * cfg.probe_steps), progress=False,
                distributed=D.is_distributed())
        loss, acc = evaluate(m, val_data, cfg.device, cfg.batch_size)
        final[name] = {"val_acc": acc, "val_loss": loss, "converted": len(layers),
                       "drop_pp": _pp(baseline["val_acc"], acc), **measure(m)}
        state.put("final", final)
    return final


# --------------------------------------------------------------------------------------------
# outputs


def write_outputs(report: SearchReport, out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"report": out / "report.json", "plan": out / "plan.json",
             "summary": out / "summary.md"}
    atomic_write_text(paths["report"], report.to_json())
    save_plan(report.plan, paths["plan"], meta={
        "source": "tritonbasis search", "max_drop_pp": report.config["max_drop"],
        "baseline_val_acc": report.baseline["val_acc"], "chosen": report.chosen})
    atomic_write_text(paths["summary"], summary_markdown(report))
    with contextlib.suppress(ImportError):  # matplotlib is optional
        paths.update(plot(report, out))
    return paths


def summary_markdown(report: SearchReport) -> str:
    b = report.baseline
    s = report.selection
    ident = report.identity
    data = ident.get("data", "?")
    if isinstance(data, dict):
        shape = "x".join(map(str, data.get("input_shape", [])[1:]))
        data = (f"{data.get('name', '?')} ({data.get('train_size', '?')} train / "
                f"{data.get('val_size', '?')} val, {shape} px)")
    width = f" width {ident['width']}" if "width" in ident else ""
    lines = ["# tritonbasis sensitivity search", ""]
    if not s.get("within_budget", True):
        lines += [f"> **WARNING: OVER BUDGET.** The chosen plan's verified drop is "
                  f"{s['verified_drop']:.2f} pp, above the {s['max_drop']} pp budget, after "
                  f"{s['backoffs']} back-offs (max_backoff). Do not use plan.json as is.", ""]
    lines += [
        f"* model: {ident.get('model', ident.get('model_class'))}{width}, data: {data}",
        f"* spec: {report.config['spec']}, budget: {report.config['max_drop']} pp",
        f"* baseline val acc {100 * b['val_acc']:.2f}%, {b['params']:,} params, "
        f"{b['macs']:,} MACs/image",
        f"* chosen {len(s['chosen'])} of {len(report.layers)} layers; predicted drop "
        f"{s['predicted_drop']:.2f} pp, verified {s['verified_drop']:.2f} pp, "
        f"{s['backoffs']} back-offs",
        f"* zero-shot vs probe ranking (Spearman rho): {report.spearman_zero_shot_vs_probe}",
        f"* {report.seconds:.0f} s", "",
        "```", report.table(), "```", "",
    ]
    if report.groups:
        lines += ["| group | layers | probe drop (pp) | sum of its layers' drops |",
                  "|---|---|---|---|"]
        lines += [f"| {g['group']} | {len(g['layers'])} | {g['probe_drop']:.2f} | "
                  f"{g['sum_of_layer_probe_drops']:.2f} |" for g in report.groups]
    return "\n".join(lines) + "\n"


def plot(report: SearchReport, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    rows = report.layers
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["zero_shot_drop"] for r in rows], 0.4,
               label="zero-shot", color="#bbbbbb")
        ax.bar([x + 0.2 for x in xs], [r["probe_drop"] for r in rows], 0.4,
               label=f"probe ({report.config['probe_steps']} steps)",
               color=["#d62728" if r["chosen"] else "#1f77b4" for r in rows])
        ax.set_xticks(list(xs), [r["fqn"] for r in rows], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("val accuracy drop (pp)")
        ax.set_yscale("symlog", linthresh=1.0)
        top = max([r["zero_shot_drop"] for r in rows] + [r["probe_drop"] for r in rows] + [1])
        ax.set_ylim(top=top * 2)
        ax.set_title("sensitivity per layer (red: chosen)")
        ax.legend()
        fig.tight_layout()
        paths["sensitivity_png"] = out / "sensitivity.png"
        fig.savefig(paths["sensitivity_png"], dpi=120)
        plt.close(fig)
    if report.final:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for name, color in (("dense", "k"), ("chosen", "#d62728"), ("naive", "#1f77b4")):
            f = report.final.get(name)
            if not f:
                continue
            for ax, key in zip(axes, ("train_step_ms", "params")):
                ax.scatter(f[key], 100 * f["val_acc"], c=color, s=60, label=name)
                ax.annotate(name, (f[key], 100 * f["val_acc"]), textcoords="offset points",
                            xytext=(5, 5))
        axes[0].set_xlabel(f"training step time (ms, batch {report.config['time_batch']})")
        axes[1].set_xlabel("parameters")
        for ax in axes:
            ax.set_ylabel("val accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("accuracy vs cost: dense / chosen / naive")
        fig.tight_layout()
        paths["tradeoff_png"] = out / "tradeoff.png"
        fig.savefig(paths["tradeoff_png"], dpi=120)
        plt.close(fig)
    return paths


__all__ = ["SearchConfig", "SearchReport", "SearchStateError", "config_hash", "plot",
           "sensitivity_search", "summary_markdown", "write_outputs"]
