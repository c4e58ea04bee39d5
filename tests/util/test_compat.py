"""Private torch internals are fenced in ``tritonbasis/util/compat.py``, each with a public
fallback: no other module names one (a source scan), and with every fallback in use
(``TRITONBASIS_PUBLIC_TORCH_ONLY=1``, a fresh process) the op, the layer, ``torch.compile``
and ``torch.export`` give the same results as with the private names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "tritonbasis"

# private names: torch._X / torch.foo._X attributes, torch._C, and the private attributes
# this package ever read (os.environ._data, Tensor._version, nn.Module's dicts)
PRIVATE = re.compile(
    r"\btorch(?:\.[A-Za-z0-9]+)*\._[A-Za-z]|\b_C\.|\.environ\._data|\._version\b"
    r"|\._parameters\b|\._buffers\b|\._ConvTransposeNd\b"
)
# documented entry points under private module names (see util/compat.py's docstring)
ALLOWED = {
    "conversion/deploy.py": (
        "torch._inductor.aoti_compile_and_package",
        "torch._inductor.aoti_load_package",
    )
}


def test_no_private_torch_name_outside_compat():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel == "util/compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if not PRIVATE.search(code):
                continue
            if any(a in code for a in ALLOWED.get(rel, ())):
                continue
            bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "private torch names outside util/compat.py:\n" + "\n".join(bad)


def _workload(out_path: str) -> None:
    """Op, layer, compile and export, float64; saves every result to ``out_path``."""
    import copy

    import torch.nn as nn

    import tritonbasis as tb
    from tritonbasis.util import compat

    torch.manual_seed(0)
    res = {"missing": compat.missing(), "eager_route": compat.EAGER_ROUTE_KNOWABLE}
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    basis = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    coeff = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    perm = torch.randperm(8)
    ts = (x, basis, coeff, bias)
    # the functional (eager route, or the op route with the fallbacks) and the raw op
    y = tb.basis_conv2d(x, basis, coeff, bias, padding=1, perm=perm)
    res["functional"] = y.detach()
    res["functional_grads"] = torch.autograd.grad(y.square().sum(), ts)
    y = torch.ops.tritonbasis.basis_conv2d(
        x, basis, coeff, bias, perm, [1, 1], [1, 1], [1, 1], True, False
    )[0]
    res["op"] = y.detach()
    res["op_grads"] = torch.autograd.grad(y.square().sum(), ts)
    # the environment variable is read per call
    os.environ["TRITONBASIS_BACKEND"] = "bogus"
    try:
        tb.get_backend()
        res["env"] = "not read"
    except ValueError:
        res["env"] = "read"
    del os.environ["TRITONBASIS_BACKEND"]
    # a model: padding modes, perm, eval + no_grad weight mode (its inference cache)
    model = nn.Sequential(
        tb.BasisConv2d(
            4,
            6,
            3,
            padding=1,
            padding_mode="reflect",
            basis_channels=2,
            mode="fused",
            dtype=torch.float64,
        ),
        nn.ReLU(),
        tb.BasisConv2d(
            6,
            6,
            3,
            padding=1,
            basis_channels=3,
            keep_basis=False,
            mode="fused",
            dtype=torch.float64,
        ),
    )
    model[0].set_out_perm(torch.randperm(6))
    xm = x.detach()
    out = model(xm)
    res["layer"] = out.detach()
    res["layer_grads"] = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    with torch.no_grad():
        model.eval()
        for m in (model[0], model[2]):
            m.mode = "weight"
        res["weight_infer"] = [model(xm), model(xm)]
        model[0].basis.mul_(2)  # in place: the cached merged weight must be rebuilt
        res["weight_infer_after_step"] = model(xm)
        model[0].basis.div_(2)
        for m in (model[0], model[2]):
            m.mode = "fused"
        model.train()
    # torch.compile (fullgraph) forward + backward
    torch._dynamo.reset()
    comp_model = copy.deepcopy(model)
    out = torch.compile(comp_model, fullgraph=True, backend="aot_eager")(xm)
    res["compiled"] = out.detach()
    res["compiled_grads"] = torch.autograd.grad(out.square().sum(), list(comp_model.parameters()))
    # torch.export
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (xm,))
        res["exported"] = ep.module()(xm)
    torch.save(res, out_path)


def _run_workload(tmp_path, public_only: bool) -> dict:
    env = dict(os.environ)
    env.pop("TRITONBASIS_PUBLIC_TORCH_ONLY", None)
    if public_only:
        env["TRITONBASIS_PUBLIC_TORCH_ONLY"] = "1"
    out = tmp_path / f"res-{int(public_only)}.pt"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_compat; test_compat._workload({str(out)!r})"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return torch.load(out, weights_only=True)


def test_public_fallbacks_give_the_same_results(tmp_path):
    private = _run_workload(tmp_path, public_only=False)
    public = _run_workload(tmp_path, public_only=True)
    assert private["missing"] == [] and private["eager_route"] is True
    assert public["eager_route"] is False
    assert set(public["missing"]) >= {
        "torch._C._len_torch_dispatch_stack",
        "torch._C._any_requires_grad",
        "torch._C._autograd._profiler_enabled",
        "torch._C._is_tracing",
        "torch._C._is_any_autocast_enabled",
        "torch._subclasses.fake_tensor.is_fake",
        "os.environ._data",
        "Tensor._version",
        "nn.Module._parameters / _buffers",
    }
    assert private["env"] == public["env"] == "read"
    for key in private:
        if key in ("missing", "eager_route", "env"):
            continue
        torch.testing.assert_close(public[key], private[key], rtol=1e-12, atol=1e-12, msg=key)
    # the inference cache was really rebuilt after the in-place change (both ways)
    w = public["weight_infer"]
    torch.testing.assert_close(w[0], w[1], rtol=0, atol=0)
    assert not torch.allclose(public["weight_infer_after_step"], w[0])


def test_benchmark_compile_setting_falls_back_without_aot_config(monkeypatch):
    """The compiled baselines turn AOTAutograd's donated buffers off through compat; without
    that private module they compile with torch's defaults instead of failing."""
    from tritonbasis.perf.bench import providers
    from tritonbasis.util import compat

    cfg = compat.aot_autograd_config()
    assert cfg is not None and "torch._functorch.config" not in compat.missing()
    if hasattr(cfg, "donated_buffer"):
        before = cfg.donated_buffer
        with providers._no_donated_buffers():
            assert cfg.donated_buffer is False
        assert cfg.donated_buffer == before
    monkeypatch.setattr(compat, "aot_autograd_config", lambda: None)
    with providers._no_donated_buffers():
        pass
