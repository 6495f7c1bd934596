"""`FineTuneSettings`: what a `fine_tune` run trains, in one frozen object.

One definition serves every place that spells out the two-stage schedule:
`tltf.fine_tune` (its keyword arguments are these fields), the `[schedule]`
section of a run config (`tltf.config.ScheduleConfig.settings()`), the `tltf
train` flags, the resume fingerprint of a backup folder (`fingerprint`) and the
tuner (each trial is the hypermodel's settings with the searched values
`replace`d). Every field is checked once, here, when the object is made, so a bad
value fails before anything trains, whichever way it came in.

Example:

>>> settings = tltf.FineTuneSettings(unfreeze=2, fine_tune_lr=1e-5)
>>> tltf.fine_tune(model, train, val, settings)
>>> tltf.fine_tune(model, train, val, settings, fine_tune_epochs=3)  # one change
"""

from __future__ import annotations

import dataclasses
import math
import re
from numbers import Real
from typing import Any

import keras

from tltf._checks import check_choice, check_keywords, check_positive_int, is_int
from tltf.compute import check_jit_compile
from tltf.errors import ConfigError, suggest
from tltf.freezing import check_bn_policy
from tltf.regularizers import check_regularize

#: The words `unfreeze` takes besides a number and a mapping.
UNFREEZE_WORDS = ("auto", "all")
UNFREEZE_KEYS = ("blocks", "layers", "names", "range")
#: How stage 2's learning rate is shared among blocks (`lr_policy`).
LR_POLICIES = ("uniform", "auto_rgn")

#: From this many training images, and `LARGE_SET_PER_CLASS` a class for a
#: classifier, `unfreeze="auto"` fine-tunes every block and `fine_tune_lr="auto"`
#: is `LARGE_SET_LR`; below either, the probe's depth at `SMALL_SET_LR`
#: (benchmarks/RESULTS.md, "Stage 2 on a large training set").
LARGE_SET_IMAGES = 1000
#: Images a class (on average) a classifier's large set needs as well: 1,000
#: images of 100 classes gained nothing from every block, 1,500 did.
LARGE_SET_PER_CLASS = 15
#: A classifier's large set keeps the probe's depth (at `SMALL_SET_LR`) when the
#: probe's best block already scores this leave-one-out accuracy: on real VGG16
#: (0.966 and 0.982) every block cost 8.6x and 5.2x the time for the same test
#: accuracy; every set that gained from every block probed at 0.92 or less.
SATURATED_PROBE = 0.95
#: A large set's stage 2 through every block also needs a base with
#: normalization layers (BatchNormalization, LayerNormalization or
#: GroupNormalization); one without any keeps the probe's depth, at
#: `SMALL_SET_LR`. On VGG16 (real weights, none) every block never beat the
#: probe's depth in four large sets, at 5.2x to 8.6x the time, and 1e-4 for
#: every block did no better than 3e-4 (benchmarks/RESULTS.md, "A base without
#: normalization layers"). False: every base is treated alike.
LARGE_SET_NEEDS_NORMALIZATION = True
#: `fine_tune_lr="auto"` below `LARGE_SET_IMAGES` training images, and from it.
SMALL_SET_LR = 1e-4
LARGE_SET_LR = 3e-4


def is_large_set(images: int | None, classes: int | None = None) -> bool:
    """Whether a training set of `images` (None: not known without a pass) gets
    the large set's stage 2: `LARGE_SET_IMAGES` or more and, for a classifier
    of `classes` classes (None: regression or multi-label), `LARGE_SET_PER_CLASS`
    or more a class on average."""
    if images is None or images < LARGE_SET_IMAGES:
        return False
    return not classes or images >= LARGE_SET_PER_CLASS * classes


def check_epochs(value, name: str, allow_auto: bool = False):
    """Validates a number of epochs: an integer >= 0 (or "auto")."""
    if allow_auto and isinstance(value, str) and value == "auto":
        return value
    if not is_int(value) or value < 0:
        auto = " or 'auto'" if allow_auto else ""
        raise ConfigError(
            f"Expected {name} to be an integer >= 0{auto}. Received: {name}={value!r}"
        )
    return int(value)


