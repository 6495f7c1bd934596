"""Evaluating a model on labelled data, and predicting on new images.

`evaluate` runs a model over labelled data and returns an `EvaluationReport`:
accuracy, top-k accuracy, the loss, per-class precision, recall, F1 and support,
macro and weighted averages, and the confusion matrix. The report prints as a
table, converts to a dict or JSON, and plots its confusion matrix.

`predict` runs a model over unlabelled images (an array, image files, a folder or
a `.npz` file) and returns one row per image with its top-k labels and scores;
`write_predictions` writes the rows as CSV or JSON.

Images are read and resized exactly as `tltf.load_data` reads them (the same
decoder, RGB conversion, resize policy and uint8 rounding), at the model's input
size, so a model sees the same pixels at prediction time as in training.

What each task reports:

| task | from the output | metrics |
| --- | --- | --- |
| "multiclass" | softmax (or logits) | accuracy, top-k accuracy, cross-entropy, per-class P/R/F1, confusion |
| "binary" | one sigmoid unit, threshold 0.5 | accuracy, binary cross-entropy, P/R/F1 of both classes, 2x2 confusion |
| "multilabel" | sigmoid units, threshold 0.5 | subset (exact-match) and per-label accuracy, per-label P/R/F1, micro/macro/weighted averages; no confusion matrix |
| "regression" | linear units | MSE (the loss), MAE, RMSE and R², overall and per output |

With sample weights (`evaluate(model, x, y, sample_weight=w)`), every one of
them is weighted, as scikit-learn's `sample_weight` weighs it.

Example:

>>> from tltf.evaluation import evaluate, predict, write_predictions
>>> report = evaluate(model, data)            # a DataBundle: its validation set
>>> report.print()
>>> report.plot_confusion("confusion.png")
>>> rows = predict(model, "new_photos/", top_k=3)  # the classes fine_tune recorded
>>> write_predictions(rows, "predictions.csv")

Why about 1,200 lines: evaluation and prediction share the reading of images and
folders, the class names and the report; they are kept together so that both
read data the one way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tltf._checks import check_choice, check_image_size, check_positive_int
from tltf._io import (
    atomic_write_csv,
    atomic_write_json,
    check_file_replaceable,
    csv_header,
    read_json,
)
from tltf.data import IMAGE_EXTENSIONS, DataBundle, load_data
from tltf.data.images import (
    RESIZE_POLICIES,
    ImageOptions,
    check_pixel_values,
    decode_file,
    image_shape_error,
    prepare_image,
    to_gray,
)
from tltf.data.inputs import (
    is_array,
    pipeline_error_text,
    pipeline_errors,
    read_dataset,
)
from tltf.data.labels import check_sample_weights
from tltf.data.sources import scan_image_files, skipped_files_text, source_kind
from tltf.errors import ConfigError, DataError, LabelRangeError, ModelError, suggest
from tltf.info import class_names_of, model_info
from tltf.probe import sigmoid
from tltf.reports import confusion_matrix, plot_confusion_counts
from tltf.saving import as_model

__all__ = [
    "EvaluationReport",
    "evaluate",
    "predict",
    "read_images",
    "write_predictions",
]

_TASKS = ("multiclass", "binary", "multilabel", "regression")
_THRESHOLD = 0.5
_MAX_LISTED = 10
_MAX_PRINTED_CLASSES = 20
#: The longest class name that heads a column of the printed confusion matrix,
#: and the widest printed matrix; past either, its columns are numbered.
_MAX_HEADER = 12
_MAX_WIDTH = 100


# -- the model -------------------------------------------------------------------
def _as_model(model) -> keras.Model:
    return as_model(model)


def _output_activation(model: keras.Model) -> str | None:
    layer = model.layers[-1]
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def _model_task(model: keras.Model, task: str | None) -> tuple[str, bool, int]:
    """(task, outputs are logits, output units) of a model."""
    shape = model.output_shape
    if not (isinstance(shape, tuple) and shape and isinstance(shape[-1], int)):
        raise ModelError(
            f"Expected a model with one output of shape (batch, units). Received "
            f"output shape {shape}."
        )
    if len(shape) != 2:
        raise ModelError(
            f"Expected a model whose output has shape (batch, units). Received {shape}."
        )
    units = int(shape[-1])
    activation = _output_activation(model)

    try:
        info = model_info(model)
    except ModelError:
        info = None
    if task is None and info is not None:
        task, logits = info.task, info.logits
    else:
        if task is None:
            if activation == "softmax":
                task = "multiclass"
            elif activation == "sigmoid":
                task = "binary" if units == 1 else "multilabel"
            else:
                task = "regression" if units == 1 else "multiclass"
        elif task not in _TASKS:
            raise ConfigError(
                f"Expected task to be one of {list(_TASKS)}. Received: "
                f"task={task!r}.{suggest(str(task), _TASKS)}"
            )
        logits = activation not in ("softmax", "sigmoid")
    if task == "binary" and units != 1:
        raise ModelError(
            f"Expected one sigmoid output unit for task='binary'. Received a model "
            f"with {units} outputs; use task='multiclass' for a softmax over 2 units."
        )
    if task == "multiclass" and units < 2:
        raise ModelError(
            "Expected at least 2 output units for task='multiclass'. Received 1; "
            "use task='binary' (sigmoid) or 'regression'."
        )
    return task, bool(logits), units


def _scores(raw: np.ndarray, task: str, logits: bool) -> np.ndarray:
    """Probabilities (classification) or values (regression) from raw outputs."""
    raw = np.asarray(raw, dtype=np.float64)
    if task == "regression" or not logits:
        return raw
    if task == "multiclass":
        shifted = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    return sigmoid(raw)


@contextlib.contextmanager
def _labels_of_the_model(task: str, units: int):
    """Says a label out of range in the model's terms: `load_data`'s own error
    would suggest another `num_classes`, which the model fixes."""
    try:
        yield
    except LabelRangeError as error:
        count = _num_classes(task, units)
        labels = (
            f"are one-hot rows of {error.columns} columns"
            if error.columns is not None
            else f"run from {error.low:g} to {error.high:g}"
        )
        raise DataError(
            f"The evaluation labels {labels}, but "
            f"the model has {count} classes (labels 0 to {count - 1}). Evaluate it "
            "on labels of the classes it was trained on, in the same order "
            "(tltf.model_info(model).class_names names them), or fine-tune a "
            f"model built with num_classes={int(error.high) + 1}."
        ) from None


def _num_classes(task: str, units: int) -> int:
    return 2 if task == "binary" else units


def _class_names(names, task: str, units: int, source_names=None) -> list[str]:
    count = _num_classes(task, units)
    if names is None:
        names = source_names
    if names is None:
        return [str(i) for i in range(count)]
    names = [str(n) for n in names]
    if task != "regression" and len(names) != count:
        raise ConfigError(
            f"Expected {count} class names for this {task} model "
            f"({units} output unit{'s' if units != 1 else ''}). Received "
            f"{len(names)}: {names[:_MAX_LISTED]}."
        )
    return names


def _recorded_names(model: keras.Model, task: str, units: int) -> list[str] | None:
    """The class names the model was trained on (see `set_class_names`), or None.

    None too when they do not fit the output (a `task=` override).
    """
    names = class_names_of(model)
    if names is None or len(names) != _num_classes(task, units):
        return None
    return names


def _input_size(model: keras.Model, image_size) -> tuple[int, int]:
    if image_size is not None:
        return check_image_size(image_size)
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4):
        raise ModelError(
            "Expected a model that takes a batch of images (batch, height, width, "
            f"channels). Received input shape {shape}."
        )
    if shape[1] is None or shape[2] is None:
        raise ConfigError(
            f"The model takes images of any size (input shape {shape}); pass "
            "image_size=(height, width) to choose the size images are resized to."
        )
    return int(shape[1]), int(shape[2])


def _takes_gray(model: keras.Model) -> bool:
    """Whether the model's image input has one channel (tltf reads images as RGB)."""
    return model.input_shape[-1] == 1


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(
            f"Expected top_k to be an int >= 1. Received: top_k={top_k!r}"
        )
    return int(top_k)


