"""Weight averaging: interpolation (WiSE-FT), BatchNorm recalibration, greedy soups.

Models fine-tuned from the same pretrained weights tend to lie in one basin of
the loss, where their weights can be averaged:

- `interpolate(model_a, model_b, alpha)` mixes two models weight by weight,
  `(1 - alpha) * a + alpha * b`. Between the converged stage-1 model (the
  pretrained base with a trained head) and the fine-tuned model it is WiSE-FT
  (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models").
- `recalibrate_bn(model, images)` re-estimates every BatchNorm layer's moving
  mean and variance on some images: the statistics of the layer's inputs over
  all of them, as AdaBN (Li et al. 2016) and SWA's `bn_update` (Izmailov et al.
  2018) do. An average of weights needs it when the BatchNorm statistics of its
  ends differ (BN layers that trained), since the average of two sets of
  statistics is not the statistics of the averaged network.
- `soup(models, data)` is the greedy soup of Wortsman et al. 2022 ("Model
  soups"): the models sorted by their score on held-out data, then each one
  added to a uniform average of the weights only if the score does not drop.
  `tltf.TuneResult.soup` does it over the best trials of a search.

Two models can be averaged when they have the same architecture: the same
weights, in the same order, with the same shapes (the same base, head and cut).
Variable paths are compared without Keras's automatic numeric suffixes
(`dense_3/kernel` and `dense_7/kernel` are the same weight), so two copies of an
architecture built in one session match.

Example:

>>> wise = tltf.interpolate(stage1_model, fine_tuned, alpha=0.5)
>>> tltf.recalibrate_bn(wise, train_images)
>>> result = tltf.soup([model_1, model_2, model_3], (x_val, y_val))
>>> result.model.save("soup.keras")
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

# Keras has no public form of this scope (see `tltf.saving`): it makes the
# rebuild refuse Lambda layers and other stored code, whatever the global switch.
from keras.src.saving.serialization_lib import SafeModeScope

from tltf._checks import check_choice, check_positive_int, is_number
from tltf.data import DataBundle
from tltf.errors import ConfigError, DataError, ModelError
from tltf.evaluation import evaluate
from tltf.saving import as_model

#: What `soup` can rank and choose by ("auto": accuracy, or the loss for regression).
SOUP_METRICS = ("auto", "accuracy", "loss")
#: What `soup` does with BatchNorm statistics ("auto": recalibrate when the
#: ingredients' statistics differ, that is when BN layers trained).
SOUP_BN = ("auto", "recalibrate", "keep")


# -- architecture -------------------------------------------------------------------
_AUTO_SUFFIX = re.compile(r"_\d+(?=/|$)")


def _plain_path(path: str) -> str:
    """A variable path without Keras's automatic `_<n>` suffixes of names."""
    return _AUTO_SUFFIX.sub("", path)


def architecture_mismatch(model_a: keras.Model, model_b: keras.Model) -> str | None:
    """Where two models' weights stop matching, in words; None when they match.

    Weights match when both models have as many, in the same order, with the
    same paths (without Keras's automatic numeric suffixes), shapes and dtypes.
    """
    a, b = model_a.weights, model_b.weights
    for i, (wa, wb) in enumerate(zip(a, b, strict=False)):
        same = (
            _plain_path(wa.path) == _plain_path(wb.path)
            and tuple(wa.shape) == tuple(wb.shape)
            and wa.dtype == wb.dtype
        )
        if not same:
            return (
                f"weight {i}: {wa.path!r} of shape {tuple(wa.shape)} ({wa.dtype}) "
                f"against {wb.path!r} of shape {tuple(wb.shape)} ({wb.dtype})"
            )
    if len(a) != len(b):
        longer, extra = ("the first", a) if len(a) > len(b) else ("the second", b)
        first = extra[min(len(a), len(b))]
        return (
            f"the number of weights: {len(a)} against {len(b)} ({longer} model "
            f"also has {first.path!r} of shape {tuple(first.shape)})"
        )
    return None


