"""The tests' child processes (tests/processes.py) behave as `python` would:
arguments, folder, environment, output, exit status, signals."""

from __future__ import annotations

import gc
import signal
import sys

import pytest

from tests import processes

SHOW = """\
import os, sys, tempfile
print(sys.argv[1:], os.getcwd(), os.environ.get("ONLY_HERE"), tempfile.gettempdir())
print("to stderr", file=sys.stderr)
"""


@pytest.mark.slow
def test_a_child_gets_its_arguments_folder_environment_and_output(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {"ONLY_HERE": "yes", "TMPDIR": str(tmp_path / "tmp")}
    done = processes.run(
        [sys.executable, "-c", SHOW, "a", "b c"], cwd=tmp_path, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [
        f"['a', 'b c'] {tmp_path} yes {tmp_path / 'tmp'}",
        "",
    ]
    assert done.stderr == "to stderr\n"
    # A script file, and a module run as __main__ (with `-m`).
    (tmp_path / "show.py").write_text(SHOW)
    script = processes.run([sys.executable, str(tmp_path / "show.py"), "x"], env=env)
    assert script.stdout.startswith("['x'] ")
    module = processes.run([sys.executable, "-m", "show", "y"], cwd=tmp_path, env=env)
    assert module.stdout.startswith("['y'] ")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit('bad config')", 1, "bad config\n"),
        ("raise ValueError('boom')", 1, "ValueError: boom\n"),
        ("import atexit; atexit.register(print, 'at exit')", 0, ""),
    ],
    ids=["exit-3", "exit-message", "exception", "atexit"],
)
def test_a_childs_exit_status_is_pythons(code, status, stderr):
    done = processes.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == status
    assert done.stderr.endswith(stderr)
    if "atexit" in code:
        assert done.stdout == "at exit\n"


@pytest.mark.slow
def test_a_sigkilled_child_reports_minus_9_and_its_output_so_far_then_cleans_up():
    child = processes.python(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        new_session=True,
    )
    assert child.wait_for("up", timeout=60) == "up\n"
    assert child.poll() is None
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert child.communicate() == ("up\n", None)
    # Its output files go with it, read or not.
    folder = child._stdout.parent
    del child
    gc.collect()
    assert not folder.exists()
