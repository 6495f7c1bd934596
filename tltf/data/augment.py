"""Augmentation: Keras augmentation layers (`augmentation`), batch-level `mixup`
and `cutmix`, and `one_hot` for the labels they need.
"""

from __future__ import annotations

from numbers import Real

import keras
import tensorflow as tf

from tltf._checks import check_positive_int
from tltf.data.labels import check_dataset_spec
from tltf.errors import ConfigError, DataError, suggest

_AUTOTUNE = tf.data.AUTOTUNE
_FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")


def augmentation(
    flip: str | None = "horizontal",
    rotation: float = 0.1,
    zoom: float = 0.1,
    translation: float = 0.1,
    contrast: float = 0.1,
    seed: int | None = None,
) -> keras.Sequential:
    """Random image augmentation as Keras preprocessing layers.

    The layers change images only in training (`training=True`, as in `fit`);
    at inference they pass images through unchanged, so they can sit inside the
    model, right after its input, and are saved with it. They expect raw pixels in
    [0, 255]. A factor of 0 leaves that layer out.

    Args:
        flip: str or None. "horizontal", "vertical", "horizontal_and_vertical", or
            None for no flip. Defaults to "horizontal".
        rotation: float. Largest rotation, as a fraction of a full turn.
            Defaults to 0.1.
        zoom: float. Largest zoom in or out, as a fraction of the size.
            Defaults to 0.1.
        translation: float. Largest shift, as a fraction of height and width.
            Defaults to 0.1.
        contrast: float. Largest contrast change, as a fraction. Defaults to 0.1.
        seed: int or None. Seed of the random layers. Defaults to None.

    Returns:
        A `keras.Sequential` named "augmentation".

    Example:

    >>> augment = tltf.data.augmentation(rotation=0.05, contrast=0)
    >>> train = data.train.map(lambda x, y: (augment(x, training=True), y))
    """
    if flip is not None and flip not in _FLIPS:
        raise ConfigError(
            f"Expected flip to be one of {list(_FLIPS)} or None. Received: "
            f"flip={flip!r}.{suggest(str(flip), _FLIPS)}"
        )
    for name, value in (
        ("rotation", rotation),
        ("zoom", zoom),
        ("translation", translation),
        ("contrast", contrast),
    ):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
            raise ConfigError(
                f"Expected {name} to be a fraction in [0, 1), e.g. 0.1. Received: "
                f"{name}={value!r}"
            )

    def layer_seed(i):
        return None if seed is None else seed + i

    layers: list[keras.layers.Layer] = []
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=layer_seed(0)))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=layer_seed(1)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=layer_seed(2)))
    if translation:
        layers.append(
            keras.layers.RandomTranslation(translation, translation, seed=layer_seed(3))
        )
    if contrast:
        layers.append(
            keras.layers.RandomContrast(
                contrast, value_range=(0, 255), seed=layer_seed(4)
            )
        )
    if not layers:
        layers.append(keras.layers.Identity())
    return keras.Sequential(layers, name="augmentation")


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0:
        raise ConfigError(f"Expected alpha > 0, e.g. 0.2. Received: alpha={alpha!r}")
    return float(alpha)


def _mix_inputs(ds: tf.data.Dataset, num_classes: int | None, name: str):
    """Checks a batched (images, labels) dataset; returns a one-hot label fn."""
    rank, label = check_dataset_spec(ds, f"the {name} dataset")
    if rank != 4:
        raise DataError(
            f"{name} works on batches: it needs a batched dataset of (images, "
            "labels). Call .batch(...) first, or pass data.train from load_data."
        )
    sparse = label.shape.rank == 1 or (label.shape.rank == 2 and label.shape[-1] == 1)
    if sparse:
        if num_classes is None:
            raise ConfigError(
                f"{name} turns class indices into one-hot labels and needs "
                "num_classes, e.g. num_classes=data.num_classes."
            )
        check_positive_int(num_classes, "num_classes")
    elif label.shape.rank != 2:
        raise DataError(
            f"Expected {name} labels of shape (batch,) or (batch, num_classes). "
            f"Received label spec {label}."
        )
    elif num_classes is not None and label.shape[-1] not in (None, num_classes):
        raise DataError(
            f"Expected one-hot labels of {num_classes} columns for num_classes="
            f"{num_classes}. Received label spec {label}."
        )

    def one_hot(y):
        if sparse:
            return tf.one_hot(tf.reshape(tf.cast(y, tf.int32), [-1]), num_classes)
        return tf.cast(y, tf.float32)

    return one_hot


def _beta(shape, seeds, alpha: float) -> tf.Tensor:
    g1 = tf.random.stateless_gamma(shape, seeds[0], alpha)
    g2 = tf.random.stateless_gamma(shape, seeds[1], alpha)
    total = g1 + g2
    return tf.where(total > 0, g1 / tf.maximum(total, 1e-30), 0.5)


def _with_seeds(ds: tf.data.Dataset, seed: int | None) -> tf.data.Dataset:
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(ds, seeds)


