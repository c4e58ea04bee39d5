"""Packaging and import hygiene: kernels ship as tritonbasis.kernels; importing the package
needs neither CUDA nor triton."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(ROOT.parent),
    )


def test_imports_without_triton():
    r = _run(
        """
        import importlib.machinery, sys
        class NoTriton(importlib.machinery.PathFinder):  # as if triton were not installed
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    return None
                return importlib.machinery.PathFinder.find_spec(name, path, target)
        sys.meta_path = [NoTriton if f is importlib.machinery.PathFinder else f
                         for f in sys.meta_path]
        import torch, tritonbasis as tb
        x = torch.randn(2, 3, 6, 6, requires_grad=True)
        # the op, not weight mode
        layer = tb.BasisConv2d(3, 8, 3, basis_channels=2, padding=1, mode="fused")
        layer(x).sum().backward()
        assert x.grad is not None
        assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules)
        with tb.use_backend("triton"):
            try:
                layer(x)
            except RuntimeError as e:
                print("ERR", e)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "ERR TRITONBASIS_BACKEND=triton but triton cannot be imported" in r.stdout, r.stdout


def test_import_does_not_query_cuda():
    r = _run(
        """
        import torch
        def boom(*a, **k):
            raise AssertionError("CUDA queried at import")
        for name in ("is_available", "device_count", "get_device_properties",
                     "current_device", "get_device_capability", "init"):
            setattr(torch.cuda, name, boom)
        import tritonbasis as tb
        import tritonbasis.kernels  # decorating the kernels must not query a device either
        from tritonbasis.kernels import configs
        print("OK", len(configs.CONFIGS))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK"), r.stdout


def test_kernels_subpackage_is_the_repo_folder():
    import tritonbasis.kernels as k

    assert Path(k.__file__).resolve().parent.name == "kernels"
    assert set(k.KERNELS) == {"fwd", "fwd_reduce", "grad_z", "grad_x", "wgrad", "bwd_reduce"}


@pytest.mark.slow
def test_wheel_contains_kernels(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("tritonbasis-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("forward.py", "backward.py", "configs.py", "__init__.py"):
        assert f"tritonbasis/kernels/{f}" in names, sorted(names)
    assert not any(n.startswith("kernels/") for n in names), "a top-level 'kernels' package"
    # the wheel imports tritonbasis.kernels on its own (unpacked, no repo on the path)
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tritonbasis.kernels as k, tritonbasis, sys; print(k.__file__)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=str(tmp_path),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert str(site) in r.stdout
