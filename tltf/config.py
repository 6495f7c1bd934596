"""Configuration files of `tltf train` and `tltf tune`, as small frozen dataclasses.

A config mirrors the Python API in sections:

* `model`: the arguments of `tltf.build_model` (`base`, `input_shape`, `weights`,
  `weights_dir`, `head`, `task`, `num_classes`, `cut`);
* `data`: the arguments of `tltf.data.load_data` (`train`, `val`, split strings,
  `image_size`, `resize`, `batch_size`, `seed`, ...) and `augment`;
* `schedule`: the arguments of `tltf.fine_tune` (`head_epochs`,
  `fine_tune_epochs`, `head_lr`, `fine_tune_lr`, `unfreeze`, `head_steps`,
  `keep_best`, `bn`, `lr_decay`, `label_smoothing`, `class_weight`, ...), with
  `fine_tune`'s own defaults and words ("auto", "find"), and what the run folder
  keeps as its best model (`monitor`, `mode`);
* `tune` (`tltf tune` only): the tuner, the number of trials and search-space
  overrides.

Files are YAML (`.yaml`/`.yml`, read with PyYAML's safe loader, without anchors
and aliases), TOML (`.toml`, read with `tomllib`) or JSON (`.json`). Unknown
sections and keys are rejected with the section's name, a "did you mean" and the
valid keys; values are type- and range-checked, and metric names are checked
against `LOGGED_METRICS`.
Command-line flags override file values (`merge`). The resolved config a run used
is written to its run folder as `config.yaml` and can be fed back in with
`--config`.

Example:

>>> config = TrainConfig.from_dict({
...     "model": {"base": "mobilenet_v2", "weights": None},
...     "data": {"train": "photos/", "val_fraction": 0.2, "image_size": 96},
...     "schedule": {"head_epochs": 5, "fine_tune_epochs": 5, "unfreeze": 3},
... })
>>> config.schedule.unfreeze
3
>>> TrainConfig.from_dict(load_config_file("run.yaml"))   # a file

Why about 1,000 lines: one dataclass per section, each checking its own keys
with messages that name the section and key; the YAML/TOML reading and the
`--set` syntax are small. The checks of a run's settings themselves live in
`tltf.settings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import yaml

from tltf._checks import is_int
from tltf._io import atomic_write_text
from tltf.errors import ConfigError, suggest
from tltf.heads import TASKS, HeadConfig
from tltf.layers import PREPROCESSING_MODES
from tltf.regularizers import check_regularize
from tltf.settings import (
    LR_POLICIES,
    FineTuneSettings,
    check_unfreeze,
    check_wise,
    resolve_loss,
)
from tltf.settings import defaults as settings_defaults

__all__ = [
    "CONFIG_SUFFIXES",
    "LOGGED_METRICS",
    "DataConfig",
    "ModelConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TuneConfig",
    "TuneSection",
    "dump_config",
    "load_config_file",
    "merge",
    "parse_source",
]

#: Config file suffixes and their formats.
CONFIG_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}

_RESIZE = ("stretch", "crop", "pad")
_BN = ("frozen", "affine", "train", "adapt")
_MODES = ("auto", "min", "max")
_TFDS_SOURCE = re.compile(r"^tfds:(?P<name>[^\[\]]+?)(?:\[(?P<split>.*)\])?$")
#: Integers in a config (sizes, epochs, steps, seeds, ...) stay below this bound.
_MAX_INT = 2**31
#: The metrics a run logs, by task (`tltf.schedule.default_loss_and_metrics`);
#: Keras logs each with a `val_` prefix too when there is validation data.
LOGGED_METRICS = {
    "multiclass": ("loss", "accuracy"),
    "binary": ("loss", "accuracy"),
    "multilabel": ("loss", "accuracy"),
    "regression": ("loss", "mae"),
}


# -- value checks ------------------------------------------------------------------
def _where(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _type_name(tp) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a mapping",
        list: "a list",
        tuple: "a list",
        type(None): "null",
    }
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is Any:
        return True
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return is_int(value)
    if tp is float:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_matches(v, inner) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _words(tp) -> list[str]:
    """The literal words a type allows, e.g. ["auto"] for `int | Literal["auto"]`."""
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    return [w for a in typing.get_args(tp) for w in _words(a)]


def _check_fields(obj, section: str) -> None:
    """Type-checks every field of a config dataclass against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        if field.name == "head" or not field.init:
            continue
        value = getattr(obj, field.name)
        tp = hints[field.name]
        if isinstance(value, str) and not _matches(value, tp) and _matches(1.0, tp):
            # PyYAML reads 1e-3 (no dot) as a string: take it as the number it is.
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                object.__setattr__(obj, field.name, value)
        if not _matches(value, tp):
            hint = suggest(value, _words(tp)) if isinstance(value, str) else ""
            raise ConfigError(
                f"Expected {_where(section, field.name)} to be {_type_name(tp)}. "
                f"Received: {field.name}={value!r} ({type(value).__name__}).{hint}"
            )
        _below_max_int(value, section, field.name)
        # Lists from YAML/TOML become tuples, so the configs stay hashable.
        if isinstance(value, list):
            object.__setattr__(obj, field.name, tuple(value))


