"""The stage-1 frozen-feature cache.

While the base is frozen (and no augmentation is active), every head epoch would
recompute the same base features. With the cache, stage 1 computes them once for
train and validation, trains the head on them, and the full model ends up with the
trained head weights, because the head sub-model shares its layers with it.

`fine_tune` runs the cached stage 1 as its own `fit` on the head sub-model, but
user callbacks never see that: `Continuation` presents both fits to them as one
run on the full model, with continuous epoch numbers and one `on_train_begin` /
`on_train_end`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tltf.bases.cut import block_outputs
from tltf.errors import DataError
from tltf.heads import pixel_columns
from tltf.info import model_info
from tltf.stages import StageTag

#: Above this many bytes of features, the cache goes to disk (memory-mapped).
MEMORY_LIMIT_BYTES = 2 * 1024**3

#: Stage 2's frozen-block output over `MEMORY_LIMIT_BYTES` goes to a file only
#: where at least this many times its size is free on the disk.
DISK_HEADROOM = 2


def has_accelerator() -> bool:
    """Whether TensorFlow sees a GPU or a TPU."""
    return any(tf.config.list_physical_devices(kind) for kind in ("GPU", "TPU"))


def frozen_output_on_disk(nbytes: int, directory=None) -> bool:
    """Whether stage 2 reads `nbytes` of frozen-block output (over
    `MEMORY_LIMIT_BYTES`) from a file rather than recompute it every epoch.

    Yes on a machine without an accelerator, where the frozen blocks are most
    of an epoch's time and reading their output back costs a fraction of it
    (benchmarks/stage2_disk.py), and where `directory` (the temporary folder
    by default) has `DISK_HEADROOM` times `nbytes` free. With a GPU or TPU the
    blocks run fast enough that disk reads may not win, and nobody has
    measured it there: full passes, as before.
    """
    if has_accelerator():
        return False
    try:
        free = shutil.disk_usage(directory or tempfile.gettempdir()).free
    except OSError:
        return False
    return free >= DISK_HEADROOM * nbytes


class Joined:
    """Arrays end to end, read in row slices as one array, never copied whole
    (memory maps of features on disk included).

    Example:

    >>> Joined(np.arange(3), np.arange(3, 5))[2:4].tolist()
    [2, 3]
    """

    def __init__(self, *arrays):
        self.arrays = arrays
        self.ends = np.cumsum([len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("Joined takes row slices with a step of 1")
        parts, begin = [], 0
        for array, end in zip(self.arrays, self.ends, strict=True):
            lo, hi = max(start, begin), min(stop, end)
            if lo < hi:
                parts.append(array[lo - begin : hi - begin])
            begin = end
        if not parts:
            return self.arrays[0][:0]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def cut_tensor(model: keras.Model):
    """Where the cache cuts the model: after the head's pooling, else the base.

    Everything below the cut is frozen and deterministic in stage 1 (the head's
    global pooling has no weights), so its output can be computed once. Cutting
    after the pooling keeps the cache small: one vector per image.
    """
    names = {layer.name for layer in model.layers}
    if "head_pool" in names:
        return model.get_layer("head_pool").output
    base = model_info(model).base
    return base._inbound_nodes[0].output_tensors[0]


def feature_model(model: keras.Model) -> keras.Model:
    """Images in, cached features out (preprocessing, base, head pooling)."""
    return keras.Model(
        model.inputs[0], cut_tensor(model), name=f"{model.name}_features"
    )


def feature_extractor(model: keras.Model):
    """A compiled function from image batches to cached features.

    Its input signature leaves the batch size open, so one trace serves full and
    partial batches of the training and the validation set alike (Keras's
    `predict` traces again for the last, smaller batch and for every new model).
    Pass it to each `FeatureCache` of the same model.
    """
    return inference_function(feature_model(model))


def inference_function(part: keras.Model):
    """`part` in inference mode as one tf.function, batch size left open.

    One trace serves every batch, the last, smaller one included (a
    `reduce_retracing` function traces twice: once for the first batch size,
    once more, relaxed, for the next). Callers cast the images to
    `input_signature[0].dtype`. A part with several inputs takes them as
    positional arguments, in `part.inputs` order.
    """
    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in part.inputs]

    @tf.function(input_signature=specs, reduce_retracing=True)
    def extract(*inputs):
        return part(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    return extract


def build_metrics(model: keras.Model, labels) -> None:
    """Builds a model's compiled metrics without a training step.

    For two reasons:

    - Keras callbacks with `mode="auto"` (EarlyStopping, ModelCheckpoint) find
      the direction of a monitored metric such as "val_accuracy" in
      `model.metrics`, which lists compiled metrics only once a training step of
      that model has built them. A cached stage 1 trains the head sub-model, not
      the full model the callbacks see.
    - Keras 3's TensorFlow trainer creates the metrics' variables while it
      traces the first step (unless the model was made under a distribution
      strategy), and a `tf.function` that creates variables is traced twice:
      each first `fit` or `evaluate` of a compiled model traced the whole
      forward (and backward) pass twice. On 2 cores, a one-epoch stage 2 of the
      demo base took 6.7 to 6.9 s that way and 3.7 to 5.1 s traced once
      (`benchmarks/first_epoch.py`; `build_optimizer` does the optimizer's part).

    They are built from one dummy label and prediction, then reset. From a
    dataset this is only a shortcut: a metric that fails on the dummy batch is
    left to Keras.

    Args:
        model: keras.Model. A compiled model.
        labels: array, None, or the `tf.data.Dataset` of `(x, y)` batches about
            to be passed to `fit` or `evaluate` (only its element spec is read).
            Labels are class indices or one-hot rows, as the model is trained
            on; None does nothing.
    """
    from_data = isinstance(labels, tf.data.Dataset)
    if from_data:
        spec = labels.element_spec
        if (
            getattr(model, "_distribute_strategy", None) is not None  # Keras does it
            or not isinstance(spec, tuple)
            or len(spec) < 2
            or not isinstance(spec[1], tf.TensorSpec)
            or spec[1].shape.rank is None
        ):
            return
        dims = [1 if d is None else d for d in spec[1].shape.as_list()]
        labels = np.zeros(dims, spec[1].dtype.as_numpy_dtype)
    if labels is None or not len(labels) or not isinstance(model.output_shape, tuple):
        return
    y_pred = np.zeros((1, *model.output_shape[1:]), "float32")
    try:
        model.compute_metrics(None, np.asarray(labels[:1]), y_pred)
    except Exception:
        if not from_data:
            raise
        # Only a shortcut: a metric that cannot take the dummy batch is built
        # by Keras in the first trace, as without it.
    model.reset_metrics()


def build_optimizer(model: keras.Model) -> None:
    """Builds the model's optimizer on its trainable variables, before a trace.

    Keras builds an unbuilt optimizer at the first training step, on the same
    variables in the same order; built there, inside the traced step, its
    variables make TensorFlow trace the whole step a second time (see
    `build_metrics`). Call it once the variables that train are set.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or optimizer.built:
        return
    strategy = (
        getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    )
    with strategy.scope():
        optimizer.build(model.trainable_variables)


def head_model(model: keras.Model) -> keras.Model:
    """The trainable rest of the head: features in, predictions out.

    Its layers are the full model's own, so training it trains the full model.
    """
    return keras.Model(cut_tensor(model), model.outputs, name=f"{model.name}_head")


class FrozenSplit:
    """A model cut where its frozen part ends: the one way tltf trains on cached
    features.

    `extractor` maps images to the frozen part's output and `trainable` maps that
    output to the predictions; both share the model's layers, so training
    `trainable` trains the model. Four things train this way: the stage-1
    feature cache (`fine_tune`, k=0), the LR finder's head sweep (k=0), and
    stage 2 on the blocks below the unfrozen ones (k>0: `fine_tune` and the
    tuner).

    With k > 0 and a head that reads several blocks (`HeadConfig.pool_from`) or
    the raw pixels (`HeadConfig.pixels`), the frozen part has several outputs:
    the cut (the input of the top `k` blocks), then the head's pooled features
    of every block below the cut and its raw-pixel group, which stage 2 cannot
    change. `trainable` then takes them all, in that order (`cut_shape` is the
    first's shape, `shapes` all of them).

    Args:
        model: keras.Model. A model from `build_model`.
        k: int. 0 cuts after the head's pooling (everything below the head is
            frozen in stage 1); k > 0 cuts below the top `k` blocks. Defaults to 0.

    Raises:
        ValueError: when the base cannot be cut there: no frozen block left, a
            block with several outputs, or layers that lie on neither side of
            the cut (a top block that reads a tensor from below the cut other
            than the cut itself).
    """

    def __init__(self, model: keras.Model, k: int = 0):
        self.k = k
        self._extract = self._head_features = None
        self._to_features = None
        if k == 0:
            self.extractor, self.trainable = feature_model(model), head_model(model)
            self.cut_shape = tuple(cut_tensor(model).shape[1:])
            self.shapes = (self.cut_shape,)
            return
        info = model_info(model)
        base, block_map = info.base, info.block_map
        if not 0 < k < len(block_map):
            raise ValueError("nothing frozen to cache")
        # The block's output tensor, found in the graph: its last layer's
        # output is not it where an operation follows (ConvNeXt's residual add).
        (cut,) = block_outputs(base, block_map, [len(block_map) - k - 1], strict=False)
        if cut is None:
            raise ValueError("a block with several outputs")
        # The base's outputs that the top blocks compute: those the cut does not
        # depend on (the others, the cut's own among them, are frozen).
        below = _upstream(cut)
        live = [i for i, t in enumerate(base.outputs) if id(t) not in below]
        tops = [base.outputs[i] for i in live]
        rest_of_base = keras.Model(
            cut, tops[0] if len(tops) == 1 else tops, name=f"{base.name}_top{k}"
        )
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
        self.cut_shape = tuple(cut.shape[1:])
        features = keras.Input(self.cut_shape, name="frozen_features")
        base_outs = list(base._inbound_nodes[0].output_tensors)
        cached = cut_tensor(model)  # what the stage-1 cache holds
        if len(base_outs) == 1 and pixel_columns(model) is None:
            # The head after the base, as a model on the base's output.
            head = keras.Model(base_outs[0], model.outputs[0], name="head_part")
            self.extractor = keras.Model(
                images, bottom(pre(images)), name="frozen_part"
            )
            top = rest_of_base(features)
            self.trainable = keras.Model(features, head(top), name="trainable_part")
            self.shapes = (self.cut_shape,)
            self._to_features = lambda: keras.Model(
                features,
                top
                if cached is base_outs[0]
                else keras.Model(base_outs[0], cached, name="head_pooling")(top),
                name="to_head_features",
            )
            return
        # The head reads several blocks or the pixels: it is cut at its pooling,
        # into the pooled features the top blocks change and those they do not.
        pooled = list(model.get_layer("head_pool").input)
        live_outs = {id(base_outs[i]) for i in live}
        sources = [_source(t, base_outs) for t in pooled]
        frozen = [
            t
            for t, src in zip(pooled, sources, strict=True)
            if id(src) not in live_outs
        ]
        # One pass of the bottom blocks gives the cut and the frozen blocks the
        # head pools; the raw-pixel group reads the images.
        index = {id(t): i for i, t in enumerate(base_outs)}
        read = sorted(
            {
                index[id(src)]
                for src in sources
                if src is not None and id(src) not in live_outs
            }
        )
        bottom_maps = keras.Model(
            base.inputs[0],
            [cut, *(base.outputs[i] for i in read)],
            name=f"{base.name}_bottom{k}_maps",
        )
        cut_out, *maps_out = bottom_maps(pre(images))
        frozen_maps = {id(base_outs[i]): m for i, m in zip(read, maps_out, strict=True)}
        outputs = [cut_out]
        for i, (t, src) in enumerate(zip(pooled, sources, strict=True)):
            if id(src) in live_outs:
                continue
            head_side = keras.Model(
                model.inputs[0] if src is None else src, t, name=f"frozen_pooled_{i}"
            )
            outputs.append(head_side(images if src is None else frozen_maps[id(src)]))
        inputs = [features] + [
            keras.Input(tuple(t.shape[1:]), name=f"frozen_pooled_{i}")
            for i, t in enumerate(frozen)
        ]
        if len(inputs) == 1:
            outputs, inputs = outputs[0], inputs[0]
        self.extractor = keras.Model(images, outputs, name="frozen_part")
        maps = rest_of_base(features)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        by_output = dict(zip((id(base_outs[i]) for i in live), maps, strict=True))
        constants = iter(inputs[1:] if frozen else [])
        pieces = []
        for t, src in zip(pooled, sources, strict=True):
            if id(src) in live_outs:
                pool = keras.Model(src, t, name=f"pool_{len(pieces)}")
                pieces.append(pool(by_output[id(src)]))
            else:
                pieces.append(next(constants))
        after = keras.Model(pooled, model.outputs[0], name="head_part")
        self.trainable = keras.Model(inputs, after(pieces), name="trainable_part")
        self.shapes = tuple(tuple(t.shape[1:]) for t in [cut, *frozen])
        self._to_features = lambda: keras.Model(
            inputs,
            keras.Model(pooled, cached, name="head_pooling")(pieces),
            name="to_head_features",
        )

    def head_features(self, columns, batch_size: int) -> np.ndarray:
        """What the stage-1 cache holds for each image (`feature_model`: the
        head's pooled features), from the frozen part's output (`columns`, as
        `features` gives it, or a `FeatureCache`'s columns): only the top `k`
        blocks run, as one `inference_function` built once per split. With
        k = 0 the columns are those features already.
        """
        columns = list(columns) if isinstance(columns, (list, tuple)) else [columns]
        if self._to_features is None:
            return np.asarray(columns[0])
        if self._head_features is None:
            self._head_features = inference_function(self._to_features())
        run = self._head_features
        return np.concatenate(
            [
                run(*(c[i : i + batch_size] for c in columns)).numpy()
                for i in range(0, len(columns[0]), batch_size)
            ]
        )

    def extract(self):
        """A compiled function from image batches to the frozen part's output.

        Its input signature leaves the batch size open, so one trace serves
        every batch: full and partial, training and validation. Built once per
        split.
        """
        if self._extract is None:
            self._extract = inference_function(self.extractor)
        return self._extract

    def features(self, images: np.ndarray, batch_size: int):
        """The frozen part's output for an array of images, in order: one array,
        or a tuple of them when the frozen part has several outputs."""
        extract = self.extract()
        dtype = extract.input_signature[0].dtype
        parts = [
            extract(tf.cast(images[i : i + batch_size], dtype))
            for i in range(0, len(images), batch_size)
        ]
        if len(self.shapes) == 1:
            return np.concatenate([p.numpy() for p in parts])
        return tuple(
            np.concatenate([p[j].numpy() for p in parts])
            for j in range(len(self.shapes))
        )

    def bytes_per_image(self) -> int:
        """Bytes of cached float32 features per image."""
        return 4 * sum(math.prod(shape) for shape in self.shapes)


def _upstream(tensor, stop=()) -> dict:
    """The symbolic tensors `tensor` is computed from, itself included, by id;
    the walk does not go past the tensors in `stop`."""
    stop = {id(t) for t in stop}
    found, stack = {}, [tensor]
    while stack:
        t = stack.pop()
        if id(t) in found:
            continue
        found[id(t)] = t
        history = getattr(t, "_keras_history", None)
        if id(t) in stop or history is None or history[0] is None:
            continue
        op, node_index, _ = history
        stack.extend(op._inbound_nodes[node_index].input_tensors)
    return found


def _source(tensor, outputs: list):
    """Which of `outputs` (tensors of the model's graph) `tensor` is computed
    from, or None (the raw-pixel group: from the images alone).

    Raises:
        ValueError: `tensor` reads several of them.
    """
    reached = _upstream(tensor, stop=outputs)
    found = [t for t in outputs if id(t) in reached]
    if len(found) > 1:
        raise ValueError("a pooled feature that reads several blocks")
    return found[0] if found else None


def fit_part(
    part: keras.Model,
    data,
    *,
    optimizer,
    loss,
    metrics,
    callbacks: list,
    jit_compile=False,
    steps_per_execution: int = 1,
    **fit_kwargs,
):
    """Trains the trainable side of a `FrozenSplit` on cached features.

    Pass the full model's optimizer, so that its state carries on into a later
    fit of the full model. `callbacks` should hold a `Continuation` wrapping the
    user's callbacks: they then see the full model, not `part`.

    Returns:
        The History of `part.fit` (the user's History is in the Continuation).
    """
    part.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    build_metrics(part, data)
    build_optimizer(part)
    return part.fit(data, shuffle=False, callbacks=callbacks, **fit_kwargs)


class FeatureCache:
    """Base features of a dataset, computed once, as a re-iterable dataset.

    Args:
        model: keras.Model. A model from `build_model` (its base frozen).
        dataset: tf.data.Dataset. Batches of (image, label) or (image, label,
            sample_weight); it must be finite.
        directory: str or None. Where to keep features that do not fit in
            memory (`MEMORY_LIMIT_BYTES`): past the limit, each batch's
            features go to a file there as they are computed. Defaults to a
            temporary folder.
        labels: array or None. The labels in dataset order, when known (array
            inputs); sample weights, if the batches carry them, are still kept
            from the batches.
        extractor: callable or None. From `feature_extractor(model)`; share one
            between the caches of a model to trace once. Defaults to a new one.
    """

    def __init__(
        self,
        model: keras.Model,
        dataset: tf.data.Dataset,
        directory=None,
        labels=None,
        extractor=None,
    ):
        extractor = extractor or feature_extractor(model)
        start = time.perf_counter()
        # One inference pass (one trace serves every batch size and both
        # datasets) that keeps each batch's labels and sample weights with its
        # features: a dataset that reshuffles on every pass (a DataBundle's
        # train, a user's `.shuffle()`) would misalign two separate passes.
        # Known labels (array inputs, read in order) are used as they are; the
        # sample weights still come from the batches.
        # Each extractor output (column) stays in memory up to
        # MEMORY_LIMIT_BYTES; past it, it goes to a file batch by batch, so
        # that the pass never holds more than the limit and one batch of it.
        known = labels is not None and len(labels)
        dtype = extractor.input_signature[0].dtype
        rest, spills, self.batch_sizes = [], None, []
        try:
            for images, *others in dataset:
                out = extractor(tf.cast(images, dtype))
                out = out if isinstance(out, (list, tuple)) else [out]
                spills = spills or [_Spill(directory) for _ in out]
                for spill, part in zip(spills, out, strict=True):
                    spill.add(part.numpy())
                self.batch_sizes.append(len(out[0]))
                rest.append([np.asarray(o) for o in others[1 if known else 0 :]])
            if not spills:
                raise DataError(
                    "The dataset is empty: no batch to compute features from."
                )
            columns = [spill.finish() for spill in spills]
        except BaseException:
            for spill in spills or []:
                spill.discard()
            raise
        if known:  # one part of all the labels (and of all the weights)
            weights = [np.concatenate(parts) for parts in zip(*rest, strict=True)]
            rest = [[np.asarray(labels), *weights]]
        self.seconds = time.perf_counter() - start
        self.paths: list[Path] = [s.path for s in spills if s.path is not None]
        #: Bytes of features on disk (`MEMORY_LIMIT_BYTES`), 0 if none.
        self.disk_bytes = sum(s.bytes for s in spills if s.path is not None)
        #: The features: one array, or a tuple of arrays for an extractor with
        #: several outputs (a `FrozenSplit` of k > 0 whose head reads the
        #: frozen blocks too).
        self.features = columns[0] if len(columns) == 1 else tuple(columns)
        self.columns = columns
        self.others = [np.concatenate(parts) for parts in zip(*rest, strict=True)]
        self.count = len(columns[0])

    @classmethod
    def from_arrays(cls, features: np.ndarray, others: list, batch_size: int):
        """A cache of features computed elsewhere (no pass): `features` and
        `others` (labels, then sample weights) row for row, read in batches of
        `batch_size`."""
        cache = cls.__new__(cls)
        cache.features, cache.columns = features, [features]
        cache.others, cache.count = [np.asarray(o) for o in others], len(features)
        cache.batch_sizes = [min(batch_size, cache.count)]
        cache.paths, cache.seconds, cache.disk_bytes = [], 0.0, 0
        return cache

    def dataset(self, batch_size: int, shuffle: bool, seed: int | None = None):
        """The cached features as batches of (features, label[, sample_weight]).

        Features on disk are read a batch at a time (the same batches, in the
        same order), never copied into TensorFlow whole.
        """
        if self.paths:
            ds = tf.data.Dataset.range(self.count)
        else:
            ds = tf.data.Dataset.from_tensor_slices((self.features, *self.others))
        if shuffle:
            ds = ds.shuffle(self.count, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        if self.paths:
            ds = ds.map(self._rows)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _rows(self, index):
        """The batch of rows at `index` (a vector of row numbers), read from
        the arrays (or files) by NumPy: (features, label[, sample_weight])."""
        columns = (*self.columns, *self.others)
        width = len(self.columns)

        def gather(index):
            return tuple(c[index] for c in columns)

        out = tf.numpy_function(
            gather, [index], [tf.as_dtype(c.dtype) for c in columns], stateful=False
        )
        for tensor, column in zip(out, columns, strict=True):
            tensor.set_shape((None, *column.shape[1:]))
        features = out[0] if width == 1 else tuple(out[:width])
        return (features, *out[width:])

    def stream(self, batch_size: int, steps: int, seed: int | None, start: int = 0):
        """`steps` full batches that run through the cache pass after pass.

        Each pass is a fresh permutation (from `seed`); batches may straddle two
        passes, so every batch has `batch_size` rows. Step `start` onwards is
        returned: a resumed run reads exactly the batches an uninterrupted one
        reads from there, whatever the pass boundaries. With `seed` None the
        permutations follow TensorFlow's global seed, as a `tf.data` shuffle
        without a seed does: `keras.utils.set_random_seed` repeats them.
        """
        if seed is None:
            seed = int(tf.random.uniform((), maxval=2**31 - 1, dtype=tf.int64))
        rng = np.random.default_rng(seed)
        need = steps * batch_size
        order = np.concatenate(
            [rng.permutation(self.count) for _ in range(-(-need // self.count))]
        )[start * batch_size : need]
        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return ds.map(self._rows).prefetch(tf.data.AUTOTUNE)

    def close(self) -> None:
        """Deletes the on-disk features, if any."""
        for path in self.paths:
            path.unlink(missing_ok=True)
        self.paths = []


#: The smallest fall of a cross-entropy loss (nats per example) over one
#: stage-1 epoch that counts as progress. Below it the head already gives each
#: training image its label with probability ~0.999: on separable features (few
#: images, hundreds of features) the loss then goes on halving toward 0, more
#: than 1% an epoch, while only the scale of the logits grows.
MIN_FALL_NATS = 1e-3


def converged(
    losses, tolerance: float, patience: int = 2, min_fall: float = 0.0
) -> bool:
    """Whether a loss curve has flattened out.

    True when each of the last `patience` losses is less than `tolerance` (a
    fraction of it), or less than `min_fall` (an absolute amount), below the best
    loss before it.

    Example:

    >>> converged([1.0, 0.5, 0.3, 0.299, 0.2985], 0.01)
    True
    >>> converged([0.02, 0.006, 0.003, 0.0025, 0.002], 0.01, min_fall=1e-3)
    True
    """
    if len(losses) <= patience:
        return False
    for i in range(len(losses) - patience, len(losses)):
        best = min(losses[:i])
        fall = max(best * tolerance, min_fall)
        if not math.isfinite(best) or losses[i] < best - fall:
            return False
    return True


def is_cross_entropy(loss) -> bool:
    """Whether `loss` (a Keras loss object, function or name) is a cross-entropy,
    whose unit, nats per example, makes `MIN_FALL_NATS` meaningful."""
    if isinstance(loss, str):
        name = loss
    else:  # a function's own name, else the class of a loss object
        name = getattr(loss, "__name__", type(loss).__name__)
    return "crossentropy" in name.replace("_", "").lower()


class _Spill:
    """One column of a `FeatureCache`'s pass: its batches in memory while they
    hold at most `MEMORY_LIMIT_BYTES`, then in a file (raw rows, appended as
    they come), read back as a memory map. On POSIX systems the file loses its
    name as soon as it is opened, so that no end of the process leaves it."""

    def __init__(self, directory):
        self.directory = Path(directory or tempfile.gettempdir())
        self.parts, self.rows, self.bytes = [], 0, 0
        self.path, self.file = None, None

    def add(self, part: np.ndarray) -> None:
        self.rows += len(part)
        self.bytes += part.nbytes
        self.dtype, self.row_shape = part.dtype, part.shape[1:]
        if self.file is None and self.bytes <= MEMORY_LIMIT_BYTES:
            self.parts.append(part)
            return
        try:
            if self.file is None:
                name = f"features-{os.getpid()}-{time.time_ns()}.bin"
                self.path = self.directory / name
                self.directory.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "w+b")  # noqa: SIM115 (closed in finish)
                if os.name == "posix":
                    # Nameless from here on: its space comes back when the
                    # cache's memory map goes, or when the process ends,
                    # however it ends (a SIGKILL leaves no file behind).
                    self.path.unlink()
            for held in [*self.parts, part]:
                self.file.write(np.ascontiguousarray(held).data)
        except OSError as error:
            raise DataError(
                f"Could not write the features to {self.path} "
                f"({error.strerror or error}; {self.bytes:,} bytes so far, over "
                f"the {MEMORY_LIMIT_BYTES:,} kept in memory). Free space there, "
                "set TMPDIR to a writable folder on a larger disk, or pass "
                "cache_features=False to train on full passes instead."
            ) from error
        self.parts = []

    def finish(self) -> np.ndarray:
        """The column: one array, or a memory map of the file."""
        if self.file is None:
            return np.concatenate(self.parts)
        self.file.flush()
        shape = (self.rows, *self.row_shape)
        column = np.memmap(self.file, dtype=self.dtype, mode="r+", shape=shape)
        self.file.close()  # the map keeps its own descriptor
        return column

    def discard(self) -> None:
        """Closes and deletes the file, if any (a pass that failed)."""
        if self.file is not None:
            self.file.close()
            self.path.unlink(missing_ok=True)


class Continuation(keras.callbacks.Callback):
    """Presents several `fit` calls to user callbacks as one training run.

    The wrapped callbacks see the full model (not the head sub-model that a cached
    stage 1 trains), one `on_train_begin` (at the first fit) and one
    `on_train_end` (at the last), and the epoch numbers the fits pass on. A
    `stop_training` set by them (EarlyStopping, say) stops the running fit.

    Put a History last among `callbacks`, as Keras's fit does: it then records
    what the others add to the epoch's logs.

    Args:
        callbacks: list. The user's callbacks (a History may be among them).
        model: keras.Model. The full model the callbacks should see.
        epochs: int. Total epochs of the run, for their `params`.
    """

    def __init__(self, callbacks, model: keras.Model, epochs: int):
        super().__init__()
        self.full_model = model
        self.callbacks = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=model
        )
        self.epochs = epochs
        self.started = False
        self.last = False

    def set_params(self, params):
        super().set_params(params)
        self.callbacks.set_params({**params, "epochs": self.epochs})

    def _sync_stop(self):
        if getattr(self.full_model, "stop_training", False):
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self.full_model.stop_training = False
        if not self.started:
            self.started = True
            self.callbacks.on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self.last:
            self.callbacks.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.callbacks.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        # The outer fit's own dict, already made plain by its CallbackList (which
        # would pass a copy): what the wrapped callbacks add to it reaches the
        # callbacks after this one (a resume checkpoint's history), as within one
        # Keras CallbackList.
        logs = {} if logs is None else logs
        for callback in self.callbacks.callbacks:
            callback.on_epoch_end(epoch, logs)
        self._sync_stop()

    def on_train_batch_begin(self, batch, logs=None):
        self.callbacks.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.callbacks.on_train_batch_end(batch, logs)
        self._sync_stop()

    def on_test_begin(self, logs=None):
        self.callbacks.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.callbacks.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.callbacks.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.callbacks.on_test_batch_end(batch, logs)


class StageOneEnd(StageTag):
    """Runs a cached stage-1 fit as the schedule would: tags its epochs as stage
    1, stops it after `head_epochs` (or once the loss has converged), and raises
    on a NaN loss.

    Args:
        head_epochs: int. The last stage-1 epoch is `head_epochs - 1`.
        schedule: FineTuneSchedule or None. With `tolerance`, its
            `unfreeze_at_epoch` is moved to the epoch after the one where stage 1
            converged. Defaults to None.
        tolerance: float or None. Converged: the epoch's training loss is less
            than this fraction below the best loss of the epochs before it, twice
            in a row. None stops after `head_epochs` only. Defaults to None.
            With validation data it also stops once the validation loss has not
            fallen for two epochs: on a few images the training loss goes on
            falling long after the head has stopped generalising better.
        losses: list of float. Training losses of the stage-1 epochs a resumed
            run has already done. Defaults to ().
        val_losses: list of float. Their validation losses. Defaults to ().
        min_fall: float. With `tolerance`, a fall of less than this absolute
            amount counts as converged too (`MIN_FALL_NATS` for cross-entropy
            losses). Defaults to 0.
    """

    def __init__(
        self,
        head_epochs: int,
        schedule=None,
        tolerance=None,
        losses=(),
        val_losses=(),
        min_fall: float = 0.0,
    ):
        super().__init__(stage=1)
        self.head_epochs = head_epochs
        self.schedule = schedule
        self.tolerance = tolerance
        self.min_fall = min_fall
        self.losses = [float(v) for v in losses]
        self.val_losses = [float(v) for v in val_losses]
        self.converged_at: int | None = None
        # What ended stage 1 early: "training loss" or "validation loss".
        self.why = "training loss"

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        loss = (logs or {}).get("loss")
        if loss is not None:
            self.losses.append(float(loss))
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None:
            self.val_losses.append(float(val_loss))
        done = epoch + 1 >= self.head_epochs
        if self.tolerance is not None:
            if converged(self.losses, self.tolerance, min_fall=self.min_fall):
                self.converged_at, done = epoch, True
            elif self.val_losses and converged(self.val_losses, 0.0):
                self.converged_at, done = epoch, True
                self.why = "validation loss"
        if done:
            self.model.stop_training = True
            if self.schedule is not None:
                self.schedule.unfreeze_at_epoch = epoch + 1
