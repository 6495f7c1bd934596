"""The stage-1 feature cache keeps features and labels together on shuffled data.

A DataBundle's training set (and most users' tf.data pipelines) reshuffles on
every pass; features and labels must come from the same pass.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import make_data, make_tiny_base
from tltf.cache import FeatureCache, feature_model


def test_feature_cache_pairs_features_with_their_labels_on_reshuffled_data():
    x, y = make_data(n=48, classes=3)
    weights = np.linspace(0.5, 2.0, len(y)).astype("float32")
    model = tltf.build_model(make_tiny_base(), 3, weights=None)
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y, weights))
        .shuffle(len(y), seed=1, reshuffle_each_iteration=True)
        .batch(8)
    )
    cache = FeatureCache(model, ds)
    labels, cached_weights = cache.others
    direct = feature_model(model).predict(x, verbose=0)
    # Every cached row is the feature vector of the image whose label and weight
    # it carries.
    for row, label, weight in zip(cache.features, labels, cached_weights, strict=True):
        i = int(np.argmin(np.abs(direct - row).sum(axis=1)))
        np.testing.assert_allclose(direct[i], row, rtol=1e-4, atol=1e-5)
        assert label == y[i]
        assert weight == weights[i]
    assert sorted(labels.tolist()) == sorted(y.tolist())
    assert cache.batch_sizes[0] == 8


@pytest.mark.slow
def test_fine_tune_stage1_learns_from_a_data_bundle_with_the_cache():
    x, y = make_data(n=192, classes=3)
    data = tltf.load_data((x, y), image_size=16, validation_split=0.25, seed=0)
    results = {}
    for cache in (False, True):
        model = tltf.build_model(make_tiny_base(), 3, weights=None)
        history = tltf.fine_tune(
            model,
            data,
            head_epochs=6,
            fine_tune_epochs=0,
            head_lr=3e-2,
            cache_features=cache,
            seed=0,
            verbose=0,
        )
        results[cache] = history.history["val_accuracy"][-1]
    # The classes differ by a channel's brightness: both runs learn them. With
    # misaligned labels, the cached run would stay near chance (1/3).
    assert results[False] > 0.6
    assert results[True] > 0.6


@pytest.mark.slow
def test_callbacks_monitoring_val_accuracy_work_with_the_cache(tmp_path):
    # Keras's mode="auto" looks up the metric's direction in model.metrics; with
    # the cache, the full model never ran a training step in stage 1.
    x, y = make_data(n=64, classes=3)
    epochs = {}
    for cache in (False, True):
        keras.utils.set_random_seed(0)  # the same initial weights for both runs
        model = tltf.build_model(make_tiny_base(), 3, weights=None)
        path = tmp_path / f"best-{cache}.keras"
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1),
            tltf.checkpoint.ModelCheckpoint(
                path, monitor="val_accuracy", save_best_only=True
            ),
        ]
        history = tltf.fine_tune(
            model,
            (x, y),
            (x, y),
            head_epochs=4,
            fine_tune_epochs=2,
            callbacks=callbacks,
            cache_features=cache,
            seed=0,
            verbose=0,
        )
        assert path.is_file()
        epochs[cache] = len(history.history["loss"])
    assert epochs[True] == epochs[False]
