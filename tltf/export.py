"""Exporting models: `.keras`, TensorFlow SavedModel, and TFLite in four flavours.

`export_model` writes a model in one of three formats, always atomically (a crash
leaves no half-written file or folder):

* `"keras"`: the native `.keras` file (loads with `safe_mode=True`).
* `"savedmodel"`: a TensorFlow SavedModel folder for TF Serving and `tf.saved_model.load`,
  written by `model.export(..., format="tf_saved_model")`. Its `serving_default`
  signature takes `image` (float32 RGB in [0, 255]) and returns `output_0`.
* `"tflite"`: a TFLite flatbuffer, converted from that SavedModel by
  `tf.lite.TFLiteConverter`, in one of four flavours (`quantize=`):

  | quantize | weights | activations | size (vs float32) |
  | --- | --- | --- | --- |
  | None (float32) | float32 | float32 | 1x |
  | "float16" | float16 | float32 | ~1/2 |
  | "dynamic" | int8 | float32 (int8 kernels where possible) | ~1/3 |
  | "int8" | int8 | int8 (calibrated on `representative_data`) | ~1/3 |

Every flavour keeps **float32 input and output**: the model takes raw RGB pixels in
[0, 255] as float32 and returns float32 probabilities (or logits), exactly like the
Keras model. A full-int8 model quantizes its input and dequantizes its output
inside the graph, so callers never deal with scales and zero points, and every
internal op runs in int8 (`TFLITE_BUILTINS_INT8`). `tflite_predict` also runs
TFLite models with int8 or uint8 input/output (made elsewhere): it quantizes and
dequantizes with the model's own parameters.

The `Preprocessing` layer tltf puts into every model is plain TF ops and converts
in every mode (`tltf.layers.PREPROCESSING_MODES`), with or without its grayscale
conversion, in float32 and in full int8.

Example:

>>> from tltf.export import export_model, tflite_predict
>>> export_model(model, "flowers.keras")
>>> export_model(model, "flowers_savedmodel", format="savedmodel")
>>> export_model(model, "flowers_int8.tflite", quantize="int8",
...              representative_data=data)          # a DataBundle
>>> probs = tflite_predict("flowers_int8.tflite", images)
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tltf._io import (
    atomic_dir,
    atomic_save_model,
    atomic_write_bytes,
    check_file_replaceable,
)
from tltf.data import DataBundle, load_data
from tltf.errors import ConfigError, DataError, ModelError, suggest
from tltf.evaluation import read_images
from tltf.saving import as_model

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "export_model",
    "format_from_path",
    "tflite_predict",
]

#: Formats of `export_model`.
FORMATS: tuple[str, ...] = ("keras", "savedmodel", "tflite")

#: TFLite flavours (`quantize=`); None means "float32".
QUANTIZATIONS: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")

#: The empty file in every SavedModel folder tltf writes: only such a folder
#: (or an earlier export, a bare SavedModel) is ever replaced by an export.
SAVEDMODEL_MARKER = ".tltf-savedmodel"
_SAVEDMODEL_FILES = {"saved_model.pb", "fingerprint.pb", "variables", "assets"}

_FORMAT_ALIASES = {"saved_model": "savedmodel", "tf_saved_model": "savedmodel"}
_QUANTIZE_ALIASES = {"none": "float32", "fp16": "float16", "full_int8": "int8"}

# Lines the TFLite converter and interpreter write to stderr from C++ at every
# call; dropped while tltf converts or runs a model (everything else is replayed).
_NOISE = re.compile(
    r"^(INFO: Created TensorFlow Lite .*delegate.*"
    r"|fully_quantize: \d+, inference_type: .*"
    r"|I\d{4} .*"
    r"|W\d{4} .*(Ignored output_format|Ignored drop_control_dependency).*)$"
)


# -- helpers ---------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_native() -> Iterator[None]:
    """Captures C++ stderr output; replays every line but the known INFO noise."""
    if os.environ.get("TLTF_VERBOSE_TF") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # No real stderr (some notebook frontends).
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not _NOISE.match(line):
                    print(line, file=sys.stderr)


#: Suffixes of model files tltf does not write. Without `format`, such a path
#: is an error rather than a SavedModel folder of that name.
_OTHER_MODEL_SUFFIXES = {
    ".onnx": "ONNX (tf2onnx converts the SavedModel export)",
    ".h5": "Keras's legacy HDF5 (Keras 3 saves .keras)",
    ".hdf5": "Keras's legacy HDF5 (Keras 3 saves .keras)",
    ".pb": "a frozen graph (a SavedModel folder holds saved_model.pb)",
    ".lite": "TFLite, whose suffix is .tflite",
    ".tfl": "TFLite, whose suffix is .tflite",
    ".pt": "PyTorch",
    ".pth": "PyTorch",
    ".mlmodel": "Core ML (coremltools converts the SavedModel export)",
}


def format_from_path(path: str | os.PathLike) -> str:
    """The export format a path's suffix asks for: "keras" (.keras), "tflite"
    (.tflite) or "savedmodel" (any other name: a folder).

    Raises:
        ConfigError: The suffix of a model file that tltf does not write, such as
            .onnx or .h5.

    Example:

    >>> format_from_path("model.tflite"), format_from_path("exports/model")
    ('tflite', 'savedmodel')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _OTHER_MODEL_SUFFIXES:
        raise ConfigError(
            f"{str(path)!r} ends in {path.suffix}, a format tltf does not "
            f"export: {_OTHER_MODEL_SUFFIXES[suffix]}. Export to "
            f"{str(path.with_suffix('.keras'))!r}, "
            f"{str(path.with_suffix('.tflite'))!r} or a SavedModel folder "
            f"such as {str(path.with_suffix(''))!r}."
        )
    return {".keras": "keras", ".tflite": "tflite"}.get(suffix, "savedmodel")