def _below_max_int(value, section: str, key: str) -> None:
    """Integers (also in lists) below `_MAX_INT`: 1e20 epochs is a typo, not a plan."""
    many = isinstance(value, (list, tuple))
    if any(is_int(v) and abs(v) >= _MAX_INT for v in (value if many else [value])):
        what = "to hold integers" if many else "to be an integer"
        raise ConfigError(
            f"Expected {_where(section, key)} {what} below 2**31 ({_MAX_INT - 1}). "
            f"Received: {key}={value!r}."
        )


def _choice(value, choices, section: str, key: str) -> None:
    if value not in choices:
        raise ConfigError(
            f"Expected {_where(section, key)} to be one of {list(choices)}. "
            f"Received: {key}={value!r}.{suggest(str(value), choices)}"
        )


def _at_least(value, low, section: str, key: str, word: str | None = None) -> None:
    if _is_number(value) and value < low:
        alternative = f" or {word!r}" if word else ""
        raise ConfigError(
            f"Expected {_where(section, key)} >= {low}{alternative}. "
            f"Received: {key}={value!r}"
        )


def _positive(value, section: str, key: str, word: str | None = None) -> None:
    if _is_number(value) and not (math.isfinite(value) and value > 0):
        alternative = f" or {word!r}" if word else ""
        raise ConfigError(
            f"Expected {_where(section, key)} to be a positive number (e.g. 1e-4)"
            f"{alternative}. Received: {key}={value!r}"
        )


def _from_mapping(cls, config, section: str, nested: dict | None = None):
    """Builds `cls` from a mapping, rejecting unknown keys with suggestions."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"Expected the [{section}] section to be a mapping of keys to values. "
            f"Received: {type(config).__name__} {config!r}."
        )
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in config:
        if key not in fields:
            raise ConfigError(
                f"Unknown key {key!r} in the [{section}] section.{suggest(key, fields)}"
                f" Valid keys: {', '.join(fields)}."
            )
    values = dict(config)
    for key, build in (nested or {}).items():
        if key in values:
            values[key] = build(values[key])
    return cls(**values)


# -- data sources -------------------------------------------------------------------------
def parse_source(text: str) -> tuple[str, str | None]:
    """Splits a data source string into (source, TFDS split or None).

    `"tfds:tf_flowers[train[:80%]]"` gives `("tfds:tf_flowers", "train[:80%]")`;
    folders and `.npz` paths are returned unchanged with no split.

    Example:

    >>> parse_source("tfds:tltf_shapes/target[test]")
    ('tfds:tltf_shapes/target', 'test')
    """
    if not text.startswith("tfds:"):
        return text, None
    match = _TFDS_SOURCE.match(text)
    if match is None or not match.group("name").strip():
        raise ConfigError(
            f"Could not read the TFDS source {text!r}. Write it as tfds:NAME or "
            "tfds:NAME[SPLIT], e.g. tfds:tf_flowers or tfds:tf_flowers[train[:80%]]."
        )
    split = match.group("split")
    return f"tfds:{match.group('name').strip()}", split or None


# -- sections ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `[model]` section: the arguments of `tltf.build_model`.

    Attributes:
        base: str or None. A registry name (`tltf bases`), "demo" (the base
            shipped with tltf) or the folder of a saved base (`tltf.save_base`,
            `tltf.pretrain`). Required by `train`. Defaults to None.
        input_shape: list of 3 int or None. `(height, width, channels)`. Defaults
            to None: `data.image_size`, else the base's own size.
        weights: str or None. "imagenet", None (random) or a weights file.
            Saved bases have their own: a run records None for them
            (`tltf.runs.resolve_base`). Defaults to "imagenet".
        weights_dir: str or None. Offline folder of ImageNet weight files.
            Defaults to None (`$TLTF_WEIGHTS_DIR`).
        head: HeadConfig. The head (a mapping of `HeadConfig` fields in files).
            Defaults to `HeadConfig()`.
        task: str. "multiclass", "binary", "multilabel" or "regression".
            Defaults to "multiclass".
        num_classes: int or None. Defaults to None: from the data.
        cut: int, str or None. Build on the output of this block (a name or an
            index into the block map) instead of the base's top; "auto" picks
            the block with the linear probe on the training data; see
            `build_model(cut=)`. Defaults to None (the whole base); a
            `TrainConfig` defaults to "auto" (a run has the data to probe).
        preprocessing: str or None. The preprocessing mode the base expects
            (`tltf.layers.PREPROCESSING_MODES`: "tf", "caffe", "torch", "unit"
            or "none"), e.g. "tf" for a model file trained on inputs in
            [-1, 1]. Defaults to None: the base's own (a registry family's, a
            saved base's, "none" for a model file).
    """

    base: str | None = None
    input_shape: tuple[int, ...] | None = None
    weights: str | None = "imagenet"
    weights_dir: str | None = None
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    task: str = "multiclass"
    num_classes: int | None = None
    cut: int | str | None = None
    preprocessing: str | None = None

    def __post_init__(self):
        _check_fields(self, "model")
        _choice(self.task, TASKS, "model", "task")
        if self.preprocessing is not None:
            _choice(self.preprocessing, PREPROCESSING_MODES, "model", "preprocessing")
        if self.input_shape is not None and (
            len(self.input_shape) != 3 or min(self.input_shape) < 1
        ):
            raise ConfigError(
                "Expected model.input_shape as [height, width, channels] of positive "
                f"integers, e.g. [96, 96, 3]. Received: input_shape={self.input_shape!r}"
            )
        if self.input_shape is not None and self.input_shape[2] != 3:
            height, width, _ = self.input_shape
            raise ConfigError(
                "Expected model.input_shape with 3 channels: a run reads every image "
                "as RGB (gray images are repeated to 3 channels, so they train as "
                f"they are). Received: input_shape={list(self.input_shape)!r}. Set "
                f"model.input_shape: [{height}, {width}, 3], or only data.image_size."
            )
        _at_least(self.num_classes, 1, "model", "num_classes")

    @classmethod
    def from_dict(cls, config: dict | None) -> ModelConfig:
        """Builds the section from a mapping (unknown keys are rejected)."""
        return _from_mapping(cls, config, "model", {"head": _head})


