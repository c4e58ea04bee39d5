"""Ahead-of-time compile tier: compile every kernel x autotune config for sm_90 / sm_80 without
a GPU, and report what the hardware limits care about (registers, spills, shared memory,
tensor-core instructions).

``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline (TTIR -> TTGIR -> LLIR
-> PTX -> cubin with the ptxas bundled in triton) on a machine without CUDA. Each kernel is
compiled for a *representative shape* (:class:`Shape`, ResNet-like by default: 3x3, C_in =
C_out = 64, C_b = 32, 56x56, channels_last, bias, keep-basis form) with exactly the pointer
dtypes, integer values and constexprs that :mod:`tritonbasis.op.launchers` would launch it with, and
specialised the way ``JITFunction`` specialises a real launch (an int equal to 1 becomes a
constexpr, pointers and ints divisible by 16 get ``tt.divisibility = 16``). So the PTX is the
one a launch of that shape would run, not a generic variant.

Numbers come from the cubin: registers per thread and stack frame from ``cuobjdump
--dump-resource-usage``; when the stack frame is non-zero (Triton kernels have no local arrays,
so a stack frame means spilling) the spill bytes from ``ptxas -v`` on the same PTX. Shared
memory is ``metadata.shared`` (the dynamic shared memory the launch asks for).

A process running the Triton interpreter (TRITON_INTERPRET=1, as the test session does
without CUDA) cannot compile: triton.language's own ``@jit`` helpers are interpreted there too
(see :func:`_interpreted_process`). :func:`compile_kernel` then hands the work to a worker
process (``python tools/aot.py --worker``) started without that variable;
:func:`compile_many` / :func:`compile_all` use one worker per CPU in any process.

Every triton import in this module is inside a function.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Dynamic shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# H100 (sm_90) 227 KiB, A100 (sm_80) 163 KiB.
SHARED_LIMIT = {90: 232448, 80: 166912}
MAX_REGISTERS = 255  # per thread, every arch since sm_35
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
ARCHS = (90, 80)
# Number of SMs assumed for the wgrad split (the launcher reads it from the device).
SMS = {90: 132, 80: 108}


@dataclasses.dataclass(frozen=True)
class Shape:
    """The conv a kernel is compiled for (values matter: the JIT specialises on them)."""

    N: int = 32
    C_in: int = 64
    H: int = 56
    W: int = 56
    C_out: int = 64
    C_b: int = 32
    KH: int = 3
    KW: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    bias: bool = True
    keep_basis: bool = True
    channels_last: bool = True

    @property
    def Ho(self) -> int:
        from tritonbasis.op.geometry import conv_output_size

        return conv_output_size(self.H, self.KH, self.stride, self.padding, self.dilation)

    @property
    def Wo(self) -> int:
        from tritonbasis.op.geometry import conv_output_size

        return conv_output_size(self.W, self.KW, self.stride, self.padding, self.dilation)

    @property
    def C_rest(self) -> int:
        return self.C_out - self.C_b if self.keep_basis else self.C_out

    @property
    def M(self) -> int:
        return self.N * self.Ho * self.Wo


REPRESENTATIVE = Shape()


def bench_shapes(group: str = "resnet18_cifar", ratios=("1/4",)) -> dict[str, Shape]:
    """The benchmark cases of ``tritonbasis bench`` (:data:`tritonbasis.perf.bench.GROUPS`) as
    compile shapes, one per case and C_b / C_out ratio, named ``<case>.cb<C_b>``: keep-basis,
    no bias, channels_last, as the benchmark runs them. Cases whose C_b exceeds the fused
    kernels' limit (they run another path) are left out."""
    from fractions import Fraction

    from tritonbasis.op.geometry import MAX_BASIS_CHANNELS
    from tritonbasis.perf.bench import GROUPS

    out = {}
    for c in GROUPS[group]:
        for r in ratios:
            cb = c.c_b(Fraction(r))
            if cb > MAX_BASIS_CHANNELS:
                continue
            out[f"{c.name}.cb{cb}"] = Shape(
                N=c.N, C_in=c.C_in, H=c.H, W=c.W, C_out=c.C_out, C_b=cb, KH=c.k, KW=c.k,
                stride=c.stride, padding=c.padding, dilation=c.dilation, bias=False,
                keep_basis=True, channels_last=True)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _strides4(c: int, h: int, w: int, channels_last: bool) -> tuple[int, int, int, int]:
    """Strides of a dense (N, C, H, W) tensor, as torch gives them."""
    if channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def _block_cb(c_b: int) -> int:
    from tritonbasis.kernels import configs

    return configs.block_cb(c_b)


