"""The CLI's flags come from the config dataclasses (util.config_args): with no flags, `train`
parses to TrainConfig(), `search` to SearchConfig(), `profile` to ProfileConfig() and `tune` to
TuneConfig(), field by field (a new field is covered without touching this test), and every flag
of every subcommand has a help text."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
import torch

from tritonbasis.cli import COMMANDS, build_parser, main
from tritonbasis.cli.common import check_args
from tritonbasis.nn.spec import BasisSpec
from tritonbasis.perf.profiling import ProfileConfig
from tritonbasis.perf.tune import TuneConfig
from tritonbasis.recipes.search import SearchConfig
from tritonbasis.recipes.train_config import TrainConfig
from tritonbasis.util.config_args import field_flags


def _parsed(*argv):
    p = build_parser()
    args = p.parse_args(list(argv))
    check_args(p, args)
    if hasattr(COMMANDS[args.cmd], "check"):
        COMMANDS[args.cmd].check(p, args)
    return args


def _same_fields(got, want, normalise=None):
    normalise = normalise or {}
    for f in dataclasses.fields(want):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if f.name in normalise:
            a, b = normalise[f.name](a), normalise[f.name](b)
        assert a == b, (f.name, a, b)


def test_train_without_flags_is_trainconfig_defaults():
    _same_fields(_parsed("train").config, TrainConfig())


def test_search_without_flags_is_searchconfig_defaults():
    # the spec is built from --ratio/--keep-basis: compared as the BasisSpec it means
    _same_fields(_parsed("search").config, SearchConfig(), normalise={"spec": BasisSpec.from_dict})


@pytest.mark.parametrize(("cmd", "cls"), [("profile", ProfileConfig), ("tune", TuneConfig)])
def test_profile_and_tune_without_flags_are_config_defaults(cmd, cls):
    _same_fields(_parsed(cmd).config, cls())


@pytest.mark.parametrize(
    ("cmd", "cls", "exclude"),
    [
        ("train", TrainConfig, ()),
        ("search", SearchConfig, ("spec",)),
        ("profile", ProfileConfig, ()),
        ("tune", TuneConfig, ()),
    ],
)
def test_every_config_field_is_a_flag(cmd, cls, exclude):
    names = getattr(COMMANDS[cmd], "NAMES", {})
    sub = _subparsers(build_parser())[cmd]
    options = {s for a in sub._actions for s in a.option_strings}
    for name, flag in field_flags(
        cls,
        {k: v for k, v in names.items() if k in {f.name for f in dataclasses.fields(cls)}},
    ).items():
        if name not in exclude:
            assert flag in options, (name, flag)


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_has_help_text():
    p = build_parser()
    parsers = {"tritonbasis": p, **_subparsers(p)}
    assert set(parsers) >= {"demo", "convert", "train", "search", "bench", "tune", "profile"}
    for cmd, sub in parsers.items():
        for a in sub._actions:
            if isinstance(a, argparse._SubParsersAction):
                continue
            assert a.help and a.help.strip() and a.help != argparse.SUPPRESS, (cmd, a.dest)


def test_a_value_the_config_refuses_is_a_usage_error_naming_the_flag(capsys):
    # momentum has no parse-time type beyond >= 0: TrainConfig refuses 1.0, still at parse time
    with pytest.raises(SystemExit) as e:
        main(["train", "--momentum", "1.0", "--out", "unused"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tritonbasis train: error:") and "--momentum" in err
    assert "\n" not in err


def test_flags_reach_the_config():
    c = _parsed(
        "train", "--lr", "0.2", "--workers", "2", "--no-nesterov", "--momentum", "0.5"
    ).config
    assert (c.lr, c.num_workers, c.nesterov, c.momentum) == (0.2, 2, False, 0.5)
    s = _parsed("search", "--epochs", "3", "--ratio", "0.5", "--keep-basis", "--no-final").config
    assert (s.baseline_epochs, s.final) == (3, False)
    assert BasisSpec.from_dict(s.spec) == BasisSpec(ratio=0.5, keep_basis=True)


def test_profile_and_tune_flags_keep_their_names_and_reach_the_config():
    c = _parsed(
        "profile",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--rows",
        "7",
        "--no-amp",
        "--nvtx",
        "--no-trace",
    ).config
    assert c == ProfileConfig(steps=3, warmup=0, row_limit=7, amp=False, nvtx=True, trace=False)
    t = _parsed(
        "tune",
        "--warmup-ms",
        "0",
        "--rep-ms",
        "20",
        "--min-reps",
        "2",
        "--objective",
        "infer",
        "--layout",
        "contiguous",
        "--dtype",
        "float16",
    ).config
    assert t == TuneConfig(
        warmup_ms=0.0,
        rep_ms=20.0,
        min_reps=2,
        objective="infer",
        layout="contiguous",
        dtype="float16",
    )
    # None: decided by the device, in one place
    assert TuneConfig().for_device("cuda") == TuneConfig(dtype="bfloat16", layout="channels_last")
    assert TuneConfig().for_device("cpu") == TuneConfig(dtype="float32", layout="contiguous")


@pytest.mark.parametrize(
    "argv",
    [
        ("profile", "--steps", "0"),
        ("profile", "--warmup", "-1"),
        ("profile", "--rows", "0"),
        ("tune", "--rep-ms", "0"),
        ("tune", "--warmup-ms", "-1"),
        ("tune", "--min-reps", "0"),
    ],
)
def test_profile_and_tune_refuse_out_of_range_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parsed(*argv)
    assert e.value.code == 2 and argv[1] in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (ProfileConfig, {"steps": 0}),
        (ProfileConfig, {"warmup": -1}),
        (ProfileConfig, {"row_limit": 0}),
        (ProfileConfig, {"lr": 0.0}),
        (ProfileConfig, {"steps": 2.5}),
        (TuneConfig, {"rep_ms": 0.0}),
        (TuneConfig, {"warmup_ms": -1.0}),
        (TuneConfig, {"min_reps": 0}),
        (TuneConfig, {"objective": "both"}),
        (TuneConfig, {"layout": "nhwc"}),
        (TuneConfig, {"dtype": "int8"}),
    ],
)
def test_profile_and_tune_configs_validate(cls, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"{cls.__name__}.{name}"):
        cls(**bad)


def test_a_config_refused_value_names_the_profile_flag(capsys):
    # past the parse-time type: ProfileConfig's message names the flag (--rows, not row_limit)
    from tritonbasis.cli.common import config_from_args

    p = build_parser()
    args = p.parse_args(["profile"])
    args.row_limit = 0
    with pytest.raises(SystemExit) as e:
        config_from_args(p, ProfileConfig, args, names=COMMANDS["profile"].NAMES)
    assert e.value.code == 2 and "--rows" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# every value a flag's help names parses


_SHOWN_DEFAULT = re.compile(r"\(default:? ([^\s;()]+)[;)]")  # "(default: 0.25)", "(default 32;"
_NONE = re.compile(r"\bnone\b")  # "(default: none)", "none: 2 x probe_steps"
_LISTED = re.compile(r"((?:[\w.+/-]+, )*)([\w.+/-]+),? or ([\w.+/-]+)")  # "a, b, or c"
_NUMBER_LABEL = re.compile(r"(?:^|[(;] ?)(\d+(?:\.\d+)?): ")  # "0: ...", "(0.25: CPU-sized)"
# what a value needs beside it to parse at all
_WITH = {("--data", "cifar10"): ["--data-dir", "somewhere"]}


def _named_values(action: argparse.Action) -> set[str]:
    """The values a flag's help text (or its argparse choices) offers."""
    text = " ".join((action.help or "").split())
    values = {str(c) for c in action.choices or ()}
    values |= set(_SHOWN_DEFAULT.findall(text))
    values |= {"none"} if _NONE.search(text) else set()
    for head, a, b in _LISTED.findall(text):
        values |= {v for v in head.split(", ") if v} | {a, b}
    values |= set(_NUMBER_LABEL.findall(text))
    return values