def _head(config) -> HeadConfig:
    if isinstance(config, HeadConfig):
        return config
    if config is not None and not isinstance(config, dict):
        raise ConfigError(
            "Expected model.head to be a mapping of head options, e.g. "
            f"{{dropout: 0.3}}. Received: {config!r}."
        )
    fields = [f.name for f in dataclasses.fields(HeadConfig)]
    for key in config or {}:
        if key not in fields:
            raise ConfigError(
                f"Unknown key {key!r} in the [model.head] section."
                f"{suggest(key, fields)} Valid keys: {', '.join(fields)}."
            )
    try:
        return HeadConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"Invalid [model.head] section: {error}") from None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The `[data]` section: what `tltf.data.load_data` reads.

    Attributes:
        train: str or None. The training data: `tfds:NAME` (optionally with a
            split, `tfds:NAME[train[:80%]]`), a folder of class subfolders, or a
            `.npz` file. Required by `train`. Defaults to None.
        train_split: str or None. TFDS split of the training data (instead of the
            `[...]` suffix). Defaults to None ("train").
        val: str or None. Validation data: a folder, a `.npz` file, or for TFDS
            `tfds:NAME[SPLIT]`. Defaults to None.
        val_split: str or None. TFDS split of the validation data, e.g. "test"
            or "train[80%:]". Defaults to None.
        val_fraction: float or None. Hold out this fraction of the training data
            for validation (seeded, stratified). Defaults to None.
        image_size: int, [height, width] or None. Images are resized to it.
            Defaults to None: the model's input size.
        resize: str. "stretch", "crop" or "pad". Defaults to "stretch".
        batch_size: int. Defaults to 32.
        seed: int or None. Split and shuffle seed. Defaults to 0.
        augment: bool. Augment training images (flip, rotation, zoom, ...).
            Defaults to False.
        cache: bool. Keep decoded images in memory. Defaults to True.
        strict: bool. Fail on unreadable files and on class folders without
            readable images, instead of skipping or dropping them. Defaults to
            False.
        data_dir: str or None. TFDS data folder. Defaults to None.
    """

    train: str | None = None
    train_split: str | None = None
    val: str | None = None
    val_split: str | None = None
    val_fraction: float | None = None
    image_size: int | tuple[int, ...] | None = None
    resize: str = "stretch"
    batch_size: int = 32
    seed: int | None = 0
    augment: bool = False
    cache: bool = True
    strict: bool = False
    data_dir: str | None = None

    def __post_init__(self):
        _check_fields(self, "data")
        _choice(self.resize, _RESIZE, "data", "resize")
        _at_least(self.batch_size, 1, "data", "batch_size")
        _at_least(self.seed, 0, "data", "seed")
        size = self.image_size
        if isinstance(size, tuple) and (len(size) != 2 or min(size) < 1):
            raise ConfigError(
                "Expected data.image_size as an integer or [height, width], e.g. 96 "
                f"or [96, 128]. Received: image_size={list(size)!r}"
            )
        if is_int(size) and size < 1:
            raise ConfigError(
                f"Expected data.image_size >= 1. Received: image_size={size!r}"
            )
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(
                "Expected data.val_fraction strictly between 0 and 1, e.g. 0.2. "
                f"Received: val_fraction={self.val_fraction!r}"
            )
        if self.val_fraction is not None and (self.val or self.val_split):
            raise ConfigError(
                "Give data.val_fraction or data.val/val_split, not both. Received: "
                f"val_fraction={self.val_fraction}, val={self.val!r}, "
                f"val_split={self.val_split!r}."
            )
        for key in ("train", "val"):
            text = getattr(self, key)
            if text is None:
                continue
            _, split = parse_source(text)
            given = getattr(self, f"{key}_split")
            if split is not None and given is not None and split != given:
                raise ConfigError(
                    f"data.{key} names the split {split!r} and data.{key}_split "
                    f"is {given!r}. Give the split once."
                )

    @classmethod
    def from_dict(cls, config: dict | None) -> DataConfig:
        """Builds the section from a mapping (unknown keys are rejected)."""
        return _from_mapping(cls, config, "data")

    @property
    def size(self) -> tuple[int, int] | None:
        """`image_size` as `(height, width)`, or None."""
        if self.image_size is None:
            return None
        if is_int(self.image_size):
            return (self.image_size, self.image_size)
        return tuple(self.image_size)

    def load_data_kwargs(self) -> dict[str, Any]:
        """The source and keyword arguments of `tltf.data.load_data`.

        Raises:
            ConfigError: `train` is missing, or TFDS and file sources are mixed.
        """
        if not self.train:
            raise ConfigError(
                "No training data: set data.train in the config or pass --train "
                "(tfds:NAME, a folder of class subfolders, or a .npz file)."
            )
        source, split = parse_source(self.train)
        split = split or self.train_split
        kwargs: dict[str, Any] = {}
        is_tfds = source.startswith("tfds:")
        if split is not None:
            if not is_tfds:
                raise ConfigError(
                    f"data.train_split={split!r} selects a TFDS split, but data.train "
                    f"is {self.train!r}, not tfds:NAME. Use data.val_fraction to "
                    "hold out part of a folder or .npz file."
                )
            kwargs["split"] = split
        validation = None
        if self.val is not None:
            val_source, val_split = parse_source(self.val)
            val_split = val_split or self.val_split
            if val_source.startswith("tfds:"):
                if val_source != source:
                    raise ConfigError(
                        f"data.val is {self.val!r} but data.train is {self.train!r}: "
                        "a TFDS validation set must be a split of the same dataset, "
                        "e.g. val: tfds:NAME[test]."
                    )
                if val_split is None:
                    raise ConfigError(
                        f"data.val={self.val!r} names no split. Write "
                        "tfds:NAME[SPLIT] or set data.val_split."
                    )
                validation = val_split
            else:
                if val_split is not None:
                    raise ConfigError(
                        f"data.val_split={val_split!r} is a TFDS split, but data.val "
                        f"is {self.val!r}."
                    )
                validation = val_source
        elif self.val_split is not None:
            if not is_tfds:
                raise ConfigError(
                    f"data.val_split={self.val_split!r} is a TFDS split, but "
                    f"data.train is {self.train!r}. Use data.val (a folder or .npz) "
                    "or data.val_fraction."
                )
            validation = self.val_split
        kwargs.update(
            validation=validation,
            validation_split=self.val_fraction,
            batch_size=self.batch_size,
            seed=self.seed,
            resize=self.resize,
            cache=self.cache,
            strict=self.strict,
            data_dir=self.data_dir,
        )
        return {"source": source, **kwargs}


def _check_metric(name: str, task: str, section: str, key: str) -> None:
    """A metric name the run will log for `task` (with or without `val_`)."""
    logged = LOGGED_METRICS.get(task, ("loss",))
    names = [*logged, *(f"val_{metric}" for metric in logged)]
    if name not in names:
        raise ConfigError(
            f"Expected {section}.{key} to be a metric that a {task} run logs: "
            f"{', '.join(names)}. Received: {key}={name!r}.{suggest(name, names, n=1)}"
        )


#: `fine_tune`'s defaults: the one source of the `[schedule]` defaults.
FINE_TUNE_DEFAULTS: dict[str, Any] = settings_defaults()


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The `[schedule]` section: the `tltf.FineTuneSettings` of `tltf.fine_tune`.

    Every default is `FineTuneSettings`' own (read from it, so the two cannot
    drift); the values below are those at the time of writing. `settings()`
    gives the section as a `FineTuneSettings`, which checks it once more as
    `fine_tune` would.

    Attributes:
        head_epochs: int or "auto". Stage-1 epochs (head only); "auto" trains
            the head on cached features until its training loss converges,
            within `head_steps` optimizer steps. Defaults to "auto".
        fine_tune_epochs: int or "auto". Stage-2 epochs; "auto" derives them
            from a step budget (about 10 for small data, fewer for large).
            Defaults to "auto".
        head_lr: float or "find". Stage-1 learning rate; "find" runs
            `tltf.find_lr` first. Defaults to 1e-3.
        fine_tune_lr: float, "auto" or "find". Stage-2 learning rate; "auto"
            is 1e-4, or 3e-4 from 1,000 training images (and 15 a class).
            Defaults to "auto".
        unfreeze: int, "all", "auto" or a mapping (`{blocks: n}`, `{layers: n}`,
            `{names: regex}`, `{range: [first, last]}`). "auto" unfreezes the
            depth the linear probe (`tltf.probe_blocks`) recommends, or every
            block from 1,000 training images (and 15 a class); a range
            trains any contiguous blocks, the bottom ones too. Defaults to
            "auto".
        head_steps: int. The stage-1 step budget of `head_epochs="auto"`; 0
            keeps the closed-form ridge head alone (no stage-1 epochs).
            Defaults to 2000.
        head_init: str. "ridge" (start a linear head from the closed-form ridge
            classifier) or "random". Defaults to "ridge".
        head_l2: "auto" or a number >= 0. An L2 penalty on the head's kernel
            while training: "auto" gives a ridge-started regression head the
            ridge's strength and a multi-label head scikit-learn's C=1, a
            classifier none; 0 none (see `FineTuneSettings`). Defaults to "auto".
        keep_best: bool, "holdout" or "features". Restore the best weights, so
            that stage 2 never ends worse than stage 1; without validation data
            "holdout" scores a held-out slice of the training images (handed back
            at the end) and "features" a leave-one-out probe of their features.
            True picks "holdout" where it applies (see `FineTuneSettings`).
            Defaults to True.
        fine_tune_patience: int or None. End stage 2 once this many stage-2
            epochs in a row were not kept by `keep_best` (the run still ends
            with the best weights). Needs `keep_best`. Defaults to None (every
            stage-2 epoch runs).
        bn: str. "frozen", "affine", "train" or "adapt" (frozen, after the
            BN statistics are re-estimated on the training images). Defaults to
            "frozen".
        lr_decay: float or None. Per-block learning-rate decay. Defaults to None.
        gradual_every: int or None. Unfreeze one more block every n epochs.
            Defaults to None.
        lr_policy: str. "uniform" or "auto_rgn" (per-block rates from relative
            gradient norms). Defaults to "uniform".
        regularize: None, "l2sp" or `{l2sp: alpha}`: pull stage 2 toward the
            pretrained weights (L2-SP). Defaults to None.
        wise: None, a number in [0, 1] or "auto": end at a mix of stage 1's and
            the fine-tuned weights (WiSE-FT). Defaults to None.
        label_smoothing: float. Defaults to 0.
        class_weight: "balanced", a mapping {class index: weight} or None.
            Defaults to None.
        optimizer: str. A Keras optimizer name. Defaults to "adam".
        loss: str. "auto" (the task's own loss) or a Keras loss name, such as
            "categorical_focal_crossentropy" (class indices become one-hot
            rows for a loss that takes them). Defaults to "auto".
        monitor: str. The metric that picks `best.keras`, one that the run logs
            (`LOGGED_METRICS` of `model.task`, with or without `val_`). Defaults
            to "val_loss". Without validation data a validation metric picks
            nothing: `best.keras` is then the model `fine_tune` ends with.
        mode: str. "min", "max" or "auto" for `monitor`. Defaults to "auto".
    """

    head_epochs: int | Literal["auto"] = FINE_TUNE_DEFAULTS["head_epochs"]
    fine_tune_epochs: int | Literal["auto"] = FINE_TUNE_DEFAULTS["fine_tune_epochs"]
    head_lr: float | Literal["find"] = FINE_TUNE_DEFAULTS["head_lr"]
    fine_tune_lr: float | Literal["auto", "find"] = FINE_TUNE_DEFAULTS["fine_tune_lr"]
    unfreeze: int | str | dict = FINE_TUNE_DEFAULTS["unfreeze"]
    head_steps: int = FINE_TUNE_DEFAULTS["head_steps"]
    head_init: str = FINE_TUNE_DEFAULTS["head_init"]
    head_l2: float | Literal["auto"] = FINE_TUNE_DEFAULTS["head_l2"]
    keep_best: bool | Literal["holdout", "features"] = FINE_TUNE_DEFAULTS["keep_best"]
    fine_tune_patience: int | None = FINE_TUNE_DEFAULTS["fine_tune_patience"]
    bn: str = FINE_TUNE_DEFAULTS["bn"]
    lr_decay: float | None = FINE_TUNE_DEFAULTS["lr_decay"]
    gradual_every: int | None = FINE_TUNE_DEFAULTS["gradual_every"]
    lr_policy: Literal["uniform", "auto_rgn"] = FINE_TUNE_DEFAULTS["lr_policy"]
    regularize: str | dict | None = FINE_TUNE_DEFAULTS["regularize"]
    wise: float | Literal["auto"] | None = FINE_TUNE_DEFAULTS["wise"]
    label_smoothing: float = FINE_TUNE_DEFAULTS["label_smoothing"]
    class_weight: str | dict | None = FINE_TUNE_DEFAULTS["class_weight"]
    optimizer: str = FINE_TUNE_DEFAULTS["optimizer"]
    loss: str = FINE_TUNE_DEFAULTS["loss"]
    monitor: str = "val_loss"
    mode: str = "auto"

    def __post_init__(self):
        _check_fields(self, "schedule")
        _at_least(self.head_epochs, 0, "schedule", "head_epochs", "auto")
        _at_least(self.fine_tune_epochs, 0, "schedule", "fine_tune_epochs", "auto")
        if self.head_epochs == 0 and self.fine_tune_epochs == 0:
            raise ConfigError(
                "Nothing to train: schedule.head_epochs and schedule.fine_tune_epochs "
                "are both 0. Set either to a number of epochs or 'auto'."
            )
        _positive(self.head_lr, "schedule", "head_lr", "find")
        _positive(self.fine_tune_lr, "schedule", "fine_tune_lr", "find")
        _at_least(self.head_steps, 0, "schedule", "head_steps")
        _choice(self.head_init, ("ridge", "random"), "schedule", "head_init")
        _at_least(self.head_l2, 0, "schedule", "head_l2", "auto")
        _at_least(self.fine_tune_patience, 1, "schedule", "fine_tune_patience")
        if self.fine_tune_patience is not None and self.keep_best is False:
            raise ConfigError(
                f"schedule.fine_tune_patience={self.fine_tune_patience} counts the "
                "stage-2 epochs that keep_best did not keep, and schedule.keep_best "
                "is false. Set keep_best: true (--keep-best), or remove "
                "fine_tune_patience."
            )
        check_unfreeze(self.unfreeze, "schedule.unfreeze")
        if is_int(self.unfreeze):
            _below_max_int(self.unfreeze, "schedule", "unfreeze")
        elif isinstance(self.unfreeze, dict):
            ((key, value),) = self.unfreeze.items()
            if is_int(value):
                _below_max_int(value, "schedule", f"unfreeze.{key}")
        _choice(self.bn, _BN, "schedule", "bn")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ConfigError(
                f"Expected schedule.lr_decay in (0, 1]. Received: lr_decay={self.lr_decay!r}"
            )
        _at_least(self.gradual_every, 1, "schedule", "gradual_every")
        _choice(self.lr_policy, LR_POLICIES, "schedule", "lr_policy")
        check_regularize(self.regularize, "schedule.regularize")
        check_wise(self.wise, "schedule.wise")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                "Expected schedule.label_smoothing in [0, 1). Received: "
                f"label_smoothing={self.label_smoothing!r}"
            )
        if isinstance(self.class_weight, str) and self.class_weight != "balanced":
            raise ConfigError(
                "Expected schedule.class_weight to be 'balanced', a mapping of class "
                f"index to weight, or null. Received: class_weight={self.class_weight!r}"
            )
        if isinstance(self.class_weight, dict):
            try:
                weights = {int(k): float(v) for k, v in self.class_weight.items()}
            except (TypeError, ValueError):
                raise ConfigError(
                    "Expected schedule.class_weight as {class index: weight}, e.g. "
                    f"{{0: 1.0, 1: 3.0}}. Received: {self.class_weight!r}"
                ) from None
            object.__setattr__(self, "class_weight", weights)
        _choice(self.mode, _MODES, "schedule", "mode")
        resolve_loss(self.loss, "schedule.loss")
        if self.loss != "auto" and self.label_smoothing:
            raise ConfigError(
                f"schedule.label_smoothing={self.label_smoothing:g} smooths the "
                f"task's own loss (loss: auto), and schedule.loss is "
                f"{self.loss!r}. Leave label_smoothing at 0 with a loss of your own."
            )

    @classmethod
    def from_dict(cls, config: dict | None) -> ScheduleConfig:
        """Builds the section from a mapping (unknown keys are rejected)."""
        return _from_mapping(cls, config, "schedule")

    def settings(self, **changes) -> FineTuneSettings:
        """The section as `tltf.FineTuneSettings` (`changes` set other fields)."""
        return FineTuneSettings(**self.fine_tune_kwargs(), **changes)

    def fine_tune_kwargs(self) -> dict[str, Any]:
        """The section's `FineTuneSettings` fields, as `fine_tune` keywords."""
        unfreeze = self.unfreeze
        if isinstance(unfreeze, dict):
            unfreeze = dict(unfreeze)
        class_weight = self.class_weight
        if isinstance(class_weight, dict):
            class_weight = dict(class_weight)
        regularize = self.regularize
        if isinstance(regularize, dict):
            regularize = dict(regularize)
        return {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name in FINE_TUNE_DEFAULTS
            },
            "unfreeze": unfreeze,
            "class_weight": class_weight,
            "regularize": regularize,
        }


