"""Weight interpolation (WiSE-FT) and BatchNorm recalibration (tltf.averaging)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import (
    check_error,
    make_data,
    make_lambda_model,
    make_tiny_base,
    make_tiny_model,
    raises,
    weights_snapshot,
)
from tltf.averaging import batchnorm_layers
from tltf.errors import ConfigError, DataError, ModelError


def _two_models(num_classes=(3, 3)):
    """Two tltf models of one architecture (unless num_classes differ), other weights."""
    keras.utils.set_random_seed(1)
    a = make_tiny_model(num_classes[0])
    keras.utils.set_random_seed(2)
    b = make_tiny_model(num_classes[1])
    # Different BatchNorm statistics too (fresh models all have 0 and 1).
    for model, shift in ((a, 0.5), (b, -1.0)):
        for bn in batchnorm_layers(model):
            bn.moving_mean.assign(bn.moving_mean + shift)
            bn.moving_variance.assign(bn.moving_variance * (2.0 + shift))
    return a, b


def _is_bn_statistic(path: str) -> bool:
    return path.endswith(("/moving_mean", "/moving_variance"))


# -- interpolate ----------------------------------------------------------------------
def test_interpolate_reproduces_both_ends_bitwise():
    a, b = _two_models()
    x, _ = make_data(16)
    before_a, before_b = weights_snapshot(a), weights_snapshot(b)
    for alpha, end in ((0, a), (0.0, a), (1, b), (1.0, b)):
        mixed = tltf.interpolate(a, b, alpha)
        assert mixed is not a and mixed is not b
        got, want = weights_snapshot(mixed), weights_snapshot(end)
        assert got.keys() == want.keys()
        for path in want:
            assert got[path].tobytes() == want[path].tobytes(), (alpha, path)
        np.testing.assert_array_equal(
            mixed.predict(x, verbose=0), end.predict(x, verbose=0)
        )
    # The two models are not changed.
    for model, before in ((a, before_a), (b, before_b)):
        after = weights_snapshot(model)
        assert all(np.array_equal(after[p], before[p]) for p in before)


def test_interpolate_mixes_every_weight_bn_statistics_included():
    a, b = _two_models()
    mixed = tltf.interpolate(a, b, 0.3)
    wa, wb, got = weights_snapshot(a), weights_snapshot(b), weights_snapshot(mixed)
    assert any(_is_bn_statistic(p) for p in got)
    for path, value in got.items():
        want = 0.7 * wa[path].astype(np.float64) + 0.3 * wb[path].astype(np.float64)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=path)
        if not np.array_equal(wa[path], wb[path]):
            assert not np.array_equal(value, wa[path]), path
    # The result is a tltf model (metadata, block map) with model_a's trainability.
    info = tltf.model_info(mixed)
    assert info.block_map.names == tltf.model_info(a).block_map.names
    assert [w.path for w in mixed.trainable_weights] == [
        w.path for w in a.trainable_weights
    ]


def test_interpolate_into_writes_an_existing_model():
    a, b = _two_models()
    target = tltf.interpolate(a, b, 0.0)
    assert tltf.interpolate(a, b, 0.5, into=target) is target
    fresh = tltf.interpolate(a, b, 0.5)
    for p, q in zip(target.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_interpolated_model_saves_and_loads_in_safe_mode(tmp_path):
    a, b = _two_models()
    x, y = make_data(16)
    a.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    mixed = tltf.interpolate(a, b, 0.5)
    assert mixed.compiled  # compiled like model_a: evaluate works at once
    mixed.evaluate(x, y, verbose=0)
    path = tmp_path / "wise.keras"
    mixed.save(path)
    loaded = tltf.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), mixed.predict(x, verbose=0), atol=1e-6
    )
    # Paths of .keras files work as the ends too.
    b.save(tmp_path / "b.keras")
    from_file = tltf.interpolate(a, tmp_path / "b.keras", 1.0)
    np.testing.assert_array_equal(
        from_file.predict(x, verbose=0), b.predict(x, verbose=0)
    )


def test_interpolate_names_the_first_weight_that_differs():
    a, b = _two_models(num_classes=(3, 5))
    error = raises(ModelError, tltf.interpolate, a, b, 0.5)
    check_error(error, ModelError, "head_output/kernel", "(240, 3)", "(240, 5)")
    # A base with other widths: the first conv differs.
    keras.utils.set_random_seed(0)
    c = make_tiny_model(base=make_tiny_base(widths=(4, 8, 16, 16)))
    error = raises(ModelError, tltf.interpolate, a, c, 0.5)
    check_error(error, ModelError, "block1_conv/kernel", "(3, 3, 3, 8)", "(3, 3, 3, 4)")
    # into= is checked too.
    error = raises(ModelError, tltf.interpolate, a, a, 0.5, into=c)
    check_error(error, ModelError, "into", "block1_conv/kernel")


def test_interpolate_matches_models_named_apart_by_keras_suffixes():
    def plain():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(inputs)))

    a, b = plain(), plain()
    assert a.weights[0].path != b.weights[0].path  # dense_N/kernel: other N
    mixed = tltf.interpolate(a, b, 0.5)
    np.testing.assert_allclose(
        mixed.weights[0].numpy(), (a.weights[0].numpy() + b.weights[0].numpy()) / 2
    )


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, "0.5", True, None])
def test_interpolate_rejects_alpha_outside_0_1(alpha):
    a, b = _two_models()
    error = raises(ConfigError, tltf.interpolate, a, b, alpha)
    check_error(error, ConfigError, "alpha", "[0, 1]", repr(alpha))


def test_interpolate_refuses_a_model_that_would_not_load_safely():
    model = make_lambda_model()
    error = raises(ModelError, tltf.interpolate, model, model, 0.5)
    check_error(error, ModelError, "safe mode", "Lambda")


# -- recalibrate_bn -------------------------------------------------------------------
def test_recalibrate_bn_sets_the_exact_statistics_of_the_layer_inputs():
    """Pooled over unequal batches (32, 32, 6): the numpy mean and variance of
    everything the BN layer received, not an average of per-batch statistics."""
    inputs = keras.Input((5,))
    dense = keras.layers.Dense(4, name="dense_in")
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.9)
    model = keras.Model(inputs, keras.layers.Dense(2)(bn(dense(inputs))))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(70, 5)) * 3 + np.arange(70)[:, None] / 10).astype("float32")
    feeds = keras.Model(inputs, dense.output).predict(x, verbose=0).astype(np.float64)

    tltf.recalibrate_bn(model, x, batch_size=32)
    np.testing.assert_allclose(bn.moving_mean.numpy(), feeds.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), feeds.var(0), rtol=1e-5)
    # (An equal-weight average of the batch statistics would be measurably off.)
    batches = [feeds[i : i + 32] for i in range(0, 70, 32)]
    naive = np.mean([b.var(0) for b in batches], axis=0)
    assert not np.allclose(naive, feeds.var(0), rtol=1e-3)
    assert bn.momentum == 0.9  # untouched


def test_recalibrate_bn_on_conv_features_of_a_plain_base():
    base = make_tiny_base()  # any keras.Model: conv, BN, relu blocks
    x, _ = make_data(40)
    conv = keras.Model(base.input, base.get_layer("block1_conv").output)
    feeds = conv.predict(x, verbose=0).astype(np.float64).reshape(-1, 8)
    tltf.recalibrate_bn(base, x, batch_size=16)
    bn = base.get_layer("block1_bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), feeds.mean(0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), feeds.var(0), rtol=1e-4)
    # A deeper BN layer got statistics too (inputs from batch-normalised blocks).
    deep = base.get_layer("block4_bn")
    assert not np.allclose(deep.moving_mean.numpy(), 0.0)


def test_recalibrate_bn_changes_only_bn_statistics_and_restores_layer_state(capsys):
    model = make_tiny_model()
    tltf.unfreeze(model, 2, bn="affine")  # BN in blocks 3-4: pinned to inference
    layers = batchnorm_layers(model)
    pinned = {bn.name: bn.__dict__.get("call") for bn in layers}
    assert sum(call is not None for call in pinned.values()) == 2
    flags = {bn.name: (bn.trainable, bn.momentum) for bn in layers}
    trainable = [w.path for w in model.trainable_weights]
    before = weights_snapshot(model)
    x, y = make_data(48)
    capsys.readouterr()

    assert tltf.recalibrate_bn(model, (x, y)) is model
    after = weights_snapshot(model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {p for p in before if _is_bn_statistic(p)}
    assert len(changed) == 8  # 4 BN layers x (mean, variance)
    assert {bn.name: bn.__dict__.get("call") for bn in layers} == pinned
    assert {bn.name: (bn.trainable, bn.momentum) for bn in layers} == flags
    assert [w.path for w in model.trainable_weights] == trainable
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    # The pinned layers still normalise with their (new) moving statistics.
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.evaluate(x, y, verbose=0))


def test_recalibrate_bn_reads_arrays_datasets_and_bundles_alike():
    x, y = make_data(40)

    def stats(data, **kwargs):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        tltf.recalibrate_bn(model, data, **kwargs)
        return [bn.moving_variance.numpy() for bn in batchnorm_layers(model)]

    want = stats(x, batch_size=8)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    for data in (
        (x, y),
        unbatched,
        unbatched.batch(8),
        tf.data.Dataset.from_tensor_slices(x).batch(8),
        tltf.load_data((x, y), image_size=16, batch_size=8, shuffle=False),
    ):
        for got, w in zip(stats(data, batch_size=8), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-4)
    # steps= reads only the first batches: the first 8 images here.
    for got, w in zip(
        stats(x, steps=1, batch_size=8), stats(x[:8], batch_size=8), strict=True
    ):
        np.testing.assert_allclose(got, w, rtol=1e-5)


def test_recalibrate_bn_rejects_bad_data_with_the_fix():
    model = make_tiny_model()
    x, _ = make_data(8)
    error = raises(DataError, tltf.recalibrate_bn, model, x[:, :8, :8])
    check_error(error, DataError, "(16, 16, 3)", "(8, 8, 8, 3)", "resize")
    error = raises(DataError, tltf.recalibrate_bn, model, x[:0])
    check_error(error, DataError, "no images")
    error = raises(DataError, tltf.recalibrate_bn, model, "not images")
    check_error(error, DataError, "Expected images")
    forever = tf.data.Dataset.from_tensor_slices(x).batch(4).repeat()
    error = raises(ConfigError, tltf.recalibrate_bn, model, forever)
    check_error(error, ConfigError, "steps")
    tltf.recalibrate_bn(model, forever, steps=2)  # fine with steps
    error = raises(ConfigError, tltf.recalibrate_bn, model, x, batch_size=0)
    check_error(error, ConfigError, "batch_size")
    # After a failure the layers are back to their own call.
    assert all("call" not in bn.__dict__ for bn in batchnorm_layers(model))


def test_recalibrate_bn_leaves_a_model_without_batchnorm_alone():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    before = weights_snapshot(model)
    assert tltf.recalibrate_bn(model, "never read") is model
    assert all(np.array_equal(v, weights_snapshot(model)[p]) for p, v in before.items())
