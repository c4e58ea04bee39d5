"""Public import path ``tritonbasis.train``: the code lives in
:mod:`tritonbasis.recipes.train`."""

from .recipes.train import *  # noqa: F403
from .recipes.train import __all__  # noqa: F401
