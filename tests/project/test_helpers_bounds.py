"""The tolerance helper every numeric test relies on must itself be able to fail."""

import math

import pytest
import torch
from helpers import assert_bounded


def _ref():
    ref = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    return ref, ref.abs()


def test_within_the_bound_passes():
    ref, ref_abs = _ref()
    unit, K = 2.0**-11, 9
    assert_bounded(ref + 0.5 * unit * math.sqrt(K) * ref_abs, ref, ref_abs, unit, K, "x", C=1.0)


def test_past_the_bound_fails():
    ref, ref_abs = _ref()
    unit, K = 2.0**-11, 9
    with pytest.raises(AssertionError, match="out of bound"):
        assert_bounded(ref + 3.0 * unit * math.sqrt(K) * ref_abs, ref, ref_abs, unit, K, "x", C=1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_results_fail(bad):
    ref, ref_abs = _ref()
    actual = ref.clone()
    actual[3] = bad
    with pytest.raises(AssertionError, match="1/16 elements"):
        assert_bounded(actual, ref, ref_abs, 2.0**-11, 9, "x")
