"""Every bad input raises a clear ValueError/TypeError naming the problem, before any launch.

Each bad call goes through three doors: the functional API ``tb.basis_conv2d``, the raw
registered op ``torch.ops.tritonbasis.basis_conv2d`` and (where it applies) the weight
modification path. "Before any launch" is shown by replacing every implementation the op can
dispatch to with a function raising ``AssertionError("launched")``: a validation error must
still be what comes out, and a positive control proves the patch is on the launch path.
"""

from __future__ import annotations

import pytest
import torch

import tritonbasis as tb
import tritonbasis.op.launchers as tb_triton
import tritonbasis.op.reference as tb_reference
from tritonbasis.op.geometry import check_inputs
from tritonbasis.op.registry import triton_import_error

OP = torch.ops.tritonbasis.basis_conv2d


def good(**over):
    """A valid keep-basis call: x (2, 4, 7, 7), 5 basis filters 3x3, C_out = 8."""
    args = dict(
        x=torch.randn(2, 4, 7, 7),
        basis=torch.randn(5, 4, 3, 3),
        coeff=torch.randn(3, 5),
        bias=torch.randn(8),
        stride=1,
        padding=0,
        dilation=1,
        keep_basis=True,
    )
    args.update(over)
    return args


def good_full(**over):
    """A valid full-form call: C_b = 5, C_out = 7."""
    full = dict(coeff=torch.randn(7, 5), bias=torch.randn(7), keep_basis=False)
    full.update(over)
    return good(**full)


def call_functional(a, mode="fused"):
    return tb.basis_conv2d(
        a["x"],
        a["basis"],
        a["coeff"],
        a["bias"],
        a["stride"],
        a["padding"],
        a["dilation"],
        a["keep_basis"],
        mode=mode,
    )


def _as_list(v):
    return [v, v] if isinstance(v, int) else list(v)


def call_raw(a):
    return OP(
        a["x"],
        a["basis"],
        a["coeff"],
        a["bias"],
        None,
        _as_list(a["stride"]),
        _as_list(a["padding"]),
        _as_list(a["dilation"]),
        a["keep_basis"],
        False,
    )


