"""`FineTuneHyperModel`: one trial, its model and its two stages.

`build(hp)` builds the trial's model from a fresh copy of the base; `fit` runs
stage 1 (trained once per head key and kept in the `HeadStore`) and then stage 2,
on cached frozen-block features when it can. Each trial writes its record
(`tltf_trial.json`: values, stage 1, score, times, history, or why it failed) into
its trial folder; `results` reads them back.

Why about 800 lines: a trial's two stages, its shared stage 1, its cached stage
2 and its record are one object's work; the search and the results table live
in `search` and `results`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tltf import cache
from tltf._checks import check_keywords, is_int, named_arguments
from tltf._io import atomic_write_json
from tltf.bases.base import Base, load_base
from tltf.cache import Continuation, FeatureCache, FrozenSplit, fit_part
from tltf.data import DataBundle
from tltf.data.inputs import (
    as_dataset,
    check_image_shape,
    check_labels,
    images_at_most,
    is_array,
    is_arrays,
    split_validation,
)
from tltf.errors import ConfigError, DataError, TltfError
from tltf.freezing import resolve_unfreeze, unfreeze_kwargs
from tltf.heads import HeadConfig
from tltf.info import ModelInfo, default_loss_and_metrics, model_info
from tltf.model import build_model
from tltf.optimizers import clone_optimizer, make_optimizer
from tltf.regularizers import attach_head_l2, detach_head_l2, head_l2
from tltf.schedule import FineTuneSchedule, fine_tune
from tltf.settings import FIELDS, FIT_ARGUMENTS, FineTuneSettings, split_kwargs
from tltf.stages import StageTag, stage_progbar
from tltf.tuning.space import (
    STAGE2_HPS,
    STAGE2_OPTIONS,
    SearchSpace,
    top_blocks,
    unfreeze_spec,
)
from tltf.tuning.store import HEADS_DIR, HeadStore

TRIAL_RECORD = "tltf_trial.json"
#: The hypermodel's own options, taken through `**kwargs`, with their defaults.
HYPERMODEL_OPTIONS: dict[str, Any] = {
    "share_stage1": True,
    "head_store": None,
    "name": None,
}
#: The tuner's defaults for settings left at their `FineTuneSettings` defaults.
TUNER_DEFAULTS: dict[str, Any] = {
    "head_epochs": 5,
    "fine_tune_epochs": 5,
    # keras-tuner scores a trial by its best epoch already; the stage-2 guard
    # would also make full-pass and cached stage 2 differ.
    "keep_best": False,
}
#: Settings that each trial takes from its searched values.
SEARCHED_SETTINGS = ("head_lr", "fine_tune_lr", "unfreeze", "bn", "lr_decay")
#: Settings that the hypermodel reads itself (its arguments before `settings`).
TRIAL_SETTINGS = (
    "head_epochs",
    "fine_tune_epochs",
    "optimizer",
    "seed",
    "batch_size",
    "cache_features",
)


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class _HeadL2Seen(keras.callbacks.Callback):
    """The strength of the head's L2 (`tltf.regularizers.head_l2`) as stage 1
    trains: `fine_tune` removes the penalty when it returns."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.full_model = model
        self.strength: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        self.strength = head_l2(self.full_model)


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
        settings: FineTuneSettings or None. What every trial trains, before its
            searched values (`head_lr`, `fine_tune_lr`, `unfreeze`, `bn`,
            `lr_decay`: set them through `search`) replace theirs. Keywords
            below change single fields of it. Fields left at their
            `FineTuneSettings` defaults take the tuner's own: `head_epochs=5`,
            `fine_tune_epochs=5` (not "auto") and `keep_best=False`.
            Defaults to None (all defaults).
        stage2_hps: Names of your own hyperparameters that only change stage 2.
        build_hook: Callable `(hp, model) -> model or None`. Defaults to None.
        fit_hook: Callable `(hp) -> dict` of extra `fine_tune` arguments.
            Defaults to None.
        base_kwargs: dict. Extra `build_model` arguments (`alpha`, `weights_dir`,
            `block_map`, ...). Defaults to None.
        **kwargs: Any other name is a ConfigError naming the closest argument.
            The hypermodel's own options:

            - share_stage1: bool. Keep and reuse stage 1 per head key. Defaults
              to True.
            - head_store: str or None. Folder of the stage-1 store. Defaults to
              `<tuner project>/tltf_heads`.
            - name: str or None. keras-tuner's name of the hypermodel. Defaults
              to None.

            The fields of `tltf.FineTuneSettings` (see `settings`), among them:

            - head_epochs: int. Stage-1 epochs. Defaults to 5. Fixed numbers,
              not `fine_tune`'s "auto": trials are compared epoch for epoch, so
              every trial must run the same epochs (`refit` then trains the
              best trial's values again with `fine_tune`'s defaults).
            - fine_tune_epochs: int. Stage-2 epochs (Hyperband sets them per
              trial). Defaults to 5.
            - optimizer: str or Optimizer. Defaults to "adam".
            - seed: int or None. Seeds the base's initialisation (random-weight
              bases) and every trial. Defaults to None.
            - batch_size: int. Batch size for array inputs. Defaults to 32.
            - cache_features: See `fine_tune` (stage 1). Unless False, stage 2
              also trains on the output of the frozen blocks, computed once per
              trial, when it can (array inputs, no augmentation or other
              fine_tune options, some blocks left frozen). Defaults to "auto".
            - the other `fine_tune` settings for every trial
              (`label_smoothing`, `class_weight`, `augment`, `gradual_every`...),
              and the `model.fit` arguments `fine_tune` passes on
              (`steps_per_epoch`, ...; not `initial_epoch`).

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
        settings: FineTuneSettings | None = None,
        stage2_hps: Sequence[str] = (),
        build_hook: Callable | None = None,
        fit_hook: Callable | None = None,
        base_kwargs: dict | None = None,
        **kwargs,
    ):
        options = {k: kwargs.pop(k, v) for k, v in HYPERMODEL_OPTIONS.items()}
        super().__init__(name=options["name"], tunable=True)
        for key in (*SEARCHED_SETTINGS, "callbacks", "validation_data"):
            if key in kwargs:
                raise ConfigError(
                    f"{key} is set by the hypermodel (search space or its own "
                    f"argument), not through fine_tune arguments. Received: {key}="
                    f"{kwargs[key]!r}"
                )
        check_keywords(
            kwargs,
            (
                *named_arguments(FineTuneHyperModel.__init__),
                *HYPERMODEL_OPTIONS,
                *FIELDS,
                *FIT_ARGUMENTS,
            ),
            "FineTuneHyperModel",
            f"Its other keywords are {', '.join(HYPERMODEL_OPTIONS)}, the fields "
            "of tltf.FineTuneSettings and the model.fit arguments "
            f"{', '.join(FIT_ARGUMENTS)}.",
        )
        # Every trial runs these settings, with its searched values replaced.
        self.settings, fit_args = _trial_settings(settings, kwargs)
        #: The fields only the tuner's defaults set (`TUNER_DEFAULTS`): `refit`
        #: puts them back at fine_tune's defaults.
        self.tuner_set_fields = tuner_set_fields(settings, kwargs)
        if "initial_epoch" in fit_args:
            raise ConfigError(
                "initial_epoch is set by the tuner for each trial. Remove it from "
                "the hypermodel's arguments."
            )
        for key in ("head_epochs", "fine_tune_epochs"):
            value = getattr(self.settings, key)
            if not is_int(value):
                raise ConfigError(
                    f"Expected {key} to be an integer >= 0. Received: {key}={value!r}"
                )
        if self.settings.fine_tune_epochs < 1:
            raise ConfigError(
                "Expected fine_tune_epochs >= 1: trials are compared on their stage-2 "
                f"epochs. Received: fine_tune_epochs={self.settings.fine_tune_epochs}"
            )
        self.search = SearchSpace.from_dict(search)
        self.head = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        self.num_classes, self.task = num_classes, task
        self.head_epochs = self.settings.head_epochs
        self.fine_tune_epochs = self.settings.fine_tune_epochs
        self.optimizer = self.settings.optimizer
        self.share_stage1 = options["share_stage1"]
        self.head_store = options["head_store"]
        self.stage2_hps = tuple(stage2_hps)
        self.build_hook, self.fit_hook = build_hook, fit_hook
        self.seed, self.batch_size = self.settings.seed, self.settings.batch_size
        self.cache_features = self.settings.cache_features
        # The settings that every trial passes to fine_tune again (and that
        # are part of the head key): all but those the hypermodel reads itself.
        self.fine_tune_kwargs = {
            **{
                k: v
                for k, v in (settings.changed() if settings is not None else {}).items()
                if k not in TRIAL_SETTINGS and (k, v) != ("keep_best", False)
            },
            **{k: v for k, v in kwargs.items() if k not in TRIAL_SETTINGS},
        }
        base_kwargs = dict(base_kwargs or {})
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        self._base = load_base(
            base, weights=weights, input_shape=input_shape, **base_kwargs
        )
        self._input_shape = input_shape
        #: The class names of the data the last trial trained on (a DataBundle's
        #: or a Keras directory dataset's), or None.
        self.class_names = None
        self._base_weights = [np.array(w) for w in self._base.model.get_weights()]
        digest = hashlib.sha1()
        for w in self._base_weights:
            digest.update(np.ascontiguousarray(w).tobytes())
        self._base_digest = digest.hexdigest()[:16]
        self._data_keys: dict[int, str] = {}
        #: Trials' frozen-block outputs, for the next trials' stage 2.
        self._frozen = FrozenOutputs()
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

    def refit(
        self, hp: kt.HyperParameters, train, validation_data=None, **kwargs
    ) -> keras.Model:
        """Trains the configuration `hp` once more, as one `fine_tune` run.

        A fresh model (`build`) is fine-tuned on `train` with `hp`'s searched
        values (depth, rates, BatchNorm policy, LR decay; the head's units and
        dropout through `build`), your settings and `fit_hook`'s arguments, and
        `fine_tune`'s own defaults for what only the tuner set: "auto" epochs
        (a converged stage 1, stage 2 sized in steps) and `keep_best=True` (the
        stage-2 guard) in place of the trials' fixed 5 + 5 epochs. `kwargs`
        change any `fine_tune` argument (`callbacks`, `verbose`,
        `backup_dir`, ...).

        Returns:
            The fine-tuned model.
        """
        values = self.trial_values(hp)
        model = self.build(hp)
        defaults = FineTuneSettings()
        settings = self.settings.replace(
            **{k: getattr(defaults, k) for k in self.tuner_set_fields}
        )
        decay = float(values["lr_decay"])
        run = {
            **self.fit_options(hp),
            "head_lr": float(values["head_lr"]),
            "fine_tune_lr": float(values["fine_tune_lr"]),
            "unfreeze": unfreeze_spec(values, self.n_blocks),
            "bn": values["bn"],
            "lr_decay": None if decay == 1.0 else decay,
        }
        if not isinstance(self.optimizer, str):
            run["optimizer"] = clone_optimizer(self.optimizer)
        run.update(kwargs)
        fine_tune(model, train, validation_data, settings, **run)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """Runs the trial: stage 1 (shared per head key), then stage 2.

        Args:
            hp: The trial's HyperParameters.
            model: The model from `build`.
            *args: `train` and optionally `validation_data` (as for `fine_tune`),
                or Keras's `x, y` (see `split_data_args`).
            **kwargs: `validation_data`, `callbacks`, `verbose`, Keras's `x`, `y`
                and `sample_weight`, and Hyperband's `epochs` / `initial_epoch`
                (counted in stage-2 epochs).

        Returns:
            The History of the trial's stage-2 epochs.
        """
        train, validation = split_data_args(
            args, kwargs, task=self.task, seed=self.seed
        )
        # `tuning.results` names the best model's classes with them.
        self.class_names = getattr(train, "class_names", None)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        verbose = kwargs.pop("verbose", "auto")
        stage2_end = kwargs.pop("epochs", self.fine_tune_epochs)
        stage2_start = kwargs.pop("initial_epoch", 0)
        if kwargs:
            raise SearchArgumentError(
                f"Unexpected search arguments {sorted(kwargs)}: FineTuneHyperModel.fit "
                "takes train (or x, y, sample_weight), validation_data, callbacks, "
                "verbose (and Hyperband's epochs/initial_epoch). Pass fine_tune "
                "arguments to the hypermodel."
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
            stage1["head_l2"] = self._stage2_head_l2(stage1, context)
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
                stage1["head_l2"],
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
            info.block_map,
            info.base,
            **unfreeze_kwargs(unfreeze_spec(values, len(info.block_map))),
        )
        logs = history.history
        score, best = _best(logs, context.objective_name, context.direction)
        # The best epoch as users count them: 1-based, stage 1 included.
        best_epoch = None if best is None else H + stage2_start + best + 1
        record.update(
            status="COMPLETED",
            blocks=len(blocks),
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
            timer, penalty = _EpochTimes(), _HeadL2Seen(model)
            started = time.perf_counter()
            history = self._fine_tune(
                model,
                train,
                validation,
                head_epochs=self.head_epochs,
                fine_tune_epochs=0,
                head_lr=float(values["head_lr"]),
                callbacks=[timer, penalty],
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
                "head_l2": penalty.strength,
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
            "head_l2": record.get("head_l2"),
        }

    def _stage2_head_l2(self, stage1, context):
        """The head's L2 strength for stage 2, or None.

        A number for `head_l2` applies as set. Under "auto", stage 2 trains on
        with the strength stage 1 trained with (a ridge-started regression or
        multi-label head has one: `tltf.schedule.prepare_head`), as one
        `fine_tune` call would; a trial that continues another (Hyperband) reads
        it from that trial's record, with or without `share_stage1`.
        """
        if self.settings.head_l2 != "auto":
            return float(self.settings.head_l2) or None
        if stage1["mode"] == "continued":
            previous = context.read(stage1["from"]) or {}
            return (previous.get("stage1") or {}).get("head_l2")
        return stage1.get("head_l2")

    def _stage2(
        self,
        model,
        values,
        options,
        train,
        validation,
        callbacks,
        start,
        end,
        verbose,
        penalty=None,
    ):
        """Stage 2 of a trial; `penalty`: the head's L2 strength, or None."""
        decay = float(values["lr_decay"])
        partial = self._partial_cache(
            model, values, options, train, validation, callbacks
        )
        if partial is not None:
            try:
                if penalty:
                    attach_head_l2(model, penalty)
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
                    frozen=self._frozen,
                    key=FrozenOutputs.key(
                        partial, (train, validation), self.batch_size
                    ),
                )
            finally:
                detach_head_l2(model)
        extra = {"initial_epoch": start} if start else {}
        extra["head_l2"] = penalty or 0
        return self._fine_tune(
            model,
            train,
            validation,
            head_epochs=0,
            fine_tune_epochs=end,
            head_lr=float(values["head_lr"]),
            fine_tune_lr=float(values["fine_tune_lr"]),
            unfreeze=unfreeze_spec(values, len(model_info(model).block_map)),
            bn=values["bn"],
            lr_decay=None if decay == 1.0 else decay,
            callbacks=callbacks,
            verbose=verbose,
            **{**options, **extra},
        )

    def _partial_cache(self, model, values, options, train, validation, callbacks):
        """The split for a stage 2 on cached frozen-block features, or None.

        Blocks below the unfrozen ones are frozen and deterministic in stage 2
        (their BatchNorm runs on frozen statistics under every policy), so their
        output can be computed once per trial. Used for the plain case: arrays,
        a `load_data` bundle or a finite `tf.data.Dataset` of known length, no
        augmentation or other fine_tune options, no gradual unfreezing,
        `cache_features` not False, and output within `cache.MEMORY_LIMIT_BYTES`
        or, for datasets, past it on disk (`cache.frozen_output_on_disk`).
        """
        # Options at their neutral value (None, 0, False) change nothing; the
        # head's L2 is put on the head's kernel, which the cached fit trains.
        if self.cache_features is False or any(
            v for k, v in options.items() if k != "head_l2"
        ):
            return None
        if self.settings.regularize is not None or self.settings.lr_policy != "uniform":
            return None  # fine_tune applies them
        counts = [_images_in(train, True), _images_in(validation, False)]
        if None in counts:
            return None  # a dataset of unknown length, or a bundle without a
            # fixed-order copy
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
            return None
        k = top_blocks(values)
        info = model_info(model)
        if k >= len(info.block_map):
            return None
        try:
            split = FrozenSplit(model, k)
        except (ValueError, KeyError, IndexError, AttributeError):
            return None  # a base whose blocks do not chain through one tensor

        size = split.bytes_per_image() * sum(counts)
        if size > cache.MEMORY_LIMIT_BYTES and (  # read now: users may set it
            # Arrays' output is computed in memory (`FrozenSplit.features`);
            # datasets' goes to a file past the limit, where that pays.
            (is_arrays(train) and is_arrays(validation))
            or not cache.frozen_output_on_disk(size)
        ):
            return None
        return split

    def _fine_tune(self, model, train, validation, **kwargs):
        """`fine_tune` with the hypermodel's settings, `kwargs` replacing some."""
        if not isinstance(self.optimizer, str):
            # A name stays a name (fine_tune makes it at the head's rate); an
            # instance is cloned, so that trials never share its state.
            kwargs["optimizer"] = clone_optimizer(self.optimizer)
        return fine_tune(model, train, validation, self.settings, **kwargs)

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
    frozen=None,
    key=None,
):
    """Stage 2 with the frozen blocks' output computed once (`cache.FrozenSplit`).

    With `frozen` (a `FrozenOutputs`) and its `key`, that output is kept for
    the next trials and read from an earlier trial's where the key and a check
    of the first batch match.

    The schedule installs the stage-2 optimizer and trainability on the full
    model as usual; the fit runs on the trainable part (same layers, same
    variables), and user callbacks see the full model through
    `tltf.cache.Continuation`: the same epochs, logs and History.
    """

    info = model_info(model)
    decay = float(values["lr_decay"])
    given = (train, validation)  # as the trial got them (the store keeps them)
    arrays = is_arrays(train) and is_arrays(validation)
    if arrays:
        x, y = np.asarray(train[0]), np.asarray(train[1])
        xv, yv = np.asarray(validation[0]), np.asarray(validation[1])
        if x.shape[1:] != tuple(model.input_shape[1:]):
            raise DataError(
                f"train has images of shape {x.shape[1:]}, but the model takes "
                f"{tuple(model.input_shape[1:])}. Load them with tltf.data.load_data("
                "..., image_size=...) to resize."
            )
    else:  # datasets: read once, in a fixed order where the data has one
        train = _fixed_order(train, batch_size, "train")
        validation = _fixed_order(validation, batch_size, "validation_data")
        check_image_shape(train, model, "train")
        check_image_shape(validation, model, "validation_data")
    one_hot = check_labels(train, info, "train")
    check_labels(validation, info, "validation_data")
    loss, metrics = default_loss_and_metrics(info, one_hot)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    schedule = FineTuneSchedule(
        unfreeze_at_epoch=0,
        unfreeze=unfreeze_spec(values, len(info.block_map)),
        fine_tune_lr=float(values["fine_tune_lr"]),
        bn=values["bn"],
        lr_decay=None if decay == 1.0 else decay,
        verbose=0 if verbose == 0 else 1,
    )
    schedule.set_model(model)
    schedule.set_params({"epochs": end})
    started = time.perf_counter()

    def compute():
        if arrays:
            return split.features(x, batch_size), split.features(xv, batch_size)
        return [
            FeatureCache(model, data, extractor=split.extract())
            for data in (train, validation)
        ]

    def first_batch():
        return x[:batch_size] if arrays else next(iter(train))[0]

    outputs, reused = (
        frozen.obtain(key, split, first_batch, compute, given)
        if frozen is not None
        else (compute(), False)
    )
    if arrays:
        feats, feats_val = outputs
    else:
        caches = outputs
    seconds = time.perf_counter() - started
    schedule._enter(2, schedule.plan(start)[1], start)  # optimizer, trainability
    if verbose:
        frozen_blocks = len(info.block_map) - top_blocks(values)
        print(
            f"tltf: stage 2 trains on the output of the {frozen_blocks} frozen "
            + (
                "blocks, computed by an earlier trial (checked on the first "
                f"batch, {seconds:.1f}s)."
                if reused
                else f"blocks, computed once ({seconds:.1f}s)"
                + ("; it is read back from disk." if _on_disk(outputs) else ".")
            )
        )
    # The same batches as fine_tune's pipeline (`array_batches`: the order of
    # one seeded shuffle of the slices), with the sample weights where the
    # arrays have them. The features are one array, or a tuple of them for a
    # head that reads the frozen blocks or the pixels too.
    if arrays:
        train_ds = (
            tf.data.Dataset.from_tensor_slices((feats, y, *train[2:]))
            .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
        )
        val_ds = tf.data.Dataset.from_tensor_slices(
            (feats_val, yv, *validation[2:])
        ).batch(batch_size)
    else:  # a dataset's own batches (a bundle's: load_data's batch_size)
        batch = caches[0].batch_sizes[0]
        train_ds = caches[0].dataset(batch, shuffle=True, seed=seed)
        val_ds = caches[1].dataset(caches[1].batch_sizes[0], shuffle=False)
    history = keras.callbacks.History()
    continuation = Continuation([*callbacks, history], model, end)  # as in fit
    continuation.last = True
    fit_part(
        split.trainable,
        train_ds,
        optimizer=model.optimizer,
        loss=loss,
        metrics=metrics,
        callbacks=[StageTag(2, model), continuation, *stage_progbar(callbacks)],
        validation_data=val_ds.prefetch(tf.data.AUTOTUNE),
        epochs=end,
        initial_epoch=start,
        verbose=verbose,
    )
    model.history = history
    return history