def launch_args(name: str, dtype: str = "bf16", shape: Shape = REPRESENTATIVE, arch: int = 90):
    """What ``tritonbasis.op.launchers`` passes to kernel ``name`` for ``shape``, minus the block
    sizes: ``(pointer_dtypes, int_values, constexprs)``, each keyed by argument name.

    Mirrors the launcher line by line (keep it in sync): activations and ``G`` follow x's
    memory format, dZ is always NHWC, the backward's partial-sum workspaces (grad_z's
    ``wsc_ptr`` / ``wsb_ptr``, wgrad's ``ws_ptr``, bwd_reduce's inputs) are fp32, and an unused
    pointer gets the tensor the launcher passes in its place. The backward kernels are compiled
    with every gradient requested. No output-channel permutation (``perm=None``): the perm
    pointers get the launcher's stand-ins and HAS_PERM is False. Entries for arguments a
    kernel does not have are ignored, so this tolerates kernels with or without those
    arguments."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    t = DTYPES[dtype]
    s = shape
    cl = s.channels_last
    precision = "tf32"  # fp32: TF32 as cudnn.allow_tf32 (the default); ignored for 16-bit
    geom = {
        "stride_h": s.stride, "stride_w": s.stride, "pad_h": s.padding, "pad_w": s.padding,
        "dil_h": s.dilation, "dil_w": s.dilation,
    }
    x_st = _strides4(s.C_in, s.H, s.W, cl)
    w_st = (s.C_in * s.KH * s.KW, s.KH * s.KW, s.KW, 1)  # basis (C_b, C_in, KH, KW)
    c_st = (s.C_b, 1)  # coeff (C_rest, C_b)
    y_st = _strides4(s.C_out, s.Ho, s.Wo, cl)
    dz_st = _strides4(s.C_b, s.Ho, s.Wo, True)

    if name in ("fwd", "fwd_reduce"):
        from tritonbasis.kernels import configs

        store_z = not s.keep_basis  # need_z (training) and the full form
        z_st = _strides4(s.C_b, s.Ho, s.Wo, cl) if store_z else (0, 0, 0, 0)
        # the launcher passes the basis with C_in contiguous: a (C_b, C_in, 1, 1) contiguous
        # basis as it is, any other one as a channels_last copy
        wk_st = (s.C_in, 1, 1, 1) if s.KH == s.KW == 1 else _strides4(s.C_in, s.KH, s.KW, True)
        split = configs.split_k(s.M, s.C_in, s.KH, s.KW, s.C_b, SMS.get(arch, 132))
        epi_ints = {
            "M": s.M, "M_KEY": configs.m_bucket(s.M), "C_b": s.C_b, "C_rest": s.C_rest,
            "Ho": s.Ho, "Wo": s.Wo,
            **dict(zip(("sc_o", "sc_b"), c_st)),
            **dict(zip(("sy_n", "sy_c", "sy_h", "sy_w"), y_st)),
            **dict(zip(("sz_n", "sz_c", "sz_h", "sz_w"), z_st)),
        }
        ptrs = {"x_ptr": t, "w_ptr": t, "c_ptr": t, "b_ptr": t, "p_ptr": t, "y_ptr": t,
                "z_ptr": t, "ws_ptr": "fp32" if split > 1 else t}
        ints = {
            **epi_ints, "C_in": s.C_in, "H": s.H, "W": s.W,
            **dict(zip(("sx_n", "sx_c", "sx_h", "sx_w"), x_st)),
            **dict(zip(("sw_o", "sw_c", "sw_h", "sw_w"), wk_st)),
            **geom,
        }
        const = {
            "KH": s.KH, "KW": s.KW, "HAS_BIAS": s.bias, "HAS_PERM": False,
            "KEEP_BASIS": s.keep_basis,
            "STORE_Z": store_z, "INT64": False, "PRECISION": precision,
            "SPLIT_K": split, "BLOCK_CB": _block_cb(s.C_b),
        }
        if name == "fwd_reduce":  # the split-K epilogue launch (compiled whatever SPLIT_K is)
            ptrs = {**ptrs, "ws_ptr": "fp32"}
            const = {**const, "SPLIT_K": max(split, 2)}
    elif name in ("grad_z", "grad_x", "wgrad", "bwd_reduce"):
        ptrs, ints, const = _backward_launch_args(name, t, s, arch, precision, geom,
                                                  x_st, w_st, c_st, y_st, dz_st)
    else:
        raise KeyError(f"unknown kernel {name!r}")
    return ptrs, ints, const


def _backward_launch_args(name, t, s, arch, precision, geom, x_st, w_st, c_st, y_st, dz_st):
    """launch_args of the v2 backward kernels (mirrors ``_triton.backward``: every gradient
    requested, bias as the shape says, no perm; keep in sync)."""
    import math

    def m_key(m):  # as _triton._m_key
        return 1 << max(0, int(m) - 1).bit_length()

    phases = s.stride * s.stride
    step = s.stride // math.gcd(s.stride, s.dilation)
    mp = s.N * _cdiv(s.H, s.stride) * _cdiv(s.W, s.stride)  # pixels of the largest phase
    lw = s.KH * s.KW * s.C_in * s.C_b
    bgeom = {**geom, "step_h": step, "step_w": step}
    if name == "grad_z":
        sms = SMS.get(arch, 132)
        p = max(1, min(_cdiv(s.M, 128), 4 * sms))
        chunk = _cdiv(_cdiv(s.M, p), 128) * 128
        p = _cdiv(s.M, chunk)
        z_st = y_st if s.keep_basis else _strides4(s.C_b, s.Ho, s.Wo, s.channels_last)
        ptrs = {"g_ptr": t, "c_ptr": t, "dz_ptr": t, "z_ptr": t, "b_ptr": t, "p_ptr": t,
                "wsc_ptr": "fp32", "wsb_ptr": "fp32", "w_ptr": t, "wt_ptr": t}
        ints = {
            "M": s.M, "M_KEY": m_key(s.M), "C_b": s.C_b, "C_rest": s.C_rest,
            "C_in": s.C_in, "KW": s.KW, "LW": lw, "CHUNK": chunk, "W_CHUNK": _cdiv(lw, p),
            "Ho": s.Ho, "Wo": s.Wo,
            **dict(zip(("sg_n", "sg_c", "sg_h", "sg_w"), y_st)),
            **dict(zip(("sc_o", "sc_b"), c_st)),
            **dict(zip(("sd_n", "sd_c", "sd_h", "sd_w"), dz_st)),
            **dict(zip(("sz_n", "sz_c", "sz_h", "sz_w"), z_st)),
            **dict(zip(("sw_o", "sw_c", "sw_h", "sw_w"), w_st)),
        }
        const = {
            "KEEP_BASIS": s.keep_basis, "STORE_DZ": True, "NEED_DC": s.C_rest > 0,
            "NEED_DBIAS": s.bias, "HAS_BIAS": s.bias, "HAS_PERM": False, "COPY_W": True,
            "INT64": False, "PRECISION": precision, "BLOCK_CB": _block_cb(s.C_b),
            "BLOCK_W": 512,
        }
    elif name in ("grad_x", "wgrad"):
        common = {
            "N": s.N, "M_KEY": m_key(mp), "C_in": s.C_in, "H": s.H, "W": s.W,
            "C_b": s.C_b, "Ho": s.Ho, "Wo": s.Wo,
            **dict(zip(("sd_n", "sd_c", "sd_h", "sd_w"), dz_st)), **bgeom,
        }
        const = {"KH": s.KH, "KW": s.KW, "INT64": False, "PRECISION": precision}
        if name == "grad_x":
            ptrs = {"dz_ptr": t, "wt_ptr": t, "dx_ptr": t}
            ints = {**common, **dict(zip(("sx_n", "sx_c", "sx_h", "sx_w"), x_st))}
        else:
            def axis_taps(K, st, p, d):
                return max(sum((ph + p - k * d) % st == 0 for k in range(K)) for ph in range(st))

            taps = (axis_taps(s.KH, s.stride, s.padding, s.dilation)
                    * axis_taps(s.KW, s.stride, s.padding, s.dilation))
            tiles = _cdiv(taps * s.C_b, 128) * _cdiv(s.C_in, 64) * phases
            split = max(1, min(_cdiv(2 * SMS.get(arch, 132), tiles), _cdiv(mp, 256)))
            ptrs = {"dz_ptr": t, "x_ptr": t, "ws_ptr": "fp32"}
            ints = {**common, "SPLIT": split,
                    **dict(zip(("sx_n", "sx_c", "sx_h", "sx_w"), x_st))}
    else:  # bwd_reduce: d basis (slices of wgrad), d coeff and d bias (rows of grad_z)
        ptrs = {"w1_ptr": "fp32", "o1_ptr": t, "w2_ptr": "fp32", "o2_ptr": t,
                "w3_ptr": "fp32", "o3_ptr": t}
        ints = {"S1": 4, "L1": lw, "S2": 256, "L2": s.C_rest * s.C_b, "S3": 256,
                "L3": s.C_out}
        const = {}
    return ptrs, ints, const


def prune_shape(shape: Shape = REPRESENTATIVE, dtype: str = "bf16", arch: int = 90) -> dict:
    """The argument dict ``configs.prune`` sees for ``shape`` (all kernels' keys), with the
    operand element size and layout that set its register budget, and the forward's split-K
    factor as the launcher picks it on a GPU with ``SMS[arch]`` SMs."""
    from tritonbasis.kernels import configs

    return {
        "C_in": shape.C_in, "C_rest": shape.C_rest, "C_b": shape.C_b, "CA": shape.C_b,
        "CX": shape.C_in, "BLOCK_CB": _block_cb(shape.C_b), "KH": shape.KH, "KW": shape.KW,
        "SPLIT_K": configs.split_k(shape.M, shape.C_in, shape.KH, shape.KW, shape.C_b,
                                   SMS.get(arch, 132)),
        "elem_bytes": 4 if dtype == "fp32" else 2, "nchw": not shape.channels_last,
    }


def kept_by_prune(name: str, cfg: dict, shape: Shape = REPRESENTATIVE,
                  dtype: str = "bf16") -> bool:
    """Whether the launcher's autotuner would consider ``cfg`` for this shape and dtype."""
    from tritonbasis.kernels import configs

    return cfg in configs.prune(name, list(configs.CONFIGS[name].values()),
                                prune_shape(shape, dtype))


def _jit_function(name: str):
    """The kernel as a JITFunction (re-wrapped if it was decorated for the interpreter).
    Re-wrapping alone does not make it compilable in an interpreted process -- triton's own
    helpers stay interpreted (:func:`_interpreted_process`) -- which is why compiles run in
    a clean worker there; this keeps :func:`build_source` usable for inspection anywhere."""
    from triton.runtime.jit import JITFunction
    from tritonbasis.kernels import KERNELS

    k = KERNELS[name]
    return k if isinstance(k, JITFunction) else JITFunction(k.fn)


def build_source(name: str, blocks: dict, dtype: str = "bf16", shape: Shape = REPRESENTATIVE,
                 arch: int = 90, specialize: bool = True):
    """``triton.compiler.ASTSource`` for ``name`` with ``blocks`` (the config's BLOCK_*).

    ``specialize=True`` applies JITFunction's launch-time specialisation (an int == 1 becomes a
    constexpr; 16-divisible ints and all pointers get tt.divisibility=16 -- torch allocations
    are 16-byte aligned); ``False`` gives every int plain ``i32`` and no attributes."""
    from triton.compiler import ASTSource

    fn = _jit_function(name)
    ptrs, ints, const = launch_args(name, dtype, shape, arch)
    const = {**const, **blocks}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        arg = p.name
        if p.is_constexpr:
            if arg not in const:
                raise KeyError(f"{name}: no value for constexpr {arg}")
            signature[arg], constexprs[arg] = "constexpr", const[arg]
        elif arg in ptrs:
            signature[arg] = "*" + ptrs[arg]
            if specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ints:
            v = int(ints[arg])
            if specialize and v == 1:
                signature[arg], constexprs[arg] = "constexpr", 1
                continue
            signature[arg] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if specialize and v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise KeyError(f"{name}: launch_args has no value for argument {arg}")
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _tool(name: str, arch: int | None = None) -> str:
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
    for tool, arch in (("ptxas", None), ("ptxas", 90), ("cuobjdump", None)):
        try:
            path = _tool(tool, arch)
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        except Exception as e:
            return False, f"triton's bundled {tool} is not usable: {e!r}"
    return True, ""


def _resource_usage(cubin: bytes, kernel_name: str) -> dict:
    """REG and STACK from ``cuobjdump --dump-resource-usage``; empty dict if unparsable.
    Its lines look like ``Function basis_conv_fwd_kernel:`` then
    ``REG:255 STACK:1464 SHARED:1024 LOCAL:0 CONSTANT[0]:720 ...``."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        try:
            out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                                 check=True, capture_output=True, text=True, timeout=120).stdout
        except Exception:
            return {}
    m = re.search(rf"Function {re.escape(kernel_name)}:\s*\n\s*(.*)", out)
    if not m:
        return {}
    fields = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", m.group(1)))
    return {k: int(v) for k, v in fields.items()}


def _ptxas_spills(ptx: str, arch: int) -> dict:
    """Spill bytes from ``ptxas -v`` on the kernel's PTX (same arch and register allocator flag
    as triton's own ptxas call). Empty dict if unparsable."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        gpu = sm_arch_from_capability(arch)
        cmd = [_tool("ptxas", arch), "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", src,
               "-o", os.path.join(d, "k.o")]
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


def config_name(name: str, cfg: dict) -> str:
    """The name of ``cfg`` in ``configs.CONFIGS[name]``, ``"FIXED"``, or ``"custom"``."""
    from tritonbasis.kernels import configs

    for n, c in configs.CONFIGS[name].items():
        if c == cfg:
            return n
    return "FIXED" if cfg == configs.FIXED[name] else "custom"


# The M extent of every tl.dot in each kernel (all of a kernel's dots share it): fwd's conv and
# epilogue dots are BLOCK_M x ..., wgrad's is BLOCK_A x BLOCK_X.
_DOT_M = {"fwd": "BLOCK_M", "fwd_reduce": "BLOCK_M", "grad_z": "BLOCK_M", "grad_x": "BLOCK_M",
          "wgrad": "BLOCK_A"}


def expected_tensor_core_instr(name: str, config: dict, arch: int) -> str:
    """The MMA instruction Triton should emit for ``config``: on sm_90 ``wgmma`` when the tile
    allows it, else ``mma.sync``; ``mma.sync`` on sm_80.

    Triton's AccelerateMatmul uses MMAv3 (wgmma) only if ``num_warps % 4 == 0`` and the dot's
    M extent is a multiple of 64 (one warpgroup = 4 warps owns 64 rows); otherwise it falls back
    to MMAv2 (mma.sync), which Hopper also runs, at lower throughput. All N/K blocks here are
    powers of two >= 16, which satisfies its other (N % 8 or 16, K) conditions."""
    if arch >= 90 and config["num_warps"] % 4 == 0 and config["blocks"][_DOT_M[name]] % 64 == 0:
        return "wgmma"
    return "mma.sync"


def _tensor_core_instr(ptx: str) -> str | None:
    if re.search(r"\bwgmma\.mma_async", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma.sync"
    return None


def _wgmma_shapes(ptx: str) -> list[str]:
    """The distinct wgmma instruction shapes in the PTX, e.g. ``["m64n128k16"]``."""
    return sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))