# (id, args, exception type, message regex). Every entry is otherwise a valid call.
BAD = [
    ("x_3d", good(x=torch.randn(4, 7, 7)), ValueError, r"x must be 4-D"),
    ("x_5d", good(x=torch.randn(1, 2, 4, 7, 7)), ValueError, r"x must be 4-D"),
    ("basis_3d", good(basis=torch.randn(5, 4, 3)), ValueError, r"basis must be 4-D"),
    ("basis_5d", good(basis=torch.randn(5, 4, 3, 3, 1)), ValueError, r"basis must be 4-D"),
    ("coeff_1d", good(coeff=torch.randn(15)), ValueError, r"coeff must be 2-D"),
    ("coeff_3d", good(coeff=torch.randn(3, 5, 1)), ValueError, r"coeff must be 2-D"),
    (
        "cin_mismatch",
        good(basis=torch.randn(5, 3, 3, 3)),
        ValueError,
        r"basis expects 3 input channels but x has 4",
    ),
    (
        "cin_bigger",
        good(basis=torch.randn(5, 8, 3, 3)),
        ValueError,
        r"basis expects 8 input channels but x has 4",
    ),
    ("grouped_2", good(basis=torch.randn(5, 2, 3, 3)), ValueError, r"groups=2.*not supported"),
    ("depthwise_like", good(basis=torch.randn(5, 1, 3, 3)), ValueError, r"groups=4.*not supported"),
    (
        "cb_zero",
        good(basis=torch.randn(0, 4, 3, 3), coeff=torch.randn(3, 0)),
        ValueError,
        r"C_b >= 1.*C_b=0",
    ),
    (
        "cb_gt_cout_full",
        good(coeff=torch.randn(3, 5), bias=torch.randn(3), keep_basis=False),
        ValueError,
        r"C_b=5 is out of range.*C_out=3",
    ),
    (
        "full_no_rows",
        good(coeff=torch.randn(0, 5), bias=None, keep_basis=False),
        ValueError,
        r"C_out >= 1",
    ),
    ("coeff_cols", good(coeff=torch.randn(3, 4)), ValueError, r"coeff must have C_b=5 columns"),
    (
        "coeff_cols_full",
        good_full(coeff=torch.randn(7, 6)),
        ValueError,
        r"coeff must have C_b=5 columns",
    ),
    ("bias_keep_short", good(bias=torch.randn(3)), ValueError, r"bias must have shape \(8,\)"),
    ("bias_keep_2d", good(bias=torch.randn(8, 1)), ValueError, r"bias must have shape \(8,\)"),
    (
        "bias_full_as_keep",
        good_full(bias=torch.randn(12)),
        ValueError,
        r"bias must have shape \(7,\)",
    ),
    ("bias_full_short", good_full(bias=torch.randn(5)), ValueError, r"bias must have shape \(7,\)"),
    (
        "dtype_basis",
        good(basis=torch.randn(5, 4, 3, 3, dtype=torch.float64)),
        TypeError,
        r"basis has dtype torch.float64 but x has torch.float32",
    ),
    (
        "dtype_coeff",
        good(coeff=torch.randn(3, 5, dtype=torch.float16)),
        TypeError,
        r"coeff has dtype torch.float16",
    ),
    (
        "dtype_bias",
        good(bias=torch.randn(8, dtype=torch.bfloat16)),
        TypeError,
        r"bias has dtype torch.bfloat16",
    ),
    (
        "dtype_x",
        good(x=torch.randn(2, 4, 7, 7, dtype=torch.float64)),
        TypeError,
        r"has dtype torch.float32 but x has torch.float64",
    ),
    (
        "int_x",
        good(x=torch.ones(2, 4, 7, 7, dtype=torch.int64)),
        TypeError,
        r"x must be a floating-point tensor.*int64",
    ),
    (
        "int_basis",
        good(basis=torch.ones(5, 4, 3, 3, dtype=torch.int32)),
        TypeError,
        r"basis must be a floating-point tensor.*int32",
    ),
    (
        "int_coeff",
        good(coeff=torch.ones(3, 5, dtype=torch.int64)),
        TypeError,
        r"coeff must be a floating-point tensor",
    ),
    (
        "int_bias",
        good(bias=torch.ones(8, dtype=torch.uint8)),
        TypeError,
        r"bias must be a floating-point tensor",
    ),
    (
        "bool_x",
        good(x=torch.ones(2, 4, 7, 7, dtype=torch.bool)),
        TypeError,
        r"x must be a floating-point tensor",
    ),
    (
        "complex_x",
        good(x=torch.ones(2, 4, 7, 7, dtype=torch.complex64)),
        TypeError,
        r"x must be a floating-point tensor",
    ),
    (
        "device_basis",
        good(basis=torch.randn(5, 4, 3, 3, device="meta")),
        ValueError,
        r"basis is on meta but x is on cpu",
    ),
    (
        "device_coeff",
        good(coeff=torch.randn(3, 5, device="meta")),
        ValueError,
        r"coeff is on meta but x is on cpu",
    ),
    (
        "device_bias",
        good(bias=torch.randn(8, device="meta")),
        ValueError,
        r"bias is on meta but x is on cpu",
    ),
    (
        "device_x",
        good(x=torch.randn(2, 4, 7, 7, device="meta")),
        ValueError,
        r"is on cpu but x is on meta",
    ),
    ("stride_0", good(stride=0), ValueError, r"stride must be >= 1"),
    ("stride_0_one_axis", good(stride=(1, 0)), ValueError, r"stride must be >= 1"),
    ("stride_negative", good(stride=-1), ValueError, r"stride must be >= 1"),
    ("padding_negative", good(padding=-1), ValueError, r"padding must be >= 0"),
    ("padding_negative_w", good(padding=(0, -2)), ValueError, r"padding must be >= 0"),
    ("dilation_0", good(dilation=0), ValueError, r"dilation must be >= 1"),
    ("stride_3_tuple", good(stride=(1, 1, 1)), ValueError, r"stride must be an int or a pair"),
    ("padding_1_tuple", good(padding=(1,)), ValueError, r"padding must be an int or a pair"),
    ("empty_output", good(x=torch.randn(2, 4, 2, 2)), ValueError, r"output would be empty"),
    (
        "empty_output_dilated",
        good(x=torch.randn(2, 4, 4, 9), dilation=2),
        ValueError,
        r"output would be empty.*4x9",
    ),
    ("empty_output_w_only", good(x=torch.randn(2, 4, 7, 1)), ValueError, r"output would be empty"),
    ("empty_kernel", good(basis=torch.randn(5, 4, 0, 3)), ValueError, r"empty input or filter"),
]

