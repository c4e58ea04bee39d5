"""Public import path ``tritonbasis.data``: the code lives in
:mod:`tritonbasis.recipes.data`."""

from .recipes.data import *  # noqa: F403
from .recipes.data import __all__  # noqa: F401
