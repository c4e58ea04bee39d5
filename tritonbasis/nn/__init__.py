"""The module layer: what a model holds and calls.

* :mod:`.functional` -- :func:`basis_conv2d` (validates once, picks fused / weight, calls the op);
* :mod:`.layer` -- :class:`BasisConv2d`, the ``nn.Conv2d`` drop-in;
* :mod:`.spec` -- :class:`BasisSpec`, how to turn one conv into a basis conv;
* :mod:`.decompose` -- the decomposition of a trained conv (SVD, pivoted-QR subset, energy);
* :mod:`.modes` -- the ``mode="auto"`` decision (measured timings > tuning cache > cost model).

Imports only ``tritonbasis.op`` and ``tritonbasis.util``.
"""

from .functional import MODES, basis_conv2d, choose_mode
from .layer import BasisConv2d, from_conv
from .spec import BasisSpec

__all__ = ["MODES", "BasisConv2d", "BasisSpec", "basis_conv2d", "choose_mode", "from_conv"]
