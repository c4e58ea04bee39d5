"""Triton kernels of tritonbasis (installed as ``tritonbasis.kernels``).

Only kernels and their records live here (``configs.RECORDS``: one per kernel, with its
autotune configs, key, pruning and argument-builder name); the launchers that allocate, build
the grids and the kernels' arguments are in ``tritonbasis/op/launchers.py`` and
``tritonbasis/op/launch_plan.py``. Importing this package imports triton; ``tritonbasis``
itself imports it lazily, so the package works without triton (CPU path).

Under ``TRITON_INTERPRET=1`` the ``@triton.jit`` kernels are interpreted functions, and so are
triton's own ``@jit`` helpers (``tl.zeros``, ``tl.cdiv``): a process cannot both interpret and
compile them, so the compile tier (``tools/aot.py``) compiles in worker processes started
without it.
"""

from .backward import (
    basis_conv_grad_x_kernel,
    basis_conv_grad_z_kernel,
    basis_conv_wgrad_kernel,
    bwd_reduce_kernel,
)
from .configs import RECORDS, VARIANTS, KernelRecord
from .forward import basis_conv_fwd_kernel, basis_conv_fwd_reduce_kernel

# The kernels the default launch plans run (v2), by record name; the v3 forward variants are
# in RECORDS too (``variant_of="fwd"``), run only when verified on the device or forced.
KERNELS = {n: r.fn for n, r in RECORDS.items() if r.variant_of is None}

__all__ = [
    "KERNELS",
    "RECORDS",
    "VARIANTS",
    "KernelRecord",
    "basis_conv_fwd_kernel",
    "basis_conv_fwd_reduce_kernel",
    "basis_conv_grad_x_kernel",
    "basis_conv_grad_z_kernel",
    "basis_conv_wgrad_kernel",
    "bwd_reduce_kernel",
]
