"""Bad data (README, Troubleshooting): each case fails early with a typed error.

Deep crashes (string labels, labels out of range inside a tf.data dataset, one-hot
rows of the wrong width, a bad batch_size, file names that are not UTF-8, a
misspelt monitor, a dataset that repeats forever) and silently wrong data (NaN
pixels, 16-bit or preprocessed pixels, class weights for missing classes,
fractional labels, huge images) become a `tltf.TltfError` raised by tltf before
training starts, or one note.
"""

from __future__ import annotations

import os
import struct
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import (
    check_error,
    folder_snapshot,
    make_data,
    make_tiny_model,
    raises,
)
from tltf import data as tltf_data
from tltf import errors
from tltf.evaluation import predict


def _fine_tune_error(error_type, *args, **kwargs) -> BaseException:
    return raises(error_type, tltf.fine_tune, *args, **kwargs)


class _NoTraining(keras.callbacks.Callback):
    """Fails the test if training starts."""

    def on_train_begin(self, logs=None):
        raise AssertionError("training started")


def _write_png(path, size=(16, 16)) -> None:
    image = tf.zeros((*size, 3), tf.uint8) + 90
    tf.io.write_file(str(path), tf.io.encode_png(image))


def _folder(root) -> None:
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(3):
            _write_png(root / cls / f"{i}.png")


# -- deep crashes --------------------------------------------------------------
def test_string_labels_ask_for_class_indices():
    x, _ = make_data(n=12)
    y = np.array(["cat", "dog", "bird"] * 4)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (x, y), callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "integer", "dtype <U4", "'cat'", "np.unique")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), ds, callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "integer", "b'cat'", "load_data")


def test_dataset_labels_are_checked_on_the_first_batches():
    x, y = make_data(n=16)
    ds = tf.data.Dataset.from_tensor_slices((x, y + 5)).batch(8)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), ds, callbacks=[_NoTraining()]
    )
    check_error(
        error, errors.DataError, "labels outside [0, 3)", "max 7", "num_classes"
    )
    unbatched = tf.data.Dataset.from_tensor_slices((x, y.astype("float32") / 2))
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), unbatched, callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "whole numbers", "0.5")
    val = tf.data.Dataset.from_tensor_slices((x, y - 1)).batch(8)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (x, y), val, callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "validation_data", "min -1")


def test_one_hot_rows_of_the_wrong_width():
    x, y = make_data(n=12)
    one_hot = np.eye(4, dtype="float32")[y]
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (x, one_hot), callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "(12, 4)", "4 columns for 3 classes")
    ds = tf.data.Dataset.from_tensor_slices((x, one_hot)).batch(4)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), ds, callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "4 columns for 3 classes")


@pytest.mark.parametrize("batch_size", [0, -8, True, 2.5])
def test_batch_size_must_be_a_positive_integer(batch_size):
    x, y = make_data(n=8)
    error = _fine_tune_error(
        errors.ConfigError, make_tiny_model(), (x, y), batch_size=batch_size
    )
    check_error(error, errors.ConfigError, "batch_size", "int >= 1", repr(batch_size))
    with pytest.raises(errors.ConfigError, match="batch_size"):
        predict(make_tiny_model(), x, batch_size=batch_size)


@pytest.mark.slow
def test_file_names_that_are_not_utf8_are_skipped_and_named(tmp_path):
    _folder(tmp_path)
    bad = os.path.join(os.fsencode(tmp_path / "a"), b"\xff\xfe.png")
    with open(bad, "wb") as file:
        file.write((tmp_path / "a" / "0.png").read_bytes())
    before = folder_snapshot(tmp_path)
    bundle = tltf.load_data(str(tmp_path), image_size=(16, 16))
    assert bundle.num_train == 6
    assert [os.fsencode(f) for f in bundle.skipped] == [bad]
    with pytest.raises(errors.DataError) as info:
        tltf.load_data(str(tmp_path), image_size=(16, 16), strict=True)
    check_error(info.value, errors.DataError, "\\xff\\xfe.png", "not UTF-8", "rename")
    rows = predict(make_tiny_model(2), str(tmp_path))
    assert len(rows) == 6
    assert folder_snapshot(tmp_path) == before


def test_misspelt_monitor_names_the_logged_metrics():
    x, y = make_data(n=12)
    stop = keras.callbacks.EarlyStopping(monitor="val_acc")
    error = _fine_tune_error(
        errors.ConfigError,
        make_tiny_model(),
        (x, y),
        (x, y),
        callbacks=[stop, _NoTraining()],
    )
    check_error(error, errors.ConfigError, "val_acc", "val_accuracy", "did you mean")
    best = keras.callbacks.ModelCheckpoint(
        "unused.keras", monitor="val_loss", save_best_only=True
    )
    error = _fine_tune_error(
        errors.ConfigError, make_tiny_model(), (x, y), callbacks=[best]
    )
    check_error(error, errors.ConfigError, "val_loss", "validation_data", "'loss'")
    assert "fine_tune_patience" not in str(error)  # a checkpoint does not stop
    stop = keras.callbacks.EarlyStopping(patience=3)
    error = _fine_tune_error(
        errors.ConfigError, make_tiny_model(), (x, y), callbacks=[stop]
    )
    check_error(error, errors.ConfigError, "val_loss", "'loss'", "fine_tune_patience=N")