def check_lr(
    value,
    name: str,
    allow_none: bool = False,
    allow_find: bool = False,
    allow_auto: bool = False,
):
    """Validates a learning rate: a positive finite number or a LR schedule.

    With `allow_find`, the string "find" (run `tltf.find_lr` when the stage
    starts) is accepted too; with `allow_auto`, "auto" (set by the size rule,
    `is_large_set`).
    """
    if value is None and allow_none:
        return value
    if allow_find and isinstance(value, str) and value == "find":
        return value
    if allow_auto and isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not (math.isfinite(value) and value > 0)
    ):
        find = ", 'find'" if allow_find else ""
        find += ", 'auto'" if allow_auto else ""
        raise ConfigError(
            f"Expected {name} to be a positive number (e.g. 1e-4){find} or a "
            f"keras.optimizers.schedules.LearningRateSchedule. Received: {name}={value!r}"
        )
    return float(value)


def check_unfreeze(value, name: str = "unfreeze", allow_auto: bool = True):
    """Validates what stage 2 unfreezes, as far as it can be without a model.

    An integer >= 0 (top blocks), "all", "auto", or a mapping with one key:
    `{"blocks": k}`, `{"layers": n}`, `{"names": regex}` or `{"range": [first,
    last]}` (a contiguous range of blocks, both ends included, each a block name
    or a 0-based position from the bottom; negative positions count from the top).
    Whether it fits the base is checked by `tltf.freezing.resolve_unfreeze` once
    the model is known.
    """
    words = UNFREEZE_WORDS if allow_auto else ("all",)
    if isinstance(value, str):
        if value in words:
            return value
        raise ConfigError(
            f"Expected {name} as a number of top blocks, {', '.join(map(repr, words))}, "
            "or a mapping such as {'layers': 20} or {'names': 'block_1[0-9]'}. "
            f"Received: unfreeze={value!r}.{suggest(value, words)}"
        )
    if is_int(value):
        if value < 0:
            raise ConfigError(
                f"Expected {name} >= 0 (top blocks to train). Received: unfreeze={value!r}"
            )
        return int(value)
    if (
        not isinstance(value, dict)
        or len(value) != 1
        or not set(value) <= set(UNFREEZE_KEYS)
    ):
        raise ConfigError(
            f"Expected {name} as an int, 'all', or a mapping with one key, "
            "{'blocks': k}, {'layers': n}, {'names': regex} or {'range': [first, "
            f"last]}}. Received: unfreeze={value!r}"
        )
    ((key, inner),) = value.items()
    if key == "range":
        return {"range": check_block_range(inner, name)}
    if key == "names":
        if not isinstance(inner, str):
            raise ConfigError(
                f"Expected {name}.names to be a regex of block names, e.g. "
                f"{{'names': 'block_1[0-9]'}}. Received: unfreeze={value!r}"
            )
        try:
            re.compile(inner)
        except re.error as error:
            raise ConfigError(
                f"Invalid {name}.names regex {inner!r}: {error}. Expected a regex of "
                "block names, e.g. {'names': 'block_1[0-9]'}."
            ) from None
    elif not ((is_int(inner) and inner >= 0) or (key == "blocks" and inner == "all")):
        also = " or 'all'" if key == "blocks" else ""
        raise ConfigError(
            f"Expected {name}.{key} to be an integer >= 0{also}. Received: "
            f"unfreeze={value!r}"
        )
    return dict(value)


