"""Conversion: whole models to and from basis convolutions.

* :mod:`.plan` -- plans (fully qualified name -> :class:`~tritonbasis.BasisSpec`, JSON), the
  contract between the search and conversion;
* :mod:`.convert` -- :func:`convert` / :func:`merge` and the conversion report (which states
  the mode each layer will run);
* :mod:`.deploy` -- ONNX / AOTInductor export that keeps the factorization.

Imports only ``tritonbasis.nn``, ``tritonbasis.op`` and ``tritonbasis.util``.
"""

from .convert import (
    ConversionReport,
    LayerReport,
    candidate_convs,
    convert,
    convert_with_report,
    merge,
)
from .plan import load_plan, lookup, normalize_plan, save_plan

__all__ = [
    "ConversionReport",
    "LayerReport",
    "candidate_convs",
    "convert",
    "convert_with_report",
    "load_plan",
    "lookup",
    "merge",
    "normalize_plan",
    "save_plan",
]
