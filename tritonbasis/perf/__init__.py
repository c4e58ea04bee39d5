"""Performance tooling: benchmarks, tuning, profiling.

* :mod:`.bench` -- the benchmark harness (``tritonbasis bench``);
* :mod:`.tune` -- fused-vs-weight measurements per layer shape (``tritonbasis tune``,
  :func:`tritonbasis.tune`);
* :mod:`.profiling` -- training steps under ``torch.profiler`` (``tritonbasis profile``).

Sits above the recipes (its end-to-end cases train real models); nothing below imports it.
"""
