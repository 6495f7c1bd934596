"""The two-stage schedule, as a Keras callback and as `fine_tune`.

Stage 1 trains the head on the frozen base. Stage 2 unfreezes the top blocks and
continues at a low learning rate with a fresh optimizer. Both stages run inside ONE
`model.fit`, so every user callback (EarlyStopping, ModelCheckpoint, CSVLogger,
TensorBoard, BackupAndRestore, ...) sees one training run with continuous epoch
numbers, and the History has a `stage` entry per epoch.

Why about 1,500 lines: `FineTuneSchedule` and `fine_tune` with the steps that
only `fine_tune` takes (input preparation, the head's ridge start and block
weights, the automatic unfreeze, the cached stage 1, the guard's held-out slice
and its hand-back). Settings live in
`tltf.settings`, training on cached features in `tltf.cache`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from numbers import Real
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tltf import cache as tltf_cache
from tltf import data as tltf_data
from tltf import guard as tltf_guard
from tltf import settings as tltf_settings
from tltf._checks import callback_list, check_positive_int
from tltf.averaging import batchnorm_layers, recalibrate_bn
from tltf.cache import (
    MIN_FALL_NATS,
    Continuation,
    FeatureCache,
    FrozenSplit,
    StageOneEnd,
    build_metrics,
    build_optimizer,
    fit_part,
    is_cross_entropy,
)
from tltf.compute import with_training_errors
from tltf.data.images import check_pixel_values
from tltf.data.inputs import (
    array_batches,
    as_dataset,
    check_data,
    check_image_shape,
    check_label_values,
    check_labels,
    images_at_most,
    pipeline_errors,
    read_dataset,
    split_validation,
    train_batches,
)
from tltf.data.labels import check_sample_weights, fold_class_weights
from tltf.distribute import is_distributed, model_strategy, optimizer_in_scope
from tltf.errors import ConfigError, DataError, LeaveOneOutError, suggest
from tltf.freezing import (
    apply_trainable,
    check_bn_policy,
    has_normalization,
    resolve_unfreeze,
    unfreeze_kwargs,
)
from tltf.guard import (
    CLASSIFIERS,
    HOLDOUT_MIN_ROWS,
    KeepBest,
    Kept,
    class_ids,
    holdout_rows,
)
from tltf.heads import PIXEL_GROUP_RATIO, pixel_columns, set_pixel_scale
from tltf.info import (
    ModelInfo,
    default_loss_and_metrics,
    model_base,
    model_info,
    record_class_names,
)
from tltf.layers import Standardization
from tltf.lr_finder import find_stage_lr
from tltf.optimizers import (
    clone_optimizer,
    make_optimizer,
    set_lr_multipliers,
    set_rgn_rates,
)
from tltf.probe import (
    PROBE_IMAGES,
    group_accuracy,
    group_weights,
    loo_accuracy,
    probe_blocks,
    probe_sample,
    ridge_fit,
    ridge_regression,
    scorable,
    sigmoid,
)
from tltf.regularizers import (
    attach_head_l2,
    attach_l2sp,
    check_regularize,
    detach_head_l2,
    detach_l2sp,
    starting_points,
)
from tltf.resume import Resume
from tltf.settings import (
    FineTuneSettings,
    check_epochs,
    check_lr,
    check_lr_decay,
    check_lr_policy,
    check_unfreeze,
    is_large_set,
    resolve_loss,
    split_kwargs,
)
from tltf.stages import (
    StageProgbarLogger,
    StageTag,
    check_loss,
    raise_on_divergence,
    stage_progbar,
)
from tltf.wise import StageOneWeights, apply_wise

# `default_loss_and_metrics`, `set_lr_multipliers`, `StageProgbarLogger`,
# `raise_on_divergence` and `stage_progbar` moved to `info`, `optimizers` and
# `stages`; they are re-exported here, where they were first documented.
__all__ = [
    "FINE_TUNE_STEPS",
    "FineTuneSchedule",
    "StageProgbarLogger",
    "auto_fine_tune_epochs",
    "auto_head_epochs",
    "check_lr",
    "default_loss_and_metrics",
    "fine_tune",
    "head_plan",
    "prepare_head",
    "raise_on_divergence",
    "refit_head",
    "set_lr_multipliers",
    "stage_progbar",
]


def _format_lr(lr) -> str:
    return f"{lr:.0e}" if isinstance(lr, float) else type(lr).__name__


class FineTuneSchedule(keras.callbacks.Callback):
    """The two-stage fine-tuning schedule as a Keras callback.

    Use it inside a single plain `model.fit` on a model from `build_model`:
    epochs before `unfreeze_at_epoch` train the head on the frozen base (with the
    optimizer the model was compiled with); from `unfreeze_at_epoch` on, the chosen
    top blocks train too, with a fresh optimizer at `fine_tune_lr`. The schedule is
    a pure function of the epoch number, so a run resumed by `BackupAndRestore`
    lands in the right stage, with the right blocks, and never re-freezes blocks.
    (Keras restores the optimizer before this callback installs the stage-2 one,
    so a run resumed in stage 2 restarts its optimizer; `fine_tune(backup_dir=)`
    restores it too.) Each epoch's logs get a `stage` entry (1 or 2) that History and CSVLogger
    record. The other callbacks of a plain `fit` carry what they counted in stage
    1 into stage 2 (a ReduceLROnPlateau's best value and wait, say);
    `tltf.fine_tune` starts a ReduceLROnPlateau afresh at stage 2.

    Args:
        unfreeze_at_epoch: int. The first epoch (0-based) of stage 2.
        unfreeze: What to unfreeze in stage 2: an int (top k blocks), "all",
            `{"layers": n}` (rounded up to whole blocks) or `{"names": regex}`.
            Defaults to "all".
        fine_tune_lr: float, LearningRateSchedule, "find" or None. Stage-2
            learning rate; None keeps the compiled optimizer's. "find" runs
            `tltf.find_lr(stage="fine_tune")` when stage 2 begins (on the model
            as stage 1 left it, with the blocks and BN policy of stage 2, on
            `lr_finder_data`) and uses its suggestion; one line reports it.
            Defaults to 1e-4.
        bn: str. BatchNorm policy in stage 2: "frozen", "affine" or "train".
            Defaults to "frozen".
        lr_decay: float or None. Discriminative learning rates: each block's rate
            is `lr_decay` times the rate of the block above it (the top block and
            the head get `fine_tune_lr`). Defaults to None (one rate).
        gradual_every: int or None. Gradual unfreezing: start stage 2 with
            `gradual_start` blocks and add one more every `gradual_every` epochs.
            Defaults to None (all at once).
        gradual_start: int. Blocks trained at the start of gradual unfreezing.
            Defaults to 1.
        optimizer: keras.optimizers.Optimizer or None. Template of the stage-2
            optimizer (it is cloned). Defaults to None: the compiled optimizer's
            class and config.
        verbose: int. 1 prints one summary line per stage change. Defaults to 1.
        lr_finder_data: The training data for `fine_tune_lr="find"` (any form
            `find_lr` takes). `fine_tune` sets it. Defaults to None.
        lr_policy: str. "uniform", or "auto_rgn": each unfrozen block's rate
            (and the head's) is scaled every step by its relative gradient norm
            over the largest one (`tltf.optimizers.set_rgn_rates`). Defaults to
            "uniform".
        regularize: None, "l2sp" or `{"l2sp": alpha}`. L2-SP: stage 2's loss
            gets `alpha * sum((w - w0) ** 2)` over the unfrozen base weights,
            `w0` being their values when `fit` starts (before any
            BackupAndRestore restores; `fine_tune` passes the values it started
            from). Attached only while training (`tltf.regularizers`). Defaults
            to None.

    Example:

    >>> model = tltf.build_model("mobilenet_v2", num_classes=5)
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(train, epochs=15, callbacks=[
    ...     tltf.FineTuneSchedule(unfreeze_at_epoch=5, unfreeze=4, fine_tune_lr=1e-5),
    ...     keras.callbacks.EarlyStopping(patience=3, start_from_epoch=5)])
    """

    def __init__(
        self,
        unfreeze_at_epoch: int,
        unfreeze: int | str | dict = "all",
        *,
        fine_tune_lr=1e-4,
        bn: str = "frozen",
        lr_decay: float | None = None,
        gradual_every: int | None = None,
        gradual_start: int = 1,
        optimizer: keras.optimizers.Optimizer | None = None,
        verbose: int = 1,
        lr_finder_data=None,
        lr_policy: str = "uniform",
        regularize=None,
    ):
        super().__init__()
        self.unfreeze_at_epoch = check_epochs(unfreeze_at_epoch, "unfreeze_at_epoch")
        self.unfreeze = check_unfreeze(unfreeze, allow_auto=False)
        self._unfreeze_kwargs = unfreeze_kwargs(self.unfreeze)
        self.fine_tune_lr = check_lr(
            fine_tune_lr, "fine_tune_lr", allow_none=True, allow_find=True
        )
        self.lr_finder_data = lr_finder_data
        self.found_lr: float | None = None  # what fine_tune_lr="find" found
        # What head_lr="find" found (fine_tune; a resumed run's, from its backup).
        self.found_head_lr: float | None = None
        self._restored_lr: float | None = None  # found_lr of a resumed run
        self.bn = check_bn_policy(bn)
        self.lr_decay = check_lr_decay(lr_decay)
        self.gradual_every = (
            None
            if gradual_every is None
            else check_positive_int(gradual_every, "gradual_every")
        )
        self.gradual_start = check_epochs(gradual_start, "gradual_start")
        self.optimizer = optimizer
        self.verbose = verbose
        self.lr_policy = check_lr_policy(lr_policy, self.lr_decay)
        self.regularize = check_regularize(regularize)
        #: L2-SP's starting weights by variable path (set by `fine_tune`, or
        #: taken when `fit` starts); the last step's Auto-RGN multipliers.
        self.anchors: dict | None = None
        self.rgn_multipliers = None
        # Resumable state, kept apart from the configuration above.
        self.stage: int | None = None
        self.unfrozen: list[str] = []
        # Stage-2 epochs, when known: `end_epoch` is then where the run ends.
        self.fine_tune_epochs: int | None = None
        self._info: ModelInfo | None = None
        self._target: list[str] = []
        self._epoch = 0

    # -- state ---------------------------------------------------------------
    @property
    def end_epoch(self) -> int | None:
        """The epoch after the last one (None when `fine_tune_epochs` is unknown)."""
        if self.fine_tune_epochs is None:
            return None
        return self.unfreeze_at_epoch + self.fine_tune_epochs

    def set_unfreeze(self, unfreeze) -> None:
        """Changes what stage 2 unfreezes (before `fit`), e.g. to a probed depth."""
        self.unfreeze = check_unfreeze(unfreeze, allow_auto=False)
        self._unfreeze_kwargs = unfreeze_kwargs(self.unfreeze)
        if self._info is not None:
            self._target, _ = resolve_unfreeze(
                self._info.block_map, self._info.base, **self._unfreeze_kwargs
            )

    def restore_found_lr(self, rate: float) -> None:
        """Makes a resumed stage 2 reuse the rate `fine_tune_lr="find"` found."""
        self._restored_lr = rate

    def get_state(self) -> dict[str, Any]:
        """The schedule's resumable state: stage and unfrozen blocks."""
        return {"stage": self.stage, "unfrozen": list(self.unfrozen)}

    def plan(self, epoch: int) -> tuple[int, list[str]]:
        """The stage and the unfrozen blocks (bottom to top) for a 0-based epoch."""
        if epoch < self.unfreeze_at_epoch or not self._target:
            return (1 if epoch < self.unfreeze_at_epoch else 2), []
        n = len(self._target)
        if self.gradual_every:
            steps = (epoch - self.unfreeze_at_epoch) // self.gradual_every
            n = min(n, max(1, self.gradual_start) + steps)
        return 2, self._target[len(self._target) - n :]

    # -- Keras hooks ---------------------------------------------------------
    def set_model(self, model):
        super().set_model(model)
        self._info = model_info(model)
        if self.regularize is not None and self.anchors is None:
            self.anchors = starting_points(self._info.base.weights)
        self._target, _ = resolve_unfreeze(
            self._info.block_map, self._info.base, **self._unfreeze_kwargs
        )

    def on_train_begin(self, logs=None):
        self.stage, self.unfrozen = None, []
        if self.fine_tune_lr == "find" and self.lr_finder_data is None:
            raise ConfigError(
                "fine_tune_lr='find' needs the training data to sweep the rate on: "
                "pass FineTuneSchedule(..., lr_finder_data=train_ds), or use "
                "tltf.fine_tune, which passes it."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        stage, blocks = self.plan(epoch)
        if stage != self.stage or blocks != self.unfrozen:
            self._enter(stage, blocks, epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage

    def on_train_end(self, logs=None):
        # L2-SP is a training-time penalty: the model leaves fit without it.
        if self._info is not None:
            detach_l2sp(self._info.base.weights)

    def on_train_batch_end(self, batch, logs=None):
        check_loss(self.model, self.stage, self._epoch, batch, logs)

    # -- transitions ---------------------------------------------------------
    def _enter(self, stage: int, blocks: list[str], epoch: int, extra="") -> None:
        model, info = self.model, self._info
        if stage == 1:
            apply_trainable(info, [], "frozen")
            build_optimizer(model)
        else:
            if self.stage != 2:
                self._install_stage2_optimizer()
            apply_trainable(info, blocks, self.bn)
        model.make_train_function(force=True)
        self.stage, self.unfrozen = stage, list(blocks)
        if self.verbose:
            self._print_summary(epoch, extra)

    def _install_stage2_optimizer(self) -> None:
        """Builds a fresh stage-2 optimizer on every variable stage 2 will train."""
        model, info = self.model, self._info
        template = self.optimizer or model.optimizer
        rate = self.fine_tune_lr
        if rate == "find" and self._restored_lr is not None:
            rate = self.found_lr = self._restored_lr
            self._restored_lr = None
        elif rate == "find":
            rate = self.found_lr = find_stage_lr(
                model,
                self.lr_finder_data,
                "fine_tune",
                template,
                getattr(model, "loss", None) or "auto",
                unfreeze=self._target,
                bn=self.bn,
                verbose=self.verbose,
            )
        apply_trainable(info, self._target, self.bn)
        variables = list(model.trainable_variables)
        strategy = (
            getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        )
        with strategy.scope():
            optimizer = clone_optimizer(template, rate)
            optimizer.build(variables)
        if self.lr_decay is not None and self.lr_decay != 1:
            set_lr_multipliers(optimizer, self._multipliers())
        if self.lr_policy == "auto_rgn":
            self.rgn_multipliers = set_rgn_rates(optimizer, self._rgn_groups())
        if self.regularize is not None:
            attach_l2sp(info.base.weights, self.anchors, self.regularize[1])
        model.optimizer = optimizer

    def _rgn_groups(self) -> list[list]:
        """Auto-RGN's groups: each stage-2 block's variables, then the rest."""
        info = self._info
        groups = []
        for name in self._target:
            layers = info.block_map[info.block_map.position(name)].layers
            groups.append(
                [
                    v
                    for layer_name in layers
                    for v in info.base.get_layer(layer_name).trainable_weights
                ]
            )
        grouped = {id(v) for group in groups for v in group}
        groups.append([v for v in self.model.trainable_weights if id(v) not in grouped])
        return [group for group in groups if group]

    def _multipliers(self) -> list:
        info = self._info
        multipliers = []
        for depth, name in enumerate(reversed(self._target)):
            for layer_name in info.block_map[info.block_map.position(name)].layers:
                for variable in info.base.get_layer(layer_name).trainable_weights:
                    multipliers.append((variable, self.lr_decay**depth))
        return multipliers

    def _print_summary(self, epoch: int, extra: str = "") -> None:
        info, model = self._info, self.model
        total = sum(math.prod(w.shape) for w in model.weights)
        trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
        n = len(info.block_map)
        last = (self.params or {}).get("epochs", "?")
        if self.stage == 1:
            end = self.unfreeze_at_epoch if self.unfreeze_at_epoch else last
            what = f"head only; base {info.metadata['base']} frozen ({n} blocks)"
            lr = getattr(model.optimizer, "learning_rate", None)
            lr_text = _format_lr(float(lr.numpy())) if hasattr(lr, "numpy") else "?"
            bn = "frozen"
        else:
            end = last
            if self.unfrozen:
                span = self.unfrozen[0] + (
                    f"..{self.unfrozen[-1]}" if len(self.unfrozen) > 1 else ""
                )
                what = f"blocks {span} ({len(self.unfrozen)} of {n}) + head"
            else:
                what = f"head only (unfreeze={self.unfreeze!r} selects no block)"
            rate = self.found_lr if self.fine_tune_lr == "find" else self.fine_tune_lr
            lr_text = _format_lr(rate) if rate else "compiled"
            if self.lr_decay not in (None, 1):
                lr_text += f", x{self.lr_decay:g} per block down"
            if self.lr_policy == "auto_rgn":
                lr_text += " scaled per block by Auto-RGN"
            if self.regularize is not None:
                lr_text += f"; L2-SP {self.regularize[1]:g}"
            bn = self.bn
        print(
            f"tltf: stage {self.stage} from epoch {epoch + 1} (to {end}): training "
            f"{what}; {trainable:,} of {total:,} params trainable; lr {lr_text}; BN {bn}"
            f"{extra}."
        )


@with_training_errors
def fine_tune(
    model: keras.Model,
    train=None,
    validation_data=None,
    settings: FineTuneSettings | None = None,
    *,
    callbacks: list | None = None,
    verbose="auto",
    backup_dir: str | os.PathLike | None = None,
    strategy=None,
    **kwargs,
) -> keras.callbacks.History:
    """Fine-tunes a model from `build_model` with the two-stage schedule.

    Stage 1 trains the head on the frozen base; stage 2 unfreezes `unfreeze`
    blocks from the top and trains them with the head, with a fresh optimizer at
    `fine_tune_lr`. Both stages run in one `model.fit` (see `FineTuneSchedule`),
    so callbacks see epochs 1..N.

    What the run trains is a `tltf.FineTuneSettings`: pass one as `settings`,
    or its fields as keyword arguments, or both (the keywords then change those
    fields). The defaults, chosen for small data (see `FineTuneSettings` and
    benchmarks/RESULTS.md): stage 1 trains the head to convergence on cached
    base features from a ridge start; `unfreeze="auto"` unfreezes what a linear
    probe of every block recommends, at 1e-4 (every block, at 3e-4, from 1,000
    training images and, for a classifier, 15 a class, on a base with
    normalization layers, unless the probe's best block already scores 0.95);
    `keep_best=True` makes sure stage 2 never ends worse than stage 1. Every
    argument is validated before anything trains.

    Settings (keyword arguments; see `FineTuneSettings` for each):
    `head_epochs="auto"`, `fine_tune_epochs="auto"`, `head_lr=1e-3`,
    `fine_tune_lr="auto"`, `unfreeze="auto"`, `head_steps=2000`,
    `head_init="ridge"`, `head_l2="auto"`, `keep_best=True`,
    `fine_tune_patience=None`, `bn="frozen"`, `optimizer="adam"`,
    `loss="auto"`, `metrics="auto"`, `lr_decay=None`, `gradual_every=None`,
    `lr_policy="uniform"`, `regularize=None`, `wise=None`, `class_weight=None`,
    `augment=None`, `label_smoothing=0.0`, `batch_size=32`, `seed=None`,
    `cache_features="auto"`, `jit_compile="auto"`.

    Args:
        model: keras.Model. A model built by `build_model`.
        train: A tf.data.Dataset of (image, label) batches (or of (image,
            label, sample_weight)), `(images, labels)` arrays (batched by
            `batch_size` and shuffled) or `(images, labels, sample_weights)`
            arrays (each image's weight, as Keras's `fit` takes
            `sample_weight`: in both stages' loss, the closed-form fits and the
            guard's slice; one finite number >= 0 per image), or a
            `tltf.data.DataBundle` from `tltf.data.load_data` (tfds, image
            folders, .npz; resized for the model). Without validation data,
            a dataset (or TFDS bundle) of up to 1 GiB that gives the same
            images every pass is read into memory once, so that the guard
            can hold a slice out of it (`keep_best`); one line says so.
        validation_data: Same forms as `train`, or None; defaults to the
            bundle's validation split when `train` is a DataBundle.
        settings: FineTuneSettings or None. Defaults to `FineTuneSettings()`.
        callbacks: A Keras callback, a list of them, or None. They see both
            stages. With `head_epochs="auto"` and a stage 2, an EarlyStopping left at
            `start_from_epoch=0` starts at stage 2's first epoch. A
            ReduceLROnPlateau starts afresh at stage 2, as its optimizer does.
        verbose: Keras's `fit` verbosity. Defaults to "auto".
        backup_dir: str, PathLike or None. Makes the run resumable: a checkpoint
            (weights, optimizer state, stage, history) is written atomically there
            after every epoch, and calling `fine_tune` again with the same model
            and settings continues from the last finished epoch, in the right
            stage, with the stage's optimizer state (see `tltf.resume`). A
            finished run is not trained again: its final weights and history are
            restored. The folder is kept after success. Defaults to None.
        strategy: None, or the `tf.distribute` strategy (or its name, see
            `tltf.distribute.resolve_strategy`) the model was built under with
            `build_model(..., strategy=...)`. None trains under the model's own
            strategy; a different one raises a ConfigError. Compiling and both
            stages run under its scope; the stage-1 feature cache is off under a
            distributed strategy. Defaults to None.
        **kwargs: Fields of `FineTuneSettings` (above), and the `model.fit`
            arguments `steps_per_epoch`, `validation_steps`, `validation_freq`,
            `initial_epoch` and `validation_split`. Any other name is a
            ConfigError that suggests the closest one. `validation_split=0.2`
            takes a fifth of `(images, labels[, sample_weights])` arrays as the
            validation data, as Keras's `fit` does, but by `load_data`'s split:
            seeded (`seed`, or 0) and stratified by class, not the last rows
            (see `tltf.data.inputs.split_validation`). Those images do not train,
            and `keep_best` scores stage 2 on them.

    Returns:
        The `keras.callbacks.History` of both stages; `history.history["stage"]`
        gives each epoch's stage, and `history.kept` (a `tltf.guard.Kept`) says
        what the returned model holds: the epoch whose weights `keep_best`
        kept, its stage, the blocks stage 2 had trained by then, and why.

    Example:

    >>> model = tltf.build_model("efficientnet_b0", num_classes=5)
    >>> history = tltf.fine_tune(model, train_ds, val_ds)
    tltf: unfreeze='auto' -> 2 of 7 blocks: ...
    >>> history.history["stage"]
    [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    >>> history.kept.epoch, history.kept.blocks
    (15, ('block6', 'top'))
    """
    validation_split = kwargs.pop("validation_split", None)
    settings, fit_kwargs = split_kwargs(settings, kwargs)
    if train is None:
        raise ConfigError(
            "fine_tune() needs training data: fine_tune(model, (images, labels)), a "
            "tf.data.Dataset of (image, label) pairs or a tltf.load_data bundle."
        )
    callbacks = callback_list(callbacks)  # one Keras callback, as fit takes it
    info = model_info(model)
    if validation_split is not None:
        train, validation_data = _split_off_validation(
            train, validation_data, validation_split, info, settings.seed, verbose != 0
        )
    strategy = model_strategy(model, strategy)
    loss_to_check = _check_loss(settings.loss, settings.label_smoothing, info)
    _check_metrics(settings.metrics)
    head_epochs, fine_tune_epochs = settings.head_epochs, settings.fine_tune_epochs
    head_lr, fine_tune_lr = settings.head_lr, settings.fine_tune_lr
    unfreeze, keep_best = settings.unfreeze, settings.keep_best
    optimizer, loss, metrics = settings.optimizer, settings.loss, settings.metrics
    class_weight, batch_size, seed = (
        settings.class_weight,
        settings.batch_size,
        settings.seed,
    )
    jit_compile = settings.jit_compile
    auto_unfreeze = isinstance(unfreeze, str) and unfreeze == "auto"
    auto_lr = isinstance(fine_tune_lr, str) and fine_tune_lr == "auto"
    schedule = FineTuneSchedule(
        unfreeze_at_epoch=0 if head_epochs == "auto" else head_epochs,
        unfreeze="all" if auto_unfreeze else unfreeze,
        # "auto" is set once the training set's size is known (below).
        fine_tune_lr=tltf_settings.SMALL_SET_LR if auto_lr else fine_tune_lr,
        bn=settings.bn,
        lr_decay=settings.lr_decay,
        gradual_every=settings.gradual_every,
        verbose=0 if verbose == 0 else 1,
        lr_policy=settings.lr_policy,
        regularize=settings.regularize,
    )
    if settings.regularize is not None:
        # The weights this call starts from, before a backup is restored.
        schedule.anchors = starting_points(info.base.weights)
    # Resolve the unfreeze request now, so a bad one fails before any training.
    resolve_unfreeze(info.block_map, info.base, **schedule._unfreeze_kwargs)
    holdout = _holdout(
        settings, model, info, train, validation_data, batch_size, verbose != 0
    )
    if holdout:
        batch_size = holdout.batch_size  # a dataset read keeps its batches
    prepared = _prepare_data(
        model,
        info,
        holdout.train if holdout else train,
        validation_data,
        batch_size,
        seed,
        settings.augment,
        # Smoothing, and a Keras loss for one-hot rows, take class indices as
        # one-hot rows.
        bool(settings.label_smoothing) or _wants_one_hot(loss_to_check),
        rows=holdout.rows if holdout else None,
        checked=bool(holdout and holdout.read),
    )
    train_ds, feature_source, val_ds = prepared.train, prepared.features, prepared.val
    # Announced once the data passed its checks: a bad image shape fails first.
    if holdout and verbose != 0:
        trained, held = len(holdout.trained), len(holdout.held)
        print(
            f"tltf: keep_best: {holdout.read}{held:,} of {trained + held:,} "
            f"training images (a "
            f"{'stratified' if info.task in CLASSIFIERS else 'random'} slice) are "
            "held out of both stages, to score stage 2 "
            "without validation data"
            + (
                "; at the end they are handed back."
                if _refittable(model, settings)
                else " (the head is not a linear ridge-started one, so they are "
                "not handed back)."
            )
        )
    _check_label_kind(loss_to_check, info, prepared.one_hot)
    record_class_names(model, getattr(train, "class_names", None))
    if settings.wise == "auto" and val_ds is None and holdout is None:
        raise ConfigError(
            "wise='auto' picks the mix on validation data or on the guard's "
            "held-out slice, and this run has neither: pass validation_data, keep "
            "keep_best=True with (images, labels) arrays, a load_data bundle or a "
            "tf.data input that fits in memory, or set wise to a number such as "
            "0.5."
        )
    loud = verbose != 0
    passes = int(train_ds.cardinality())
    passes = passes if passes > 0 else None
    if train_ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        passes = _steps_of_endless(fit_kwargs.get("steps_per_epoch"))
        # One epoch's batches stand for the data wherever it is read in full
        # (head statistics, probe, class weights, keep_best).
        feature_source = feature_source.take(passes)
    if settings.bn == "adapt":
        _adapt_batchnorm(model, feature_source, strategy, loud)
    if fine_tune_epochs == "auto":
        fine_tune_epochs = auto_fine_tune_epochs(passes)
    rows = _row_labels(prepared, holdout.train if holdout else train)
    images, exact = None, True
    if (auto_lr or auto_unfreeze) and fine_tune_epochs:
        if rows[1] is None:  # a tf.data input whose rows are not known
            images, exact = _rows_of(feature_source)
        else:
            images = rows[1]
        images += len(holdout.held) if holdout else 0
    classes = max(2, info.metadata["num_outputs"]) if info.task in CLASSIFIERS else None
    large, size_rule = _size_rule(images, exact, classes, info.base)
    if auto_unfreeze:
        depth, large = (
            _auto_unfreeze(
                model,
                info,
                feature_source,
                batch_size,
                loud,
                holdout is not None,
                rows,
                seed,
                large,
                size_rule,
            )
            if fine_tune_epochs
            else (0, large)
        )
        schedule.set_unfreeze(depth)
        fine_tune_epochs = fine_tune_epochs if depth else 0
    if auto_lr:
        # After the probe, which may keep its own depth on a large set.
        schedule.fine_tune_lr = (
            tltf_settings.LARGE_SET_LR if large else tltf_settings.SMALL_SET_LR
        )
        if loud and large:
            print(
                f"tltf: fine_tune_lr='auto' -> {schedule.fine_tune_lr:g}: {size_rule}."
            )
    schedule.fine_tune_epochs = fine_tune_epochs
    if isinstance(class_weight, str):
        class_weight = _balanced_weights(class_weight, info, prepared)
    elif class_weight is not None:
        _check_class_weight(class_weight, info)
    elif loud and info.task in CLASSIFIERS:
        # A tf.data input read into memory for the slice has its labels known.
        known = holdout.train if holdout and holdout.read else train
        _note_imbalance(known, classes)
    if class_weight and len(prepared.train.element_spec) == 3:
        # Keras takes class_weight or sample weights, not both: each image's
        # weight becomes their product, as in the closed-form fits.
        prepared, feature_source = _fold_class_weights(
            prepared,
            feature_source,
            holdout,
            class_weight,
            max(2, info.metadata["num_outputs"]),
        )
        class_weight = None
    auto_loss, auto_metrics = default_loss_and_metrics(
        info, prepared.one_hot, settings.label_smoothing
    )
    schedule.lr_finder_data = prepared.sample
    head_rate = head_lr
    if head_lr == "find":
        # A placeholder until the rate is found, after a resume check (below), so
        # that a backup's fingerprint never depends on the rate found.
        head_rate = 1e-3
        if not isinstance(optimizer, str):
            optimizer = clone_optimizer(optimizer, head_rate)
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, head_rate)
    own_loss = not (isinstance(loss, str) and loss == "auto")
    loss = loss if own_loss else auto_loss
    if isinstance(metrics, str) and metrics == "auto":
        metrics = auto_metrics
    elif isinstance(metrics, (str, keras.metrics.Metric)):
        metrics = [metrics]  # one metric: Keras's compile takes a list
    with strategy.scope():
        optimizer = optimizer_in_scope(optimizer, strategy)
        model.compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile
        )
    _check_monitors(callbacks, metrics, val_ds is not None)
    stage_two_start = _StageTwoStart.for_run(
        callbacks, schedule, head_epochs, fine_tune_epochs, loud
    )
    if stage_two_start is not None:
        callbacks.insert(0, stage_two_start)
    if loud and any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
        print(
            "tltf: note: keras.callbacks.BackupAndRestore restores the weights and "
            "the epoch, not stage 2's optimizer (Keras warns 'Skipping variable "
            "loading for optimizer' when a run resumes in stage 2); "
            "fine_tune(..., backup_dir=...) resumes either stage exactly."
        )
    try:
        resume = None
        if backup_dir is not None:
            resume = Resume.open(
                backup_dir,
                model,
                schedule,
                (0 if head_epochs == "auto" else head_epochs) + fine_tune_epochs,
                settings.fingerprint(
                    fine_tune_epochs=fine_tune_epochs,
                    fine_tune_lr=schedule.fine_tune_lr,
                    optimizer=model.optimizer,
                    loss=loss if isinstance(loss, str) else type(loss).__name__,
                ),
                callbacks,
                fit_kwargs,
                verbose,
            )
        if settings.head_l2 != "auto" and settings.head_l2 > 0:
            attach_head_l2(model, settings.head_l2)
            if loud:
                print(
                    f"tltf: head_l2={settings.head_l2:g}: an L2 penalty on the "
                    "head's kernel while it trains."
                )
        fit_args = dict(class_weight=class_weight, verbose=verbose, **fit_kwargs)
        use_cache, reason = _use_feature_cache(
            settings.cache_features,
            head_epochs,
            train_ds,
            callbacks,
            fit_kwargs,
            prepared.augmented,
            distributed=is_distributed(strategy),
        )
        if reason and verbose:
            print(f"tltf: stage 1 runs full forward passes: {reason}.")
        guard = None
        if keep_best and fine_tune_epochs:
            guard = KeepBest(
                schedule,
                validation=val_ds,
                train_features=None
                if val_ds is not None or holdout
                else feature_source,
                task=info.task,
                backup_dir=backup_dir,
                holdout=(holdout.batches, holdout.labels, info.logits, holdout.weights)
                if holdout
                else None,
                verbose=loud,
                patience=settings.fine_tune_patience,
                validation_freq=fit_kwargs.get("validation_freq", 1),
            )
            if resume is not None and resume.epoch:
                guard.resume_from(resume.history)
        hand_back = holdout is not None and guard is not None
        hand_back = hand_back and _refittable(model, settings)
        retrain = (
            _HeadRetrain.for_run(
                settings,
                own_loss,
                loss,
                optimizer,
                info,
                prepared.one_hot,
                is_distributed(strategy),
            )
            if hand_back
            else None
        )
        stage_one = None
        if settings.wise is not None and fine_tune_epochs:
            stage_one = StageOneWeights(schedule, backup_dir)
            if resume is not None and resume.epoch:
                stage_one.load()
        if resume is not None and resume.finished:
            history = resume.finished_history(model, schedule.bn)
            if guard is not None:
                guard.restore_saved(model)
            alpha = _end_with_wise(
                model, stage_one, settings, guard, val_ds, feature_source, False
            )
            refit = (
                _hand_back(model, holdout, class_weight, False, retrain, schedule)
                if hand_back
                else None
            )
            history.kept = _kept(history, model, schedule, guard, alpha, refit)
            return history
        if resume is not None:
            resume.announce()
        if head_lr == "find" and head_epochs and (resume is None or not resume.epoch):
            schedule.found_head_lr = float(
                find_stage_lr(
                    model,
                    prepared.sample,
                    "head",
                    model.optimizer,
                    loss,
                    verbose=0 if verbose == 0 else 1,
                )
            )
            model.optimizer.learning_rate.assign(schedule.found_head_lr)
        run = _Run(
            model=model,
            schedule=schedule,
            settings=settings,
            prepared=prepared,
            features=feature_source,
            val=val_ds,
            head_epochs=head_epochs,
            fine_tune_epochs=fine_tune_epochs,
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            callbacks=[*callbacks, *(c for c in (guard, stage_one) if c is not None)],
            fit_args=fit_args,
            resume=resume,
            hand_back=hand_back,
        )
        try:
            if use_cache:
                history = _fit_with_feature_cache(run)
            else:
                history = _fit_full_passes(run, passes)
            alpha = _end_with_wise(
                model, stage_one, settings, guard, val_ds, feature_source, loud
            )
            refit = (
                _hand_back(
                    model,
                    holdout,
                    class_weight,
                    loud,
                    retrain,
                    schedule,
                    run.frozen_output,
                )
                if hand_back
                else None
            )
        finally:
            run.close()
        history.kept = _kept(history, model, schedule, guard, alpha, refit)
        return history
    finally:
        # The head's L2 (`prepare_head`) is a training-time penalty: the model
        # leaves fine_tune without it, also when a run fails or is interrupted.
        detach_head_l2(model)
        if stage_two_start is not None:
            stage_two_start.restore()


class _StageTwoStart(keras.callbacks.Callback):
    """Starts the user's plateau-watching callbacks afresh at stage 2.

    Stage 2 trains other weights with a fresh optimizer at the fine-tune rate,
    so what these callbacks counted in stage 1 does not carry over:

    - Each ReduceLROnPlateau forgets stage 1's best value, wait and cooldown at
      stage 2's first epoch (as at the start of a `fit`). Otherwise a stage 1
      whose best value stage 2 does not reach at once (a head fit closely to a
      few images, say) would cut the fresh fine-tune rate after `patience`
      epochs, whatever stage 2 did in them.
    - With `head_epochs="auto"`, stage 1 ends when the head's training loss has
      converged, and a head fit that closely often raises the validation loss on
      the way: an EarlyStopping counting from epoch 1 would spend its patience
      in stage 1 and end the run before stage 2 has trained. Each EarlyStopping
      whose `start_from_epoch` is 0 (Keras's default) starts at stage 2's first
      epoch instead, and is set back to 0 when `fine_tune` ends. The guard
      (`keep_best`) still keeps stage 1's weights when they were better.
    """

    def __init__(self, stopping: list, plateaus: list, schedule: FineTuneSchedule):
        super().__init__()
        self.stopping, self.plateaus, self.schedule = stopping, plateaus, schedule
        self.started = False
        for callback in stopping:
            callback.start_from_epoch = 2**31  # set at stage 2's first epoch

    @classmethod
    def for_run(cls, callbacks, schedule, head_epochs, fine_tune_epochs, loud):
        """The callback for a run's EarlyStopping and ReduceLROnPlateau
        callbacks, or None (a run without stage 2 leaves them alone, and so does
        a run with a number of head epochs its EarlyStopping)."""
        if not fine_tune_epochs:
            return None
        stopping = [
            c
            for c in callbacks
            if isinstance(c, keras.callbacks.EarlyStopping) and c.start_from_epoch == 0
        ]
        if head_epochs != "auto":
            stopping = []
        plateaus = [
            c for c in callbacks if isinstance(c, keras.callbacks.ReduceLROnPlateau)
        ]
        if not stopping and not plateaus:
            return None
        if loud and stopping:
            print(
                "tltf: EarlyStopping watches stage 2 only (head_epochs='auto': stage "
                "1 ends when the head's loss has converged). Set its start_from_epoch, "
                "or give head_epochs a number, to choose yourself."
            )
        return cls(stopping, plateaus, schedule)

    def on_epoch_begin(self, epoch, logs=None):
        if self.schedule.stage != 2 or self.started:
            return
        self.started = True
        for callback in self.stopping:
            callback.start_from_epoch = min(callback.start_from_epoch, epoch)
        for callback in self.plateaus:
            callback.on_train_begin()  # forgets best, wait and cooldown

    def restore(self) -> None:
        for callback in self.stopping:
            callback.start_from_epoch = 0


def _end_with_wise(model, stage_one, settings, guard, val_ds, images, loud):
    """`wise=`: mixes the final weights with stage 1's (see `tltf.wise`).

    Returns:
        The fine-tuned weights' share, or None when nothing was mixed.
    """
    if stage_one is None or stage_one.weights is None:
        return None
    score = None
    if val_ds is not None:

        def score():
            result = model.evaluate(val_ds, verbose=0, return_dict=True)
            model.reset_metrics()
            return (-result["loss"],)

    elif guard is not None and guard.holdout is not None:
        guard.set_model(model)
        score = guard.holdout_score
    recalibrate = None
    if settings.bn == "train":

        def recalibrate():
            recalibrate_bn(model, images)

    alpha, _ = apply_wise(
        model, stage_one.weights, settings.wise, score, recalibrate, loud
    )
    return alpha


def _adapt_batchnorm(model, images: tf.data.Dataset, strategy, loud: bool) -> None:
    """`bn="adapt"`: the BN statistics re-estimated on the training images (AdaBN).

    Deterministic (the images in a fixed order), so a resumed run's probe sees
    the same statistics as the original run's; the checkpoint then restores them.
    """
    if is_distributed(strategy):
        raise ConfigError(
            "bn='adapt' is not supported under a distributed strategy yet. Call "
            "tltf.recalibrate_bn(model, images) before fine_tune, then use "
            "bn='frozen'."
        )
    layers = batchnorm_layers(model)
    recalibrate_bn(model, images)
    if loud:
        print(
            f"tltf: bn='adapt': the moving statistics of {len(layers)} BatchNorm "
            "layers re-estimated on the training images (AdaBN), then frozen."
        )


@dataclasses.dataclass
class _Slice:
    """The guard's held-out slice of the training data (see `_holdout`)."""

    trained: np.ndarray  # the rows both stages train on
    held: np.ndarray  # the rows held out
    train: Any  # what the stages train on: the arrays (with `rows`) or a bundle
    rows: np.ndarray | None  # for arrays: `trained`
    batches: tf.data.Dataset  # the held-out rows, unshuffled
    labels: np.ndarray  # their class indices (classifiers) or targets
    everything: tf.data.Dataset  # every training row, unshuffled (the hand-back)
    read: str  # how a tf.data input became the arrays held out of, if it did
    batch_size: int  # the batches to train in (a dataset read: its own)
    weights: np.ndarray | None = None  # the held-out rows' sample weights
    #: `class_weight` is multiplied into `everything`'s sample weights.
    folded: bool = False
    #: A bundle's labels in `everything`'s order (arrays have theirs in `train`).
    everything_labels: np.ndarray | None = None


def _holdout(
    settings: FineTuneSettings,
    model,
    info: ModelInfo,
    train,
    validation,
    batch_size,
    loud: bool,
) -> _Slice | None:
    """The guard's held-out slice, or None.

    `keep_best=True` holds a slice out wherever it can (see `tltf.guard`):
    `(images, labels)` arrays, bundles from `load_data` whose labels are known
    without a pass (image folders, `.npz`, arrays), and a `tf.data.Dataset` or
    a TFDS bundle that `read_dataset` can read into memory (up to
    `HOLDOUT_READ_BYTES`, the same images every pass; the slice then comes from
    those arrays);
    `keep_best="holdout"` raises a ConfigError where it cannot.
    """
    if settings.keep_best not in (True, "holdout") or settings.fine_tune_epochs == 0:
        return None
    strict = settings.keep_best == "holdout"
    bundle = isinstance(train, tltf_data.DataBundle)
    if validation is not None or (bundle and train.validation is not None):
        return None  # the validation data scores the guard
    if not strict and not _refittable(model, settings):
        # The slice could not be handed back: it would cost the head its images.
        return None
    if not strict and info.task == "multilabel":
        # Measured: on few images a multi-label head lost more to the slice and
        # its closed-form hand-back than the guard saved (benchmarks/RESULTS.md,
        # "Regression and multi-label").
        return None
    why = labels = None
    read = ""
    if isinstance(train, tf.data.Dataset) or (bundle and train.labels is None):
        data, read, why = _read_into_memory(train, info, loud and not strict)
        if data is not None:
            train, bundle = data.arrays, False
            # Its batches as the user made them (a bundle's: load_data's).
            batch_size = data.batch_size or batch_size
    elif bundle:
        labels = train.labels
    if not bundle and not isinstance(train, tf.data.Dataset):
        check_labels(train, info, "train")
        labels = np.asarray(train[1])
        if not len(labels):
            return None  # `_prepare_data` says what is wrong with the data
    rows = None if labels is None else holdout_rows(labels, settings.seed, info.task)
    if rows is None:
        why = why or (
            "it needs 2 or more training images in every class"
            if info.task in CLASSIFIERS
            else f"it needs {HOLDOUT_MIN_ROWS} or more training images"
        )
        if strict:
            raise ConfigError(f"keep_best='holdout' cannot be used: {why}.")
        return None
    trained, held = rows
    # What the guard scores the slice against: class indices, or the targets.
    held_labels = labels[held]
    if info.task in CLASSIFIERS:
        held_labels = class_ids(held_labels)
    if bundle:
        kept, out = train.subset(trained), train.subset(held)
        return _Slice(
            trained,
            held,
            kept,
            None,
            out.unshuffled,
            held_labels,
            kept.unshuffled.concatenate(out.unshuffled),
            "",
            batch_size,
            everything_labels=np.concatenate([labels[trained], labels[held]]),
        )
    weights = None
    if len(train) == 3:
        weights = check_sample_weights(train[2], len(labels), "train")[held]
        # A slice of images that all weigh 0 is scored with each image alike.
        weights = weights if weights.any() else None
    return _Slice(
        trained,
        held,
        train,
        trained,
        array_batches(train, "train", batch_size, False, None, held),
        held_labels,
        array_batches(train, "train", batch_size, False, None),
        read,
        batch_size,
        weights,
    )


def _read_into_memory(train, info: ModelInfo, loud: bool):
    """A tf.data input (or a TFDS bundle's fixed-order pipeline) read into
    memory for the guard to hold a slice out of: `(ReadData, note, None)`, or
    `(None, "", why)` where `read_dataset` cannot read it (one line says so
    when `loud`).
    """
    kind = "tf.data input" if isinstance(train, tf.data.Dataset) else "TFDS bundle"
    if kind == "TFDS bundle":
        train = train.unshuffled if train.unshuffled is not None else train.train
    limit, start = tltf_guard.HOLDOUT_READ_BYTES, time.perf_counter()

    def check(images, labels):
        scope = f" (of the {len(images):,} read from the dataset, in its order)"
        check_pixel_values(images, "train", scope)
        check_label_values(labels, info, "train")

    read, cannot = (
        read_dataset(train, "train", limit, check)
        if limit
        else (None, "tltf.guard.HOLDOUT_READ_BYTES is 0")
    )
    if read is None:
        why = (
            f"the guard reads a {kind} into memory to hold images out of it, and "
            f"this one cannot be read: {cannot}. Pass validation_data"
        )
        if loud:
            print(
                f"tltf: keep_best: no training images are held out: {why} to "
                "score stage 2 on images it does not train on (now: the "
                "leave-one-out accuracy of the training images' features)."
            )
        return None, "", why
    size = sum(a.nbytes for a in read.arrays) / 2**20
    batches = f", in its batches of {read.batch_size}" if read.batch_size else ""
    # As arrays, it is reshuffled every epoch and its last batch may be short.
    note = (
        f"the {kind} was read into memory ({size:,.1f} MiB, "
        f"{time.perf_counter() - start:.1f}s) and is trained on as arrays are "
        f"(reshuffled every epoch{batches}); "
    )
    return read, note, None


def _refittable(model: keras.Model, settings: FineTuneSettings) -> bool:
    """Whether `_hand_back` can refit the head: a linear, ridge-started one."""
    return (
        settings.head_init == "ridge"
        and settings.head_epochs != 0
        and _linear_head(model)
        and _standardization(model) is not None
    )


@dataclasses.dataclass(frozen=True)
class _HeadRetrain:
    """How `_hand_back` trains the refit head on: as stage 1 trained it.

    Only where the run chose the head's training itself (`for_run`): its own
    `loss`, a `label_smoothing` or an explicit `head_l2`. The closed-form fit
    alone would put least squares and a fitted temperature in their place.
    """

    why: str  # the run's choices, for the lines it prints: "label_smoothing=0.1"
    loss: Any
    optimizer: Any  # stage 1's: a fresh copy of it trains the head on (`found_rate`)
    head_steps: int
    seed: int | None
    classes: int | None  # integer labels become one-hot rows of this many
    distributed: bool  # then the head keeps the closed-form fit (no cache)

    @classmethod
    def for_run(
        cls, settings, own_loss, loss, optimizer, info, one_hot, distributed
    ) -> _HeadRetrain | None:
        """None where the closed-form fit is what stage 1 started from anyway:
        the default loss, no smoothing, `head_l2="auto"`; or `head_steps=0`."""
        chosen = [f"loss={_loss_name(loss)}"] if own_loss else []
        if settings.label_smoothing:
            chosen.append(f"label_smoothing={settings.label_smoothing:g}")
        if settings.head_l2 != "auto":
            chosen.append(f"head_l2={settings.head_l2:g}")
        if not chosen or settings.head_steps == 0:
            return None
        return cls(
            ", ".join(chosen),
            loss,
            optimizer,
            settings.head_steps,
            settings.seed,
            info.metadata["num_outputs"]
            if one_hot and info.task == "multiclass"
            else None,
            distributed,
        )


def _hand_back(
    model,
    holdout: _Slice,
    class_weight,
    verbose,
    retrain: _HeadRetrain | None,
    schedule: FineTuneSchedule,
    frozen_output: tuple | None = None,
) -> str | None:
    """Hands the held-out slice back: the head is refit on every training image.

    The guard kept the best weights by their score on the slice. The linear
    head is then refit in closed form (`refit_head`) on every training image,
    slice included, with the base the guard kept. Measured against the
    previous guard (benchmarks/RESULTS.md, "The held-out guard"): at least as
    good on real tasks, 2 points worse near the base's source domain, where a
    head trained by gradient beats the ridge head. Choosing between the two
    heads on the slice does not work: the kept weights are the best of several
    epochs on it, so their score there is biased upwards. The refit weighs
    each image by `class_weight` (a dict or None), as training did. With
    `retrain`, the head then trains on from the refit with the run's own loss,
    smoothing or head L2, as stage 1 did (`_retrain_head`). Where the frozen
    blocks' output was cached (`frozen_output`, see `_frozen_output_features`),
    the head's features come from it through the top blocks alone; otherwise
    from a pass of the model over every training image.

    Returns:
        What was done, for `history.kept`'s note, or None when the head was not
        refit.
    """
    train_on = retrain is not None and not retrain.distributed
    split = FrozenSplit(model) if train_on else None
    cache = _frozen_output_features(holdout, frozen_output) or FeatureCache(
        model, holdout.everything, extractor=split.extract() if split else None
    )
    try:
        ridge = refit_head(
            model,
            cache.features,
            class_weight,
            cache.others[0],
            cache.others[1] if len(cache.others) > 1 else None,
        )
        steps = None
        if ridge is not None and train_on:
            steps = _retrain_head(
                model, split, cache, retrain, class_weight, schedule.found_head_lr
            )
    finally:
        cache.close()
    then = ""  # what the head's training added, in the note and the line
    if steps is not None:
        then = (
            f"; then trained on with {retrain.why} for {steps:,} steps, as stage 1 was"
        )
    elif retrain is not None:
        then = (
            f"; it is not trained on with {retrain.why}: under a distribution "
            "strategy the head keeps the closed-form fit"
        )
    done = None
    if ridge is not None:
        done = "refit in closed form on every training image, the held-out slice "
        done += f"included{then}"
    if not verbose:
        return done
    trained, held = len(holdout.trained), len(holdout.held)
    if ridge is None:
        print(
            f"tltf: keep_best: the {held:,} held-out images were not handed back: "
            "the closed-form fit does not apply to these features (at most 20,000 "
            "images and 8,192 features)."
        )
        return None
    print(
        f"tltf: keep_best: handed the {held:,} held-out images back: the head was "
        f"refit in closed form on all {trained + held:,} training images: "
        f"{ridge.removeprefix('head starts from ')}{then}."
    )
    return done


def _frozen_output_features(holdout: _Slice, frozen_output) -> FeatureCache | None:
    """Every training image's head features, from the frozen blocks' cached
    output, in the order of `holdout.everything`; or None.

    The pass before stage 1 (`_frozen_pass`) computed the output of the
    blocks stage 2 keeps frozen, for the rows the run trained on and for the
    held-out slice; `frozen_output` holds them after stage 2 on them
    (`_fit_stage_two_cached`), or after stage 1 where the run ended there.
    Those blocks have not changed since (the guard, WiSE-FT and the hand-back
    change only what stage 2 trained), so the head's features of every image
    need the top blocks alone, not a pass of the whole model. The labels and
    sample weights are those of the arrays (a dataset read into memory
    included), or a bundle's labels. None for sample weights that
    `class_weight` was folded into (they are `everything`'s batches' own), or
    without that output.
    """
    if frozen_output is None or holdout.folded:
        return None
    split, trained, held = frozen_output
    if trained.count != len(holdout.trained) or held.count != len(holdout.held):
        return None
    if holdout.rows is None and holdout.everything_labels is None:
        return None
    # The training rows, then the held-out ones: one pass of the top blocks
    # (over the output on disk too, a batch at a time).
    columns = [
        tltf_cache.Joined(*pair)
        for pair in zip(trained.columns, held.columns, strict=True)
    ]
    features = split.head_features(columns, holdout.batch_size).astype(
        "float32", copy=False
    )
    if holdout.rows is None:  # a bundle: `everything` is in that order too
        # In the bundle's own batches, as `everything` gives them.
        return FeatureCache.from_arrays(
            features, [holdout.everything_labels], trained.batch_sizes[0]
        )
    rows = np.empty_like(features)  # into `everything`'s order: the arrays'
    rows[np.concatenate([holdout.trained, holdout.held])] = features
    features = rows
    data = holdout.train
    others = [np.asarray(data[1])]
    if len(data) == 3:
        others.append(check_sample_weights(data[2], len(features), "train"))
    return FeatureCache.from_arrays(features, others, holdout.batch_size)


def _retrain_head(
    model, split, cache, retrain: _HeadRetrain, class_weight, found_rate=None
) -> int:
    """Trains the head on the cached features of every image, as stage 1 did:
    from where it is, with a fresh copy of stage 1's optimizer (at the rate
    `head_lr="find"` found, where it found one: a run resumed in stage 2 did not
    sweep again), up to `head_steps` steps, until the loss converges
    (`StageOneEnd`).

    Returns:
        The optimizer steps it took.
    """
    labels = cache.others[0]
    if retrain.classes and labels.shape[1:] != (retrain.classes,):
        # Class indices become one-hot rows, as `_prepare_data` made them.
        cache.others[0] = np.eye(retrain.classes, dtype="float32")[class_ids(labels)]
    batch = cache.batch_sizes[0]
    per_epoch, most = head_plan(cache.count, batch, retrain.head_steps)
    end = StageOneEnd(
        most,
        tolerance=0.01,
        min_fall=MIN_FALL_NATS if is_cross_entropy(retrain.loss) else 0.0,
    )
    fit_part(
        split.trainable,
        cache.stream(batch, (most + 1) * per_epoch, retrain.seed),
        optimizer=clone_optimizer(retrain.optimizer, found_rate),
        loss=retrain.loss,
        metrics=None,
        jit_compile=model.jit_compile,
        steps_per_execution=_per_call(per_epoch, True),
        callbacks=[end],
        epochs=most,
        steps_per_epoch=per_epoch,
        class_weight=class_weight,
        verbose=0,
    )
    return len(end.losses) * per_epoch


def _kept(history, model, schedule, guard, alpha, refit: str | None) -> Kept:
    """What the model `fine_tune` returns holds (`history.kept`).

    Args:
        history: keras.callbacks.History. The run's History, both stages.
        model: keras.Model. The model.
        schedule: FineTuneSchedule. The run's schedule (stage 2's blocks).
        guard: KeepBest or None. The run's guard.
        alpha: float or None. WiSE-FT's share of the fine-tuned weights.
        refit: str or None. What keep_best's hand-back did to the head, or None.
    """
    stages = [int(s) for s in history.history.get("stage", [])]
    epoch = guard.kept_epoch if guard is not None else None
    note = guard.describe() if epoch is not None else None
    if epoch is None:
        epoch = len(stages)
        if not epoch:
            note = "no epoch ran: the head that stage 1 started from."
        elif 2 not in stages:
            note = "the last epoch's weights; stage 2 did not run."
        elif guard is None:
            note = "the last epoch's weights (keep_best=False)."
        else:
            note = "the last epoch's weights: keep_best had no score to choose by."
    if schedule.model is None:  # a finished run, resumed: nothing was fit
        schedule.set_model(model)
    stage = 1 if not epoch else schedule.plan(epoch - 1)[0]
    if 0 < epoch <= len(stages):
        stage = stages[epoch - 1]  # what ran, where the History has it
    trained = stage == 2 and alpha != 0  # a WiSE-FT share of 0 is stage 1's
    blocks = tuple(schedule.plan(epoch - 1)[1]) if trained else ()
    if alpha is not None and stage == 2:  # stage 1's weights mix to themselves
        note += (
            f" Then mixed with stage 1's weights (WiSE-FT): {1 - alpha:g} x stage "
            f"1's + {alpha:g} x these."
        )
    if refit:
        note += f" Then the head was {refit}."
    return Kept(epoch=epoch, stage=stage, blocks=blocks, note=note)


@dataclasses.dataclass
class _Run:
    """One `fine_tune` call once its settings, data and model are resolved."""

    model: keras.Model
    schedule: FineTuneSchedule
    settings: FineTuneSettings
    prepared: _Prepared
    features: tf.data.Dataset  # the training data in a fixed order, one pass
    val: tf.data.Dataset | None
    head_epochs: int | str
    fine_tune_epochs: int
    optimizer: keras.optimizers.Optimizer
    loss: Any
    metrics: Any
    callbacks: list  # the user's, then tltf's own (the guard)
    fit_args: dict
    resume: Resume | None
    #: Keep the frozen blocks' cached output for the guard's hand-back.
    hand_back: bool = False
    #: What the frozen blocks' pass (`_FrozenPass`) kept for the hand-back:
    #: the split, and its caches of the training rows and of the held-out
    #: slice. Kept after stage 2 on them, or after stage 1 where the run ended
    #: there.
    frozen_output: tuple | None = None

    def close(self) -> None:
        """Frees what the frozen blocks' pass kept for the hand-back."""
        for cache in self.frozen_output[1:] if self.frozen_output else ():
            cache.close()
        self.frozen_output = None


def _fit_full_passes(run: _Run, passes: int | None) -> keras.callbacks.History:
    """Both stages as one `fit` of the full model (no feature cache)."""
    model, schedule, resume = run.model, run.schedule, run.resume
    auto = run.head_epochs == "auto"
    head_epochs = run.head_epochs
    if auto:
        head_epochs = auto_head_epochs(passes, run.settings.head_steps)
    if resume is not None and resume.epoch and resume.unfreeze_at_epoch is not None:
        head_epochs = resume.unfreeze_at_epoch  # the plan of the run it continues
    elif head_epochs:
        ridge = prepare_head(
            model,
            run.features,
            ridge=run.settings.head_init == "ridge",
            head_l2=run.settings.head_l2,
            class_weight=run.fit_args.get("class_weight"),
        )
        if auto and ridge is not None and run.settings.head_steps == 0:
            head_epochs = 0
            if run.fit_args.get("verbose"):
                print(_closed_form_line(ridge, "in one pass over the training images"))
    schedule.unfreeze_at_epoch = head_epochs
    fit_args, own = dict(run.fit_args), []
    if resume is not None:
        resume.skip_passes(run.prepared.train, resume.train_passes)
        fit_args["initial_epoch"], own = resume.epoch, [resume.callback(model)]
    build_metrics(model, run.prepared.train)
    history = model.fit(
        run.prepared.train,
        validation_data=run.val,
        epochs=head_epochs + run.fine_tune_epochs,
        shuffle=False,
        callbacks=[
            schedule,
            *run.callbacks,
            *own,
            *stage_progbar(run.callbacks, schedule),
        ],
        **fit_args,
    )
    return resume.merge(history) if resume is not None else history


def _closed_form_line(ridge: str, features: str) -> str:
    """The stage-1 line of a head solved in closed form (no epochs)."""
    return (
        f"tltf: stage 1 (no epochs): head only, solved in closed form on the base's "
        f"features ({features}): {ridge}. head_steps=0: no gradient steps, stage "
        "2 starts from it."
    )


#: Optimizer steps that `fine_tune_epochs="auto"` aims for (10 epochs at most).
FINE_TUNE_STEPS = 1000


def auto_fine_tune_epochs(batches_per_epoch: int | None) -> int:
    """Stage-2 epochs for `fine_tune_epochs="auto"`.

    Enough epochs for about `FINE_TUNE_STEPS` optimizer steps, between 2 and 10:
    10 for a few hundred images (as the keras.io recipe), 2 for 60,000.
    """
    if not batches_per_epoch:
        return 10
    return int(min(10, max(2, math.ceil(FINE_TUNE_STEPS / batches_per_epoch))))


def auto_head_epochs(batches_per_epoch: int | None, head_steps: int) -> int:
    """Stage-1 epochs for `head_epochs="auto"` when stage 1 cannot be cached.

    Full forward passes cost as much as stage-2 epochs, so this is the same
    range as `auto_fine_tune_epochs`: up to `head_steps` steps, 2 to 10 epochs.
    """
    if not batches_per_epoch:
        return 10
    return int(min(10, max(2, math.ceil(head_steps / batches_per_epoch))))


def head_plan(count: int, batch: int, head_steps: int) -> tuple[int, int]:
    """`(steps per epoch, epochs at most)` of a cached `head_epochs="auto"`.

    An epoch is one pass over the cached features, or `head_steps / 20` steps when
    that is more (so that 100 images do not make 500 one-line epochs); stage 1
    ends after `head_steps` steps, or earlier once its loss has converged.
    """
    per_pass = max(1, math.ceil(count / batch))
    steps = max(per_pass, math.ceil(head_steps / 20))
    return steps, max(1, math.ceil(head_steps / steps))


def prepare_head(
    model: keras.Model,
    features,
    labels=None,
    ridge: bool = True,
    head_l2="auto",
    class_weight: dict | None = None,
    sample_weight=None,
) -> str | None:
    """Readies the head for stage 1: feature statistics, then a closed-form start.

    1. Sets the head's `Standardization` statistics from the training features
       (unless they are set already, e.g. by an earlier `fine_tune`).
    2. With `ridge`, starts a linear classification head from the closed-form
       ridge classifier on the standardised features (`tltf.probe.ridge_fit`, L2
       chosen by leave-one-out), its scores scaled by the temperature that
       minimises the leave-one-out cross-entropy (against Platt's targets where
       those scores separate the classes: `_temperature`). Stage 1 then trains
       on from a solution that is already regularised and near the optimum (on
       few images, 3 to 4 points better than from a random head after 2,000
       steps). A regression head starts from ridge regression (L2 chosen by
       leave-one-out squared error); a multi-label head from a ridge fit on the
       0/1 targets, each label's leave-one-out scores mapped to logits by a
       fitted scale and offset. Heads with hidden layers, and more than 20,000
       images or 8,192 features, start as Keras initialised them.
    3. With `head_l2="auto"`, a ridge-started regression or multi-label head
       gets an L2 penalty on its kernel (`tltf.regularizers.attach_head_l2`;
       see `_ridge_regression_start` for its strength), which `fine_tune`
       removes when it returns.

    Args:
        model: keras.Model. A model from `build_model`.
        features: An array of cached features, or the unshuffled training
            batches (one inference pass computes the features and labels).
        labels: array or None. Labels of `features` (class indices or one-hot
            rows). Defaults to None.
        ridge: bool. Start the head from the ridge fit. Defaults to True.
        head_l2: "auto" or a number. Only "auto" attaches a penalty here
            (`fine_tune` attaches a number itself). Defaults to "auto".
        class_weight: dict or None. `{class index: weight}`, as Keras's `fit`
            takes it: a classification head's ridge start weighs each image by
            its class's weight, as stage 1's loss does. Defaults to None.
        sample_weight: array or None. Each image's weight, for array
            `features`; batches of `(image, label, sample_weight)` carry their
            own. A classification head's ridge start weighs the images by them,
            as stage 1's loss does. Defaults to None.

    Returns:
        A few words on the ridge start for the stage-1 line, or None.
    """

    layer = _standardization(model)
    if layer is None or layer.is_set:
        return None
    features, labels, weights = _head_features(model, features, labels)
    _set_statistics(model, layer, features)
    if not ridge or labels is None:
        return None
    weights = weights if sample_weight is None else sample_weight
    start = _ridge_start(
        model, features, np.asarray(labels), layer, class_weight, weights
    )
    if start is None:
        return None
    words, alpha = start
    if head_l2 == "auto" and alpha is not None and attach_head_l2(model, alpha):
        words += f", trained on with an L2 penalty of {alpha:.3g} on its kernel"
    return words


@pipeline_errors()
def refit_head(
    model: keras.Model,
    features,
    class_weight: dict | None = None,
    labels=None,
    sample_weight=None,
) -> str | None:
    """Refits a ridge-started head in closed form on the model's features now.

    Like `prepare_head`, but on a model that has been trained: the feature
    statistics, block weights, ridge classifier and temperature are all
    computed again. A head the ridge fit does not apply to is left unchanged.

    Args:
        model: keras.Model. A model from `build_model`.
        features: The unshuffled `(image, label)` batches to fit on, or an
            array of the head's input features (with `labels`).
        class_weight: dict or None. `{class index: weight}`: each image counts
            by its class's weight (`prepare_head`). Defaults to None.
        labels: array or None. The labels of array `features`. Defaults to None.
        sample_weight: array or None. Each image's weight, for array
            `features` (`prepare_head`). Defaults to None.

    Returns:
        A few words on the fit, or None when the head was left unchanged.
    """
    layer = _standardization(model)
    if layer is None or not layer.is_set:
        return None
    values, labels, weights = _head_features(model, features, labels)
    weights = weights if sample_weight is None else sample_weight
    before = [np.array(v.numpy(), copy=True) for v in layer.weights]
    _set_statistics(model, layer, values)
    start = _ridge_start(
        model, values, np.asarray(labels), layer, class_weight, weights
    )
    words = start[0] if start is not None else None
    if words is None:
        for variable, value in zip(layer.weights, before, strict=True):
            variable.assign(value)
    return words


def _set_statistics(model, layer: Standardization, features) -> None:
    """Sets the head's feature statistics, the raw-pixel group muted again (the
    ridge start of a classification head decides whether to read it)."""
    layer.set_statistics(features)
    pixels = pixel_columns(model)
    if pixels is not None:
        set_pixel_scale(layer, pixels.stop - pixels.start, 0.0)


def _standardization(model: keras.Model) -> Standardization | None:
    """The head's `Standardization` layer, or None (`standardize=False`)."""
    return next((la for la in model.layers if isinstance(la, Standardization)), None)


def _linear_head(model: keras.Model) -> bool:
    """Whether the head has no hidden layers (the ridge fit applies)."""
    return not any(la.name.startswith("head_dense_") for la in model.layers)


def _head_features(model, features, labels=None) -> tuple[np.ndarray, Any, Any]:
    """`(features as rows, labels, sample weights or None)`: one inference pass
    over batches of `(image, label[, sample_weight])`, or the arrays given."""
    weights = None
    if isinstance(features, tf.data.Dataset):
        cache = FeatureCache(model, features)
        features, labels = cache.features, cache.others[0]
        weights = cache.others[1] if len(cache.others) > 1 else None
        cache.close()
    return np.asarray(features).reshape(len(features), -1), labels, weights


def _ridge_start(
    model, features, labels, layer, class_weight=None, sample_weight=None
) -> tuple[str, float | None] | None:
    """The closed-form start of a linear head: `(words, head L2 or None)`.

    `class_weight` (`{class index: weight}`) and `sample_weight` (one per
    image; Keras takes one or the other) weigh a classifier's images in every
    fit, score and temperature below; `sample_weight` weighs a regression or
    multi-label head's fit the same way.
    """
    info = model_info(model)
    units = info.metadata["num_outputs"]
    if not _linear_head(model):
        return None
    n, d = features.shape
    if n > 20_000 or d > 8192 or n < 2:
        return None
    output = model.get_layer("head_output")
    if tuple(output.kernel.shape) != (d, units):
        return None
    z = (features - layer.mean.numpy()) * layer.scale.numpy()
    if info.task in ("regression", "multilabel"):
        w = _row_weights(n, sample_weight)
        # Keras's loss weighs each image by its weight as given, the ridge by
        # its share: the head's L2 keeps to Keras's scale (all weights 2 double
        # the loss, so the penalty doubles too).
        scale = 1.0
        if sample_weight is not None:  # unread datasets' weights are unchecked
            mean = float(np.mean(np.asarray(sample_weight, dtype=np.float64)))
            scale = mean if np.isfinite(mean) and mean > 0 else 1.0
        return _ridge_regression_start(output, z, labels, units, info.task, w, scale)
    y = class_ids(labels)
    classes = max(2, units)
    if y.min() < 0 or y.max() >= classes or len(np.unique(y)) < 2:
        return None
    w = _row_weights(len(y), sample_weight, class_weight, y)
    kind = "class" if class_weight else "sample"
    weighted_words = f"{kind}-weighted " if w is not None else ""
    weighted = _weigh_blocks(model, info, features, z, y, classes, layer, w)
    fit = ridge_fit(z, y, classes, w) if weighted is None else weighted[0]
    if units == 1:  # binary: one sigmoid logit, the difference of the two scores
        weights = (fit.weights[:, 1] - fit.weights[:, 0])[:, None]
        bias = np.array([fit.prior[1] - fit.prior[0]])
        loo = fit.loo[:, 1:] - fit.loo[:, :1]
    else:
        weights, bias, loo = fit.weights, fit.prior, fit.loo
    if scorable(y).any():
        words = (
            f"head starts from the ridge classifier ({weighted_words}leave-one-out "
            f"accuracy {loo_accuracy(fit.loo, y, w):.3f})"
        )
    else:  # leave-one-out scores nothing: the scale comes from the fit's own scores
        loo = z @ weights + bias
        words = (
            f"head starts from the {weighted_words}ridge classifier (no "
            "leave-one-out score: every class has one image)"
        )
    temperature = _temperature(loo, y, units == 1, w)
    output.kernel.assign((temperature * weights).astype("float32"))
    output.bias.assign((temperature * bias).astype("float32"))
    return (words if weighted is None else f"{words}; {weighted[1]}"), None


def _ridge_regression_start(
    output, z, labels, units: int, task: str, w=None, loss_scale: float = 1.0
):
    """The ridge start of a regression or multi-label head (`_ridge_start`).

    `w`: each image's weight in the fit and its scores, or None (equal
    weights). `loss_scale`: the mean sample weight, by which Keras's weighted
    loss grows, and the regression L2 with it.

    Regression: the head is the ridge regression itself. Multi-label: a ridge
    fit on the 0/1 targets, its leave-one-out scores mapped to logits per label
    by a scale and an offset (`_platt`), so a sigmoid head starts calibrated.

    Also returns the L2 strength the head trains on with (`HeadL2`, on the
    scale of Keras's losses, which average over the batch and the outputs):
    for regression the ridge's own, chosen by leave-one-out, so that the start
    is where the penalised mean squared error is lowest and stage 1 cannot
    fit the images more closely than the ridge did; for multi-label one per
    label as strong as scikit-learn's default logistic regression (C=1). The
    ridge's strength is chosen for squared error on 0/1 targets, and it does
    not carry over to the cross-entropy: on a base whose features barely help
    it is far too strong (benchmarks/RESULTS.md, "The head's L2").
    """
    t = np.asarray(labels, dtype=np.float64).reshape(len(z), -1)
    if t.shape[1] != units or not np.all(np.isfinite(t)):
        return None
    fit = ridge_regression(z, t, w)
    n = len(z)
    weighted = "" if w is None else "sample-weighted "

    def mean(values):  # over the images (and the outputs), by their weights
        return float(np.average(np.mean(values, axis=1), weights=w))

    if task == "regression":
        output.kernel.assign(fit.weights.astype("float32"))
        output.bias.assign(fit.prior.astype("float32"))
        rmse = float(np.sqrt(mean((fit.loo - t) ** 2)))
        words = (
            f"head starts from {weighted}ridge regression (leave-one-out RMSE "
            f"{rmse:.4g})"
        )
        return words, fit.l2 * loss_scale / (n * units)
    scale, offset = _platt(fit.loo, t, w)
    output.kernel.assign((fit.weights * scale).astype("float32"))
    output.bias.assign((fit.prior * scale + offset).astype("float32"))
    accuracy = mean((fit.loo > 0.5) == (t > 0.5))
    words = (
        f"head starts from a {weighted}ridge fit per label (leave-one-out label "
        f"accuracy {accuracy:.3f})"
    )
    return words, 1.0 / (2 * n * units)


def _platt(scores: np.ndarray, targets: np.ndarray, w=None, steps: int = 50):
    """Per column, the `(scale, offset)` that make `scale * scores + offset` logits.

    Minimises the binary cross-entropy of each column (Newton's method on two
    parameters, a small L2 keeping separable columns finite; the scale stays in
    [0, 10**2.5], as `_temperature`'s; at a bound, the offset alone is
    stepped). A column whose scores separate its positives from its negatives
    is fit to Platt's targets, as in `_temperature`: (n + 1) / (n + 2) for its
    n positives, 1 / (m + 2) for its m negatives. Each step is halved until the
    loss does not rise: a full step from a clipped scale once overshot the
    offset by hundreds (labels the features cannot predict, whose scores are
    nearly constant).

    `w`: each row's weight in the means (and, where 0, in the separability
    and the counts), or None.
    """
    s, t = np.asarray(scores, np.float64), np.asarray(targets, np.float64)
    counted = (np.ones(len(s), bool) if w is None else np.asarray(w) > 0)[:, None]
    positives = (t > 0.5) & counted
    high = s.max(initial=-np.inf, axis=0, where=(t <= 0.5) & counted)
    separable = np.all(~positives | (s > high), axis=0) & positives.any(axis=0)
    n_pos = positives.sum(axis=0)
    platt = t * (n_pos + 1) / (n_pos + 2) + (1 - t) / (counted.sum() - n_pos + 2)
    t = np.where(separable, platt, t)

    def mean(values):  # over the rows, by their weights
        return np.average(values, axis=0, weights=w)

    frequency = np.clip(mean(t), 0.01, 0.99)
    scale = np.full(s.shape[1], 4.0)
    offset = np.log(frequency / (1 - frequency)) - scale * mean(s)
    l2 = 1e-3

    def loss(a, b):
        z = a * s + b
        # The mean binary cross-entropy of logits z, without overflow.
        bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return mean(bce) + 0.5 * l2 * (a**2 + b**2)

    for _ in range(steps):
        p = sigmoid(scale * s + offset)
        v, r = p * (1 - p), p - t
        g_a = mean(r * s) + l2 * scale
        g_b = mean(r) + l2 * offset
        h_aa = mean(v * s * s) + l2
        h_ab = mean(v * s)
        h_bb = mean(v) + l2
        det = h_aa * h_bb - h_ab**2
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        # A scale held at a bound: Newton's method on the offset alone.
        held = ((scale <= 0) & (step_a > 0)) | ((scale >= 10**2.5) & (step_a < 0))
        step_a = np.where(held, 0.0, step_a)
        step_b = np.where(held, g_b / h_bb, step_b)
        before, size = loss(scale, offset), np.ones_like(scale)
        for _ in range(30):
            a = np.clip(scale - size * step_a, 0.0, 10**2.5)
            b = offset - size * step_b
            worse = loss(a, b) > before
            if not worse.any():
                break
            size = np.where(worse, size / 2, size)
        scale, offset = np.where(worse, scale, a), np.where(worse, offset, b)
    return scale, offset


def _row_weights(n: int, sample_weight, class_weight=None, y=None) -> np.ndarray | None:
    """Each of `n` images' weight in the closed-form fits: its class's weight
    in `class_weight` (`{class index: weight}`, missing classes 1; `y` the
    class ids) times its `sample_weight`. None where they change nothing (all
    equal) or where the ridge cannot take them (not one per image, not finite,
    negative, all 0): Keras's loss still has the say."""
    w = np.ones(n)
    if class_weight:
        w *= np.array([float(class_weight.get(int(c), 1.0)) for c in y])
    if sample_weight is not None:
        s = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if s.shape != w.shape:
            return None
        w *= s
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        return None
    return None if np.all(w == w[0]) else w


def _weigh_blocks(model, info, features, z, y, classes, layer, w=None):
    """Scales each block's standardised features by `probe.group_weights`
    (each block's accuracy weight times its width balance).

    The weights go into the `Standardization` layer's scale, so the saved model,
    its backups and a resumed run all keep them. The raw-pixel group
    (`HeadConfig.pixels`), muted until here, is turned on and weighed like a
    block where a linear probe on it scores at least `PIXEL_GROUP_RATIO` of the
    best block's leave-one-out accuracy. Returns the ridge classifier on the
    weighted features (`z`, updated in place for the pixels) and a few words for
    the stage-1 line, or None for a head that reads one block and no pixels.
    `w`: each image's weight in every fit and accuracy, or None.
    """
    blocks = list(info.metadata.get("head_blocks") or [])
    pixels = pixel_columns(model)
    if len(blocks) < (1 if pixels is not None else 2):
        return None
    pooled = model.get_layer("head_pool").input
    if not isinstance(pooled, (list, tuple)):
        return None
    widths = [int(t.shape[-1]) for t in pooled]
    if pixels is not None:
        widths = widths[:-1]
    end = z.shape[1] if pixels is None else pixels.start
    if len(widths) % len(blocks) or sum(widths) != end:
        return None
    per = len(widths) // len(blocks)  # "avgmax" pools each block twice
    widths = [sum(widths[i : i + per]) for i in range(0, len(widths), per)]
    accuracy = group_accuracy(z[:, : sum(widths)], y, classes, widths, w)
    best = int(np.argmax(accuracy))
    scored = bool(scorable(y).any())
    pixel_words = ""
    if pixels is not None:
        values = features[:, pixels]
        scale = 1.0 / (values.std(axis=0) + layer.epsilon)
        on = (values - values.mean(axis=0)) * scale
        alone = group_accuracy(on, y, classes, [on.shape[1]], w)[0]
        # With one image per class nothing scores the pixels: they stay muted
        # (measured: benchmarks/RESULTS.md, "One image per class").
        if scored and alone >= PIXEL_GROUP_RATIO * accuracy[best]:
            set_pixel_scale(layer, on.shape[1], scale)
            z[:, pixels] = on
            widths, accuracy = [*widths, on.shape[1]], np.append(accuracy, alone)
            against = (
                f"{alone / accuracy[best]:.2f} of the best block's"
                if accuracy[best] > 0
                else "the blocks score 0"
            )
            pixel_words = (
                f"; the raw pixels read too (leave-one-out {alone:.3f}: {against})"
            )
    if len(widths) < 2:
        return None
    used = z[:, : sum(widths)]
    chosen = group_weights(used, y, classes, widths, accuracy=accuracy, sample_weight=w)
    fit = chosen.fit
    if used.shape[1] < z.shape[1]:  # the muted pixels: zero rows of the kernel
        rows = np.zeros((z.shape[1] - used.shape[1], fit.weights.shape[1]))
        fit = dataclasses.replace(fit, weights=np.concatenate([fit.weights, rows]))
    name = blocks[best]
    columns = np.repeat(chosen.weights, widths)
    scale = layer.scale.numpy()
    scale[: len(columns)] *= columns
    layer.scale.assign(scale.astype("float32"))
    if chosen.power == 0:
        why = (
            f"leave-one-out; best block {name} {chosen.accuracy[best]:.3f}"
            if scored
            else "every class has one image: nothing to weigh them or the raw pixels by"
        )
        note = (
            f"its {_blocks(len(blocks))} at equal weight, each scaled to the same "
            f"total variance ({why})"
        )
        return fit, note + pixel_words
    share = (chosen.accuracy / max(chosen.accuracy.max(), 1e-12)) ** chosen.power
    kept = int(np.sum(share[: len(blocks)] >= 0.5))
    note = (
        f"its {_blocks(len(blocks))} weighted by their own leave-one-out accuracy "
        f"(best {name} {chosen.accuracy[best]:.3f}; {kept} of "
        f"{len(blocks)} keep half their weight or more)"
    )
    return fit, note + pixel_words


def _blocks(count: int) -> str:
    return f"{count} block" if count == 1 else f"{count} blocks"


def _temperature(
    scores: np.ndarray, y: np.ndarray, binary: bool, w: np.ndarray | None = None
) -> float:
    """The scale of ridge scores that minimises their cross-entropy.

    Where the leave-one-out scores rank every image's class first, that
    minimum lies at an unbounded scale: the head would start saturated, with
    probabilities of exactly 0 and 1, a training loss near 1e-30 and no
    gradient left for stage 1 or stage 2. There the targets are Platt's (1999)
    instead of one-hot: a class of n images gets (n + 1) / (n + 2) of the
    probability, the other classes share the rest. `w` weighs each image's
    cross-entropy (class weights), or None.
    """
    if binary:  # one logit: the score of class 1 over class 0
        scores = np.concatenate([np.zeros_like(scores), scores], axis=1)
    classes = scores.shape[1]
    targets = np.eye(classes)[y]
    if np.all(scores.argmax(axis=1) == y):
        counts = np.bincount(y, minlength=classes)[y]
        true = (counts + 1.0) / (counts + 2.0)
        targets = np.repeat(((1.0 - true) / (classes - 1))[:, None], classes, axis=1)
        targets[np.arange(len(y)), y] = true
    best, best_loss = 1.0, math.inf
    for t in np.logspace(-1, 2.5, 36):
        z = t * scores
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.average(np.sum(targets * log_p, axis=1), weights=w)
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best


def _row_labels(prepared, train) -> tuple:
    """`(labels, total)` of the rows `prepared.features` reads, in its order,
    where they are known without a pass (else None), for `probe_sample`."""
    if prepared.labels is not None:
        return prepared.labels, len(prepared.labels)
    if isinstance(train, tltf_data.DataBundle):
        ordered = train.unshuffled is not None and train.labels is not None
        return (train.labels if ordered else None), train.num_train
    return None, None


def _rows_of(ds) -> tuple[int, bool]:
    """`(rows, exact)` of a batched tf.data input, for the size rule
    (`is_large_set`): its number of batches (known: `fine_tune` counts an
    input of unknown length first, `_known_length`) times the first batch's
    rows, at most one batch too many; one batch is read."""
    batches = int(ds.cardinality())
    if batches <= 0:  # empty: reported where it is read
        return 0, True
    with pipeline_errors():
        first = next(iter(ds.take(1)))
    return batches * int(tf.shape(first[0])[0]), batches == 1


def _size_rule(
    images: int | None, exact: bool, classes: int | None, base: keras.Model
) -> tuple[bool, str]:
    """`(large, words)`: whether a training set of `images` (`exact`, or
    estimated) gets the large set's stage 2 (`is_large_set`, for a classifier
    of `classes` classes; not on a `base` without normalization layers, with
    `LARGE_SET_NEEDS_NORMALIZATION`), and the words that say why; "" below
    `LARGE_SET_IMAGES`, where the size decides nothing."""
    floor = tltf_settings.LARGE_SET_IMAGES
    if not images or images < floor:
        return False, ""
    words = (
        f"a training set of {'' if exact else 'about '}{images:,} images "
        f"({floor:,} or more)"
    )
    large = is_large_set(images, classes)
    if classes:
        each, least = images // classes, tltf_settings.LARGE_SET_PER_CLASS
        words += (
            f" and {each:,} a class ({least} or more)"
            if large
            else f" but {each:,} a class (under {least})"
        )
    if (
        large
        and tltf_settings.LARGE_SET_NEEDS_NORMALIZATION
        and not has_normalization(base)
    ):
        large = False
        words += f" but on a base without normalization layers ({base.name})"
    return large, words


def _auto_unfreeze(
    model,
    info: ModelInfo,
    data,
    batch_size: int,
    loud: bool,
    held_out: bool,
    rows: tuple = (None, None),
    seed: int | None = None,
    large: bool = False,
    size_rule: str = "",
) -> tuple[int, bool]:
    """`(depth, large)`: the stage-2 depth for `unfreeze="auto"`, what the
    linear probe recommends or every block on a `large` training set
    (`is_large_set`; `size_rule` says why it is large, or why a set of
    `LARGE_SET_IMAGES` or more is not: `_size_rule`), and whether the large
    set's stage 2 still holds: not for a classifier whose probe's best block
    scores `SATURATED_PROBE` or more, where every block gained nothing.

    The probe scores every block by leave-one-out on the training images (one
    forward pass): by accuracy for a classifier, by R² for regression and
    multi-label. Of a training set larger than `PROBE_IMAGES` it reads a
    sample, seeded by `seed` (`probe_sample`; `rows` are the labels in `data`'s
    order and their number, where known). Blocks above the knee of that curve
    are the ones to adapt; when the top of the model is below the best block,
    the blocks above the best block are adapted (and a cut is suggested).
    When the probe cannot run, the top third of the blocks is unfrozen. When it
    cannot score because every class has one training image: with a held-out
    slice (`held_out`: two images per class, one held out), every block above
    the first, as the probe's all-tied table gave before 2026-12-05 and as
    measured best there (benchmarks/RESULTS.md, "One image per class"), with
    the slice to judge stage 2; without one, 0: stage 2 is skipped.

    The probe runs on a large set too: its line says what it would have chosen,
    and whether the raw pixels do as well as the base.
    """

    n = len(info.block_map)
    fallback = n if large else max(1, n // 3)
    labels, total = rows
    try:
        data, sampled_from = probe_sample(
            data,
            PROBE_IMAGES,
            0 if seed is None else seed,
            batch_size,
            labels,
            total,
            info.task,
        )
        result = probe_blocks(
            model_base(model), data, batch_size=batch_size, task=info.task, verbose=0
        )
    except LeaveOneOutError:
        if held_out:  # two images per class, one held out: the slice judges
            if loud:
                print(
                    f"tltf: unfreeze='auto' -> {n - 1} of {n} blocks: the images "
                    "left to train on have one per class, so the probe cannot "
                    "score a depth; every block above the first is unfrozen, and "
                    "keep_best's held-out slice judges stage 2."
                )
            return max(1, n - 1), large
        if loud:
            print(
                "tltf: unfreeze='auto' -> stage 2 skipped: every class has one "
                "training image, so nothing can score what fine-tuning would "
                "change (measured: it gains nothing there; benchmarks/RESULTS.md, "
                '"One image per class"). Set unfreeze to fine-tune anyway.'
            )
        return 0, large
    except DataError as error:
        if loud:
            print(
                f"tltf: unfreeze='auto' -> {fallback} of {n} blocks (the probe could "
                f"not run: {error})"
            )
        return fallback, large
    top, best, key, measure = result.table[-1], result.best, result.key, result.measure
    if result.cut is None:
        blocks = result.unfreeze
        why = (
            f"the top block {top['block']} is as good as any "
            f"(leave-one-out {measure} {top[key]:.3f})"
        )
    else:
        blocks = max(1, n - 1 - info.block_map.position(result.cut))
        why = (
            f"{best['block']} ({measure} {best[key]:.3f}) beats the top block "
            f"{top['block']} ({top[key]:.3f}), so the {blocks} block(s) "
            f"above it are adapted; build_model(..., cut='auto', data=train) "
            f"would cut there"
        )
    sampled = (
        f" of a seeded sample of {result.num_train:,} of {sampled_from:,} training "
        "images"
        if sampled_from
        else ""
    )
    saturated = tltf_settings.SATURATED_PROBE
    if large and info.task in CLASSIFIERS and best[key] >= saturated:
        large = False
        why = (
            f"{size_rule}, but its best block already scores {best[key]:.3f} "
            f"({saturated:g} or more), so the probe's depth: {why}"
        )
    elif large:
        why = (
            f"{size_rule} fine-tunes every block; the probe alone would adapt "
            f"{blocks}: {why}"
        )
        blocks = n
    elif size_rule:
        why = f"{size_rule} takes the probe's depth: {why}"
    if loud:
        print(
            f"tltf: unfreeze='auto' -> {blocks} of {n} blocks: {why} "
            f"(probe{sampled}: {result.seconds:.1f}s)."
        )
        if not result.base_helps:
            print(
                f"tltf: note: a linear probe on the raw pixels scores "
                f"{result.pixels[key]:.3f}, as well as the best block of "
                f"{info.metadata['base']} ({best[key]:.3f}): this base "
                "adds little or nothing for this task. Try another base, or a "
                "model trained from scratch."
            )
    return blocks, large


def _split_off_validation(train, validation_data, fraction, info, seed, loud: bool):
    """`(train, validation_data)` for `fine_tune(..., validation_split=)`."""
    if validation_data is not None:
        raise ConfigError(
            "fine_tune() got both validation_data and validation_split; pass one. "
            f"Received: validation_split={fraction!r}."
        )
    train, validation = split_validation(
        train, fraction, task=info.task, seed=seed, caller="fine_tune"
    )
    if loud:
        held, count = len(validation[0]), len(train[0]) + len(validation[0])
        how = "stratified" if info.task in CLASSIFIERS else "random"
        print(
            f"tltf: validation_split={fraction:g}: {held:,} of {count:,} training "
            f"images (a {how} slice, seed {0 if seed is None else seed}) are the "
            "validation data; they do not train."
        )
    return train, validation


def _fold_class_weights(prepared, feature_source, holdout, class_weight, classes):
    """`class_weight` multiplied into the sample weights of every training
    pipeline (`tltf.data.labels.fold_class_weights`): the stages' batches, the
    feature cache's, the LR finder's and the hand-back's."""

    def fold(ds):
        return None if ds is None else fold_class_weights(ds, class_weight, classes)

    prepared = dataclasses.replace(
        prepared,
        train=fold(prepared.train),
        features=fold(prepared.features),
        sample=fold(prepared.sample),
    )
    if holdout is not None:
        holdout.everything, holdout.folded = fold(holdout.everything), True
    return prepared, fold(feature_source)


@dataclasses.dataclass
class _Prepared:
    train: tf.data.Dataset  # what stage fits iterate (shuffled, augmented)
    features: tf.data.Dataset  # what the feature cache reads (unshuffled)
    val: tf.data.Dataset | None
    one_hot: bool
    augmented: bool
    labels: np.ndarray | None  # training labels when known without a pass
    counts: np.ndarray | None
    # Shuffled batches with a reshuffling of their own, for the LR finder.
    sample: tf.data.Dataset | None = None


def _prepare_data(
    model,
    info,
    train,
    validation,
    batch_size,
    seed,
    augment,
    to_one_hot,
    rows=None,
    checked=False,
):
    """Turns fine_tune's inputs into batched datasets, checked against the model.

    `rows` (arrays only): the rows both stages train on (the guard holds the
    others out). `checked`: the arrays' pixels were checked as they were read
    from a dataset (`_holdout`).
    """
    labels = counts = None
    bundled = False  # whether the validation set is the bundle's own
    if isinstance(train, tltf_data.DataBundle):
        if validation is None:
            validation, bundled = train.validation, True
        train_ds = train.train
        # One-off passes read a fixed-order copy: see DataBundle.unshuffled.
        features = train.unshuffled if train.unshuffled is not None else train_ds
        counts = train.counts
        one_hot = _check_bundle(train, info)
    else:
        # Labels and pixels are checked before anything reads the data.
        one_hot = (check_labels if checked else check_data)(train, info, "train")
        # The feature cache reads the unshuffled data once; the cached features are
        # then reshuffled every epoch with `seed`, in the order this pipeline has.
        train_ds, features = train_batches(train, batch_size, seed, rows)
        if not isinstance(train, tf.data.Dataset):
            labels = np.asarray(train[1])
            labels = labels if rows is None else labels[rows]
    check_image_shape(train_ds, model, "train")
    if train_ds.cardinality() == tf.data.UNKNOWN_CARDINALITY:
        features, train_ds = _known_length(features, train_ds)
    val_ds = None
    if validation is not None and bundled:
        val_ds = validation  # checked by load_data
    elif validation is not None:
        check_data(validation, info, "validation_data")
        val_ds = as_dataset(validation, batch_size, False, None, "validation_data")
    if val_ds is not None:
        check_image_shape(val_ds, model, "validation_data")
        if val_ds.cardinality() == tf.data.UNKNOWN_CARDINALITY:
            (val_ds,) = _known_length(val_ds)
        if val_ds.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ConfigError(
                "validation_data repeats forever (.repeat() without a count), so "
                "validation would never end. Pass a finite dataset: without "
                ".repeat(), or ds.take(n)."
            )
    n = info.metadata["num_outputs"]
    sample = _finder_batches(train, features, batch_size, seed, rows)
    if to_one_hot and info.task == "multiclass" and not one_hot:
        sample = tltf_data.one_hot(sample, n) if sample is not None else None
        train_ds, features = (
            tltf_data.one_hot(train_ds, n),
            tltf_data.one_hot(features, n),
        )
        val_ds = tltf_data.one_hot(val_ds, n) if val_ds is not None else None
        one_hot = True
    layer = tltf_data.augmentation(seed=seed) if augment is True else augment
    if layer not in (None, False):

        def apply(x, *rest):
            return (layer(x, training=True), *rest)

        # One batch at a time: the random layers draw from one seeded state, and a
        # parallel map would hand its draws to the batches in thread order, so a
        # seeded run would not repeat (tests/test_newcomer_output.py).
        train_ds = train_ds.map(apply)
        if sample is not None:
            sample = sample.map(apply)
    return _Prepared(
        train_ds,
        features,
        val_ds,
        one_hot,
        layer not in (None, False),
        labels,
        counts,
        train_ds if sample is None else sample,
    )


def _known_length(*datasets: tf.data.Dataset) -> tuple:
    """The datasets with their number of batches, counted in one pass of the
    first (the others hold the same batches: the training pipeline and the
    fixed-order copy that one-off passes read).

    A tf.data input of unknown length (a generator, `.filter()`) would make
    Keras warn "Your input ran out of data; interrupting training" in each
    stage's first epoch and show "Unknown" progress, the automatic epochs could
    not count optimizer steps, and a resumed run could not replay the batch
    orders exactly. The pass reads the input pipeline only, not the model.
    """
    count = int(datasets[0].reduce(np.int64(0), lambda n, _: n + 1))
    if count == 0:
        return datasets  # empty: reported where it is read
    known = tf.data.experimental.assert_cardinality(count)
    return tuple(dataset.apply(known) for dataset in datasets)


def _finder_batches(train, features, batch_size: int, seed: int | None, rows=None):
    """Shuffled training batches for the LR finder, or None to use the fit's own.

    The finder's passes must not advance the reshuffling of the batches the
    stages fit (see `DataBundle.unshuffled`): a resumed run does not repeat
    them. Arrays and bundles get a pipeline of their own; a tf.data input is
    the user's, and is used as it is.
    """

    if isinstance(train, tltf_data.DataBundle):
        if train.unshuffled is None:
            return None
        buffer = min(train.num_train or 1024, 10_000)
        return (
            features.unbatch()
            .shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
    if isinstance(train, tf.data.Dataset):
        return None
    return array_batches(train, "train", batch_size, True, seed, rows)


def _check_bundle(bundle, info: ModelInfo) -> bool:
    """Checks a DataBundle's classes against the model; returns whether one-hot.

    `load_data` has checked its labels and pixels already.
    """
    n = info.metadata["num_outputs"]
    if info.task == "multiclass" and bundle.num_classes > n:
        raise DataError(
            f"train has {bundle.num_classes} classes, but the model has "
            f"num_classes={n}. Rebuild it with num_classes={bundle.num_classes}."
        )
    label = bundle.train.element_spec[1].shape
    return info.task == "multiclass" and label.rank == 2 and label[-1] == n > 1


def _metric_names(metrics) -> list[str] | None:
    """The log names Keras gives compiled metrics (None when not a plain list)."""
    if metrics is None:
        return []
    if not isinstance(metrics, (list, tuple)):
        return None
    names: list[str] = []
    for metric in metrics:
        name = metric if isinstance(metric, str) else getattr(metric, "name", None)
        name = name or getattr(metric, "__name__", None)
        if not isinstance(name, str):
            return None
        # Keras numbers repeated names: accuracy, accuracy_1, ...
        base, k = name, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def _check_monitors(callbacks: list, metrics, validation: bool) -> None:
    """Checks the `monitor` of callbacks (EarlyStopping, ModelCheckpoint, ...).

    Keras only warns after epoch 1, and the callback then does nothing. A
    monitor that neither the loss nor a compiled metric logs is a ConfigError
    here, before training; unless a callback of the user's own comes before it
    in `callbacks` (one that may add its own entries to the epoch's logs, such
    as a validation F1 it computes): then a `_MonitorLogged` check goes in just
    before the monitoring callback and raises the same error at the end of the
    first epoch if the entry is not there.
    """
    names = _metric_names(metrics)
    if names is None:
        return
    logged = ["loss", *names]
    valid = logged + [f"val_{n}" for n in logged] if validation else logged
    given = list(callbacks)  # the user's order, without the checks put in below
    for i, callback in enumerate(given):
        monitor = getattr(callback, "monitor", None)
        if not isinstance(monitor, str) or monitor in valid:
            continue
        if not getattr(callback, "save_best_only", True):
            continue  # a ModelCheckpoint that saves every epoch ignores it
        error = _MonitorError(type(callback).__name__, monitor, logged, validation)
        writers = [c for c in given[:i] if _may_log(c)]
        if not writers:
            raise error.of(valid)
        callbacks.insert(callbacks.index(callback), _MonitorLogged(callback, error))


def _may_log(callback) -> bool:
    """Whether a callback may add entries to the epoch's logs: one of the user's
    own classes, or a LambdaCallback (Keras's other callbacks and tltf's own add
    none that a monitor could watch)."""
    if isinstance(callback, keras.callbacks.LambdaCallback):
        return True
    return not type(callback).__module__.startswith(("keras.", "tltf."))


@dataclasses.dataclass
class _MonitorError:
    """The ConfigError of a callback that monitors an entry nothing logs."""

    where: str  # the callback's class name
    monitor: str
    logged: list  # what the loss and the compiled metrics log
    validation: bool

    def of(self, valid: list, epoch_logs: bool = False) -> ConfigError:
        """The error, given the names that are logged (`epoch_logs`: read from
        the first epoch's logs, not from the compiled metrics)."""
        bare = self.monitor.removeprefix("val_")
        if bare in self.logged and not self.validation:
            stop = (
                " To end stage 2 on keep_best's score of held-out training "
                "images instead, pass fine_tune_patience=N."
                if self.where == "EarlyStopping"
                else ""
            )
            return ConfigError(
                f"{self.where}(monitor={self.monitor!r}) needs validation data: "
                f"pass validation_data=, or monitor {bare!r}.{stop}"
            )
        if epoch_logs:
            return ConfigError(
                f"{self.where} monitors {self.monitor!r}, which was not in the "
                f"logs at the end of the first epoch: they held {valid}. Add it "
                f"to the logs from a callback listed before {self.where}, or "
                f"monitor one of those.{suggest(self.monitor, valid)}"
            )
        return ConfigError(
            f"{self.where} monitors {self.monitor!r}, which this model does not "
            f"log. Expected one of {valid}.{suggest(self.monitor, valid)}"
        )


class _MonitorLogged(keras.callbacks.Callback):
    """Raises at the end of the first epoch if `watcher.monitor` was not logged.

    It runs just before the watcher, after the user's callbacks that come
    before it (`_check_monitors`), so it sees the entries they added.
    """

    def __init__(self, watcher, error: _MonitorError):
        super().__init__()
        self.watcher, self.error, self.checked = watcher, error, False

    def on_epoch_end(self, epoch, logs=None):
        if self.checked:
            return
        self.checked = True
        logs = logs or {}
        if self.watcher.monitor not in logs:
            names = [name for name in logs if name != "stage"]
            raise self.error.of(names, epoch_logs=True)


def _loss_name(loss) -> str:
    """A loss as the user named it: its name, its `name`, or its function's."""
    if isinstance(loss, str):
        return loss
    return (
        getattr(loss, "name", None)
        or getattr(loss, "__name__", None)
        or type(loss).__name__
    )


def _check_loss(loss, smoothing: float, info: ModelInfo) -> str | None:
    """A loss of the user's own, checked before any data is read.

    Returns:
        The name of a Keras loss to check against the labels once their kind
        is known (`_check_label_kind`), or None: "auto", or a function or
        `Loss` of the user's own, which is theirs to check.
    """
    if isinstance(loss, str) and loss == "auto":
        return None
    resolved = resolve_loss(loss)
    if not callable(resolved):
        raise ConfigError(
            "Expected loss as 'auto', a Keras loss name, a keras.losses.Loss or a "
            f"function (y_true, y_pred). Received: loss={loss!r}"
        )
    name = _loss_name(loss)
    if smoothing:
        raise ConfigError(
            f"label_smoothing={smoothing:g} smooths the task's own loss "
            f"(loss='auto'), and loss={name!r} is one of yours, which tltf does not "
            "change. Give the smoothing to your loss, e.g. keras.losses."
            f"CategoricalCrossentropy(label_smoothing={smoothing:g}), and leave "
            "label_smoothing at 0."
        )
    module = getattr(resolved, "__module__", "") or ""
    if not module.startswith("keras"):
        return None
    if info.task == "binary" and "categorical" in str(name).lower():
        raise ConfigError(
            f"loss={name!r} needs one output per class, and this binary model has "
            "one sigmoid output (a categorical cross-entropy of one column is 0 "
            "whatever the model predicts, so nothing would train). Use "
            "'binary_crossentropy' (or loss='auto'), or build the model with "
            "task='multiclass' for a softmax over both classes."
        )
    return str(name) if info.task == "multiclass" else None


#: Metric names Keras's `compile` reads itself, which `keras.metrics.get` does
#: not know.
_COMPILE_METRICS = ("accuracy", "acc", "crossentropy", "ce")


def _check_metrics(metrics) -> None:
    """Metric names Keras does not know fail here, before any data is read, with
    the names they may mean (Keras's own error comes at compile, deep inside)."""
    if metrics is None or (isinstance(metrics, str) and metrics == "auto"):
        return
    for item in metrics if isinstance(metrics, (list, tuple)) else [metrics]:
        if not isinstance(item, str) or item in _COMPILE_METRICS:
            continue
        try:
            keras.metrics.get(item)
        except ValueError:
            names = [
                *_COMPILE_METRICS,
                "auc",
                "precision",
                "recall",
                "mae",
                "mse",
                "f1_score",
                *(
                    name
                    for name in dir(keras.metrics)
                    if name.islower()
                    and name not in ("get", "serialize", "deserialize")
                ),
            ]
            raise ConfigError(
                f"Unknown metric {item!r}. Pass 'auto' (the task's own metrics), "
                "Keras metric names such as ['accuracy', 'auc'], or "
                "keras.metrics.Metric objects." + suggest(item, names)
            ) from None


def _wants_one_hot(name: str | None) -> bool:
    """Whether a multiclass model's Keras loss (`_check_loss`'s name) takes
    one-hot rows: every Keras loss but the sparse ones. `fine_tune` turns class
    indices into one-hot rows for it, as for label smoothing (Keras would fail
    inside a traced training step, with a TensorFlow `InvalidArgumentError`)."""
    return name is not None and "sparse" not in name.lower()


def _check_label_kind(name: str | None, info: ModelInfo, one_hot: bool) -> None:
    """A Keras loss (`_check_loss`) against the kind of labels, before training.

    Keras's own losses tell one-hot labels (categorical) from class indices
    (sparse) by name; given the other kind, Keras fails inside a traced
    training step (an `InvalidArgumentError` from a TensorFlow kernel, or a
    rank error). Class indices became one-hot rows for a categorical loss
    (`_wants_one_hot`); one-hot rows for a sparse loss are an error.
    """
    if name is None:
        return
    sparse = "sparse" in name.lower()
    if one_hot and sparse:
        raise ConfigError(
            f"loss={name!r} expects class indices, and these labels are one-hot "
            "rows. Pass labels.argmax(axis=1) as the labels, or "
            "'categorical_crossentropy' (or loss='auto')."
        )


def _steps_of_endless(steps_per_epoch) -> int:
    """The batches per epoch of a training dataset that repeats forever."""
    if steps_per_epoch is None:
        raise ConfigError(
            "train repeats forever (.repeat() without a count), so epoch 1 would "
            "never end. Pass steps_per_epoch= (batches per epoch), or a finite "
            "dataset: without .repeat(), or ds.take(n)."
        )
    return check_positive_int(steps_per_epoch, "steps_per_epoch")


def _check_class_weight(weights, info: ModelInfo) -> None:
    """Checks a class_weight dict: a finite weight >= 0 for existing classes."""
    classes = max(2, info.metadata["num_outputs"])
    if not isinstance(weights, dict):
        raise ConfigError(
            "Expected class_weight as a dict {class index: weight}, 'balanced' or "
            f"None. Received: {type(weights).__name__}"
        )
    if info.task not in ("multiclass", "binary"):
        raise ConfigError(
            f"class_weight needs a multiclass or binary task, not {info.task!r}."
        )
    for key, value in weights.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ConfigError(
                f"Expected class_weight keys to be class indices (ints). Received: "
                f"{key!r}. Map class names with names.index(name)."
            )
        if not 0 <= key < classes:
            raise ConfigError(
                f"class_weight has a weight for class {key}, but the model has "
                f"{classes} classes (0 to {classes - 1}). Remove it, or rebuild the "
                "model with more classes."
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, Real)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ConfigError(
                f"Expected class_weight values to be finite numbers >= 0. Received: "
                f"class {key}: {value!r}."
            )


#: `fine_tune` notes imbalanced classes (without `class_weight`) from this ratio
#: of the largest class's training images to the smallest's.
IMBALANCE_RATIO = 3


def _note_imbalance(train, classes: int) -> None:
    """One line where the largest class has `IMBALANCE_RATIO` times the images
    of the smallest: the model then favours the large classes, which is right
    for test data drawn like the training data and wrong where every class
    matters alike (measured: benchmarks/RESULTS.md, "Imbalanced classes").

    `train` is `fine_tune`'s (checked) training data, before any slice is held
    out: a bundle's counts, or the labels of arrays (also of a tf.data input
    that the guard read into memory). Other tf.data inputs' labels are not read
    for a note.
    """
    if isinstance(train, tltf_data.DataBundle):
        counts = train.counts
    elif isinstance(train, (tuple, list)) and len(train) >= 2:
        counts = np.bincount(class_ids(np.asarray(train[1])), minlength=classes)
    else:
        return
    if counts is None:
        return
    present = np.asarray(counts)[np.asarray(counts) > 0]
    if len(present) < 2 or present.max() < IMBALANCE_RATIO * present.min():
        return
    print(
        f"tltf: note: the classes are imbalanced ({present.max():,} training "
        f"images in the largest, {present.min():,} in the smallest): the model "
        "will favour the large ones, as the training data does. If every class "
        "matters alike (say, the test set is balanced), pass "
        "class_weight='balanced' (tltf train: --class-weight balanced)."
    )


def _balanced_weights(setting: str, info, prepared: _Prepared) -> dict[int, float]:
    if setting != "balanced":
        raise ConfigError(
            f"Expected class_weight as a dict, 'balanced' or None. Received: {setting!r}"
        )
    if info.task not in ("multiclass", "binary"):
        raise ConfigError(
            f"class_weight='balanced' needs a multiclass or binary task, not {info.task!r}."
        )
    n = max(2, info.metadata["num_outputs"])
    if prepared.counts is not None:
        return tltf_data.class_weights(counts=prepared.counts)
    labels = prepared.labels
    if labels is None:
        labels = tltf_data.dataset_labels(prepared.features)
    return tltf_data.class_weights(labels, n)


def _use_feature_cache(
    setting, head_epochs, train_ds, callbacks, fit_kwargs, augmented, distributed=False
):
    """Whether stage 1 can use cached features, and why not when it cannot."""
    if setting not in (True, False, "auto"):
        raise ConfigError(
            f"Expected cache_features in (True, False, 'auto'). Received: {setting!r}"
        )
    if setting is False or head_epochs == 0:
        return False, None
    blockers = []
    if augmented:
        blockers.append("augmentation is active (the base sees new images every epoch)")
    if train_ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        blockers.append("the training dataset repeats forever")
    if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
        blockers.append("BackupAndRestore resumes epochs of the full model")
    if fit_kwargs.get("steps_per_epoch"):
        blockers.append("steps_per_epoch is set")
    if distributed:
        blockers.append(
            "training runs under a tf.distribute strategy, which the cached head "
            "sub-model would not use"
        )
    if not blockers:
        return True, None
    reason = "; ".join(blockers)
    if setting is True:
        raise ConfigError(f"cache_features=True cannot be used: {reason}.")
    return False, f"cache_features='auto' is off because {reason}"


def _fit_with_feature_cache(run: _Run) -> keras.callbacks.History:
    """Stage 1 on cached features (head sub-model), then stage 2 on the model.

    User callbacks see one run on the full model: see `tltf.cache.Continuation`.
    A run resumed in stage 2 (`resume`, see `tltf.resume`) skips stage 1 and its
    feature pass entirely. With `head_epochs="auto"`, stage 1 runs up to
    `head_steps` optimizer steps (see `head_plan`) and ends once its loss has
    converged (`head_steps=0`: none after a ridge start, the closed-form head);
    stage 2 then starts at the next epoch.
    """

    model, schedule, resume, callbacks = (
        run.model,
        run.schedule,
        run.resume,
        run.callbacks,
    )
    head_epochs, fine_tune_epochs = run.head_epochs, run.fine_tune_epochs
    train_ds, val_ds, fit_args = run.prepared.train, run.val, run.fit_args
    head_steps = run.settings.head_steps
    labels = None if run.prepared.one_hot else run.prepared.labels
    info = model_info(model)
    apply_trainable(info, [], "frozen")
    auto = head_epochs == "auto"
    start = resume.epoch if resume is not None else 0
    resumed_plan = resume is not None and resume.unfreeze_at_epoch is not None
    if resumed_plan:
        schedule.unfreeze_at_epoch = resume.unfreeze_at_epoch
    elif not auto:
        schedule.unfreeze_at_epoch = head_epochs
    backup = [resume.callback(model, cached_epochs=10**9)] if resume else []
    history = keras.callbacks.History()
    # Last, as in Keras's own fit: it records what the user's callbacks add to
    # the logs too (a validation F1 of their own, say).
    continuation = Continuation([*callbacks, history], model, 0)
    continuation.last = fine_tune_epochs == 0
    shared = None  # stage 2's split and caches, when stage 1 reads them too
    guard = _keep_best(run)
    if start < schedule.unfreeze_at_epoch or (auto and not resumed_plan):
        split = FrozenSplit(model)
        shared = _shared_pass(run)
        if shared is not None:
            train_cache, val_cache = shared.head_caches()
            if guard is not None:  # stage 1's end is scored on the slice too
                _score_held_out_through(shared, guard)
        else:
            extractor = split.extract()
            train_cache = FeatureCache(
                model, run.features, labels=labels, extractor=extractor
            )
            val_cache = (
                FeatureCache(model, val_ds, extractor=extractor)
                if val_ds is not None
                else None
            )
        ridge = None
        if start == 0:
            ridge = prepare_head(
                model,
                train_cache.features,
                train_cache.others[0] if train_cache.others else None,
                ridge=run.settings.head_init == "ridge",
                head_l2=run.settings.head_l2,
                class_weight=run.fit_args.get("class_weight"),
                sample_weight=train_cache.others[1]
                if len(train_cache.others) > 1
                else None,
            )
        batch = train_cache.batch_sizes[0]
        steps_per_epoch = None
        if auto:
            steps_per_epoch, most = head_plan(train_cache.count, batch, head_steps)
            if not resumed_plan:
                closed_form = ridge is not None and head_steps == 0
                schedule.unfreeze_at_epoch = 0 if closed_form else most
        stage_one = schedule.unfreeze_at_epoch
        continuation.epochs = stage_one + fine_tune_epochs
        verbose = fit_args.get("verbose")
        if verbose:
            n_val = val_cache.count if val_cache else 0
            seconds = train_cache.seconds + (val_cache.seconds if val_cache else 0)
            schedule.set_model(model)
            schedule.stage = 1
            cached = (
                f"cached base features in one pass over {train_cache.count:,} "
                f"train + {n_val:,} validation images ({seconds:.1f}s"
                + (
                    f"; stage 2 reuses the output of the {shared.frozen} frozen "
                    "blocks below the ones it unfreezes)"
                    if shared is not None
                    else ")"
                )
            )
            if auto and not stage_one:
                print(_closed_form_line(ridge, cached.replace("cached base ", "")))
            else:
                budget = (
                    f"; up to {head_steps:,} steps ({stage_one} epochs of "
                    f"{steps_per_epoch}), until the loss converges"
                    + (" or the validation loss stops falling" if val_cache else "")
                    if auto
                    else ""
                ) + (f"; {ridge}" if ridge else "")
                schedule._print_summary(start, f"; {cached}{budget}")
        try:
            if stage_one > start:
                _fit_stage_one(
                    run,
                    split,
                    (train_cache, val_cache),
                    steps_per_epoch,
                    start,
                    continuation,
                    backup,
                )
        except BaseException:
            if shared is not None:
                shared.close()
                if guard is not None:
                    guard.holdout_predict = None
            raise
        finally:
            train_cache.close()
            if val_cache is not None:
                val_cache.close()
    total = schedule.unfreeze_at_epoch + fine_tune_epochs
    continuation.epochs = total
    for callback in backup:
        callback.cached_epochs = schedule.unfreeze_at_epoch
    stage_two = bool(fine_tune_epochs) and not model.stop_training
    if shared is not None and not stage_two:
        if guard is not None:
            guard.holdout_predict = None
        if run.hand_back and shared.held is not None:
            # The run ends after stage 1 (the guard ended it, or a callback):
            # the hand-back reads every training image's head features from
            # the frozen output, through the top blocks alone.
            run.frozen_output = (shared.split, shared.train, shared.held)
            shared.train = shared.held = None
        shared.close()
    split = (
        (shared.split if shared is not None else _stage_two_split(run))
        if stage_two
        else None
    )
    if split is not None:
        continuation.last = True
        _fit_stage_two_cached(run, split, continuation, backup, start, total, shared)
    elif fine_tune_epochs and not model.stop_training:
        continuation.last = True
        if resume is not None:
            resume.skip_passes(train_ds, resume.train_passes)
        build_metrics(model, train_ds)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=total,
            initial_epoch=max(schedule.unfreeze_at_epoch, start),
            shuffle=False,
            callbacks=[
                schedule,
                continuation,
                *backup,
                *stage_progbar(callbacks, schedule),
            ],
            **fit_args,
        )
    elif not continuation.last:
        continuation.callbacks.on_train_end()
    # Keras's CallbackList turns every log value into a float on its way to the
    # History; keep the stage an int, as an uncached run records it.
    if "stage" in history.history:
        history.history["stage"] = [int(s) for s in history.history["stage"]]
    model.history = history
    return resume.merge(history) if resume is not None else history


def _stage_two_split(run: _Run) -> FrozenSplit | None:
    """The split for stage 2 on the frozen blocks' output, computed once, or None.

    Stage 2 trains the top blocks and the head; the blocks below them are
    frozen, and their BatchNorm layers, not trainable, run on their moving
    statistics under every `bn` policy. Their output (and the head's pooled
    features of them, and its raw-pixel group) is the same every epoch, so a
    stage 2 after a cached stage 1 computes it once. Full passes remain for
    what changes over stage 2 (gradual unfreezing) or hooks into the optimizer
    or the loss beyond the trained layers (`lr_decay`, Auto-RGN, L2-SP), for a
    model whose unfrozen blocks reach its bottom, a base that cannot be cut
    (`FrozenSplit`), and output (of the training and validation images and
    the guard's held-out slice) over `MEMORY_LIMIT_BYTES` that does not go to
    a file (`cache.frozen_output_on_disk`: with a GPU or TPU, or without the
    room on disk).
    """
    schedule = run.schedule
    if (
        schedule.gradual_every
        or schedule.lr_decay not in (None, 1)
        or schedule.lr_policy != "uniform"
        or schedule.regularize is not None
    ):
        return None
    schedule.set_model(run.model)  # resolves what stage 2 unfreezes
    if not schedule._target:
        return None
    info = model_info(run.model)
    n = len(info.block_map)
    k = n - info.block_map.position(schedule._target[0])
    if not 0 < k < n:
        return None
    try:
        split = FrozenSplit(run.model, k)
    except (ValueError, KeyError, IndexError, AttributeError):
        return None  # a base whose blocks do not chain through one tensor
    images = images_at_most(run.features)
    if run.val is not None:
        images += images_at_most(run.val)
    guard = _keep_best(run)
    if guard is not None and guard.holdout is not None:
        images += len(guard.holdout[1])  # the slice's output lives as long
    size = split.bytes_per_image() * images
    if size > tltf_cache.MEMORY_LIMIT_BYTES and not (
        tltf_cache.frozen_output_on_disk(size)
    ):
        return None
    return split


class _FrozenPass:
    """Stage 2's frozen-part caches (`_frozen_pass`); computed before stage 1
    (`_shared_pass`), both stages read them.

    Stage 1's head features are the top blocks' (frozen then, in inference
    mode) output on the frozen part's: `FrozenSplit.head_features` computes
    them from these caches by running the top `k` blocks alone. So one pass of
    the bottom blocks over the training and validation images serves both
    stages, where stage 1 ran the whole base over them and stage 2 the bottom
    blocks again. `held` is the guard's held-out slice's (None without one):
    the guard scores stage 1's end and every stage-2 epoch through the top
    blocks on it (`_score_held_out_through`).
    """

    def __init__(
        self, split: FrozenSplit, train: FeatureCache, val, frozen: int, held=None
    ):
        self.split, self.train, self.val, self.frozen = split, train, val, frozen
        self.held = held

    def head_caches(self) -> tuple[FeatureCache, FeatureCache | None]:
        """Stage 1's caches (the head's pooled features), from these."""
        tick = time.perf_counter()
        caches = []
        for part in (self.train, self.val):
            if part is None:
                caches.append(None)
                continue
            batch = part.batch_sizes[0]
            features = self.split.head_features(part.columns, batch)
            cache = FeatureCache.from_arrays(features, part.others, batch)
            cache.seconds = part.seconds
            caches.append(cache)
        caches[0].seconds += time.perf_counter() - tick
        return caches[0], caches[1]

    def close(self) -> None:
        for part in (self.train, self.val, self.held):
            if part is not None:
                part.close()


def _keep_best(run: _Run) -> KeepBest | None:
    """The run's guard (`keep_best`), or None."""
    return next((c for c in run.callbacks if isinstance(c, KeepBest)), None)


def _frozen_pass(run: _Run, split: FrozenSplit) -> _FrozenPass:
    """One pass of `split`'s frozen part over the training and validation
    images (the training labels taken as known where they are), and over the
    guard's held-out slice where it has one."""
    labels = None if run.prepared.one_hot else run.prepared.labels
    extract = split.extract()
    guard = _keep_best(run)
    holdout = guard.holdout if guard is not None else None
    train = FeatureCache(run.model, run.features, labels=labels, extractor=extract)
    val = held = None
    try:
        if run.val is not None:
            val = FeatureCache(run.model, run.val, extractor=extract)
        if holdout is not None:
            held = FeatureCache(run.model, holdout[0], extractor=extract)
    except BaseException:
        for part in (train, val):
            if part is not None:
                part.close()
        raise
    frozen = len(model_info(run.model).block_map) - split.k
    return _FrozenPass(split, train, val, frozen, held)


def _score_held_out_through(frozen_pass: _FrozenPass, guard: KeepBest) -> None:
    """Has the guard score its held-out slice through `frozen_pass`'s top part,
    on the frozen blocks' output already computed, instead of `model.predict`
    through the whole base: the same outputs, to float rounding."""
    held, trainable = frozen_pass.held, frozen_pass.split.trainable
    if held is None:
        return
    batches = held.dataset(held.batch_sizes[0], shuffle=False)
    guard.holdout_predict = lambda: trainable.predict(batches, verbose=0)


def _shared_pass(run: _Run) -> _FrozenPass | None:
    """Stage 2's caches, computed now for both stages (`_FrozenPass`), or None:
    where stage 2 would not run on them (`_stage_two_split`) or not at all."""
    if not run.fine_tune_epochs:
        return None
    split = _stage_two_split(run)
    return None if split is None else _frozen_pass(run, split)


def _fit_stage_two_cached(
    run, split, continuation, backup, start, total, shared=None
) -> None:
    """Stage 2 on `split`'s frozen part, computed once (`_stage_two_split`), or
    read from stage 1's pass (`shared`).

    The schedule installs the stage-2 optimizer and trainability on the full
    model, as at any stage change; the fit runs on the trainable part (the
    same layers and variables), on the training data in the order a full
    pass would take (one seeded shuffle of the fixed-order copy). User
    callbacks, the guard and a resume checkpoint see the full model through
    the `Continuation`, with the same epochs and logs.
    """
    model, schedule, resume = run.model, run.schedule, run.resume
    first = max(schedule.unfreeze_at_epoch, start)
    tick = time.perf_counter()
    frozen_pass = shared or _frozen_pass(run, split)
    train_cache, val_cache, held = frozen_pass.train, frozen_pass.val, frozen_pass.held
    guard = _keep_best(run)
    if guard is not None:  # it scores its held-out slice every epoch
        _score_held_out_through(frozen_pass, guard)
    if shared is None:
        seconds = time.perf_counter() - tick
    else:  # the slice's pass ran with stage 1's
        seconds = held.seconds if held is not None else 0.0
    try:
        schedule.set_params({"epochs": total, "verbose": run.fit_args.get("verbose")})
        schedule.on_train_begin()
        frozen = frozen_pass.frozen
        n_val = val_cache.count if val_cache else 0
        n_held = f" + {held.count:,} held-out" if held is not None else ""
        where = (
            f"in stage 1's pass over {train_cache.count:,} train + {n_val:,} "
            "validation images"
            + (f", and over {held.count:,} held-out ({seconds:.1f}s)" if held else "")
            if shared is not None
            else f"over {train_cache.count:,} train + {n_val:,} validation{n_held} "
            f"images ({seconds:.1f}s)"
        )
        parts = [part for part in (train_cache, val_cache, held) if part is not None]
        files = [path for part in parts for path in part.paths]
        if files:  # over MEMORY_LIMIT_BYTES: `cache.frozen_output_on_disk`
            size = sum(part.disk_bytes for part in parts)
            where += (
                f"; their output, {size / 2**20:,.1f} MiB, is read back from "
                f"{files[0].parent}"
            )
        # The optimizer, the trainable blocks and the summary, as at any stage
        # change.
        schedule._enter(
            2,
            schedule.plan(first)[1],
            first,
            f"; the {frozen} frozen blocks below run once, {where}",
        )
        batch = train_cache.batch_sizes[0]
        train_features = train_cache.dataset(
            batch, shuffle=True, seed=run.settings.seed
        )
        if resume is not None:
            resume.skip_passes(train_features, resume.train_passes)
        build_metrics(model, run.prepared.train)
        fit_part(
            split.trainable,
            train_features,
            optimizer=model.optimizer,
            loss=run.loss,
            metrics=run.metrics,
            jit_compile=model.jit_compile,
            callbacks=[
                StageTag(2, model),
                continuation,
                *backup,
                *stage_progbar(run.callbacks),
            ],
            validation_data=val_cache.dataset(batch, shuffle=False)
            if val_cache
            else None,
            epochs=total,
            initial_epoch=first,
            **run.fit_args,
        )
    finally:
        if run.hand_back and held is not None:
            # The hand-back reads every training image's head features: from
            # these, only the top blocks run (`_frozen_output_features`).
            run.frozen_output = (split, train_cache, held)
        else:
            for part in (train_cache, held):
                if part is not None:
                    part.close()
        if val_cache is not None:
            val_cache.close()
        if guard is not None:
            guard.holdout_predict = None
        schedule.on_train_end()


def _per_call(per_epoch: int, fixed_steps: bool) -> int:
    """`steps_per_execution` of a fit on cached features.

    At most one epoch per call: Keras's progress bar counts executions past
    the end of a shorter epoch ("32/3"). With a fixed `steps_per_epoch`, a
    divisor of it: Keras counts whole executions against the dataset's length.
    """
    per_call = min(32, per_epoch)
    if fixed_steps:
        per_call = max(d for d in range(1, per_call + 1) if per_epoch % d == 0)
    return per_call


def _fit_stage_one(run, split, caches, steps_per_epoch, start, continuation, backup):
    """Stage 1 of `_fit_with_feature_cache`: the head side of `split` on the cache.

    Ends after `schedule.unfreeze_at_epoch` epochs, or, with `head_epochs="auto"`
    (`steps_per_epoch` set), once the loss has converged (`StageOneEnd`).
    """
    model, schedule, resume = run.model, run.schedule, run.resume
    train_cache, val_cache = caches
    auto, stage_one = steps_per_epoch is not None, schedule.unfreeze_at_epoch
    batch, seed = train_cache.batch_sizes[0], run.settings.seed
    # Head steps on cached vectors take microseconds: run several per call, so
    # that Python overhead does not dominate. Epoch-level callbacks see no
    # difference.
    per_epoch = steps_per_epoch or math.ceil(train_cache.count / batch)
    per_call = _per_call(per_epoch, bool(steps_per_epoch))
    build_metrics(model, train_cache.others[0] if train_cache.others else None)
    if auto:
        # One epoch more than stage 1 runs: Keras reads ahead of the last one.
        train_features = train_cache.stream(
            batch, (stage_one + 1) * steps_per_epoch, seed, start * steps_per_epoch
        )
        done = resume.history if resume else {}
        end = StageOneEnd(
            stage_one,
            schedule,
            tolerance=0.01,
            losses=done.get("loss", [])[:start],
            val_losses=done.get("val_loss", [])[:start],
            min_fall=MIN_FALL_NATS if is_cross_entropy(run.loss) else 0.0,
        )
    else:
        train_features = train_cache.dataset(batch, shuffle=True, seed=seed)
        if resume is not None:
            resume.skip_passes(train_features, start)
        end = StageOneEnd(stage_one)
    fit_part(
        split.trainable,
        train_features,
        optimizer=run.optimizer,
        loss=run.loss,
        metrics=run.metrics,
        jit_compile=model.jit_compile,
        steps_per_execution=per_call,
        callbacks=[
            end,
            continuation,
            *backup,
            *stage_progbar(run.callbacks, run.schedule),
        ],
        validation_data=val_cache.dataset(batch, shuffle=False) if val_cache else None,
        epochs=stage_one + run.fine_tune_epochs,
        initial_epoch=start,
        steps_per_epoch=steps_per_epoch,
        **run.fit_args,
    )
    if end.converged_at is None or not run.fit_args.get("verbose"):
        return
    steps = (end.converged_at + 1) * steps_per_epoch
    if end.why == "validation loss":
        best = min(end.val_losses)
        print(
            f"tltf: stage 1 stopped after {end.converged_at + 1} epochs "
            f"({steps:,} steps): the validation loss stopped falling (best "
            f"{best:.4g}, at epoch {end.val_losses.index(best) + 1}; training loss "
            f"{end.losses[-1]:.4g})."
        )
    else:
        fall = f"1% or {end.min_fall:g}" if end.min_fall else "1%"
        print(
            f"tltf: stage 1 converged after {end.converged_at + 1} epochs "
            f"({steps:,} steps; training loss {end.losses[-1]:.4g}, falling by less "
            f"than {fall} an epoch)."
        )
