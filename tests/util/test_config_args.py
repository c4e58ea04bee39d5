"""tritonbasis.util.config_args: argparse flags generated from a config dataclass (one set of
defaults for the CLI and the Python API), and the dataclass built back from the namespace."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from tritonbasis.util.config_args import (
    add_dataclass_arguments,
    dataclass_defaults,
    field_flags,
    from_args,
)


@dataclasses.dataclass
class Cfg:
    steps: int = 3
    lr: float = 0.1
    name: str = "run"
    out: Path = Path("runs")
    tag: str | None = None
    seeds: tuple[int, ...] = (0, 1)
    widths: list[float] = dataclasses.field(default_factory=lambda: [0.5])
    cases: str | Sequence[str] | None = None  # the CLI parses the first member: str
    mode: Literal["fast", "slow"] = "fast"
    verbose: bool = False
    final: bool = True
    tf32: bool = True
    internal: object = None


HELP = {
    "steps": "training steps",
    "lr": "learning rate",
    "name": "run name",
    "out": "output folder",
    "tag": "a label",
    "seeds": "seeds",
    "widths": "widths",
    "cases": "cases (default: every case)",
    "mode": "speed",
    "verbose": "talk more",
    "final": "skip the final training",
    "tf32": "TF32 matmuls",
}


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    opts = dict(help=HELP, exclude=("internal",), choices={"tf32": ("on", "off")})
    opts.update(kw)
    add_dataclass_arguments(p, Cfg, **opts)
    return p


def test_no_flags_give_the_dataclass_defaults():
    args = _parser().parse_args([])
    assert from_args(Cfg, args) == Cfg()
    assert not hasattr(args, "internal")  # excluded: not a flag, keeps its default


def test_each_kind_of_field_parses_to_its_type():
    args = _parser().parse_args(
        [
            "--steps",
            "7",
            "--lr",
            "1e-3",
            "--name",
            "x",
            "--out",
            "/tmp/o",
            "--tag",
            "t",
            "--seeds",
            "4",
            "5",
            "6",
            "--widths",
            "0.25",
            "1",
            "--cases",
            "a,b",
            "--mode",
            "slow",
            "--verbose",
            "--no-final",
            "--tf32",
            "off",
        ]
    )
    cfg = from_args(Cfg, args)
    assert cfg == Cfg(
        steps=7,
        lr=1e-3,
        name="x",
        out=Path("/tmp/o"),
        tag="t",
        seeds=(4, 5, 6),
        widths=[0.25, 1.0],
        cases="a,b",
        mode="slow",
        verbose=True,
        final=False,
        tf32=False,
    )
    assert isinstance(cfg.seeds, tuple) and isinstance(cfg.widths, list)
    assert from_args(Cfg, _parser().parse_args(["--tf32", "on"])).tf32 is True


def test_overrides_win_over_the_namespace():
    args = _parser().parse_args(["--steps", "7"])
    assert from_args(Cfg, args, steps=9, internal="x") == Cfg(steps=9, internal="x")


def test_bad_values_are_argparse_errors(capsys):
    p = _parser()
    for argv in (["--steps", "x"], ["--mode", "medium"], ["--tf32", "yes"], ["--lr"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2, argv
    assert "invalid choice: 'medium'" in capsys.readouterr().err


def test_help_says_every_default(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "training steps (default: 3)",
        "learning rate (default: 0.1)",
        "output folder (default: runs)",
        "a label (default: none)",
        "seeds (default: 0 1)",
        "speed (default: fast)",
        "talk more (default: off)",
        "skip the final training (default: off)",
        "TF32 matmuls (default: on)",
        "cases (default: every case)",
        "--no-final",
        "--tf32 {on,off}",
        "--mode {fast,slow}",
        "--steps STEPS",
    ):
        assert text in out, text
    assert "--final" not in out.replace("--no-final", "")


def test_names_rename_flags_and_bool_names_are_the_switch():
    p = _parser(names={"steps": "--n-steps", "final": "--skip-final"})
    args = p.parse_args(["--n-steps", "2", "--skip-final"])
    assert from_args(Cfg, args) == Cfg(steps=2, final=False)
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "2"])


def test_types_replace_the_parser_type():
    def positive(s: str) -> int:
        v = int(s)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return v

    p = _parser(types={"steps": positive})
    assert p.parse_args(["--steps", "4"]).steps == 4
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "0"])


def test_mistakes_in_the_spec_are_errors():
    with pytest.raises(ValueError, match=r"no help text .*\['lr'\]"):
        _parser(help={k: v for k, v in HELP.items() if k != "lr"})
    with pytest.raises(ValueError, match="does not have: \\['stepz'\\]"):
        _parser(help={**HELP, "stepz": "typo"})
    with pytest.raises(TypeError, match="'internal'"):
        _parser(exclude=(), help={**HELP, "internal": "x"})

    @dataclasses.dataclass
    class NoDefault:
        x: int

    with pytest.raises(TypeError, match="no default"):
        add_dataclass_arguments(argparse.ArgumentParser(), NoDefault, help={"x": "x"})
    with pytest.raises(TypeError, match="not a dataclass"):
        add_dataclass_arguments(argparse.ArgumentParser(), dict, help={})


def test_a_percent_in_help_survives_argparse(capsys):
    @dataclasses.dataclass
    class P:
        budget: float = 0.5

    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, P, help={"budget": "accuracy budget in % points"})
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    assert "accuracy budget in % points (default: 0.5)" in " ".join(capsys.readouterr().out.split())


def test_dataclass_defaults():
    d = dataclass_defaults(Cfg)
    assert d["steps"] == 3 and d["widths"] == [0.5] and d["internal"] is None
    assert set(d) == {f.name for f in dataclasses.fields(Cfg)}


@dataclasses.dataclass
class Documented:
    steps: int = dataclasses.field(default=3, metadata={"help": "training steps"})
    final: bool = dataclasses.field(default=True, metadata={"help": "run the final training"})
    quick: bool = dataclasses.field(default=False, metadata={"help": "a short run"})
    lr: float = 0.1  # no metadata: the caller's help or fallback_help


def _help_of(p) -> dict[str, str]:
    return {a.dest: a.help for a in p._actions if a.dest != "help"}


def test_help_comes_from_field_metadata_and_the_callers_text_wins():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Documented, help={"lr": "learning rate"})
    h = _help_of(p)
    assert h["steps"] == "training steps (default: 3)" and h["lr"] == "learning rate (default: 0.1)"
    assert h["quick"] == "a short run (default: off)"
    # a True field's metadata says what the field means; its --no- switch is explained from it
    assert h["final"] == "run the final training (default: on; --no-final turns it off)"
    assert from_args(Documented, p.parse_args(["--no-final"])).final is False
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Documented, help={"steps": "optimizer steps", "lr": "lr"})
    assert _help_of(p)["steps"] == "optimizer steps (default: 3)"


def test_fallback_help_fills_only_fields_without_metadata_and_ignores_unknown_names():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(
        p,
        Documented,
        fallback_help={
            "lr": "learning rate",
            "steps": "not used: metadata wins",
            "gone": "a removed field",
        },
    )
    h = _help_of(p)
    assert h["lr"] == "learning rate (default: 0.1)" and h["steps"] == "training steps (default: 3)"
    with pytest.raises(ValueError, match=r"no help text .*\['lr'\]"):
        add_dataclass_arguments(argparse.ArgumentParser(), Documented)


def test_field_flags_are_the_flags_added():
    flags = field_flags(Cfg, {"steps": "--n-steps"}, {"tf32": ("on", "off")})
    assert flags["steps"] == "--n-steps" and flags["final"] == "--no-final"
    assert flags["tf32"] == "--tf32" and flags["verbose"] == "--verbose"
    p = _parser(names={"steps": "--n-steps"})
    options = {s for a in p._actions for s in a.option_strings}
    assert {f for n, f in flags.items() if n != "internal"} <= options
