"""The CUDA toolchain side of the compile tier (``tools/aot.py``): triton's bundled ``ptxas``
and ``cuobjdump``, and what the compiled kernels tell (registers, stack, spills from the cubin
and ``ptxas -v``; tensor-core instructions, wgmma shapes and pipelined loops from the PTX and
TTGIR). Every triton import is inside a function.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile


def tool(name: str, arch: int | None = None) -> str:
    """Path of triton's bundled CUDA tool ``name``. For ``ptxas`` with an ``arch``: the one
    triton itself runs for that arch (``get_ptxas(arch)``). Triton 3.9 emits PTX ISA 9.x for
    sm_90 and assembles it with its newer ``ptxas-blackwell`` (CUDA 13.x); the legacy
    ``ptxas`` it still bundles (CUDA 12.9, PTX <= 8.8) rejects that PTX ("Unsupported .version
    9.4"), which is why the v1 compile tier reported ``spills=None`` under triton 3.9."""
    from triton import knobs

    if name == "ptxas" and arch is not None:
        try:
            from triton.backends.nvidia.compiler import get_ptxas
        except ImportError:  # older triton: one ptxas for every arch
            pass
        else:
            try:
                return get_ptxas(arch).path
            except TypeError:  # get_ptxas() without an arch argument
                return get_ptxas().path
    return getattr(knobs.nvidia, name.replace("-", "_")).path


def toolchain_available() -> tuple[bool, str]:
    """(ok, reason): triton importable, with its bundled ptxas and cuobjdump runnable."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return False, f"triton not importable: {e!r}"
    for name, arch in (("ptxas", None), ("ptxas", 90), ("cuobjdump", None)):
        try:
            path = tool(name, arch)
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        except Exception as e:
            return False, f"triton's bundled {name} is not usable: {e!r}"
    return True, ""


def resource_usage(cubin: bytes, kernel_name: str) -> dict:
    """REG and STACK from ``cuobjdump --dump-resource-usage``; empty dict if unparsable.
    Its lines look like ``Function basis_conv_fwd_kernel:`` then
    ``REG:255 STACK:1464 SHARED:1024 LOCAL:0 CONSTANT[0]:720 ...``."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        try:
            out = subprocess.run(
                [tool("cuobjdump"), "--dump-resource-usage", path],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
        except Exception:
            return {}
    m = re.search(rf"Function {re.escape(kernel_name)}:\s*\n\s*(.*)", out)
    if not m:
        return {}
    fields = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", m.group(1)))
    return {k: int(v) for k, v in fields.items()}


def sass(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin ("" if it cannot be run)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        try:
            return subprocess.run(
                [tool("cuobjdump"), "-sass", path],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            ).stdout
        except Exception:
            return ""


def ptxas_spills(ptx: str, arch: int) -> dict:
    """Spill bytes from ``ptxas -v`` on the kernel's PTX (same arch and register allocator flag
    as triton's own ptxas call). Empty dict if unparsable."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        gpu = sm_arch_from_capability(arch)
        cmd = [
            tool("ptxas", arch),
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={gpu}",
            src,
            "-o",
            os.path.join(d, "k.o"),
        ]
        try:
            run = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
            log = run.stderr
        except Exception:
            return {}
    out = {}
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["spill_store_bytes"], out["spill_load_bytes"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["registers"] = int(m.group(1))
    return out


def expected_tensor_core_instr(dot_m: str | None, config: dict, arch: int) -> str | None:
    """The MMA instruction Triton should emit for ``config`` of a kernel whose dots all have
    the M extent ``config["blocks"][dot_m]`` (its record's ``dot_m``; None: a kernel without a
    dot, None expected): on sm_90 ``wgmma`` when the tile allows it, else ``mma.sync``;
    ``mma.sync`` on sm_80.

    Triton's AccelerateMatmul uses MMAv3 (wgmma) only if ``num_warps % 4 == 0`` and the dot's
    M extent is a multiple of 64 (one warpgroup = 4 warps owns 64 rows); otherwise it falls back
    to MMAv2 (mma.sync), which Hopper also runs, at lower throughput. All N/K blocks here are
    powers of two >= 16, which satisfies its other (N % 8 or 16, K) conditions."""
    if dot_m is None:
        return None
    if arch >= 90 and config["num_warps"] % 4 == 0 and config["blocks"][dot_m] % 64 == 0:
        return "wgmma"
    return "mma.sync"


def tensor_core_instr(ptx: str) -> str | None:
    if re.search(r"\bwgmma\.mma_async", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma.sync"
    return None


def wgmma_shapes(ptx: str) -> list[str]:
    """The distinct wgmma instruction shapes in the PTX, e.g. ``["m64n128k16"]``."""
    return sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))


def loop_facts(ttgir: str) -> dict:
    """Loops of the kernel after Triton's pipeliner, from its TTGIR: ``loops`` (``scf.for``
    ops) and ``pipelined_loops`` (those whose body issues asynchronous global->shared copies,
    ``async_copy_global_to_local`` (cp.async) or a TMA copy: the software-pipelined ones)."""
    lines = ttgir.splitlines()
    loops = pipelined = 0
    for i, line in enumerate(lines):
        if "scf.for" not in line:
            continue
        loops += 1
        depth, body = 0, []
        for ln in lines[i:]:
            body.append(ln)
            depth += ln.count("{") - ln.count("}")
            if depth <= 0 and len(body) > 1:
                break
        text = "\n".join(body[1:])
        if "async_copy_global_to_local" in text or "async_tma_copy" in text:
            pipelined += 1
    return {"loops": loops, "pipelined_loops": pipelined}