class FrozenOutputs:
    """The frozen blocks' output of trials' cached stage 2s, kept across trials.

    Trials that unfreeze the same top blocks of the same base, on the same
    data, compute the same output below them: every trial starts from the
    base's original weights, and the frozen blocks run in inference mode. The
    first such trial computes it; the others read it. An entry is read only
    where its key matches (the depth, the shapes, the same data objects, the
    batch size and a digest of the frozen part's weights; as for the shared
    stage 1, arrays changed in place between trials are not seen) and the
    trial's own frozen part gives the first batch bit for bit (a `build_hook`
    that changes a layer fails that check). Entries hold at most
    `cache.MEMORY_LIMIT_BYTES` in all; the oldest go first.
    """

    def __init__(self):
        self._entries: dict[tuple, tuple[Any, int, tuple]] = {}

    @staticmethod
    def key(split: FrozenSplit, data: tuple, batch_size: int) -> tuple:
        """The key of `split`'s output on `data` (the trial's training and
        validation data: the same objects, which the entry keeps alive)."""
        digest = hashlib.sha1()
        for weight in split.extractor.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)))
        return (split.k, split.shapes, *map(id, data), batch_size, digest.hexdigest())

    def obtain(self, key, split, first_batch, compute, data) -> tuple[Any, bool]:
        """`(outputs, reused)`: an earlier trial's outputs, where its entry
        begins with what `split` gives `first_batch()` (the first batch of
        images), or `compute()`'s, kept with `data` for the next trials."""
        entry = self._entries.get(key)
        if entry is not None and _same_rows(split, first_batch(), entry[0]):
            return entry[0], True
        outputs = compute()
        size = _nbytes(outputs)
        self._entries.pop(key, None)
        while (
            self._entries
            and size + sum(e[1] for e in self._entries.values())
            > cache.MEMORY_LIMIT_BYTES
        ):
            del self._entries[next(iter(self._entries))]
        if size <= cache.MEMORY_LIMIT_BYTES and not _on_disk(outputs):
            self._entries[key] = (outputs, size, data)
        return outputs, False