def one_hot(ds: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """Turns the class-index labels of a batched dataset into one-hot rows.

    After `mixup` or `cutmix` the training labels are one-hot, so a model compiled
    for them needs one-hot validation labels too.

    Args:
        ds: tf.data.Dataset. Batches of (images, labels) or (images, labels,
            sample_weights).
        num_classes: int. Number of classes.

    Returns:
        The dataset with float32 one-hot labels; one-hot labels pass unchanged.

    Example:

    >>> val = tltf.data.one_hot(data.validation, data.num_classes)
    """
    spec = ds.element_spec
    weighted = isinstance(spec, tuple) and len(spec) == 3
    # Sample weights, where the batches carry them, pass unchanged.
    pairs = ds.map(lambda x, y, w: (x, y)) if weighted else ds
    fn = _mix_inputs(pairs, num_classes, "one_hot")
    return ds.map(lambda x, y, *w: (x, fn(y), *w), num_parallel_calls=_AUTOTUNE)


def mixup(
    ds: tf.data.Dataset,
    alpha: float = 0.2,
    num_classes: int | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Mixup on a batched dataset: blends each example with another of its batch.

    Each example gets `lam ~ Beta(alpha, alpha)`; its image becomes
    `lam * x + (1 - lam) * x_other` and its label the same mix of one-hot labels,
    so labels still sum to 1. Vectorised per batch; use it on the training data
    only, and with a one-hot loss (`fine_tune` picks it from the labels).

    Args:
        ds: tf.data.Dataset. Batches of (images, labels), labels as class indices
            or one-hot rows.
        alpha: float. Beta distribution parameter; small values mix little.
            Defaults to 0.2.
        num_classes: int or None. Needed for class-index labels. Defaults to None.
        seed: int or None. Seed of the mixing. Defaults to None.

    Returns:
        A dataset of (float32 images, float32 one-hot labels) batches.

    Example:

    >>> train = tltf.data.mixup(data.train, alpha=0.2, num_classes=data.num_classes)
    """
    alpha = _check_alpha(alpha)
    one_hot = _mix_inputs(ds, num_classes, "mixup")

    def mix(batch, seeds):
        x, y = batch
        x, y = tf.cast(x, tf.float32), one_hot(y)
        s = tf.random.experimental.stateless_split(seeds, 3)
        size = tf.shape(x)[:1]
        lam = _beta(size, s[:2], alpha)
        other = tf.argsort(tf.random.stateless_uniform(size, s[2]))
        lx = tf.reshape(lam, [-1, 1, 1, 1])
        ly = lam[:, tf.newaxis]
        x = lx * x + (1 - lx) * tf.gather(x, other)
        y = ly * y + (1 - ly) * tf.gather(y, other)
        return x, y

    return _with_seeds(ds, seed).map(mix, num_parallel_calls=_AUTOTUNE)


def cutmix(
    ds: tf.data.Dataset,
    alpha: float = 1.0,
    num_classes: int | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """CutMix on a batched dataset: pastes a box from another example of the batch.

    Each example gets `lam ~ Beta(alpha, alpha)` and a random box of area
    `(1 - lam)` of the image (clipped at the borders) copied from another
    example; its one-hot label becomes the area-weighted mix, so labels still
    sum to 1. Vectorised per batch; use it on the training data only.

    Args:
        ds: tf.data.Dataset. Batches of (images, labels), labels as class indices
            or one-hot rows.
        alpha: float. Beta distribution parameter. Defaults to 1.0.
        num_classes: int or None. Needed for class-index labels. Defaults to None.
        seed: int or None. Seed of the boxes. Defaults to None.

    Returns:
        A dataset of (float32 images, float32 one-hot labels) batches.

    Example:

    >>> train = tltf.data.cutmix(data.train, num_classes=data.num_classes, seed=0)
    """
    alpha = _check_alpha(alpha)
    one_hot = _mix_inputs(ds, num_classes, "cutmix")

    def mix(batch, seeds):
        x, y = batch
        x, y = tf.cast(x, tf.float32), one_hot(y)
        s = tf.random.experimental.stateless_split(seeds, 5)
        shape = tf.shape(x)
        size, height, width = shape[:1], shape[1], shape[2]
        lam = _beta(size, s[:2], alpha)
        cut = tf.sqrt(1.0 - lam)
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        cy = tf.random.stateless_uniform(size, s[2]) * h
        cx = tf.random.stateless_uniform(size, s[3]) * w

        def span(center, length, limit):
            low = tf.clip_by_value(tf.round(center - length / 2), 0, limit)
            high = tf.clip_by_value(tf.round(center + length / 2), 0, limit)
            return low, high

        y0, y1 = span(cy, cut * h, h)
        x0, x1 = span(cx, cut * w, w)
        rows = tf.range(h)[tf.newaxis, :]
        cols = tf.range(w)[tf.newaxis, :]
        in_rows = (rows >= y0[:, tf.newaxis]) & (rows < y1[:, tf.newaxis])
        in_cols = (cols >= x0[:, tf.newaxis]) & (cols < x1[:, tf.newaxis])
        box = tf.cast(in_rows[:, :, tf.newaxis] & in_cols[:, tf.newaxis, :], tf.float32)
        box = box[..., tf.newaxis]
        other = tf.argsort(tf.random.stateless_uniform(size, s[4]))
        x = x * (1 - box) + tf.gather(x, other) * box
        kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        ly = kept[:, tf.newaxis]
        y = ly * y + (1 - ly) * tf.gather(y, other)
        return x, y

    return _with_seeds(ds, seed).map(mix, num_parallel_calls=_AUTOTUNE)
