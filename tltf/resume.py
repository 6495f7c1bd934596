"""Resumable fine-tuning: `fine_tune(..., backup_dir=...)`.

At the end of every epoch, tltf writes one checkpoint file into `backup_dir`:
the model's variables (weights, BatchNorm statistics, dropout seed state), the
variables of the optimizer in use (so stage 2 resumes with its own moments and
step count), the schedule's state (stage, unfrozen blocks), the history so far and
how many epochs have finished. The file is written atomically (`tltf._io`), so a
kill at any moment leaves either the previous checkpoint or the new one.

Calling the same `fine_tune(...)` again, in a fresh process on a freshly built
model, continues from the last finished epoch. The order matters and is what
Keras's `BackupAndRestore` gets wrong for a two-stage run:

1. the model's variables are restored before `fit`;
2. `FineTuneSchedule` enters the stage of the resumed epoch (a pure function of
   the epoch: the right blocks trainable, the BatchNorm policy, a stage-2
   optimizer built on the stage-2 variables);
3. only then are the optimizer's variables restored into the optimizer of that
   stage (`ResumeCallback.on_epoch_begin`).

A finished stage 1 is never run again: in stage 2 the feature cache's pass over
the data is skipped too. A finished run is not trained again: the call restores
the final weights and returns the stored history. The backup is kept after
success (delete the folder to train again from scratch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tltf._io import atomic_path
from tltf.distribute import is_chief
from tltf.errors import ConfigError
from tltf.freezing import apply_trainable
from tltf.info import model_info
from tltf.regularizers import attach_head_l2, head_l2

#: The checkpoint file inside a backup folder.
BACKUP_FILE = "tltf-backup.npz"
_FORMAT = "tltf-backup"
_VERSION = 1


# -- reading and writing ---------------------------------------------------------
def backup_state(backup_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The state stored in a backup folder, or None when it holds no checkpoint.

    Args:
        backup_dir: str or PathLike. A folder passed as `fine_tune(backup_dir=)`.

    Returns:
        A dict with `epoch` (finished epochs), `epochs` (planned), `stage`,
        `unfrozen`, `finished`, `history` and `fingerprint` (the settings the run
        was started with), or None.

    Example:

    >>> state = tltf.resume.backup_state("runs/flowers/backup")
    >>> state["epoch"], state["stage"], state["finished"]
    (12, 2, False)
    """
    checkpoint = _read(Path(backup_dir))
    return None if checkpoint is None else checkpoint[0]


def _read(backup_dir: Path):
    """(state, model arrays, optimizer arrays) from a backup folder, or None."""
    path = backup_dir / BACKUP_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(bytes(data["state"]).decode("utf-8"))
            model_arrays = [data[f"m{i}"] for i in range(state["n_model"])]
            optimizer_arrays = [data[f"o{i}"] for i in range(state["n_optimizer"])]
    except Exception as error:  # a foreign or damaged file: never guess
        raise ConfigError(
            f"backup_dir {str(backup_dir)!r} holds {BACKUP_FILE}, but it cannot be "
            f"read ({type(error).__name__}: {error}). tltf writes it atomically, so "
            "it was changed by something else. Pass another backup_dir, or delete "
            "that file to start over."
        ) from None
    if state.get("format") != _FORMAT or state.get("version") != _VERSION:
        raise ConfigError(
            f"backup_dir {str(backup_dir)!r} holds a checkpoint of format "
            f"{state.get('format')!r} version {state.get('version')!r}; this tltf "
            f"reads {_FORMAT!r} version {_VERSION}. Pass another backup_dir."
        )
    return state, model_arrays, optimizer_arrays


