"""Public import path ``tritonbasis.profiling``: the code lives in
:mod:`tritonbasis.perf.profiling`."""

from .perf.profiling import *  # noqa: F403
from .perf.profiling import __all__  # noqa: F401
