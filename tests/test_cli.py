"""The `tltf` command line: listing bases, errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tltf.cli import main


def _tltf(*args, tmp_path):
    env = {**os.environ, "TLTF_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "tltf.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_bases_lists_the_registry_in_a_subprocess(tmp_path):
    result = _tltf("bases", "--filter", "mobilenet*", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "family", "default", "min"]
    assert [line.split()[0] for line in lines[1:]] == [
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
    ]
    assert lines[2].split() == ["mobilenet_v2", "mobilenet_v2", "224", "32"]
    assert "Traceback" not in result.stderr


def test_unknown_base_is_an_error_without_traceback(tmp_path):
    result = _tltf("bases", "mobilenet_v9", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("tltf: error: Unknown base 'mobilenet_v9'.")
    assert "Did you mean" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_subcommand_exits_2(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fly'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "status", "text"),
    [
        (["bases", "--filter", "nothing*"], 2, "tltf: error: No base matches"),
        (["demo", "--k", "0"], 2, "expected an integer >= 1"),
        (["demo", "--seed", "x"], 2, "expected an integer"),
    ],
)
def test_errors_exit_2(argv, status, text, capsys):
    assert main(argv) == status
    assert text in capsys.readouterr().err


def test_demo_error_from_the_library_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    assert main(["demo", "--quick", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tltf: error: Run folder") and err.count("\n") == 1


@pytest.mark.parametrize(
    "command", ["bases", "train", "tune", "evaluate", "predict", "export", "demo"]
)
def test_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"tltf {command}" in out


def test_bases_shows_one_entry(capsys):
    assert main(["bases", "EfficientNetB0"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_b0" in out and "preprocessing: none" in out
    assert "parameters:    4,049,571" in out
    assert "blocks:        18, bottom to top: stem block1a" in out


def test_bases_blocks_adds_block_and_parameter_counts(capsys):
    assert main(["bases", "--filter", "mobilenet_v3_s*", "--blocks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "default", "min", "blocks", "params"]
    assert lines[1].split() == [
        "mobilenet_v3_small",
        "mobilenet_v3",
        "224",
        "32",
        "13",
        "0.9M",
    ]
