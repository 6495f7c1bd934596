"""What the stages share: the stage tag, the divergence error, the progress bar.

The schedule's callback, the cached stage 1 and the tuner's stage 2 all tag their
epochs and stop a diverged run through `StageTag` or `check_loss`, so the History's
`stage` entry and the message (stage, epoch, rate, what to lower) are the same
wherever training runs.
"""

from __future__ import annotations

import math

import keras

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
    """Keras's progress bar, without the `stage` entry of the epoch's logs.

    Keras prints every log value as a float (`stage: 2.0000`); tltf prints a line
    when each stage starts instead. The logs themselves are not changed: the
    History, `history.csv` and every other callback still read `logs["stage"]`.

    Example:

    >>> model.fit(train, epochs=15, callbacks=[schedule, StageProgbarLogger()])
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: v for k, v in (logs or {}).items() if k != "stage"}
        super().on_epoch_end(epoch, logs)


def stage_progbar(callbacks) -> list:
    """`[StageProgbarLogger()]` for a tltf `fit`, or `[]` if the user passed one.

    Args:
        callbacks: list. The user's callbacks.
    """
    if any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        return []
    return [StageProgbarLogger()]


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