@dataclasses.dataclass(frozen=True)
class TuneSection:
    """The `[tune]` section of `tltf tune`.

    Attributes:
        tuner: str. The search algorithm, e.g. "grid", "random", "bayesian" or
            "hyperband" (see `tltf.tuning`). Defaults to "bayesian", as
            `tltf.tune`.
        max_trials: int. Trials to run. Defaults to 10.
        objective: str or None. The metric to optimise, one that the run logs
            (`LOGGED_METRICS` of `model.task`, with or without `val_`), or
            "auto". Defaults to None (the tuner's default, validation accuracy
            or loss).
        search_space: mapping. Overrides of the default search space: a
            hyperparameter name to a list of values (or a mapping the tuner
            documents). Defaults to {}.
        soup: int. After the search, a greedy soup (`TuneResult.soup`) of the
            best `soup` trials, chosen on the validation data, is written as
            `soup.keras`; 0 writes none. Defaults to 0.
        refit: bool. After the search, the best values are trained once more
            (`TuneResult.refit`) on the training and validation images
            together, with `fine_tune`'s "auto" epochs and stage-2 guard, and
            written as `refit.keras`. Defaults to False.
    """

    tuner: str = "bayesian"
    max_trials: int = 10
    objective: str | None = None
    search_space: dict = dataclasses.field(default_factory=dict)
    soup: int = 0
    refit: bool = False

    def __post_init__(self):
        _check_fields(self, "tune")
        _at_least(self.max_trials, 1, "tune", "max_trials")
        _at_least(self.soup, 0, "tune", "soup")

    @classmethod
    def from_dict(cls, config: dict | None) -> TuneSection:
        """Builds the section from a mapping (unknown keys are rejected)."""
        return _from_mapping(cls, config, "tune")