# Only representable through the Python API (the op schema takes int[] for the geometry).
BAD_PY_ONLY = [
    ("stride_bool", good(stride=True), TypeError, r"stride must be an int or a pair.*bool"),
    ("stride_float", good(stride=1.0), TypeError, r"stride must be an int or a pair.*float"),
    ("stride_float_pair", good(stride=(1.0, 1.0)), ValueError, r"stride must be an int or a pair"),
    (
        "dilation_bool_pair",
        good(dilation=(True, 1)),
        ValueError,
        r"dilation must be an int or a pair",
    ),
    ("padding_str", good(padding="same"), ValueError, r"padding must be an int or a pair"),
    ("padding_none", good(padding=None), TypeError, r"padding must be an int or a pair"),
    ("x_not_tensor", good(x=[[1.0]]), TypeError, r"x must be a torch.Tensor.*list"),
    ("coeff_not_tensor", good(coeff=1.0), TypeError, r"coeff must be a torch.Tensor.*float"),
]

ids = [b[0] for b in BAD]
ids_py = [b[0] for b in BAD_PY_ONLY]


@pytest.fixture
def no_launch(monkeypatch):
    """Every implementation the op (or weight mode) can run raises AssertionError."""

    def launched(*args, **kwargs):
        raise AssertionError("launched")

    monkeypatch.setattr(tb_reference, "forward", launched)
    monkeypatch.setattr(tb_reference, "backward", launched)
    monkeypatch.setattr(tb_reference, "weight_modified", launched)
    monkeypatch.setattr(tb_triton, "forward", launched)
    monkeypatch.setattr(tb_triton, "backward", launched)


@pytest.mark.parametrize(
    ("args", "exc", "match"), [b[1:] for b in BAD + BAD_PY_ONLY], ids=ids + ids_py
)
@pytest.mark.parametrize("mode", ["fused", "weight", "auto"])
def test_functional_rejects_before_launch(no_launch, args, exc, match, mode):
    with pytest.raises(exc, match=match):
        call_functional(args, mode=mode)


@pytest.mark.parametrize(("args", "exc", "match"), [b[1:] for b in BAD], ids=ids)
def test_raw_op_rejects_before_launch(no_launch, args, exc, match):
    with pytest.raises(exc, match=match):
        call_raw(args)


@pytest.mark.parametrize(("args", "exc", "match"), [b[1:] for b in BAD], ids=ids)
def test_check_inputs_rejects(args, exc, match):
    a = args
    with pytest.raises(exc, match=match):
        check_inputs(
            a["x"],
            a["basis"],
            a["coeff"],
            a["bias"],
            a["stride"],
            a["padding"],
            a["dilation"],
            a["keep_basis"],
        )


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("form", [good, good_full], ids=["keep", "full"])
def test_no_launch_fixture_is_on_the_launch_path(no_launch, form, backend):
    """Positive control: a valid call does reach the patched launch (so the tests above would
    see AssertionError if validation happened after it)."""
    a = form()
    with tb.use_backend(backend):
        with pytest.raises(AssertionError, match="launched"):
            call_functional(a)
        with pytest.raises(AssertionError, match="launched"):
            call_raw(a)
        with pytest.raises(AssertionError, match="launched"):
            call_functional(a, mode="weight")


def test_raw_op_float_stride_rejected_by_schema(no_launch):
    a = good()
    with pytest.raises((TypeError, RuntimeError), match="stride"):
        OP(a["x"], a["basis"], a["coeff"], a["bias"], None, [1.0, 1.0], [0, 0], [1, 1], True, False)


def test_valid_calls_pass_validation():
    """The baseline calls the bad ones are derived from are themselves fine (so each error
    above is caused by the one thing changed)."""
    for a in (good(), good_full(), good(bias=None), good_full(bias=None)):
        g = check_inputs(
            a["x"],
            a["basis"],
            a["coeff"],
            a["bias"],
            a["stride"],
            a["padding"],
            a["dilation"],
            a["keep_basis"],
        )
        y = call_functional(a)
        assert y.shape == (g.N, g.C_out, g.Ho, g.Wo)


# --------------------------------------------------------------------------------------------
# mode and backend


@pytest.mark.parametrize("mode", ["bogus", "Fused", "", None])
def test_invalid_mode(no_launch, mode):
    with pytest.raises(ValueError, match=r"mode must be one of fused, weight, auto"):
        call_functional(good(), mode=mode)


