"""What the stages share: the stage tag, the divergence error, the progress bar.

The schedule's callback, the cached stage 1 and the tuner's stage 2 all tag their
epochs and stop a diverged run through `StageTag` or `check_loss`, so the History's
`stage` entry and the message (stage, epoch, rate, what to lower) are the same
wherever training runs.
"""

from __future__ import annotations

import math

import keras
from keras.src.utils import io_utils

from tltf.errors import TrainingError


def raise_on_divergence(model, stage, epoch: int, batch: int, loss) -> None:
    """Raises a TrainingError naming the stage, epoch and learning rate.

    Raising (rather than setting `stop_training`, as Keras's TerminateOnNaN does)
    ends `fit` without `on_train_end`, so a BackupAndRestore backup, the last good
    checkpoint, is kept.
    """
    rate = getattr(model.optimizer, "learning_rate", None)
    rate = float(rate.numpy()) if hasattr(rate, "numpy") else rate
    raise TrainingError(
        f"The loss became {float(loss)} in stage {stage}, epoch {epoch + 1}, batch "
        f"{batch + 1}, at learning rate {rate:g}. Lower the "
        f"{'head_lr' if stage == 1 else 'fine_tune_lr'}, check the data for NaN or "
        "infinite values, or use a smaller batch. Checkpoints written so far (e.g. "
        "by BackupAndRestore or ModelCheckpoint) are kept."
    )


class StageProgbarLogger(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, without the `stage` entry of the epoch's logs, and
    counting each stage's epochs to that stage's last.

    Keras prints every log value as a float (`stage: 2.0000`); tltf prints a line
    when each stage starts instead. The logs themselves are not changed: the
    History, `history.csv` and every other callback still read `logs["stage"]`.

    With a schedule, stage 1's epochs read `Epoch 1/20`, up to the schedule's
    `unfreeze_at_epoch` (as its stage line says, "to 20"), not to the run's
    last epoch; stage 2's read up to the run's last (`Epoch 21/30`). Keras's
    own bar counts every epoch to the fit's last, which for `fine_tune` is
    stage 1's most epochs plus stage 2's: stage 1 read `Epoch 1/30`, and a
    stage 1 that converged after 4 epochs was followed by `Epoch 5/14`.

    Args:
        schedule: FineTuneSchedule or None. The schedule of the fit; None
            counts every epoch to the fit's last, as Keras does.

    Example:

    >>> model.fit(train, epochs=15, callbacks=[schedule, StageProgbarLogger(schedule)])
    """

    def __init__(self, schedule=None):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        last = self.epochs
        end = getattr(self.schedule, "unfreeze_at_epoch", None)
        if end and epoch < end < last:
            last = end
        # Keras's own line, `Epoch {epoch + 1}/{self.epochs}`, is left out
        # (`epochs` 1) and printed here with the stage's last epoch.
        self.epochs, total = 1, self.epochs
        try:
            super().on_epoch_begin(epoch, logs)
        finally:
            self.epochs = total
        if self.verbose and total > 1:
            io_utils.print_msg(f"Epoch {epoch + 1}/{last}")  # as Keras prints it

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: v for k, v in (logs or {}).items() if k != "stage"}
        super().on_epoch_end(epoch, logs)


def stage_progbar(callbacks, schedule=None) -> list:
    """`[StageProgbarLogger(schedule)]` for a tltf `fit`, or `[]` if the user
    passed a progress bar of their own.

    Args:
        callbacks: list. The user's callbacks.
        schedule: FineTuneSchedule or None. The fit's schedule, whose
            `unfreeze_at_epoch` ends stage 1's count of epochs.
    """
    if any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        return []
    return [StageProgbarLogger(schedule)]


def check_loss(model, stage: int, epoch: int, batch: int, logs) -> None:
    """Raises `raise_on_divergence`'s error when a batch's loss is NaN or infinite."""
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        raise_on_divergence(model, stage, epoch, batch, loss)


class StageTag(keras.callbacks.Callback):
    """Tags each epoch's logs with its stage, and stops a fit whose loss diverges.

    Every fit tltf runs (the two stages of one `fit`, a cached stage 1, the tuner's
    cached stage 2) tags and checks its epochs through this callback or
    `check_loss`, so the History's `stage` entry and the divergence message are the
    same everywhere.

    Args:
        stage: int. The stage of every epoch of this fit (1 or 2).
        model: keras.Model or None. The model the divergence message reads the
            learning rate from. Defaults to the model being fitted.
    """

    def __init__(self, stage: int, model=None):
        super().__init__()
        self.stage = stage
        self.target = model
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage

    def on_train_batch_end(self, batch, logs=None):
        check_loss(self.target or self.model, self.stage, self._epoch, batch, logs)
