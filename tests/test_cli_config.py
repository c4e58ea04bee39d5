"""The CLI's flags come from the config dataclasses (util.config_args): with no flags, `train`
parses to TrainConfig() and `search` to SearchConfig(), field by field (a new field is covered
without touching this test), and every flag of every subcommand has a help text."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tritonbasis.cli import COMMANDS, build_parser, main
from tritonbasis.cli.common import check_args
from tritonbasis.nn.spec import BasisSpec
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
    _same_fields(_parsed("search").config, SearchConfig(),
                 normalise={"spec": BasisSpec.from_dict})


@pytest.mark.parametrize(("cmd", "cls", "exclude"), [("train", TrainConfig, ()),
                                                      ("search", SearchConfig, ("spec",))])
def test_every_config_field_is_a_flag(cmd, cls, exclude):
    names = COMMANDS[cmd].NAMES
    sub = _subparsers(build_parser())[cmd]
    options = {s for a in sub._actions for s in a.option_strings}
    for name, flag in field_flags(cls, {k: v for k, v in names.items()
                                        if k in {f.name for f in dataclasses.fields(cls)}},
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
    c = _parsed("train", "--lr", "0.2", "--workers", "2", "--no-nesterov", "--momentum",
                "0.5").config
    assert (c.lr, c.num_workers, c.nesterov, c.momentum) == (0.2, 2, False, 0.5)
    s = _parsed("search", "--epochs", "3", "--ratio", "0.5", "--keep-basis", "--no-final").config
    assert (s.baseline_epochs, s.final) == (3, False)
    assert BasisSpec.from_dict(s.spec) == BasisSpec(ratio=0.5, keep_basis=True)
