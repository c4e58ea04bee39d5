"""Model conversion: ``convert`` (Conv2d -> BasisConv2d by a plan), ``merge`` (back to Conv2d),
and the conversion report.

The plan maps fully qualified module names to a :class:`BasisSpec` (or its dict form, or None
to skip): exact names first, then ``"re:<regex>"`` keys (full match, in plan order), then
``"_default"``. Alternatively pass one spec and a ``filter_fn(module, fqn) -> bool``.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from ..nn.decompose import check_convertible, factors
from ..nn.layer import BasisConv2d, from_conv
from ..nn.modes import decide, decide_per_pixel
from ..nn.spec import BasisSpec
from ..op.geometry import check_inputs, dense_macs, forward_macs
from ..util.probe import module_calls
from .plan import lookup, normalize_plan


@dataclass
class LayerReport:
    fqn: str
    converted: bool
    reason: str
    C_in: int
    C_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    C_b: int | None = None
    keep_basis: bool | None = None
    mode: str | None = None
    plan_key: str = ""
    params_before: int = 0
    params_after: int = 0
    out_pixels: int | None = None  # Ho*Wo per sample, if an input shape was given
    macs_before: int = 0  # per sample if out_pixels is known, else per output pixel
    macs_after: int = 0
    # fraction of the filters' squared Frobenius norm the initial basis spans (init="svd"):
    # the energy of the projection of all original filters onto the span of the basis, in the
    # layer's own form (keep-basis: the kept filters; full: the top singular vectors), what an
    # energy threshold is compared with; None for init="random"
    captured_energy: float | None = None


@dataclass
class ConversionReport:
    layers: list[LayerReport] = field(default_factory=list)
    macs_unit: str = "per output pixel"

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.converted]

    def totals(self) -> dict:
        pb = sum(r.params_before for r in self.layers)
        pa = sum(r.params_after for r in self.layers)
        mb = sum(r.macs_before for r in self.layers)
        ma = sum(r.macs_after for r in self.layers)
        return {
            "conv_layers": len(self.layers),
            "converted": len(self.converted),
            "conv_params_before": pb,
            "conv_params_after": pa,
            "conv_macs_before": mb,
            "conv_macs_after": ma,
            "macs_unit": self.macs_unit,
        }

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.layers], "totals": self.totals()}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def table(self) -> str:
        """A plain-text table, one row per conv layer, then the totals."""
        head = (
            f"{'layer':34s} {'shape':>16s} {'C_b':>5s} {'form':>5s} {'params':>19s} "
            f"{'MACs':>23s}  note"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = f"{r.C_in}->{r.C_out} {r.kernel[0]}x{r.kernel[1]}" + (
                f"/{r.stride[0]}" if r.stride != (1, 1) else ""
            )
            cb = str(r.C_b) if r.converted else "-"
            form = ("keep" if r.keep_basis else "full") if r.converted else "-"
            p = f"{r.params_before:,}->{r.params_after:,}"
            m = f"{_si(r.macs_before)}->{_si(r.macs_after)}"
            note = r.mode if r.converted else r.reason
            if r.converted and r.captured_energy is not None:
                note = f"energy {r.captured_energy:.3f}; {note}"
            lines.append(
                f"{r.fqn[:34]:34s} {shape:>16s} {cb:>5s} {form:>5s} {p:>19s} {m:>23s}  {note}"
            )
        t = self.totals()
        lines.append("-" * len(head))
        lines.append(
            f"converted {t['converted']}/{t['conv_layers']} conv layers; conv params "
            f"{t['conv_params_before']:,} -> {t['conv_params_after']:,} "
            f"({_ratio(t['conv_params_before'], t['conv_params_after'])}); conv MACs "
            f"{_si(t['conv_macs_before'])} -> {_si(t['conv_macs_after'])} "
            f"({_ratio(t['conv_macs_before'], t['conv_macs_after'])}, {self.macs_unit})"
        )
        return "\n".join(lines)


def _si(v: float) -> str:
    for unit, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= unit:
            return f"{v / unit:.2f}{s}"
    return f"{v:.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x fewer" if b else "n/a"


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def _conv_macs_per_pixel(c_in, c_out, k, cb=None, rest=None) -> int:
    if cb is None:
        return dense_macs(c_in, c_out, *k)
    return forward_macs(c_in, cb, rest, *k)["fused"]


def _resolve(layer: BasisConv2d, in_chw, batch: int, device) -> str:
    """What ``mode="auto"`` will run for ``layer`` (tritonbasis.nn.modes): with the input size
    known, the decision for a call of ``batch`` images of it (meta tensors: no memory, no
    compute); without, the per-pixel rule. The layer remembers it (``layer.resolved``)."""
    if layer.mode != "auto":
        return layer.mode
    if in_chw is None:
        mode = decide_per_pixel(
            layer.in_channels,
            layer.out_channels,
            layer.basis_channels,
            layer.kernel_size,
            layer.keep_basis,
            device,
        )
    else:
        x = layer._pad(torch.empty(batch, *in_chw, device="meta"))  # as its forward pads
        g = check_inputs(
            x,
            layer.basis.to("meta"),
            layer.coeff.to("meta"),
            None,
            layer.stride,
            layer._call_padding,
            layer.dilation,
            layer.keep_basis,
        )
        mode = decide(g, device)
    layer.set_resolved(mode, device)
    return mode


def convert(
    model: nn.Module,
    plan,
    *,
    filter_fn=None,
    inplace: bool = False,
    input_shape=None,
    require_saving: bool = True,
    **removed,
) -> nn.Module:
    """Replace ``nn.Conv2d`` modules by ``BasisConv2d`` according to ``plan``; returns the
    converted model (:func:`convert_with_report` also returns the per-layer report).

    Args:
        model: any module tree.
        plan: ``{fqn | "re:<regex>" | "_default": BasisSpec | dict | None}``, or a single
            BasisSpec/dict applied to every candidate (then usually with ``filter_fn``).
        filter_fn: optional ``(module, fqn) -> bool``; False skips the conv.
        inplace: modify ``model`` itself instead of a deep copy.
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; if given, MACs in the report are per
            sample, and ``mode="auto"`` layers are resolved for calls of N images (1 for a
            3-d shape) of that size; without it, by the per-pixel rule. Either way the layer
            keeps the resolved mode (``layer.resolved``; :func:`tritonbasis.tune` measures
            instead) and the report's ``mode`` says what will run, e.g. ``auto->weight``.
        require_saving: skip convs where the spec saves neither parameters nor MACs (default);
            False converts them anyway (e.g. ``energy=1.0`` to check exactness).

    Candidates are ``nn.Conv2d`` with groups=1 (any padding and ``padding_mode``);
    grouped/depthwise/transposed convs, and convs where the spec would not reduce both
    parameters and MACs, are skipped with the reason in the report.
    """
    if removed:
        if "return_report" in removed:
            raise TypeError(
                "convert(return_report=...) is gone: convert() always returns the "
                "model; convert_with_report() returns (model, report)"
            )
        raise TypeError(f"convert() got unexpected keyword argument(s) {sorted(removed)}")
    return _convert(model, plan, filter_fn, inplace, input_shape, require_saving)[0]


def convert_with_report(
    model: nn.Module,
    plan,
    *,
    filter_fn=None,
    inplace: bool = False,
    input_shape=None,
    require_saving: bool = True,
) -> tuple[nn.Module, ConversionReport]:
    """:func:`convert` (same arguments), returning ``(model, ConversionReport)``: per conv
    layer whether it was converted (or why not), C_b, form, the mode it will run, parameters
    and MACs before and after, the captured energy; ``report.table()``, ``.to_json()``."""
    return _convert(model, plan, filter_fn, inplace, input_shape, require_saving)


def _convert(model, plan, filter_fn, inplace, input_shape, require_saving):
    if isinstance(plan, BasisSpec | dict) and (
        isinstance(plan, BasisSpec) or set(plan) <= set(BasisSpec.__dataclass_fields__)
    ):
        plan = {"_default": plan}
    plan = normalize_plan(plan)
    _check_exact_names(model, plan)
    if not inplace:
        model = copy.deepcopy(model)
    probe = (
        {
            f: (c.out_shape[-2] * c.out_shape[-1], c.in_shape)
            for f, c in module_calls(model, input_shape, (nn.Conv2d, BasisConv2d)).items()
        }
        if input_shape is not None
        else {}
    )
    pixels = {k: v[0] for k, v in probe.items()}
    batch = int(input_shape[0]) if input_shape is not None and len(input_shape) == 4 else 1
    p0 = next(model.parameters(), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    report = ConversionReport(macs_unit="per sample" if pixels else "per output pixel")
    replacements = []
    for fqn, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or isinstance(m, BasisConv2d):
            continue
        r, layer = _convert_one(m, fqn, plan, filter_fn, pixels.get(fqn), require_saving)
        report.layers.append(r)
        if layer is None:
            continue
        if layer.mode == "auto":
            in_chw = probe[fqn][1] if fqn in probe else None
            r.mode = f"auto->{_resolve(layer, in_chw, batch, device)}"
        replacements.append((fqn, layer))
    for fqn, layer in replacements:
        _set_submodule(model, fqn, layer)
    _warn_unused_patterns(plan, report)
    return model, report


def _convert_one(
    m: nn.Conv2d, fqn: str, plan: dict, filter_fn, px: int | None, require_saving: bool
):
    """The report row of one conv and its ``BasisConv2d`` (None when the plan, ``filter_fn``,
    convertibility or the saving rule skip it: the row says why). MACs per sample when the
    conv's output pixels ``px`` are known, else per output pixel."""
    k = tuple(m.kernel_size)
    dense_macs = _conv_macs_per_pixel(m.in_channels, m.out_channels, k) * (px or 1)
    r = LayerReport(
        fqn=fqn,
        converted=False,
        reason="",
        C_in=m.in_channels,
        C_out=m.out_channels,
        kernel=k,
        stride=tuple(m.stride),
        params_before=_params(m),
        params_after=_params(m),
        out_pixels=px,
        macs_before=dense_macs,
        macs_after=dense_macs,
    )
    matched, spec, key = lookup(plan, fqn)
    r.plan_key = key
    if not matched or spec is None:
        r.reason = "not in plan" if not matched else f"plan says skip ({key})"
        return r, None
    if filter_fn is not None and not filter_fn(m, fqn):
        r.reason = "filter_fn said no"
        return r, None
    why = check_convertible(m)
    if why:
        r.reason = why
        return r, None
    # one decomposition sizes the layer (energy rule, rank cap) and initialises it
    f = factors(m, spec)
    cb = f.C_b
    rest = m.out_channels - cb if spec.keep_basis else m.out_channels
    new_params = (
        cb * m.in_channels * k[0] * k[1] + rest * cb + (m.out_channels if m.bias is not None else 0)
    )
    new_macs = _conv_macs_per_pixel(m.in_channels, m.out_channels, k, cb, rest) * (px or 1)
    if require_saving and (new_params >= r.params_before or new_macs >= dense_macs):
        r.reason = (
            f"no saving at C_b={cb} (params {new_params:,} vs {r.params_before:,}, "
            f"MACs/px {new_macs // (px or 1):,} vs {dense_macs // (px or 1):,})"
        )
        return r, None
    layer = from_conv(m, spec, factors=f)
    r.converted, r.C_b, r.keep_basis, r.mode = (
        True,
        layer.basis_channels,
        layer.keep_basis,
        layer.mode,
    )
    r.params_after = _params(layer)
    r.macs_after = new_macs
    if layer.captured_energy is not None:
        r.captured_energy = round(layer.captured_energy, 6)
    return r, layer