def _check_same_architecture(models: Sequence[keras.Model], names: Sequence[str]):
    for model, name in zip(models[1:], names[1:], strict=True):
        problem = architecture_mismatch(models[0], model)
        if problem is not None:
            raise ModelError(
                f"Expected models of one architecture (the same weights in the same "
                f"order: the same base, head and cut). {names[0]} and {name} differ "
                f"at {problem}. Average only models fine-tuned from the same "
                "build_model(...) call or search trials that share a head."
            )


def _rebuild(model: keras.Model) -> keras.Model:
    """A new model of `model`'s architecture, rebuilt from its config in safe mode.

    The rebuild has its own variables (with fresh values) and is compiled like
    `model` when Keras can rebuild its compile arguments.
    """
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    try:
        with SafeModeScope(True):
            clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError) as error:
        first = str(error).strip().splitlines()
        raise ModelError(
            f"Could not rebuild model {model.name!r} from its config in safe mode "
            f"({type(error).__name__}: {first[0] if first else ''}). Weight averaging "
            "needs a model that saves to .keras and loads with safe_mode=True: no "
            "Lambda layers, and custom layers registered with "
            "@keras.saving.register_keras_serializable."
        ) from None
    problem = architecture_mismatch(model, clone)
    if problem is not None:
        raise ModelError(
            f"Model {model.name!r} rebuilt from its config differs from it at "
            f"{problem}. Weight averaging needs a model whose config describes it "
            "fully (a functional or Sequential model, or get_config on your layers)."
        )
    compile_config = model.get_compile_config() if model.compiled else None
    if compile_config:
        # Left uncompiled when Keras cannot rebuild the compile arguments.
        with contextlib.suppress(TypeError, ValueError, KeyError):
            clone.compile_from_config(compile_config)
    return clone


def _is_float(variable) -> bool:
    return np.issubdtype(
        np.dtype(keras.backend.standardize_dtype(variable.dtype)), np.floating
    )


def mix_weights(weights: Sequence[Sequence[np.ndarray]], coefficients, into) -> None:
    """Assigns `sum(c * w)` of the weight lists to `into`'s weights, in place.

    The mechanism of `interpolate` and `soup`, for callers that hold weights as
    arrays (`fine_tune(wise=)` keeps stage 1's). Weights that are not floating
    point come from the list with the largest coefficient; a coefficient of 1
    with the others 0 gives that list bitwise.

    Args:
        weights: sequence of lists of arrays, each in `into.weights` order.
        coefficients: sequence of float, one per list.
        into: keras.Model. Receives the mix.
    """
    _mix(weights, coefficients, int(np.argmax(coefficients)), into)


def _mix(weights: Sequence[Sequence[np.ndarray]], coefficients, nearest: int, into):
    """Assigns `sum(c * w)` of float weights (others from `nearest`) to `into`."""
    for i, variable in enumerate(into.weights):
        if not _is_float(variable):
            variable.assign(weights[nearest][i])
            continue
        total = np.zeros(variable.shape, np.float64)
        for arrays, c in zip(weights, coefficients, strict=True):
            if c:
                total += c * np.asarray(arrays[i], np.float64)
        variable.assign(total.astype(keras.backend.standardize_dtype(variable.dtype)))