def _loop_facts(ttgir: str) -> dict:
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


def _interpreted_process() -> bool:
    """True when this process decorated triton's ``@jit`` functions for the interpreter
    (TRITON_INTERPRET=1 when triton was imported).

    Then not only our kernels but also triton.language's own ``@jit`` helpers (``tl.zeros``,
    ``tl.cdiv`` in triton 3.8) are ``InterpretedFunction`` objects. Re-wrapping our kernels as
    ``JITFunction`` is not enough: the code generator calls the interpreted helper as plain
    Python, which patches triton.language for the interpreter (not restored) and the compile
    fails ("'ir.value' object has no attribute 'dtype'"). Such a process compiles in a clean
    worker process instead (:class:`_Worker`)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction
    from tritonbasis.kernels import KERNELS

    return not isinstance(tl.zeros, JITFunction) or not all(
        isinstance(k, JITFunction) for k in KERNELS.values()
    )


class CompileError(RuntimeError):
    """A compile that failed in a worker process (the message carries the worker's error)."""


class _Worker:
    """One ``python tools/aot.py --worker`` process, TRITON_INTERPRET removed from its
    environment: one JSON job per line on stdin, one JSON result per line on stdout.
    A subprocess rather than multiprocessing: spawn would re-import the caller's ``__main__``
    and fork would inherit the interpreted triton."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
            text=True, bufsize=1,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def call(self, job: dict) -> dict:
        job = {**job, "shape": dataclasses.asdict(job.get("shape", REPRESENTATIVE))}
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self.proc.wait(timeout=60)
            raise CompileError(f"compile worker exited with {self.proc.returncode}:\n"
                               f"{self._stderr_tail()}")
        msg = json.loads(line)
        if "error" in msg:
            raise CompileError(msg["error"])
        return msg["report"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


_WORKERS: list[_Worker] = []


def _workers(n: int) -> list[_Worker]:
    """``n`` live worker processes, started on first use and reused."""
    _WORKERS[:] = [w for w in _WORKERS if w.alive()]
    while len(_WORKERS) < n:
        _WORKERS.append(_Worker())
    return _WORKERS[:n]


def shutdown_workers() -> None:
    """End the worker processes this module started (if any); also run at exit."""
    while _WORKERS:
        _WORKERS.pop().close()


atexit.register(shutdown_workers)


def _worker_main() -> None:
    """The worker's loop (``python tools/aot.py --worker``)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever triton prints must not corrupt the protocol
    for line in sys.stdin:
        job = json.loads(line)
        try:
            job["shape"] = Shape(**job["shape"])
            msg = {"report": _compile_here(**job)}
        except Exception as e:
            msg = {"error": f"{type(e).__name__}: {e}"[:8000]}
        out.write(json.dumps(msg) + "\n")
        out.flush()


def compile_kernel(name: str, config: dict, dtype: str = "bf16", arch: int = 90,
                   shape: Shape = REPRESENTATIVE, cfg_name: str | None = None,
                   specialize: bool = True, keep_asm: bool = False) -> dict:
    """Compile kernel ``name`` with ``config`` (``{"blocks", "num_warps", "num_stages"}``) for
    ``sm_<arch>`` and return a report dict. Raises if triton fails to compile.

    Works in a process running the interpreter (TRITON_INTERPRET=1, e.g. the test session
    without CUDA): the compile then runs in a clean worker process (see
    :func:`_interpreted_process`).

    Report keys: kernel, config, arch, dtype, precision, num_warps, num_stages, blocks,
    shared_bytes, shared_limit, fits_shared, registers (None if undeterminable),
    stack_bytes, spill_store_bytes / spill_load_bytes / spills (bytes; None if undeterminable),
    fits_registers, tensor_core_instr (``"wgmma"`` if the PTX has wgmma.mma_async, else
    ``"mma.sync"`` if it has mma.sync, else None), uses_tensor_cores (either), and
    expected_tensor_core_instr (see :func:`expected_tensor_core_instr`), compile_seconds (wall
    time of triton.compile; small on a hit in triton's on-disk cache), shape.
    ``registers`` cannot exceed 255 (ptxas spills instead): ``spills`` is the number to watch."""
    job = {"name": name, "config": dict(config), "dtype": dtype, "arch": arch, "shape": shape,
           "cfg_name": cfg_name, "specialize": specialize, "keep_asm": keep_asm}
    if _interpreted_process():
        return _workers(1)[0].call(job)
    return _compile_here(**job)


def _compile_here(name: str, config: dict, dtype: str = "bf16", arch: int = 90,
                  shape: Shape = REPRESENTATIVE, cfg_name: str | None = None,
                  specialize: bool = True, keep_asm: bool = False) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    if arch not in SHARED_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)}, got {arch}")
    if _interpreted_process():
        raise RuntimeError("cannot compile in a process that imported triton under "
                           "TRITON_INTERPRET=1; use compile_kernel (it uses a clean worker)")
    src = build_source(name, dict(config["blocks"]), dtype, shape, arch, specialize)
    opts = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    t0 = time.perf_counter()
    with knobs.runtime.scope():
        knobs.runtime.interpret = False  # in case only the knob (not the decoration) is set
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    seconds = time.perf_counter() - t0

    ptx = compiled.asm["ptx"]
    kname = compiled.metadata.name
    usage = _resource_usage(compiled.asm["cubin"], kname)
    registers = usage.get("REG")
    stack = usage.get("STACK")
    spill_st = spill_ld = None
    if stack == 0:
        spill_st = spill_ld = 0  # no stack frame: nothing spilled
    else:  # spilled or cuobjdump unparsable: ask ptxas for the numbers
        info = _ptxas_spills(ptx, arch)
        spill_st, spill_ld = info.get("spill_store_bytes"), info.get("spill_load_bytes")
        if registers is None:
            registers = info.get("registers")
    shared = int(compiled.metadata.shared)
    instr = _tensor_core_instr(ptx)
    loops = _loop_facts(compiled.asm.get("ttgir", ""))
    report = {
        "kernel": name,
        "config": cfg_name or config_name(name, config),
        "arch": arch,
        "dtype": dtype,
        "precision": "tf32" if dtype == "fp32" else dtype,
        "num_warps": config["num_warps"],
        "num_stages": config["num_stages"],
        "blocks": dict(config["blocks"]),
        "shared_bytes": shared,
        "shared_limit": SHARED_LIMIT[arch],
        "fits_shared": shared <= SHARED_LIMIT[arch],
        "registers": registers,
        "stack_bytes": stack,
        "spill_store_bytes": spill_st,
        "spill_load_bytes": spill_ld,
        "spills": None if spill_st is None or spill_ld is None else spill_st + spill_ld,
        "fits_registers": None if registers is None else registers <= MAX_REGISTERS,
        "tensor_core_instr": instr,
        "uses_tensor_cores": instr is not None,
        "expected_tensor_core_instr": expected_tensor_core_instr(name, config, arch),
        "wgmma_shapes": _wgmma_shapes(ptx),
        "async_copies": bool(re.search(r"\bcp\.async\b", ptx)),
        **loops,
        "compile_seconds": round(seconds, 3),
        "shape": dataclasses.asdict(shape),
    }
    if keep_asm:
        report["ptx"] = ptx
    return report


