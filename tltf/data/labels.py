"""Labels: checked and cleaned for a task, counted, split for validation, read
from a dataset, and weighed (`class_weights`); the checks of an `(image, label)`
dataset's element spec, of arrays' one label per image and of their sample
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import tensorflow as tf

from tltf.data.bundle import DataBundle
from tltf.data.images import image_shape_error
from tltf.errors import ConfigError, DataError, LabelRangeError

#: The tasks of `build_model`, and the label forms each one takes.
TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel", "regression")

#: Names (classes, files, configs) one message lists at most; the rest are counted.
MAX_LISTED = 10


def check_one_label_per_image(x, y, what: str, fix: str = "") -> None:
    """Raises `DataError` unless the arrays `x` have images and `y` one label each.

    `fix` ends the message for no images (e.g. " Pass at least one batch.").
    """
    if len(x) == 0:
        raise DataError(f"{what} is empty: it has no images.{fix}")
    if len(y) != len(x):
        raise DataError(
            f"{what} has {len(x)} images but {len(y)} labels; expected one label "
            "per image."
        )


def check_sample_weights(weights, count: int, what: str) -> np.ndarray:
    """`(images, labels, sample_weights)`'s weights as a float32 array of
    `count`, checked: one finite number >= 0 per image, not all 0."""
    try:
        w = np.asarray(weights, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            f"Expected {what}'s sample weights as numbers, one per image. "
            f"Received: {type(weights).__name__}."
        ) from None
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (count,):
        raise DataError(
            f"Expected {what}'s sample weights as one number per image, an array "
            f"of shape ({count},). Received shape {w.shape}."
        )
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise DataError(
            f"Expected {what}'s sample weights to be finite numbers >= 0. Received "
            f"{float(w[bad][0]):g} at index {int(np.flatnonzero(bad)[0])}."
        )
    if not w.any():
        raise DataError(
            f"{what}'s sample weights are all 0, so nothing would be learned. Give "
            "the images that count a weight above 0."
        )
    return w


def fold_class_weights(
    ds: tf.data.Dataset, class_weight: dict, classes: int
) -> tf.data.Dataset:
    """Batches of `(images, labels, weights)` with each weight multiplied by its
    image's class weight (`{class index: weight}` for `classes` classes,
    missing classes 1).

    Keras's `fit` takes `class_weight` or sample weights, not both ("You cannot
    `class_weight` and `sample_weight` at the same time"); `fine_tune` folds
    the one into the other, as its closed-form fits multiply them. A class
    is a label's index (class indices, one-hot rows, or one 0/1 column).
    """
    size = max([classes, 2, *(int(k) + 1 for k in class_weight)])
    table = np.ones(size, dtype=np.float32)
    for key, value in class_weight.items():
        table[int(key)] = float(value)
    last = len(table) - 1
    table = tf.constant(table)

    def fold(images, labels, weights):
        y = labels
        if y.shape.rank == 2 and y.shape[-1] != 1:
            ids = tf.argmax(y, axis=-1, output_type=tf.int32)
        else:
            ids = tf.cast(tf.round(tf.reshape(tf.cast(y, tf.float32), [-1])), tf.int32)
        ids = tf.clip_by_value(ids, 0, last)
        scale = tf.gather(table, ids)
        return (
            images,
            labels,
            tf.cast(weights, tf.float32) * tf.reshape(scale, tf.shape(weights)),
        )

    return ds.map(fold, num_parallel_calls=tf.data.AUTOTUNE)


def numeric_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.dtype == bool:
        return y.astype(np.int32)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(
            f"Expected numeric {what} labels. Received labels of dtype {y.dtype}. "
            "Map names to class indices first (e.g. with np.unique(..., "
            "return_inverse=True))."
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise DataError(f"{what} labels contain NaN or infinite values.")
    return y


def _check_01(y: np.ndarray, what: str, task: str) -> None:
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        raise DataError(
            f"Expected {task} {what} labels of 0 or 1. Received values such as "
            f"{y[bad].ravel()[:3].tolist()}."
        )


def normalize_labels(
    y, task: str, num_classes: int | None, what: str
) -> tuple[np.ndarray, int]:
    """Checks labels against the task and `num_classes`; returns them cleaned.

    Multiclass and binary labels become int32 class indices (one-hot rows are
    turned into indices), multi-label and regression targets float32.
    """
    y = numeric_labels(np.asarray(y), what)
    if task == "regression":
        y = y.astype(np.float32)
        outputs = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        return y, num_classes or outputs
    if task == "multilabel":
        if y.ndim != 2:
            raise DataError(
                f"Expected multi-label {what} targets of shape (N, num_classes) with "
                f"0/1 entries. Received labels of shape {y.shape}. For one class per "
                "image, use task='multiclass'."
            )
        if num_classes is not None and y.shape[1] != num_classes:
            raise DataError(
                f"Expected multi-label {what} targets of shape (N, {num_classes}) for "
                f"num_classes={num_classes}. Received labels of shape {y.shape}. Fix "
                f"the targets or pass num_classes={y.shape[1]}."
            )
        _check_01(y, what, "multi-label")
        return y.astype(np.float32), int(y.shape[1])
    # multiclass and binary: one class index per example.
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(
                f"Expected {task} {what} labels as class indices of shape (N,) or "
                f"one-hot rows. Received labels of shape {y.shape} that are not "
                "one-hot. For several classes per image, use task='multilabel'."
            )
        if num_classes is not None and y.shape[1] != num_classes:
            raise LabelRangeError(
                f"Expected one-hot {what} labels of {num_classes} columns for "
                f"num_classes={num_classes}. Received labels of shape {y.shape}.",
                num_classes,
                0.0,
                float(y.shape[1] - 1),
                columns=int(y.shape[1]),
            )
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise DataError(
            f"Expected {task} {what} labels of shape (N,) (class indices). "
            f"Received labels of shape {y.shape}."
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        raise DataError(
            f"Expected integer class indices as {what} labels. Received fractional "
            f"values such as {y[np.mod(y, 1) != 0][:3].tolist()}."
        )
    if task == "binary":
        if num_classes not in (None, 1, 2):
            raise ConfigError(
                f"Expected num_classes of 2 (or None) for task='binary'. Received: "
                f"num_classes={num_classes}"
            )
        num_classes = 2
    elif num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
        num_classes = max(num_classes, 1)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise LabelRangeError(
            f"Expected {what} labels in [0, {num_classes}) for num_classes="
            f"{num_classes}. Received {int(bad.sum())} labels out of range (min "
            f"{y.min():g}, max {y.max():g}; first at index {first}). Fix the labels, "
            + (
                "or use task='multiclass' for more than two classes."
                if task == "binary"
                else f"or pass num_classes={int(y.max()) + 1} if there are more classes."
            ),
            num_classes,
            float(y.min()),
            float(y.max()),
        )
    return y.astype(np.int32), num_classes


def label_counts(y: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    if task == "regression":
        return np.zeros(0, np.int64)
    if task == "multilabel":
        return y.sum(axis=0).astype(np.int64)
    return np.bincount(y, minlength=num_classes).astype(np.int64)


def check_fraction(value) -> float | None:
    """`validation_split` as a float strictly between 0 and 1, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ConfigError(
            "Expected validation_split to be a fraction strictly between 0 and 1, "
            f"e.g. 0.2. Received: validation_split={value!r}"
        )
    return float(value)


