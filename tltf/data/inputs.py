"""Training inputs: arrays or datasets as batches, checked against the model.

`fine_tune`, the LR finder, the probe and the tuner all turn `(images, labels)`
arrays or a `tf.data.Dataset` into batches here, and check the labels against the
model's task (class indices or one-hot rows, their range, the image shape) before
any training starts, so a bad label is reported the same way everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re

import keras
import numpy as np
import tensorflow as tf

from tltf.data.bundle import DataBundle
from tltf.data.images import check_pixel_values
from tltf.data.labels import (
    check_fraction,
    check_one_label_per_image,
    check_sample_weights,
    split_indices,
)
from tltf.errors import ConfigError, DataError
from tltf.info import ModelInfo


def train_batches(data, batch_size: int, seed: int | None, rows=None):
    """Shuffled training batches, and the same data unshuffled (for the cache).

    `rows` (arrays only) takes those rows of the arrays, in that order.
    """
    if isinstance(data, tf.data.Dataset):
        ds = as_dataset(data, batch_size, False, seed, "train")
        return ds, ds
    return (
        array_batches(data, "train", batch_size, True, seed, rows),
        array_batches(data, "train", batch_size, False, None, rows),
    )


def array_batches(
    data, what: str, batch_size: int, shuffle: bool, seed: int | None, subset=None
) -> tf.data.Dataset:
    """`(images, labels[, sample_weights])` arrays as checked, batched,
    prefetched batches.

    The pipeline shuffles and batches indices, and each batch gathers its rows
    from the arrays. `from_tensor_slices` would first copy the arrays into
    TensorFlow (twice: TensorFlow copies a NumPy array before wrapping it), which
    for a gigabyte of images costs seconds and doubles the memory. The order is
    that of `from_tensor_slices((x, y)).shuffle(n, seed).batch(b)`: shuffling
    depends on the seed and the count only, not on the elements. `subset`, an
    array of row indices, takes only those rows (in that order) without copying
    the arrays. With sample weights, the batches are `(images, labels,
    weights)`, as Keras's `fit` takes them.
    """
    arrays = [np.asarray(data[0]), np.asarray(data[1])]
    check_one_label_per_image(*arrays, what, " Pass at least one batch.")
    if len(data) == 3:
        arrays.append(check_sample_weights(data[2], len(arrays[0]), what))
    dtypes = [tf.as_dtype(a.dtype) for a in arrays]

    def gather(index):
        return tuple(a[index] for a in arrays)

    def rows(index):
        parts = tf.numpy_function(gather, [index], dtypes, stateful=False)
        for part, array in zip(parts, arrays, strict=True):
            part.set_shape((None, *array.shape[1:]))
        return tuple(parts)

    count = len(arrays[0])
    if subset is None:
        ds = tf.data.Dataset.range(count)
    else:
        subset = np.asarray(subset, dtype=np.int64)
        ds, count = tf.data.Dataset.from_tensor_slices(subset), len(subset)
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(rows).prefetch(tf.data.AUTOTUNE)


def images_at_most(ds: tf.data.Dataset) -> int:
    """An upper bound of a finite dataset's images: its batches times its batch
    size (the static one, else the first batch's; reads an unshuffled
    pipeline's first batch at most); its elements, unbatched."""
    shape = tf.nest.flatten(ds.element_spec[0])[0].shape
    if len(shape) != 4:  # single images
        return max(int(ds.cardinality()), 0)
    size = shape[0]
    if size is None:
        first = next(iter(ds.take(1)))[0]
        size = tf.nest.flatten(first)[0].shape[0]
    return max(int(ds.cardinality()), 0) * int(size)


def pair_spec(data: tf.data.Dataset, what: str) -> tuple:
    """A dataset's element spec, checked to be `(image, label[, weight])`."""
    spec = data.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise DataError(
            f"Expected {what} to yield (image, label) pairs. Received elements "
            f"of structure {spec}. Map it with `.map(lambda d: (d['image'], "
            "d['label']))` or use tltf's data layer."
        )
    return spec


#: The tuples of arrays that training inputs take, in words.
ARRAYS = "(images, labels) or (images, labels, sample_weights)"


def is_arrays(data) -> bool:
    """Whether `data` is a tuple of arrays: `(images, labels[, sample_weights])`."""
    return isinstance(data, (tuple, list)) and len(data) in (2, 3)


def is_array(value) -> bool:
    """Whether `value` is one array (NumPy, a tensor), as Keras's `x` or `y`."""
    return (
        not isinstance(value, (tuple, list, dict, tf.data.Dataset))
        and hasattr(value, "shape")
        and hasattr(value, "dtype")
    )


def as_dataset(data, batch_size: int, shuffle: bool, seed: int | None, what: str):
    """Turns `(images, labels[, sample_weights])` arrays or a tf.data.Dataset
    into batches."""
    if isinstance(data, tf.data.Dataset):
        spec = pair_spec(data, what)
        if len(spec[0].shape) == 3:
            data = data.batch(batch_size)
        return data.prefetch(tf.data.AUTOTUNE)
    if is_arrays(data):
        return array_batches(data, what, batch_size, shuffle, seed)
    raise not_data_error(data, what)


def not_data_error(data, what: str) -> DataError:
    """The error for `data` that is neither a tf.data.Dataset nor a tuple of
    arrays; an array alone (images without their labels) says so."""
    alone = ""
    if isinstance(data, np.ndarray):
        alone = (
            f" of shape {data.shape}, without labels. Pass the images and "
            "their labels together, as one tuple: (images, labels)"
        )
    elif isinstance(data, DataBundle):  # where a dataset goes
        alone = (
            ". A DataBundle is the training data, whose validation split comes "
            "with it; as validation data pass one of its datasets, e.g. "
            "validation_data=bundle.train for a bundle loaded from a test folder"
        )
    return DataError(
        f"Expected {what} as a tf.data.Dataset of (image, label) or a tuple "
        f"{ARRAYS} of arrays. Received: {type(data).__name__}{alone}"
    )


def split_validation(
    data, validation_split, *, task: str, seed: int | None, caller: str
):
    """`(train, validation)`: Keras's `validation_split` of training arrays.

    `validation_split` of the rows of `(images, labels[, sample_weights])`
    arrays become the validation data, as `model.fit(x, y,
    validation_split=0.2)` takes them, by the split that `load_data(...,
    validation_split=)` makes: seeded (`seed` None: 0) and stratified by class
    for "multiclass" and "binary" (one-hot rows by their class), where Keras
    takes the last rows, which leaves classes out of one side when the rows are
    sorted by class. The same arrays always split the same way, so every trial
    of a search compares on the same images. Returns `(train, validation)`
    tuples of NumPy arrays, with each image's sample weight in its side.

    Raises:
        ConfigError: `validation_split` is not a fraction, or `data` is not
            arrays (a dataset or a `DataBundle`: the error says how to split it).
        DataError: the images and labels differ in number, or a side would be
            empty.
    """
    fraction = check_fraction(validation_split)
    if isinstance(data, DataBundle):
        raise ConfigError(
            f"{caller}() got validation_split= with a DataBundle. Split when "
            "loading: tltf.load_data(source, validation_split=0.2, seed=0) "
            "gives a bundle with its validation split, which is used."
        )
    if not is_arrays(data):
        kind = (
            "a tf.data.Dataset as"
            if isinstance(data, tf.data.Dataset)
            else type(data).__name__
        )
        raise ConfigError(
            f"{caller}() got validation_split= with {kind} training data: it "
            f"splits {ARRAYS} arrays, as in Keras's fit. Split the data first, "
            "e.g. data = tltf.load_data(dataset, validation_split=0.2, seed=0) "
            "(a tf.data.Dataset that yields the same order every pass), or "
            "pass validation_data."
        )
    arrays = [np.asarray(part) for part in data]
    check_one_label_per_image(arrays[0], arrays[1], "train", "")
    if len(arrays) == 3:
        arrays[2] = check_sample_weights(arrays[2], len(arrays[0]), "train")
    labels = arrays[1]
    if task in ("multiclass", "binary"):
        if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot rows
            labels = labels.argmax(axis=1)
        labels = labels.reshape(len(labels), -1)[:, 0]
    train, val = split_indices(labels, task, fraction, 0 if seed is None else seed)
    return tuple(a[train] for a in arrays), tuple(a[val] for a in arrays)


@dataclasses.dataclass
class ReadData:
    """A dataset read into memory by `read_dataset`."""

    images: np.ndarray
    labels: np.ndarray
    batch_size: int | None  # the size of the dataset's own batches; None: unbatched
    weights: np.ndarray | None = None  # its sample weights, where it yields them

    @property
    def arrays(self) -> tuple:
        """`(images, labels)`, or `(images, labels, sample_weights)`."""
        extra = () if self.weights is None else (self.weights,)
        return (self.images, self.labels, *extra)


def read_dataset(
    data: tf.data.Dataset, what: str, max_bytes: int, check=None, in_order=False
):
    """A small, finite dataset of `(image, label[, sample_weight])` as a
    `ReadData` of arrays.

    Returns `(ReadData, None)`, or `(None, why)` where it cannot be read into
    memory as it is: it repeats forever, shards itself
    across workers (`auto_shard_policy` OFF), holds more than
    `max_bytes` of images, labels and weights, has batches of images of several
    shapes, or gives other images (or weights) when read again (a random
    augmentation in the pipeline: the arrays would freeze one draw of it).
    Unbatched images of several shapes could not be batched at all: a
    DataError says to resize them. Sample weights are read as one number per
    image and checked (`check_sample_weights`). Reading it twice costs two
    passes, only over data that fits in `max_bytes`. The arrays are in a fixed
    order (see below); `check(images, labels)`, if given, sees them in the
    order read, so that its messages' indices are the dataset's. With
    `in_order`, the arrays keep the order of this one pass, and the dataset is
    not read again.
    """
    spec = pair_spec(data, what)
    if data.cardinality() == tf.data.INFINITE_CARDINALITY:
        return None, "it repeats forever"
    off = tf.data.experimental.AutoShardPolicy.OFF
    if data.options().experimental_distribute.auto_shard_policy == off:
        # Each worker's pipeline gives its own shard; as arrays, Keras would
        # shard them again.
        return None, "it shards itself across workers (auto_shard_policy OFF)"
    if spec[0].shape.rank is None:
        return None, "its images have no known rank"
    batched = spec[0].shape.rank == 4
    known = int(data.cardinality())
    rows = _Rows(known if known > 0 else None, max_bytes)
    # A failing element raises TensorFlow's error: `pipeline_errors` names it.
    for element in data.as_numpy_iterator():
        element = _rows_of(element, batched, what)
        if not rows.add(element):
            if rows.over:
                return None, f"it holds more than {max_bytes / 2**20:,.4g} MiB"
            if not batched:  # they could not be batched
                shapes = f"{rows.arrays[0].shape[1:]} and {element[0].shape[1:]}"
                raise _sizes_differ(f"shapes {shapes}")
            return None, "its images differ in shape"
    if rows.count == 0:
        return None, "it is empty"
    arrays = rows.trimmed()
    images, labels = arrays[:2]
    weights = None
    if len(arrays) == 3:
        weights = check_sample_weights(arrays[2], rows.count, what)
    if check is not None:
        check(images, labels)
    if in_order:
        return ReadData(images, labels, rows.first if batched else None, weights), None
    again = sorted(
        d
        for element in data.as_numpy_iterator()
        for d in _digests(_rows_of(element, batched, what))
    )
    order = np.array(
        sorted(range(rows.count), key=rows.digests.__getitem__), dtype=np.int64
    )
    if again != [rows.digests[i] for i in order]:
        changed = "images or sample weights" if len(spec) == 3 else "images"
        return None, (
            f"it gives other {changed} each time it is read (a random "
            "augmentation in the pipeline? fine_tune(augment=your_layers) applies "
            "it to the images trained on, after the slice is held out)"
        )
    # In the order of their digests: the same arrays whatever order the
    # pipeline shuffles them into, so a seed holds out the same images.
    _permute_rows(images, order)
    return ReadData(
        images,
        labels[order],
        rows.first if batched else None,
        None if weights is None else weights[order],
    ), None


def _rows_of(element: tuple, batched: bool, what: str) -> tuple:
    """A dataset's element as rows: a batch as it is, one example as a batch of
    one. The sample weights, where it has them, as one number per row."""
    if not batched:
        element = tuple(np.reshape(a, (1, *np.shape(a))) for a in element)
    if len(element) == 3:
        element = (*element[:2], batch_weights(element[2], len(element[0]), what))
    return element


def batch_weights(weights, count: int, what: str) -> np.ndarray:
    """A batch's sample weights as one number per image (`count` images).

    Raises:
        DataError: When they are not one per image (one per batch, say).
    """
    if np.size(weights) != count:
        raise DataError(
            f"Expected {what}'s sample weights as one number per image. "
            f"Received weights of shape {np.shape(weights)} for a batch of "
            f"{count} images."
        )
    return np.reshape(weights, (count,))


class _Rows:
    """The rows `read_dataset` reads: `(images, labels[, weights])` arrays grown
    in place (or allocated once, where the count of batches is known), with a
    digest of every row."""

    def __init__(self, batches: int | None, max_bytes: int):
        self.batches, self.max_bytes = batches, max_bytes
        self.arrays = None
        self.count, self.digests, self.over = 0, [], False
        self.first = 0  # the first batch's size

    def trimmed(self) -> tuple[np.ndarray, ...]:
        """The arrays, cut to the rows read (in place: no copy is kept)."""
        for array in self.arrays:
            if len(array) > self.count:  # grown ahead, or a short last batch
                array.resize((self.count, *array.shape[1:]), refcheck=False)
        return tuple(self.arrays)

    def add(self, parts: tuple) -> bool:
        """Appends a batch; False where it is over the limit or of another shape."""
        count = len(parts[0])
        row, end = sum(p[:1].nbytes for p in parts), self.count + count
        need = end  # the rows the arrays must hold
        if self.arrays is None:
            self.first = count
            # A known count of batches sizes the arrays from the first one.
            need = max(end, count * (self.batches or 1))
        elif any(
            p.shape[1:] != a.shape[1:] for p, a in zip(parts, self.arrays, strict=True)
        ):
            return False
        if need * row > self.max_bytes:
            self.over = True
            return False
        if self.arrays is None:
            self.arrays = [np.empty((need, *p.shape[1:]), p.dtype) for p in parts]
        elif end > len(self.arrays[0]):  # unknown count, or a longer batch: grow
            rows = min(max(end, 2 * len(self.arrays[0])), self.max_bytes // row)
            self.arrays = [_grown(a, rows) for a in self.arrays]
        for array, part in zip(self.arrays, parts, strict=True):
            array[self.count : end] = part
        self.digests.extend(_digests(parts))
        self.count = end
        return True


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.empty((rows, *array.shape[1:]), array.dtype)
    grown[: len(array)] = array
    return grown


def _permute_rows(array: np.ndarray, order: np.ndarray) -> None:
    """`array[:] = array[order]` in place, a row at a time (no second copy)."""
    done = np.zeros(len(order), dtype=bool)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        saved, i = array[start].copy(), start
        while True:
            done[i] = True
            j = order[i]
            if j == start:
                array[i] = saved
                break
            array[i] = array[j]
            i = j


def _digests(parts: tuple) -> list[bytes]:
    """A digest of every row of a batch: its image, label (and weight)."""
    parts = [np.ascontiguousarray(np.reshape(p, (len(parts[0]), -1))) for p in parts]
    digests = []
    for row in zip(*parts, strict=True):
        digest = hashlib.blake2b(row[0].data, digest_size=16)
        for more in row[1:]:
            digest.update(more.data)
        digests.append(digest.digest())
    return digests


def _pipeline_failure(error: tf.errors.OpError) -> str | None:
    """What failed inside a tf.data pipeline, or None for another error."""
    message = str(error)
    if not any(
        marker in message
        for marker in (
            "user-defined function passed to",
            "[Op:IteratorGetNext]",
            "[[IteratorGetNext]]",
            "[Op:ReduceDataset]",  # `Dataset.reduce`, e.g. counting the rows
            "Iterator::",
        )
    ):
        return None
    return pipeline_error_text(error)


def pipeline_error_text(error: tf.errors.OpError) -> str:
    """TensorFlow's error in a sentence: its cause and op, without the graph
    function's name or the node lists around them."""
    message = str(error)
    # Eager reads put the cause on the first line, `fit`'s graph on a later one.
    cause = re.search(r"Iterator::\S+: ([^\n]+)", message)
    lines = [
        re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line).strip()
        for line in message.splitlines()
    ]
    first = next(
        (
            line
            for line in lines
            if line
            and not line.startswith(("Graph execution error", "Detected at", "<", "["))
        ),
        "",
    )
    what = (cause.group(1) if cause else first).strip()[:300].rstrip(".")
    node = re.search(r"\{\{node ([^}]+)\}\}", message)
    if node and node.group(1) != "IteratorGetNext":
        what += f" (op {node.group(1)})"
    return what


def _sizes_differ(detail: str) -> DataError:
    return DataError(
        f"The images of a tf.data input differ in size, so they cannot be "
        f"batched ({detail}). Resize them in the pipeline to the model's input, "
        "e.g. ds.map(lambda x, y: (tf.image.resize(x, (h, w)), y)), before "
        ".batch(); or read them with tltf.load_data(..., image_size=...), which "
        "resizes."
    )


@contextlib.contextmanager
def pipeline_errors():
    """Turns an error raised while a tf.data input is read into a DataError.

    A map function that fails on one element (an unreadable file, a bad shape)
    otherwise surfaces as TensorFlow's `InvalidArgumentError` from deep inside
    the feature cache or `fit`, after any training before it.
    """
    try:
        yield
    except tf.errors.OpError as error:
        sizes = re.search(
            r"Cannot batch tensors with different shapes in component \d+\. "
            r"(First element had shape \[[^\]]*\] and element \d+ had shape "
            r"\[[^\]]*\])",
            str(error),
        )
        if sizes:  # `tfds.load` gives each image at its own size
            raise _sizes_differ(sizes.group(1).lower()) from None
        what = _pipeline_failure(error)
        if what is None:
            raise
        raise DataError(
            f"Reading a tf.data input failed inside its pipeline: {what}. Fix "
            "the element or the function that fails; to drop the elements that "
            "fail instead, end the pipeline with `.ignore_errors()`, or read "
            "image folders with tltf.load_data, which skips and lists the "
            "files it cannot read."
        ) from None


#: How many batches of a tf.data.Dataset are read (with `take`, so the dataset
#: itself is not consumed) to check its labels and pixels before training.
PEEK_BATCHES = 2


def peek(data, what: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Images and labels: all of them for arrays, the first batches of a dataset.

    Images are None when a dataset's first images differ in shape.
    """
    if not isinstance(data, tf.data.Dataset):
        if not is_arrays(data):
            raise not_data_error(data, what)
        try:
            images = np.asarray(data[0])
        except ValueError:  # images of different shapes
            images = None
        return images, np.asarray(data[1])
    spec = pair_spec(data, what)
    if spec[0].shape.rank is None:  # batches or single images: cannot tell
        return None, np.zeros((0,), np.int32)
    batched = spec[0].shape.rank == 4
    first = data.take(PEEK_BATCHES if batched else 32 * PEEK_BATCHES)
    try:
        elements = [element[:2] for element in first.as_numpy_iterator()]
    except tf.errors.OpError as error:
        raise DataError(
            f"Could not read the first batches of {what}: {pipeline_error_text(error)}"
        ) from None
    if not elements:
        return None, np.zeros((0,), np.int32)
    xs, ys = zip(*elements, strict=True)
    join = np.concatenate if batched else np.stack
    images = join(xs) if len({x.shape[batched:] for x in xs}) == 1 else None
    try:
        labels = join(ys)
    except ValueError:
        raise DataError(
            f"Expected {what} labels of one shape. Received labels of shapes "
            f"{sorted({y.shape for y in ys})} in its first batches."
        ) from None
    return images, labels


def check_data(data, info: ModelInfo, what: str) -> bool:
    """Checks images and labels before training; returns whether one-hot.

    Arrays are checked whole; a tf.data.Dataset by its first `PEEK_BATCHES`
    batches.
    """
    images, labels = peek(data, what)
    if images is not None:
        scope = (
            f" (of the first {len(images)} read)"
            if isinstance(data, tf.data.Dataset)
            else ""
        )
        check_pixel_values(images, what, scope)
    return check_label_values(labels, info, what)


def check_labels(data, info: ModelInfo, what: str) -> bool:
    """Checks labels against the model's outputs; returns whether one-hot.

    Array labels are checked whole. A tf.data.Dataset is not read (the LR finder
    reads it once): its element spec is checked (`check_data` reads its first
    batches).
    """
    if not isinstance(data, tf.data.Dataset):
        return check_label_values(peek(data, what)[1], info, what)
    spec = data.element_spec[1]
    n = info.metadata["num_outputs"]
    # The dtype alone: no rows to check (a multi-label one has n columns).
    empty = (0, n) if info.task == "multilabel" else (0,)
    check_label_values(np.zeros(empty, spec.dtype.as_numpy_dtype), info, what)
    if (
        info.task == "multilabel"
        and spec.shape.rank
        and spec.shape[-1] not in (n, None)
    ):
        raise DataError(
            f"Expected {what} multi-label targets of {n} columns, one per class. "
            f"Received a dataset whose labels have shape {spec.shape}."
        )
    return (
        info.task == "multiclass"
        and spec.shape.rank is not None
        and spec.shape.rank >= 1
        and spec.shape[-1] == n
        and n > 1
    )


def check_label_values(y: np.ndarray, info: ModelInfo, what: str) -> bool:
    """Checks labels (first axis: examples) against the model; whether one-hot."""
    n, task = info.metadata["num_outputs"], info.task
    if y.dtype == bool:
        y = y.astype(np.int32)
    if not np.issubdtype(y.dtype, np.number):
        expected = {
            "multiclass": f"integer class indices in [0, {n}) or one-hot rows",
            "binary": "integers 0 or 1",
            "multilabel": f"multi-hot rows of {n} zeros and ones",
        }.get(task, "numbers")
        example = f" (e.g. {y.ravel()[0]!r})" if y.size else ""
        raise DataError(
            f"Expected {what} labels as {expected}. Received labels of dtype "
            f"{y.dtype}{example}. Map class names to integers first, e.g. "
            "names, y = np.unique(labels, return_inverse=True); tltf.load_data does "
            "this for image folders (one subfolder per class)."
        )
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DataError(
            f"{what} labels contain NaN or infinite values. Fix or drop those examples."
        )
    if task == "multiclass":
        if y.ndim == 2 and y.shape[1] == n:
            return True
        if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
            columns = f" ({y.shape[1]} columns for {n} classes)" if y.ndim == 2 else ""
            raise DataError(
                f"Expected {what} labels as class indices of shape (N,) or one-hot "
                f"rows of shape (N, {n}) for num_classes={n}. Received labels of "
                f"shape {y.shape}{columns}. Fix the labels, or rebuild the model "
                "with the right num_classes."
            )
        y = y.reshape(-1)
        fractional = np.mod(y, 1) != 0
        if fractional.any():
            raise DataError(
                f"Expected {what} labels to be whole numbers (class indices in "
                f"[0, {n})). Received fractional values such as "
                f"{y[fractional][:3].tolist()} (first at index "
                f"{int(np.argmax(fractional))}). For soft labels, pass one-hot rows "
                f"of shape (N, {n}) (or use label_smoothing=)."
            )
        bad = (y < 0) | (y >= n)
        if bad.any():
            raise DataError(
                f"{what} has labels outside [0, {n}) (min {y.min():g}, max "
                f"{y.max():g}; first at index {int(np.argmax(bad))}). The model has "
                f"num_classes={n}: rebuild it with the right num_classes, or fix the "
                "labels."
            )
    elif task in ("binary", "multilabel"):
        if task == "multilabel" and (y.ndim != 2 or y.shape[1] != n):
            indices = (
                f" These look like class indices, one class per image: use "
                f"task='multiclass', or turn them into rows with np.eye({n})[labels]."
                if y.ndim == 1 and y.size and (np.mod(y, 1) == 0).all() and y.max() > 1
                else ""
            )
            raise DataError(
                f"Expected {what} multi-label targets of shape (N, {n}): one row "
                f"per image, a 1 for each of the {n} classes it shows. Received "
                f"labels of shape {y.shape}.{indices}"
            )
        if y.size and (y.min() < 0 or y.max() > 1):
            fix = (
                f"For more than two classes, build the model with task='multiclass' "
                f"and num_classes={int(y.max()) + 1}."
                if task == "binary"
                else "Targets are 0 or 1 (or a probability in between)."
            )
            raise DataError(
                f"{what} has labels outside [0, 1] for a {task} task "
                f"(min {y.min():g}, max {y.max():g}). {fix}"
            )
    return False


def check_image_shape(ds: tf.data.Dataset, model: keras.Model, what: str) -> None:
    got = tuple(ds.element_spec[0].shape[1:])
    want = tuple(model.input_shape[1:])
    if len(got) != len(want) or any(
        g is not None and w is not None and g != w
        for g, w in zip(got, want, strict=True)
    ):
        gray = ""
        if len(got) == 3 and got[-1] == 1 and want[-1] == 3:
            gray = (
                " They are grayscale and the model takes RGB: repeat the channel "
                "(np.repeat(images, 3, axis=-1))."
            )
        elif len(got) == len(want) == 3 and got[-1] == 3 and want[-1] == 1:
            gray = (
                " They are RGB and the model takes grayscale: build it with "
                f"input_shape={(*want[:2], 3)} (it then converts RGB itself), or "
                "pass gray images (images.mean(axis=-1, keepdims=True))."
            )
        raise DataError(
            f"{what} has images of shape {got}, but the model takes {want}.{gray} Load "
            f"them with tltf.data.load_data(..., image_size={want[:2]}) to resize (and "
            "convert to RGB), or build the model with a matching input_shape."
        )
