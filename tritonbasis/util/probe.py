"""The one shape probe: which modules a model calls, with what input and output shapes.

Conversion (MACs per layer, the mode each layer will run), tuning (the distinct layer call
shapes), the search (per-layer timing inputs) and the benchmarks all ask this one question; it
is answered by one forward of a batch of zeros with forward hooks, in eval mode and without
autograd, restoring every module's training flag afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Call", "module_calls"]


@dataclass(frozen=True)
class Call:
    """One module call seen by :func:`module_calls`: the module, its input's and output's
    per-sample shapes ``(C, H, W)`` (first call of that module)."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def module_calls(
    model: nn.Module, input_shape, types: tuple[type, ...] = (nn.Module,), fqns=None
) -> dict[str, Call]:
    """``{fqn: Call}`` for every submodule of ``model`` that is an instance of ``types`` (or
    whose name is in ``fqns``) and is called by one forward of zeros of ``input_shape``
    (``(C, H, W)`` or ``(N, C, H, W)``; the probe runs at batch 1 on the model's device and
    dtype). Modules never called are absent. The model's weights, buffers (BN running
    statistics: eval mode) and training flags are left as they were."""
    shape = tuple(int(s) for s in input_shape)[-3:]
    wanted = set(fqns) if fqns is not None else None
    seen: dict[str, Call] = {}
    hooks = []

    def hook_for(name):
        def hook(mod, inp, out):
            if name not in seen and isinstance(out, torch.Tensor):
                seen[name] = Call(mod, tuple(inp[0].shape[1:]), tuple(out.shape[1:]))

        return hook

    for name, m in model.named_modules():
        if (wanted is not None and name in wanted) or (wanted is None and isinstance(m, types)):
            hooks.append(m.register_forward_hook(hook_for(name)))
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=dev, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, t in training.items():
            m.training = t
    return seen
