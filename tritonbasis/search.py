"""Public import path ``tritonbasis.search``: the code lives in
:mod:`tritonbasis.recipes.search`."""

from .recipes.search import *  # noqa: F403
from .recipes.search import __all__  # noqa: F401