def _check_format(format, path: Path) -> str:
    if format is None:
        return format_from_path(path)
    key = str(format).lower()
    key = _FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise ConfigError(
            f"Expected format to be one of {list(FORMATS)}. Received: "
            f"format={format!r}.{suggest(str(format), FORMATS)}"
        )
    return key


def _check_quantize(quantize) -> str:
    if quantize is None:
        return "float32"
    key = str(quantize).lower()
    key = _QUANTIZE_ALIASES.get(key, key)
    if key not in QUANTIZATIONS:
        raise ConfigError(
            f"Expected quantize to be None or one of {list(QUANTIZATIONS)}. "
            f"Received: quantize={quantize!r}.{suggest(str(quantize), QUANTIZATIONS)}"
        )
    return key


def _as_model(model) -> keras.Model:
    return as_model(model)


def _image_input(model: keras.Model) -> tuple:
    """The (height, width, channels) of the model's single image input."""
    shapes = model.input_shape
    if isinstance(shapes, list) or (
        isinstance(shapes, tuple) and shapes and isinstance(shapes[0], tuple)
    ):
        raise ModelError(
            f"Expected a model with one image input. Received a model with "
            f"{len(shapes)} inputs."
        )
    if len(shapes) != 4:
        raise ModelError(
            "Expected a model whose input is a batch of images (batch, height, "
            f"width, channels). Received input shape {shapes}."
        )
    return tuple(shapes[1:])