@pytest.mark.slow
def test_a_dataset_that_repeats_forever_needs_steps_per_epoch():
    x, y = make_data(n=12)
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    error = _fine_tune_error(
        errors.ConfigError, make_tiny_model(), endless, callbacks=[_NoTraining()]
    )
    check_error(error, errors.ConfigError, "repeats forever", "steps_per_epoch", "take")
    error = _fine_tune_error(
        errors.ConfigError,
        make_tiny_model(),
        (x, y),
        endless,
        callbacks=[_NoTraining()],
    )
    check_error(error, errors.ConfigError, "validation_data", "finite")
    history = tltf.fine_tune(
        make_tiny_model(),
        endless,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        steps_per_epoch=2,
        verbose=0,
    )
    assert history.history["stage"] == [1, 2]


# -- silently wrong ------------------------------------------------------------
def test_nan_pixels_in_validation_data_and_in_a_dataset():
    x, y = make_data(n=12)
    xv = x.copy()
    xv[[3, 5], 0, 0, 0] = np.nan
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (x, y), (xv, y), callbacks=[_NoTraining()]
    )
    check_error(
        error, errors.DataError, "validation_data", "2 images", "NaN", "index 3"
    )
    ds = tf.data.Dataset.from_tensor_slices((xv, y)).batch(4)
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), ds, callbacks=[_NoTraining()]
    )
    # Read whole into memory for the guard's slice, in the dataset's order.
    check_error(
        error, errors.DataError, "train", "of the 12 read from the dataset", "index 3"
    )
    # Where it is not read (the features guard), its first batches are checked.
    error = _fine_tune_error(
        errors.DataError,
        make_tiny_model(),
        ds,
        keep_best="features",
        callbacks=[_NoTraining()],
    )
    check_error(error, errors.DataError, "train", "of the first 8 read", "NaN")


def test_predict_refuses_nan_images():
    x, _ = make_data(n=4)
    x[1] = np.inf
    with pytest.raises(errors.DataError) as info:
        predict(make_tiny_model(), x)
    check_error(info.value, errors.DataError, "1 image", "infinite", "index 1")


@pytest.mark.slow
def test_16_bit_and_preprocessed_pixels(capsys):
    x, y = make_data(n=12)
    wide = (x * 257).astype("uint16")
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (wide, y), callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "[0, 255]", "uint16", "255 / 65535")
    with pytest.raises(errors.DataError, match="uint16"):
        tltf.load_data((wide, y), image_size=16)
    scaled = x / 127.5 - 1
    tltf.load_data((scaled, y), image_size=16)
    assert "[-1, 1]" in capsys.readouterr().out
    tltf.fine_tune(
        make_tiny_model(), (scaled, y), head_epochs=1, fine_tune_epochs=0, verbose=0
    )
    out = capsys.readouterr().out
    assert out.count("tltf: note: train images are in [-1, 1]") == 1
    assert "(x + 1) * 127.5" in out


@pytest.mark.parametrize(
    "weights, words",
    [
        ({5: 2.0}, ["class 5", "3 classes"]),
        ({0: -1.0, 1: 1.0}, [">= 0", "-1.0"]),
        ({"cat": 1.0}, ["class indices", "'cat'"]),
    ],
)
def test_class_weights_for_missing_classes_or_negative(weights, words):
    x, y = make_data(n=12)
    error = _fine_tune_error(
        errors.ConfigError, make_tiny_model(), (x, y), class_weight=weights, verbose=0
    )
    check_error(error, errors.ConfigError, "class_weight", *words)


def test_fractional_labels_say_whole_numbers():
    x, y = make_data(n=12)
    y = y.astype("float32")
    y[4] = 0.5
    error = _fine_tune_error(
        errors.DataError, make_tiny_model(), (x, y), callbacks=[_NoTraining()]
    )
    check_error(error, errors.DataError, "whole numbers", "0.5", "index 4")


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (no pixel data): what the scan reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.mark.slow
def test_images_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, monkeypatch):
    _folder(tmp_path)
    (tmp_path / "b" / "huge.png").write_bytes(_png_header(16000, 16000))
    bundle = tltf.load_data(str(tmp_path), image_size=(16, 16))
    assert [os.path.basename(f) for f in bundle.skipped] == ["huge.png"]
    with pytest.raises(errors.DataError) as info:
        tltf.load_data(str(tmp_path), image_size=(16, 16), strict=True)
    check_error(
        info.value,
        errors.DataError,
        "huge.png",
        "16000x16000",
        "256,000,000 pixels",
        "MAX_IMAGE_PIXELS=89,478,485",
    )
    # Real files: a JPEG's size comes from its header too.
    jpeg = tf.io.encode_jpeg(tf.zeros((20, 20, 3), tf.uint8))
    tf.io.write_file(str(tmp_path / "a" / "big.jpg"), jpeg)
    monkeypatch.setattr(tltf_data, "MAX_IMAGE_PIXELS", 16 * 16)
    bundle = tltf.load_data(str(tmp_path), image_size=(16, 16))
    assert sorted(os.path.basename(f) for f in bundle.skipped) == [
        "big.jpg",
        "huge.png",
    ]
    assert bundle.num_train == 6
    monkeypatch.setattr(tltf_data, "MAX_IMAGE_PIXELS", None)
    assert tltf.load_data(str(tmp_path), image_size=(16, 16)).num_train == 7