def check_block_range(value, name: str = "unfreeze") -> tuple:
    """Validates `[first, last]` of an unfreeze range: block names or positions."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, str) or is_int(v) for v in value)
    ):
        raise ConfigError(
            f"Expected {name}.range as [first, last]: two block names or 0-based "
            "block positions (negative counts from the top), both ends included, "
            "e.g. {'range': [0, 1]} for the two bottom blocks or {'range': "
            f"['block3', 'block4']}}. Received: {name}={{'range': {value!r}}}"
        )
    return tuple(v if isinstance(v, str) else int(v) for v in value)


def check_wise(value, name: str = "wise"):
    """Validates `wise`: None, a number in [0, 1] or "auto"."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, Real) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ConfigError(
        f"Expected {name} as None, 'auto' or a number in [0, 1] (the weight of the "
        f"fine-tuned model; 0 is stage 1's). Received: {name}={value!r}"
    )


def check_lr_decay(value):
    """Validates a per-block rate decay: None or a number in (0, 1]."""
    if value is not None and not (
        isinstance(value, Real) and not isinstance(value, bool) and 0 < value <= 1
    ):
        raise ConfigError(f"Expected lr_decay in (0, 1]. Received: lr_decay={value!r}")
    return value


def check_lr_policy(lr_policy: str, lr_decay) -> str:
    """Validates `lr_policy`; "auto_rgn" sets every block's rate, so no `lr_decay`."""
    check_choice(lr_policy, LR_POLICIES, "lr_policy")
    if lr_policy == "auto_rgn" and lr_decay not in (None, 1):
        raise ConfigError(
            "lr_policy='auto_rgn' sets every block's rate itself; it cannot be "
            f"combined with lr_decay={lr_decay!r}. Drop one of the two."
        )
    return lr_policy


def check_class_weight(value, name: str = "class_weight"):
    """Validates class weights as far as they can be without a model."""
    if value is None or (isinstance(value, str) and value == "balanced"):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"Expected {name} as a dict, 'balanced' or None (a dict maps class "
            f"indices to weights). Received: {value!r}"
        )
    return dict(value)


def resolve_loss(loss, name: str = "loss"):
    """A loss given by name, as Keras resolves it; anything else as it is.

    Raises:
        ConfigError: A name that is not a Keras loss, with the closest ones.
    """
    if not isinstance(loss, str) or loss == "auto":
        return loss
    try:
        return keras.losses.get(loss)
    except ValueError:
        names = [n for n in dir(keras.losses) if n.islower() and n[0] != "_"]
        # In code a Loss or a function will do; in a config file, a name.
        example = "a Keras loss name such as 'sparse_categorical_crossentropy'"
        if name == "loss":
            fix = (
                f"Pass 'auto' (the task's own loss), {example}, a "
                "keras.losses.Loss, or a function (y_true, y_pred)."
            )
        else:
            fix = f"Pass 'auto' (the task's own loss) or {example}."
        where = "" if name == "loss" else f" in {name}"
        raise ConfigError(
            f"Unknown loss {loss!r}{where}. {fix}{suggest(loss, names)}"
        ) from None