def _flags_and_values():
    for cmd, sub in _subparsers(build_parser()).items():
        for a in sub._actions:
            if a.option_strings and a.nargs != 0:  # switches take no value
                for v in sorted(_named_values(a)):
                    yield cmd, a.option_strings[-1], v


def test_help_and_parsers_agree_on_every_named_value(capsys):
    """For every subcommand, every flag whose help names values (``none: ...``, ``cpu or
    cuda``, ``(default: X)``, ``0: ...``) or that has argparse choices: each named value parses
    (with the parse-time checks of the command). `search --verify-steps none` was refused
    although its help offered "none"."""
    cases = list(_flags_and_values())
    assert {c for c, _, _ in cases} == set(COMMANDS)
    assert ("search", "--verify-steps", "none") in cases and ("demo", "--device", "cpu") in cases
    refused = []
    for cmd, flag, value in cases:
        try:
            _parsed(cmd, flag, value, *_WITH.get((flag, value), []))
        except SystemExit:
            err = capsys.readouterr().err.strip()
            if value == "cuda" and not torch.cuda.is_available():
                assert "CUDA is not available" in err, err  # refused with the reason
                continue
            refused.append((cmd, flag, value, err))
    assert not refused, refused
    assert len(cases) > 60  # the extraction finds the values (a regex that broke finds none)
