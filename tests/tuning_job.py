"""A tiny tuning job for the tuning tests, also run as a process (distributed test).

`LoggingHyperModel` appends each trial id it fits to a per-process log file, so a
test can check, independently of tltf's own records, which trials ran where.

Run as a process (chief or worker, from the repository root):

    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=127.0.0.1 \\
    KERASTUNER_ORACLE_PORT=8000 python -m tests.tuning_job DIR LOGDIR MAX_TRIALS
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import os
import sys
from pathlib import Path

import keras

from tests.helpers import make_data, make_tiny_base
from tltf.tuning import FineTuneHyperModel, tune

#: Fixed head, so that every trial shares one stage 1.
FIXED_HEAD = {"head_dropout": 0.2, "head_units": 0}


class LoggingHyperModel(FineTuneHyperModel):
    """Logs every fitted trial id to `<log_dir>/<tuner id>.log`."""

    def __init__(self, *args, log_dir=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_dir = log_dir

    def fit(self, hp, model, *args, **kwargs):
        trial = next(
            c.trial for c in kwargs.get("callbacks", []) if hasattr(c, "trial")
        )
        if self.log_dir is not None:
            name = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
            with open(Path(self.log_dir) / f"{name}.log", "a") as f:
                f.write(f"{trial.trial_id}\n")
        return super().fit(hp, model, *args, **kwargs)


def data(n=48, seed=0):
    return make_data(n, seed=seed), make_data(24, seed=seed + 1)


def hypermodel(log_dir=None, **kwargs) -> LoggingHyperModel:
    options = dict(
        num_classes=3,
        search=FIXED_HEAD,
        head_epochs=1,
        fine_tune_epochs=1,
        seed=0,
        batch_size=16,
        log_dir=log_dir,
    )
    options.update(kwargs)
    # The same base weights in every process and call (as a pretrained base has):
    # the head key includes a digest of them.
    keras.utils.set_random_seed(0)
    return LoggingHyperModel(make_tiny_base(), **options)


def main(directory: str, log_dir: str, max_trials: int) -> None:
    train, val = data()
    result = tune(
        hypermodel(log_dir),
        train,
        val,
        tuner="random",
        max_trials=max_trials,
        directory=directory,
        project_name="dist",
        verbose=0,
        seed=0,
    )
    print(f"{os.environ.get('KERASTUNER_TUNER_ID')}: {len(result.table)} rows")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