# -- reading images --------------------------------------------------------------
def _options(size: tuple[int, int], resize: str):
    return ImageOptions(
        size=size,
        batch_size=1,
        resize=check_choice(resize, RESIZE_POLICIES, "resize"),
        seed=None,
        shuffle=False,
        cache=False,
        task="multiclass",
    )


def _npz_images(path: Path) -> tuple[np.ndarray, list[str] | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = archive.files
            key = next(
                (k for k in ("x", "images", "x_test", "x_val") if k in keys), None
            )
            if key is None:
                raise DataError(
                    f"Expected an array 'x' (or 'images') in {str(path)!r}. Found: "
                    f"{sorted(keys)}. Save it with np.savez(path, x=images)."
                )
            images = archive[key]
            names = archive["class_names"] if "class_names" in keys else None
    except DataError:
        raise
    except Exception as error:
        raise DataError(
            f"Could not read {str(path)!r} as a .npz file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Save it with "
            "np.savez(path, x=images), without Python objects."
        ) from None
    return images, ([str(n) for n in names.tolist()] if names is not None else None)


def _dataset_images(ds: tf.data.Dataset) -> np.ndarray:
    """The images of a tf.data.Dataset of images or (image, label) pairs,
    batched or not, as one array (in the dataset's order)."""
    spec = ds.element_spec
    if isinstance(spec, (tuple, list)) and spec:
        ds = ds.map(lambda image, *rest: image)
        spec = ds.element_spec
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank not in (3, 4):
        raise DataError(
            "Expected a tf.data.Dataset of images or (image, label) pairs, batched "
            f"or not. Received elements of structure {spec}."
        )
    if spec.shape.rank == 3:
        ds = ds.batch(256)
    try:
        batches = list(ds.as_numpy_iterator())
    except tf.errors.OpError as error:
        if "Cannot batch tensors with different shapes" not in str(error):
            raise DataError(
                f"Could not read the dataset: {pipeline_error_text(error)}"
            ) from None
        raise DataError(
            "The dataset's images differ in size, so they cannot be stacked. Resize "
            "them in the pipeline (e.g. .map(lambda x, *y: tf.image.resize(x, (h, "
            "w)))) or pass the image files instead."
        ) from None
    if not batches:
        raise DataError("Received an empty dataset: no images.")
    return np.concatenate(batches)


def _folder_files(root: Path) -> list[str]:
    files = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        hidden = any(p.startswith(".") for p in rel.parts)
        if file.is_file() and not hidden and file.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(str(file))
    return files


def _image_source(inputs, size: tuple[int, int], resize: str, limit: int | None = None):
    """(dataset of float32 images, ids, id key, class names from the source).

    With `limit`, a folder contributes at most about that many files, evenly
    spaced over its sorted listing (so every class folder is represented).
    """

    opts = _options(size, resize)
    names = None
    files = None
    if isinstance(inputs, tf.data.Dataset):
        inputs = _dataset_images(inputs)
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs).expanduser()
        if path.is_dir():
            files = _folder_files(path)
            if not files:
                raise DataError(
                    f"Folder {str(path)!r} has no image files (.jpg, .jpeg, .png, "
                    ".bmp, .gif), searched recursively."
                )
            if limit is not None and len(files) > limit:
                picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
                files = [files[i] for i in np.unique(picks)]
            ok, reasons = scan_image_files(files)
            bad = [f for f, good in zip(files, ok, strict=True) if not good]
            if bad:
                shown = skipped_files_text(bad, reasons, path)
                print(f"tltf: skipped {len(bad)} unreadable file(s): {shown}")
            files = [f for f, good in zip(files, ok, strict=True) if good]
            if not files:
                raise DataError(f"Folder {str(path)!r} has no readable images.")
        elif path.is_file() and path.suffix.lower() == ".npz":
            inputs, names = _npz_images(path)
        elif path.is_file():
            files = [str(path)]
        else:
            raise DataError(f"No such file or folder: {str(path)!r}. Check the path.")
    elif isinstance(inputs, (list, tuple)) and all(
        isinstance(p, (str, os.PathLike)) for p in inputs
    ):
        files = [os.fspath(Path(p).expanduser()) for p in inputs]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DataError(
                f"No such image file(s): {missing[:_MAX_LISTED]}. Check the paths."
            )
    if files is not None:
        if not files:
            raise DataError("Received an empty list of image files.")
        ok, reasons = scan_image_files(files)
        if not ok.all():
            bad = [f for f, good in zip(files, ok, strict=True) if not good]
            raise DataError(
                f"Could not decode {len(bad)} image file(s): "
                f"{skipped_files_text(bad, reasons)}. Expected .jpg, .png, "
                ".bmp or .gif images."
            )
        ds = tf.data.Dataset.from_tensor_slices(files).map(
            lambda p: prepare_image(decode_file(p), opts, True),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.map(lambda x: tf.cast(x, tf.float32)), files, "file", None
    try:
        images = np.asarray(inputs)
    except ValueError:
        images = None
    if images is None or not (
        np.issubdtype(images.dtype, np.number) or images.dtype == bool
    ):
        raise DataError(
            "Expected images as an array of shape (N, height, width, channels), "
            "a list of image files, a folder or a .npz file. Received: "
            f"{type(inputs).__name__}"
            + (f" of dtype {images.dtype}" if images is not None else "")
            + "."
        )
    if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
        images = images[np.newaxis]  # One image.
    elif images.ndim == 3:
        images = images[..., np.newaxis]  # A batch of gray images.
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise image_shape_error(images.shape, "the")
    if len(images) == 0:
        raise DataError("Received no images (an empty array).")
    check_pixel_values(images, "the input")
    uint8 = images.dtype == np.uint8
    ds = tf.data.Dataset.from_tensor_slices(images)
    if tuple(images.shape[1:3]) != size or images.shape[-1] != 3:
        ds = ds.map(lambda x: prepare_image(x, opts, uint8))
    return (
        ds.map(lambda x: tf.cast(x, tf.float32)),
        list(range(len(images))),
        "index",
        names,
    )


def read_images(
    inputs, image_size, *, resize: str = "stretch", limit: int | None = None
) -> tuple[np.ndarray, list]:
    """Reads images as `load_data` does: RGB float32 in [0, 255], resized.

    Args:
        inputs: An array (N, H, W, C) or one image (H, W, C); a tf.data.Dataset
            of images or (image, label) pairs, batched or not; an image file or
            a list of them; a folder (searched recursively; unreadable files are
            skipped and listed); or a `.npz` file with `x` (or `images`).
        image_size: int or (height, width). The output size.
        resize: str. "stretch", "crop" or "pad" (see `load_data`). Defaults to
            "stretch".
        limit: int or None. Read at most this many images (from a folder, evenly
            spaced over its sorted files). Defaults to None (all).

    Returns:
        `(images, ids)`: a float32 array (N, height, width, 3) and, per image,
        its file path (files, folders) or its index (arrays, `.npz`).

    Example:

    >>> images, files = read_images("photos/", 96)
    """

    size = check_image_size(image_size)
    ds, ids, _, _ = _image_source(inputs, size, resize, limit)
    if limit is not None:
        ds, ids = ds.take(limit), ids[:limit]
    batches = list(ds.batch(256).as_numpy_iterator())
    return np.concatenate(batches).astype(np.float32), ids


# -- predict ---------------------------------------------------------------------
@pipeline_errors()
def predict(
    model,
    inputs,
    *,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    task: str | None = None,
    resize: str = "stretch",
    image_size=None,
) -> list[dict[str, Any]]:
    """Predicts the top-k classes of images; one row (a dict) per image.

    Images are read like `load_data` reads them and resized to the model's input
    size. Each row has `"file"` (file inputs) or `"index"` (arrays), then:

    * classification: `"labels"` and `"scores"`, the top-k class names and their
      probabilities, best first (k is at most the number of classes; a binary
      model has the two classes, scored `1 - p` and `p`);
    * "multilabel" additionally `"predicted"`: every label scoring >= 0.5;
    * "regression": `"values"`, the model's outputs.

    Args:
        model: keras.Model, or the path of a `.keras` file.
        inputs: An array (N, H, W, C) or one image (H, W, C) of raw RGB pixels
            in [0, 255]; a tf.data.Dataset of such images or of (image, label)
            pairs, batched or not (its labels are not used); an image file or a
            list of them; a folder of images (searched recursively; unreadable
            files are skipped and listed); or a `.npz` file with `x` (or
            `images`) and optionally `class_names`.
        class_names: list of str or None. Names of the classes, in label order.
            Defaults to None: the names the model was trained on (recorded by
            `fine_tune`), else the `.npz` file's `class_names`, else "0", "1", ...
        top_k: int. How many classes per row. Defaults to 5.
        batch_size: int. Images per model call. Defaults to 32.
        task: str or None. Overrides the task ("multiclass", "binary",
            "multilabel", "regression"). Defaults to None: the task a tltf model
            records, else inferred from the output layer (softmax: multiclass;
            sigmoid: binary or multilabel; linear: regression for one unit,
            multiclass logits otherwise).
        resize: str. "stretch", "crop" or "pad". Defaults to "stretch".
        image_size: int, (height, width) or None. Size to resize to. Defaults to
            None: the model's input size.

    Returns:
        A list of dicts, in input order (folders: sorted file paths).

    Example:

    >>> rows = predict(model, "new_photos/", class_names=["cat", "dog"], top_k=1)
    >>> rows[0]
    {'file': 'new_photos/a.jpg', 'labels': ['dog'], 'scores': [0.93]}
    """
    model = _as_model(model)
    top_k = _check_top_k(top_k)
    batch_size = check_positive_int(batch_size, "batch_size")
    task, logits, units = _model_task(model, task)
    size = _input_size(model, image_size)
    ds, ids, key, source_names = _image_source(inputs, size, resize)
    if _takes_gray(model):
        ds = ds.map(to_gray)
    names = _class_names(
        class_names, task, units, _recorded_names(model, task, units) or source_names
    )
    raw = model.predict(ds.batch(batch_size), verbose=0)
    scores = _scores(raw, task, logits)
    rows: list[dict[str, Any]] = []
    for ident, row in zip(ids, scores, strict=True):
        out: dict[str, Any] = {key: ident}
        if task == "regression":
            out["values"] = [float(v) for v in row]
        else:
            probs = np.array([1.0 - row[0], row[0]]) if task == "binary" else row
            order = np.argsort(-probs, kind="stable")[:top_k]
            out["labels"] = [names[i] for i in order]
            out["scores"] = [round(float(probs[i]), 6) for i in order]
            if task == "multilabel":
                out["predicted"] = [
                    names[i] for i in range(len(row)) if row[i] >= _THRESHOLD
                ]
        rows.append(out)
    return rows


_SINGULAR = {"labels": "label", "scores": "score", "values": "value"}
#: The columns of a predictions CSV (`write_predictions`).
_PREDICTION_COLUMN = re.compile(r"(file|index|predicted|(label|score|value)_\d+)")


def check_predictions_path(path: str | os.PathLike) -> None:
    """Raises (a ConfigError) unless predictions may be written at `path`: a new
    path, or a predictions file that tltf wrote (`write_predictions`)."""
    check_file_replaceable(path, _is_predictions_file, "predictions file")


def check_report_path(path: str | os.PathLike) -> None:
    """Raises (a ConfigError) unless a report may be written at `path`: a new
    path, or an evaluation report that tltf wrote (`EvaluationReport.to_json`)."""
    check_file_replaceable(path, _is_report_file, "evaluation report")


def _is_predictions_file(path: Path) -> bool:
    """A CSV or JSON file of predictions as `write_predictions` writes them."""
    if path.suffix.lower() == ".json":
        rows = read_json(path)
        return isinstance(rows, list) and (
            not rows
            or (isinstance(rows[0], dict) and ("file" in rows[0] or "index" in rows[0]))
        )
    header = csv_header(path)
    return (
        bool(header)
        and header[0] in ("file", "index")
        and all(_PREDICTION_COLUMN.fullmatch(c) for c in header)
    )


def _is_report_file(path: Path) -> bool:
    """An evaluation report as `EvaluationReport.to_json` writes it."""
    report = read_json(path)
    return isinstance(report, dict) and {"task", "num_examples", "per_class"} <= set(
        report
    )


def write_predictions(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Writes prediction rows as CSV or JSON (by the suffix), atomically.

    JSON keeps the rows as they are (a list of objects). CSV has one line per
    row: `file` or `index`, then `label_1, score_1, ..., label_k, score_k`
    (`value_1, ...` for regression; multilabel `predicted` joined by ";").

    Args:
        rows: list of dict. The output of `predict`.
        path: str or PathLike. A `.csv` or `.json` file. An existing file is
            replaced only if it holds predictions as this function writes them.

    Returns:
        The path written.

    Raises:
        ConfigError: Another suffix, or a file at `path` that tltf did not write
            (tltf never replaces it).

    Example:

    >>> write_predictions(predict(model, "photos/"), "predictions.csv")
    PosixPath('predictions.csv')
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(
            "Expected a predictions path ending in .csv or .json. Received: "
            f"path={str(path)!r}"
        )
    check_predictions_path(path)
    if suffix == ".json":
        return atomic_write_json(path, list(rows))
    columns: list[str] = []
    lines = []
    for row in rows:
        flat: dict[str, Any] = {}
        pairs = ("labels", "scores") if "labels" in row and "scores" in row else ()
        for name, value in row.items():
            if name in pairs and name == "scores":
                continue
            if name == "labels" and pairs:
                for i, (label, score) in enumerate(
                    zip(row["labels"], row["scores"], strict=True), start=1
                ):
                    flat[f"label_{i}"] = label
                    flat[f"score_{i}"] = score
            elif name == "predicted":
                flat[name] = ";".join(map(str, value))
            elif isinstance(value, (list, tuple)):
                base = _SINGULAR.get(name, name)
                for i, item in enumerate(value, start=1):
                    flat[f"{base}_{i}"] = item
            else:
                flat[name] = value
        for column in flat:
            if column not in columns:
                columns.append(column)
        lines.append(flat)
    return atomic_write_csv(path, lines, columns)


# -- the report ------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationReport:
    """The result of `evaluate`.

    Attributes:
        task: str. "multiclass", "binary", "multilabel" or "regression".
        num_examples: int. Examples evaluated.
        class_names: list of str. Class (or label, or output) names.
        metrics: dict. Overall metrics: "accuracy", "top_k_accuracy" (multiclass
            with more than `top_k` classes only), "loss" (cross-entropy; MSE for regression); multilabel adds
            "label_accuracy"; regression has "mae", "rmse", "mse", "r2".
        top_k: int or None. The k of "top_k_accuracy" (None when it is not
            reported).
        per_class: list of dict. Per class (or label): "class", "precision",
            "recall", "f1", "support" (its examples; the sum of their weights in
            a weighted report). For regression, per output: "output", "mae",
            "rmse", "r2".
        averages: dict. "macro" and "weighted" (multilabel also "micro")
            precision, recall, f1 and support.
        confusion: np.ndarray or None. Counts (rows: true class, columns:
            predicted; sums of weights in a weighted report), None for
            multilabel and regression.
        y_true: np.ndarray. The labels (class indices, multi-hot rows, targets).
        y_pred: np.ndarray. The predictions, same form.
        scores: np.ndarray. The probabilities (or regression values).
        total_weight: float or None. The sum of the sample weights, when the
            report weighs its examples (`evaluate(..., sample_weight=)`); None
            when every example counts once.
    """

    task: str
    num_examples: int
    class_names: list[str]
    metrics: dict[str, float]
    top_k: int | None = None
    per_class: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    averages: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    confusion: np.ndarray | None = dataclasses.field(default=None, repr=False)
    y_true: np.ndarray | None = dataclasses.field(default=None, repr=False)
    y_pred: np.ndarray | None = dataclasses.field(default=None, repr=False)
    scores: np.ndarray | None = dataclasses.field(default=None, repr=False)
    total_weight: float | None = None

    @property
    def accuracy(self) -> float | None:
        """Overall accuracy (exact-match for multilabel); None for regression."""
        return self.metrics.get("accuracy")

    @property
    def top_k_accuracy(self) -> float | None:
        """Top-k accuracy (multiclass); None otherwise."""
        return self.metrics.get("top_k_accuracy")

    @property
    def loss(self) -> float | None:
        """Mean cross-entropy (MSE for regression) of the model's outputs."""
        return self.metrics.get("loss")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of everything but the per-example arrays."""
        return {
            "task": self.task,
            "num_examples": self.num_examples,
            "class_names": list(self.class_names),
            "metrics": dict(self.metrics),
            "top_k": self.top_k,
            "per_class": [dict(row) for row in self.per_class],
            "averages": {k: dict(v) for k, v in self.averages.items()},
            "confusion_matrix": (
                None if self.confusion is None else self.confusion.tolist()
            ),
            "total_weight": self.total_weight,
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Writes `to_dict()` as JSON, atomically; returns the path.

        An existing file is replaced only if it is such a report: tltf never
        replaces a file it did not write (a ConfigError names it).
        """
        check_report_path(path)
        return atomic_write_json(path, self.to_dict())

    def plot_confusion(
        self,
        path: str | os.PathLike | None = None,
        title: str | None = None,
        data: str | None = None,
    ):
        """Plots the confusion matrix (and writes it as PNG when `path` is given).

        The title gives the data's name, the number of examples and the accuracy.

        Args:
            path: str or None. Also write the figure to this PNG file. Defaults
                to None.
            title: str or None. The title's first line. Defaults to "Confusion
                matrix".
            data: str or None. What was evaluated, e.g. "validation" or "test".
                Defaults to None (not named).

        Returns:
            A matplotlib Figure, or None (nothing is written) for multilabel and
            regression reports, which have no confusion matrix.
        """
        if self.confusion is None:
            return None
        return plot_confusion_counts(
            self.confusion, self.class_names, title=title, path=path, data=data
        )

    def print(self) -> None:
        """Prints the report as a table (`str(report)`)."""
        print(str(self))

    def __str__(self) -> str:
        n_names = len(self.class_names)
        what = (
            f"{n_names} output{'s' if n_names != 1 else ''}"
            if self.task == "regression"
            else f"{n_names} {'labels' if self.task == 'multilabel' else 'classes'}"
        )
        lines = [f"Evaluation of {self.num_examples} examples ({self.task}, {what})"]
        if self.total_weight is not None:
            lines[0] += f", weighted (total weight {self.total_weight:.6g})"
        labels = {
            "accuracy": "accuracy"
            if self.task != "multilabel"
            else "exact-match accuracy",
            "top_k_accuracy": f"top-{self.top_k} accuracy",
            "label_accuracy": "per-label accuracy",
            "loss": "loss (MSE)"
            if self.task == "regression"
            else "loss (cross-entropy)",
            "mae": "MAE",
            "rmse": "RMSE",
            "mse": "MSE",
            "r2": "R2",
        }
        for key, value in self.metrics.items():
            if key == "mse" and "loss" in self.metrics:
                continue
            lines.append(f"  {labels.get(key, key):<22}{_fmt(value)}")
        if self.task == "regression":
            if len(self.per_class) > 1:
                lines += ["", f"{'output':<16}{'MAE':>10}{'RMSE':>10}{'R2':>10}"]
                for row in self.per_class:
                    lines.append(
                        f"{str(row['output'])[:15]:<16}{_fmt(row['mae']):>10}"
                        f"{_fmt(row['rmse']):>10}{_fmt(row['r2']):>10}"
                    )
            return "\n".join(lines)
        width = max(12, *(len(n) for n in self.class_names)) + 2 if n_names else 14
        head = "label" if self.task == "multilabel" else "class"
        lines += [
            "",
            f"{head:<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
        ]

        def row_line(name, row):
            return (
                f"{name:<{width}}{_fmt(row['precision']):>10}{_fmt(row['recall']):>10}"
                f"{_fmt(row['f1']):>10}{_count(row['support']):>10}"
            )

        for row in self.per_class:
            lines.append(row_line(row["class"], row))
        lines.append("")
        for name, row in self.averages.items():
            lines.append(row_line(f"{name} avg", row))
        if self.confusion is not None and n_names <= _MAX_PRINTED_CLASSES:
            lines += ["", *_confusion_lines(self.class_names, self.confusion, width)]
        return "\n".join(lines)


def _confusion_lines(names: Sequence[str], matrix: np.ndarray, width: int) -> list[str]:
    """The printed confusion matrix, each class name in full.

    Names head their columns when they fit (`_MAX_HEADER` characters, the whole
    matrix within `_MAX_WIDTH`); otherwise the columns are numbered, and each row
    starts with its number, so no two columns can read the same.
    """
    longest = max(len(n) for n in names)
    count = max(len(_count(v)) for v in matrix.ravel())
    cell = max(5, count + 1, longest + 1)
    title = "confusion matrix (rows: true, columns: predicted"
    if longest <= _MAX_HEADER and width + cell * len(names) <= _MAX_WIDTH:
        heads = list(names)
        labels = [f"{name:<{width}}" for name in names]
        title += ")"
    else:
        digits = len(str(len(names) - 1))
        cell = max(4, count + 1, digits + 1)
        heads = [str(i) for i in range(len(names))]
        labels = [f"{i:>{digits}} {name:<{width}}" for i, name in enumerate(names)]
        title += ", numbered as the rows)"
    lines = [title, " " * len(labels[0]) + "".join(f"{h:>{cell}}" for h in heads)]
    for label, counts in zip(labels, matrix, strict=True):
        lines.append(label + "".join(f"{_count(c):>{cell}}" for c in counts))
    return lines


def _count(value) -> str:
    """A count, or a sum of sample weights (`:.4g`), as printed."""
    number = _number(value)
    return str(number) if isinstance(number, int) else f"{number:.4g}"


# -- metrics ---------------------------------------------------------------------
def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _prf(tp, fp, fn, names, key="class"):
    """Per-class rows and macro/weighted averages from true/false counts (sums
    of sample weights, for a weighted report: each support is then one too).

    A precision, recall or F1 whose denominator is zero counts as 0 (as
    scikit-learn's default `zero_division`).
    """
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    support = tp + fn
    rows = [
        {
            key: name,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": _number(s),
        }
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    ]
    total = support.sum()
    weights = support / total if total else np.zeros_like(precision)
    averages = {
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "support": _number(total),
        },
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
            "support": _number(total),
        },
    }
    return rows, averages


