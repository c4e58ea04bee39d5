"""Triton kernels of tritonbasis (installed as ``tritonbasis.kernels``).

Only ``@triton.jit`` kernels and their autotune configs (as named data) live here; the
launchers that allocate, build the grids and the kernels' arguments are in
``tritonbasis/op/launchers.py``. Importing this package imports triton; ``tritonbasis`` itself
imports it lazily, so the package works without triton (CPU path).

Under ``TRITON_INTERPRET=1`` these are interpreted functions, and so are triton's own
``@jit`` helpers (``tl.zeros``, ``tl.cdiv``): a process cannot both interpret and compile them,
so the compile tier (``tools/aot.py``) compiles in worker processes started without it.
"""

from .backward import (
    basis_conv_grad_x_kernel,
    basis_conv_grad_z_kernel,
    basis_conv_wgrad_kernel,
    bwd_reduce_kernel,
)
from .forward import basis_conv_fwd_kernel, basis_conv_fwd_reduce_kernel

# One entry per kernel: name -> @jit function (configs.CONFIGS / FIXED / KEYS use the same names;
# tools/aot.py compiles every entry).
KERNELS = {
    "fwd": basis_conv_fwd_kernel,
    "fwd_reduce": basis_conv_fwd_reduce_kernel,  # second launch of a split-K forward
    "grad_z": basis_conv_grad_z_kernel,
    "grad_x": basis_conv_grad_x_kernel,
    "wgrad": basis_conv_wgrad_kernel,
    # no autotune configs (a memory-bound sum): launched with FIXED["bwd_reduce"] only
    "bwd_reduce": bwd_reduce_kernel,
}

__all__ = [
    "KERNELS",
    "basis_conv_fwd_kernel",
    "basis_conv_fwd_reduce_kernel",
    "basis_conv_grad_x_kernel",
    "basis_conv_grad_z_kernel",
    "basis_conv_wgrad_kernel",
    "bwd_reduce_kernel",
]
