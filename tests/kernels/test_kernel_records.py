"""The kernel records (kernels/configs.py): one per kernel, complete, and consistent with the
kernel's parameters and its argument builder in tritonbasis/op/launch_plan.py. Adding a kernel
or a v3 variant is adding a record; these checks make a half-filled one fail here instead of
borrowing another kernel's settings at run time. CPU only (no compile, no launch)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

pytest.importorskip("triton", reason="the kernel records import the triton kernels")

import aot  # tools/aot.py (pyproject: pytest's pythonpath)
from tritonbasis.kernels import RECORDS, KernelRecord, configs  # noqa: E402

from tritonbasis.op import launch_plan  # noqa: E402

NAMES = sorted(RECORDS)


def _params(fn) -> dict[str, bool]:
    """{parameter: is_constexpr} of a @triton.jit / @gluon.jit / interpreted kernel."""
    py = getattr(fn, "fn", fn)
    return {
        p.name: "constexpr" in str(p.annotation) for p in inspect.signature(py).parameters.values()
    }


def test_no_record_field_has_a_default():
    """A record states every field: none can be left out and silently take a value."""
    for f in dataclasses.fields(KernelRecord):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name


@pytest.mark.parametrize("name", NAMES)
def test_record_is_complete_and_matches_its_kernel(name):
    rec = RECORDS[name]
    assert rec.name == name
    params = _params(rec.fn)
    constexprs = {p for p, c in params.items() if c}
    blocks = set(rec.fixed["blocks"])
    assert blocks <= constexprs, f"fixed blocks {blocks - constexprs} are not constexprs"
    assert callable(getattr(launch_plan, rec.builder, None)), f"no builder {rec.builder}"
    assert isinstance(rec.rules, tuple) and all(callable(r) for r in rec.rules)
    if rec.variant_of is None:
        assert rec.applies is None  # a v2 kernel runs every shape its plan gives it
    else:
        assert rec.variant_of in RECORDS and RECORDS[rec.variant_of].variant_of is None
        assert callable(rec.applies)
    if not rec.configs:  # launched with its fixed config only: nothing autotune needs
        unused = (rec.key, rec.layout, rec.registers, rec.budget, rec.caps)
        assert unused == ((), None, None, None, {})
    else:
        _check_autotuned(rec, params, blocks)


def _check_autotuned(rec, params: dict[str, bool], blocks: set[str]) -> None:
    """An autotuned record: configs over the same blocks, key / layout / caps naming the
    kernel's parameters, a register model and a budget for every operand kind."""
    for cname, cfg in rec.configs.items():
        assert set(cfg["blocks"]) == blocks, f"{cname}: blocks differ from the fixed config's"
        assert cfg["num_warps"] in (4, 8) and cfg["num_stages"] >= 1, cname
    assert set(rec.key) <= set(params), f"key {set(rec.key) - set(params)} not parameters"
    operand, stride = rec.layout
    assert operand in params and not params[operand], operand
    assert stride in params and stride == rec.key[-1], "the layout's stride ends the key"
    assert set(rec.caps) <= blocks and set(rec.caps.values()) <= set(params)
    assert rec.dot_m in blocks
    assert callable(rec.registers)
    assert set(rec.budget) == {(2, False), (2, True), (4, False), (4, True)}


def test_v2_kernels_each_name_their_own_register_model():
    models = [r.registers for r in RECORDS.values() if r.configs and r.variant_of is None]
    assert len(set(models)) == len(models), "two v2 kernels share a register model"
    with pytest.raises(KeyError):  # no fallback model for a kernel without a record
        configs.acc_registers("no_such_kernel", next(iter(configs.FWD.configs.values())))


@pytest.mark.parametrize("name", NAMES)
def test_builder_passes_exactly_the_kernels_arguments(name):
    """The launch plan's arguments for this kernel (meta tensors, a ResNet-like shape): one
    per runtime parameter, and its constexprs plus the config's blocks are exactly the
    kernel's constexpr parameters."""
    rec = RECORDS[name]
    params = _params(rec.fn)
    lc = aot.kernel_launch(name)
    assert lc.kernel == name
    assert len(lc.args) == sum(not c for c in params.values())
    given = set(lc.consts) | set(rec.fixed["blocks"])
    assert given == {p for p, c in params.items() if c}
