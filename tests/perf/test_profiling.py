"""Profiling: layer ranges named by FQN (only while named, never inside compiled graphs),
`tritonbasis profile` writing a Chrome trace that names the layers plus its tables, and the
Triton kernels' readable names."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import HAS_CUDA, HAS_TRITON

import tritonbasis as tb
from tritonbasis.cli import main
from tritonbasis.perf import profiling


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = tb.BasisConv2d(3, 8, 3, basis_channels=4, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 1), tb.BasisConv2d(8, 8, 3, basis_channels=2, padding=1, mode="fused")
        )

    def forward(self, x):
        return self.block(torch.relu(self.stem(x)))


def _net():
    return _Net()


def _range_names(prof) -> list[str]:
    return [e.name for e in prof.events()]


def test_name_layers_sets_and_restores():
    net = _net()
    net.block[1].profile_name = "custom"  # a name set before is put back
    with profiling.name_layers(net, nvtx=True) as names:
        assert names == ["stem", "block.1"]
        assert net.stem.profile_name == "stem" and net.block[1].profile_name == "block.1"
        assert net.stem.profile_nvtx is True
    assert net.stem.profile_name is None and "profile_name" not in net.stem.__dict__
    assert net.stem.profile_nvtx is False
    assert net.block[1].profile_name == "custom"
    assert not any("profile" in k for k in net.state_dict())  # not module state


def test_ranges_only_while_named():
    from torch.profiler import ProfilerActivity, profile

    net = _net()
    x = torch.randn(2, 3, 6, 6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x)
    assert not {"stem", "block.1"} & set(_range_names(prof))
    with profiling.name_layers(net), profile(activities=[ProfilerActivity.CPU]) as prof:
        y = net(x)
    names = _range_names(prof)
    assert names.count("stem") == 1 and names.count("block.1") == 1
    # the op runs inside its layer's range
    evs = {e.name: e for e in prof.events()}
    outer = evs["block.1"]
    inner = [
        e
        for e in prof.events()
        if e.name == "tritonbasis::basis_conv2d"
        and outer.time_range.start <= e.time_range.start <= outer.time_range.end
    ]
    assert inner, "tritonbasis::basis_conv2d not inside the layer's range"
    assert torch.equal(y, net(x))  # same result with and without names


def test_nvtx_ranges_balanced(monkeypatch):
    pushed = []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda n: pushed.append(("push", n)))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: pushed.append(("pop",)))
    with (
        pytest.raises(RuntimeError, match="boom"),
        profiling.layer_range("layer1.0.conv1", nvtx=True),
    ):
        raise RuntimeError("boom")
    assert pushed == [("push", "layer1.0.conv1"), ("pop",)]
    pushed.clear()
    with profiling.layer_range("x", nvtx=False):
        pass
    assert pushed == []


def test_named_layers_still_compile_fullgraph():
    net = _net()
    x = torch.randn(2, 3, 6, 6)
    torch._dynamo.reset()
    try:
        with profiling.name_layers(net):
            y = torch.compile(net, fullgraph=True, backend="eager")(x)  # no graph break
    finally:
        torch._dynamo.reset()
    assert torch.allclose(y, net(x), atol=1e-6)


def test_profile_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--plan", "--steps", "--out", "--nvtx", "--no-trace"):
        assert opt in out


def test_profile_cli_writes_trace_naming_the_layers(tmp_path, capsys, one_thread):
    out = tmp_path / "prof"
    # mode "fused" in the plan: at these tiny shapes mode="auto" runs weight modification on a
    # CPU (tritonbasis.nn.modes), and the trace must show the op's ranges
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"_default": {"ratio": 0.25, "keep_basis": True, "mode": "fused"}}))
    rc = main(
        [
            "profile",
            "--width",
            "0.125",
            "--image-size",
            "8",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--plan",
            str(plan),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--rows",
            "8",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    trace = json.loads((out / "trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = [e.get("name") for e in events]
    summary = json.loads((out / "summary.json").read_text())
    layers = summary["layers"]
    assert "layer1.0.conv1" in layers and "layer4.1.conv2" in layers and "conv1" in layers
    assert len(layers) == 20  # every conv of resnet18_cifar was converted
    for fqn in layers:
        assert names.count(fqn) == 2, f"{fqn}: expected one range per profiled step"
    assert any(n == "tritonbasis::basis_conv2d" for n in names)
    assert any(n == "tritonbasis::basis_conv2d_backward" for n in names)
    # the tables: printed and written
    for fqn in ("layer2.0.downsample.0", "layer3.1.conv1"):
        assert fqn in printed and fqn in (out / "layers.txt").read_text()
    assert "aten::" in (out / "ops.txt").read_text()
    rows = {r["layer"]: r for r in summary["layer_table"]}
    assert all(rows[f]["calls"] == 2 and rows[f]["cpu_ms"] > 0 for f in layers)
    assert summary["steps"] == 2 and summary["files"]["trace"].endswith("trace.json")
    # the step time comes from the one timer, outside the profiled steps
    assert summary["step_ms"] > 0 and summary["step_ms"] == summary["step_timing"]["median_ms"]
    assert summary["step_timing"]["method"].startswith("torch.utils.benchmark")
    assert "ms/step without the profiler" in printed


def test_profile_without_trace_runs_steps(tmp_path):
    model = nn.Sequential(
        tb.BasisConv2d(3, 8, 3, basis_channels=4, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    )
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))  # deep-copied with the model
    s = profiling.profile_training(
        model,
        (2, 3, 4, 4),
        steps=3,
        warmup=1,
        device="cpu",
        trace=False,
        out_dir=tmp_path / "p",
        log=lambda *a: None,
    )
    assert s["files"] == {} and s["layers"] == ["0"]
    # exactly warmup + steps training steps (+ the one forward that reads the class count):
    # nothing else runs for an external profiler to see, so no in-process timing either
    assert len(calls) == 1 + 1 + 3 and s["step_ms"] is None
    assert not (tmp_path / "p" / "trace.json").exists()
    with pytest.raises(ValueError, match="steps"):
        profiling.profile_training(model, (2, 3, 4, 4), steps=0, out_dir=tmp_path / "p")


@pytest.mark.compile_tier
def test_triton_kernels_have_readable_names():
    """The compiled kernels' entry names (what profilers and `ncu --kernel-name` show) are the
    @triton.jit function names, checked by compiling each for sm_90 without a GPU."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from aot import toolchain_available

    ok, why = toolchain_available()
    if not ok:
        pytest.skip(f"no triton CUDA toolchain: {why}")
    code = textwrap.dedent("""
        import triton
        from triton.backends.compiler import GPUTarget
        import aot  # tools/aot.py, on PYTHONPATH below
        from tritonbasis.kernels import configs
        for name in ("fwd", "fwd_reduce", "grad_z", "grad_x", "wgrad", "bwd_reduce"):
            c = configs.FIXED[name]
            src = aot.build_source(name, dict(c["blocks"]))
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": c["num_warps"],
                                        "num_stages": c["num_stages"]})
            print(k.metadata.name)
    """)
    # a process without TRITON_INTERPRET (the interpreter cannot compile)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tools = str(Path(__file__).resolve().parents[2] / "tools")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tools, env.get("PYTHONPATH")) if p)
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == list(profiling.KERNEL_NAMES[:6])


