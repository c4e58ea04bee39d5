"""Test-session setup.

The Triton kernels are decorated when ``tritonbasis.kernels`` is first imported, and
``TRITON_INTERPRET=1`` must be in the environment by then for them to run on CPU. So: without
CUDA we set it here, before anything imports tritonbasis' kernels (``import torch`` does not
import triton; ``torch.utils.flop_counter`` does, but the decision is made per kernel at
decoration time). With CUDA the kernels run for real and the interpreter is left off.
"""

import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The matrix tests must not silently pick up a developer's forced backend, nor tuned configs
# and measured mode timings from their ~/.cache (they would change what `auto` picks).
os.environ.pop("TRITONBASIS_BACKEND", None)
_CACHE = tempfile.mkdtemp(prefix="tritonbasis-test-cache-")
os.environ["TRITONBASIS_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


HAS_TRITON = _triton_ok()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_backend():
    import tritonbasis

    yield
    tritonbasis.set_backend(None)


@pytest.fixture(autouse=True)
def _fresh_launch_scalars():
    """Launch scalars are remembered per call shape on a GPU (tritonbasis.op.launch_plan): a
    test that patches a plan helper must not see what an earlier test built."""
    from tritonbasis.op import launch_plan

    launch_plan.clear_caches()
    yield


@pytest.fixture
def one_thread():
    """Tiny models and batches: intra-op threads only add synchronisation (and when another
    process shares the 2 cores, OpenMP's spinning threads slow them 5-20x); one thread also
    makes CPU runs bitwise reproducible. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Every test carries the marker of the package layer its folder mirrors (tests/op -> `op`), so
# CI legs and developers select tiers by marker: `-m "op or kernels"`, `-m "not slow"`.
LAYERS = ("op", "nn", "kernels", "conversion", "recipes", "perf", "cli", "util", "project", "gpu")
_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = os.path.relpath(str(item.path), _TESTS)
        layer = rel.split(os.sep, 1)[0]
        if layer in LAYERS:
            item.add_marker(layer)
        # the compile tier compiles every kernel x config for two targets: exhaustive, not quick
        if item.get_closest_marker("compile_tier") is not None:
            item.add_marker("slow")