def _columns(outputs) -> list[np.ndarray]:
    """The training features' columns of a trial's cached outputs."""
    if isinstance(outputs, list):  # FeatureCaches: (train, validation)
        return list(outputs[0].columns)
    train = outputs[0]
    return list(train) if isinstance(train, tuple) else [train]


def _nbytes(outputs) -> int:
    if isinstance(outputs, list):
        return sum(c.nbytes for part in outputs for c in part.columns)
    return sum(
        c.nbytes
        for part in outputs
        for c in (part if isinstance(part, tuple) else (part,))
    )


def _on_disk(outputs) -> bool:
    return isinstance(outputs, list) and any(part.paths for part in outputs)


def _same_rows(split: FrozenSplit, first, outputs) -> bool:
    """Whether `split`'s frozen part gives `first` (the first batch of images)
    the rows that `outputs` begin with, bit for bit."""
    extract = split.extract()
    got = extract(tf.cast(first, extract.input_signature[0].dtype))
    got = got if isinstance(got, (list, tuple)) else [got]
    kept = _columns(outputs)
    return len(got) == len(kept) and all(
        np.array_equal(np.asarray(g), k[: len(first)])
        for g, k in zip(got, kept, strict=True)
    )


def _images_in(data, training: bool) -> int | None:
    """How many images a trial's cached stage 2 would hold for `data`, or None
    where it cannot be cached: arrays, a training bundle with a fixed-order
    copy, a finite `tf.data.Dataset` of known length (at most its batches
    times its batch size)."""
    if is_arrays(data):
        return len(data[0])
    if isinstance(data, DataBundle):
        usable = training and data.unshuffled is not None
        return data.num_train if usable else None
    if isinstance(data, tf.data.Dataset) and int(data.cardinality()) >= 0:
        return images_at_most(data)
    return None


