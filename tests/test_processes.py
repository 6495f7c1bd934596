"""The tests' child processes (tests/processes.py) behave as `python` would:
arguments, folder, environment, output, exit status, signals."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

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


TF_SETTINGS = """\
import os
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
options = tf.config.optimizer.get_experimental_options()
print(options.get("disable_meta_optimizer", False), _pywrap_util_port.IsMklEnabled())
"""


@pytest.mark.slow
def test_the_workers_and_their_children_run_tensorflow_alike_and_lean():
    """tests/tf_settings.py turns off Grappler and oneDNN's kernels in the pytest
    workers and in their children alike (a killed run and the run it resumes to
    are compared bit for bit), and passes nothing on to a fresh interpreter."""
    from tests import tf_settings

    assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
    if tf_settings.ONEDNN_OFF:
        assert not _pywrap_util_port.IsMklEnabled()
        # Set only while TensorFlow was imported: a fresh interpreter, which
        # reads it from the environment, runs TensorFlow's defaults.
        assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    done = processes.run([sys.executable, "-c", TF_SETTINGS], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(_pywrap_util_port.IsMklEnabled())]


DEFAULT_RUN = """\
import os, sys
import tltf
import keras
import numpy as np
import tensorflow as tf
from tests.helpers import make_data, make_tiny_base
assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer")
keras.utils.set_random_seed(0)
x, y = make_data()
model = tltf.build_model(make_tiny_base(), 3)
history = tltf.fine_tune(model, (x, y), fine_tune_epochs=2, keep_best=False, verbose=0)
path = os.path.join(sys.argv[1], "model.keras")
model.save(path)
loaded = keras.saving.load_model(path, safe_mode=True)
np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
accuracy = (loaded.predict(x, verbose=0).argmax(axis=1) == y).mean()
print(sorted(set(history.history["stage"])), accuracy > 0.9)
"""


@pytest.mark.slow
def test_a_fresh_interpreter_trains_saves_and_loads_with_tensorflows_defaults(
    tmp_path,
):
    """The rest of the suite runs TensorFlow lean (tests/tf_settings.py); here
    both of tltf's stages (the guard off: it skips stage 2 on so easy a task),
    saved and loaded, under the settings a user's process has."""
    done = subprocess.run(
        [sys.executable, "-c", DEFAULT_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "[1, 2] True"
