"""tritonbasis: fused Triton kernels for basis convolutions.

Layers, each a subpackage, importing one way only (docs/architecture.md):
``cli`` -> ``perf`` -> ``recipes`` -> ``conversion`` -> ``nn`` -> ``op`` -> ``kernels``, and
``util`` under all of them. This file only re-exports the public API.

Importing this package queries no CUDA device and never imports triton itself; the kernels
load on first use. (``torch.utils.flop_counter``, imported to register our FLOP formulas, does
import triton when it is installed; without triton everything but the kernels works.)
"""

from .conversion import deploy
from .conversion.convert import (
    ConversionReport,
    LayerReport,
    candidate_convs,
    convert,
    convert_with_report,
    merge,
)
from .conversion.deploy import export_onnx
from .conversion.plan import load_plan, save_plan
from .nn.functional import basis_conv2d  # (importing it registers torch.ops.tritonbasis.*)
from .nn.layer import BasisConv2d, from_conv
from .nn.spec import BasisSpec
from .op.reference import basis_conv2d_reference
from .op.registry import get_backend, set_backend, use_backend

__version__ = "0.1.0"


def tune(model, input_shape, **kwargs):
    """Measure fused vs weight per layer shape and resolve every ``mode="auto"`` layer to the
    faster one: :func:`tritonbasis.perf.tune.tune` (imported on first use)."""
    from .perf.tune import tune as _tune

    return _tune(model, input_shape, **kwargs)


# What users call. Internals stay under their modules: argument validation and geometry
# (tritonbasis.op.geometry: check_inputs, ConvGeometry), the registered ops and backend
# resolution (tritonbasis.op.registry), the mode decision (tritonbasis.nn.modes.decide,
# tritonbasis.nn.choose_mode), the merged weight (tritonbasis.op.reference.merged_weight;
# BasisConv2d.merged_weight()). Public import paths beside this one: tritonbasis.data,
# .models, .train, .search, .profiling (the recipes and the profiler); tb.deploy is
# tritonbasis.conversion.deploy.
__all__ = [
    "BasisConv2d",
    "BasisSpec",
    "ConversionReport",
    "LayerReport",
    "basis_conv2d",
    "basis_conv2d_reference",
    "candidate_convs",
    "convert",
    "convert_with_report",
    "deploy",
    "export_onnx",
    "from_conv",
    "get_backend",
    "load_plan",
    "merge",
    "save_plan",
    "set_backend",
    "tune",
    "use_backend",
]