def _write(backup_dir: Path, state: dict, model_arrays, optimizer_arrays) -> None:
    """Writes the checkpoint file atomically (temporary file, then os.replace)."""
    state = {
        "format": _FORMAT,
        "version": _VERSION,
        **state,
        "n_model": len(model_arrays),
        "n_optimizer": len(optimizer_arrays),
    }
    arrays = {f"m{i}": a for i, a in enumerate(model_arrays)}
    arrays.update({f"o{i}": a for i, a in enumerate(optimizer_arrays)})
    text = json.dumps(state, default=_json_default).encode("utf-8")
    arrays["state"] = np.frombuffer(text, dtype=np.uint8)
    with atomic_path(backup_dir / BACKUP_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _normalize(value) -> Any:
    """A JSON-comparable form of a setting (LR schedules and optimizers by config)."""
    if isinstance(value, keras.optimizers.Optimizer):
        config = dict(value.get_config())
        config.pop("name", None)
        value = {"class": type(value).__name__, "config": config}
    elif isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        value = keras.saving.serialize_keras_object(value)
    return json.loads(json.dumps(value, default=_json_default, sort_keys=True))


def fingerprint(model: keras.Model, settings: dict[str, Any]) -> dict[str, Any]:
    """What a backup must share with a call to be resumed by it.

    Args:
        model: keras.Model. The model from `build_model`.
        settings: dict. The schedule settings (epochs, rates, unfreeze, bn, ...).

    Returns:
        A JSON-able dict: the model's base, task, head, input shape and variable
        shapes, and the settings.
    """
    meta = model_info(model).metadata
    model_part = {
        key: meta.get(key)
        for key in ("base", "task", "num_outputs", "head", "blocks", "cut")
    }
    model_part["input_shape"] = list(model.input_shape[1:])
    model_part["variables"] = [
        [v.path, list(v.shape), str(v.dtype)] for v in model.variables
    ]
    return {
        "model": _normalize(model_part),
        "settings": {k: _normalize(v) for k, v in settings.items()},
    }


def _mismatches(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two fingerprints."""
    out = []
    saved_model, now_model = saved.get("model", {}), now["model"]
    for key in ("base", "task", "num_outputs", "head", "blocks", "cut", "input_shape"):
        if saved_model.get(key) != now_model.get(key):
            out.append(
                f"model {key}: {saved_model.get(key)!r} in the backup, "
                f"{now_model.get(key)!r} now"
            )
    if not out:
        old, new = saved_model.get("variables", []), now_model["variables"]
        if len(old) != len(new):
            out.append(f"model variables: {len(old)} in the backup, {len(new)} now")
        else:
            for (path, shape, dtype), (_, shape2, dtype2) in zip(old, new, strict=True):
                if shape != shape2 or dtype != dtype2:
                    out.append(
                        f"model variable {path!r}: shape {tuple(shape)} {dtype} in "
                        f"the backup, {tuple(shape2)} {dtype2} now"
                    )
                    break
    saved_settings, now_settings = saved.get("settings", {}), now["settings"]
    for key in sorted(set(saved_settings) | set(now_settings)):
        if saved_settings.get(key) != now_settings.get(key):
            out.append(
                f"{key}: {_short(saved_settings.get(key))} in the backup, "
                f"{_short(now_settings.get(key))} now"
            )
    return out


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# -- the resume session ----------------------------------------------------------
class Resume:
    """One `fine_tune` call's view of its backup folder.

    `fine_tune` creates it (`Resume.open`), restores the model, then runs the
    remaining epochs with `callback()` among its fit callbacks and merges the
    stored history into the returned one (`merge`).

    Attributes:
        epoch: int. Finished epochs; training continues from this 0-based epoch.
        finished: bool. Whether the stored run finished (nothing left to train).
        train_passes: int. Epochs the stored run trained on the full training
            pipeline (not on cached features); the resumed run advances the
            pipeline's reshuffling by as many passes.
    """

    def __init__(self, backup_dir: Path, schedule, epochs: int, print_fn=print):
        self.backup_dir = backup_dir
        self.schedule = schedule
        self.epochs = epochs
        self.epoch = 0
        self.stage: int | None = None
        self.unfrozen: list[str] = []
        self.finished = False
        self.train_passes = 0
        self.history: dict[str, list] = {}
        self.initial_epoch = 0
        self._stored_history: dict[str, list] = {}
        self.fingerprint: dict = {}
        self.steps_per_epoch = None
        # The first stage-2 epoch the stored run used (it depends on when an
        # automatic stage 1 converged); None when no checkpoint is stored.
        self.unfreeze_at_epoch: int | None = None
        self._optimizer_arrays: list[np.ndarray] = []
        self._print = print_fn

    @classmethod
    def open(
        cls,
        backup_dir: str | os.PathLike,
        model: keras.Model,
        schedule,
        epochs: int,
        settings: dict[str, Any],
        callbacks=(),
        fit_kwargs=None,
        verbose=1,
    ) -> Resume:
        """Checks a backup folder against the call and restores the model from it.

        Args:
            backup_dir: str or PathLike. The folder (created at the first save).
            model: keras.Model. The freshly built (and compiled) model.
            schedule: FineTuneSchedule. The call's schedule.
            epochs: int. Planned epochs (both stages).
            settings: dict. The call's schedule settings, compared with the
                backup's.
            callbacks: list. The user's callbacks. Defaults to ().
            fit_kwargs: dict or None. Extra `fit` arguments. Defaults to None.
            verbose: Printing on (truthy) or off. Defaults to 1.

        Returns:
            A `Resume`; `epoch` is 0 when the folder holds no checkpoint yet.

        Raises:
            ConfigError: when the backup was written by a different model or
                schedule, or when the call also uses Keras's BackupAndRestore or
                `initial_epoch`. The backup is never deleted.
        """
        if not isinstance(backup_dir, (str, os.PathLike)) or not str(backup_dir):
            raise ConfigError(
                "Expected backup_dir to be a folder path (str or PathLike). "
                f"Received: backup_dir={backup_dir!r}"
            )
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
            raise ConfigError(
                "Use either backup_dir or a keras.callbacks.BackupAndRestore "
                "callback, not both: backup_dir already makes the run resumable (and "
                "also restores the stage-2 optimizer)."
            )
        if "initial_epoch" in (fit_kwargs or {}):
            raise ConfigError(
                "initial_epoch cannot be combined with backup_dir: the backup sets "
                "the epoch to resume from. Remove initial_epoch."
            )
        path = Path(backup_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"Expected backup_dir to be a folder. Received: {str(path)!r} is a "
                "file. Pass a folder path."
            )
        self = cls(path, schedule, epochs, print_fn=print if verbose else _silent)
        # Temporary files of checkpoints that a kill interrupted: never read.
        # (the checkpoint's, and the stage-2 guard's best weights, `tltf.guard`).
        for name in (BACKUP_FILE, "tltf-best.npz"):
            for stale in path.glob(f".{name}.*.tmp*"):
                stale.unlink(missing_ok=True)
        self.steps_per_epoch = (fit_kwargs or {}).get("steps_per_epoch")
        self.fingerprint = fingerprint(model, settings)
        checkpoint = _read(path)
        if checkpoint is None:
            return self
        state, model_arrays, optimizer_arrays = checkpoint
        problems = _mismatches(state["fingerprint"], self.fingerprint)
        if problems:
            raise ConfigError(
                f"backup_dir {str(path)!r} holds a run that does not match this call: "
                + "; ".join(problems)
                + ". To resume it, call fine_tune with the same model and settings "
                "as the run that wrote it; to start a new run, pass another "
                "backup_dir (or delete that folder). The backup was left untouched."
            )
        for variable, value in zip(model.variables, model_arrays, strict=True):
            variable.assign(value)
        self.epoch = int(state["epoch"])
        self.stage = state["stage"]
        self.unfrozen = list(state["unfrozen"])
        self.finished = bool(state["finished"])
        self.train_passes = int(state["train_passes"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        if state.get("unfreeze_at_epoch") is not None:
            self.unfreeze_at_epoch = int(state["unfreeze_at_epoch"])
            schedule.unfreeze_at_epoch = self.unfreeze_at_epoch
        self._optimizer_arrays = optimizer_arrays
        if state.get("head_l2") is not None:
            # The penalty the original run's ridge start put on the head
            # (`tltf.regularizers.attach_head_l2`): a resumed run trains with it.
            attach_head_l2(model, float(state["head_l2"]))
        if state.get("found_lr") is not None and self.stage == 2:
            # fine_tune_lr="find" found this rate when stage 2 began: reuse it
            # rather than sweep again on a model that stage 2 has trained.
            schedule.restore_found_lr(float(state["found_lr"]))
        if state.get("found_head_lr") is not None:
            # head_lr="find" found this rate before stage 1: the hand-back's
            # head training uses it too (`tltf.schedule._retrain_head`).
            schedule.found_head_lr = float(state["found_head_lr"])
        self.initial_epoch = self.epoch
        self._stored_history = {k: list(v) for k, v in self.history.items()}
        return self

    # -- the fit side ---------------------------------------------------------
    def callback(self, full_model: keras.Model, cached_epochs: int = 0):
        """The callback that restores the optimizer and writes each checkpoint.

        Args:
            full_model: keras.Model. The model whose variables are saved (a
                cached stage 1 fits a head sub-model that shares them).
            cached_epochs: int. Epochs below this run on cached features.
        """
        return ResumeCallback(self, full_model, cached_epochs)

    def skip_passes(self, dataset, passes: int) -> None:
        """Advances a dataset's reshuffling by `passes` epochs.

        A `shuffle(..., reshuffle_each_iteration=True)` draws a new order each
        time an iterator is created. Keras's `fit` (3.15) creates two iterators
        per epoch on a dataset of known length: one that the epoch reads, and one
        made ahead at the end of the epoch, then dropped. Creating (and dropping)
        as many as the stored run did makes the resumed epochs read the orders
        that an uninterrupted run reads, so that a resumed run of a deterministic
        setup ends with the same weights (checked by tests/test_resume.py).
        (`fine_tune` counts an input of unknown length first, so its length is
        known.) With `steps_per_epoch` (an endless dataset), one per epoch is an
        approximation: the orders then differ from an uninterrupted run's.
        """
        known = int(dataset.cardinality()) >= 0
        per_epoch = 2 if known and not self.steps_per_epoch else 1
        for _ in range(passes * per_epoch):
            iter(dataset)

    def finished_history(self, model: keras.Model, bn: str) -> keras.callbacks.History:
        """For a finished run: the final model state and the stored history."""
        info = model_info(model)
        apply_trainable(info, self.unfrozen if self.stage == 2 else [], bn)
        self._print(
            f"tltf: backup_dir {str(self.backup_dir)!r} holds a finished run "
            f"({self.epoch} epochs); restored its final weights and history without "
            "training. Delete that folder (or pass another backup_dir) to train again."
        )
        history = keras.callbacks.History()
        history.set_model(model)
        history.history = {k: list(v) for k, v in self.history.items()}
        history.epoch = list(range(self.epoch))
        model.history = history
        return history

    def merge(self, history: keras.callbacks.History) -> keras.callbacks.History:
        """Puts the stored epochs in front of a resumed run's History."""
        if self.initial_epoch:
            old, new = self._stored_history, history.history
            keys = list(old) + [k for k in new if k not in old]
            history.history = {
                k: list(old.get(k, [])) + list(new.get(k, [])) for k in keys
            }
            history.epoch = list(range(self.initial_epoch)) + list(history.epoch)
        return history

    def announce(self) -> None:
        if self.epoch:
            epochs = self.schedule.end_epoch or self.epochs
            self._print(
                f"tltf: resuming from {str(self.backup_dir)!r}: {self.epoch} of "
                f"{epochs} epochs done, continuing in stage "
                f"{self.schedule.plan(self.epoch)[0]} at epoch {self.epoch + 1}."
            )


def _silent(*args, **kwargs):
    pass


_nullcontext = contextlib.nullcontext


class ResumeCallback(keras.callbacks.Callback):
    """Restores the optimizer once the stage is entered; checkpoints every epoch.

    Put it after `FineTuneSchedule` and the user's callbacks, so it sees the
    stage's optimizer and the final epoch logs. Made by `Resume.callback`.
    """

    def __init__(self, resume: Resume, full_model: keras.Model, cached_epochs: int):
        super().__init__()
        self.resume = resume
        self.full_model = full_model
        self.cached_epochs = cached_epochs
        self._pending = bool(resume.epoch and resume._optimizer_arrays)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._pending:
            return
        self._pending = False
        resume = self.resume
        # The optimizer of this epoch's stage is in place now; restore only the
        # state of that same optimizer (stage 2 starts with a fresh one).
        if resume.schedule.plan(epoch)[0] != resume.stage:
            return
        optimizer = self.model.optimizer
        if not optimizer.built:
            # Keras builds it at the first step, on the same variables, in the
            # same order.
            strategy = getattr(self.model, "distribute_strategy", None)
            with strategy.scope() if strategy is not None else _nullcontext():
                optimizer.build(self.model.trainable_variables)
        variables = optimizer.variables
        arrays = resume._optimizer_arrays
        shapes = [tuple(v.shape) for v in variables]
        if len(variables) != len(arrays) or any(
            s != a.shape for s, a in zip(shapes, arrays, strict=False)
        ):
            raise ConfigError(
                f"The optimizer state in {str(resume.backup_dir)!r} has "
                f"{len(arrays)} variables, but stage {resume.stage}'s optimizer has "
                f"{len(variables)} (or different shapes). Resume with the optimizer "
                "the run was started with, or pass another backup_dir."
            )
        for variable, value in zip(variables, arrays, strict=True):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return  # never replace the last good checkpoint by a diverged one
        resume = self.resume
        for key, value in logs.items():
            resume.history.setdefault(key, []).append(_plain(value))
        stage = logs.get("stage", resume.schedule.plan(epoch)[0])
        if epoch >= self.cached_epochs:
            resume.train_passes += 1
        resume.epoch = epoch + 1
        resume.stage = int(stage)
        resume.unfrozen = (
            list(resume.schedule.plan(epoch)[1]) if resume.stage == 2 else []
        )
        end = getattr(resume.schedule, "end_epoch", None) or resume.epochs
        resume.finished = resume.epoch >= end or bool(
            getattr(self.full_model, "stop_training", False)
        )
        optimizer = self.model.optimizer
        optimizer_arrays = (
            [np.asarray(v.numpy()) for v in optimizer.variables]
            if optimizer is not None and optimizer.built
            else []
        )
        resume._optimizer_arrays = optimizer_arrays
        if not is_chief():
            return  # in a multi-worker run, only the chief writes the backup
        _write(
            resume.backup_dir,
            {
                "epoch": resume.epoch,
                "epochs": resume.epochs,
                "stage": resume.stage,
                "unfrozen": resume.unfrozen,
                "finished": resume.finished,
                "train_passes": resume.train_passes,
                "history": resume.history,
                "fingerprint": resume.fingerprint,
                "found_lr": getattr(resume.schedule, "found_lr", None),
                "found_head_lr": getattr(resume.schedule, "found_head_lr", None),
                "unfreeze_at_epoch": resume.schedule.unfreeze_at_epoch,
                "head_l2": head_l2(self.full_model),
            },
            [np.asarray(v.numpy()) for v in self.full_model.variables],
            optimizer_arrays,
        )


def _plain(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "item"):
        value = value.item()
    return value


__all__ = ["BACKUP_FILE", "Resume", "ResumeCallback", "backup_state", "fingerprint"]
