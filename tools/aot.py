"""Ahead-of-time compile tier: compile every kernel x autotune config for sm_90 / sm_80 without
a GPU, and report what the hardware limits care about (registers, spills, shared memory,
tensor-core instructions).

``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline (TTIR -> TTGIR -> LLIR
-> PTX -> cubin with the ptxas bundled in triton) on a machine without CUDA. Each kernel is
compiled for a *representative shape* (:class:`Shape`, ResNet-like by default: 3x3, C_in =
C_out = 64, C_b = 32, 56x56, channels_last, bias, keep-basis form) with exactly the arguments
the launchers would launch it with: :func:`kernel_launch` runs the launchers' own plan
(:mod:`tritonbasis.op.launch_plan`: allocations, workspaces, one argument builder per kernel)
on meta tensors of that shape, so nothing here re-lists a kernel's arguments. The signature is
specialised the way ``JITFunction`` specialises a real launch (an int equal to 1 becomes a
constexpr, pointers and ints divisible by 16 get ``tt.divisibility = 16``), so the PTX is the
one a launch of that shape would run, not a generic variant.

Numbers come from the cubin (:mod:`aot_toolchain`): registers per thread and stack frame from
``cuobjdump --dump-resource-usage``; when the stack frame is non-zero (Triton kernels have no
local arrays, so a stack frame means spilling) the spill bytes from ``ptxas -v`` on the same
PTX. Shared memory is ``metadata.shared`` (the dynamic shared memory the launch asks for).

A process running the Triton interpreter (TRITON_INTERPRET=1, as the test session does
without CUDA) cannot compile: triton.language's own ``@jit`` helpers are interpreted there too
(see :func:`_interpreted_process`). :func:`compile_kernel` then hands the work to a worker
process (:mod:`aot_workers`: ``python tools/aot.py --worker``) started without that variable;
:func:`compile_many` / :func:`compile_all` use one worker per CPU in any process.

Every triton import in this module is inside a function.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

import aot_toolchain as tc
import aot_workers
import kernel_counts
from aot_toolchain import toolchain_available  # noqa: F401  (part of this module's API)
from aot_workers import CompileError, shutdown_workers  # noqa: F401

# Dynamic shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# H100 (sm_90) 227 KiB, A100 (sm_80) 163 KiB.
SHARED_LIMIT = {90: 232448, 80: 166912}
MAX_REGISTERS = 255  # per thread, every arch since sm_35
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
ARCHS = (90, 80)
# Number of SMs the launch plan assumes per arch (the launchers read it from the device):
# it sets the forward's split-K, grad_z's program count and the wgrad split.
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
                N=c.N,
                C_in=c.C_in,
                H=c.H,
                W=c.W,
                C_out=c.C_out,
                C_b=cb,
                KH=c.k,
                KW=c.k,
                stride=c.stride,
                padding=c.padding,
                dilation=c.dilation,
                bias=False,
                keep_basis=True,
                channels_last=True,
            )
    return out


def _jit_function(name: str):
    """The kernel as a JITFunction (re-wrapped if it was decorated for the interpreter).
    Re-wrapping alone does not make it compilable in an interpreted process -- triton's own
    helpers stay interpreted (:func:`_interpreted_process`) -- which is why compiles run in
    a clean worker there; this keeps :func:`build_source` usable for inspection anywhere."""
    from triton.runtime.jit import JITFunction
    from tritonbasis.kernels import RECORDS

    k = RECORDS[name].fn
    return k if isinstance(k, JITFunction) else JITFunction(k.fn)


# --------------------------------------------------------------------------------------------
# The launchers' arguments for a shape (the launch plan on meta tensors)


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _meta_inputs(shape: Shape, dtype: str):
    """``(x, basis, coeff, bias, geometry)`` of ``shape`` as meta tensors: x in the shape's
    memory format, the basis and coeff as parameters are (contiguous), no perm."""
    import torch

    from tritonbasis.op.geometry import check_inputs

    s = shape
    meta = {"dtype": _torch_dtype(dtype), "device": "meta"}
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    x = torch.empty((s.N, s.C_in, s.H, s.W), memory_format=fmt, **meta)
    basis = torch.empty((s.C_b, s.C_in, s.KH, s.KW), **meta)
    coeff = torch.empty((s.C_rest, s.C_b), **meta)
    bias = torch.empty((s.C_out,), **meta) if s.bias else None
    g = check_inputs(x, basis, coeff, bias, s.stride, s.padding, s.dilation, s.keep_basis)
    return x, basis, coeff, bias, g


def kernel_launch(name: str, dtype: str = "bf16", shape: Shape = REPRESENTATIVE, arch: int = 90):
    """The :class:`tritonbasis.op.launch_plan.Launch` of kernel ``name`` that the launchers
    build for ``shape`` on a GPU with ``SMS[arch]`` SMs: the forward in training (the full
    form saves Z), the backward with every gradient requested (d bias if the shape has a
    bias), no output-channel permutation. ``fwd_reduce`` is built with split-K >= 2 even where
    the shape does not split (it is compiled for every shape)."""
    from tritonbasis.op import launch_plan

    x, basis, coeff, bias, g = _meta_inputs(shape, dtype)
    sms = SMS.get(arch, 132)
    split = None
    if name == "fwd_reduce":
        split = max(2, launch_plan.fwd_split_k(g.pixels, g.C_in, g.KH, g.KW, g.C_b, sms))
    variant = name if _record(name).variant_of == "fwd" else "fwd"
    launches, (out, z) = launch_plan.plan_forward(
        x, basis, coeff, bias, None, g, True, sms, split=split, variant=variant
    )
    if name not in ("fwd", "fwd_reduce") and variant == "fwd":
        import torch

        grad = torch.empty_like(out)
        mask = (True, True, True, bias is not None)
        launches, _ = launch_plan.plan_backward(
            grad, x, basis, coeff, out, z, bias, None, g, mask, sms
        )
    for lc in launches:
        if lc.kernel == name:
            return lc
    raise KeyError(f"unknown kernel {name!r} (the plans launch {[lc.kernel for lc in launches]})")


def _named(name: str, lc) -> dict:
    """The launch's runtime arguments by kernel parameter name (constexprs come last in every
    kernel's signature, so the positional arguments are its first parameters)."""
    params = [p for p in _jit_function(name).params if not p.is_constexpr]
    if len(params) != len(lc.args):
        raise ValueError(
            f"{name}: the plan passes {len(lc.args)} arguments, the kernel has "
            f"{len(params)} runtime parameters"
        )
    return {p.name: a for p, a in zip(params, lc.args)}


