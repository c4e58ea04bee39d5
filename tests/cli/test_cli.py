"""The command line: demo, convert, train (tiny runs on the embedded digits)."""

import json
import sys

import pytest

import tritonbasis as tb
from tritonbasis.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "convert", "train"):
        assert cmd in out


def test_demo_checks_against_reference(capsys):
    assert main(["demo", "--channels", "32", "--batch", "8", "--size", "8", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "fewer" in out
    assert "on 8 digits images" in out, out


def test_demo_names_random_images_without_scikit_learn(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--channels", "16", "--batch", "4", "--size", "8", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "scikit-learn not installed" in out and "on 4 random images" in out, out
    assert "digits images" not in out, out


def test_convert_prints_report(capsys, tmp_path):
    plan = tmp_path / "plan.json"
    tb.save_plan({"re:layer4\\..*conv[12]": {"ratio": 0.25, "keep_basis": True}}, plan)
    rc = main(
        ["convert", "--width", "0.25", "--plan", str(plan), "--json", str(tmp_path / "r.json")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "layer4.1.conv2" in out and "converted 4/20" in out
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["converted"] == 4


def test_convert_needs_a_plan():
    with pytest.raises(SystemExit, match="--plan"):
        main(["convert"])


def test_train_tiny_run_writes_result_and_resumes(capsys, tmp_path):
    args = [
        "train",
        "--width",
        "0.125",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--ratio",
        "0.25",
        "--out",
        str(tmp_path),
        "--quiet",
        "--time-steps",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for key in ("val accuracy", "parameters", "MACs per image", "train step"):
        assert key in out
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["extra"]["conversion"]["totals"]["converted"] > 0
    assert 0.0 <= res["final_val_acc"] <= 1.0 and res["extra"]["macs_per_image"] > 0
    assert (tmp_path / "last.pt").is_file()
    # resuming a finished run trains nothing more and reports the same accuracy
    assert main(args + ["--resume"]) == 0
    res2 = json.loads((tmp_path / "result.json").read_text())
    assert res2["final_val_acc"] == res["final_val_acc"]


def test_train_cifar_missing_folder_is_a_clear_error(tmp_path, capsys):
    # a known error is one line on stderr (exit 1), no traceback
    rc = main(
        [
            "train",
            "--data",
            "cifar10",
            "--data-dir",
            str(tmp_path / "nothing_here"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tritonbasis: error:") and "nothing_here" in err
    assert "\n" not in err and "Traceback" not in err
    assert "download option" not in err  # the CLI has none


@pytest.mark.slow
def test_search_cli_tiny_run(capsys, tmp_path, one_thread):
    rc = main(
        [
            "search",
            "--width",
            "0.125",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--probe-steps",
            "2",
            "--max-drop",
            "3",
            "--out",
            str(tmp_path),
            "--quiet",
            "--no-final",
            "--no-ladder",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "chosen" in out and "layer4.1.conv2" in out
    plan = tb.load_plan(tmp_path / "plan.json")
    assert len(plan) == 20
    # its plan is what `tritonbasis train --plan` consumes
    assert main(["convert", "--width", "0.125", "--plan", str(tmp_path / "plan.json")]) == 0
