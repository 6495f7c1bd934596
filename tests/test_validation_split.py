"""Keras's `validation_split=` in `fine_tune`, `tuner.search` and `tltf.tune`.

Training arrays are split as `load_data(..., validation_split=)` splits them:
seeded and stratified by class, not Keras's last rows.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import check_error, make_data, make_tiny_model, raises
from tltf.data.inputs import split_validation
from tltf.errors import ConfigError, DataError


def _sorted_by_class(n=30, classes=3):
    """Images whose rows are sorted by class: Keras's last rows would all be of
    the last class. Each image's weight is its row number."""
    x, y = make_data(n, classes=classes)
    order = np.argsort(y, kind="stable")
    return x[order], y[order], np.arange(n, dtype="float32")


def test_the_split_is_seeded_stratified_and_keeps_each_images_weight():
    x, y, w = _sorted_by_class()
    (xt, yt, wt), (xv, yv, wv) = split_validation(
        (x, y, w), 0.2, task="multiclass", seed=0, caller="fine_tune"
    )
    # Two of each class's ten, not the last six rows (all of class 2).
    assert np.bincount(yv, minlength=3).tolist() == [2, 2, 2]
    rows_t, rows_v = wt.astype(int), wv.astype(int)
    assert sorted([*rows_t, *rows_v]) == list(range(30))  # disjoint, complete
    # Images, labels and weights stay together.
    np.testing.assert_array_equal(xv, x[rows_v])
    np.testing.assert_array_equal(yt, y[rows_t])
    # Seeded: the same split again, seed None as seed 0, another seed another.
    again = split_validation((x, y, w), 0.2, task="multiclass", seed=None, caller="x")
    np.testing.assert_array_equal(again[1][2], wv)
    other = split_validation((x, y, w), 0.2, task="multiclass", seed=1, caller="x")
    assert not np.array_equal(other[1][2], wv)
    # One-hot rows split by their class, as the indices do.
    hot = split_validation(
        (x, np.eye(3)[y], w), 0.2, task="multiclass", seed=0, caller="x"
    )
    np.testing.assert_array_equal(hot[1][2], wv)


def test_bad_splits_name_the_problem_and_the_fix():
    x, y = make_data(12)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    bundle = tltf.load_data((x, y), image_size=16)
    for data, fraction, error_type, words in [
        ((x, y), 1.0, ConfigError, ["validation_split", "between 0 and 1"]),
        (
            dataset,
            0.2,
            ConfigError,
            [
                "with a tf.data.Dataset as training",
                "load_data(dataset, validation_split",
            ],
        ),
        (
            bundle,
            0.2,
            ConfigError,
            ["DataBundle", "load_data(source, validation_split"],
        ),
        ((x, y[:5]), 0.2, DataError, ["12 images but 5 labels"]),
        ((x[:2], y[:2]), 0.2, DataError, ["empty validation set"]),
    ]:
        error = raises(
            error_type,
            split_validation,
            data,
            fraction,
            task="multiclass",
            seed=0,
            caller="fine_tune",
        )
        check_error(error, error_type, *words)
    error = raises(
        ConfigError,
        tltf.fine_tune,
        make_tiny_model(),
        (x, y),
        (x, y),
        validation_split=0.2,
        verbose=0,
    )
    check_error(error, ConfigError, "both validation_data and validation_split")


@pytest.mark.slow
def test_fine_tune_validates_on_the_split_and_trains_on_the_rest(capsys):
    """`fine_tune(model, (x, y), validation_split=0.25)` trains exactly as the
    same call on the training side with the validation side passed: the
    held-out images never train, and stage 2 is judged on them."""
    x, y, _ = _sorted_by_class(40)
    train, val = split_validation(
        (x, y), 0.25, task="multiclass", seed=0, caller="test"
    )
    options = dict(head_epochs=2, fine_tune_epochs=2, unfreeze=1, seed=0)
    keras.utils.set_random_seed(0)  # each model, its dropout's seeds included
    split = make_tiny_model()
    history = tltf.fine_tune(split, (x, y), validation_split=0.25, verbose=1, **options)
    out = capsys.readouterr().out.splitlines()
    line = next(s for s in out if "validation_split" in s)
    assert "10 of 40 training images (a stratified slice, seed 0)" in line
    assert not any("held out of both stages" in s for s in out)  # no guard slice
    keras.utils.set_random_seed(0)
    given = make_tiny_model()
    expected = tltf.fine_tune(given, train, val, verbose=0, **options)
    assert history.history == expected.history
    assert "val_loss" in history.history
    for a, b in zip(split.get_weights(), given.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