_PTR_DTYPES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "int64": "i64",
    "int32": "i32",
}


def launch_args(name: str, dtype: str = "bf16", shape: Shape = REPRESENTATIVE, arch: int = 90):
    """What the launchers pass to kernel ``name`` for ``shape``, minus the block sizes:
    ``(pointer_dtypes, int_values, constexprs)``, each keyed by argument name, from
    :func:`kernel_launch` (pointer dtypes in triton's spelling: ``bf16``, ``fp32``, ...)."""
    import torch

    lc = kernel_launch(name, dtype, shape, arch)
    ptrs, ints = {}, {}
    for arg, v in _named(name, lc).items():
        if isinstance(v, torch.Tensor):
            ptrs[arg] = _PTR_DTYPES[str(v.dtype).removeprefix("torch.")]
        else:
            ints[arg] = int(v)
    return ptrs, ints, dict(lc.consts)


def prune_shape(
    shape: Shape = REPRESENTATIVE, dtype: str = "bf16", arch: int = 90, kernel: str = "fwd"
) -> dict:
    """What ``configs.prune`` sees for kernel ``kernel``'s launch at ``shape`` on ``sm_<arch>``
    (its arguments by name, the layout operand's element size and NCHW-ness, ``arch``: what
    the launchers' autotuner passes it, :func:`tritonbasis.op.launchers.prune_input`). The
    default, the forward's, also holds the keys the other kernels' pruning reads at the same shape
    (C_in, C_b, C_rest, BLOCK_CB, KH, KW) and the forward's split-K factor (``SPLIT_K``)."""
    from tritonbasis.op.launchers import prune_input

    lc = kernel_launch(kernel, dtype, shape, arch)
    named = {**_named(kernel, lc), **lc.consts}
    if kernel != "fwd":  # grad_x / wgrad / grad_z launches lack some of these
        fwd = kernel_launch("fwd", dtype, shape, arch)
        named = {
            **{
                k: v
                for k, v in {**_named("fwd", fwd), **fwd.consts}.items()
                if k in ("C_in", "C_b", "C_rest", "KH", "KW", "BLOCK_CB", "SPLIT_K")
            },
            **named,
        }
    return prune_input(kernel, named, arch)


