"""Child process of tests/test_cli_resume.py: `tltf train` that can kill itself.

Usage (from the repository root): python -m tests.cli_job KILL ARGS...

It runs `tltf.cli.main(ARGS)`. KILL is `epoch:n` (SIGKILL at the start of the
0-based epoch n, as every callback of the run sees it), `batch:n` (at the end
of the n-th training batch the run's callbacks see, counted from 1) or `-` (no
kill). The hook lives here, in the test, not in tltf: it wraps the TensorBoard
callback that every `tltf train` run has.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import os
import signal
import sys

import keras

from tltf.cli import main


def install_kill(kill: str) -> None:
    kind, _, at = kill.partition(":")
    if kind not in ("epoch", "batch"):
        return
    at = int(at)
    seen = [0]
    board = keras.callbacks.TensorBoard
    real_epoch, real_batch = board.on_epoch_begin, board.on_train_batch_end

    def on_epoch_begin(self, epoch, logs=None):
        if kind == "epoch" and epoch == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_epoch(self, epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        seen[0] += 1
        if kind == "batch" and seen[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_batch(self, batch, logs)

    board.on_epoch_begin = on_epoch_begin
    board.on_train_batch_end = on_train_batch_end


if __name__ == "__main__":
    install_kill(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
