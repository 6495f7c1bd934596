"""Tuning what to unfreeze: a keras-tuner HyperModel with a shared stage 1.

`FineTuneHyperModel` is a `keras_tuner.HyperModel`: `build(hp)` builds a model with
`build_model`, `fit(hp, model, ...)` runs the two-stage schedule. Its search space
(`SearchSpace`) covers how many *blocks* of the base's block map to unfreeze, the
fine-tune learning rate, the head's dropout and width, and optionally the head
rate, the BatchNorm policy and the discriminative-LR decay.

Trials that differ only in stage-2 choices do not retrain the head: stage 1 is
trained once per distinct *head key* (everything that stage 1 depends on), its
weights are kept in the tuner's project folder (`HeadStore`, atomic writes and a
lock file, so that distributed workers can share it), and every such trial
starts stage 2 from them. `tune` wraps it all: any keras-tuner tuner, resume,
failed trials, keras-tuner's distributed mode, and a results table, plot and the
best model as `.keras`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tltf import cache
from tltf._io import (
    atomic_save_model,
    atomic_save_weights,
    atomic_write_json,
    atomic_write_text,
)
from tltf.bases.base import Base, load_base
from tltf.cache import (
    Continuation,
    cut_tensor,
    feature_model,
    head_model,
)
from tltf.data import DataBundle
from tltf.errors import ConfigError, DataError, TltfError, TrainingError, suggest
from tltf.freezing import BN_POLICIES, resolve_unfreeze
from tltf.heads import HeadConfig
from tltf.info import ModelInfo, default_loss_and_metrics, model_info
from tltf.inputs import check_labels, train_batches
from tltf.locks import Heartbeat, LockFile
from tltf.model import build_model
from tltf.optimizers import clone_optimizer, make_optimizer
from tltf.reports import plot_tuning
from tltf.schedule import FineTuneSchedule, fine_tune
from tltf.stages import StageTag, stage_progbar

#: Names of the hyperparameters tltf declares, by SearchSpace field.
HP_NAMES = {
    "unfreeze": "unfreeze_blocks",
    "fine_tune_lr": "fine_tune_lr",
    "head_lr": "head_lr",
    "head_dropout": "head_dropout",
    "head_units": "head_units",
    "bn": "bn",
    "lr_decay": "lr_decay",
}
#: Hyperparameters that only change stage 2: trials differing only in them share
#: stage 1. Every other hyperparameter (yours included) is part of the head key.
STAGE2_HPS = ("unfreeze_blocks", "fine_tune_lr", "bn", "lr_decay")
#: `fine_tune` options that only change stage 2.
STAGE2_OPTIONS = ("gradual_every",)

RESULTS_CSV = "tltf_results.csv"
RESULTS_JSON = "tltf_results.json"
RESULTS_PLOT = "tltf_tuning.png"
BEST_MODEL = "best_model.keras"
TRIAL_RECORD = "tltf_trial.json"
HEADS_DIR = "tltf_heads"
PROJECT_LOCK = "tltf_project.lock"


# -- the search space ------------------------------------------------------------
class _Choice(tuple):
    """A list of choices, stored as a tuple (distinct from a `(low, high)` range)."""

    def __repr__(self) -> str:
        return repr(list(self))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What the tuner searches, entry by entry.

    Every entry takes a fixed value, a list (a choice among those values) or a
    2-tuple `(low, high)` (a range: log-uniform for learning rates, linear for
    dropout, integers for blocks and units). Fixed entries are still recorded as
    `hp.Fixed`, so the best hyperparameters are complete.

    Attributes:
        unfreeze: Blocks to unfreeze in stage 2, counted from the top of the
            base's block map: "all" (every depth from 0 to all blocks), an int, a
            list or a `(low, high)` range. Defaults to "all".
        fine_tune_lr: Stage-2 learning rate. Defaults to `(1e-6, 1e-3)` (log).
        head_lr: Stage-1 learning rate. Defaults to 1e-3.
        head_dropout: Head dropout. Defaults to `[0.2, 0.5]`.
        head_units: Width of one hidden Dense layer in the head; 0 means none.
            Defaults to `[0, 256]`.
        bn: BatchNorm policy in stage 2, see `tltf.freezing`. Defaults to
            "frozen".
        lr_decay: Discriminative-LR decay per block (1.0 or None: one rate).
            Defaults to None.

    Head choices multiply the stage-1 trainings: keep them few and discrete, so
    that most trials share a trained head.

    Example:

    >>> SearchSpace.from_dict({"unfreeze": (0, 6), "fine_tune_lr": 1e-5,
    ...                        "bn": ["frozen", "affine"]})
    """

    unfreeze: Any = "all"
    fine_tune_lr: Any = (1e-6, 1e-3)
    head_lr: Any = 1e-3
    head_dropout: Any = _Choice((0.2, 0.5))
    head_units: Any = _Choice((0, 256))
    bn: Any = "frozen"
    lr_decay: Any = None

    def __post_init__(self):
        # Lists are choices; keep them hashable inside the frozen dataclass.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, _Choice(value))
        _check_entry("fine_tune_lr", self.fine_tune_lr, _positive)
        _check_entry("head_lr", self.head_lr, _positive)
        _check_entry("head_dropout", self.head_dropout, _dropout)
        _check_entry("head_units", self.head_units, _units)
        _check_entry("bn", self.bn, _bn, ranges=False)
        _check_entry("lr_decay", self.lr_decay, _decay)

    @classmethod
    def from_dict(cls, config: dict | SearchSpace | None) -> SearchSpace:
        """Builds a search space from a dict, rejecting unknown keys with hints."""
        if isinstance(config, SearchSpace):
            return config
        config = dict(config or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in config:
            if key not in fields:
                raise ConfigError(
                    f"Unknown search space entry {key!r}.{suggest(key, fields)} "
                    f"Valid entries: {fields}"
                )
        return cls(**config)

    def declare(self, hp: kt.HyperParameters, n_blocks: int) -> dict[str, Any]:
        """Declares the entries in `hp` and returns this trial's values."""
        unfreeze = self.unfreeze
        if unfreeze == "all":
            unfreeze = (0, n_blocks)
        _check_entry("unfreeze", unfreeze, _blocks(n_blocks))
        return {
            "unfreeze": _declare(hp, HP_NAMES["unfreeze"], unfreeze, int),
            "fine_tune_lr": _declare(
                hp, HP_NAMES["fine_tune_lr"], self.fine_tune_lr, float, "log"
            ),
            "head_lr": _declare(hp, HP_NAMES["head_lr"], self.head_lr, float, "log"),
            "head_dropout": _declare(
                hp, HP_NAMES["head_dropout"], self.head_dropout, float
            ),
            "head_units": _declare(hp, HP_NAMES["head_units"], self.head_units, int),
            "bn": _declare(hp, HP_NAMES["bn"], self.bn, str),
            "lr_decay": _declare(
                hp,
                HP_NAMES["lr_decay"],
                _none_to_one(self.lr_decay),
                float,
            ),
        }


def _none_to_one(value):
    if value is None:
        return 1.0
    if isinstance(value, _Choice):
        return _Choice(1.0 if v is None else v for v in value)
    return value


def _is_range(value) -> bool:
    return isinstance(value, tuple) and not isinstance(value, _Choice)


def _check_entry(name, value, check, ranges=True) -> None:
    if _is_range(value):
        if not ranges or len(value) != 2 or not value[0] <= value[1]:
            raise ConfigError(
                f"Expected search space entry {name} as a value, a list of choices"
                + (" or a (low, high) range with low <= high" if ranges else "")
                + f". Received: {name}={value!r}"
            )
        values = list(value)
    elif isinstance(value, _Choice):
        if not value:
            raise ConfigError(f"Expected at least one choice for {name}. Received: []")
        values = list(value)
    else:
        values = [value]
    for v in values:
        problem = check(v)
        if problem:
            raise ConfigError(
                f"Expected search space entry {name}: {problem}. Received: {name}={value!r}"
            )


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v):
    return None if _number(v) and v > 0 else "positive numbers (e.g. 1e-4)"


