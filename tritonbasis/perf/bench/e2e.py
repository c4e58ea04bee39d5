"""End to end: a resnet18_cifar training step and inference, dense vs every 3x3 conv converted
vs a plan, timed by :func:`tritonbasis.recipes.train.measure_step_time`.

The models, the conversion and the training recipe are imported inside the functions: the
case list (``tools/aot.py``, ``bench/cases.py``) imports this package without needing the
recipes' dependencies (torchvision) loaded.
"""

from __future__ import annotations

from typing import Any

import torch

from .providers import short_error

__all__ = ["BUILTIN_PLAN", "BUILTIN_PLAN_LABEL", "E2E_VARIANTS", "bench_end_to_end"]

E2E_VARIANTS = ("dense", "all_3x3", "plan")
# The plan timed end to end when no --plan is given: layers 3 and 4 (the wide, small-image
# layers a sensitivity search usually picks first) at C_b = C_out / 4, keep-basis form.
BUILTIN_PLAN = {"re:layer[34]\\..*conv[12]": {"ratio": 0.25, "keep_basis": True}, "_default": None}
BUILTIN_PLAN_LABEL = "builtin (layers 3-4 conv1/conv2 at C_b = C_out/4, keep-basis)"


def _e2e_models(width: float, ratio: float, plan, num_classes: int = 10):
    from ...conversion.convert import convert
    from ...nn.spec import BasisSpec
    from ...recipes.models import resnet18_cifar

    torch.manual_seed(0)
    dense = resnet18_cifar(num_classes=num_classes, width=width)
    all3 = convert(
        dense,
        BasisSpec(ratio=ratio, keep_basis=True, init="random"),
        filter_fn=lambda m, fqn: tuple(m.kernel_size) == (3, 3),
    )
    planned = convert(dense, plan)
    return {"dense": dense, "all_3x3": all3, "plan": planned}


def _mode_counts(model, input_shape, device) -> dict:
    """How many BasisConv2d layers mode='auto' runs fused / weight at an input of
    ``input_shape`` ``(N, C, H, W)`` (the batch matters: the cost model counts pixels)."""
    from ...nn.layer import BasisConv2d
    from ...util.probe import module_calls

    n = int(input_shape[0])
    counts = {"fused": 0, "weight": 0}
    for call in module_calls(model, input_shape, (BasisConv2d,)).values():
        # the decision reads metadata only: a stride-0 view stands in for the batch
        x = torch.empty(1, device=device).expand(n, *call.in_shape)
        counts[call.module.resolved_mode(x)] += 1
    return counts


def _jsonable_plan(plan) -> Any:
    if isinstance(plan, dict):
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in plan.items()}
    return str(plan)


def _variant_info(model, shape, device, macs: int) -> dict:
    from ...nn.layer import BasisConv2d

    n_basis = sum(isinstance(m, BasisConv2d) for m in model.modules())
    modes = _mode_counts(model.to(device), shape, device) if n_basis else {}
    return {
        "basis_layers": n_basis,
        "auto_modes": modes,
        "macs_per_image": macs,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _records(name: str, t: dict, macs: int, shape, cuda: bool) -> list[dict]:
    """The inference (``fwd``) and training-step (``fwd+bwd``) records of one model; TFLOP/s
    on 2 x MACs per image x batch (x 3 for a training step: forward + two backward GEMMs)."""
    batch, _, image_size, _ = shape
    out = []
    for direction, key, mult in (("fwd", "infer_ms", 1), ("fwd+bwd", "train_step_ms", 3)):
        med = t[key]
        out.append(
            {
                "case": "e2e.resnet18_cifar",
                "shape": {
                    "N": batch,
                    "C_in": 3,
                    "C_out": 10,
                    "C_b": None,
                    "H": image_size,
                    "W": image_size,
                    "k": None,
                    "stride": None,
                    "padding": None,
                    "dilation": None,
                },
                "dtype": "bfloat16" if cuda else "float32",
                "layout": "channels_last" if cuda else "contiguous",
                "direction": direction,
                "provider": name,
                "median_ms": med,
                "p20_ms": t[key + "_p20"],
                "p80_ms": t[key + "_p80"],
                "tflops": 2 * mult * macs * batch / (med * 1e-3) / 1e12,
                "gbps": None,
                "roofline_pct": None,
            }
        )
    return out


def bench_end_to_end(
    device,
    *,
    quick: bool,
    plan=None,
    plan_label: str = "builtin",
    ratio: float = 0.25,
    steps: int | None = None,
    batch: int | None = None,
    width: float | None = None,
    image_size: int | None = None,
    log=print,
) -> tuple[list[dict], dict]:
    """Training step (forward, loss, backward, SGD) and inference of resnet18_cifar, dense vs
    every 3x3 conv converted (C_b = ratio C_out, keep-basis, mode auto) vs ``plan``, with bf16
    autocast + channels_last on CUDA (:func:`tritonbasis.recipes.train.measure_step_time`).
    Returns (records, info for ``settings.e2e``)."""
    from ...recipes.train import count_macs, measure_step_time

    device = torch.device(device)
    cuda = device.type == "cuda"
    batch = batch or (256 if not quick else 8)
    width = width or (1.0 if not quick else 0.125)
    image_size = image_size or (32 if not quick else 16)
    steps = steps or (20 if not quick else 2)
    shape = (batch, 3, image_size, image_size)
    plan = plan if plan is not None else BUILTIN_PLAN
    records, info = (
        [],
        {
            "batch": batch,
            "width": width,
            "image_size": image_size,
            "steps": steps,
            "ratio_all_3x3": ratio,
            "plan": plan_label,
            "plan_spec": _jsonable_plan(plan),
            "amp": "bf16 autocast + channels_last" if cuda else "off (CPU: fp32)",
            "variants": {},
        },
    )
    for name, model in _e2e_models(width, ratio, plan).items():
        macs = count_macs(model, (3, image_size, image_size))
        try:
            t = measure_step_time(
                model, shape, steps=steps, device=device, warmup=3 if not quick else 1, amp=True
            )
        except Exception as e:
            info["variants"][name] = {"error": short_error(e)}
            log(f"  e2e {name}: FAIL {short_error(e)}")
            continue
        v = info["variants"][name] = _variant_info(model, shape, device, macs)
        records += _records(name, t, macs, shape, cuda)
        log(
            f"  e2e {name:8s} train step {t['train_step_ms']:9.3f} ms  inference "
            f"{t['infer_ms']:9.3f} ms  ({v['basis_layers']} basis layers, auto modes "
            f"{v['auto_modes']})"
        )
    return records, info