def kept_by_prune(
    name: str, cfg: dict, shape: Shape = REPRESENTATIVE, dtype: str = "bf16", arch: int = 90
) -> bool:
    """Whether the launcher's autotuner would consider ``cfg`` for this shape and dtype."""
    from tritonbasis.kernels import configs

    return cfg in configs.prune(
        name, list(configs.RECORDS[name].configs.values()), prune_shape(shape, dtype, arch, name)
    )


def build_source(
    name: str,
    blocks: dict,
    dtype: str = "bf16",
    shape: Shape = REPRESENTATIVE,
    arch: int = 90,
    specialize: bool = True,
):
    """``triton.compiler.ASTSource`` for ``name`` with ``blocks`` (the config's BLOCK_*).

    ``specialize=True`` applies JITFunction's launch-time specialisation (an int == 1 becomes a
    constexpr; 16-divisible ints and all pointers get tt.divisibility=16 -- torch allocations
    are 16-byte aligned); ``False`` gives every int plain ``i32`` and no divisibility.

    The specialisation (one ``(type, key)`` pair per parameter, as the runtime binder makes
    it) is packed by the kernel's own ``JITFunction._pack_args``, so the source carries the
    attributes exactly as a launch does: an empty entry for every int that is not
    16-divisible, and for constexprs as the installed Triton wants them (Triton 3.6 gives a
    string constexpr an empty entry, Triton 3.9 every constexpr). The source hash, and so the
    on-disk cache key, is then the runtime's: a cache filled by the compile tier is hit by
    the launchers (tests/kernels/test_compile_tier.py compares the two keys)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    fn = _jit_function(name)
    ptrs, ints, const = launch_args(name, dtype, shape, arch)
    const = {**const, **blocks}
    spec, bound = [], {}
    for p in fn.params:
        arg = p.name
        if p.is_constexpr:
            if arg not in const:
                raise KeyError(f"{name}: no value for constexpr {arg}")
            spec.append(("constexpr", const[arg]))
            bound[arg] = const[arg]
        elif arg in ptrs:
            spec.append(("*" + ptrs[arg], "D" if specialize else ""))
            bound[arg] = None
        else:
            v = ints[arg]
            bound[arg] = v
            if specialize and v == 1:
                spec.append(("constexpr", 1))
                continue
            ty = "i32" if -(2**31) <= v < 2**31 else "i64"
            spec.append((ty, "D" if specialize and v % 16 == 0 else ""))
    backend = make_backend(GPUTarget("cuda", arch, 32))
    _, signature, constexprs, attrs = fn._pack_args(backend, {}, bound, spec, None)
    return _source_class(fn)(fn, signature, constexprs, attrs)


def _source_class(fn):
    """``ASTSource``, or Gluon's subclass for a ``@gluon.jit`` kernel (its IR is TTGIR)."""
    from triton.compiler import ASTSource

    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource

        return GluonASTSource
    return ASTSource


def cache_key(
    name: str, config: dict, dtype: str = "bf16", shape: Shape = REPRESENTATIVE, arch: int = 90
) -> str:
    """The on-disk cache key (``triton.compile``'s) of this compile tier's source for kernel
    ``name`` with ``config`` at ``shape``: the folder ``~/.triton/cache/<key>`` it fills."""
    return _key(
        build_source(name, dict(config["blocks"]), dtype, shape, arch),
        arch,
        {"num_warps": config["num_warps"], "num_stages": config["num_stages"]},
    )


