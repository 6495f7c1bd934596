"""TFDS sources: telling a TFDS name from a path, checking its config offline,
loading its splits, and its `DataBundle`. tensorflow_datasets is imported only
when a TFDS name is checked or loaded, never by `import tltf`.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tltf.data.bundle import DataBundle, Source
from tltf.data.images import prepare_image
from tltf.data.labels import MAX_LISTED, check_dataset_spec
from tltf.data.pipeline import pipeline, pipelines
from tltf.errors import ConfigError, DataError, did_you_mean, suggest

# What a TFDS name looks like: "builder", "builder/config", "builder/config:1.0.0".
_TFDS_NAME = re.compile(r"^[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?$")


def import_tfds():
    """The `tensorflow_datasets` module, imported (with tltf_shapes) on first use."""
    import tensorflow_datasets as tfds  # Slow to import: only when needed.

    import tltf.datasets_tfds  # noqa: F401  (registers tltf_shapes; imports tfds)

    return tfds


@functools.lru_cache(maxsize=1)
def _tfds_names() -> list[str]:
    try:
        return list(import_tfds().list_builders(with_community_datasets=False))
    except Exception:  # pragma: no cover - tfds missing or broken
        return []


def _tfds_parts(name: str) -> tuple[str, str | None]:
    """`"builder/config:1.0.0"` as `("builder", "config")` (config None if none)."""
    builder, _, config = name.split(":")[0].partition("/")
    return builder, config or None


def _tfds_config_problem(name: str) -> str | None:
    """What is wrong with the config part of the TFDS name `name`, or None.

    Only builders that TFDS knows offline are checked; their configs are read
    from the builder class, so nothing is downloaded or prepared.
    """
    builder, config = _tfds_parts(name)
    if config is None or builder not in _tfds_names():
        return None
    try:
        configs = [c.name for c in import_tfds().builder_cls(builder).BUILDER_CONFIGS]
    except Exception:  # pragma: no cover - a builder TFDS cannot import
        return None
    if config in configs:
        return None
    if not configs:
        return (
            f"TFDS dataset {builder!r} has no config {config!r}: it has no configs. "
            f"Write 'tfds:{builder}'."
        )
    close = difflib.get_close_matches(config, configs, n=3, cutoff=0.5)
    listed = ", ".join(configs[:MAX_LISTED]) + (
        ", ..." if len(configs) > MAX_LISTED else ""
    )
    return (
        f"TFDS dataset {builder!r} has no config {config!r}."
        f"{did_you_mean(f'tfds:{builder}/{c}' for c in close)} Its configs: {listed}."
    )


def is_tfds_name(text: str) -> bool:
    """Whether `text` names a TFDS builder (and one of its configs, if it has one)."""
    return (
        _TFDS_NAME.match(text) is not None
        and _tfds_parts(text)[0] in _tfds_names()
        and _tfds_config_problem(text) is None
    )


def tfds_name_hint(text: str, near: bool, existing: bool) -> str:
    """The words that point the missing path `text` to TFDS, or "".

    Args:
        text: str. The path that does not exist.
        near: bool. Whether paths close to `text` exist on disk.
        existing: bool. Whether a folder that `text` names exists.
    """
    if near and is_tfds_name(text):
        return f" For the TFDS dataset, write 'tfds:{text}'."
    if not near and not existing and _TFDS_NAME.match(text):
        builder = _tfds_parts(text)[0]
        close = difflib.get_close_matches(builder, _tfds_names(), n=3, cutoff=0.7)
        hint = " For a TFDS dataset, write 'tfds:NAME'."
        return hint + did_you_mean(f"tfds:{m}" for m in close)
    return ""


def _tfds_load(name: str, split: str, data_dir, **kwargs):
    tfds = import_tfds()
    problem = _tfds_config_problem(name)
    if problem is not None:
        raise DataError(problem)
    try:
        return tfds.load(
            name, split=split, as_supervised=True, data_dir=data_dir, **kwargs
        )
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"No TFDS dataset named {name!r}.{suggest(name, _tfds_names())} See "
            "tfds.list_builders() for the names."
        ) from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        # TFDS lists close configs on the lines after this sentence; it is cut.
        first = re.sub(r"\s*Here are \d+ \w+ whose name closely match:?$", "", first)
        raise DataError(
            f"Could not load TFDS dataset {name!r} with split={split!r} "
            f"({type(error).__name__}: {first}). TFDS downloads and prepares a "
            "dataset on first use, which needs network access; offline, pass "
            "data_dir= a folder with a prepared copy. Split strings look like "
            "'train', 'train[:80%]' or 'test'."
        ) from None


def _tfds_splits(split: str, fraction: float) -> tuple[str, str]:
    percent = 100 * fraction
    if abs(percent - round(percent)) > 1e-9 or "[" in split or "+" in split:
        raise ConfigError(
            "With a TFDS source, validation_split takes whole percents of a plain "
            f"split. Received: split={split!r}, validation_split={fraction}. Pass "
            "split strings instead, e.g. split='train[:85%]', "
            "validation='train[85%:]'."
        )
    cut = 100 - round(percent)
    return f"{split}[:{cut}%]", f"{split}[{cut}%:]"


def _tfds_source(
    name, split, opts, num_classes, what, data_dir, training: bool
) -> tuple[Source, Callable[[], np.ndarray]]:
    tfds = import_tfds()
    read_config = tfds.ReadConfig(shuffle_seed=opts.seed)
    ds, info = _tfds_load(
        name,
        split,
        data_dir,
        with_info=True,
        shuffle_files=training and opts.shuffle,
        read_config=read_config,
    )
    keys = info.supervised_keys
    label_feature = (
        info.features[keys[1]] if keys and keys[1] in info.features else None
    )
    names = getattr(label_feature, "names", None)
    rank, _ = check_dataset_spec(ds, f"TFDS {name!r} ({what})")
    if rank == 4:
        raise DataError(f"TFDS {name!r} yields batches; tltf expects single images.")
    if opts.task in ("multiclass", "binary"):
        if names is None:
            raise DataError(
                f"TFDS {name!r} has no class-label feature (its label is "
                f"{label_feature}). tltf loads image classification datasets."
            )
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(
                f"TFDS {name!r} has {len(names)} classes, but num_classes="
                f"{num_classes}. Leave num_classes unset (tltf reads it from the "
                f"dataset) or set it to {len(names)}."
            )
        if opts.task == "binary" and len(names) != 2:
            raise DataError(
                f"task='binary' needs 2 classes; {name!r} has {len(names)}."
            )
        num_classes = len(names)
    elif num_classes is None:
        raise ConfigError(
            f"Pass num_classes for task={opts.task!r} with a TFDS source."
        )
    cardinality = int(ds.cardinality())
    task = opts.task

    def label(y):
        if task in ("multilabel", "regression"):
            return tf.cast(y, tf.float32)
        return tf.cast(y, tf.int32)

    uint8 = ds.element_spec[0].dtype == tf.uint8
    source = Source(
        make=lambda indices: ds,
        prepare=lambda x, y: (prepare_image(x, opts, uint8), label(y)),
        labels=None,
        num_classes=num_classes,
        class_names=list(names) if names is not None else None,
        uint8=uint8,
        bytes_per_raw=opts.size[0] * opts.size[1] * 3 * 4,
        size=cardinality if cardinality >= 0 else None,
    )
    image_key = keys[0]

    def count() -> np.ndarray:
        if task not in ("multiclass", "binary"):
            return np.zeros(0, np.int64)
        labels_ds = _tfds_load(
            name,
            split,
            data_dir,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
        y = np.concatenate(
            [np.zeros(0, np.int64)]
            + list(labels_ds.map(lambda _, y: y).batch(8192).as_numpy_iterator())
        )
        return np.bincount(y, minlength=num_classes)

    return source, count


def load_tfds(source, split, fraction, validation, opts, num_classes, data_dir):
    """`load_data` for a TFDS source: its splits as a `DataBundle`."""
    name = os.fspath(source).removeprefix("tfds:")
    split = split or "train"
    if fraction is not None:
        split, validation = _tfds_splits(split, fraction)
    if validation is not None and not isinstance(validation, str):
        raise ConfigError(
            "With a TFDS source, validation is a split string such as 'test' or "
            f"'train[80%:]'. Received: {type(validation).__name__}."
        )
    train, count = _tfds_source(
        name, split, opts, num_classes, "train", data_dir, training=True
    )
    val = None
    if validation is not None:
        val, _ = _tfds_source(
            name, validation, opts, num_classes, "validation", data_dir, training=False
        )
    train_ds, fixed = pipelines(train, None, opts, training=True)
    return DataBundle(
        train=train_ds,
        unshuffled=fixed,
        validation=pipeline(val, None, opts, training=False) if val else None,
        class_names=train.class_names,
        num_classes=train.num_classes,
        task=opts.task,
        image_size=opts.size,
        num_train=train.size,
        num_validation=val.size if val else None,
        _counts=count,
    )