def _fixed_order(data, batch_size: int, what: str) -> tf.data.Dataset:
    """A bundle's fixed-order copy, or a dataset as batches (read once: the
    cache keeps each image's label with its features)."""
    if isinstance(data, DataBundle):
        return data.unshuffled
    return as_dataset(data, batch_size, False, None, what)


def _trial_settings(settings, kwargs) -> tuple[FineTuneSettings, dict]:
    """The settings every trial starts from, and the `model.fit` arguments.

    The tuner's defaults (`TUNER_DEFAULTS`) replace the fields that `settings`
    leaves at their `FineTuneSettings` defaults; the keywords (`kwargs`) then
    change single fields (`tuner_set_fields` names those that the tuner's
    defaults alone set).
    """
    given, _ = split_kwargs(settings, {}, caller="FineTuneHyperModel")
    changed = given.changed() if settings is not None else {}
    for key in SEARCHED_SETTINGS:
        if key in changed:
            raise ConfigError(
                f"{key} is set by the hypermodel's search space, not by its "
                f"settings. Received: settings with {key}={changed[key]!r}. Fix "
                f"it with search={{{key!r}: {changed[key]!r}}} instead."
            )
    defaults = {k: v for k, v in TUNER_DEFAULTS.items() if k not in changed}
    patience = kwargs.get("fine_tune_patience", changed.get("fine_tune_patience"))
    if patience is not None and "keep_best" in defaults and "keep_best" not in kwargs:
        raise ConfigError(
            f"fine_tune_patience={patience!r} counts the stage-2 epochs that "
            "keep_best did not keep, and the tuner's trials run without keep_best "
            "(keras-tuner scores a trial by its best epoch). Pass keep_best=True "
            "too, or a keras.callbacks.EarlyStopping to search(callbacks=...)."
        )
    return split_kwargs(given.replace(**defaults), kwargs, caller="FineTuneHyperModel")