#: Where a `train` config differs from its sections' defaults.
_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {"model": {"cut": "auto"}}

_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "schedule": ScheduleConfig,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A `tltf train` configuration: `model`, `data` and `schedule` sections.

    Its sections default as their classes do, except `model.cut`, which
    defaults to "auto": a run has the training data to probe the blocks on.

    Example:

    >>> config = TrainConfig.from_dict({"model": {"base": "resnet50"},
    ...                                 "data": {"train": "photos/"}})
    >>> config.to_dict()["schedule"]["head_epochs"]
    'auto'
    >>> config.model.cut
    'auto'
    """

    model: ModelConfig = dataclasses.field(
        default_factory=lambda: ModelConfig(**_TRAIN_DEFAULTS["model"])
    )
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)

    def __post_init__(self):
        # Checked here, not in [schedule]: the metrics depend on model.task.
        _check_metric(self.schedule.monitor, self.model.task, "schedule", "monitor")

    @classmethod
    def sections(cls) -> dict[str, type]:
        """The section names and their classes."""
        return dict(_SECTIONS)

    @classmethod
    def defaults(cls) -> dict[str, dict[str, Any]]:
        """Values that differ from the sections' own defaults, by section."""
        return {name: dict(values) for name, values in _TRAIN_DEFAULTS.items()}

    @classmethod
    def from_dict(cls, config: dict | None) -> TrainConfig:
        """Builds a config from nested mappings; unknown sections/keys are rejected.

        Args:
            config: dict or None. `{section: {key: value}}`.

        Returns:
            The config.

        Raises:
            ConfigError: an unknown section or key (with suggestions), or a value
                of the wrong type or range.
        """
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ConfigError(
                "Expected a config mapping with sections "
                f"{', '.join(cls.sections())}. Received: {type(config).__name__}."
            )
        sections = cls.sections()
        for key in config:
            if key not in sections:
                hint = ""
                if key == "tune" and cls is TrainConfig:
                    hint = (
                        " The [tune] section is read by `tltf tune`, not `tltf train`."
                    )
                raise ConfigError(
                    f"Unknown config section {key!r}.{suggest(key, sections)}{hint} "
                    f"Valid sections: {', '.join(sections)}."
                )
        # An empty section (`model:` in YAML) is None: it still gets the defaults.
        config = merge(
            cls.defaults(), {k: {} if v is None else v for k, v in config.items()}
        )
        return cls(
            **{
                name: section.from_dict(config.get(name))
                for name, section in sections.items()
            }
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain nested dicts and lists (YAML/JSON-ready)."""
        return {
            name: _plain(dataclasses.asdict(getattr(self, name)))
            for name in self.sections()
        }

    def require(self) -> TrainConfig:
        """Checks the keys a run needs (`model.base`, `data.train`); returns self."""
        if not self.model.base:
            raise ConfigError(
                "No base: set model.base in the config or pass --base (a registry "
                "name from `tltf bases`, or the folder of a saved base)."
            )
        self.data.load_data_kwargs()
        return self


#: `tltf tune`'s defaults that differ from the sections' own: its trials run
#: without the guard (`tltf.tuning.hypermodel.TUNER_DEFAULTS`).
_TUNE_DEFAULTS: dict[str, dict[str, Any]] = {"schedule": {"keep_best": False}}
#: `[schedule]` keys that `tltf tune` takes from the search space instead.
TUNE_SEARCHED = ("head_lr", "fine_tune_lr", "unfreeze", "bn", "lr_decay")
#: `[schedule]` keys that pick `tltf train`'s `best.keras` (`tune.objective`
#: picks the tuner's), and the step budget of `head_epochs: auto`, which the
#: tuner's trials never run (their stage 1 has fixed epochs, 5 unless set).
TRAIN_ONLY = ("monitor", "mode", "head_steps")


@dataclasses.dataclass(frozen=True)
class TuneConfig(TrainConfig):
    """A `tltf tune` configuration: the `train` sections plus `tune`.

    `model.cut` defaults to None: the tuner builds whole bases.
    `schedule.keep_best` defaults to false, as the tuner's trials run (keras-tuner
    scores a trial by its best epoch); `keep_best: true` gives every trial the
    guard, which `fine_tune_patience` needs. A `[schedule]` key that the search
    space sets (`TUNE_SEARCHED`), or that only `tltf train` reads
    (`TRAIN_ONLY`: `monitor` and `mode`, which pick its best epoch, and
    `head_steps`, the step budget of its stage 1), is a ConfigError when set
    away from its default: the run would not use it. Every other key reaches
    each trial's `fine_tune` (see `tltf.runs.run_tuning`).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    schedule: ScheduleConfig = dataclasses.field(
        default_factory=lambda: ScheduleConfig(**_TUNE_DEFAULTS["schedule"])
    )
    tune: TuneSection = dataclasses.field(default_factory=TuneSection)

    def __post_init__(self):
        super().__post_init__()
        defaults = ScheduleConfig()
        for key in (*TUNE_SEARCHED, *TRAIN_ONLY):
            value = getattr(self.schedule, key)
            if value == getattr(defaults, key):
                continue
            flag = f"--{key.replace('_', '-')}"
            if key in TUNE_SEARCHED:
                fix = (
                    f"Every trial takes {key} from the search space: set "
                    f"tune.search_space.{key} to {value!r} (one value fixes it), "
                    "or a list of values to search."
                )
            elif key == "head_steps":
                fix = (
                    "Every trial's stage 1 runs schedule.head_epochs epochs (5 "
                    "unless set), not a step budget: set head_epochs instead."
                )
            else:
                fix = (
                    "tltf tune picks its best trial by tune.objective "
                    "(--objective): set that instead."
                )
            raise ConfigError(
                f"schedule.{key}={value!r} ({flag}) is not used by tltf tune. {fix}"
            )
        objective = self.tune.objective
        if objective is not None and objective != "auto":
            _check_metric(objective, self.model.task, "tune", "objective")

    @classmethod
    def sections(cls) -> dict[str, type]:
        """The section names and their classes."""
        return {**_SECTIONS, "tune": TuneSection}

    @classmethod
    def defaults(cls) -> dict[str, dict[str, Any]]:
        """Values that differ from the sections' own defaults, by section."""
        return {name: dict(values) for name, values in _TUNE_DEFAULTS.items()}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- files and overrides ------------------------------------------------------------------
