"""tritonbasis: fused Triton kernels for basis convolutions.

Importing this package never imports triton nor queries CUDA; the kernels load on first use.
"""

from . import ops  # registers torch.ops.tritonbasis.*
from ._checks import ConvGeometry, check_inputs
from .functional import basis_conv2d, choose_mode
from .layer import BasisConv2d
from .ops import get_backend, set_backend, use_backend
from .reference import basis_conv2d_reference, merged_weight

__version__ = "0.1.0"

__all__ = [
    "BasisConv2d",
    "ConvGeometry",
    "basis_conv2d",
    "basis_conv2d_reference",
    "check_inputs",
    "choose_mode",
    "get_backend",
    "merged_weight",
    "ops",
    "set_backend",
    "use_backend",
]
