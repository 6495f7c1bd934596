"""`load_data`: checks its arguments, reads the training and validation sources,
splits off validation, and returns the `DataBundle` of their pipelines.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tltf._checks import (
    check_choice,
    check_image_size,
    check_keywords,
    check_positive_int,
    named_arguments,
)
from tltf.data.bundle import DataBundle
from tltf.data.images import RESIZE_POLICIES, ImageOptions
from tltf.data.inputs import is_arrays, pair_spec
from tltf.data.labels import (
    TASKS,
    check_fraction,
    label_counts,
    split_indices,
    validation_coverage,
)
from tltf.data.pipeline import pipeline, pipelines
from tltf.data.sources import read_source, source_kind
from tltf.data.tfds import load_tfds
from tltf.errors import ConfigError, DataError

_KIND_NAMES = {
    "tfds": "a TFDS dataset",
    "folder": "an image folder",
    "npz": "a .npz file",
    "arrays": "(images, labels) arrays",
    "dataset": "a tf.data.Dataset",
}


#: The rarely needed `load_data` keywords (through `**options`), with their
#: defaults.
EXTRA_OPTIONS: dict[str, Any] = {"cache": True, "data_dir": None}


def _check_class_names(names, num_classes: int | None) -> list[str]:
    """`class_names=` as a list of distinct, non-empty strings."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ConfigError(
            "Expected class_names as a list of str, one per class in label order. "
            f"Received: class_names={names!r}."
        )
    names = list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            "Expected class_names as a non-empty list of non-empty str. Received: "
            f"class_names={names!r}."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"class_names names a class twice: {repeated}. Give each class once."
        )
    if num_classes is not None and num_classes != len(names):
        raise ConfigError(
            f"class_names has {len(names)} names but num_classes={num_classes}. "
            "Give one name per class, or leave num_classes out."
        )
    return names


def _check_same_names(own, names: list[str], source) -> None:
    """A source's own class names must be `class_names=` (else labels mislead)."""
    if own is not None and list(own) != names:
        raise DataError(
            f"{_shown(source)} has the classes {list(own)}, but class_names= gives "
            f"{names}. The labels would not line up: give the data the same "
            "classes in the same order, or leave class_names out."
        )