def _dropout(v):
    return None if _number(v) and 0 <= v < 1 else "dropout rates in [0, 1)"


def _units(v):
    return (
        None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0
        else ("integers >= 0 (0: no hidden layer)")
    )


def _bn(v):
    return None if v in BN_POLICIES else f"BatchNorm policies in {BN_POLICIES}"


def _decay(v):
    return None if v is None or (_number(v) and 0 < v <= 1) else "decays in (0, 1]"


def _blocks(n):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= n
        return None if ok else f"block counts in [0, {n}] ({n} blocks in this base)"

    return check


def _declare(hp, name, spec, kind, sampling="linear"):
    if isinstance(spec, _Choice):
        return hp.Choice(name, [kind(v) for v in spec])
    if _is_range(spec):
        low, high = spec
        if low == high:
            return hp.Fixed(name, kind(low))
        if kind is int:
            # Widths are searched in steps of 32 (blocks in steps of 1).
            step = 32 if name == HP_NAMES["head_units"] and high - low >= 64 else 1
            return hp.Int(name, int(low), int(high), step=step)
        return hp.Float(name, float(low), float(high), sampling=sampling)
    return hp.Fixed(name, kind(spec))


# -- lock files --------------------------------------------------------------------
@contextlib.contextmanager
def project_lock(project_dir, stale_s: float = 120.0, heartbeat_s: float = 5.0):
    """Holds a tuner project folder for one search while the block runs.

    Two searches on one project without keras-tuner's chief/worker mode would
    each run every trial, unaware of each other. `tune` takes this lock,
    `<project>/tltf_project.lock` (see `LockFile`), around a search that is not
    distributed; chief and workers share the project and take none.

    Args:
        project_dir: str or PathLike. The project folder (created if missing).
        stale_s: float. See `LockFile`. Defaults to 120.
        heartbeat_s: float. How often the lock is touched. Defaults to 5.

    Yields:
        The lock file's path.

    Raises:
        ConfigError: Another process that still runs holds the project.

    Example:

    >>> with project_lock("tltf_tuning/tune"):
    ...     tuner.search(train, validation_data=val)
    """
    project = Path(project_dir)
    project.mkdir(parents=True, exist_ok=True)
    lock = LockFile(project / PROJECT_LOCK, stale_s)
    if not lock.acquire():
        owner = lock.owner()
        raise ConfigError(
            f"Expected one search at a time in project {str(project)!r}. Received: "
            f"a second one, while process {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')!r} searches it (lock {lock.path}). Two "
            "searches on one project would each run every trial. Wait for it to "
            "finish, use another project_name or directory, or run both in "
            "keras-tuner's chief/worker mode (KERASTUNER_TUNER_ID, "
            "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; see docs/tuning.md). "
            "If that process is gone, delete the lock file."
        )
    try:
        with Heartbeat(lock.path, heartbeat_s):
            yield lock.path
    finally:
        lock.release()


# -- the stage-1 store -----------------------------------------------------------
class HeadStore:
    """Stage-1 results (model weights and a JSON record), one per head key.

    Files live in `<project>/tltf_heads/`: `<key>.weights.h5` (the whole model at
    the end of stage 1: head trained, base unchanged) and `<key>.json` (its
    history and who trained it), both written atomically (temporary file, then
    `os.replace`); the JSON is written last and marks the entry complete.

    Concurrent workers (keras-tuner's distributed mode, on a shared file system)
    coordinate with a lock file `<key>.lock` (a `LockFile`): the first worker
    trains, the others wait for the record and load it. The owner touches the
    lock every `heartbeat_s` seconds; the lock of a worker that died is taken
    over, at once if it ran on this host, else once it is older than `stale_s`.
    If a lock is taken over wrongly, two workers train the same head; each write
    is still atomic, so the files stay valid.

    Args:
        directory: str or PathLike. The folder.
        stale_s: float. A lock not refreshed for this long is abandoned.
            Defaults to 120.
        heartbeat_s: float. How often the owner refreshes its lock. Defaults to 5.
        poll_s: float. How often a waiting worker looks again. Defaults to 0.5.
    """

    def __init__(self, directory, stale_s=120.0, heartbeat_s=5.0, poll_s=0.5):
        self.directory = Path(directory)
        self.stale_s, self.heartbeat_s, self.poll_s = stale_s, heartbeat_s, poll_s

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """The weights, record and lock paths of a key."""
        d = self.directory
        return d / f"{key}.weights.h5", d / f"{key}.json", d / f"{key}.lock"

    def record(self, key: str) -> dict | None:
        """The completed record of a key, or None."""
        path = self.paths(key)[1]
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def obtain(
        self, key: str, train: Callable[[], dict], load: Callable[[Path], None]
    ) -> tuple[dict, bool]:
        """Loads the stage 1 of `key`, or trains and stores it.

        Args:
            key: str. The head key.
            train: Called (holding the lock) when no record exists. It trains and
                returns a JSON-able record; it must then write the weights with
                `save_weights`.
            load: Called with the weights path when a record exists.

        Returns:
            `(record, reused)`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        weights, _, lock_path = self.paths(key)
        lock = LockFile(lock_path, self.stale_s)
        while True:
            found = self.record(key)
            if found is not None and weights.exists():
                load(weights)
                return found, True
            if not lock.acquire():
                time.sleep(self.poll_s)
                continue
            try:
                # Re-check: another worker may have finished between our look and
                # our lock.
                found = self.record(key)
                if found is not None and weights.exists():
                    load(weights)
                    return found, True
                with Heartbeat(lock_path, self.heartbeat_s):
                    record = train()
                atomic_write_json(self.paths(key)[1], record)
                return record, False
            finally:
                lock.release()

    def save_weights(self, key: str, model: keras.Model) -> Path:
        """Writes a model's weights for `key` atomically."""
        return atomic_save_weights(model, self.paths(key)[0])