def split_indices(
    labels: np.ndarray, task: str, fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices, stratified by class for one-label tasks."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    want = round(n * fraction)
    if task in ("multiclass", "binary"):
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    else:
        groups = [np.arange(n)]
    groups = [rng.permutation(g) for g in groups]
    exact = np.array([len(g) * fraction for g in groups])
    take = np.floor(exact).astype(int)
    # Largest remainders get the rest, so the total is round(n * fraction).
    order = np.lexsort((rng.random(len(groups)), -(exact - take)))
    for i in order[: max(0, want - int(take.sum()))]:
        take[i] += 1
    # Never move a class's last example out of train.
    take = np.minimum(take, [max(len(g) - 1, 0) for g in groups])
    val = np.concatenate([g[:k] for g, k in zip(groups, take, strict=True)])
    train = np.concatenate([g[k:] for g, k in zip(groups, take, strict=True)])
    if len(val) == 0 or len(train) == 0:
        raise DataError(
            f"validation_split={fraction} of {n} examples leaves an empty "
            f"{'validation' if len(val) == 0 else 'training'} set. Use more data or "
            "another fraction, or pass the validation data yourself."
        )
    return np.sort(train), np.sort(val)


def validation_coverage(
    train_labels: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    class_names: list[str] | None,
    split: bool,
) -> str | None:
    """What makes a validation set too small to measure, or None.

    A validation set with fewer images than there are classes (with training
    images), or with no image of some class, gives an accuracy that says little:
    one validation image scores 0 or 1.
    """
    present = np.bincount(train_labels, minlength=num_classes) > 0
    counts = np.bincount(val_labels, minlength=num_classes)
    missing = [i for i in np.flatnonzero(present) if counts[i] == 0]
    classes, n = int(present.sum()), len(val_labels)
    if n >= classes and not missing:
        return None
    names = [class_names[i] if class_names else str(i) for i in missing]
    listed = ", ".join(names[:MAX_LISTED]) + (
        f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    )
    fix = (
        "Use more images per class, or a larger validation_split (--val-fraction)."
        if split
        else "Add validation images of every class."
    )
    none = f", and none of class{'es' if len(names) > 1 else ''} {listed}"
    return (
        f"the validation set has {n} image{'s' if n != 1 else ''} for {classes} "
        f"classes{none if missing else ''}: its accuracy says little. {fix}"
    )


def _dict_hint(spec) -> str:
    if isinstance(spec, dict):
        keys = list(spec)
        image = next((k for k in keys if "image" in k), keys[0] if keys else "image")
        label = next((k for k in keys if "label" in k), keys[-1] if keys else "label")
        return (
            f" Map it to pairs first: ds.map(lambda d: (d[{image!r}], d[{label!r}])),"
            " or load TFDS datasets with as_supervised=True."
        )
    if isinstance(spec, tuple) and len(spec) == 3:
        return (
            " Sample weights are not read here (fine_tune takes them); drop "
            "them with ds.map(lambda x, y, w: (x, y))."
        )
    return " Map it to (image, label) pairs first with ds.map(...)."


def check_dataset_spec(ds: tf.data.Dataset, what: str) -> tuple[int, Any]:
    """Checks an (image, label) dataset; returns (image rank, label spec)."""
    spec = ds.element_spec
    if not (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(s, tf.TensorSpec) for s in spec)
    ):
        raise DataError(
            f"Expected {what} to yield (image, label) pairs of tensors. Received "
            f"elements of structure {spec}.{_dict_hint(spec)}"
        )
    image, label = spec
    if label.shape.rank is None:
        raise DataError(
            f"Expected {what} to have labels of known rank. Received label spec "
            f"{label}. Set it, e.g. ds.map(lambda x, y: (x, tf.reshape(y, [])))."
        )
    rank = image.shape.rank
    if rank is None or rank not in (2, 3, 4):
        raise DataError(
            f"Expected {what} images of shape (height, width, channels), or batches "
            f"of them. Received image spec {image}."
        )
    channels = image.shape[-1] if rank >= 3 else 1
    if channels not in (None, 1, 3, 4):
        raise image_shape_error(tuple(image.shape), what)
    if not (image.dtype.is_integer or image.dtype.is_floating):
        raise DataError(f"Expected numeric {what} images. Received {image.dtype}.")
    return rank, label