def _shown(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"The data {os.fspath(source)!r}"
    return "The data"


def _npz_image_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of a .npz file's images, from the array's header alone.

    None when the file is not a readable .npz of `x` or `images` (reading it
    then says what is wrong).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            member = next(
                (f"{k}.npy" for k in ("x", "images") if f"{k}.npy" in names), None
            )
            if member is None:
                return None
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return tuple(shape)


def _own_size(source) -> tuple[int, int]:
    """The images' own (height, width): `load_data`'s `image_size=None`."""
    shape = None
    if isinstance(source, tf.data.Dataset):
        dims = list(pair_spec(source, "the dataset")[0].shape)
        shape = dims[-3:-1] if len(dims) >= 3 else None
    elif is_arrays(source):
        images = getattr(source[0], "shape", None)
        if images is None:
            try:
                images = np.asarray(source[0]).shape
            except ValueError:  # images of different sizes
                images = None
        dims = list(images or [])
        shape = dims[1:3] if len(dims) >= 3 else None
    elif isinstance(source, (str, os.PathLike)) and source_kind(source) == "npz":
        dims = _npz_image_shape(Path(os.fspath(source)).expanduser())
        shape = dims[1:3] if dims and len(dims) >= 3 else None
    if shape and all(isinstance(d, int) and d > 0 for d in shape):
        return int(shape[0]), int(shape[1])
    kind = source_kind(source)
    why = {
        "arrays": "its images are not all one size",
        "npz": "it has no array x or images to read the size from (save it with "
        "np.savez(path, x=images, y=labels))",
    }.get(kind, "the size of its images is not known before they are read")
    raise ConfigError(
        f"load_data needs image_size for {_KIND_NAMES.get(kind, kind)}: {why}. "
        "Pass image_size=224, say, or the model's own, "
        "image_size=model.input_shape[1:3]."
    )


def load_data(
    source,
    *,
    image_size: tuple[int, int] | int | None = None,
    batch_size: int = 32,
    split: str | None = None,
    validation_split: float | None = None,
    validation=None,
    seed: int | None = 0,
    task: str = "multiclass",
    num_classes: int | None = None,
    class_names=None,
    resize: str = "stretch",
    shuffle: bool = True,
    strict: bool = False,
    **options,
) -> DataBundle:
    """Loads images and labels into batched, checked `tf.data` pipelines.

    Every source gives the same result: batches of float32 RGB images in [0, 255]
    of shape `(batch, height, width, 3)` with their labels, ready for a model from
    `build_model` (which preprocesses raw pixels itself). Gray and RGBA images
    become RGB. Labels are checked against `num_classes` and the task before
    anything trains.

    Args:
        source: The data. One of:
            a TFDS name, `"tfds:tf_flowers"` or `"tf_flowers"` (loaded with
            `tfds.load(..., as_supervised=True)`; class names from its label
            feature; a name without `tfds:` is read as TFDS's only when no
            path on disk resembles it);
            a folder with one subfolder per class (class names are the sorted
            subfolder names; .jpg, .jpeg, .png, .bmp and .gif files, searched
            recursively; unreadable or non-image files, files whose names are
            not UTF-8 and images over `MAX_IMAGE_PIXELS` pixels are skipped and
            listed in `skipped`; class folders left without images are dropped,
            with a note, unless `num_classes` is given);
            a `.npz` file with arrays `x` and `y` (or `images` and `labels`), and
            optionally `x_val`/`y_val` (the validation set) and `class_names`;
            an `(images, labels)` tuple of arrays (images of shape (N, H, W),
            (N, H, W, 1), (N, H, W, 3) or (N, H, W, 4));
            a finite `tf.data.Dataset` of `(image, label)` pairs, batched or not
            (read once up front to check and count its labels; with
            validation_split it must yield its elements in the same order on
            every pass).
        image_size: int, (height, width) or None. The size of every output
            image. Defaults to None: the images' own size, for arrays, a .npz
            file and a tf.data.Dataset whose images have a fixed size; an image
            folder and TFDS need it (a ConfigError says so).
        batch_size: int. Examples per batch. Defaults to 32.
        split: str or None. The TFDS split of the training data, e.g. "train" or
            "train[:80%]". Defaults to None ("train").
        validation_split: float or None. Fraction of the training data held out
            for validation: a seeded split, stratified by class for
            "multiclass" and "binary". With TFDS it takes the last whole percent
            of the split (`train[80%:]`). Defaults to None.
        validation: The validation data, or None: a TFDS split string (with a
            TFDS source), or any other source form. Defaults to None (for a .npz
            file, its `x_val`/`y_val` arrays when present). A validation set
            with fewer images than classes, or none of some class, gets a
            one-line warning (its accuracy says little).
        seed: int or None. Seed of the validation split and of shuffling.
            Defaults to 0.
        task: str. "multiclass" (class indices or one-hot rows), "binary" (0/1),
            "multilabel" (0/1 targets of shape (N, num_classes)) or "regression".
            Defaults to "multiclass".
        num_classes: int or None. Number of classes; labels must lie in
            [0, num_classes). Defaults to None: the number of class names, or the
            largest label + 1.
        class_names: list of str or None. The classes, in label order, e.g. a
            trained model's (`tltf.model_info(model).class_names`). An image
            folder's subfolders are then labelled by name: a subfolder not
            among them is a DataError, and a class without a subfolder is kept,
            empty (a test folder with some of the classes). Other sources are
            named by it; one whose own class names differ is a DataError.
            Defaults to None: the source's own names (sorted subfolder names,
            a .npz file's `class_names`, TFDS's label names).
        resize: str. "stretch" (resize, ignoring the aspect ratio), "crop"
            (central crop to the target aspect ratio, then resize) or "pad" (resize
            keeping the aspect ratio, then pad with black). Defaults to "stretch".
        shuffle: bool. Shuffle the training data every epoch. Defaults to True.
        strict: bool. Raise `DataError` on unreadable or non-image files in an
            image folder instead of skipping them, and on class folders without
            readable images instead of dropping them. Defaults to False.
        **options: The rarely needed arguments (any other keyword is a
            ConfigError naming the closest argument):

            - cache: bool. Keep decoded, resized images in memory after the
              first epoch. Defaults to True.
            - data_dir: str or None. TFDS data folder (e.g. a prepared offline
              copy). Defaults to None (TFDS's own default).

    Returns:
        A `DataBundle` with `train`, `validation`, `class_names`, `num_classes`,
        `counts` and `skipped`.

    Raises:
        DataError: The data is missing, empty, unreadable or inconsistent.
        ConfigError: An argument is invalid.

    Example:

    >>> data = tltf.data.load_data("tfds:tf_flowers", image_size=224,
    ...                            split="train[:80%]", validation="train[80%:]")
    >>> data.class_names
    ['dandelion', 'daisy', 'tulips', 'sunflowers', 'roses']
    >>> images, labels = next(iter(data.train))
    >>> images.shape, labels.shape
    (TensorShape([32, 224, 224, 3]), TensorShape([32]))
    """
    check_keywords(
        options,
        (*named_arguments(load_data), *EXTRA_OPTIONS),
        "load_data",
        f"Its other keywords are {', '.join(EXTRA_OPTIONS)}.",
    )
    cache = options.get("cache", EXTRA_OPTIONS["cache"])
    data_dir = options.get("data_dir", EXTRA_OPTIONS["data_dir"])
    if image_size is None:
        image_size = _own_size(source)
    opts = ImageOptions(
        size=check_image_size(image_size),
        batch_size=check_positive_int(batch_size, "batch_size"),
        resize=check_choice(resize, RESIZE_POLICIES, "resize"),
        seed=seed,
        shuffle=bool(shuffle),
        cache=bool(cache),
        task=check_choice(task, TASKS, "task"),
    )
    fraction = check_fraction(validation_split)
    if fraction is not None and validation is not None:
        raise ConfigError(
            "Pass either validation_split or validation, not both. Received: "
            f"validation_split={validation_split!r} and validation={validation!r}."
        )
    if num_classes is not None:
        check_positive_int(num_classes, "num_classes")
    if class_names is not None:
        class_names = _check_class_names(class_names, num_classes)
        num_classes = len(class_names)
    kind = source_kind(source)
    if kind != "tfds" and validation is not None:
        source_kind(validation)  # a missing path fails before the training data
    if kind != "tfds" and split is not None:
        raise ConfigError(
            f"split= selects a TFDS split; the source is {_KIND_NAMES[kind]}. Received: "
            f"split={split!r}. Use validation_split= or validation= instead."
        )
    if kind == "tfds":
        bundle = load_tfds(
            source, split, fraction, validation, opts, num_classes, data_dir
        )
        if class_names is None:
            return bundle
        _check_same_names(bundle.class_names, class_names, source)
        return dataclasses.replace(bundle, class_names=class_names)
    train, val_arrays = read_source(
        source, kind, opts, num_classes, "train", strict, class_names
    )
    if class_names is not None:
        _check_same_names(train.class_names, class_names, source)
        train.class_names = class_names
    train_idx = val_idx = None
    val_source = None
    if fraction is not None:
        train_idx, val_idx = split_indices(train.labels, opts.task, fraction, opts.seed)
        val_source = train
    elif validation is not None or val_arrays is not None:
        val_kind = "arrays" if validation is None else source_kind(validation)
        if val_kind == "tfds":
            raise ConfigError(
                "validation is a TFDS name but the training data is not from TFDS. "
                "Pass validation data of the same kind as the training data."
            )
        val_source, _ = read_source(
            validation if validation is not None else val_arrays,
            val_kind,
            opts,
            train.num_classes,
            "validation",
            strict,
            train.class_names if val_kind in ("folder", "arrays") else None,
        )
        if (
            val_kind == "npz"
            and train.class_names
            and val_source.class_names not in (None, train.class_names)
        ):
            raise DataError(
                f"validation class names {val_source.class_names} differ from the "
                f"training class names {train.class_names}."
            )
    labels = train.labels if train_idx is None else train.labels[train_idx]
    if val_source is not None and opts.task in ("multiclass", "binary"):
        warning = validation_coverage(
            labels,
            val_source.labels if val_idx is None else val_source.labels[val_idx],
            train.num_classes,
            train.class_names,
            split=fraction is not None,
        )
        if warning:
            print(f"tltf: warning: {warning}")
    skipped = list(train.skipped) + (
        list(val_source.skipped)
        if val_source is not None and val_source is not train
        else []
    )
    train_ds, fixed = pipelines(train, train_idx, opts, training=True)

    def rows(selected: np.ndarray):
        chosen = selected if train_idx is None else np.asarray(train_idx)[selected]
        return (
            *pipelines(train, chosen, opts, training=True),
            label_counts(labels[selected], opts.task, train.num_classes),
        )

    return DataBundle(
        train=train_ds,
        unshuffled=fixed,
        validation=(
            pipeline(val_source, val_idx, opts, training=False)
            if val_source is not None
            else None
        ),
        class_names=train.class_names,
        num_classes=train.num_classes,
        skipped=skipped,
        task=opts.task,
        image_size=opts.size,
        num_train=len(labels),
        num_validation=(
            None
            if val_source is None
            else len(val_idx)
            if val_idx is not None
            else val_source.size
        ),
        _counts=label_counts(labels, opts.task, train.num_classes),
        labels=labels,
        _rows=rows,
    )
