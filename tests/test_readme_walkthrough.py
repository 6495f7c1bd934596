"""The README's "First 10 minutes" walkthrough works as written.

The walkthrough is the bash block between `<!-- walkthrough -->` and
`<!-- /walkthrough -->` in README.md. It holds only comments, Python
here-documents (`python - <<'EOF'` ... `EOF`) and `tltf` commands, so that the
test can run it step by step in one new Python process (started with tltf
imported: tests/processes.py), in an empty folder with
an empty tltf store: the Python steps as written, and each `tltf` command through
`tltf.cli.main` (the console script's function), which must return 0. Two changes
make it fit a test: `tltf train` gets a short schedule (`SHORT_SCHEDULE`), and the
image folder gets fewer images per class (`SMALL_SIZES`); the README's own run
takes a minute more.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests import processes
from tltf.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"

#: Flags added to the walkthrough's `tltf train` here, so that the test is quick.
SHORT_SCHEDULE = ["--head-epochs", "2", "--fine-tune-epochs", "1"]
#: The walkthrough's images per class (train, test), and the test's smaller ones.
FULL_SIZES = '[("train", 20, 0), ("test", 10, 1)]'
SMALL_SIZES = '[("train", 8, 0), ("test", 4, 1)]'

#: Runs the steps (a JSON file: [[kind, text], ...]) in the current folder.
RUNNER = """\
import json
import shlex
import sys

from tltf.cli import main

for kind, text in json.load(open(sys.argv[1])):
    if kind == "python":
        print("$ python - <<'EOF' ...", flush=True)
        exec(compile(text, "<README walkthrough>", "exec"), {"__name__": "__main__"})
    else:
        print("$", text, flush=True)
        status = main(shlex.split(text)[1:])
        if status:
            sys.exit(f"README walkthrough: `{text}` exited with status {status}")
"""


def _section(title: str) -> str:
    """The README text under the `## title` heading, up to the next `## `."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def walkthrough() -> str:
    """The walkthrough's bash block, without its fences."""
    text = README.read_text()
    match = re.search(
        r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", text, re.S
    )
    assert match, "README.md has no ```bash block between walkthrough markers"
    return match.group(1)


def steps(script: str) -> list[tuple[str, str]]:
    """The walkthrough as ("python", source) and ("tltf", command) steps.

    Raises:
        AssertionError: On a line that is none of a comment, a Python
            here-document and a one-line `tltf` command.
    """
    lines = iter(script.splitlines())
    result = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped == "python - <<'EOF'":
            body = []
            for body_line in lines:
                if body_line == "EOF":
                    break
                body.append(body_line)
            else:
                raise AssertionError("README walkthrough: a here-document lacks EOF")
            result.append(("python", "\n".join(body)))
        elif stripped.startswith("tltf ") and not stripped.endswith("\\"):
            result.append(("tltf", stripped))
        else:
            raise AssertionError(
                f"README walkthrough: {line!r} is not a comment, a "
                "`python - <<'EOF'` here-document or a one-line tltf command, "
                "so this test cannot run it"
            )
    return result


def test_walkthrough_trains_the_shipped_base_then_evaluates_predicts_and_exports():
    commands = [text for kind, text in steps(walkthrough()) if kind == "tltf"]
    assert [shlex.split(c)[1] for c in commands] == [
        "train",
        "evaluate",
        "predict",
        "export",
    ]
    assert "--base demo" in commands[0]
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # exits (fails) on a bad flag


def test_cli_section_shows_the_offline_path_first():
    first_block = re.search(r"```bash\n(.*?)```", _section("The command line"), re.S)
    assert first_block, "the CLI section has no bash block"
    trains = [
        line for line in first_block.group(1).splitlines() if "tltf train" in line
    ]
    assert trains, "the CLI section's first block has no tltf train"
    assert all("--base demo" in line for line in trains), trains


@pytest.mark.slow
def test_walkthrough_runs_in_an_empty_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    plan = []
    for kind, text in steps(walkthrough()):
        if text.startswith("tltf train"):
            text = f"{text} {shlex.join(SHORT_SCHEDULE)}"
        elif kind == "python":  # fewer images: the same folders, faster
            assert FULL_SIZES in text, "the walkthrough's image counts changed"
            text = text.replace(FULL_SIZES, SMALL_SIZES)
        plan.append((kind, text))
    (tmp_path / "steps.json").write_text(json.dumps(plan))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TLTF_HOME": str(tmp_path / "tltf_home"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
    }
    done = processes.run(  # a new process, started with tltf imported
        [sys.executable, "-c", RUNNER, str(tmp_path / "steps.json")],
        cwd=work,
        env=env,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    # What the walkthrough says it makes: an image folder, a run folder, an
    # evaluation, a predictions CSV and a TFLite file.
    classes = sorted(p.name for p in (work / "shapes" / "train").iterdir())
    assert len(classes) == 12 and "star4" in classes
    assert len(list((work / "shapes" / "test" / "star4").glob("*.png"))) == 4
    run = work / "runs" / "shapes"
    assert (run / "summary.json").is_file() and (run / "best.keras").is_file()
    assert "accuracy" in output and "tltf: wrote" in output
    with open(work / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4 and all(row["label_1"] for row in rows)
    assert (work / "shapes.tflite").stat().st_size > 0
    # The shipped base was used: nothing was pretrained into the empty store.
    assert not (tmp_path / "tltf_home" / "bases").exists()