def _calibration_images(data, shape: tuple, count: int) -> np.ndarray:
    """Up to `count` float32 images of `shape` from arrays, files, tf.data or a bundle."""

    if isinstance(data, str) and data.startswith("tfds:"):
        data = load_data(data, image_size=shape[:2], shuffle=False, cache=False)
    if isinstance(data, DataBundle):
        data = data.train
    if isinstance(data, tf.data.Dataset):
        images, total = [], 0
        spec = data.element_spec
        if isinstance(spec, tuple):
            data = data.map(lambda *e: e[0])
        batched = data.element_spec.shape.rank == 4
        for element in data.as_numpy_iterator():
            element = element if batched else element[np.newaxis]
            images.append(element)
            total += len(element)
            if total >= count:
                break
        if not images:
            raise DataError("representative_data is empty: it yields no images.")
        images = np.concatenate(images)[:count]
    elif (
        isinstance(data, tuple)
        and len(data) == 2
        and not isinstance(data[0], (str, os.PathLike))
    ):
        images = np.asarray(data[0])
    elif isinstance(data, np.ndarray):
        images = data
    else:  # File paths, a folder, a .npz file.
        images = read_images(data, shape[:2], limit=count)[0]
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4 or len(images) == 0:
        raise DataError(
            "Expected representative_data images of shape (N, height, width, "
            f"channels). Received an array of shape {images.shape}."
        )
    images = images[:count]
    if tuple(images.shape[1:3]) != tuple(shape[:2]) and None not in shape[:2]:
        images = read_images(images, shape[:2])[0]
    return images.astype(np.float32)


# -- export_model ----------------------------------------------------------------
def export_model(
    model,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    quantize: str | None = None,
    representative_data=None,
    num_calibration: int = 100,
) -> Path:
    """Exports a model as `.keras`, a TensorFlow SavedModel, or a TFLite file.

    Every write is atomic: `.keras` and `.tflite` files go through a temporary
    file, a SavedModel through a temporary folder that is renamed when complete
    (an existing export at `path` is replaced only then). A SavedModel replaces
    only a SavedModel export tltf wrote (its folder holds `.tltf-savedmodel`, or
    only a SavedModel) or an empty folder: never a file or another folder. A
    `.keras` or `.tflite` file replaces only a model file of its format (an
    earlier export), never another file or a folder.

    TFLite models keep float32 input and output in every flavour (see the module
    docstring): feed raw RGB pixels in [0, 255], get probabilities back.

    Args:
        model: keras.Model, or the path of a `.keras` file (loaded with
            `safe_mode=True`).
        path: str or PathLike. The file (`.keras`, `.tflite`) or folder
            (SavedModel) to write.
        format: str or None. "keras", "savedmodel" or "tflite". Defaults to
            None: from the suffix of `path` (".keras", ".tflite", anything else
            a SavedModel folder, except a model file's suffix that tltf does
            not write, such as ".onnx" or ".h5": `format_from_path`).
        quantize: str or None. TFLite flavour: None (float32), "float16",
            "dynamic" (dynamic-range int8 weights) or "int8" (full integer,
            calibrated on `representative_data`). Defaults to None.
        representative_data: Images to calibrate full-int8 quantization with
            (used only for `quantize="int8"`, where it is required): an array of
            shape (N, H, W, C), an `(images, labels)` tuple, a `tf.data.Dataset`
            (of images or `(image, label)`, batched or not), a `DataBundle` (its
            training images), a folder, image files or a `.npz` file. Images are
            resized to the model's input size. Defaults to None.
        num_calibration: int. How many images calibrate full-int8 quantization.
            Defaults to 100.

    Returns:
        The path written, as a `Path`.

    Raises:
        ConfigError: A bad format or quantization, a missing
            `representative_data` for "int8", a `.keras` format with another
            suffix, or a path holding something tltf did not write (a `.keras`
            or `.tflite` path may hold a model file of that format, which is
            replaced; a SavedModel path, a SavedModel export).
        ModelError: The model cannot be converted.
        DiskFullError: The disk is full.

    Example:

    >>> export_model(model, "model.keras")
    PosixPath('model.keras')
    >>> export_model(model, "model.tflite", quantize="dynamic")
    PosixPath('model.tflite')
    """
    path = Path(path).expanduser()
    fmt = _check_format(format, path)
    flavour = _check_quantize(quantize)
    if fmt != "tflite" and flavour != "float32":
        raise ConfigError(
            f"quantize applies to TFLite exports only. Received: format={fmt!r} and "
            f"quantize={quantize!r}. Use format='tflite', or drop quantize."
        )
    if flavour == "int8" and representative_data is None:
        raise ConfigError(
            "quantize='int8' calibrates activation ranges on sample images and needs "
            "representative_data: e.g. representative_data=data (a DataBundle), "
            "an image array, a tf.data.Dataset or an image folder. Or use "
            "quantize='dynamic', which needs no data."
        )
    if not isinstance(num_calibration, int) or num_calibration < 1:
        raise ConfigError(
            "Expected num_calibration to be an int >= 1. Received: "
            f"num_calibration={num_calibration!r}"
        )
    model = _as_model(model)
    if fmt == "keras":
        if path.suffix != ".keras":
            raise ConfigError(
                "Expected a path ending in .keras for format='keras'. Received: "
                f"path={str(path)!r}. Use e.g. {str(path.with_suffix('.keras'))!r}."
            )
        check_file_replaceable(path, _is_keras_file, ".keras model file")
        return atomic_save_model(model, path)
    if fmt == "savedmodel":
        if path.suffix.lower() in (".keras", ".tflite", ".h5"):
            raise ConfigError(
                f"A SavedModel is a folder; received path={str(path)!r} with a "
                f"{path.suffix} suffix. Use a folder name such as "
                f"{str(path.with_suffix(''))!r}, or format={path.suffix[1:]!r}."
            )
        with atomic_dir(
            path,
            marker=SAVEDMODEL_MARKER,
            recognise=is_savedmodel_folder,
            what="SavedModel export",
        ) as tmp:
            _save_savedmodel(model, tmp)
        return path
    check_file_replaceable(path, _is_tflite_file, "TFLite model file")
    content = _convert_tflite(model, flavour, representative_data, num_calibration)
    check_file_replaceable(path, _is_tflite_file, "TFLite model file")
    return atomic_write_bytes(path, content)


