"""The benchmark's case list and its selection: conv layer shapes (:class:`Case`), groups,
``C_b/C_out`` ratios, the dtype / layout / provider / direction choices, and the
:class:`Variant` (case x ratio x dtype x layout) every provider and direction share.

Light on purpose (torch and the op's geometry only): ``tools/aot.py`` (the compile tier) and
``bench/cases.py`` (the pytest-benchmark tests) import the case list from here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable
from fractions import Fraction

from ...op.geometry import conv_output_size

__all__ = [
    "CASES",
    "DEFAULT_CASES",
    "DIRECTIONS",
    "DTYPES",
    "GROUPS",
    "LAYOUTS",
    "PROVIDERS",
    "RATIOS",
    "Case",
    "Variant",
    "parse_choice",
    "parse_ratios",
    "select_cases",
    "variants",
]

PROVIDERS = ("dense_cudnn", "unfused_eager", "unfused_compiled", "weight_mod", "fused")
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("bfloat16", "float16", "float32")
LAYOUTS = ("channels_last", "contiguous")
RATIOS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))


@dataclasses.dataclass(frozen=True)
class Case:
    """One conv layer shape; ``C_b`` comes from a ratio (:meth:`c_b`)."""

    name: str
    group: str
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    k: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1

    def c_b(self, ratio: Fraction) -> int:
        return max(1, round(self.C_out * ratio))

    def shape(self, c_b: int) -> dict[str, int]:
        return {
            "N": self.N,
            "C_in": self.C_in,
            "C_out": self.C_out,
            "C_b": c_b,
            "H": self.H,
            "W": self.W,
            "k": self.k,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
        }

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(
            conv_output_size(n, self.k, self.stride, self.padding, self.dilation)
            for n in (self.H, self.W)
        )

    def out_elems(self) -> int:
        ho, wo = self.out_hw
        return self.N * self.C_out * ho * wo


def _resnet18_cifar(n: int = 256) -> list[Case]:
    g = "resnet18_cifar"
    cases = [
        Case(f"r18.layer{i}.3x3.{c}ch.{px}px", g, n, c, c, px, px)
        for i, (c, px) in enumerate([(64, 32), (128, 16), (256, 8), (512, 4)], start=1)
    ]
    for i, (c, px) in enumerate([(64, 32), (128, 16), (256, 8)], start=2):
        # the stride-2 downsampling convs of each stage's first block
        cases.append(
            Case(f"r18.layer{i}.0.conv1.3x3s2.{c}to{2 * c}.{px}px", g, n, c, 2 * c, px, px, 3, 2, 1)
        )
        cases.append(
            Case(
                f"r18.layer{i}.0.downsample.1x1s2.{c}to{2 * c}.{px}px",
                g,
                n,
                c,
                2 * c,
                px,
                px,
                1,
                2,
                0,
            )
        )
    return cases


def _resnet50(n: int = 64) -> list[Case]:
    # the bottleneck 3x3 convs (stride 1) of the four stages at 224 px input
    return [
        Case(f"r50.layer{i}.3x3.{c}ch.{px}px", "resnet50", n, c, c, px, px)
        for i, (c, px) in enumerate([(64, 56), (128, 28), (256, 14), (512, 7)], start=1)
    ]


def _quick(n: int = 4) -> list[Case]:
    # CPU-sized stand-ins with the same structure: a 3x3, a stride-2 3x3, a stride-2 1x1
    return [
        Case("quick.3x3.16ch.8px", "quick", n, 16, 16, 8, 8),
        Case("quick.3x3s2.16to32.8px", "quick", n, 16, 32, 8, 8, 3, 2, 1),
        Case("quick.1x1s2.16to32.8px", "quick", n, 16, 32, 8, 8, 1, 2, 0),
    ]


CASES: list[Case] = _resnet18_cifar() + _resnet50() + _quick()
GROUPS: dict[str, list[Case]] = {}
for _c in CASES:
    GROUPS.setdefault(_c.group, []).append(_c)
GROUPS["all"] = [c for c in CASES if c.group != "quick"]
DEFAULT_CASES = "resnet18_cifar,resnet50"


def _items(spec: str | Iterable) -> list:
    """A comma list or an iterable -> its items (strings stripped, empties dropped)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() if isinstance(s, str) else s for s in items]
    return [s for s in items if s != ""]


def select_cases(spec: str | Iterable[str | Case] | None = None, quick: bool = False) -> list[Case]:
    """Cases by comma-separated names, group names (``resnet18_cifar``, ``resnet50``,
    ``quick``, ``all``) or shell patterns (``r18.*3x3s2*``), or :class:`Case` objects.
    Default: ``quick`` in quick mode, else ResNet18-CIFAR + ResNet-50. Unknown names are a
    ValueError listing the known ones."""
    if spec is None:
        spec = "quick" if quick else DEFAULT_CASES
    out: list[Case] = []
    for item in _items(spec):
        if isinstance(item, Case):
            found = [item]
        elif item in GROUPS:
            found = GROUPS[item]
        else:
            found = [c for c in CASES if fnmatch.fnmatchcase(c.name, item)]
        if not found:
            raise ValueError(
                f"no benchmark case matches {item!r}; groups: "
                f"{', '.join(sorted(GROUPS))}; cases: "
                f"{', '.join(c.name for c in CASES)}"
            )
        out += [c for c in found if c not in out]
    if not out:
        raise ValueError("no benchmark cases selected")
    return out


def parse_ratios(spec: str | Iterable | None, quick: bool = False) -> list[Fraction]:
    """``"1/8,1/4,1/2"`` or ``"0.25"`` (or numbers / Fractions) -> Fractions in (0, 1];
    default all three (1/4 quick)."""
    if spec is None:
        return [Fraction(1, 4)] if quick else list(RATIOS)
    out = []
    for s in _items(spec):
        try:
            r = Fraction(s.strip() if isinstance(s, str) else s).limit_denominator(1024)
        except (TypeError, ValueError, ZeroDivisionError):
            raise ValueError(f"bad ratio {s!r}: use fractions like 1/4 or decimals") from None
        if not 0 < r <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {s!r}")
        out.append(r)
    return out


def parse_choice(
    spec: str | Iterable[str] | None, allowed: tuple[str, ...], default: list[str], what: str
) -> list[str]:
    """A comma list (or iterable) of ``allowed`` names, ``all``, or None for ``default``;
    unknown names are a ValueError naming them."""
    if spec is None:
        return list(default)
    if spec == "all":
        return list(allowed)
    out = [str(s) for s in _items(spec)]
    bad = [s for s in out if s not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}: use {', '.join(allowed)} or all")
    return out


@dataclasses.dataclass(frozen=True)
class Variant:
    """One (case, C_b, dtype, layout): the tensors every provider and direction share."""

    case: Case
    ratio: Fraction
    dtype: str
    layout: str

    @property
    def c_b(self) -> int:
        return self.case.c_b(self.ratio)

    def shape(self) -> dict[str, int]:
        return self.case.shape(self.c_b)

    def __str__(self) -> str:  # pytest ids
        return f"{self.case.name}-cb{self.c_b}-{self.dtype}-{self.layout}"


def variants(cases, ratios, dtypes, layouts) -> list[Variant]:
    return [Variant(c, r, d, lay) for c in cases for r in ratios for d in dtypes for lay in layouts]