def interpolate(
    model_a: keras.Model, model_b: keras.Model, alpha: float, *, into=None
) -> keras.Model:
    """A model whose every weight is `(1 - alpha) * a + alpha * b`.

    With `model_a` the converged stage-1 model (the pretrained base and a
    trained head) and `model_b` the fine-tuned one, this is WiSE-FT (Wortsman
    et al. 2022): a point between the two that often keeps more of the
    pretrained features' robustness to shifted inputs.

    Every weight is mixed, the BatchNorm moving means and variances too. When
    BN layers trained (`bn="train"`), the mixed statistics are only an
    approximation of the mixed network's: call `recalibrate_bn` on the result
    to re-estimate them on some images. Weights that are not floating point
    (counters) come from the nearer end. At `alpha=0` and `alpha=1` the result
    has exactly (bitwise) the weights of `model_a` and `model_b`.

    The result is a new model of `model_a`'s architecture, rebuilt from its
    config in safe mode (so it saves to `.keras` and loads with
    `safe_mode=True`), with `model_a`'s metadata and trainability, and compiled
    like `model_a` when it was. The two models are not changed.

    Args:
        model_a: keras.Model, or the path of a `.keras` file. The end at
            `alpha=0`.
        model_b: keras.Model, or the path of a `.keras` file. The end at
            `alpha=1`, of the same architecture.
        alpha: float in [0, 1]. The weight of `model_b`.
        into: keras.Model or None. Keyword only. A model of the same
            architecture to write the mixed weights into, instead of building a
            new one (e.g. when trying several alphas). Defaults to None.

    Returns:
        keras.Model: the interpolated model (`into` when given).

    Raises:
        ConfigError: `alpha` is not a number in [0, 1].
        ModelError: the models differ in architecture (the message names the
            first weight that differs), or `model_a` cannot be rebuilt from its
            config in safe mode (a Lambda layer, an unregistered custom layer).

    Example:

    >>> stage1 = tltf.build_model("demo", num_classes=5)
    >>> tltf.fine_tune(stage1, train, val, fine_tune_epochs=0)
    >>> tuned = tltf.interpolate(stage1, stage1, 0.0)   # a copy, then train it
    >>> tltf.fine_tune(tuned, train, val, head_epochs=0)
    >>> wise = tltf.interpolate(stage1, tuned, alpha=0.5)
    """
    if not is_number(alpha) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(
            f"Expected alpha, the weight of model_b, to be a number in [0, 1] (0: "
            f"model_a, 1: model_b). Received: alpha={alpha!r}"
        )
    alpha = float(alpha)
    model_a, model_b = as_model(model_a), as_model(model_b)
    _check_same_architecture([model_a, model_b], ["model_a", "model_b"])
    if into is None:
        into = _rebuild(model_a)
    else:
        _check_same_architecture([model_a, as_model(into)], ["model_a", "into"])
    weights = [model_a.get_weights(), model_b.get_weights()]
    if alpha in (0.0, 1.0):  # exactly one end (no 0 * inf = nan either)
        into.set_weights(weights[int(alpha)])
    else:
        _mix(weights, (1.0 - alpha, alpha), int(alpha >= 0.5), into)
    return into


# -- BatchNorm recalibration ---------------------------------------------------------
def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of a model, nested models included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