def all_configs(name: str) -> dict[str, dict]:
    """Every named config of ``name`` plus ``FIXED``, in order."""
    from tritonbasis.kernels import configs

    return {**configs.CONFIGS[name], "FIXED": configs.FIXED[name]}


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _error_report(job: dict, e: BaseException) -> dict:
    return {"kernel": job["name"], "config": job.get("cfg_name") or "custom",
            "arch": job.get("arch", 90), "dtype": job.get("dtype", "bf16"),
            "error": f"{type(e).__name__}: {str(e)[:2000]}"}


def compile_many(jobs: list[dict], workers: int | None = None, progress=None) -> list[dict]:
    """Run :func:`compile_kernel` for each job (a dict of its keyword arguments: name, config,
    and optionally dtype, arch, shape, cfg_name, specialize, keep_asm) in ``workers`` worker
    processes (default: one per CPU; each compile is single-threaded). Returns the reports in
    job order; a job that fails gets ``{"kernel", "config", "arch", "dtype", "error"}`` instead
    of stopping the rest. ``progress(report)`` is called as each one finishes.
    ``workers=1`` in a process not running the interpreter compiles in this process."""
    import queue
    from concurrent.futures import ThreadPoolExecutor, as_completed

    jobs = [{**job, "config": dict(job["config"])} for job in jobs]
    reports: list = [None] * len(jobs)
    if workers == 1 and not _interpreted_process():
        for i, job in enumerate(jobs):
            try:
                reports[i] = _compile_here(**job)
            except Exception as e:
                reports[i] = _error_report(job, e)
            if progress is not None:
                progress(reports[i])
        return reports

    idle: queue.Queue = queue.Queue()
    for w in _workers(min(workers or _default_workers(), max(1, len(jobs)))):
        idle.put(w)

    def run(i: int) -> dict:
        w = idle.get()
        try:
            return w.call(jobs[i])
        except Exception as e:
            return _error_report(jobs[i], e)
        finally:
            # A worker that died (compiler crash) is replaced, so the rest still run.
            idle.put(w if w.alive() else _Worker())

    with ThreadPoolExecutor(idle.qsize()) as ex:
        futures = {ex.submit(run, i): i for i in range(len(jobs))}
        for fut in as_completed(futures):
            reports[futures[fut]] = fut.result()
            if progress is not None:
                progress(reports[futures[fut]])
    return reports


def all_jobs(archs=ARCHS, dtypes=("bf16",), kernels=None, shape: Shape = REPRESENTATIVE):
    """Jobs for :func:`compile_many`: every kernel x config (``CONFIGS`` + ``FIXED``) x arch x
    dtype."""
    from tritonbasis.kernels.configs import CONFIGS

    return [
        {"name": name, "config": cfg, "cfg_name": cname, "arch": arch, "dtype": dtype,
         "shape": shape}
        for name in (kernels or CONFIGS)
        for cname, cfg in all_configs(name).items()
        for arch in archs
        for dtype in dtypes
    ]


def compile_all(archs=ARCHS, dtypes=("bf16",), kernels=None, shape: Shape = REPRESENTATIVE,
                workers: int | None = None, progress=None) -> list[dict]:
    """Reports for every kernel x config (``CONFIGS`` + ``FIXED``) x arch x dtype, compiled in
    ``workers`` processes. A config that fails to compile gets a report with ``error`` set
    instead of stopping the sweep."""
    return compile_many(all_jobs(archs, dtypes, kernels, shape), workers, progress)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:
        sys.exit("usage: python tools/aot.py --worker  (see tools/compile_report.py)")
