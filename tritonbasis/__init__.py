"""tritonbasis: fused Triton kernels for basis convolutions.

Importing this package queries no CUDA device and never imports triton itself; the kernels
load on first use. (``torch.utils.flop_counter``, imported to register our FLOP formulas, does
import triton when it is installed; without triton everything but the kernels works.)
"""

from . import deploy, ops  # ops registers torch.ops.tritonbasis.*
from ._checks import ConvGeometry, check_inputs
from .convert import ConversionReport, LayerReport, candidate_convs, convert, merge
from .deploy import export_onnx
from .functional import basis_conv2d, choose_mode
from .init import from_conv
from .layer import BasisConv2d
from .modes import tune
from .ops import get_backend, set_backend, use_backend
from .reference import basis_conv2d_reference, merged_weight
from .spec import BasisSpec, load_plan, save_plan

__version__ = "0.1.0"

__all__ = [
    "BasisConv2d",
    "BasisSpec",
    "ConversionReport",
    "LayerReport",
    "candidate_convs",
    "convert",
    "deploy",
    "export_onnx",
    "from_conv",
    "load_plan",
    "merge",
    "save_plan",
    "ConvGeometry",
    "basis_conv2d",
    "basis_conv2d_reference",
    "check_inputs",
    "choose_mode",
    "get_backend",
    "merged_weight",
    "ops",
    "set_backend",
    "tune",
    "use_backend",
]