def dataset_labels(ds: tf.data.Dataset) -> np.ndarray:
    """All labels of an (image, label) dataset, batched or not, in order.

    Reads the dataset once (decoding its images when it decodes them).

    Args:
        ds: tf.data.Dataset. A finite dataset of `(image, label)` pairs or
            batches of them (or of `(image, label, sample_weight)`: the
            weights are not read).

    Returns:
        A NumPy array with one label per example (first axis).

    Example:

    >>> y = tltf.data.dataset_labels(data.validation)
    >>> np.bincount(y)
    array([12, 11, 14])
    """
    spec = ds.element_spec
    if isinstance(spec, tuple) and len(spec) == 3:
        ds = ds.map(lambda x, y, w: (x, y))
    rank, label = check_dataset_spec(ds, "the dataset")
    return read_labels(ds, batched=rank == 4, what="the dataset")[0]


def read_labels(
    ds: tf.data.Dataset, batched: bool, what: str, channels: bool = False
) -> tuple[np.ndarray, set[int]]:
    """All labels of a dataset, and (when asked) the channel counts of its images."""
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise DataError(
            f"{what} repeats forever. Pass it without .repeat(): Keras repeats it "
            "once per epoch."
        )
    if channels:
        pairs = ds.map(lambda x, y: (y, tf.shape(x)[-1] if x.shape.rank > 2 else 1))
        if batched:  # One channel count per batch: repeat it per example.
            pairs = pairs.map(lambda y, c: (y, tf.fill(tf.shape(y)[:1], c)))
    else:
        pairs = ds.map(lambda _, y: (y, tf.constant(3)))
        if batched:
            pairs = pairs.map(lambda y, c: (y, tf.fill(tf.shape(y)[:1], c)))
    if not batched:
        pairs = pairs.batch(4096)
    labels, seen = [], set()
    for y, c in pairs.as_numpy_iterator():
        labels.append(y)
        seen.update(np.unique(c).tolist())
    if not labels:
        return np.zeros((0,), np.int32), seen
    return np.concatenate(labels), seen