def test_invalid_mode_wins_over_bad_shapes(no_launch):
    with pytest.raises(ValueError, match=r"mode must be one of"):
        call_functional(good(x=torch.randn(4, 7, 7)), mode="bogus")


@pytest.mark.parametrize("name", ["bogus", "cuda", "", 3])
def test_set_backend_rejects_unknown(name):
    with pytest.raises(ValueError, match=r"backend must be one of auto, torch, triton"):
        tb.set_backend(name)
    assert tb.get_backend() == "auto"  # unchanged


def test_set_backend_is_case_insensitive_like_the_env_var(monkeypatch):
    tb.set_backend(" Torch ")
    assert tb.get_backend() == "torch"
    tb.set_backend(None)
    monkeypatch.setenv("TRITONBASIS_BACKEND", " Torch ")
    assert tb.get_backend() == "torch"


def test_use_backend_rejects_unknown_and_restores():
    with tb.use_backend("torch"):
        with pytest.raises(ValueError, match=r"backend must be one of"), tb.use_backend("bogus"):
            pass
        assert tb.get_backend() == "torch"
    assert tb.get_backend() == "auto"


def test_env_backend_bogus(monkeypatch, no_launch):
    monkeypatch.setenv("TRITONBASIS_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"TRITONBASIS_BACKEND must be one of.*'bogus'"):
        tb.get_backend()
    with pytest.raises(ValueError, match=r"TRITONBASIS_BACKEND must be one of.*'bogus'"):
        call_functional(good())
    with pytest.raises(ValueError, match=r"TRITONBASIS_BACKEND must be one of.*'bogus'"):
        call_raw(good())


def test_env_backend_is_case_and_space_insensitive(monkeypatch):
    monkeypatch.setenv("TRITONBASIS_BACKEND", " Torch ")
    assert tb.get_backend() == "torch"


def test_set_backend_overrides_env(monkeypatch):
    monkeypatch.setenv("TRITONBASIS_BACKEND", "bogus")
    tb.set_backend("torch")
    assert tb.get_backend() == "torch"
    y = call_functional(good())
    assert y.shape == (2, 8, 5, 5)


@pytest.mark.parametrize("form", [good, good_full], ids=["keep", "full"])
def test_forced_triton_float64_on_cpu(no_launch, form):
    a = form()
    a = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    err = triton_import_error()
    with tb.use_backend("triton"):
        if err is None:
            exc, match = ValueError, r"TRITONBASIS_BACKEND=triton cannot run this call: dtype"
        else:
            exc, match = RuntimeError, r"triton cannot be imported"
        with pytest.raises(exc, match=match):
            call_functional(a)
        with pytest.raises(exc, match=match):
            call_raw(a)


def test_forced_triton_env_float64_on_cpu(monkeypatch, no_launch):
    monkeypatch.setenv("TRITONBASIS_BACKEND", "triton")
    a = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in good().items()}
    if triton_import_error() is not None:
        pytest.skip("triton does not import here; covered by the RuntimeError branch above")
    with pytest.raises(ValueError, match=r"cannot run this call: dtype torch.float64"):
        call_functional(a)