def check_fraction(value, name: str) -> float:
    """A number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ConfigError(f"Expected {name} in [0, 1). Received: {name}={value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FineTuneSettings:
    """Everything that decides what a `fine_tune` run trains.

    The defaults are chosen for small data (see benchmarks/RESULTS.md):

    - Stage 1 runs on cached base features until the head's training loss has
      converged (or, with validation data, its validation loss stops falling),
      within `head_steps` optimizer steps: a converged linear probe, then
      fine-tuning (LP-FT, Kumar et al. 2022). The head's features are
      standardised first (`tltf.layers.Standardization`, saved in the model).
    - `unfreeze="auto"` unfreezes what a linear probe of every block recommends
      (`tltf.probe_blocks`, leave-one-out on the training images, one forward
      pass), and says so in one line; it also says when a probe on the raw
      pixels does as well as the base. From 1,000 training images it
      fine-tunes every block, and `fine_tune_lr="auto"` rises from 1e-4 to
      3e-4.
    - `keep_best=True`: stage 2 never ends worse than stage 1 (`tltf.guard`).

    Attributes:
        head_epochs: int or "auto". Stage-1 epochs. "auto": with the feature
            cache, epochs of `max(one pass, head_steps / 20)` steps until the
            training loss improves by less than 1% (or, for a cross-entropy,
            0.001: `tltf.cache.MIN_FALL_NATS`) twice in a row, the validation
            loss (if any) has not fallen for two epochs, or `head_steps` steps
            have run; without the cache, enough epochs for
            `head_steps` steps, 2 to 10. Defaults to "auto".
        fine_tune_epochs: int or "auto". Stage-2 epochs. "auto": enough epochs
            for about 1,000 optimizer steps, 2 to 10 (10 for a few hundred
            images, 2 for 60,000). Defaults to "auto".
        head_lr: float, LearningRateSchedule or "find". Stage-1 rate. "find"
            runs `tltf.find_lr(stage="head")` on the training data first and
            uses its suggestion (one line reports it). Defaults to 1e-3.
        fine_tune_lr: float, LearningRateSchedule, "auto", "find" or None.
            Stage-2 rate. "auto": 1e-4 on fewer than 1,000 training images,
            3e-4 from 1,000 (`LARGE_SET_IMAGES`; the held-out slice counts)
            when a classifier also has 15 a class (`LARGE_SET_PER_CLASS`) and
            the base has normalization layers (`LARGE_SET_NEEDS_NORMALIZATION`),
            unless `unfreeze="auto"` keeps the probe's depth there (see below).
            "find" runs `tltf.find_lr(stage="fine_tune")` when stage 2 begins,
            on the model stage 1 trained; None keeps the stage-1 optimizer's.
            Defaults to "auto".
        unfreeze: int (top k blocks), "all", "auto", `{"layers": n}` or
            `{"names": regex}`. "auto" asks the linear probe (see above; by
            accuracy for a classifier, by R² for regression and multi-label)
            on fewer than 1,000 training images, and fine-tunes every block
            from 1,000 (`LARGE_SET_IMAGES`; for a classifier, from 15 a class
            too, `LARGE_SET_PER_CLASS`; on a base with normalization layers,
            `LARGE_SET_NEEDS_NORMALIZATION`; unless the probe's best block
            already scores `SATURATED_PROBE`), where the whole base gained most
            (benchmarks/RESULTS.md, "Stage 2 on a large training set"); the
            rate is then 3e-4.
            Defaults to "auto".
        head_steps: int. The optimizer-step budget of `head_epochs="auto"`.
            0: none after a ridge start, so stage 1 is the closed-form ridge
            head alone (no epochs) and stage 2 starts from it; measured in
            benchmarks/RESULTS.md ("A closed-form stage 1"): better on the demo
            base, not on VGG16, so not the default. Defaults to 2000.
        head_init: str. "ridge" starts a linear head from the closed-form
            ridge fit on the standardised training features (a classifier, a
            regression or one per label; see `tltf.schedule.prepare_head`); a
            ridge-started regression or multi-label head then trains with an
            L2 penalty on its kernel (`head_l2`). "random" from Keras's
            initialisation. Defaults to "ridge".
        head_l2: "auto" or a number >= 0. An L2 penalty on the head's output
            kernel while `fine_tune` trains (`tltf.regularizers.HeadL2`, on
            the scale of the compiled loss; never in the saved model). "auto":
            a ridge-started regression head gets the ridge's own strength (its
            start is then where the penalised loss is lowest), a ridge-started
            multi-label head scikit-learn's default (C=1 per label, `1 / (2 *
            images * labels)`), a classifier none (see benchmarks/RESULTS.md,
            "The head's L2"). "auto" comes from the ridge start, so a call
            that starts no head (`head_epochs=0`, a resumed stage 2 excepted)
            trains without one. A number puts that strength on any head; 0
            none. Defaults to "auto".
        keep_best: bool, "holdout" or "features". Score the model at the end of
            stage 1 and after each stage-2 epoch and end with the best weights;
            one line says which (see `tltf.guard`). The score: the validation
            loss when there is validation data, and then every stage-1 epoch
            is a candidate too (a head that began to overfit before stage 1
            stopped is put back). Without it, True means
            "holdout" where it applies and "features" elsewhere:
            "holdout" keeps a slice of the training images (20%, at most
            1,000 images; stratified for a classifier, at least 1 per class)
            out of both stages and scores the model on it (accuracy, where a
            later epoch must score higher to be kept, so that stage 2 is
            skipped when stage 1 classifies the whole slice; label accuracy for
            multi-label; mean squared error for regression); at
            the end it is handed back: the linear head is refit in closed form
            on every training image, on the base the guard kept, and trained
            on from there as stage 1 trained it where the run set its own
            `loss`, `label_smoothing` or a numeric `head_l2` (needs
            `(images, labels)` arrays, a `load_data` bundle or a
            `tf.data.Dataset`; a dataset or a TFDS bundle is read into memory
            for it, where it fits in `tltf.guard.HOLDOUT_READ_BYTES` (1 GiB)
            and gives the same images every pass; 2 or more images per class
            of a classifier or 10 or more
            images for other tasks, and, for True, a linear ridge-started
            head, and a task other than multi-label, where it was measured to
            cost more than it saves);
            "features" scores the leave-one-out accuracy of a ridge probe on
            the training images' features (no image held out; for regression
            and multi-label the leave-one-out R² of ridge regression). Measured in benchmarks/RESULTS.md ("The held-out guard",
            "Regression and multi-label").
            Defaults to True.
        fine_tune_patience: int or None. End stage 2 once this many stage-2
            epochs in a row were not kept by `keep_best` (counted from stage
            1's end, or the last epoch kept), as Keras's
            `EarlyStopping(patience=..., restore_best_weights=True)` would; the
            run ends with the best weights, as always, and the `keep_best` line
            says where it stopped. It needs `keep_best`. Measured in
            benchmarks/RESULTS.md ("Stage 2 ended by patience"): on VGG16 at
            k = 10, patience 3 took 0.51x to 0.63x the time with the same model
            in 9 of 9 runs; on the demo base it stopped 3 of 18 runs before an epoch the
            guard would have kept (0.2 to 1.3 points lower). Defaults to None:
            every stage-2 epoch runs.
        bn: str. "frozen", "affine", "train" or "adapt" (see
            `tltf.freezing`). "adapt" re-estimates the base's BatchNorm
            statistics on the training images before stage 1 (AdaBN, with
            `tltf.recalibrate_bn`), then keeps them frozen. Defaults to
            "frozen".
        optimizer: str or Optimizer. A Keras optimizer name or instance; an
            instance keeps its own learning rate in stage 1. Stage 2 clones it.
            Defaults to "adam".
        loss: A Keras loss, or "auto" for the task's. Keras's own losses are
            checked against the labels before anything runs: for a categorical
            loss, class indices become one-hot rows (as for
            `label_smoothing`); one-hot rows for a sparse loss are a
            ConfigError. Defaults to "auto".
        metrics: A list of Keras metrics, one metric (a name or a
            `keras.metrics.Metric`), or "auto" for the task's. Defaults to
            "auto".
        lr_decay: float or None. Discriminative rates per block (see
            `FineTuneSchedule`). Defaults to None.
        gradual_every: int or None. Add one unfrozen block every n epochs.
            Defaults to None.
        lr_policy: str. How stage 2's rate is shared among blocks: "uniform"
            (one rate, or `lr_decay`'s), or "auto_rgn": every step, each block's
            rate is scaled by its relative gradient norm `||grad|| / ||w||`
            over the largest block's (Auto-RGN, Lee et al. 2023; see
            `tltf.optimizers.set_rgn_rates`); one device only, not with
            `lr_decay`. Defaults to "uniform".
        regularize: None, "l2sp" or `{"l2sp": alpha}`. L2-SP (Li et al. 2018):
            stage 2 adds `alpha * sum((w - w0) ** 2)` over the unfrozen base
            weights to the loss, pulling them toward the weights `fine_tune`
            started from instead of toward zero; "l2sp" is alpha 0.01 (see
            `tltf.regularizers`). Defaults to None.
        wise: None, a number in [0, 1] or "auto". WiSE-FT (Wortsman et al.
            2022): the run ends at `(1 - wise) * stage 1 + wise * fine-tuned`,
            every weight mixed; "auto" tries 0, 0.25, 0.5, 0.75 and 1 on the
            validation data or the guard's held-out slice (see `tltf.wise`).
            Defaults to None (the fine-tuned weights as they are).
        class_weight: dict, "balanced" or None. "balanced" weighs each class by
            `n_samples / (n_classes * count)` from the training labels. With
            sample weights in the data too, each image weighs their product.
            Defaults to None.
        augment: None, True or a Keras layer. Augmentation applied to training
            images only (in the tf.data pipeline, so the saved model stays
            clean); True uses `tltf.data.augmentation()`. Defaults to None.
        label_smoothing: float. Label smoothing of the task's own loss
            (`loss="auto"`; a loss of your own takes its own smoothing).
            Defaults to 0.
        batch_size: int. Batch size for array inputs (and unbatched
            datasets). A batched dataset keeps its own batches, also where
            it is read into memory for the guard. Defaults to 32.
        seed: int or None. Seeds what `fine_tune` draws itself: the shuffling of
            array inputs, the cached features' reshuffling, `augment=True`'s
            layer and the LR finder's batches. Not the head's initial weights
            or dropout: call `keras.utils.set_random_seed` before `build_model`
            for those (see docs/resume.md, "What a seed fixes"). Defaults to
            None: those draws follow the global random state, as Keras's `fit`
            shuffling does (`keras.utils.set_random_seed` fixes them too).
        cache_features: bool or "auto". Stage 1 computes the frozen base's
            features once and trains the head on them (see `tltf.cache`); the
            History, callbacks and final model are the same as without it.
            "auto" uses it unless the data repeats forever, `steps_per_epoch` is
            set or a BackupAndRestore callback is given. The cached features are
            reshuffled every epoch (with `seed`); for array inputs the batches
            are then exactly those of an uncached run. Defaults to "auto".
        jit_compile: "auto", True or False. XLA compilation of the training
            step, passed to `model.compile`. "auto" is Keras's choice (XLA on
            GPUs, off on CPU-only machines and under tf.distribute). Defaults to
            "auto".
    """

    head_epochs: int | str = "auto"
    fine_tune_epochs: int | str = "auto"
    head_lr: Any = 1e-3
    fine_tune_lr: Any = "auto"
    unfreeze: int | str | dict = "auto"
    head_steps: int = 2000
    head_init: str = "ridge"
    head_l2: Any = "auto"
    keep_best: bool | str = True
    fine_tune_patience: int | None = None
    bn: str = "frozen"
    optimizer: Any = "adam"
    loss: Any = "auto"
    metrics: Any = "auto"
    lr_decay: float | None = None
    gradual_every: int | None = None
    lr_policy: str = "uniform"
    regularize: Any = None
    wise: Any = None
    class_weight: Any = None
    augment: Any = None
    label_smoothing: float = 0.0
    batch_size: int = 32
    seed: int | None = None
    cache_features: bool | str = "auto"
    jit_compile: bool | str = "auto"

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        set_("head_epochs", check_epochs(self.head_epochs, "head_epochs", True))
        set_(
            "fine_tune_epochs",
            check_epochs(self.fine_tune_epochs, "fine_tune_epochs", True),
        )
        if self.head_epochs == 0 and self.fine_tune_epochs == 0:
            raise ConfigError(
                "Nothing to train: head_epochs and fine_tune_epochs are both 0."
            )
        set_("head_lr", check_lr(self.head_lr, "head_lr", allow_find=True))
        set_(
            "fine_tune_lr",
            check_lr(
                self.fine_tune_lr,
                "fine_tune_lr",
                allow_none=True,
                allow_find=True,
                allow_auto=True,
            ),
        )
        set_("unfreeze", check_unfreeze(self.unfreeze))
        if not is_int(self.head_steps) or self.head_steps < 0:
            raise ConfigError(
                "Expected head_steps to be an integer >= 0 (0: the closed-form "
                f"head only). Received: head_steps={self.head_steps!r}"
            )
        check_choice(self.head_init, ("ridge", "random"), "head_init")
        if self.head_l2 != "auto" and not (
            isinstance(self.head_l2, Real)
            and not isinstance(self.head_l2, bool)
            and math.isfinite(self.head_l2)
            and self.head_l2 >= 0
        ):
            raise ConfigError(
                "Expected head_l2 as 'auto' or a number >= 0 (0: no penalty on the "
                f"head). Received: head_l2={self.head_l2!r}"
            )
        if not isinstance(self.keep_best, bool) and self.keep_best not in (
            "holdout",
            "features",
        ):
            raise ConfigError(
                "Expected keep_best as True, False, 'holdout' or 'features'. "
                f"Received: keep_best={self.keep_best!r}"
            )
        if self.fine_tune_patience is not None:
            if not is_int(self.fine_tune_patience) or self.fine_tune_patience < 1:
                raise ConfigError(
                    "Expected fine_tune_patience as an int >= 1 (the stage-2 "
                    "epochs in a row that keep_best may not keep before stage 2 "
                    "ends) or None (every stage-2 epoch runs). Received: "
                    f"fine_tune_patience={self.fine_tune_patience!r}"
                )
            set_("fine_tune_patience", int(self.fine_tune_patience))
            if self.keep_best is False:
                raise ConfigError(
                    f"fine_tune_patience={self.fine_tune_patience} counts the "
                    "stage-2 epochs that keep_best did not keep, and keep_best is "
                    "False. Set keep_best=True (or 'holdout' or 'features'), or "
                    "pass keras.callbacks.EarlyStopping in callbacks instead."
                )
        check_bn_policy(self.bn)
        if not isinstance(self.optimizer, (str, keras.optimizers.Optimizer)):
            raise ConfigError(
                "Expected optimizer as a Keras optimizer name (e.g. 'adam') or a "
                f"keras.optimizers.Optimizer. Received: optimizer={self.optimizer!r}"
            )
        set_("lr_decay", check_lr_decay(self.lr_decay))
        if self.gradual_every is not None:
            set_(
                "gradual_every", check_positive_int(self.gradual_every, "gradual_every")
            )
        check_lr_policy(self.lr_policy, self.lr_decay)
        if isinstance(self.regularize, dict):
            set_("regularize", dict(self.regularize))
        check_regularize(self.regularize)
        set_("wise", check_wise(self.wise))
        set_("class_weight", check_class_weight(self.class_weight))
        if not (
            self.augment is None
            or isinstance(self.augment, bool)
            or callable(self.augment)
        ):
            raise ConfigError(
                "Expected augment to be None, True or a Keras layer. "
                f"Received: augment={self.augment!r}"
            )
        set_("label_smoothing", check_fraction(self.label_smoothing, "label_smoothing"))
        set_("batch_size", check_positive_int(self.batch_size, "batch_size"))
        if self.seed is not None and not is_int(self.seed):
            raise ConfigError(
                f"Expected seed as an integer or None. Received: seed={self.seed!r}"
            )
        if not any(
            self.cache_features is v
            or (isinstance(v, str) and self.cache_features == v)
            for v in (True, False, "auto")
        ):
            raise ConfigError(
                "Expected cache_features in (True, False, 'auto'). Received: "
                f"{self.cache_features!r}"
            )
        check_jit_compile(self.jit_compile)

    def replace(self, **changes) -> FineTuneSettings:
        """A copy with some fields changed (checked like the original).

        Raises:
            ConfigError: for a name that is not a field, with the closest one.
        """
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ConfigError(
                f"FineTuneSettings has no setting {unknown[0]!r}."
                f"{suggest(unknown[0], FIELDS, n=1)} Settings: {', '.join(FIELDS)}."
            )
        return dataclasses.replace(self, **changes)

    def fingerprint(self, **resolved) -> dict[str, Any]:
        """The settings that decide what a run trains, for a resume check.

        A backup folder (`fine_tune(backup_dir=)`) is continued only by a call
        with the same fingerprint. `resolved` gives values known only once the
        data and model are (an "auto" epoch count, the compiled optimizer and
        loss). The seed, batch size, cache and XLA settings are not part of it:
        they change how the run computes, not what it trains.
        """
        out = {name: getattr(self, name) for name in _FINGERPRINT}
        out.update(resolved)
        return out

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults, by name."""
        return {
            name: getattr(self, name)
            for name in FIELDS
            if not _same(getattr(self, name), _DEFAULTS[name])
        }


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


#: Every setting's name, in order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FineTuneSettings))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FineTuneSettings)}
_FINGERPRINT = (
    "head_epochs",
    "fine_tune_epochs",
    "head_steps",
    "head_init",
    "head_l2",
    "keep_best",
    "fine_tune_patience",
    "head_lr",
    "fine_tune_lr",
    "unfreeze",
    "bn",
    "lr_decay",
    "gradual_every",
    "lr_policy",
    "regularize",
    "wise",
    "optimizer",
    "loss",
)


def defaults() -> dict[str, Any]:
    """Every setting's default, by name (the defaults of `fine_tune`)."""
    return dict(_DEFAULTS)


#: The `model.fit` arguments that `fine_tune` passes on (it sets the others).
FIT_ARGUMENTS = (
    "steps_per_epoch",
    "validation_steps",
    "validation_freq",
    "initial_epoch",
)


#: `model.fit` arguments that `fine_tune` does not take, and what to use instead.
FIT_INSTEAD = {
    "epochs": "It trains two stages: head_epochs (stage 1, the head on the frozen "
    "base) and fine_tune_epochs (stage 2), both 'auto' by default (sized in "
    "optimizer steps).",
    "x": "It takes the training data as one argument: fine_tune(model, (x, y)), or "
    "a tf.data.Dataset of (image, label) pairs.",
    "sample_weight": "The weights go with the data: fine_tune(model, (x, y, "
    "sample_weight)), or a tf.data.Dataset of (image, label, weight).",
}
FIT_INSTEAD["y"] = FIT_INSTEAD["x"]


def split_kwargs(
    settings: FineTuneSettings | None, kwargs: dict[str, Any], caller: str = "fine_tune"
) -> tuple[FineTuneSettings, dict[str, Any]]:
    """`fine_tune`'s settings and `model.fit` arguments from its keywords.

    Keywords that name a setting change it (`settings` itself is not changed);
    the `FIT_ARGUMENTS` go to `fit`.

    Raises:
        ConfigError: for any other keyword, with the closest name.
    """
    if settings is None:
        settings = FineTuneSettings()
    elif not isinstance(settings, FineTuneSettings):
        raise ConfigError(
            f"Expected settings as a tltf.FineTuneSettings or None. Received: "
            f"settings={settings!r}. Pass single settings as keywords instead, e.g. "
            f"{caller}(model, train, head_epochs=5)."
        )
    for name, instead in FIT_INSTEAD.items():
        if name in kwargs:
            raise ConfigError(
                f"{caller}() got {name}=, an argument of model.fit that it does not "
                f"take. {instead}"
            )
    check_keywords(
        kwargs,
        (*FIELDS, *FIT_ARGUMENTS),
        caller,
        f"It takes the fields of tltf.FineTuneSettings ({', '.join(FIELDS)}) and "
        f"the model.fit arguments {', '.join(FIT_ARGUMENTS)}.",
    )
    changes = {k: v for k, v in kwargs.items() if k in FIELDS}
    fit = {k: v for k, v in kwargs.items() if k in FIT_ARGUMENTS}
    return (settings.replace(**changes) if changes else settings), fit
