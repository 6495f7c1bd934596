"""Python child processes that start with tltf already imported.

Many tests run tltf in a child process: a run SIGKILLed and resumed, the
command line end to end, the notebooks' Jupyter kernels, a chief and its
workers. `import tltf` takes about 6 s on 2 cores (TensorFlow and Keras), and
each of the suite's ~35 children paid it.

`python(args, ...)` runs `[sys.executable, "-m", module, ...]`,
`[sys.executable, "-c", code, ...]` or `[sys.executable, script, ...]` in a
child forked from multiprocessing's forkserver. The forkserver is a fresh
interpreter, started once per pytest worker, that has imported tltf and
nothing else: it has run no TensorFlow op, built no model and read no data.
Each child is a new process, with its own pid, working folder, environment and
output, that a SIGKILL ends as it ends any process. What these tests check
(that a new process resumes from files alone, that a second process finds a
lock, that a notebook runs top to bottom on a kernel) holds in it as in a
plain one.

What differs from `python -m ...`: the modules are imported before the child's
environment is set, so variables read at import time (TensorFlow's log level)
come from the pytest worker, and TensorFlow runs with the workers' lean
settings (tests/tf_settings.py). Tests of import-time behaviour (quiet start-up
logs, what `import tltf` loads, a bad config's single line of output) keep
`subprocess` and a fresh interpreter.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from pathlib import Path

#: What the forkserver imports once, for every child: TensorFlow with the
#: workers' settings (tests/tf_settings.py), so that a child's run and the
#: worker's run it is compared with are computed alike, then tltf.
PRELOAD = ["tests.tf_settings", "tltf", "tltf.cli", "tltf.schedule", "tltf.tuning"]

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_code(code) -> int:
    """The status Python exits with for `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(args, cwd, env, stdout_path, stderr_path, new_session):
    """The child's body: `python` as `sys.executable args` would run it."""
    if new_session:  # as Popen(start_new_session=True): os.killpg(pid) ends it all
        os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # read from TMPDIR again, as a new interpreter does
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), fd)
    flag, target, rest = args[0], args[1] if len(args) > 1 else None, args[2:]
    code = 0
    try:
        if flag == "-m":
            sys.argv = [target, *rest]
            sys.path.insert(0, cwd)
            with warnings.catch_warnings():
                # runpy's note that the forkserver imported the module already
                warnings.filterwarnings(
                    "ignore", "'.*' found in sys.modules", RuntimeWarning
                )
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif flag == "-c":
            sys.argv = ["-c", *rest]
            sys.path.insert(0, "")
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
        else:  # a script, and its arguments
            sys.argv = args
            sys.path.insert(0, os.path.dirname(os.path.abspath(flag)))
            runpy.run_path(flag, run_name="__main__")
    except SystemExit as exit:
        code = _exit_code(exit.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs on a normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Process:
    """A started child: the parts of `subprocess.Popen` the tests use."""

    def __init__(self, args, cwd=None, env=None, merge_output=True, new_session=False):
        if list(args[:1]) != [sys.executable]:
            raise ValueError(f"python() runs {sys.executable}, not {args[:1]}")
        self.args = list(args)
        folder = Path(tempfile.mkdtemp(prefix="tltf-child-"))
        # The output files go with this object (a child that is killed and
        # never read, a notebook's kernel), or at exit.
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        self._stdout = folder / "stdout"
        self._stderr = self._stdout if merge_output else folder / "stderr"
        for path in {self._stdout, self._stderr}:
            path.touch()
        self._output = None
        self._process = _forkserver().Process(
            target=_child,
            args=(
                [str(a) for a in args[1:]],
                str(cwd or os.getcwd()),
                dict(os.environ if env is None else env),
                str(self._stdout),
                str(self._stderr),
                new_session,
            ),
        )
        self._process.start()
        self.pid = self._process.pid
        self.stdin = self.stdout = self.stderr = None  # as a Popen with files

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def kill(self):
        self._process.kill()

    def terminate(self):
        self._process.terminate()

    def send_signal(self, signum):
        os.kill(self.pid, signum)

    def wait_for(self, line: str, timeout: float) -> str:
        """The output so far, once it holds `line` as a whole line; raises
        AssertionError if the child exits first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            out = self._stdout.read_text(errors="replace")
            if line in out.splitlines():
                return out
            assert self.poll() is None, f"exited {self.poll()} before {line!r}:\n{out}"
            assert time.monotonic() < deadline, f"no {line!r} in {timeout} s:\n{out}"
            time.sleep(0.05)

    def communicate(self, timeout=None):
        """(stdout, stderr) once the child has exited; stderr is None when it
        went to stdout."""
        self.wait(timeout)
        if self._output is None:
            out = self._stdout.read_text(errors="replace")
            err = None
            if self._stderr != self._stdout:
                err = self._stderr.read_text(errors="replace")
            self._output = (out, err)
        return self._output


#: `python([sys.executable, ...], cwd=, env=, merge_output=, new_session=)`
#: starts the child as `subprocess.Popen` would, with tltf imported; its output
#: goes to stdout, or apart with `merge_output=False`.
python = Process


def run(args, cwd=None, env=None, timeout=None) -> subprocess.CompletedProcess:
    """`subprocess.run(args, capture_output=True, text=True)` for `python`'s
    children: stdout and stderr apart."""
    process = Process(args, cwd=cwd, env=env, merge_output=False)
    try:
        out, err = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)