class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors (`&name`) and aliases (`*name`).

    An alias shares a node instead of copying it, so a few nested aliases in a
    small file ("billion laughs") expand into billions of values as soon as the
    config is copied. tltf configs are short and need neither.
    """

    source = "<string>"

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise ConfigError(
                f"{self.source}, line {mark.line + 1}, column {mark.column + 1}: YAML "
                "anchors and aliases (&name, *name, <<: *name) are not supported in "
                "tltf configs. Write the values out in full."
            )
        return super().compose_node(parent, index)


def _read_yaml(text: str, source: str):
    """The YAML document in `text` (safe types, no anchors); `source` names it."""
    loader = _ConfigLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """A YAML parse error at the line and column of the problem, with that line."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(line.strip() for line in str(error).splitlines()[:4])
    problem = getattr(error, "problem", None) or "invalid YAML"
    context, context_mark = getattr(error, "context", None), error.context_mark
    if context and context_mark is not None and context_mark.line != mark.line:
        problem += f" ({context} from line {context_mark.line + 1})"
    lines = text.splitlines()
    shown = f" {lines[mark.line]!r}" if mark.line < len(lines) else ""
    return (
        f"line {mark.line + 1}, column {mark.column + 1}: {problem}. Line "
        f"{mark.line + 1} is{shown or ' the end of the file'}; check its "
        "indentation (spaces, not tabs) and the brackets and quotes before it."
    )


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML, TOML or JSON config file into nested dicts (safe loaders only).

    Args:
        path: str or PathLike. A `.yaml`, `.yml`, `.toml` or `.json` file.

    Returns:
        The mapping in the file (empty for an empty file).

    Raises:
        ConfigError: the file is missing, has another suffix, or does not parse
            (the message names the line and column), or a YAML file uses anchors
            or aliases.

    Example:

    >>> TrainConfig.from_dict(load_config_file("train.toml"))
    """
    path = Path(path).expanduser()
    kind = CONFIG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"Config file {str(path)!r} has an unknown suffix. Use .yaml, .yml, "
            ".toml or .json."
        )
    if not path.is_file():
        raise ConfigError(
            f"Config file {str(path)!r} does not exist. Check the path given to "
            "--config."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"Could not read config file {str(path)!r}: {error}"
        ) from None
    try:
        if kind == "yaml":
            data = _read_yaml(text, repr(str(path)))
        elif kind == "toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ConfigError:
        raise
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Could not parse {str(path)!r} as YAML at {_yaml_problem(error, text)}"
        ) from None
    except Exception as error:  # Parser errors of TOML and JSON.
        first = str(error).strip().splitlines()
        raise ConfigError(
            f"Could not parse {str(path)!r} as {kind.upper()}: "
            f"{' '.join(line.strip() for line in first[:4])}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Expected {str(path)!r} to hold a mapping of sections (model, data, "
            f"schedule). Received: {type(data).__name__}."
        )
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: values in `overrides` win; neither input is changed.

    Example:

    >>> merge({"data": {"train": "a/", "seed": 1}}, {"data": {"seed": 2}})
    {'data': {'train': 'a/', 'seed': 2}}
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(raw: str, source: str) -> Any:
    """A command-line value in YAML syntax (`0.3`, `[8]`, `null`); text that is
    not YAML stays a string, and an empty value is None. `source` names it."""
    if not raw.strip():
        return None
    try:
        return _read_yaml(raw, source)
    except yaml.YAMLError:
        return raw


def parse_assignment(text: str) -> dict[str, Any]:
    """Turns `section.key=value` (value in YAML syntax) into a nested dict.

    Example:

    >>> parse_assignment("model.head.dropout=0.3")
    {'model': {'head': {'dropout': 0.3}}}
    """
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"Expected --set SECTION.KEY=VALUE, e.g. --set model.head.dropout=0.3. "
            f"Received: {text!r}"
        )
    value = parse_value(raw, f"--set {text!r}")
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def dump_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Writes a resolved config atomically as YAML (`.yaml`/`.yml`) or JSON.

    The file reads back with `load_config_file` into an equal config.
    """

    path = Path(path)
    data = config.to_dict()
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return atomic_write_text(path, text)
