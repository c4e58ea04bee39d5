"""Triton kernels of tritonbasis (installed as ``tritonbasis.kernels``).

Only ``@triton.jit`` kernels and their autotune configs (as named data) live here; launchers
that check arguments, allocate and build grids are in ``tritonbasis/_triton.py``. Importing this
package imports triton; ``tritonbasis`` itself imports it lazily, so the package works without
triton (CPU path).

Kernels deliberately call no other ``@triton.jit`` helpers: the compile tier re-wraps each
kernel as a ``JITFunction`` when the process runs under ``TRITON_INTERPRET=1``, and a nested
interpreted helper would not compile.
"""

from .backward import basis_conv_grad_x_kernel, basis_conv_grad_z_kernel, channel_wgrad_kernel
from .forward import basis_conv_fwd_kernel

KERNELS = {
    "fwd": basis_conv_fwd_kernel,
    "grad_z": basis_conv_grad_z_kernel,
    "grad_x": basis_conv_grad_x_kernel,
    "wgrad": channel_wgrad_kernel,
}

__all__ = [
    "KERNELS",
    "basis_conv_fwd_kernel",
    "basis_conv_grad_x_kernel",
    "basis_conv_grad_z_kernel",
    "channel_wgrad_kernel",
]