def _warn_unused_patterns(plan: dict, report) -> None:
    """A ``re:`` key that selects no conv is almost always a typo (it converted 0 layers
    without a word); exact names that match nothing are an error in :func:`_check_exact_names`."""
    used = {r.plan_key for r in report.layers}
    unused = [k for k in plan if k.startswith("re:") and k not in used]
    if unused:
        warnings.warn(
            f"plan pattern(s) {', '.join(map(repr, unused))} match no Conv2d of the model "
            "(patterns must match the whole name, e.g. 're:layer4\\..*conv1'); nothing was "
            "converted by them",
            UserWarning,
            stacklevel=4,
        )


def _check_exact_names(model: nn.Module, plan: dict) -> None:
    """Exact plan keys must name Conv2d modules of the model: a typo would otherwise silently
    leave a layer unconverted (regex and ``_default`` keys may match nothing)."""
    modules = dict(model.named_modules())
    bad = []
    for k in plan:
        if k == "_default" or k.startswith("re:"):
            continue
        m = modules.get(k)
        if m is None:
            bad.append(f"{k!r} (no such module)")
        elif not isinstance(m, nn.Conv2d):
            bad.append(f"{k!r} (a {type(m).__name__}, not a Conv2d)")
    if bad:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        hint = ", ".join(convs[:6]) + (", ..." if len(convs) > 6 else "")
        raise ValueError(f"plan names {', '.join(bad)}; the model's convs are: {hint}")


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def merge(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BasisConv2d back into an nn.Conv2d (``W = [B; coeff.B]``, permuted if the
    layer has an ``out_perm``): exact up to rounding, for deployment and export."""
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, BasisConv2d):
        return model.to_conv()
    todo = [(n, m) for n, m in model.named_modules() if isinstance(m, BasisConv2d)]
    for fqn, m in todo:
        conv = m.to_conv()
        conv.train(m.training)
        _set_submodule(model, fqn, conv)
    return model


def candidate_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(fqn, conv) of every conv that could be converted (groups=1, ...)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and not isinstance(m, BasisConv2d)
        and check_convertible(m) is None
    ]
