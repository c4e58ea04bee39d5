"""Forward v3 variants (kernels/forward_v3.py) through the op, against the float64 reference:
L1-served taps (``fwd_l1``) and TMA descriptors (``fwd_tma``), forced with
``launchers.force_forward_variant``. Without CUDA they run in Triton's interpreter (tiny
shapes, fp32, the records' fixed configs), which runs tensor descriptors too. Also: which
variant runs where (TMA needs stride 1, NHWC, 16-byte aligned strides; the Gluon halo variant
never runs in the interpreter), that v2 runs by default where nothing is verified, split-K,
and the verified-entry matching."""

from __future__ import annotations

import os
import random

import pytest
import torch
from conftest import HAS_CUDA, HAS_TRITON
from helpers import Case, check_case

pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable"),
]

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _kernels_run(one_thread):
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the kernels cannot run")


@pytest.fixture
def force():
    """``force(name)`` runs forward variant ``name`` for the rest of the test."""
    from tritonbasis.op import launch_plan, launchers

    def set_(name):
        launchers.force_forward_variant(name)
        launch_plan.clear_caches()

    yield set_
    launchers.force_forward_variant(None)


def _ran(case: Case) -> str:
    from tritonbasis.op import geometry, launchers

    x, basis, coeff, bias = case.make(device=DEVICE)
    perm = case.make_perm(DEVICE)
    g = geometry.check_inputs(
        x,
        basis,
        coeff,
        bias,
        (case.stride,) * 2,
        (case.padding,) * 2,
        (case.dilation,) * 2,
        case.keep_basis,
        perm,
    )
    return launchers.forward_variant(x, basis, coeff, bias, perm, g, True)


# NHWC with C_in a multiple of 4 (fp32: 16-byte strides) so the TMA variant applies; each case
# exercises something: bias + keep-basis, dilation + perm, several C_in blocks and C_b > 16,
# the full form, 1x1, C_rest over two blocks, an image narrower than the tile
CASES = [
    Case(C_in=8, C_b=5, C_rest=7, H=7, W=9, channels_last=True),
    Case(C_in=4, C_b=3, C_rest=5, H=6, W=5, padding=2, dilation=2, channels_last=True, perm=True),
    Case(
        N=3, C_in=20, C_b=17, C_rest=20, H=4, W=4, channels_last=True, keep_basis=False, bias=False
    ),
    Case(C_in=8, C_b=6, C_rest=3, k=1, padding=0, H=5, W=5, channels_last=True),
    Case(C_in=4, C_b=4, C_rest=35, H=3, W=11, channels_last=True, perm=True),
]


@pytest.mark.parametrize("variant", ["fwd_l1", "fwd_tma"])
@pytest.mark.parametrize("case", CASES, ids=[c.id() for c in CASES])
def test_variant_matches_float64_reference(case, variant, force):
    force(variant)
    assert _ran(case) == variant
    check_case(case, dtype=torch.float32, device=DEVICE, backend="triton")


def _fuzz(n: int, seed: int):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = rng.choice([1, 3, 3, 5])
        c = Case(
            N=rng.randint(1, 3),
            C_in=4 * rng.randint(1, 5),
            C_b=rng.randint(1, 20),
            C_rest=rng.randint(0, 20),
            H=rng.randint(1, 9),
            W=rng.randint(1, 9),
            k=k,
            padding=rng.randint(0, k),
            dilation=rng.choice([1, 2]),
            bias=rng.random() < 0.5,
            keep_basis=rng.random() < 0.7,
            channels_last=True,
            perm=rng.random() < 0.3,
        )
        if c.valid() and c.C_out > 0:
            out.append(c)
    return out


FUZZ = _fuzz(6, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fwd_l1", "fwd_tma"])
@pytest.mark.parametrize("case", FUZZ, ids=[c.id() for c in FUZZ])
def test_variant_fuzz(case, variant, force):
    force(variant)
    check_case(case, dtype=torch.float32, device=DEVICE, backend="triton")


@pytest.mark.parametrize("variant", ["fwd_l1", "fwd_tma"])
@pytest.mark.parametrize("split", [2, 3])
def test_variant_split_k(variant, split, force, monkeypatch):
    """The variants split the C_in blocks (v2 splits (tap, block) iterations); an empty
    slice still writes its zeros. 3 C_in blocks at the fixed BLOCK_K = 16."""
    from tritonbasis.op import launch_plan

    force(variant)
    monkeypatch.setattr(launch_plan, "fwd_split_k", lambda *a, **k: split)
    check_case(
        Case(C_in=40, C_b=6, C_rest=9, H=5, W=6, channels_last=True),
        device=DEVICE,
        backend="triton",
    )


def test_tma_runs_v2_where_it_does_not_apply(force):
    """Stride 2, NCHW activations or a C_in whose rows are not 16-byte multiples: v2."""
    force("fwd_tma")
    assert _ran(Case(C_in=8, channels_last=True)) == "fwd_tma"
    assert _ran(Case(C_in=8, channels_last=True, stride=2)) == "fwd"
    assert _ran(Case(C_in=8, channels_last=False)) == "fwd"
    assert _ran(Case(C_in=6, channels_last=True)) == "fwd"  # 24-byte rows (fp32)


def test_halo_never_runs_in_the_interpreter(force):
    from tritonbasis.kernels import RECORDS

    if "fwd_halo" not in RECORDS:
        pytest.skip("this triton has no Gluon: no halo variant")
    if DEVICE == "cuda":
        pytest.skip("on CUDA it runs where it applies (tests/gpu/)")
    force("fwd_halo")
    assert _ran(Case(C_in=8, channels_last=True)) == "fwd"


def test_default_is_v2_and_unknown_names_are_refused(force):
    from tritonbasis.op import launchers

    force(None)
    assert _ran(Case(C_in=8, channels_last=True)) == "fwd"
    with pytest.raises(ValueError, match="unknown forward variant"):
        launchers.force_forward_variant("fwd_fast")


def test_verified_entries_match_on_every_field(tmp_path):
    from tritonbasis.kernels import verified

    path = tmp_path / "verified.json"
    assert verified.load(path) == []  # a missing file: nothing verified
    entry = {
        "variant": "fwd_l1",
        "capability": "9.0",
        "triton": "3.6.0",
        "source_hash": "abc",
        "gpu": "NVIDIA H200",
        "commit": "0" * 40,
        "date": "2026-12-04",
    }
    verified.add(entry, path)
    verified.add(dict(entry, gpu="NVIDIA H100"), path)  # same key: replaced, not doubled
    entries = verified.load(path)
    assert len(entries) == 1 and entries[0]["gpu"] == "NVIDIA H100"
    assert verified.passed(entries, "fwd_l1", "9.0", "3.6.0", "abc")
    for field, other in (
        ("variant", "fwd_tma"),
        ("capability", "8.0"),
        ("triton", "3.9.0"),
        ("source_hash", "abd"),
    ):
        args = dict(variant="fwd_l1", capability="9.0", triton="3.6.0", source_hash="abc")
        args[field] = other
        assert not verified.passed(entries, **args), field
    with pytest.raises(ValueError, match="lacks"):
        verified.add({"variant": "fwd_l1"}, path)


def test_the_committed_verified_file_is_well_formed():
    """kernels/verified.json (written by tools/record_verified.py from GPU runs): every entry
    names what the launchers match it on."""
    from tritonbasis.kernels import RECORDS, verified

    for e in verified.load():
        assert all(e.get(k) for k in verified.MATCH), e
        assert RECORDS[e["variant"]].variant_of == "fwd", e