# -- the hypermodel ----------------------------------------------------------------
class _EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class FineTuneHyperModel(kt.HyperModel):
    """A keras-tuner HyperModel for transfer learning with a shared stage 1.

    `build(hp)` builds a model with `tltf.build_model` (every trial starts from
    the same base weights); `fit(hp, model, train, validation_data)` runs the
    two-stage schedule. Stage 1 is trained once per head key and kept in the
    tuner's project folder (see `HeadStore`); trials that differ only in stage-2
    choices (`STAGE2_HPS`) load it and run stage 2 only, with epoch numbers that
    continue after stage 1 (your callbacks see epochs `head_epochs + 1` to
    `head_epochs + fine_tune_epochs`). The trial's score is the best value of the
    objective over its stage-2 epochs.

    Customising the search:

    - fix or narrow an entry with `search={...}` (see `SearchSpace`), or
      register it beforehand in a `kt.HyperParameters` passed to the tuner;
    - add your own entries with `build_hook(hp, model) -> model` (change the
      model) and `fit_hook(hp) -> dict` (extra `fine_tune` arguments, e.g.
      `{"label_smoothing": hp.Choice("ls", [0.0, 0.1])}`), or subclass and
      override `build` / `fit_options`. Your entries are part of the head key
      (so they get their own stage 1) unless you list them in `stage2_hps`.

    Args:
        base: A registry name, a saved base folder, a `keras.Model` or a `Base`.
        num_classes: int or None. See `build_model`.
        task: str. See `build_model`. Defaults to "multiclass".
        input_shape: tuple or None. See `build_model`.
        weights: See `build_model`. Defaults to "imagenet".
        head: HeadConfig or dict. Head options not searched (pooling, ...);
            dropout and the hidden width come from the search. Defaults to None.
        search: SearchSpace or dict. Defaults to `SearchSpace()`.
        head_epochs: int. Stage-1 epochs. Defaults to 5.
        fine_tune_epochs: int. Stage-2 epochs (Hyperband sets them per trial).
            Defaults to 5.
        optimizer: str or Optimizer. Defaults to "adam".
        share_stage1: bool. Keep and reuse stage 1 per head key. Defaults to True.
        head_store: str or None. Folder of the stage-1 store. Defaults to
            `<tuner project>/tltf_heads`.
        stage2_hps: Names of your own hyperparameters that only change stage 2.
        build_hook: Callable `(hp, model) -> model or None`. Defaults to None.
        fit_hook: Callable `(hp) -> dict` of extra `fine_tune` arguments.
            Defaults to None.
        seed: int or None. Seeds the base's initialisation (random-weight bases)
            and every trial. Defaults to None.
        batch_size: int. Batch size for array inputs. Defaults to 32.
        cache_features: See `fine_tune` (stage 1). Unless False, stage 2 also
            trains on the output of the frozen blocks, computed once per trial,
            when it can (array inputs, no augmentation or other fine_tune
            options, some blocks left frozen). Defaults to "auto".
        base_kwargs: dict. Extra `build_model` arguments (`alpha`, `weights_dir`,
            `blocks`, ...). Defaults to None.
        **fine_tune_kwargs: Other `fine_tune` arguments for every trial
            (`label_smoothing`, `class_weight`, `augment`, `gradual_every`...).

    Example:

    >>> hypermodel = FineTuneHyperModel("mobilenet_v2", num_classes=5,
    ...     search={"unfreeze": (0, 8), "head_units": 0})
    >>> tuner = kt.RandomSearch(hypermodel, "val_accuracy", max_trials=10)
    >>> tuner.search(train, val)
    """

    def __init__(
        self,
        base,
        num_classes: int | None = None,
        *,
        task: str = "multiclass",
        input_shape: tuple | None = None,
        weights="imagenet",
        head: HeadConfig | dict | None = None,
        search: SearchSpace | dict | None = None,
        head_epochs: int = 5,
        fine_tune_epochs: int = 5,
        optimizer="adam",
        share_stage1: bool = True,
        head_store=None,
        stage2_hps: Sequence[str] = (),
        build_hook: Callable | None = None,
        fit_hook: Callable | None = None,
        seed: int | None = None,
        batch_size: int = 32,
        cache_features="auto",
        base_kwargs: dict | None = None,
        name: str | None = None,
        **fine_tune_kwargs,
    ):
        super().__init__(name=name, tunable=True)
        for key in ("head_epochs", "fine_tune_epochs"):
            value = locals()[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"Expected {key} to be an integer >= 0. Received: {key}={value!r}"
                )
        if fine_tune_epochs < 1:
            raise ConfigError(
                "Expected fine_tune_epochs >= 1: trials are compared on their stage-2 "
                f"epochs. Received: fine_tune_epochs={fine_tune_epochs}"
            )
        for key in (
            "head_epochs",
            "fine_tune_epochs",
            "head_lr",
            "fine_tune_lr",
            "unfreeze",
            "bn",
            "lr_decay",
            "callbacks",
            "validation_data",
        ):
            if key in fine_tune_kwargs:
                raise ConfigError(
                    f"{key} is set by the hypermodel (search space or its own "
                    f"argument), not through fine_tune arguments. Received: {key}="
                    f"{fine_tune_kwargs[key]!r}"
                )
        self.search = SearchSpace.from_dict(search)
        self.head = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        self.num_classes, self.task = num_classes, task
        self.head_epochs, self.fine_tune_epochs = head_epochs, fine_tune_epochs
        self.optimizer = optimizer
        self.share_stage1 = share_stage1
        self.head_store = head_store
        self.stage2_hps = tuple(stage2_hps)
        self.build_hook, self.fit_hook = build_hook, fit_hook
        self.seed, self.batch_size = seed, batch_size
        self.cache_features = cache_features
        self.fine_tune_kwargs = fine_tune_kwargs
        base_kwargs = dict(base_kwargs or {})
        if seed is not None:
            keras.utils.set_random_seed(seed)
        self._base = load_base(
            base, weights=weights, input_shape=input_shape, **base_kwargs
        )
        self._input_shape = input_shape
        self._base_weights = [np.array(w) for w in self._base.model.get_weights()]
        digest = hashlib.sha1()
        for w in self._base_weights:
            digest.update(np.ascontiguousarray(w).tobytes())
        self._base_digest = digest.hexdigest()[:16]
        self._data_keys: dict[int, str] = {}
        self.n_blocks = len(self._base.block_map)
        # Validate the search space against the base now, not in trial 1.
        self.search.declare(kt.HyperParameters(), self.n_blocks)

    def logged_metrics(self) -> set[str] | None:
        """The names in a trial's logs: the loss and metrics, also as "val_...".

        The metrics are the task's (as `fine_tune` compiles them) or the
        `metrics` fine_tune argument. None when they cannot be known before a
        trial (a `fit_hook`, or an overridden `fit_options`, may change them).
        """
        if (
            self.fit_hook is not None
            or type(self).fit_options is not FineTuneHyperModel.fit_options
        ):
            return None
        metrics = self.fine_tune_kwargs.get("metrics", "auto")
        if isinstance(metrics, str) and metrics == "auto":
            # The task's metrics depend on the task only (no model needed).
            info = ModelInfo(None, None, (), {"task": self.task})
            metrics = default_loss_and_metrics(info)[1]
        if not isinstance(metrics, (list, tuple)):
            return None
        names = {"loss"}
        for metric in metrics:
            name = metric if isinstance(metric, str) else getattr(metric, "name", None)
            if not isinstance(name, str):
                return None
            names.add(name)
        return names | {f"val_{name}" for name in names}

    # -- keras-tuner API -------------------------------------------------------
    def declare_hyperparameters(self, hp):
        self.search.declare(hp, self.n_blocks)

    def trial_values(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """This trial's tltf search values (declares them in `hp`)."""
        return self.search.declare(hp, self.n_blocks)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Builds the trial's model: a copy of the base, then its head."""
        values = self.trial_values(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        head = dataclasses.replace(
            self.head,
            dropout=float(values["head_dropout"]),
            hidden_units=(int(values["head_units"]),) if values["head_units"] else (),
        )
        model = build_model(
            self._fresh_base(),
            self.num_classes,
            head=head,
            task=self.task,
            input_shape=self._input_shape,
        )
        if self.build_hook is not None:
            model = self.build_hook(hp, model) or model
        return model

    def fit_options(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Extra `fine_tune` arguments for a trial (override, or use `fit_hook`)."""
        options = dict(self.fine_tune_kwargs)
        if self.fit_hook is not None:
            options.update(self.fit_hook(hp) or {})
        return options

    def fit(self, hp, model, *args, **kwargs):
        """Runs the trial: stage 1 (shared per head key), then stage 2.

        Args:
            hp: The trial's HyperParameters.
            model: The model from `build`.
            *args: `train` and optionally `validation_data` (as for `fine_tune`).
            **kwargs: `validation_data`, `callbacks`, `verbose`, and Hyperband's
                `epochs` / `initial_epoch` (counted in stage-2 epochs).

        Returns:
            The History of the trial's stage-2 epochs.
        """
        train, validation = _split_data_args(args, kwargs)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        verbose = kwargs.pop("verbose", "auto")
        stage2_end = kwargs.pop("epochs", self.fine_tune_epochs)
        stage2_start = kwargs.pop("initial_epoch", 0)
        if kwargs:
            raise ConfigError(
                f"Unexpected search arguments {sorted(kwargs)}: FineTuneHyperModel.fit "
                "takes train, validation_data, callbacks, verbose (and Hyperband's "
                "epochs/initial_epoch). Pass fine_tune arguments to the hypermodel."
            )
        context = _TrialContext.find(callbacks)
        values = self.trial_values(hp)
        options = self.fit_options(hp)
        record: dict[str, Any] = {
            "trial_id": context.trial_id,
            "worker": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
            "status": "RUNNING",
            "values": {k: _jsonable(v) for k, v in hp.values.items()},
            "objective": context.objective_name,
            "direction": context.direction,
        }
        start = time.perf_counter()
        H = self.head_epochs
        try:
            continued = "tuner/trial_id" in hp.values
            stage1 = {"mode": "continued", "from": hp.values.get("tuner/trial_id")}
            if not continued and H > 0:
                stage1 = self._stage1(
                    hp, model, values, options, train, validation, context, verbose
                )
            elif not continued:
                stage1 = {"mode": "none", "from": None}
            stage1_history = stage1.pop("history", None)
            record["stage1"] = stage1
            timer = _EpochTimes()
            history = self._stage2(
                model,
                values,
                options,
                train,
                validation,
                [*callbacks, timer],
                H + stage2_start,
                H + stage2_end,
                verbose,
            )
        except Exception as error:
            reason = failure_reason(error)
            record.update(
                status="FAILED",
                reason=reason,
                seconds=time.perf_counter() - start,
            )
            context.write(record)
            if isinstance(
                error,
                (TltfError, tf.errors.ResourceExhaustedError, ValueError, MemoryError),
            ):
                raise kt.errors.FailedTrialError(reason) from error
            raise
        info = model_info(model)
        blocks, _ = resolve_unfreeze(
            info.block_map, info.base, blocks=int(values["unfreeze"])
        )
        logs = history.history
        score, best = _best(logs, context.objective_name, context.direction)
        # The best epoch as users count them: 1-based, stage 1 included.
        best_epoch = None if best is None else H + stage2_start + best + 1
        record.update(
            status="COMPLETED",
            blocks=int(values["unfreeze"]),
            unfrozen=_span(blocks),
            trainable_params=int(
                sum(math.prod(w.shape) for w in model.trainable_weights)
            ),
            total_params=int(sum(math.prod(w.shape) for w in model.weights)),
            score=score,
            best_epoch=best_epoch,
            epoch_seconds=timer.seconds,
            seconds=time.perf_counter() - start,
            history=_merge_history(stage1_history, logs),
        )
        record.pop("reason", None)
        context.write(record)
        return history

    # -- stages ---------------------------------------------------------------
    def head_key(self, hp, options, train, validation) -> str:
        """The key of everything stage 1 depends on (stage-2 choices excluded)."""
        stage2 = set(STAGE2_HPS) | set(self.stage2_hps)
        hp_values = {
            k: _jsonable(v)
            for k, v in sorted(hp.values.items())
            if k not in stage2 and not k.startswith("tuner/")
        }
        fields = {
            "base": self._base.name,
            "base_weights": self._base_digest,
            "input_shape": list(self._input_shape or self._base.input_shape),
            "task": self.task,
            "num_classes": self.num_classes,
            "head": dataclasses.asdict(self.head),
            "hp": hp_values,
            "head_epochs": self.head_epochs,
            "optimizer": _describe_optimizer(self.optimizer),
            "options": {
                k: repr(v)
                for k, v in sorted(options.items())
                if k not in STAGE2_OPTIONS
            },
            "seed": self.seed,
            "batch_size": self.batch_size,
            "data": [self._data_key(train), self._data_key(validation)],
        }
        text = json.dumps(fields, sort_keys=True, default=repr)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def _stage1(self, hp, model, values, options, train, validation, context, verbose):
        key = self.head_key(hp, options, train, validation)

        def train_head() -> dict:
            timer = _EpochTimes()
            started = time.perf_counter()
            history = self._fine_tune(
                model,
                train,
                validation,
                head_epochs=self.head_epochs,
                fine_tune_epochs=0,
                head_lr=float(values["head_lr"]),
                callbacks=[timer],
                cache_features=self.cache_features,
                verbose=verbose,
                **_stage1_options(options),
            )
            if store is not None:
                store.save_weights(key, model)
            return {
                "head_key": key,
                "trained_by": context.trial_id,
                "worker": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
                "seconds": time.perf_counter() - started,
                "epoch_seconds": timer.seconds,
                "history": _plain_history(history.history),
            }

        store = self._store(context) if self.share_stage1 else None
        if store is None:
            record, reused = train_head(), False
        else:
            record, reused = store.obtain(key, train_head, model.load_weights)
            if reused and verbose:
                print(
                    f"tltf: stage 1 reused (head key {key}, trained by trial "
                    f"{record.get('trained_by')}): loaded its weights."
                )
        return {
            "mode": "reused" if reused else "trained",
            "from": record.get("trained_by"),
            "head_key": key,
            "seconds": record.get("seconds"),
            "epoch_seconds": record.get("epoch_seconds"),
            "history": record.get("history"),
        }

    def _stage2(
        self, model, values, options, train, validation, callbacks, start, end, verbose
    ):
        decay = float(values["lr_decay"])
        partial = self._partial_cache(
            model, values, options, train, validation, callbacks
        )
        if partial is not None:
            return _fit_on_frozen_features(
                model,
                partial,
                train,
                validation,
                values,
                make_optimizer(self.optimizer, float(values["head_lr"])),
                callbacks,
                start,
                end,
                self.batch_size,
                self.seed,
                verbose,
            )
        fit_args = {"initial_epoch": start} if start else {}
        return self._fine_tune(
            model,
            train,
            validation,
            head_epochs=0,
            fine_tune_epochs=end,
            head_lr=float(values["head_lr"]),
            fine_tune_lr=float(values["fine_tune_lr"]),
            unfreeze=int(values["unfreeze"]),
            bn=values["bn"],
            lr_decay=None if decay == 1.0 else decay,
            callbacks=callbacks,
            verbose=verbose,
            **options,
            **fit_args,
        )

    def _partial_cache(self, model, values, options, train, validation, callbacks):
        """The split for a stage 2 on cached frozen-block features, or None.

        Blocks below the unfrozen ones are frozen and deterministic in stage 2
        (their BatchNorm runs on frozen statistics under every policy), so their
        output can be computed once per trial. Used for the plain case: array
        inputs, no augmentation or other fine_tune options, no gradual
        unfreezing, and `cache_features` not False.
        """
        # Options at their neutral value (None, 0, False) change nothing.
        if self.cache_features is False or any(v for v in options.values()):
            return None
        if not all(
            isinstance(d, (tuple, list)) and len(d) == 2 for d in (train, validation)
        ):
            return None
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
            return None
        k = int(values["unfreeze"])
        info = model_info(model)
        if k >= len(info.block_map):
            return None
        try:
            split = _FrozenSplit(model, info, k)
        except (ValueError, KeyError, IndexError, AttributeError):
            return None  # a base whose blocks do not chain through one tensor

        images = len(train[0]) + len(validation[0])
        if (
            4 * math.prod(split.cut_shape) * images > cache.MEMORY_LIMIT_BYTES
        ):  # read now: users may set it
            return None
        return split

    def _fine_tune(self, model, train, validation, **kwargs):
        # keras-tuner scores a trial by its best epoch already; the stage-2 guard
        # would also make the full-pass and cached stage 2 differ.
        kwargs.setdefault("keep_best", False)
        return fine_tune(
            model,
            train,
            validation,
            # A name stays a name: fine_tune makes it at the head's rate.
            optimizer=self.optimizer
            if isinstance(self.optimizer, str)
            else clone_optimizer(self.optimizer),
            batch_size=self.batch_size,
            seed=self.seed,
            **kwargs,
        )

    def _store(self, context) -> HeadStore | None:
        if self.head_store is not None:
            return HeadStore(self.head_store)
        if context.project_dir is not None:
            return HeadStore(Path(context.project_dir) / HEADS_DIR)
        return None

    def _fresh_base(self) -> Base:
        """A copy of the base with the original weights (trials never share it)."""
        model = keras.models.clone_model(self._base.model)
        model.set_weights(self._base_weights)
        return dataclasses.replace(self._base, model=model)

    def _data_key(self, data) -> str | None:
        if data is None:
            return None
        cached = self._data_keys.get(id(data))
        if cached is not None:
            return cached
        key = _data_fingerprint(data)
        self._data_keys[id(data)] = key
        return key


class _FrozenSplit:
    """A model split after its last frozen block: a feature extractor (images to
    the frozen blocks' output) and the trainable rest, sharing the model's layers."""

    def __init__(self, model: keras.Model, info, k: int):
        if k == 0:
            # Head only: the stage-1 cache's split (features after the pooling).

            self.extractor, self.trainable = feature_model(model), head_model(model)
            self.cut_shape = tuple(cut_tensor(model).shape[1:])
            return
        base, block_map = info.base, info.block_map
        if not 0 < k < len(block_map):
            raise ValueError("nothing frozen to cache")
        if len(base.outputs) != 1:
            raise ValueError("a head that reads several blocks (HeadConfig.pool_from)")
        last = block_map[len(block_map) - k - 1].layers[-1]
        cut = base.get_layer(last).output
        if isinstance(cut, (list, tuple)):
            raise ValueError("a block with several outputs")
        rest_of_base = keras.Model(cut, base.outputs[0], name=f"{base.name}_top{k}")
        bottom = keras.Model(base.inputs[0], cut, name=f"{base.name}_bottom{k}")
        # Every layer of the base must be on exactly one side of the cut.
        names = {layer.name for layer in base.layers}
        covered = {layer.name for layer in rest_of_base.layers} | {
            layer.name for layer in bottom.layers
        }
        if names - covered:
            raise ValueError("layers outside both parts")
        images = keras.Input(model.input_shape[1:], name="image")
        pre = model.get_layer("preprocessing")
        self.extractor = keras.Model(images, bottom(pre(images)), name="frozen_part")
        self.cut_shape = tuple(cut.shape[1:])
        features = keras.Input(self.cut_shape, name="frozen_features")
        # The head after the base, as a model on the base's output (shared layers).
        base_out = base._inbound_nodes[0].output_tensors[0]
        head = keras.Model(base_out, model.outputs[0], name="head_part")
        self.trainable = keras.Model(
            features, head(rest_of_base(features)), name="trainable_part"
        )


def _fit_on_frozen_features(
    model,
    split,
    train,
    validation,
    values,
    optimizer,
    callbacks,
    start,
    end,
    batch_size,
    seed,
    verbose,
):
    """Stage 2 with the frozen blocks' output computed once (see `_FrozenSplit`).

    The schedule installs the stage-2 optimizer and trainability on the full
    model as usual; the fit runs on the trainable part (same layers, same
    variables), and user callbacks see the full model through
    `tltf.cache.Continuation`: the same epochs, logs and History.
    """

    info = model_info(model)
    decay = float(values["lr_decay"])
    x, y = np.asarray(train[0]), np.asarray(train[1])
    xv, yv = np.asarray(validation[0]), np.asarray(validation[1])
    if x.shape[1:] != tuple(model.input_shape[1:]):
        raise DataError(
            f"train has images of shape {x.shape[1:]}, but the model takes "
            f"{tuple(model.input_shape[1:])}. Load them with tltf.data.load_data("
            "..., image_size=...) to resize."
        )
    one_hot = check_labels(train, info, "train")
    check_labels(validation, info, "validation_data")
    loss, metrics = default_loss_and_metrics(info, one_hot)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    schedule = FineTuneSchedule(
        unfreeze_at_epoch=0,
        unfreeze=int(values["unfreeze"]),
        fine_tune_lr=float(values["fine_tune_lr"]),
        bn=values["bn"],
        lr_decay=None if decay == 1.0 else decay,
        verbose=0 if verbose == 0 else 1,
    )
    schedule.set_model(model)
    schedule.set_params({"epochs": end})
    started = time.perf_counter()
    feats = split.extractor.predict(x, batch_size=batch_size, verbose=0)
    feats_val = split.extractor.predict(xv, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    schedule._enter(2, schedule.plan(start)[1], start)  # optimizer, trainability
    if verbose:
        print(
            f"tltf: stage 2 trains on the output of the {len(info.block_map) - int(values['unfreeze'])}"
            f" frozen blocks, computed once ({seconds:.1f}s)."
        )
    trainable = split.trainable
    trainable.compile(optimizer=model.optimizer, loss=loss, metrics=metrics)
    # The same batches as fine_tune's pipeline: one shuffle of the slices.
    train_ds, _ = train_batches((feats, y), batch_size, seed)
    val_ds = tf.data.Dataset.from_tensor_slices((feats_val, yv)).batch(batch_size)
    history = keras.callbacks.History()
    continuation = Continuation([history, *callbacks], model, end)
    continuation.last = True
    trainable.fit(
        train_ds,
        validation_data=val_ds.prefetch(tf.data.AUTOTUNE),
        epochs=end,
        initial_epoch=start,
        shuffle=False,
        callbacks=[StageTag(2, model), continuation, *stage_progbar(callbacks)],
        verbose=verbose,
    )
    model.history = history
    return history


def _stage1_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in STAGE2_OPTIONS}


def _split_data_args(args, kwargs):
    args = list(args)
    if "x" in kwargs:
        args.insert(0, kwargs.pop("x"))
    if not args:
        raise ConfigError("Expected training data: tuner.search(train, validation).")
    train = args[0]
    validation = kwargs.pop("validation_data", args[1] if len(args) > 1 else None)
    if len(args) > 2:
        raise ConfigError(
            "Expected tuner.search(train, validation_data=...); received "
            f"{len(args)} positional arguments."
        )

    if validation is None and isinstance(train, DataBundle):
        validation = train.validation
    if validation is None:
        raise ConfigError(
            "Tuning needs validation data: trials are compared on it. Pass "
            "validation_data (or a DataBundle with a validation split)."
        )
    return train, validation


@dataclasses.dataclass
class _TrialContext:
    """What a fit knows about its trial, found in keras-tuner's callbacks."""

    trial_id: str | None = None
    trial_dir: str | None = None
    project_dir: str | None = None
    objective_name: str = "val_loss"
    direction: str = "min"

    @classmethod
    def find(cls, callbacks) -> _TrialContext:
        for callback in callbacks:
            tuner, trial = (
                getattr(callback, "tuner", None),
                getattr(callback, "trial", None),
            )
            if isinstance(tuner, kt.engine.base_tuner.BaseTuner) and trial is not None:
                objective = tuner.oracle.objective
                return cls(
                    trial_id=trial.trial_id,
                    trial_dir=tuner.get_trial_dir(trial.trial_id),
                    project_dir=tuner.project_dir,
                    objective_name=getattr(objective, "name", "val_loss"),
                    direction=getattr(objective, "direction", "min"),
                )
        return cls()

    def write(self, record: dict) -> None:
        if self.trial_dir is not None:
            atomic_write_json(Path(self.trial_dir) / TRIAL_RECORD, record)


def failure_reason(error: BaseException) -> str:
    """A one-line reason for a failed trial."""
    if isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError)):
        head = "Out of memory"
    else:
        head = type(error).__name__
    message = str(error).strip().splitlines()
    return f"{head}: {message[0] if message else ''}".strip()


def _best(logs: dict, name: str, direction: str):
    values = logs.get(name)
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    index = int(np.nanargmax(arr) if direction == "max" else np.nanargmin(arr))
    return float(arr[index]), index


def _span(blocks: list[str]) -> str:
    if not blocks:
        return ""
    return blocks[0] if len(blocks) == 1 else f"{blocks[0]}..{blocks[-1]}"


def _plain_history(logs: dict) -> dict:
    return {k: [float(v) for v in vs] for k, vs in logs.items()}


def _merge_history(stage1: dict | None, stage2: dict) -> dict:
    """Stage-1 history (from the store) followed by this trial's stage 2."""
    stage2 = _plain_history(stage2)
    if not stage1:
        return stage2
    keys = list(dict.fromkeys([*stage1, *stage2]))
    n1 = len(next(iter(stage1.values()), []))
    n2 = len(next(iter(stage2.values()), []))
    return {
        k: list(stage1.get(k, [math.nan] * n1)) + list(stage2.get(k, [math.nan] * n2))
        for k in keys
    }


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


def _describe_optimizer(optimizer):
    if isinstance(optimizer, str):
        return optimizer
    return {"class": type(optimizer).__name__, "config": repr(optimizer.get_config())}


def _data_fingerprint(data) -> str:
    """A cheap identity of a dataset (for the head key)."""

    digest = hashlib.sha1()
    if isinstance(data, DataBundle):
        digest.update(repr(data.class_names).encode())
        digest.update(repr(getattr(data, "counts", None)).encode())
        data = data.train
    if isinstance(data, tf.data.Dataset):
        digest.update(repr(data.element_spec).encode())
        digest.update(str(int(data.cardinality())).encode())
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        digest.update(f"{x.shape}{x.dtype}{y.shape}{y.dtype}".encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        step = max(1, len(x) // 64)
        digest.update(np.ascontiguousarray(x[::step]).tobytes())
    else:
        raise DataError(
            "Expected data as (images, labels) arrays, a tf.data.Dataset or a "
            f"DataBundle. Received: {type(data).__name__}"
        )
    return digest.hexdigest()[:16]


# -- tune ---------------------------------------------------------------------------
TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
    "grid": kt.GridSearch,
}


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns.

    Attributes:
        best_model: keras.Model or None. The best trial's model, restored from its
            best stage-2 epoch (None on a distributed worker).
        best_hyperparameters: keras_tuner.HyperParameters or None.
        table: list of dict. One row per trial (see `results_table`).
        objective: str. The objective's name.
        tuner: The keras-tuner tuner.
        paths: dict. Files written: "csv", "json", "plot", "model".
    """

    best_model: keras.Model | None
    best_hyperparameters: kt.HyperParameters | None
    table: list[dict]
    objective: str
    tuner: Any = None
    paths: dict = dataclasses.field(default_factory=dict)

    @property
    def best_values(self) -> dict:
        """The best trial's hyperparameter values."""
        return (
            dict(self.best_hyperparameters.values) if self.best_hyperparameters else {}
        )

    def summary(self) -> str:
        """The results table as text."""
        return format_table(self.table, self.objective)

    def __str__(self) -> str:
        return self.summary()


def tune(
    base,
    train,
    validation_data=None,
    *,
    num_classes: int | None = None,
    task: str = "multiclass",
    input_shape: tuple | None = None,
    weights="imagenet",
    search: SearchSpace | dict | None = None,
    tuner="bayesian",
    max_trials: int = 10,
    objective="auto",
    directory="tltf_tuning",
    project_name: str = "tune",
    overwrite: bool = False,
    head_epochs: int = 5,
    fine_tune_epochs: int = 5,
    optimizer="adam",
    callbacks: list | None = None,
    share_stage1: bool = True,
    seed: int | None = None,
    max_consecutive_failed_trials: int = 3,
    hyperparameters: kt.HyperParameters | None = None,
    tuner_kwargs: dict | None = None,
    export: bool = True,
    verbose=1,
    **hypermodel_kwargs,
) -> TuneResult:
    """Searches what to unfreeze (and how) with keras-tuner, sharing stage 1.

    Builds a `FineTuneHyperModel`, runs a keras-tuner search, and writes into
    the project folder (`directory/project_name`) a results table
    (`tltf_results.csv` and `.json`, printed too), a plot of the val metric
    against unfrozen blocks with time per epoch (`tltf_tuning.png`) and the
    best model (`best_model.keras`), all atomically.

    With `overwrite=False` (the default) an existing project is resumed:
    finished trials are not run again, an interrupted one is re-run, and a
    larger `max_trials` adds trials. A trial that fails (NaN loss, out of
    memory, a bad combination) is recorded as FAILED with its reason; the search
    goes on (it stops after `max_consecutive_failed_trials` failures in a row).
    If no trial completes, `tune` raises a TrainingError with the first reason.

    One search at a time per project folder: a second process on the same
    project raises a ConfigError (see `project_lock`), unless they run in
    keras-tuner's chief/worker mode.

    Distributed: run the same script on every machine with
    `KERASTUNER_TUNER_ID` ("chief" on one, "tuner0", "tuner1"... elsewhere),
    `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set, and a project folder
    on a shared file system. The chief serves trials and writes the results;
    workers run trials and share stage 1 through the folder.

    Args:
        base: A registry name, saved base folder, `keras.Model` or `Base`; or a
            `FineTuneHyperModel` (then the model arguments below must be left
            at their defaults); or None when `tuner` is a keras-tuner instance.
        train: Training data, as for `fine_tune` (arrays, tf.data, DataBundle).
        validation_data: Validation data. Required (or a DataBundle with one).
        num_classes: int or None. Inferred from a DataBundle or array labels.
        task: str. See `build_model`. Defaults to "multiclass".
        input_shape: tuple or None. See `build_model`.
        weights: See `build_model`. Defaults to "imagenet".
        search: SearchSpace or dict. See `SearchSpace`. Defaults to its defaults.
        tuner: "bayesian", "random", "hyperband", "grid" or a `kt.Tuner`.
            Defaults to "bayesian".
        max_trials: int. Trials at most (Hyperband: a cap on its brackets).
            Defaults to 10.
        objective: str or kt.Objective. "auto": "val_accuracy" for
            classification, "val_loss" for regression. Defaults to "auto".
        directory: str. Parent folder of the project. Defaults to "tltf_tuning".
        project_name: str. Defaults to "tune".
        overwrite: bool. Start over instead of resuming. Defaults to False.
        head_epochs: int. Stage-1 epochs. Defaults to 5.
        fine_tune_epochs: int. Stage-2 epochs (Hyperband's max_epochs).
            Defaults to 5.
        optimizer: str or Optimizer. Defaults to "adam".
        callbacks: list or None. Keras callbacks for every trial's stage 2
            (deep-copied per trial, as keras-tuner does).
        share_stage1: bool. Train stage 1 once per head key. Defaults to True.
        seed: int or None. Seeds trials and the oracle. Defaults to None.
        max_consecutive_failed_trials: int. Defaults to 3.
        hyperparameters: kt.HyperParameters or None. Entries registered here
            override the search space (keras-tuner's own mechanism).
        tuner_kwargs: dict or None. Extra arguments of the tuner class.
        export: bool. Write the table, plot and best model. Defaults to True.
        verbose: int. 0 is silent. Defaults to 1.
        **hypermodel_kwargs: Other `FineTuneHyperModel` arguments (`head`,
            `build_hook`, `fit_hook`, `stage2_hps`, `base_kwargs`, fine_tune
            arguments such as `label_smoothing`).

    Returns:
        A `TuneResult`: best model, best hyperparameters, the table.

    Raises:
        ConfigError: A bad argument, an objective that the trials do not log, or
            another process searching the same project.
        TrainingError: No trial completed.

    Example:

    >>> result = tltf.tune("efficientnet_b0", train_ds, val_ds, num_classes=5,
    ...                    tuner="random", max_trials=12,
    ...                    search={"fine_tune_lr": [1e-5, 1e-4]})
    >>> result.best_values["unfreeze_blocks"]
    >>> result.best_model.save("best.keras")
    """
    from keras_tuner.src.distribute import utils as dist_utils

    # Fail before any tuner or folder exists.
    _split_data_args((train,), {"validation_data": validation_data})
    hypermodel, kt_tuner = None, None
    if isinstance(tuner, kt.Tuner):
        kt_tuner = tuner
        if base is not None and base is not tuner.hypermodel:
            raise ConfigError(
                "Pass base=None when tuner is a keras-tuner instance: its hypermodel "
                f"is used. Received: base={base!r}"
            )
        hypermodel = tuner.hypermodel
    elif isinstance(base, FineTuneHyperModel):
        hypermodel = base
    if hypermodel is None:
        if num_classes is None:
            num_classes = _infer_num_classes(train, task)
        hypermodel = FineTuneHyperModel(
            base,
            num_classes,
            task=task,
            input_shape=input_shape,
            weights=weights,
            search=search,
            head_epochs=head_epochs,
            fine_tune_epochs=fine_tune_epochs,
            optimizer=optimizer,
            share_stage1=share_stage1,
            seed=seed,
            **hypermodel_kwargs,
        )
    elif hypermodel_kwargs or search is not None:
        raise ConfigError(
            "Model and search arguments go to the FineTuneHyperModel you passed; "
            f"tune() received {sorted([*hypermodel_kwargs] + (['search'] if search else []))}."
        )
    objective = _objective(objective, hypermodel.task)
    if kt_tuner is None:
        _check_objective(objective, hypermodel)
        project = Path(directory) / project_name
    else:
        _check_objective(kt_tuner.oracle.objective, hypermodel)
        project = Path(kt_tuner.project_dir)
    fit_kwargs = {"callbacks": list(callbacks or []), "verbose": verbose}
    if validation_data is not None:
        fit_kwargs["validation_data"] = validation_data
    distributed = dist_utils.has_chief_oracle()
    # One search per project folder; chief and workers share theirs.
    with contextlib.nullcontext() if distributed else project_lock(project):
        if kt_tuner is None:
            if overwrite and not distributed:
                _clear_project(project)  # keras-tuner's overwrite deletes the lock
            kt_tuner = _make_tuner(
                tuner,
                hypermodel,
                objective=objective,
                max_trials=max_trials,
                directory=directory,
                project_name=project_name,
                # Only the chief may clear a distributed project.
                overwrite=overwrite and dist_utils.is_chief_oracle(),
                seed=seed,
                max_consecutive_failed_trials=max_consecutive_failed_trials,
                hyperparameters=hyperparameters,
                fine_tune_epochs=hypermodel.fine_tune_epochs,
                tuner_kwargs=tuner_kwargs or {},
            )
        return _search(kt_tuner, train, fit_kwargs, export, verbose)


def _search(kt_tuner, train, fit_kwargs, export, verbose) -> TuneResult:
    """Runs a search (or serves it, on the chief) and collects the results."""
    from keras_tuner.src.distribute import utils as dist_utils

    if dist_utils.is_chief_oracle():
        kt_tuner.oracle.verbose = verbose
        kt_tuner.save()
        serve_chief(kt_tuner.oracle)
    else:
        from keras_tuner.src import config as kt_config

        # keras-tuner prints each failed trial's traceback; the table has the
        # reason and trial.json the traceback (verbose=2 prints them too).
        debug, kt_config.DEBUG = kt_config.DEBUG, verbose == 2
        try:
            kt_tuner.search(train, **fit_kwargs)
        except RuntimeError as error:
            if "consecutive failures" not in str(error):
                raise
            _stop_after_failures(kt_tuner, error, export)
        finally:
            kt_config.DEBUG = debug
        if dist_utils.has_chief_oracle():
            # A worker: the chief gathers and exports the results.
            table = results_table(kt_tuner, from_records_only=True)
            return TuneResult(None, None, table, _objective_name(kt_tuner), kt_tuner)
    result = results(kt_tuner, export=export, verbose=verbose)
    _raise_if_all_failed(result.table, kt_tuner.project_dir, export)
    return result


def _clear_project(project: Path) -> None:
    """Empties a project folder (overwrite=True), keeping its lock."""
    for child in project.iterdir():
        if child.name == PROJECT_LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _raise_if_all_failed(table: list[dict], project, export: bool) -> None:
    """Raises a TrainingError when trials ran and none of them completed."""
    failed = [r for r in table if r["status"] in ("FAILED", "INVALID")]
    if not failed or any(r["status"] == "COMPLETED" for r in table):
        return
    first = failed[0]
    where = RESULTS_CSV if export else "trial_*/trial.json"
    raise TrainingError(
        f"Expected at least one trial to complete. Received: {len(failed)} of "
        f"{len(table)} trials failed, so there is no best model. Trial "
        f"{first['trial']} failed with: {first.get('reason') or 'an unknown error'}"
        f". Every trial's reason is in {project} ({where}). Fix the cause, then "
        "run tune() again with overwrite=True (a resumed search does not re-run "
        "failed trials)."
    ) from None


def _stop_after_failures(tuner, error, export) -> None:
    """Saves the table, then raises a TrainingError naming the last reasons."""
    table = results_table(tuner)
    if export:
        write_table(table, tuner.project_dir)
    failed = [r for r in table if r["status"] == "FAILED"]
    # First sentences, so that the same cause at different rates reads once.
    reasons = sorted({r["reason"].split(" at ")[0] for r in failed if r.get("reason")})
    raise TrainingError(
        f"The search stopped: {tuner.oracle.max_consecutive_failed_trials} trials "
        f"in a row failed. Reasons: {'; '.join(reasons) or str(error)}. The "
        f"table is in {tuner.project_dir}. Fix the cause (or narrow the search "
        "space), then run tune() again with overwrite=False to continue; raise "
        "max_consecutive_failed_trials to tolerate more failures."
    ) from None


def _infer_num_classes(train, task):
    if isinstance(train, DataBundle):
        return train.num_classes
    if task in ("binary", "regression"):
        return None
    if isinstance(train, (tuple, list)) and len(train) == 2:
        y = np.asarray(train[1])
        if task == "multilabel" or (y.ndim == 2 and y.shape[1] > 1):
            return int(y.shape[1])
        return int(y.max()) + 1
    raise ConfigError("Pass num_classes: it cannot be inferred from a tf.data.Dataset.")


def _objective(objective, task):
    if isinstance(objective, str) and objective == "auto":
        return "val_loss" if task == "regression" else "val_accuracy"
    return objective


def _objective_names(objective) -> list:
    """The metric names an objective reads: a str, a kt.Objective or a list."""
    if isinstance(objective, (list, tuple)):
        return [name for o in objective for name in _objective_names(o)]
    inner = getattr(objective, "objectives", None)  # kt's MultiObjective
    if inner is not None:
        return _objective_names(list(inner))
    if isinstance(objective, kt.Objective):
        return [objective.name]
    return [objective]


def _check_objective(objective, hypermodel) -> None:
    """Rejects an objective that no trial logs, before any trial runs."""
    known = hypermodel.logged_metrics()
    if known is None:
        return
    for name in _objective_names(objective):
        if name not in known:
            raise ConfigError(
                f"Expected objective to be a metric that the trials log: "
                f"{sorted(known)}. Received: objective={name!r}."
                f"{suggest(str(name), known, n=1)} Pass one of these names (or a "
                "keras_tuner.Objective on one)."
            )


def _objective_name(tuner) -> str:
    return getattr(tuner.oracle.objective, "name", "score")


def _make_tuner(
    kind,
    hypermodel,
    *,
    objective,
    max_trials,
    directory,
    project_name,
    overwrite,
    seed,
    max_consecutive_failed_trials,
    hyperparameters,
    fine_tune_epochs,
    tuner_kwargs,
):
    if not isinstance(kind, str) or kind not in TUNERS:
        raise ConfigError(
            f"Unknown tuner {kind!r}.{suggest(str(kind), TUNERS)} Use one of "
            f"{sorted(TUNERS)} or a keras_tuner.Tuner instance."
        )
    if (
        isinstance(max_trials, bool)
        or not isinstance(max_trials, int)
        or max_trials < 1
    ):
        raise ConfigError(f"Expected max_trials >= 1. Received: {max_trials!r}")
    args = dict(
        hypermodel=hypermodel,
        objective=objective,
        directory=str(directory),
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
        hyperparameters=hyperparameters,
    )
    if kind == "hyperband":
        args.update(max_epochs=fine_tune_epochs, hyperband_iterations=1)
    else:
        args["max_trials"] = max_trials
    args.update(tuner_kwargs)
    try:
        tuner = TUNERS[kind](**args)
    except ImportError as error:
        raise ConfigError(
            f"tuner={kind!r} needs a package that is missing ({error}). Install "
            "keras-tuner's extra with `pip install 'keras-tuner[bayesian]'` (scipy "
            "and scikit-learn), or use tuner='random'."
        ) from None
    if kind == "hyperband":
        tuner.oracle.max_trials = max_trials  # the base oracle stops there
    return tuner


def serve_chief(oracle, poll_s: float = 0.2) -> None:
    """Serves a keras-tuner oracle to workers until the search is over.

    keras-tuner's own chief loop checks for the end only every 20 seconds once
    the first worker is done; this one uses keras-tuner's gRPC servicer and
    stops as soon as no trial runs and every worker has been told to stop.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = (
        f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise ConfigError(
            f"The chief could not listen on {address}. Set KERASTUNER_ORACLE_IP to "
            "an address of this machine and KERASTUNER_ORACLE_PORT to a free port."
        )
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)


def _compile_for_evaluation(model: keras.Model) -> None:
    """Compiles a restored best model with its task's loss and metrics.

    keras-tuner rebuilds it uncompiled; compiled, `evaluate` works at once. The
    loss takes integer class labels (recompile for one-hot labels).
    """
    loss, metrics = default_loss_and_metrics(model_info(model))
    model.compile(optimizer="adam", loss=loss, metrics=metrics)


# -- results ------------------------------------------------------------------------
def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def results_table(tuner, from_records_only: bool = False) -> list[dict]:
    """One row per trial: what was unfrozen, LRs, head, score, time, stage 1.

    Columns: trial, status, blocks (unfrozen), unfrozen (block span),
    trainable_params, head_lr, fine_tune_lr, bn, lr_decay, head_dropout,
    head_units, score (best objective over stage 2), best_epoch (1-based, stage 1
    included), epoch_s (median stage-2 seconds per epoch; the first epoch also
    traces the model), stage1 ("trained", "reused", "continued" or "none"),
    stage1_from (the trial that trained it), head_key, seconds, reason (failed
    trials), and your own hyperparameters as `hp:<name>`.

    Args:
        tuner: A keras-tuner tuner that ran `FineTuneHyperModel` trials.
        from_records_only: bool. Use only tltf's per-trial records (on a
            distributed worker, which has no oracle). Defaults to False.

    Returns:
        A list of dicts, sorted by trial id.
    """
    project = Path(tuner.project_dir)
    trials = {}
    if not from_records_only:
        trials = dict(tuner.oracle.trials)
    ids = set(trials)
    for path in project.glob(f"trial_*/{TRIAL_RECORD}"):
        ids.add(path.parent.name[len("trial_") :])
    known = set(HP_NAMES.values())
    rows = []
    for trial_id in sorted(ids):
        record = _read_record(project / f"trial_{trial_id}" / TRIAL_RECORD) or {}
        trial = trials.get(trial_id)
        values = (
            dict(trial.hyperparameters.values) if trial else record.get("values", {})
        )
        status = str(trial.status) if trial else record.get("status", "?")
        reason = record.get("reason")
        if status in ("FAILED", "INVALID") and not reason and trial is not None:
            lines = [ln for ln in (trial.message or "").strip().splitlines() if ln]
            reason = lines[-1] if lines else None
        stage1 = record.get("stage1") or {}
        epochs = record.get("epoch_seconds") or []
        score = (
            trial.score
            if trial is not None and trial.score is not None
            else (record.get("score"))
        )
        row = {
            "trial": trial_id,
            "status": status,
            "blocks": values.get(HP_NAMES["unfreeze"]),
            "unfrozen": record.get("unfrozen"),
            "trainable_params": record.get("trainable_params"),
            "head_lr": values.get(HP_NAMES["head_lr"]),
            "fine_tune_lr": values.get(HP_NAMES["fine_tune_lr"]),
            "bn": values.get(HP_NAMES["bn"]),
            "lr_decay": values.get(HP_NAMES["lr_decay"]),
            "head_dropout": values.get(HP_NAMES["head_dropout"]),
            "head_units": values.get(HP_NAMES["head_units"]),
            "score": None if score is None else float(score),
            "best_epoch": record.get("best_epoch"),
            "epoch_s": float(np.median(epochs)) if epochs else None,
            "stage1": stage1.get("mode"),
            "stage1_from": stage1.get("from"),
            "head_key": stage1.get("head_key"),
            "seconds": record.get("seconds"),
            "reason": reason,
        }
        for name, value in sorted(values.items()):
            if name not in known and not name.startswith("tuner/"):
                row[f"hp:{name}"] = value
        rows.append(row)
    return rows


_COLUMNS = [
    ("trial", "trial", "{}"),
    ("status", "status", "{}"),
    ("blocks", "blocks", "{}"),
    ("trainable_params", "trainable", "{:,}"),
    ("head_lr", "head_lr", "{:.0e}"),
    ("fine_tune_lr", "ft_lr", "{:.1e}"),
    ("bn", "bn", "{}"),
    ("lr_decay", "decay", "{:g}"),
    ("head_dropout", "drop", "{:g}"),
    ("head_units", "units", "{}"),
    ("score", "score", "{:.4f}"),
    ("epoch_s", "s/epoch", "{:.2f}"),
    ("stage1", "stage 1", "{}"),
    ("stage1_from", "from", "{}"),
]


def format_table(rows: list[dict], objective: str = "score") -> str:
    """The results table as aligned text (failed trials get their reason)."""
    header = [title if key != "score" else objective for key, title, _ in _COLUMNS]
    lines = []
    for row in rows:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = row.get(key)
            try:
                cells.append("-" if value is None else fmt.format(value))
            except (TypeError, ValueError):
                cells.append(str(value))
        lines.append(cells)
    widths = [
        max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]
    out = io.StringIO()
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "\n")
    for row, cells in zip(rows, lines, strict=True):
        out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        if row.get("reason"):
            # The first sentence; the CSV and JSON keep the whole reason.
            out.write(f"  <- {row['reason'].split('. ')[0][:160]}")
        out.write("\n")
    return out.getvalue().rstrip("\n")


def write_table(rows: list[dict], directory) -> tuple[Path, Path]:
    """Writes the table as CSV and JSON (atomically) into `directory`."""
    directory = Path(directory)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
    csv_path = atomic_write_text(directory / RESULTS_CSV, buffer.getvalue())
    json_path = atomic_write_json(directory / RESULTS_JSON, rows)
    return csv_path, json_path


def results(tuner, export: bool = True, verbose=1) -> TuneResult:
    """Collects a finished (or resumed) search: table, best model, exports.

    Use it after your own `tuner.search(...)` with a `FineTuneHyperModel`.

    Args:
        tuner: The keras-tuner tuner.
        export: bool. Write CSV, JSON, plot and `best_model.keras` into the
            project folder. Defaults to True.
        verbose: int. Print the table. Defaults to 1.

    Returns:
        A `TuneResult`.
    """

    objective = _objective_name(tuner)
    table = results_table(tuner)
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best_model = best_hp = None
    if completed:
        best_trial = tuner.oracle.get_best_trials(1)[0]
        best_hp = best_trial.hyperparameters
        try:
            best_model = tuner.load_model(best_trial)
            _compile_for_evaluation(best_model)
        except (OSError, ValueError) as error:
            # E.g. a worker's checkpoint on a disk the chief cannot see.
            print(
                f"tltf: could not load the best trial's checkpoint ({error}); "
                "best_model is None. Rebuild it from best_hyperparameters."
            )
    paths = {}
    project = Path(tuner.project_dir)
    if export:
        paths["csv"], paths["json"] = write_table(table, project)
        if any(r["score"] is not None for r in table):
            plot_tuning(table, objective, path=project / RESULTS_PLOT)
            paths["plot"] = project / RESULTS_PLOT
        if best_model is not None:
            paths["model"] = atomic_save_model(best_model, project / BEST_MODEL)
    if verbose:
        print(format_table(table, objective))
        shared = sum(r["stage1"] == "reused" for r in table)
        print(
            f"tltf: {len(completed)} of {len(table)} trials completed; {shared} reused "
            f"a stage 1. Results in {project}."
        )
    return TuneResult(best_model, best_hp, table, objective, tuner, paths)


__all__ = [
    "FineTuneHyperModel",
    "HeadStore",
    "SearchSpace",
    "TuneResult",
    "failure_reason",
    "format_table",
    "project_lock",
    "results",
    "results_table",
    "serve_chief",
    "tune",
    "write_table",
]