def test_every_kernel_record_is_a_named_kernel():
    """Each kernel the package can launch (v2 and the forward variants) is in the list the
    profiling tables mark as ours, under its @triton.jit / @gluon.jit function name."""
    if not HAS_TRITON:
        pytest.skip("triton is not importable")
    from tritonbasis.kernels import configs

    names = set()
    for rec in configs.RECORDS.values():
        fn = rec.fn
        names.add(getattr(fn, "__name__", None) or fn.fn.__name__)
    assert names == set(profiling.KERNEL_NAMES)


@pytest.mark.gpu
def test_gpu_trace_shows_triton_kernels_by_name(tmp_path):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU (GPU tier)")
    from tritonbasis.recipes.models import resnet18_cifar

    model = tb.convert(
        resnet18_cifar(width=0.5),
        {"_default": tb.BasisSpec(ratio=0.25, keep_basis=True, mode="fused")},
    )
    s = profiling.profile_training(
        model,
        (32, 3, 32, 32),
        steps=2,
        warmup=1,
        device="cuda",
        out_dir=tmp_path,
        log=lambda *a: None,
    )
    # every kernel of a training step; the split-K forward's second launch runs only where
    # configs.split_k splits (small M), which may or may not happen at this batch
    always = set(profiling.KERNEL_NAMES) - {"basis_conv_fwd_reduce_kernel"}
    seen = set(s["tritonbasis_kernels_seen"])
    assert always <= seen <= set(profiling.KERNEL_NAMES)
    trace = (tmp_path / "trace.json").read_text()
    for k in always:
        assert k in trace
    assert "layer2.0.conv1" in trace
