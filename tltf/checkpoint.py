"""An atomic `ModelCheckpoint`: a kill mid-save never destroys the last good file.

Keras's `ModelCheckpoint` writes `.keras` and `.weights.h5` files in place: a
process killed during the save leaves a truncated file where the last good
checkpoint was. `tltf.checkpoint.ModelCheckpoint` keeps Keras's behaviour
(`monitor`, `mode`, `save_best_only`, `{epoch}`-style file names) and writes
through `tltf._io`: into a temporary file next to the target, then `os.replace`.
"""

from __future__ import annotations

import os

import keras

from tltf._io import atomic_save_model, atomic_save_weights
from tltf.errors import ConfigError


class ModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Saves the model (or its weights) after each epoch, atomically.

    A path ending in `.weights.h5` saves the weights only; one ending in `.keras`
    saves the whole model (loadable with `keras.saving.load_model(path,
    safe_mode=True)`). The file name may contain Keras's format fields, such as
    `"model-{epoch:02d}-{val_loss:.3f}.keras"`.

    Args:
        filepath: str or PathLike. Where to save; `.keras` or `.weights.h5`.
        monitor: str. The metric that decides the best epoch. Defaults to
            "val_loss".
        mode: str. "auto", "min" or "max": whether lower or higher `monitor` is
            better ("auto" infers it from the name). Defaults to "auto".
        save_best_only: bool. Save only when `monitor` improves (the file then
            always holds the best epoch so far). Defaults to False.
        verbose: int. 1 prints a line per save. Defaults to 0.

    Example:

    >>> best = tltf.checkpoint.ModelCheckpoint(
    ...     "run/best.keras", monitor="val_accuracy", save_best_only=True)
    >>> tltf.fine_tune(model, train, val, callbacks=[best])
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        verbose: int = 0,
    ):
        path = os.fspath(filepath)
        if path.endswith(".weights.h5"):
            weights_only = True
        elif path.endswith(".keras"):
            weights_only = False
        else:
            raise ConfigError(
                "Expected a ModelCheckpoint path ending in '.keras' (the whole "
                "model) or '.weights.h5' (the weights). Received: "
                f"filepath={path!r}"
            )
        if mode not in ("auto", "min", "max"):
            raise ConfigError(
                f"Expected mode in ('auto', 'min', 'max'). Received: mode={mode!r}"
            )
        super().__init__(
            path,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            save_weights_only=weights_only,
            mode=mode,
        )

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        # (`_should_save_model` prints Keras's verbose lines.)
        if self.save_weights_only:
            atomic_save_weights(self.model, filepath)
        else:
            atomic_save_model(self.model, filepath)


__all__ = ["ModelCheckpoint"]