def _is_keras_file(path: Path) -> bool:
    """A Keras v3 model archive (`.keras`): a zip holding config.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _is_tflite_file(path: Path) -> bool:
    """A TFLite flatbuffer: its file identifier, "TFL3", at bytes 4 to 8."""
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == b"TFL3"
    except OSError:
        return False


def is_savedmodel_folder(folder: Path) -> bool:
    """Whether a folder holds a SavedModel and nothing else (an earlier export).

    Example:

    >>> is_savedmodel_folder(Path("export/flowers"))
    True
    """
    names = {p.name for p in folder.iterdir()}
    return "saved_model.pb" in names and names <= _SAVEDMODEL_FILES


def _save_savedmodel(model: keras.Model, folder: Path) -> None:
    with _quiet_native():
        model.export(str(folder), format="tf_saved_model", verbose=False)


def _convert_tflite(model, flavour: str, representative_data, count: int) -> bytes:
    shape = _image_input(model) if flavour == "int8" else None
    calibration = (
        _calibration_images(representative_data, shape, count)
        if flavour == "int8"
        else None
    )
    with tempfile.TemporaryDirectory(prefix="tltf-export-") as folder:
        _save_savedmodel(model, Path(folder) / "savedmodel")
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(Path(folder) / "savedmodel")
        )
        if flavour != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if flavour == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if flavour == "int8":

            def representative():
                for image in calibration:
                    yield [image[np.newaxis]]

            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            with _quiet_native():
                return converter.convert()
        except Exception as error:  # The converter raises many types.
            first = (str(error).strip().splitlines() or [""])[0]
            hint = (
                " Full int8 needs every op to have an int8 kernel; try "
                "quantize='dynamic' or 'float16'."
                if flavour == "int8"
                else ""
            )
            raise ModelError(
                f"TFLite conversion ({flavour}) of model {model.name!r} failed: "
                f"{type(error).__name__}: {first}.{hint}"
            ) from None


# -- running TFLite models -------------------------------------------------------
def _interpreter(model_content: bytes):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        Interpreter = tf.lite.Interpreter  # noqa: N806  (deprecated in TF 2.20+)
    with _quiet_native():
        try:
            return Interpreter(model_content=model_content)
        except ValueError as error:
            raise ModelError(
                f"Could not load the TFLite model: {str(error).splitlines()[0]}"
            ) from None


def _quantize_input(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return batch.astype(dtype)
    scale, zero = detail["quantization"]
    if not scale:
        return batch.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(batch / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_output(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.issubdtype(values.dtype, np.floating) or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)


def tflite_predict(model, images, batch_size: int = 32) -> np.ndarray:
    """Runs a TFLite model on a batch of images; returns its outputs as float32.

    Uses `ai_edge_litert.interpreter.Interpreter` (TensorFlow's own
    `tf.lite.Interpreter` is deprecated; it is the fallback when ai-edge-litert
    is missing). A model with a dynamic batch dimension (what `export_model`
    writes) runs `batch_size` images per call; one with a fixed batch size runs
    in chunks of that size (the last chunk padded). int8/uint8 inputs and
    outputs are quantized and dequantized with the model's parameters.

    Args:
        model: str, PathLike or bytes. A `.tflite` file or its contents.
        images: array of shape (N, H, W, C) (or one image (H, W, C)) of the
            model's input size: raw RGB pixels in [0, 255] for tltf models.
        batch_size: int. Images per interpreter call. Defaults to 32.

    Returns:
        A float32 array of the model's outputs, one row per image.

    Raises:
        ModelError: The file is missing or not a single-input, single-output
            TFLite model.
        DataError: The images do not match the model's input shape.

    Example:

    >>> probs = tflite_predict("model.tflite", images)
    >>> probs.argmax(axis=1)
    """
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
    else:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"TFLite file {str(path)!r} does not exist.")
        content = path.read_bytes()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"Expected batch_size to be an int >= 1. Received: batch_size={batch_size!r}"
        )
    images = np.asarray(images)
    interpreter = _interpreter(content)
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            "Expected a TFLite model with one input and one output. Received "
            f"{len(inputs)} inputs and {len(outputs)} outputs."
        )
    inp, out = inputs[0], outputs[0]
    signature = [int(d) for d in inp.get("shape_signature", inp["shape"])]
    if images.ndim == len(signature) - 1:
        images = images[np.newaxis]
    expected = signature[1:]
    if images.ndim != len(signature) or any(
        e not in (-1, g) for e, g in zip(expected, images.shape[1:], strict=True)
    ):
        shown = tuple(None if e == -1 else e for e in expected)
        raise DataError(
            f"Expected images of shape (N, {', '.join(map(str, shown))}) for this "
            f"TFLite model. Received an array of shape {images.shape}. Resize them "
            "first (tltf.evaluation.read_images resizes to a given size)."
        )
    dynamic = signature[0] == -1
    chunk = batch_size if dynamic else max(int(signature[0]), 1)
    with _quiet_native():  # The interpreter logs its delegate on first use.
        results = _run_batches(interpreter, inp, out, images, chunk, dynamic)
    if not results:
        return np.zeros(
            (0, *[max(d, 0) for d in out["shape_signature"][1:]]), np.float32
        )
    return np.concatenate(results)


def _run_batches(interpreter, inp, out, images, chunk: int, dynamic: bool) -> list:
    current = None
    results = []
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk]
        n = len(batch)
        if dynamic:
            if batch.shape != current:
                interpreter.resize_tensor_input(inp["index"], list(batch.shape))
                interpreter.allocate_tensors()
                current = batch.shape
        else:
            if current is None:
                interpreter.allocate_tensors()
                current = batch.shape
            if n < chunk:
                pad = np.zeros((chunk - n, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
        interpreter.set_tensor(inp["index"], _quantize_input(batch, inp))
        interpreter.invoke()
        results.append(
            _dequantize_output(interpreter.get_tensor(out["index"]), out)[:n]
        )
    return results