def class_weights(
    labels=None,
    num_classes: int | None = None,
    *,
    counts=None,
    class_names: Sequence[str] | None = None,
) -> dict[int, float]:
    """Balanced class weights for Keras `fit(class_weight=...)`.

    Each class gets `n_samples / (n_classes * count)`, as scikit-learn's
    "balanced" mode: rare classes weigh more, and the mean weight per example
    is 1.

    Args:
        labels: A `DataBundle` (its `counts`), class indices of shape (N,), or
            one-hot / multi-hot rows of shape (N, C). Defaults to None.
        num_classes: int or None. Number of classes. Defaults to None (from the
            bundle, the counts, or the largest label + 1).
        counts: Examples per class, instead of `labels`. Defaults to None.
        class_names: Names for the error message. Defaults to None (from the
            bundle).

    Returns:
        A dict from class index to weight.

    Raises:
        DataError: A class has no examples (its weight would be infinite).

    Example:

    >>> tltf.data.class_weights(np.array([0, 0, 0, 1]))
    {0: 0.6666666666666666, 1: 2.0}
    >>> model.fit(data.train, class_weight=tltf.data.class_weights(data))
    """
    if (labels is None) == (counts is None):
        raise ConfigError("Pass exactly one of labels and counts to class_weights.")
    if isinstance(labels, DataBundle):
        counts = labels.counts
        num_classes = num_classes or labels.num_classes
        class_names = class_names or labels.class_names
    elif labels is not None:
        y = numeric_labels(np.asarray(labels), "class_weights")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 2:
            counts = y.sum(axis=0)
        elif y.ndim == 1:
            if y.size and (y.min() < 0 or np.any(np.mod(y, 1))):
                raise DataError(
                    "Expected class indices >= 0 as labels for class_weights. "
                    f"Received values such as {y[(y < 0) | (np.mod(y, 1) != 0)][:3]}."
                )
            y = y.astype(np.int64)
            size = max(num_classes or 0, int(y.max()) + 1 if y.size else 0)
            counts = np.bincount(y, minlength=size)
        else:
            raise DataError(
                f"Expected labels of shape (N,) or (N, C). Received: {y.shape}"
            )
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if num_classes is None:
        num_classes = len(counts)
    if len(counts) != num_classes:
        raise DataError(
            f"Expected labels in [0, {num_classes}) for num_classes={num_classes}. "
            f"Received counts for {len(counts)} classes."
        )
    if num_classes == 0 or counts.sum() == 0:
        raise DataError("class_weights received no examples.")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [
            f"{i} ({class_names[i]!r})" if class_names is not None else str(i)
            for i in empty
        ]
        which = (
            f"Classes {', '.join(names)} have"
            if len(names) > 1
            else (f"Class {names[0]} has")
        )
        raise DataError(
            f"{which} no examples, so a balanced weight would be infinite. Add "
            "examples, drop the class, or pass your own weights."
        )
    total = counts.sum()
    return {i: float(total / (num_classes * c)) for i, c in enumerate(counts)}
