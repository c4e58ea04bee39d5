"""``BasisSpec``: how to turn one conv into a basis conv (plans of them, fully qualified name
-> spec, live in :mod:`tritonbasis.conversion.plan`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .functional import MODES

INITS = ("svd", "random")


def _check_field_types(spec) -> None:
    """Types before values: a plan written by hand with ``"ratio": "0.25"`` failed deep inside
    with ``'<' not supported``; NaN passed every range check."""
    import math

    for name in ("ratio", "energy"):
        v = getattr(spec, name)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if spec.basis_channels is not None and (
        isinstance(spec.basis_channels, bool) or not isinstance(spec.basis_channels, int)
    ):
        raise ValueError(f"basis_channels must be a positive int, got {spec.basis_channels!r}")
    for name in ("keep_basis", "trainable_basis"):
        if not isinstance(getattr(spec, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(spec, name)!r}")
    for name in ("init", "mode"):
        if not isinstance(getattr(spec, name), str):
            raise ValueError(f"{name} must be a string, got {getattr(spec, name)!r}")


@dataclass(frozen=True)
class BasisSpec:
    """How to turn one ``nn.Conv2d`` into a ``BasisConv2d``.

    Exactly one of:
      * ``ratio`` -- C_b / C_out (C_b = max(1, round(ratio * C_out)));
      * ``basis_channels`` -- C_b itself;
      * ``energy`` -- fraction of the filters' energy (sum of squares) the basis must span:
        the smallest C_b whose basis captures it (needs trained weights; ``energy=1.0`` is the
        full rank and reproduces the layer exactly). Full form: the cumulative sigma^2 of the
        SVD. Keep-basis form: the energy of all filters projected onto the span of the kept
        original filters, which is at most the SVD's for the same C_b, so C_b can be larger
        (:func:`tritonbasis.nn.decompose.captured_energy`).

    ``keep_basis``: keep-basis form (C_b of the original filters are the basis, chosen by
    pivoted QR; the rest are least-squares combinations) or full form (SVD basis). ``init``:
    ``"svd"`` (from the conv's weights) or ``"random"`` (from scratch). ``mode``: the layer's
    evaluation mode (fused / weight / auto). ``trainable_basis=False`` freezes the basis.
    """

    ratio: float | None = None
    basis_channels: int | None = None
    energy: float | None = None
    keep_basis: bool = False
    init: str = "svd"
    mode: str = "auto"
    trainable_basis: bool = True

    def __post_init__(self):
        _check_field_types(self)
        given = [n for n in ("ratio", "basis_channels", "energy") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "BasisSpec needs exactly one of ratio, basis_channels, energy; got "
                + (", ".join(given) if given else "none")
            )
        if self.ratio is not None and not (0 < self.ratio <= 1):
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.basis_channels is not None and (
            not isinstance(self.basis_channels, int) or self.basis_channels < 1
        ):
            raise ValueError(f"basis_channels must be a positive int, got {self.basis_channels}")
        if self.energy is not None and not (0 < self.energy <= 1):
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.energy is not None and self.init != "svd":
            raise ValueError("energy needs init='svd' (it reads the trained filters' spectrum)")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> BasisSpec:
        if not isinstance(d, dict):
            raise TypeError(f"a spec must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown BasisSpec field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)

    def channels_for(self, c_out: int, captured=None) -> int:
        """C_b for a conv with ``c_out`` filters. The energy rule needs ``captured``: the
        fraction of the filters' energy a basis of ``k`` channels captures, for ``k = 1..``
        (:func:`tritonbasis.nn.decompose.captured_energy`, which differs between the two
        forms); C_b is the smallest ``k`` that reaches ``energy``."""
        if self.basis_channels is not None:
            return min(self.basis_channels, c_out)
        if self.ratio is not None:
            return max(1, min(c_out, round(self.ratio * c_out)))
        if captured is None:
            raise ValueError("energy-based C_b needs the captured-energy curve of the filters")
        assert self.energy is not None  # exactly one of the three rules is set (validated)
        import torch

        # 1e-12: a full-rank basis captures 1.0 up to float64 rounding (energy=1.0 -> exact)
        reached = torch.nonzero(captured.double() >= self.energy - 1e-12)
        cb = int(reached[0]) + 1 if len(reached) else len(captured)
        return max(1, min(cb, c_out))


SpecLike = BasisSpec | dict | None


def as_spec(v: SpecLike) -> BasisSpec | None:
    if v is None or isinstance(v, BasisSpec):
        return v
    return BasisSpec.from_dict(v)