def _number(value) -> int | float:
    """A count as an int; a sum of sample weights as a float."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _mean(values, w) -> float:
    """The mean of `values` (one per example), each weighed by `w` if given."""
    values = np.asarray(values, np.float64)
    return float(values.mean() if w is None else (values * w).sum() / w.sum())


def _classification_report(y, scores, task, names, top_k, w=None) -> EvaluationReport:
    """The report of a classifier; `w`, if given, weighs each example (every
    mean and count becomes a weighted one, as scikit-learn's `sample_weight`)."""
    eps = 1e-7
    n = len(y)
    total = None if w is None else float(w.sum())
    if task == "multilabel":
        y = np.asarray(y, np.int64)
        pred = (scores >= _THRESHOLD).astype(np.int64)
        rows_w = np.ones((n, 1)) if w is None else np.asarray(w, np.float64)[:, None]
        tp = ((pred & y) * rows_w).sum(axis=0)
        fp = ((pred & (1 - y)) * rows_w).sum(axis=0)
        fn = (((1 - pred) & y) * rows_w).sum(axis=0)
        rows, averages = _prf(tp, fp, fn, names, key="class")
        micro_rows, _ = _prf([tp.sum()], [fp.sum()], [fn.sum()], ["micro"])
        micro = {k: v for k, v in micro_rows[0].items() if k != "class"}
        averages = {"micro": micro, **averages}
        p = np.clip(scores, eps, 1 - eps)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
        metrics = {
            "accuracy": _mean((pred == y).all(axis=1), w),
            "label_accuracy": _mean((pred == y).mean(axis=1), w),
            "loss": _mean(loss, w),
        }
        return EvaluationReport(
            task,
            n,
            names,
            metrics,
            None,
            rows,
            averages,
            None,
            y,
            pred,
            scores,
            total_weight=total,
        )
    y = np.asarray(y, np.int64).reshape(-1)
    k = len(names)
    if task == "binary":
        p1 = np.clip(scores[:, 0], eps, 1 - eps)
        pred = (scores[:, 0] >= _THRESHOLD).astype(np.int64)
        loss = -(y * np.log(p1) + (1 - y) * np.log(1 - p1))
        metrics = {"accuracy": _mean(pred == y, w), "loss": _mean(loss, w)}
        used_k = None
    else:
        pred = scores.argmax(axis=1)
        # Top-k of k or more classes is always 1: reported only below k.
        used_k = top_k if top_k < k else None
        # Ties are broken against the true class (no credit for a tie at the cut).
        true_score = scores[np.arange(n), y]
        higher = (scores > true_score[:, None]).sum(axis=1)
        p_true = np.clip(true_score, eps, 1.0)
        metrics = {"accuracy": _mean(pred == y, w)}
        if used_k is not None:
            metrics["top_k_accuracy"] = _mean(higher < used_k, w)
        metrics["loss"] = _mean(-np.log(p_true), w)
    matrix = confusion_matrix(y, pred, k, w)
    tp = np.diag(matrix)
    rows, averages = _prf(tp, matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp, names)
    return EvaluationReport(
        task,
        n,
        names,
        metrics,
        used_k,
        rows,
        averages,
        matrix,
        y,
        pred,
        scores,
        total_weight=total,
    )


def _regression_report(y, values, names, w=None) -> EvaluationReport:
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    if y.shape != values.shape:
        raise DataError(
            f"Expected regression targets of shape {values.shape} (one per model "
            f"output). Received targets of shape {y.shape}."
        )
    share = (
        np.full((len(y), 1), 1 / len(y))
        if w is None
        else (np.asarray(w, np.float64) / np.sum(w))[:, None]
    )
    err = values - y
    mse = (share * err**2).sum(axis=0)
    mae = (share * np.abs(err)).sum(axis=0)
    var = (share * (y - (share * y).sum(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(var > 0, 1 - _safe_div(mse, var), np.nan)
    if len(names) != y.shape[1]:
        names = [str(i) for i in range(y.shape[1])]
    rows = [
        {
            "output": name,
            "mae": float(mae[i]),
            "rmse": float(np.sqrt(mse[i])),
            "r2": float(r2[i]),
        }
        for i, name in enumerate(names)
    ]
    total_var = var.mean()
    metrics = {
        "loss": float(mse.mean()),
        "mae": float(mae.mean()),
        "rmse": float(np.sqrt(mse.mean())),
        "mse": float(mse.mean()),
        "r2": float(1 - mse.mean() / total_var) if total_var > 0 else float("nan"),
    }
    return EvaluationReport(
        "regression",
        len(y),
        names,
        metrics,
        None,
        rows,
        {},
        None,
        y,
        values,
        values,
        total_weight=None if w is None else float(np.sum(w)),
    )


# -- evaluate --------------------------------------------------------------------
@pipeline_errors()
def evaluate(
    model,
    data,
    y=None,
    *,
    sample_weight=None,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    task: str | None = None,
    split: str | None = None,
    resize: str = "stretch",
) -> EvaluationReport:
    """Evaluates a model on labelled data: accuracy, per-class metrics, confusion.

    With sample weights (`(images, labels, weights)`, `sample_weight=`, or a
    `tf.data.Dataset` of `(image, label, weight)`), every metric is a weighted
    one, as scikit-learn's `sample_weight` makes it: each mean is
    `sum(w * value) / sum(w)` (the loss too: Keras's `evaluate` divides by the
    number of examples instead), and each count in the confusion matrix and
    each support is a sum of weights.

    Args:
        model: keras.Model, or the path of a `.keras` file.
        data: Labelled data: a `DataBundle` (its `validation` set, or `train` when
            it has none), or any source `load_data` takes (a folder of class
            subfolders, a `.npz` file, `"tfds:NAME"`, `(images, labels)` arrays, a
            `tf.data.Dataset` of `(image, label)`), read in order, unshuffled and
            resized to the model's input size.
        y: array or None. The labels, with the images as `data`: Keras's form,
            `evaluate(model, x, y)`, the same as `evaluate(model, (x, y))`.
            Defaults to None.
        sample_weight: array or None. One weight (a number >= 0) per image,
            with arrays: `evaluate(model, x, y, sample_weight=w)`, as Keras
            takes it, the same as `evaluate(model, (x, y, w))`. Defaults to
            None: every image counts once. A weighted `tf.data.Dataset` brings
            its own, and is read into memory first (up to
            `WEIGHTED_DATASET_BYTES`).
        class_names: list of str or None. Class names in label order. Defaults
            to None: the names the model was trained on (recorded by
            `fine_tune`), else the data's, else "0", "1", ... When the model
            records its classes, a folder's subfolders are labelled by them (a
            test folder may hold some of the classes), and data whose own class
            names differ is a DataError.
        top_k: int. The k of top-k accuracy, reported only for multiclass
            models with more than `top_k` classes (with k classes or fewer it is
            always 1). Defaults to 5.
        batch_size: int. Batch size for sources read by `load_data`. Defaults to 32.
        task: str or None. Overrides the task (see `predict`). Defaults to None.
        split: str or None. TFDS split for a `"tfds:NAME"` source, e.g. "test".
            Defaults to None ("train").
        resize: str. Resize policy for sources read by `load_data`. Defaults to
            "stretch".

    Returns:
        An `EvaluationReport`.

    Raises:
        DataError: The data is empty, or its labels do not fit the model.
        ConfigError: A bad argument, or class names that do not fit the model.

    Example:

    >>> report = evaluate(model, "photos_test/", top_k=3)
    >>> report.accuracy, report.per_class[0]
    (0.91, {'class': 'cats', 'precision': 0.9, 'recall': 0.93, 'f1': 0.91, 'support': 40})
    >>> report.to_json("evaluation.json")
    """

    if y is not None:  # Keras's form: evaluate(model, x, y)
        if not is_array(data):
            raise ConfigError(
                f"evaluate() got labels (y) with data that is not an array of "
                f"images: {type(data).__name__}. Pass evaluate(model, x, y) with "
                "arrays, or the data alone: evaluate(model, (x, y)), a folder, a "
                "DataBundle or a tf.data.Dataset of (image, label)."
            )
        data = (data, y)
    data, weights = _weights_of(data, sample_weight)
    if weights is not None:  # one per row of the arrays, checked before a pass
        weights = check_sample_weights(weights, len(data[0]), "the evaluation data")
    model = _as_model(model)
    top_k = _check_top_k(top_k)
    task, logits, units = _model_task(model, task)
    size = _input_size(model, None)
    trained_on = _recorded_names(model, task, units)
    if isinstance(data, DataBundle):
        ds = data.validation if data.validation is not None else data.train
        source_names = data.class_names
        if tuple(data.image_size) != size:
            raise DataError(
                f"The data's images are {data.image_size[0]}x{data.image_size[1]} but "
                f"the model takes {size[0]}x{size[1]}. Load it with "
                f"load_data(..., image_size={size})."
            )
    else:
        with _labels_of_the_model(task, units):
            bundle = load_data(
                data,
                image_size=size,
                batch_size=batch_size,
                split=split,
                task=task,
                # The model's classes: a test class folder without images is kept.
                num_classes=_num_classes(task, units),
                # A folder's subfolders are labelled by the model's class names: a
                # test folder may hold some of the classes.
                class_names=(
                    trained_on if trained_on and source_kind(data) == "folder" else None
                ),
                shuffle=False,
                cache=False,
                resize=resize,
            )
        ds, source_names = bundle.train, bundle.class_names
    if trained_on and source_names and list(source_names) != trained_on:
        raise DataError(
            f"The data has the classes {list(source_names)}, but the model was "
            f"trained on {trained_on}, so the labels would not line up. Give the "
            "data the model's classes in the same order (load_data(..., "
            "class_names=tltf.model_info(model).class_names))."
        )
    names = _class_names(class_names, task, units, trained_on or source_names)
    labels, outputs = [], []
    gray = _takes_gray(model)
    for images, y in ds:
        images = to_gray(images) if gray and images.shape[-1] == 3 else images
        outputs.append(np.asarray(model.predict_on_batch(images)))
        labels.append(y.numpy())
    if not labels:
        raise DataError("The evaluation data is empty: it yields no examples.")
    y = np.concatenate(labels)
    scores = _scores(np.concatenate(outputs), task, logits)
    if task == "regression":
        return _regression_report(y, scores, names, weights)
    if task in ("multiclass", "binary") and y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # One-hot labels (e.g. a bundle after mixup's one_hot).
    return _classification_report(y, scores, task, names, top_k, weights)


#: The most bytes of images, labels and weights that `evaluate` reads into
#: memory from a weighted `tf.data.Dataset` (1 GiB: 1,783 images at 224 x 224
#: px in float32, 7,133 in uint8).
WEIGHTED_DATASET_BYTES = 2**30


def _weights_of(data, sample_weight):
    """`(data, weights)`: the data as `load_data` takes it, without its sample
    weights, and those weights (or None)."""
    arrays = isinstance(data, (tuple, list)) and len(data) in (2, 3)
    if arrays and len(data) == 3:
        if sample_weight is not None:
            raise ConfigError(
                "evaluate() got sample weights twice: in (images, labels, "
                "weights) and as sample_weight=. Pass one."
            )
        return tuple(data[:2]), data[2]
    if sample_weight is None:
        if isinstance(data, tf.data.Dataset) and _has_weights(data):
            read, why = read_dataset(
                data, "the evaluation data", WEIGHTED_DATASET_BYTES, in_order=True
            )
            if read is None:
                raise DataError(
                    "evaluate() reads a dataset of (image, label, weight) into "
                    f"memory, and this one cannot be: {why}. Pass (images, "
                    "labels, weights) arrays, in parts if they are large, or the "
                    "dataset without its weights."
                )
            return (read.images, read.labels), read.weights
        return data, None
    if not (arrays and is_array(data[0])):
        raise ConfigError(
            "evaluate() takes sample_weight= with (images, labels) arrays: "
            "evaluate(model, x, y, sample_weight=w). Received it with "
            f"{type(data).__name__} data; a tf.data.Dataset brings its weights "
            "as (image, label, weight) elements."
        )
    return data, sample_weight


def _has_weights(data: tf.data.Dataset) -> bool:
    spec = data.element_spec
    return isinstance(spec, tuple) and len(spec) == 3
