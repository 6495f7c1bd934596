"""Child process of tests/test_resume.py: a small deterministic resumable fine-tune.

Usage (from the repository root): python -m tests.resume_job BACKUP_DIR LOG OUT [KILL]

KILL is `kind:n`: the process SIGKILLs itself at the n-th event of that kind in
this process:
- `batch:n`: the n-th training-batch end;
- `epoch:n`: the start of (0-based) epoch n;
- `replace:n`: just before the n-th `os.replace` (a checkpoint fully written to
  its temporary file, not yet moved into place: a kill mid-save);
- `write:n`: just before numpy writes the n-th array of a checkpoint (a kill in
  the middle of writing the temporary file).

The hooks live here, in the test, not in tltf. Every epoch begin/end and every
feature-cache pass is appended to LOG as a JSON line; a run that finishes writes
its final model variables and history to OUT (.npz).

Op determinism is not switched on: TensorFlow's CPU kernels give the same bits
run to run for this model, and the tests compare against a reference computed
in the pytest process, which must not change that global setting for other tests.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import json
import os
import signal
import sys

import keras
import numpy as np

from tests.helpers import make_data, make_tiny_base

#: The run: tiny, CPU, deterministic (array inputs with a shuffle seed).
SETTINGS = dict(
    head_epochs=2,
    fine_tune_epochs=3,
    unfreeze=2,
    gradual_every=1,
    bn="affine",
    batch_size=8,
    seed=1,
    verbose=0,
)


#: The same run with fine_tune's automatic defaults: a converged stage 1 of
#: variable length, a probed depth and the stage-2 guard. Selected in the child
#: process by the environment variable TLTF_JOB_AUTO=1; TLTF_JOB_AUTO=2 sets
#: head_steps=0 too: a closed-form stage 1 (the ridge head, no epochs).
AUTO = dict(
    head_epochs="auto",
    head_steps=60,
    fine_tune_epochs=3,
    unfreeze="auto",
    batch_size=8,
    seed=1,
    verbose=0,
)


#: SETTINGS with the robust fine-tuning options (TLTF_JOB_AUTO=robust): AdaBN
#: before stage 1; in stage 2 a range of blocks below the top, L2-SP and
#: Auto-RGN; and WiSE-FT's mix with the stage-1 weights kept in the backup folder.
ROBUST = dict(
    unfreeze={"range": [1, 2]},
    bn="adapt",
    regularize={"l2sp": 1.0},
    lr_policy="auto_rgn",
    wise=0.5,
    gradual_every=None,
)


def _multilabel(data):
    """`make_data` with multi-label rows: the bright channel, and whether it is
    not channel 0."""
    x, y = data
    return x, np.stack([y == 0, y == 1, y == 2, y != 0], axis=1).astype("float32")


def run(backup_dir, callbacks=(), model=None, **changes):
    """The job's `fine_tune` call (the tests call it in-process too).

    TLTF_JOB_AUTO=multilabel runs AUTO on a multi-label head (4 labels), whose
    ridge start puts an L2 penalty on the head (`tltf.regularizers.HeadL2`).
    """
    mode = os.environ.get("TLTF_JOB_AUTO")
    if mode in ("1", "2", "multilabel"):
        auto = {**AUTO, "head_steps": 0} if mode == "2" else AUTO
        changes = {**{k: None for k in SETTINGS if k not in auto}, **auto, **changes}
    elif mode == "robust":
        changes = {**ROBUST, **changes}
    settings = {k: v for k, v in {**SETTINGS, **changes}.items() if v is not None}
    keras.utils.set_random_seed(0)
    train, val = make_data(32), make_data(16, seed=1)
    if mode == "multilabel":
        train, val = _multilabel(train), _multilabel(val)
        model = model or tltf.build_model(make_tiny_base(), 4, task="multilabel")
    model = model or tltf.build_model(make_tiny_base(), num_classes=3)
    history = tltf.fine_tune(
        model,
        train,
        val,
        callbacks=list(callbacks),
        backup_dir=backup_dir,
        **settings,
    )
    return model, history


def main(backup_dir, log_path, out_path, kill=""):
    import tltf.cache
    from tltf.resume import backup_state

    kill_kind, _, kill_at = kill.partition(":")
    kill_at = int(kill_at or 0)
    counts = {"batch": 0, "replace": 0, "write": 0}
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives until exit)

    def record(**event):
        log.write(json.dumps({"pid": os.getpid(), **event}) + "\n")
        log.flush()

    def die(kind, n):
        record(event="kill", kind=kind, n=n)
        os.kill(os.getpid(), signal.SIGKILL)

    def count(kind):
        counts[kind] += 1
        if kind == kill_kind and counts[kind] == kill_at:
            die(kind, kill_at)

    def hook(owner, name, kind):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            count(kind)
            return real(*args, **kwargs)

        setattr(owner, name, wrapper)

    hook(os, "replace", "replace")
    hook(np.lib.format, "write_array", "write")
    real_cache_init = tltf.cache.FeatureCache.__init__

    def cache_init(self, *args, **kwargs):
        record(event="feature_pass")
        return real_cache_init(self, *args, **kwargs)

    tltf.cache.FeatureCache.__init__ = cache_init

    class Probe(keras.callbacks.Callback):
        """Logs what a user callback sees; kills at `epoch:n` and `batch:n`."""

        def on_epoch_begin(self, epoch, logs=None):
            trainable = tltf.trainable_blocks(self.model)
            record(event="begin", epoch=epoch, trainable=trainable)
            if kill_kind == "epoch" and epoch == kill_at:
                die("epoch", epoch)

        def on_train_batch_end(self, batch, logs=None):
            count("batch")

        def on_epoch_end(self, epoch, logs=None):
            record(event="end", epoch=epoch, stage=logs.get("stage"))

    state = backup_state(backup_dir)
    record(event="start", epoch=state["epoch"] if state else 0)
    model, history = run(backup_dir, [Probe()])
    arrays = {f"v{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays["history"] = np.frombuffer(json.dumps(history.history).encode(), np.uint8)
    np.savez(out_path, **arrays)
    record(event="done", trainable=tltf.trainable_blocks(model), epochs=history.epoch)


if __name__ == "__main__":
    main(*sys.argv[1:])
