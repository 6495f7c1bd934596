"""The data layer: image datasets in, batched `tf.data` pipelines out.

`load_data` turns any common source into a `DataBundle` of batched, prefetched
`tf.data.Dataset`s of `(image, label)`, with float32 RGB images in [0, 255] of one
size (what a model from `build_model` takes) and checked labels:

* a TFDS dataset by name (`"tfds:tf_flowers"`, or `"tf_flowers"` when no path
  on disk resembles it);
* a folder with one subfolder per class (jpg, jpeg, png, bmp, gif);
* a `.npz` file with `x`/`y` (or `images`/`labels`) arrays;
* `(images, labels)` NumPy arrays;
* a `tf.data.Dataset` of `(image, label)`, batched or not.

Grayscale and RGBA images become RGB; every image is resized by one policy
("stretch", "crop" or "pad"); shuffling is seeded; unreadable files are skipped and
reported. Bad input raises `DataError` (bad data) or `ConfigError` (bad
arguments) before anything trains, with a message that names the problem and the fix.

The module also has Keras augmentation layers (`augmentation`), batch-level
`mixup` and `cutmix`, and balanced `class_weights`.

Example:

>>> data = tltf.data.load_data("photos/", image_size=224, validation_split=0.2)
>>> data.class_names, data.num_classes
(['cats', 'dogs'], 2)
>>> model = tltf.build_model("mobilenet_v2", data.num_classes,
...                          input_shape=data.input_shape)
>>> tltf.fine_tune(model, data.train, data.validation,
...                class_weight=tltf.data.class_weights(data))
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tltf._checks import check_choice, check_image_size, check_positive_int
from tltf.errors import ConfigError, DataError, did_you_mean, suggest
from tltf.images import (
    RESIZE_POLICIES,
    ImageOptions,
    check_pixel_values,
    decode_bytes,
    decode_file,
    image_shape_error,
    prepare_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "RESIZE_POLICIES",
    "TASKS",
    "DataBundle",
    "augmentation",
    "class_weights",
    "cutmix",
    "dataset_labels",
    "load_data",
    "mixup",
    "one_hot",
]

#: File extensions read from an image folder (case-insensitive); GIFs give their
#: first frame.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

#: Image files with more pixels than this (read from the file's header, before
#: decoding) are skipped and listed, like unreadable files: decoding a 16000x16000
#: PNG takes gigabytes of memory. The limit is PIL's `MAX_IMAGE_PIXELS`. Set
#: `tltf.data.MAX_IMAGE_PIXELS` higher, or to None, to read larger images.
MAX_IMAGE_PIXELS: int | None = 89_478_485

#: The tasks of `build_model`, and the label forms each one takes.
TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel", "regression")

_AUTOTUNE = tf.data.AUTOTUNE
# A shuffle buffer holds at most this many bytes of images (and at least 1024
# elements); smaller datasets get a full shuffle.
_SHUFFLE_BYTES = 256 * 2**20
_MAX_LISTED = 10
_KIND_NAMES = {
    "tfds": "a TFDS dataset",
    "folder": "an image folder",
    "npz": "a .npz file",
    "arrays": "(images, labels) arrays",
    "dataset": "a tf.data.Dataset",
}
_TFDS_NAME = re.compile(r"^[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?$")


# -- the bundle ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class DataBundle:
    """The datasets and facts `load_data` returns.

    Attributes:
        train: tf.data.Dataset. Shuffled (when asked), batched and prefetched
            `(image, label)` batches; images are float32 RGB in [0, 255] of shape
            `(batch, height, width, 3)`.
        validation: tf.data.Dataset or None. Same form, never shuffled.
        class_names: list of str, or None when the source has no names.
        num_classes: int. Classes (outputs for "regression").
        skipped: list of str. Files of an image folder that could not be read.
        task: str. The task the labels were checked for.
        image_size: tuple. `(height, width)` of every image.
        num_train: int or None. Training examples (None when unknown).
        num_validation: int or None. Validation examples.
        unshuffled: tf.data.Dataset or None. `train`'s batches in a fixed order,
            for passes that must not advance `train`'s reshuffling (the stage-1
            feature pass, the probe, the stage-2 guard): a resumed run skips
            those passes, so they must not change the orders later epochs read.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: list[str] | None
    num_classes: int
    skipped: list[str] = dataclasses.field(default_factory=list)
    task: str = "multiclass"
    image_size: tuple[int, int] = (0, 0)
    num_train: int | None = None
    num_validation: int | None = None
    unshuffled: tf.data.Dataset | None = dataclasses.field(default=None, repr=False)
    _counts: np.ndarray | Callable[[], np.ndarray] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """Examples per class in `train` (positives per class for "multilabel").

        Computed when first read for TFDS sources (one pass over the labels,
        without decoding images); empty for "regression".
        """
        counts = self._counts() if callable(self._counts) else self._counts
        return np.asarray(counts if counts is not None else [], dtype=np.int64)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(height, width, 3)`: the `input_shape` for `build_model`."""
        return (*self.image_size, 3)


# -- argument checks ---------------------------------------------------------------
def _check_fraction(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ConfigError(
            "Expected validation_split to be a fraction strictly between 0 and 1, "
            f"e.g. 0.2. Received: validation_split={value!r}"
        )
    return float(value)


# -- labels --------------------------------------------------------------------------
def _numeric(y: np.ndarray, what: str) -> np.ndarray:
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


def _normalize_labels(
    y, task: str, num_classes: int | None, what: str
) -> tuple[np.ndarray, int]:
    """Checks labels against the task and `num_classes`; returns them cleaned.

    Multiclass and binary labels become int32 class indices (one-hot rows are
    turned into indices), multi-label and regression targets float32.
    """
    y = _numeric(np.asarray(y), what)
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
            raise DataError(
                f"Expected one-hot {what} labels of {num_classes} columns for "
                f"num_classes={num_classes}. Received labels of shape {y.shape}."
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
        raise DataError(
            f"Expected {what} labels in [0, {num_classes}) for num_classes="
            f"{num_classes}. Received {int(bad.sum())} labels out of range (min "
            f"{y.min():g}, max {y.max():g}; first at index {first}). Fix the labels, "
            + (
                "or use task='multiclass' for more than two classes."
                if task == "binary"
                else f"or pass num_classes={int(y.max()) + 1} if there are more classes."
            )
        )
    return y.astype(np.int32), num_classes


def _label_counts(y: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    if task == "regression":
        return np.zeros(0, np.int64)
    if task == "multilabel":
        return y.sum(axis=0).astype(np.int64)
    return np.bincount(y, minlength=num_classes).astype(np.int64)


def _split_indices(
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
            "another fraction, or pass validation= explicitly."
        )
    return np.sort(train), np.sort(val)


def _validation_coverage(
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
    listed = ", ".join(names[:_MAX_LISTED]) + (
        f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
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


# -- sources ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
    """An unbatched source of (raw image, label) whose labels are known up front.

    `make(indices)` gives the dataset of the selected examples (all when None);
    `prepare` maps one raw element to (image, clean label).
    """

    make: Callable[[np.ndarray | None], tf.data.Dataset]
    prepare: Callable[[Any, Any], tuple[tf.Tensor, tf.Tensor]]
    labels: np.ndarray | None
    num_classes: int
    class_names: list[str] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)
    uint8: bool = True
    bytes_per_raw: int = 0  # 0: small (file paths); shuffled with a full buffer.
    size: int | None = None


def _arrays_source(
    x, y, opts: ImageOptions, num_classes: int | None, what: str, class_names=None
) -> _Source:
    try:
        x = np.asarray(x)
    except ValueError:
        x = None
    if x is None or x.dtype == object:
        raise DataError(
            f"Expected {what} images as one array of shape (N, height, width, "
            "channels). Received images of different shapes. Resize them to one "
            "size first, or pass a tf.data.Dataset or an image folder."
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"Expected numeric {what} images. Received dtype {x.dtype}.")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise image_shape_error(x.shape, what)
    y = np.asarray(y)
    if len(x) == 0:
        raise DataError(f"{what} is empty: it has no images.")
    if len(y) != len(x):
        raise DataError(
            f"{what} has {len(x)} images but {len(y)} labels; expected one label "
            "per image."
        )
    labels, num_classes = _normalize_labels(y, opts.task, num_classes, what)
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(
            f"{what} has {len(class_names)} class names but num_classes="
            f"{num_classes}. Give one name per class."
        )
    check_pixel_values(x, what)

    def make(indices):
        if indices is None:
            return tf.data.Dataset.from_tensor_slices((x, labels))
        return tf.data.Dataset.from_tensor_slices((x[indices], labels[indices]))

    uint8 = x.dtype == np.uint8
    return _Source(
        make=make,
        prepare=lambda image, label: (prepare_image(image, opts, uint8), label),
        labels=labels,
        num_classes=num_classes,
        class_names=class_names,
        uint8=uint8,
        bytes_per_raw=int(np.prod(x.shape[1:])) * x.itemsize,
        size=len(x),
    )


def _npz_source(path: Path, opts: ImageOptions, num_classes, what: str):
    """Returns (train source, validation arrays or None)."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"Could not read {str(path)!r}: it is not a .npz archive. Save the data "
            "with np.savez(path, x=images, y=labels)."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "pickle" not in str(error):
            raise DataError(f"Could not read {str(path)!r}: {error}") from None
        raise DataError(
            f"Could not read {str(path)!r}: it holds Python objects (pickled "
            "arrays), which tltf does not load. Save class_names as a str array "
            "(np.array(names)) and images and labels as numeric arrays."
        ) from None
    except Exception as error:
        raise DataError(
            f"Could not read {str(path)!r} as a .npz file ({type(error).__name__}: "
            f"{error}). Save it with np.savez(path, x=images, y=labels)."
        ) from None
    for xk, yk in (("x", "y"), ("images", "labels")):
        if xk in arrays and yk in arrays:
            break
    else:
        raise DataError(
            f"Expected arrays 'x' and 'y' (or 'images' and 'labels') in {path}. "
            f"Found: {sorted(arrays)}. Save it with np.savez(path, x=images, y=labels)."
        )
    names = arrays.get("class_names")
    names = [str(n) for n in names.tolist()] if names is not None else None
    if num_classes is None and names is not None:
        num_classes = len(names)
    source = _arrays_source(arrays[xk], arrays[yk], opts, num_classes, what, names)
    val = None
    for vx, vy in (("x_val", "y_val"), ("images_val", "labels_val")):
        if vx in arrays and vy in arrays:
            val = (arrays[vx], arrays[vy])
    return source, val


def _list_folder(root: Path, what: str, class_names: list[str] | None):
    """Image paths, labels, classes and non-image files of a class-folder tree."""
    subdirs = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not subdirs:
        loose = [f.name for f in root.iterdir() if f.is_file()]
        if loose:
            raise DataError(
                f"Folder {str(root)!r} ({what}) has files but no class subfolders. "
                "Put each class's images in its own subfolder, e.g. "
                f"{root / 'cats' / 'img1.jpg'}."
            )
        raise DataError(
            f"Folder {str(root)!r} ({what}) is empty. Expected one subfolder per "
            f"class, e.g. {root / 'cats' / 'img1.jpg'}."
        )
    if class_names is None:
        class_names = subdirs
    else:
        unknown = [d for d in subdirs if d not in class_names]
        if unknown:
            raise DataError(
                f"{what} folder {str(root)!r} has class subfolders {unknown} that "
                f"are not among the training classes {class_names}. Use the same "
                "class subfolders in both folders."
            )
    paths, labels, others = [], [], []
    for index, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(root)
            if not file.is_file() or any(p.startswith(".") for p in rel.parts):
                continue
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(file))
                labels.append(index)
            else:
                others.append(str(file))
    return paths, np.asarray(labels, np.int32), class_names, others


def _header_size(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) from a PNG, JPEG, GIF or BMP header, without decoding.

    (0, 0) when the format is not recognised; a corrupt JPEG header raises.
    """

    def number(offset: int, size: int, little_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(
            tf.strings.substr(contents, offset, size),
            tf.uint16 if size == 2 else tf.int32,
            little_endian=little_endian,
        )
        return tf.abs(tf.cast(raw[0], tf.int64))

    def starts(magic: bytes) -> tf.Tensor:
        return tf.logical_and(
            tf.strings.length(contents) >= 26,
            tf.equal(tf.strings.substr(contents, 0, len(magic)), magic),
        )

    return tf.case(
        [
            (
                starts(b"\x89PNG\r\n\x1a\n"),
                lambda: tf.stack([number(20, 4, False), number(16, 4, False)]),
            ),
            (
                starts(b"\xff\xd8"),
                lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
            ),
            (
                starts(b"GIF8"),
                lambda: tf.stack([number(8, 2, True), number(6, 2, True)]),
            ),
            (
                starts(b"BM"),
                lambda: tf.stack([number(22, 4, True), number(18, 4, True)]),
            ),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by Python
        return False
    return True


def printable_path(path: str) -> str:
    """A path as text that prints anywhere: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_image_files(paths: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Which image files can be read: one parallel pass that decodes every file.

    A file is skipped when TensorFlow cannot decode it, when its name is not
    UTF-8 (TensorFlow cannot open it), or when its header declares more than
    `MAX_IMAGE_PIXELS` pixels (it is then not decoded at all).

    Args:
        paths: list of str. Image file paths.

    Returns:
        The mask of readable files, and `{path: reason}` for the files skipped
        for a reason other than being unreadable.
    """
    ok = np.zeros(len(paths), bool)
    reasons = {p: "its name is not UTF-8; rename it" for p in paths if not _is_utf8(p)}
    named = [i for i, p in enumerate(paths) if p not in reasons]
    if not named:
        return ok, reasons
    limit = MAX_IMAGE_PIXELS or 0

    def check(i, path):
        contents = tf.io.read_file(path)
        size = _header_size(contents)
        large = tf.logical_and(limit > 0, size[0] * size[1] > limit)
        shape = tf.cond(
            large,
            lambda: tf.zeros([3], tf.int32),
            lambda: tf.shape(decode_bytes(contents)),
        )
        return i, size, large, shape

    ds = tf.data.Dataset.from_tensor_slices(
        (np.asarray(named), [paths[i] for i in named])
    )
    ds = ds.map(check, num_parallel_calls=_AUTOTUNE).ignore_errors()
    for index, size, large, _ in ds.batch(4096).as_numpy_iterator():
        ok[index[~large]] = True
        for i, (height, width) in zip(index[large], size[large], strict=True):
            reasons[paths[i]] = (
                f"{width}x{height} = {height * width:,} pixels, over "
                f"tltf.data.MAX_IMAGE_PIXELS={limit:,}; set it higher (or to None) "
                "to read it"
            )
    return ok, reasons


def skipped_files_text(paths: Sequence[str], reasons: dict[str, str], root=None) -> str:
    """Skipped files (relative to `root` if given) as one printable, short list."""
    listed = [
        printable_path(p if root is None else os.path.relpath(p, root))
        + (f" ({reasons[p]})" if p in reasons else "")
        for p in paths
    ]
    return ", ".join(listed[:_MAX_LISTED]) + (
        f", ... ({len(listed) - _MAX_LISTED} more)" if len(listed) > _MAX_LISTED else ""
    )


def _drop_empty_classes(
    root: Path, labels: np.ndarray, class_names: list[str], strict: bool
) -> tuple[np.ndarray, list[str]]:
    """Drops the class folders without readable images (`strict` refuses them).

    No model output is then trained for a class it never sees. A user who wants
    such an output passes `num_classes` (the folder count), which keeps them.

    Returns:
        The labels renumbered over the kept classes, and the kept class names.
    """
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [n for n, c in zip(class_names, counts, strict=True) if c == 0]
    kept = [n for n, c in zip(class_names, counts, strict=True) if c > 0]
    if not empty:
        return labels, class_names
    listed = ", ".join(empty)
    if len(kept) < 2:
        raise DataError(
            f"Folder {str(root)!r} has images in only one class folder ({kept[0]!r}); "
            f"these have none: {listed}. A classifier needs images of at least 2 "
            "classes: add images to the empty folders."
        )
    if strict:
        raise DataError(
            f"Class folders with no readable images in {str(root)!r}: {listed}. The "
            "model would have an output for a class it never sees. Add images to "
            f"them or delete them; pass strict=False to drop them, or num_classes="
            f"{len(class_names)} to keep them."
        )
    print(
        f"tltf: note: dropped class folders with no readable images: {listed} "
        f"({len(kept)} classes left; num_classes={len(class_names)} keeps them, "
        "strict=True refuses them)"
    )
    renumber = np.cumsum(counts > 0) - 1
    return renumber[labels].astype(np.int32), kept


def _folder_source(
    root: Path,
    opts: ImageOptions,
    num_classes,
    what: str,
    strict: bool,
    class_names=None,
) -> _Source:
    given_names = class_names
    paths, labels, class_names, others = _list_folder(root, what, class_names)
    if opts.task not in ("multiclass", "binary"):
        raise ConfigError(
            f"An image folder gives one class per image; task={opts.task!r} needs "
            "arrays, a .npz file or a tf.data.Dataset of its targets. Use "
            "task='multiclass' (or 'binary' with two subfolders)."
        )
    if opts.task == "binary" and len(class_names) != 2:
        raise DataError(
            f"task='binary' needs exactly 2 class subfolders. Received "
            f"{len(class_names)}: {class_names}."
        )
    if num_classes is not None and num_classes != len(class_names):
        raise ConfigError(
            f"Folder {str(root)!r} has {len(class_names)} class subfolders "
            f"{class_names}, but num_classes={num_classes}. Pass num_classes=None "
            "(or the number of subfolders)."
        )
    ok, reasons = scan_image_files(paths)
    bad = [p for p, good in zip(paths, ok, strict=True) if not good]
    skipped = sorted(others + bad)
    if skipped:
        shown = skipped_files_text(skipped, reasons, root)
        if strict:
            raise DataError(
                f"Found {len(skipped)} unreadable or non-image files in "
                f"{str(root)!r}: {shown}. Remove or fix them, or pass strict=False "
                "to skip them."
            )
        plural = "s" if len(skipped) > 1 else ""
        print(f"tltf: skipped {len(skipped)} unreadable file{plural}: {shown}")
    paths = [p for p, good in zip(paths, ok, strict=True) if good]
    labels = labels[ok]
    if not paths:
        raise DataError(
            f"Folder {str(root)!r} ({what}) has no readable images. Expected files "
            f"ending in {', '.join(IMAGE_EXTENSIONS)} inside its class subfolders."
        )
    if given_names is None and num_classes is None:
        labels, class_names = _drop_empty_classes(root, labels, class_names, strict)
    else:
        counts = np.bincount(labels, minlength=len(class_names))
        empty = [n for n, c in zip(class_names, counts, strict=True) if c == 0]
        if empty and what == "train":
            print(
                "tltf: note: class folders with no readable images (kept: "
                f"num_classes={num_classes}): {', '.join(empty)}"
            )
    path_array = np.asarray(paths)

    def make(indices):
        chosen = path_array if indices is None else path_array[indices]
        chosen_labels = labels if indices is None else labels[indices]
        return tf.data.Dataset.from_tensor_slices((chosen, chosen_labels))

    return _Source(
        make=make,
        prepare=lambda path, label: (
            prepare_image(decode_file(path), opts, True),
            label,
        ),
        labels=labels,
        num_classes=len(class_names),
        class_names=list(class_names),
        skipped=skipped,
        size=len(paths),
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
            " Sample weights are not supported here; drop them with "
            "ds.map(lambda x, y, w: (x, y)) and use class weights in fit."
        )
    return " Map it to (image, label) pairs first with ds.map(...)."


def _check_dataset_spec(ds: tf.data.Dataset, what: str) -> tuple[int, Any]:
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
            batches of them.

    Returns:
        A NumPy array with one label per example (first axis).

    Example:

    >>> y = tltf.data.dataset_labels(data.validation)
    >>> np.bincount(y)
    array([12, 11, 14])
    """
    rank, label = _check_dataset_spec(ds, "the dataset")
    return _read_labels(ds, batched=rank == 4, what="the dataset")[0]


def _read_labels(
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


def _dataset_source(ds: tf.data.Dataset, opts: ImageOptions, num_classes, what: str):
    rank, label_spec = _check_dataset_spec(ds, f"the {what} dataset")
    batched = rank == 4
    unknown_channels = rank > 2 and ds.element_spec[0].shape[-1] is None
    try:
        raw_labels, channels = _read_labels(ds, batched, what, unknown_channels)
    except tf.errors.OpError as error:
        raise DataError(
            f"Could not read the {what} dataset: {error.message.splitlines()[0]}"
        ) from None
    if not channels <= {1, 3, 4}:
        raise DataError(
            f"Expected {what} images with 1, 3 or 4 channels (gray, RGB or RGBA). "
            f"Received images with {sorted(channels - {1, 3, 4})} channels. Map "
            "them to RGB first, e.g. ds.map(lambda x, y: (x[..., :3], y))."
        )
    if len(raw_labels) == 0:
        raise DataError(f"{what} is empty: it yields no examples.")
    labels, num_classes = _normalize_labels(raw_labels, opts.task, num_classes, what)
    if batched:
        ds = ds.unbatch()
    label_rank = label_spec.shape.rank - (1 if batched else 0)
    task = opts.task

    def clean_label(y):
        if task in ("multilabel", "regression"):
            return tf.cast(y, tf.float32)
        if label_rank == 1:
            y = (
                tf.argmax(y, output_type=tf.int32)
                if raw_labels.ndim == 2 and raw_labels.shape[1] > 1
                else tf.reshape(y, [])
            )
        return tf.cast(y, tf.int32)

    n = len(labels)
    uint8 = ds.element_spec[0].dtype == tf.uint8

    def make(indices):
        if indices is None:
            return ds
        mask = np.zeros(n, bool)
        mask[indices] = True
        mask = tf.constant(mask)
        chosen = ds.enumerate().filter(lambda i, _: mask[i]).map(lambda _, e: e)
        return chosen.apply(tf.data.experimental.assert_cardinality(len(indices)))

    return _Source(
        make=make,
        prepare=lambda x, y: (prepare_image(x, opts, uint8), clean_label(y)),
        labels=labels,
        num_classes=num_classes,
        uint8=uint8,
        bytes_per_raw=opts.size[0] * opts.size[1] * 3 * 4,
        size=n,
    )


def _source_kind(source) -> str:
    if isinstance(source, tf.data.Dataset):
        return "dataset"
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return "arrays"
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("tfds:"):
            return "tfds"
        path = Path(text).expanduser()
        if path.is_dir():
            return "folder"
        if path.is_file():
            if path.suffix.lower() == ".npz":
                return "npz"
            raise DataError(
                f"Expected a folder of class subfolders, a .npz file, or a TFDS name "
                f"as the data source. Received the file {text!r}."
            )
        local = _near_paths(text) != ([], None)
        if isinstance(source, str) and not local and _is_tfds_name(text):
            return "tfds"  # a TFDS name, and nothing on disk resembles it
        raise _no_such_path(text, tfds_hint=isinstance(source, str))
    if isinstance(source, np.ndarray):
        raise DataError(
            "Received one array as the data source. Pass (images, labels) as a tuple."
        )
    raise DataError(
        "Expected the data source as a folder path, a .npz path, a TFDS name "
        "('tfds:tf_flowers'), an (images, labels) tuple or a tf.data.Dataset. "
        f"Received: {type(source).__name__}"
    )


def _near_paths(text: str) -> tuple[list[str], str | None]:
    """What exists on disk near the missing path `text`, written the way it was.

    The first missing part of `text` is compared (with `difflib`) to the folders
    and `.npz` files beside it; the parts after it are kept when the corrected
    path exists.

    Returns:
        The close matches (best first, at most 3), and the deepest existing
        folder that `text` names (None when even its first part is missing,
        or only its root, such as "/" or "~", exists).
        With `mnist/train` and `mnist/test` on disk, `"mnist/trian"` gives
        `(["mnist/train"], "mnist")`.
    """
    parts = Path(text).parts
    if not parts:
        return [], None
    first = Path(parts[0]).expanduser()
    rooted = first.is_absolute() or first != Path(parts[0])
    folder, start = (first, 1) if rooted else (Path("."), 0)
    for i in range(start, len(parts)):
        if (folder / parts[i]).exists():
            folder = folder / parts[i]
            continue
        try:
            siblings = [
                p.name
                for p in folder.iterdir()
                if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() == ".npz")
            ]
        except OSError:  # not a folder, or unreadable
            siblings = []
        matches = []
        for name in difflib.get_close_matches(parts[i], siblings, n=3, cutoff=0.6):
            whole = Path(*parts[:i], name, *parts[i + 1 :])
            fixed = whole if whole.expanduser().exists() else Path(*parts[:i], name)
            matches.append(str(fixed))
        return matches, str(Path(*parts[:i])) if i > start else None
    return [], None


def _no_such_path(text: str, tfds_hint: bool) -> DataError:
    """The error for the missing path `text`, with what is near it on disk."""
    near, existing = _near_paths(text)
    what = "file" if Path(text).suffix.lower() == ".npz" else "folder"
    message = f"No such {what} {text!r}.{did_you_mean(near)}"
    if existing is not None and not near:
        message += f" {existing!r} has nothing of that name."
    if not Path(text).expanduser().is_absolute():
        message += f" Relative paths start from the working folder {os.getcwd()!r}."
    if tfds_hint and near and _is_tfds_name(text):
        message += f" For the TFDS dataset, write 'tfds:{text}'."
    elif tfds_hint and not near and existing is None and _TFDS_NAME.match(text):
        builder = _tfds_parts(text)[0]
        close = difflib.get_close_matches(builder, _tfds_names(), n=3, cutoff=0.7)
        message += " For a TFDS dataset, write 'tfds:NAME'."
        message += did_you_mean(f"tfds:{m}" for m in close)
    return DataError(message)


def _read_source(source, kind, opts, num_classes, what, strict, class_names=None):
    if kind == "dataset":
        return _dataset_source(source, opts, num_classes, what), None
    if kind == "arrays":
        return _arrays_source(
            source[0], source[1], opts, num_classes, what, class_names
        ), None
    path = Path(os.fspath(source)).expanduser()
    if kind == "npz":
        return _npz_source(path, opts, num_classes, what)
    return _folder_source(path, opts, num_classes, what, strict, class_names), None


# -- TFDS -----------------------------------------------------------------------------
def _tfds():
    import tensorflow_datasets as tfds  # Slow to import: only when needed.

    import tltf.datasets_tfds  # noqa: F401  (registers tltf_shapes; imports tfds)

    return tfds


@functools.lru_cache(maxsize=1)
def _tfds_names() -> list[str]:
    try:
        return list(_tfds().list_builders(with_community_datasets=False))
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
        configs = [c.name for c in _tfds().builder_cls(builder).BUILDER_CONFIGS]
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
    listed = ", ".join(configs[:_MAX_LISTED]) + (
        ", ..." if len(configs) > _MAX_LISTED else ""
    )
    return (
        f"TFDS dataset {builder!r} has no config {config!r}."
        f"{did_you_mean(f'tfds:{builder}/{c}' for c in close)} Its configs: {listed}."
    )


def _is_tfds_name(text: str) -> bool:
    """Whether `text` names a TFDS builder (and one of its configs, if it has one)."""
    return (
        _TFDS_NAME.match(text) is not None
        and _tfds_parts(text)[0] in _tfds_names()
        and _tfds_config_problem(text) is None
    )


def _tfds_load(name: str, split: str, data_dir, **kwargs):
    tfds = _tfds()
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
) -> tuple[_Source, Callable[[], np.ndarray]]:
    tfds = _tfds()
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
    rank, _ = _check_dataset_spec(ds, f"TFDS {name!r} ({what})")
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
                f"{num_classes}. Pass num_classes=None."
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
    source = _Source(
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


# -- pipeline -----------------------------------------------------------------------------
def _shuffle_buffer(size: int | None, bytes_per_element: int) -> int:
    cap = max(1024, _SHUFFLE_BYTES // max(bytes_per_element, 1))
    return min(size, cap) if size else cap


def _pipeline(
    source: _Source, indices, opts: ImageOptions, training: bool
) -> tf.data.Dataset:
    return _pipelines(source, indices, opts, training)[0]


def _pipelines(
    source: _Source, indices, opts: ImageOptions, training: bool
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The batches (shuffled for training, when asked) and the same in a fixed order.

    Each pass over a `shuffle(..., reshuffle_each_iteration=True)` draws the next
    order, so any extra pass over the training pipeline (a feature pass, a probe)
    would change the orders later epochs read, and a resumed run, which skips
    those passes, could not replay them. One-off passes read the fixed-order copy
    instead. With `cache`, both read the same in-memory cache.
    """
    ds = source.make(indices)
    n = len(indices) if indices is not None else source.size
    shuffle = training and opts.shuffle
    if shuffle and not opts.cache:
        # Shuffle the raw elements (file names, small arrays) before decoding.
        buffer = (
            n if source.bytes_per_raw == 0 else _shuffle_buffer(n, source.bytes_per_raw)
        )
        fixed = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
        ds = ds.shuffle(buffer, seed=opts.seed, reshuffle_each_iteration=True)
        ds = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
    else:
        ds = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
        if opts.cache:
            ds = ds.cache()
        fixed = ds
        if shuffle:
            per_image = opts.size[0] * opts.size[1] * 3 * (1 if source.uint8 else 4)
            ds = ds.shuffle(
                _shuffle_buffer(n, per_image),
                seed=opts.seed,
                reshuffle_each_iteration=True,
            )
    return _batched(ds, source, opts), _batched(fixed, source, opts)


def _batched(
    ds: tf.data.Dataset, source: _Source, opts: ImageOptions
) -> tf.data.Dataset:
    if source.uint8:
        ds = ds.map(
            lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=_AUTOTUNE
        )
    return ds.batch(opts.batch_size).prefetch(_AUTOTUNE)


# -- load_data ------------------------------------------------------------------------------
def load_data(
    source,
    *,
    image_size: tuple[int, int] | int,
    batch_size: int = 32,
    split: str | None = None,
    validation_split: float | None = None,
    validation=None,
    seed: int | None = 0,
    task: str = "multiclass",
    num_classes: int | None = None,
    resize: str = "stretch",
    shuffle: bool = True,
    cache: bool = True,
    strict: bool = False,
    data_dir: str | os.PathLike | None = None,
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
        image_size: int or (height, width). The size of every output image.
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
        resize: str. "stretch" (resize, ignoring the aspect ratio), "crop"
            (central crop to the target aspect ratio, then resize) or "pad" (resize
            keeping the aspect ratio, then pad with black). Defaults to "stretch".
        shuffle: bool. Shuffle the training data every epoch. Defaults to True.
        cache: bool. Keep decoded, resized images in memory after the first
            epoch. Defaults to True.
        strict: bool. Raise `DataError` on unreadable or non-image files in an
            image folder instead of skipping them, and on class folders without
            readable images instead of dropping them. Defaults to False.
        data_dir: str or None. TFDS data folder (e.g. a prepared offline copy).
            Defaults to None (TFDS's own default).

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
    opts = ImageOptions(
        size=check_image_size(image_size),
        batch_size=check_positive_int(batch_size, "batch_size"),
        resize=check_choice(resize, RESIZE_POLICIES, "resize"),
        seed=seed,
        shuffle=bool(shuffle),
        cache=bool(cache),
        task=check_choice(task, TASKS, "task"),
    )
    fraction = _check_fraction(validation_split)
    if fraction is not None and validation is not None:
        raise ConfigError(
            "Pass either validation_split or validation, not both. Received: "
            f"validation_split={validation_split!r} and validation={validation!r}."
        )
    if num_classes is not None:
        check_positive_int(num_classes, "num_classes")
    kind = _source_kind(source)
    if kind != "tfds" and validation is not None:
        _source_kind(validation)  # a missing path fails before the training data
    if kind != "tfds" and split is not None:
        raise ConfigError(
            f"split= selects a TFDS split; the source is {_KIND_NAMES[kind]}. Received: "
            f"split={split!r}. Use validation_split= or validation= instead."
        )
    if kind == "tfds":
        return _load_tfds(
            source, split, fraction, validation, opts, num_classes, data_dir
        )
    train, val_arrays = _read_source(source, kind, opts, num_classes, "train", strict)
    train_idx = val_idx = None
    val_source = None
    if fraction is not None:
        train_idx, val_idx = _split_indices(
            train.labels, opts.task, fraction, opts.seed
        )
        val_source = train
    elif validation is not None or val_arrays is not None:
        val_kind = "arrays" if validation is None else _source_kind(validation)
        if val_kind == "tfds":
            raise ConfigError(
                "validation is a TFDS name but the training data is not from TFDS. "
                "Pass validation data of the same kind as the training data."
            )
        val_source, _ = _read_source(
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
        warning = _validation_coverage(
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
    train_ds, fixed = _pipelines(train, train_idx, opts, training=True)
    return DataBundle(
        train=train_ds,
        unshuffled=fixed,
        validation=(
            _pipeline(val_source, val_idx, opts, training=False)
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
        _counts=_label_counts(labels, opts.task, train.num_classes),
    )


def _load_tfds(source, split, fraction, validation, opts, num_classes, data_dir):
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
    train_ds, fixed = _pipelines(train, None, opts, training=True)
    return DataBundle(
        train=train_ds,
        unshuffled=fixed,
        validation=_pipeline(val, None, opts, training=False) if val else None,
        class_names=train.class_names,
        num_classes=train.num_classes,
        task=opts.task,
        image_size=opts.size,
        num_train=train.size,
        num_validation=val.size if val else None,
        _counts=count,
    )


# -- class weights -----------------------------------------------------------------------------
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
        y = _numeric(np.asarray(labels), "class_weights")
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


# -- augmentation --------------------------------------------------------------------------------
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


# -- mixup and cutmix --------------------------------------------------------------------------
def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0:
        raise ConfigError(f"Expected alpha > 0, e.g. 0.2. Received: alpha={alpha!r}")
    return float(alpha)


def _mix_inputs(ds: tf.data.Dataset, num_classes: int | None, name: str):
    """Checks a batched (images, labels) dataset; returns a one-hot label fn."""
    rank, label = _check_dataset_spec(ds, f"the {name} dataset")
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
        ds: tf.data.Dataset. Batches of (images, labels).
        num_classes: int. Number of classes.

    Returns:
        The dataset with float32 one-hot labels; one-hot labels pass unchanged.

    Example:

    >>> val = tltf.data.one_hot(data.validation, data.num_classes)
    """
    fn = _mix_inputs(ds, num_classes, "one_hot")
    return ds.map(lambda x, y: (x, fn(y)), num_parallel_calls=_AUTOTUNE)


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
