"""The op layer: one basis convolution, from arguments to kernels.

* :mod:`.geometry` -- argument validation and the one formula for output size and MACs;
* :mod:`.reference` -- the plain-PyTorch definition (the oracle) and the CPU path;
* :mod:`.launch_plan` -- per kernel the one argument builder (outputs, workspaces, grids,
  launch scalars remembered per shape), also used by the compile tier;
* :mod:`.launchers` -- runs a plan under a device guard, autotuned through triton's own
  result cache; triton is imported on first use only;
* :mod:`.tune_cache` -- persisted fused-vs-weight timings (what ``mode="auto"`` reads);
* :mod:`.registry` -- ``torch.ops.tritonbasis.*`` (custom ops, fakes, autograd, FLOP formulas)
  and the one place that decides which implementation runs; its forward / backward bodies are
  shared with
* :mod:`.eager` -- the eager route: an ``autograd.Function`` over the same bodies, taken by
  :func:`tritonbasis.basis_conv2d` outside ``torch.compile``, tracing, export and dispatch
  modes (it skips the custom-op dispatch: bench/NOTES.md "Host overhead per call").

Imports nothing above it (``tritonbasis.util`` and ``tritonbasis.kernels`` only).
"""

from . import registry  # registers torch.ops.tritonbasis.*
from .geometry import MAX_BASIS_CHANNELS, ConvGeometry, check_inputs
from .reference import basis_conv2d_reference, merged_weight
from .registry import get_backend, set_backend, use_backend

__all__ = [
    "MAX_BASIS_CHANNELS",
    "ConvGeometry",
    "basis_conv2d_reference",
    "check_inputs",
    "get_backend",
    "merged_weight",
    "registry",
    "set_backend",
    "use_backend",
]
