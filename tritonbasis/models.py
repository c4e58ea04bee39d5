"""Public import path ``tritonbasis.models``: the code lives in
:mod:`tritonbasis.recipes.models`."""

from .recipes.models import *  # noqa: F403
from .recipes.models import __all__  # noqa: F401