# --------------------------------------------------------------------------------------------
# BasisConv2d's own checks


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(basis_channels=0), ValueError, r"basis_channels must be a positive int, got 0"),
        (dict(basis_channels=-3), ValueError, r"basis_channels must be a positive int"),
        (dict(basis_channels=9), ValueError, r"basis_channels=9 is out of range.*out_channels=8"),
        (dict(basis_channels=9, keep_basis=False), ValueError, r"basis_channels=9 is out of"),
        (dict(basis_channels=True), ValueError, r"basis_channels must be a positive int"),
        (dict(basis_channels=2.0), ValueError, r"basis_channels must be a positive int"),
        (dict(in_channels=0), ValueError, r"in_channels must be a positive int"),
        (dict(out_channels=0), ValueError, r"out_channels must be a positive int"),
        (dict(mode="bogus"), ValueError, r"mode must be one of fused, weight, auto"),
        (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size must be an int or a pair"),
        (dict(stride=1.5), TypeError, r"stride must be an int or a pair"),
        (dict(padding=(1, 1, 1)), ValueError, r"padding must be an int or a pair"),
        (dict(dilation=False), TypeError, r"dilation must be an int or a pair.*bool"),
        (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0"),
        (dict(kernel_size=-3), ValueError, r"kernel_size must be >= 1, got -3"),
        (dict(kernel_size=(3, 0)), ValueError, r"kernel_size must be >= 1"),
        (dict(kernel_size=3.0), TypeError, r"kernel_size must be an int or a pair"),
        (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
        (dict(dilation=(1, 0)), ValueError, r"dilation must be >= 1"),
        (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
        (dict(padding="full"), ValueError, r"padding must be 'same', 'valid' or an int"),
        (
            dict(padding="same", stride=2),
            ValueError,
            r"padding='same' is not supported for "
            r"strided",
        ),
        (
            dict(padding_mode="mirror"),
            ValueError,
            r"padding_mode must be one of zeros, "
            r"reflect, replicate, circular",
        ),
        (dict(groups=2), ValueError, r"groups=2 is not supported.*groups=1"),
        (dict(groups=1.0), TypeError, r"groups must be an int"),
        (dict(bias="yes"), TypeError, r"bias must be a bool"),
        (dict(keep_basis=1), TypeError, r"keep_basis must be a bool"),
        (dict(in_channels=-4), ValueError, r"in_channels must be a positive int"),
        (dict(in_channels=4.0), ValueError, r"in_channels must be a positive int"),
        (dict(basis_channels=None), TypeError, r"needs basis_channels=<int> or ratio="),
        (dict(ratio=0.5), ValueError, r"exactly one of basis_channels and ratio"),
        (dict(basis_channels=None, ratio=0.0), ValueError, r"ratio must be in \(0, 1\]"),
        (dict(basis_channels=None, ratio=1.5), ValueError, r"ratio must be in \(0, 1\]"),
        (dict(basis_channels=None, ratio="0.25"), ValueError, r"ratio must be a finite"),
        (dict(basis_channels=None, ratio=float("nan")), ValueError, r"ratio must be a finite"),
    ],
    ids=[
        "cb0",
        "cb_neg",
        "cb_gt_cout",
        "cb_gt_cout_full",
        "cb_bool",
        "cb_float",
        "cin0",
        "cout0",
        "mode",
        "kernel_3",
        "stride_float",
        "padding_3",
        "dilation_bool",
        "k0",
        "k_neg",
        "k_pair0",
        "k_float",
        "stride0",
        "dilation0",
        "padding_neg",
        "padding_str",
        "same_strided",
        "padding_mode",
        "groups2",
        "groups_float",
        "bias_str",
        "keep_int",
        "cin_neg",
        "cin_float",
        "no_cb",
        "cb_and_ratio",
        "ratio0",
        "ratio_gt1",
        "ratio_str",
        "ratio_nan",
    ],
)
def test_layer_constructor_rejects(kwargs, exc, match):
    base = dict(in_channels=4, out_channels=8, kernel_size=3, basis_channels=4)
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        tb.BasisConv2d(**base)


def test_layer_old_positional_basis_channels_fails_loudly():
    """The 4th positional argument is stride, as in nn.Conv2d. A call written for the old
    signature (4th = basis_channels) names the missing keyword instead of meaning stride=16."""
    with pytest.raises(
        TypeError,
        match=r"basis_channels=<int> or ratio=.*4th positional "
        r"argument is stride",
    ):
        tb.BasisConv2d(64, 64, 3, 16)
    with pytest.raises(TypeError, match=r"basis_channels=<int> or ratio="):
        tb.BasisConv2d(64, 64, 3, 16, padding=1, mode="fused")
    with pytest.raises(TypeError, match="multiple values for argument 'stride'"):
        tb.BasisConv2d(64, 64, 3, 16, stride=2, basis_channels=16)
    with pytest.raises(ValueError, match="kernel_size must be >= 1, got 0"):
        tb.BasisConv2d(4, 8, 0, basis_channels=2)  # was a ZeroDivisionError


def test_layer_forward_rejects_wrong_input(no_launch):
    layer = tb.BasisConv2d(4, 8, 3, basis_channels=4, mode="fused")
    with pytest.raises(ValueError, match=r"basis expects 4 input channels but x has 3"):
        layer(torch.randn(2, 3, 7, 7))
    with pytest.raises(TypeError, match=r"has dtype torch.float32 but x has torch.float64"):
        layer(torch.randn(2, 4, 7, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"output would be empty"):
        layer(torch.randn(2, 4, 2, 2))