def runtime_cache_key(
    name: str, config: dict, dtype: str = "bf16", shape: Shape = REPRESENTATIVE, arch: int = 90
) -> str:
    """The cache key a launch of kernel ``name`` with ``config`` at ``shape`` computes: the
    launch plan's arguments through the kernel's runtime binder and ``_pack_args`` (what
    ``JITFunction.run`` does before ``triton.compile``), with the meta tensors standing in
    for the real ones (16-byte aligned, as torch allocations are)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = _jit_function(name)
    lc = kernel_launch(name, dtype, shape, arch)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {
        **lc.consts,
        **config["blocks"],
        "num_warps": config["num_warps"],
        "num_stages": config["num_stages"],
        "debug": False,
        "instrumentation_mode": knobs.compilation.instrumentation_mode,
    }
    bound, spec, options = binder(*lc.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    return _key(_source_class(fn)(fn, signature, constexprs, attrs), arch, options.__dict__)


def _key(src, arch: int, options: dict) -> str:
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.cache import get_cache_key

    backend = make_backend(GPUTarget("cuda", arch, 32))
    opts = backend.parse_options(dict(options, **src.parse_options()))
    return get_cache_key(src, backend, opts, get_cache_invalidating_env_vars())


def config_name(name: str, cfg: dict) -> str:
    """The name of ``cfg`` among kernel ``name``'s record configs, ``"FIXED"``, or
    ``"custom"``."""
    from tritonbasis.kernels import RECORDS

    rec = RECORDS[name]
    for n, c in rec.configs.items():
        if c == cfg:
            return n
    return "FIXED" if cfg == rec.fixed else "custom"


def _record(name: str):
    from tritonbasis.kernels import RECORDS

    return RECORDS[name]


def _interpreted_process() -> bool:
    """True when this process decorated triton's ``@jit`` functions for the interpreter
    (TRITON_INTERPRET=1 when triton was imported).

    Then not only our kernels but also triton.language's own ``@jit`` helpers (``tl.zeros``,
    ``tl.cdiv`` in triton 3.8) are ``InterpretedFunction`` objects. Re-wrapping our kernels as
    ``JITFunction`` is not enough: the code generator calls the interpreted helper as plain
    Python, which patches triton.language for the interpreter (not restored) and the compile
    fails ("'ir.value' object has no attribute 'dtype'"). Such a process compiles in a clean
    worker process instead (:class:`aot_workers.Worker`)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction
    from tritonbasis.kernels import RECORDS

    return not isinstance(tl.zeros, JITFunction) or not all(
        isinstance(r.fn, JITFunction) for r in RECORDS.values()
    )


def compile_kernel(
    name: str,
    config: dict,
    dtype: str = "bf16",
    arch: int = 90,
    shape: Shape = REPRESENTATIVE,
    cfg_name: str | None = None,
    specialize: bool = True,
    keep_asm: bool = False,
    counts: bool = False,
) -> dict:
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
    time of triton.compile; small on a hit in triton's on-disk cache), shape, load_kinds, and
    with ``counts`` main_loop (:func:`_main_loop`: SASS and PTX counts of the main loop; a
    cuobjdump pass more, so only on request).
    ``registers`` cannot exceed 255 (ptxas spills instead): ``spills`` is the number to watch."""
    job = {
        "name": name,
        "config": dict(config),
        "dtype": dtype,
        "arch": arch,
        "shape": shape,
        "cfg_name": cfg_name,
        "specialize": specialize,
        "keep_asm": keep_asm,
        "counts": counts,
    }
    if _interpreted_process():
        return aot_workers.workers(1)[0].call(job)
    return _compile_here(**job)


def _compile_here(
    name: str,
    config: dict,
    dtype: str = "bf16",
    arch: int = 90,
    shape: Shape = REPRESENTATIVE,
    cfg_name: str | None = None,
    specialize: bool = True,
    keep_asm: bool = False,
    counts: bool = False,
) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    if arch not in SHARED_LIMIT:
        raise ValueError(f"arch must be one of {sorted(SHARED_LIMIT)}, got {arch}")
    if _interpreted_process():
        raise RuntimeError(
            "cannot compile in a process that imported triton under "
            "TRITON_INTERPRET=1; use compile_kernel (it uses a clean worker)"
        )
    src = build_source(name, dict(config["blocks"]), dtype, shape, arch, specialize)
    opts = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    t0 = time.perf_counter()
    with knobs.runtime.scope():
        knobs.runtime.interpret = False  # in case only the knob (not the decoration) is set
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    seconds = time.perf_counter() - t0

    ptx = compiled.asm["ptx"]
    kname = compiled.metadata.name
    usage = tc.resource_usage(compiled.asm["cubin"], kname)
    registers = usage.get("REG")
    stack = usage.get("STACK")
    spill_st = spill_ld = None
    if stack == 0:
        spill_st = spill_ld = 0  # no stack frame: nothing spilled
    else:  # spilled or cuobjdump unparsable: ask ptxas for the numbers
        info = tc.ptxas_spills(ptx, arch)
        spill_st, spill_ld = info.get("spill_store_bytes"), info.get("spill_load_bytes")
        if registers is None:
            registers = info.get("registers")
    shared = int(compiled.metadata.shared)
    instr = tc.tensor_core_instr(ptx)
    loops = tc.loop_facts(compiled.asm.get("ttgir", ""))
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
        "expected_tensor_core_instr": tc.expected_tensor_core_instr(
            _record(name).dot_m, config, arch
        ),
        "wgmma_shapes": tc.wgmma_shapes(ptx),
        "async_copies": bool(re.search(r"\bcp\.async\b", ptx)),
        # global loads by kind, whole kernel (PTX): cp.async (16-byte copies to shared), plain
        # ld.global (.ca: L1-cached), TMA tensor copies
        "load_kinds": {
            "cp.async": len(re.findall(r"\bcp\.async\.c[ag]\.shared\.global", ptx)),
            "ld.global": len(re.findall(r"\bld\.global\b", ptx)),
            "ld.global.ca": len(re.findall(r"\bld\.global\.ca\b", ptx)),
            "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx)),
        },
        **loops,
        "main_loop": _main_loop(name, compiled, config, shape) if counts else None,
        "compile_seconds": round(seconds, 3),
        "shape": dataclasses.asdict(shape),
    }
    if keep_asm:
        report["ptx"] = ptx
    return report


def _main_loop(name: str, compiled, config: dict, shape: Shape) -> dict | None:
    """The main loop's counts (``kernel_counts``): SASS instructions per wgmma, and the bytes
    loaded from global per iteration and per C_in block (activations, other), or None."""
    counts = kernel_counts.sass_main_loop(tc.sass(compiled.asm["cubin"]))
    loads = kernel_counts.ptx_loop_loads(compiled.asm["ptx"], 32 * config["num_warps"])
    if counts is None and loads is None:
        return None
    it = _record(name).iteration
    per_cblock = None
    if loads is not None and it in ("tap", "cblock"):
        n = shape.KH * shape.KW if it == "tap" else 1
        per_cblock = {k: loads[k] * n for k in ("activations", "other")}
    return {
        **(counts or {}),
        "iteration": it,
        "loads_per_iteration": loads,
        "loads_per_cblock": per_cblock,
    }


def all_configs(name: str) -> dict[str, dict]:
    """Every named config of kernel ``name``'s record plus its fixed one (``"FIXED"``)."""
    from tritonbasis.kernels import RECORDS

    return {**RECORDS[name].configs, "FIXED": RECORDS[name].fixed}


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _error_report(job: dict, e: BaseException) -> dict:
    return {
        "kernel": job["name"],
        "config": job.get("cfg_name") or "custom",
        "arch": job.get("arch", 90),
        "dtype": job.get("dtype", "bf16"),
        "error": f"{type(e).__name__}: {str(e)[:2000]}",
    }