def tuner_set_fields(settings, kwargs) -> tuple[str, ...]:
    """The `TUNER_DEFAULTS` fields that neither `settings` nor `kwargs` set."""
    given, _ = split_kwargs(settings, {}, caller="FineTuneHyperModel")
    changed = given.changed() if settings is not None else {}
    return tuple(k for k in TUNER_DEFAULTS if k not in changed and k not in kwargs)


def _stage1_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in STAGE2_OPTIONS}


class SearchArgumentError(ConfigError, kt.errors.FatalValueError):
    """Data or arguments that `tuner.search` cannot run any trial on.

    A keras-tuner `FatalError` too: the search stops at once with this message,
    instead of recording every trial as failed with the same traceback.
    """


def split_data_args(
    args,
    kwargs,
    caller: str = "tuner.search",
    *,
    task: str = "multiclass",
    seed: int | None = None,
):
    """(train, validation) from the arguments of `tuner.search`.

    tltf's form, as `fine_tune` takes its data: `search(train, validation)` or
    `search(train, validation_data=...)`, each `(images, labels[, weights])`, a
    `tf.data.Dataset` or a `DataBundle` (one with a validation split needs no
    second). Keras's form too, as keras-tuner's guides write it: `search(x, y,
    validation_data=(x_val, y_val))`, with `x=`, `y=` and `sample_weight=` as
    keywords or not. `validation_split=0.2` with arrays, as in TensorFlow's
    keras-tuner tutorial, takes the validation data from the training arrays
    by `tltf.data.inputs.split_validation` (seeded by `seed`, or 0; stratified
    by class for a `task` with classes): every trial gets the same split.
    `caller` names the call in messages: "tltf.tune" takes tltf's form only.

    Raises:
        SearchArgumentError: data that no trial could train on.
    """
    args = list(args)
    fraction = kwargs.pop("validation_split", None)
    keras_form = {k: kwargs.pop(k) for k in ("x", "y", "sample_weight") if k in kwargs}
    if "x" in keras_form:
        args.insert(0, keras_form["x"])
    if "y" in keras_form:
        args.insert(1, keras_form["y"])
    if not args:
        raise SearchArgumentError(
            "Expected training data: tuner.search(train, validation_data=...), "
            "with train as (images, labels), or tuner.search(x, y, "
            "validation_data=...)."
        )
    if is_array(args[0]) and caller == "tltf.tune":
        raise SearchArgumentError(
            f"Received images (an array of shape {tuple(args[0].shape)}) as the "
            "training data. Pass the images and their labels as one argument: "
            "tltf.tune(base, (x, y), (x_val, y_val))."
        )
    if is_array(args[0]):  # Keras's form: search(x, y, ...)
        if len(args) < 2 or not is_array(args[1]):
            raise SearchArgumentError(
                f"Received images (an array of shape {tuple(args[0].shape)}) "
                "without their labels. Pass the training data as one argument, "
                "(x, y), as fine_tune takes it, or as tuner.search(x, y, "
                "validation_data=(x_val, y_val))."
            )
        weights = keras_form.get("sample_weight")
        train = (args[0], args[1], *([] if weights is None else [weights]))
        args = [train, *args[2:]]
    elif "sample_weight" in keras_form:
        raise SearchArgumentError(
            "sample_weight= goes with arrays: tuner.search(x, y, sample_weight="
            "w, ...); otherwise the weights go with the data, as (x, y, w) or a "
            "tf.data.Dataset of (image, label, weight)."
        )
    train = args[0]
    validation = kwargs.pop("validation_data", args[1] if len(args) > 1 else None)
    if len(args) > 2:
        raise SearchArgumentError(
            "Expected tuner.search(train, validation_data=...); received "
            f"{len(args)} positional arguments."
        )

    if fraction is not None:
        if validation is not None:
            raise SearchArgumentError(
                f"{caller}() got both validation_data and validation_split; pass "
                f"one. Received: validation_split={fraction!r}."
            )
        try:
            train, validation = split_validation(
                train, fraction, task=task, seed=seed, caller=caller
            )
        except TltfError as error:
            raise SearchArgumentError(str(error)) from None
    if validation is None and isinstance(train, DataBundle):
        validation = train.validation
    if validation is None:
        raise SearchArgumentError(
            "Tuning needs validation data: trials are compared on it. Pass "
            "validation_data, or validation_split=0.2 with arrays, or split "
            "the training data first, e.g. data = "
            "tltf.load_data((images, labels), validation_split=0.2, seed=0), "
            "and pass data: a DataBundle brings "
            "its validation split."
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

    def read(self, trial_id) -> dict | None:
        """The record of another trial of the project (one this trial continues),
        or None where there is none."""
        if self.project_dir is None or trial_id is None:
            return None
        # keras-tuner's own layout (`BaseTuner.get_trial_dir`).
        path = Path(self.project_dir) / f"trial_{trial_id}" / TRIAL_RECORD
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


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
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        digest.update(f"{x.shape}{x.dtype}{y.shape}{y.dtype}".encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        step = max(1, len(x) // 64)
        digest.update(np.ascontiguousarray(x[::step]).tobytes())
        if len(data) == 3:  # sample weights
            digest.update(np.ascontiguousarray(np.asarray(data[2])).tobytes())
    else:
        raise DataError(
            "Expected data as (images, labels[, sample_weights]) arrays, a "
            f"tf.data.Dataset or a DataBundle. Received: {type(data).__name__}"
        )
    return digest.hexdigest()[:16]