class _Moments:
    """Sums over batches of one BN layer's input statistics (float64)."""

    def __init__(self):
        self.count = 0.0
        self.mean = 0.0  # sum of n * batch mean
        self.within = 0.0  # sum of n * batch variance
        self.square = 0.0  # sum of n * batch mean ** 2

    def add(self, mean, variance, n) -> None:
        mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
        n = float(n)
        self.count += n
        self.mean = self.mean + n * mean
        self.within = self.within + n * variance
        self.square = self.square + n * mean**2

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and (biased) variance over every input, pooled exactly."""
        mean = self.mean / self.count
        between = np.maximum(self.square / self.count - mean**2, 0.0)
        return mean, self.within / self.count + between


def _recording_call(bn, found: list):
    """A `call` for `bn` that normalises with batch statistics and records them."""

    def call(inputs, training=None, mask=None):
        x = tf.cast(inputs, tf.float32)
        rank = x.shape.rank
        axis = bn.axis % rank
        axes = [i for i in range(rank) if i != axis]
        mean, variance = tf.nn.moments(x, axes, keepdims=True)
        n = tf.reduce_prod(tf.gather(tf.shape(x), axes))
        found.append((bn, tf.reshape(mean, [-1]), tf.reshape(variance, [-1]), n))
        shape = [1] * rank
        shape[axis] = -1
        gamma = (
            None
            if bn.gamma is None
            else tf.reshape(tf.cast(bn.gamma, tf.float32), shape)
        )
        beta = (
            None if bn.beta is None else tf.reshape(tf.cast(bn.beta, tf.float32), shape)
        )
        outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, bn.epsilon)
        return tf.cast(outputs, bn.compute_dtype)

    return call


def _image_batches(data, model: keras.Model, batch_size: int, steps: int | None):
    """Batches of images from arrays, (images, labels), tf.data or a DataBundle."""
    if isinstance(data, DataBundle):
        data = data.unshuffled if data.unshuffled is not None else data.train
    rank = len(model.input_shape)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple):
            if not spec or not isinstance(spec[0], tf.TensorSpec):
                raise DataError(
                    "Expected a tf.data.Dataset of images or of (image, label) pairs. "
                    f"Received elements of structure {spec}."
                )
            data, spec = data.map(lambda *element: element[0]), spec[0]
        elif not isinstance(spec, tf.TensorSpec):
            raise DataError(
                "Expected a tf.data.Dataset of images or of (image, label) pairs. "
                f"Received elements of structure {spec}. Map it, e.g. "
                "`.map(lambda d: d['image'])`."
            )
        if spec.shape.rank == rank - 1:
            data = data.batch(batch_size)
        if steps is None and data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ConfigError(
                "The dataset repeats forever: pass steps=, the number of batches "
                "to read."
            )
        yield from data.take(-1 if steps is None else steps)
        return
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        data = data[0]
    try:
        images = np.asarray(data)
    except ValueError:
        images = None
    if (
        images is None
        or images.ndim != rank
        or not np.issubdtype(images.dtype, np.number)
    ):
        raise DataError(
            f"Expected images as an array of shape (N, {', '.join(str(d) for d in model.input_shape[1:])}), "
            "(images, labels) arrays, a tf.data.Dataset or a DataBundle. Received: "
            f"{type(data).__name__}"
            + (f" of shape {images.shape}" if images is not None else "")
        )
    stop = len(images) if steps is None else min(len(images), steps * batch_size)
    for start in range(0, stop, batch_size):
        yield images[start : min(start + batch_size, stop)]


def recalibrate_bn(
    model: keras.Model, data, steps: int | None = None, batch_size: int = 32
) -> keras.Model:
    """Re-estimates every BatchNorm layer's moving mean and variance on `data`.

    Each BN layer's statistics are reset and estimated again over all the
    images read, exactly: the mean and the (biased) variance of the layer's
    inputs over every image and position, pooled over the batches (the
    average of the batch means weighted by batch size, and the batch variances
    plus the spread of the batch means), not an exponential moving average.
    This is AdaBN (Li et al. 2016) when `data` are target-domain images, and
    SWA's `bn_update` (Izmailov et al. 2018) after averaging weights. As in
    both, the forward pass normalises with each batch's own statistics, so a
    layer's inputs are those of training mode; every other layer (dropout,
    augmentation) runs in inference mode. Batches of a few dozen images give
    good statistics.

    Nothing else changes: the other weights, every layer's `trainable` flag and
    momentum, and tltf's BatchNorm policy (see `tltf.freezing`) are as before.
    It prints nothing. It works on models built by tltf (BN layers inside the
    base and the head) and on any single-input keras.Model.

    Args:
        model: keras.Model. Changed in place.
        data: Images: an array `(N, height, width, channels)`, `(images,
            labels)` arrays (the labels are not used), a `tf.data.Dataset` of
            images or of `(image, label)` pairs (batched or not), or a
            `DataBundle` (its training images, in a fixed order).
        steps: int or None. Read at most this many batches. Defaults to None
            (all; required for a dataset that repeats forever).
        batch_size: int. Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Returns:
        keras.Model: `model`, recalibrated (a model without BN layers is
        returned unchanged, and `data` is not read).

    Raises:
        ConfigError: a bad `steps` or `batch_size`.
        DataError: `data` is not images of the model's input shape, or is empty.

    Example:

    >>> wise = tltf.interpolate(stage1_model, fine_tuned, 0.5)
    >>> tltf.recalibrate_bn(wise, x_train)
    """
    model = as_model(model)
    batch_size = check_positive_int(batch_size, "batch_size")
    if steps is not None:
        steps = check_positive_int(steps, "steps")
    layers = batchnorm_layers(model)
    if not layers:
        return model
    if len(model.inputs) != 1:
        raise ModelError(
            f"recalibrate_bn takes a model with one input. Received model "
            f"{model.name!r} with {len(model.inputs)} inputs."
        )
    found: list = []
    saved = {id(bn): bn.__dict__.get("call") for bn in layers}
    sums = {id(bn): _Moments() for bn in layers}
    want = tuple(model.input_shape[1:])
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    try:
        for bn in layers:
            object.__setattr__(bn, "call", _recording_call(bn, found))

        # The batch size left open: one trace for every batch, the last too.
        @tf.function(input_signature=[tf.TensorSpec((None, *want), dtype)])
        def batch_moments(images):
            found.clear()
            model(images, training=False)
            return [(mean, variance, n) for _, mean, variance, n in found]

        order: list = []
        batches = 0
        for images in _image_batches(data, model, batch_size, steps):
            got = tuple(images.shape[1:])
            if len(got) != len(want) or any(
                w is not None and g != w for g, w in zip(got, want, strict=True)
            ):
                raise DataError(
                    f"Expected images of shape {want} for model {model.name!r}. "
                    f"Received a batch of shape {tuple(images.shape)}. Resize them "
                    "(tltf.load_data(..., image_size=...))."
                )
            moments = batch_moments(tf.cast(images, dtype))
            if found:  # traced just now: the layers in call order
                order = [bn for bn, *_ in found]
                found.clear()
            for bn, (mean, variance, n) in zip(order, moments, strict=True):
                sums[id(bn)].add(mean.numpy(), variance.numpy(), n.numpy())
            batches += 1
    finally:
        for bn in layers:
            if saved[id(bn)] is None:
                bn.__dict__.pop("call", None)
            else:
                object.__setattr__(bn, "call", saved[id(bn)])
    if not batches:
        raise DataError("recalibrate_bn read no images: the data is empty.")
    for bn in layers:
        moments = sums[id(bn)]
        if not moments.count:
            continue  # not on the path from the input (never called)
        mean, variance = moments.result()
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        bn.moving_variance.assign(variance.astype(bn.moving_variance.dtype))
        if bn.renorm:
            bn.moving_stddev.assign(np.sqrt(variance).astype(bn.moving_stddev.dtype))
    return model


# -- greedy soups ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SoupResult:
    """What `soup` returns.

    Attributes:
        model: keras.Model. The soup: the uniform average of the kept
            ingredients (a new model; with one ingredient kept, a copy of it).
        kept: tuple of str. The ingredients in the soup, in the order added
            (the best first).
        scores: dict. Each ingredient's own score on the data, by name.
        score: float. The soup's score on the data (never worse than the best
            ingredient's).
        metric: str. "accuracy" (higher is better) or "loss" (lower is better).
        tried: tuple of dict. One row per ingredient after the first, in the
            order tried: "ingredient", "score" (of the soup with it added) and
            "kept".
        recalibrated: bool. Whether the averages' BatchNorm statistics were
            re-estimated (`recalibrate_bn`).
        left_out: tuple of str. Ingredients left out before the soup because
            their architecture differs from the best one's (`TuneResult.soup`).
    """

    model: keras.Model
    kept: tuple
    scores: dict
    score: float
    metric: str
    tried: tuple = ()
    recalibrated: bool = False
    left_out: tuple = ()

    def summary(self) -> str:
        """The soup in a few lines: each ingredient, its score, whether kept."""
        lines = [f"ingredient  {self.metric:>9}  soup {self.metric}  kept"]
        first = self.kept[0]
        lines.append(f"{first:<10}  {self.scores[first]:9.4f}  {'-':>13}  yes")
        for row in self.tried:
            name = row["ingredient"]
            lines.append(
                f"{name:<10}  {self.scores[name]:9.4f}  {row['score']:13.4f}  "
                f"{'yes' if row['kept'] else 'no'}"
            )
        lines.append(
            f"soup of {len(self.kept)} ({', '.join(self.kept)}): {self.metric} "
            f"{self.score:.4f} against {self.scores[first]:.4f} for {first} alone"
            + (", BatchNorm recalibrated" if self.recalibrated else "")
        )
        if self.left_out:
            lines.append(f"left out (another architecture): {', '.join(self.left_out)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _score(model, data, metric: str, batch_size: int) -> tuple[float | None, float]:
    """(accuracy or None, loss) of a model on labelled data (`tltf.evaluate`)."""
    report = evaluate(model, data, batch_size=batch_size)
    accuracy = report.accuracy
    loss = report.loss
    if metric == "accuracy" and accuracy is None:
        raise ConfigError(
            "metric='accuracy' needs a classification model; this one is a "
            "regression model. Use metric='loss' (or 'auto')."
        )
    return (None if accuracy is None else float(accuracy)), float(
        math.nan if loss is None else loss
    )


def _bn_statistics(model: keras.Model) -> list[int]:
    """Positions in `model.weights` of the BatchNorm moving statistics."""
    ids = set()
    for bn in batchnorm_layers(model):
        ids.update(id(v) for v in (bn.moving_mean, bn.moving_variance))
        if bn.renorm:
            ids.add(id(bn.moving_stddev))
    return [i for i, w in enumerate(model.weights) if id(w) in ids]


def soup(
    models: Sequence,
    data,
    *,
    metric: str = "auto",
    bn: str = "auto",
    bn_data=None,
    names: Sequence[str] | None = None,
    steps: int | None = None,
    batch_size: int = 32,
    verbose: int = 1,
) -> SoupResult:
    """A greedy soup: the models whose uniform weight average scores best on `data`.

    The recipe of Wortsman et al. 2022 ("Model soups"): score every model
    (ingredient) on `data`, the held-out data used to choose; start from the
    best; try the others from best to worst, and keep each one in the uniform
    average of the weights only if the average's score does not drop. The soup
    is therefore never worse than its best ingredient on `data` (it may be on
    other data: choose on validation data, then test on a test set).

    Averaging makes sense for models fine-tuned from the same pretrained
    weights, e.g. the trials of one search (`tltf.TuneResult.soup`).

    Args:
        models: Sequence of keras.Model (or paths of `.keras` files) of one
            architecture. They are not changed.
        data: Labelled held-out data, as `tltf.evaluate` takes it: `(images,
            labels)` arrays, a `tf.data.Dataset` of `(image, label)`, a
            `DataBundle` (its validation set), a folder or a `.npz` file.
        metric: str. What to rank and choose by: "accuracy" (higher is
            better), "loss" (lower is better), or "auto": accuracy for
            classification, the loss for regression. Ties in accuracy are
            ranked by the loss. Defaults to "auto".
        bn: str. BatchNorm statistics of each average: "recalibrate"
            (re-estimate them on `bn_data` with `recalibrate_bn` before
            scoring), "keep" (the average of the ingredients' statistics), or
            "auto": recalibrate when the ingredients' statistics differ (BN
            layers that trained), keep them otherwise. Defaults to "auto".
        bn_data: Images for the recalibration, as `recalibrate_bn` takes them.
            Defaults to None: `data` (a `DataBundle`'s training images).
        names: Sequence of str or None. The ingredients' names. Defaults to
            None: "0", "1", ... in the order given.
        steps: int or None. Batches of `bn_data` to read per recalibration.
            Defaults to None (all).
        batch_size: int. Batch size of arrays. Defaults to 32.
        verbose: int. 0 is silent; 1 prints the soup's table. Defaults to 1.

    Returns:
        A `SoupResult`: the soup model, the ingredients kept, the scores.

    Raises:
        ModelError: the models differ in architecture (the message names the
            two models and the first weight that differs).
        ConfigError: no models, a bad option, or names that do not fit.

    Example:

    >>> result = tltf.soup([m1, m2, m3], (x_val, y_val))
    >>> result.kept, result.score
    (('1', '0'), 0.93)
    >>> result.model.save("soup.keras")
    """
    check_choice(metric, SOUP_METRICS, "metric")
    check_choice(bn, SOUP_BN, "bn")
    batch_size = check_positive_int(batch_size, "batch_size")
    if steps is not None:
        steps = check_positive_int(steps, "steps")
    if (
        isinstance(models, keras.Model)
        or not isinstance(models, Sequence)
        or not models
    ):
        raise ConfigError(
            "Expected models, a non-empty list of keras.Model (or .keras paths). "
            f"Received: {type(models).__name__}"
            + (" (empty)" if isinstance(models, Sequence) and not models else "")
        )
    models = [as_model(m) for m in models]
    names = [str(i) for i in range(len(models))] if names is None else list(names)
    if len(names) != len(models) or len(set(map(str, names))) != len(names):
        raise ConfigError(
            f"Expected {len(models)} distinct names, one per model. Received: "
            f"names={names!r}"
        )
    names = [str(n) for n in names]
    _check_same_architecture(models, [f"model {n!r}" for n in names])

    weights = [m.get_weights() for m in models]
    # One model scores every ingredient and every average, its weights set for
    # each: its prediction step is traced once, not once per ingredient.
    workspace = _rebuild(models[0]) if len(models) > 1 else models[0]
    measured = {}
    for name, values in zip(names, weights, strict=True):
        if workspace is not models[0]:
            workspace.set_weights(values)
        measured[name] = _score(workspace, data, metric, batch_size)
    if metric == "auto":
        metric = "loss" if measured[names[0]][0] is None else "accuracy"
    higher = metric == "accuracy"

    def value(scores: tuple) -> float:
        return scores[0] if higher else scores[1]

    def rank(name: str) -> tuple:
        accuracy, loss = measured[name]
        return (-accuracy, loss) if higher else (loss,)

    order = sorted(range(len(models)), key=lambda i: rank(names[i]))
    statistics = _bn_statistics(models[0])
    recalibrate = bn == "recalibrate" or (
        bn == "auto"
        and any(
            not np.array_equal(w[i], weights[0][i])
            for w in weights[1:]
            for i in statistics
        )
    )
    recalibrate = recalibrate and bool(statistics)

    best = order[0]
    kept, total = [best], [np.asarray(w, np.float64) for w in weights[best]]
    current = value(measured[names[best]])
    chosen = weights[best]
    tried = []
    for i in order[1:]:
        count = len(kept) + 1
        for variable, t, w, b in zip(
            workspace.weights, total, weights[i], weights[best], strict=True
        ):
            if _is_float(variable):
                variable.assign(
                    ((t + w) / count).astype(
                        keras.backend.standardize_dtype(variable.dtype)
                    )
                )
            else:
                variable.assign(b)
        if recalibrate:
            recalibrate_bn(
                workspace, data if bn_data is None else bn_data, steps, batch_size
            )
        candidate = value(_score(workspace, data, metric, batch_size))
        keep = candidate >= current if higher else candidate <= current
        tried.append({"ingredient": names[i], "score": candidate, "kept": keep})
        if keep:
            kept.append(i)
            total = [
                t + np.asarray(w, np.float64)
                for t, w in zip(total, weights[i], strict=True)
            ]
            current, chosen = candidate, workspace.get_weights()
    result_model = _rebuild(models[best])
    result_model.set_weights(chosen)
    result = SoupResult(
        model=result_model,
        kept=tuple(names[i] for i in kept),
        scores={n: value(measured[n]) for n in names},
        score=float(current),
        metric=metric,
        tried=tuple(tried),
        recalibrated=recalibrate and len(kept) > 1,
    )
    if verbose:
        print(result.summary())
    return result
