"""The decomposition of a trained ``nn.Conv2d`` into basis filters and coefficients
(:func:`tritonbasis.from_conv` builds the layer from it).

* full form, ``init="svd"``: SVD of the filter matrix ``H = W.view(C_out, -1) = U S V^T``;
  basis = top-C_b right singular vectors (as filters), coeff = their coordinates. The product
  ``coeff . basis`` is the optimal rank-C_b approximation of H (Eckart-Young: the Frobenius
  error is the root-sum-square of the discarded singular values). The singular values are split
  evenly (``sqrt(S)`` on each side) so neither factor starts tiny or huge under SGD.
* keep-basis form, ``init="svd"``: choose C_b of the existing filters as the basis by
  column-pivoted QR of ``H^T`` (LAPACK geqp3's greedy column-subset selection), then
  the other filters' coefficients by least squares. Outputs stay in the original channel order
  through the layer's ``out_perm`` (applied inside the kernels' stores, no extra pass).
* ``init="random"``: BasisConv2d's own init (variance-matched to nn.Conv2d); with
  ``trainable_basis=False`` the basis is a random orthogonal set (BasisConv's fixed filters),
  scaled to the same per-filter norm, and only the coefficients train.

The energy rule (``BasisSpec(energy=t)``) means the same in both forms: C_b is the smallest
basis whose span holds at least a fraction ``t`` of ``||H||_F^2`` (the energy of the projection
of all filters onto the basis), measured on *that form's own* basis (:func:`captured_energy`).
For the full form that is BasisConv's rule, ``cumsum(sigma^2) / sum(sigma^2) >= t``. A subset
of the original filters spans less than the top singular subspace of the same size, so the
keep-basis form needs the same or more channels: reading C_b off the SVD spectrum and then
keeping a filter subset of that size would capture less than asked (a digits CNN at ``t =
0.9``: 0.846). So its C_b is the SVD's C_b grown until the subset's own curve reaches ``t``
(capped at C_out; at ``C_b = rank(H)`` the subset spans everything). :class:`Factors` carries
the captured fraction, ``from_conv`` keeps it on the layer (``captured_energy``) and the
conversion report prints it per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .spec import BasisSpec


def check_convertible(conv: nn.Module) -> str | None:
    """None if ``conv`` can become a BasisConv2d, else why not."""
    if not isinstance(conv, nn.Conv2d) or getattr(conv, "transposed", False):
        return f"not an nn.Conv2d ({type(conv).__name__})"
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} conv (groups={conv.groups}): only groups=1 is supported"
    if conv.out_channels < 2:
        return "a single output channel: nothing to share"
    return None


def singular_values(conv: nn.Conv2d) -> torch.Tensor:
    h = conv.weight.detach().double().reshape(conv.out_channels, -1)
    return torch.linalg.svdvals(h)


def _pivoted_qr(h: torch.Tensor):
    """Column-pivoted QR of ``H^T`` (columns = filters): ``(R, pivots)``, R of shape
    ``(min(D, C_out), C_out)`` in pivot order. The pivot order is a greedy subset selection:
    filter ``piv[k]`` is the one farthest from the span of the first ``k`` picks (LAPACK
    geqp3's rule, in torch: Householder reflections, ``C_out`` small steps). Float64."""
    a = h.t().to(torch.float64).clone()  # (D, C_out), deflated in place
    d, n = a.shape
    piv = torch.arange(n)
    steps = min(d, n)
    r = torch.zeros(steps, n, dtype=torch.float64)
    for k in range(steps):
        # residual column norms recomputed exactly, not downdated (no cancellation)
        j = k + int(torch.argmax((a[k:, k:] * a[k:, k:]).sum(0)))
        if j != k:
            a[:, [k, j]] = a[:, [j, k]]
            r[:, [k, j]] = r[:, [j, k]]
            piv[[k, j]] = piv[[j, k]]
        x = a[k:, k]
        alpha = float(x.norm())
        if alpha == 0.0:
            break  # the remaining filters are in the span already: R's rows below are 0
        v = x.clone()
        v[0] += alpha if float(x[0]) >= 0 else -alpha
        v /= v.norm()
        a[k:, k:] -= 2.0 * torch.outer(v, v @ a[k:, k:])
        r[k, k:] = a[k, k:]
    return r, piv


def captured_energy(h: torch.Tensor, keep_basis: bool, qr=None, sv=None) -> torch.Tensor:
    """``curve[k-1]`` = fraction of ``||H||_F^2`` (``H`` = filters as rows, float64) that a
    basis of ``k`` channels captures, for ``k = 1..C_out``: ``||P_k H||^2 / ||H||^2`` with
    ``P_k`` the projection onto the span of the basis filters.

    * full form: the top-``k`` right singular vectors (Eckart-Young: the best any ``k`` can do),
      ``cumsum(sigma^2) / sum(sigma^2)``;
    * keep-basis form: the first ``k`` filters of the pivoted-QR order, which the layer keeps as
      its basis. ``||H - P_k H||^2`` is the squared norm of the trailing rows ``R[k:, :]`` of the
      pivoted QR of ``H^T`` (rows of R below ``k`` vanish left of column ``k``), so the whole
      curve costs one QR. It lies below the full form's curve, so the same energy threshold
      needs a larger (or equal) ``C_b`` in the keep-basis form.

    ``qr`` (``(R, pivots)``) or ``sv`` (singular values) reuse a decomposition already made.
    """
    total = (h * h).sum().clamp_min(1e-300)
    c_out = h.shape[0]
    if keep_basis:
        r, _ = qr if qr is not None else _pivoted_qr(h)
        rows = (r * r).sum(dim=1)  # ||R[i, :]||^2, i < min(D, C_out)
        tail = rows.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{i >= k} rows[i]
        resid = torch.zeros(c_out, dtype=h.dtype)
        n = min(c_out, len(rows) - 1)
        resid[:n] = tail[1 : n + 1]  # after k = i + 1 picks, rows i+1.. remain
        return (1.0 - resid / total).clamp(0.0, 1.0)
    s2 = (sv if sv is not None else torch.linalg.svdvals(h)) ** 2
    curve = torch.ones(c_out, dtype=h.dtype)
    curve[: len(s2)] = torch.cumsum(s2, 0) / total
    return curve.clamp(0.0, 1.0)


@dataclass(frozen=True)
class Factors:
    """What the decomposition of one trained conv gives: ``C_b``, and for ``init="svd"`` the
    initial ``basis`` (C_b, C_in*kH*kW), ``coeff`` and output permutation ``perm`` (keep-basis;
    None for the full form), all float64, and ``captured``: the fraction of the filters'
    squared Frobenius norm that the initial basis spans (:func:`captured_energy` at C_b, whatever
    rule chose C_b); all None for ``init="random"``."""

    C_b: int
    basis: torch.Tensor | None = None
    coeff: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    captured: float | None = None


def factors(conv: nn.Conv2d, spec: BasisSpec) -> Factors:
    """``C_b`` for ``conv`` under ``spec`` and, for ``init="svd"``, the initial factors (see the
    module docstring). Decomposes the filters once (the energy rule and the factors share it)."""
    why = check_convertible(conv)
    if why:
        raise ValueError(f"cannot convert: {why}")
    c_out = conv.out_channels
    h = conv.weight.detach().double().reshape(c_out, -1)
    if spec.init != "svd":
        return Factors(spec.channels_for(c_out))
    if spec.keep_basis:
        qr, svd = _pivoted_qr(h), None
    else:
        qr, svd = None, torch.linalg.svd(h, full_matrices=False)
    # one decomposition serves the energy rule, the captured energy and the factors
    curve = captured_energy(h, spec.keep_basis, qr=qr, sv=svd[1] if svd is not None else None)
    cb = spec.channels_for(c_out, curve if spec.energy is not None else None)
    if not spec.keep_basis:
        cb = min(cb, h.shape[1])  # rank of H is at most C_in*k*k
        init = _svd_init(svd, cb)
    else:
        init = _keep_basis_init(h, cb, qr[1])
    return Factors(cb, *init, captured=float(curve[cb - 1]))


def _svd_init(svd, cb: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    u, s, vh = svd
    root = s[:cb].sqrt()
    basis = root[:, None] * vh[:cb]
    coeff = u[:, :cb] * root[None, :]
    return basis, coeff, None


def _keep_basis_init(
    h: torch.Tensor, cb: int, piv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first C_b filters of the pivoted-QR order are the basis; least squares for the
    rest."""
    idx, rest = piv[:cb], piv[cb:]
    basis = h[idx]
    if rest.numel():
        # coeff minimises || coeff @ basis - h[rest] ||_F
        coeff = torch.linalg.lstsq(basis.t(), h[rest].t()).solution.t()
    else:
        coeff = h.new_zeros(0, cb)
    perm = torch.cat([idx, rest])  # computed channel c -> original channel perm[c]
    return basis, coeff, perm


def orthogonal_basis(basis: torch.Tensor) -> torch.Tensor:
    """A random orthogonal set of filters shaped like ``basis``, scaled to its mean per-filter
    norm (BasisConv's fixed filters, for ``init="random", trainable_basis=False``)."""
    flat = basis.detach().reshape(basis.shape[0], -1)
    norms = flat.norm(dim=1).mean()
    q = torch.empty_like(flat)
    nn.init.orthogonal_(q)
    return (q * norms / q.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(basis.shape)