def compile_many(jobs: list[dict], workers: int | None = None, progress=None) -> list[dict]:
    """Run :func:`compile_kernel` for each job (a dict of its keyword arguments: name, config,
    and optionally dtype, arch, shape, cfg_name, specialize, keep_asm, counts) in ``workers`` worker
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
    for w in aot_workers.workers(min(workers or _default_workers(), max(1, len(jobs)))):
        idle.put(w)

    def run(i: int) -> dict:
        w = idle.get()
        try:
            return w.call(jobs[i])
        except Exception as e:
            return _error_report(jobs[i], e)
        finally:
            # A worker that died (compiler crash) is replaced, so the rest still run.
            idle.put(w if w.alive() else aot_workers.Worker())

    with ThreadPoolExecutor(idle.qsize()) as ex:
        futures = {ex.submit(run, i): i for i in range(len(jobs))}
        for fut in as_completed(futures):
            reports[futures[fut]] = fut.result()
            if progress is not None:
                progress(reports[futures[fut]])
    return reports


def all_jobs(archs=ARCHS, dtypes=("bf16",), kernels=None, shape: Shape = REPRESENTATIVE):
    """Jobs for :func:`compile_many`: every autotuned kernel (or ``kernels``) x config (its
    record's configs + fixed) x arch x dtype."""
    from tritonbasis.kernels import RECORDS

    autotuned = [n for n, r in RECORDS.items() if r.configs and r.variant_of is None]

    return [
        {
            "name": name,
            "config": cfg,
            "cfg_name": cname,
            "arch": arch,
            "dtype": dtype,
            "shape": shape,
        }
        for name in (kernels or autotuned)
        for cname, cfg in all_configs(name).items()
        for arch in archs
        for dtype in dtypes
    ]


def compile_all(
    archs=ARCHS,
    dtypes=("bf16",),
    kernels=None,
    shape: Shape = REPRESENTATIVE,
    workers: int | None = None,
    progress=None,
) -> list[dict]:
    """Reports for every kernel x config (record configs + fixed) x arch x dtype, compiled in
    ``workers`` processes. A config that fails to compile gets a report with ``error`` set
    instead of stopping the sweep."""
    return compile_many(all_jobs(archs, dtypes, kernels, shape), workers, progress)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        aot_workers.serve(_compile_here, Shape)
    else:
        sys.exit("usage: python tools/aot.py --worker  (see tools/compile_report.py)")
