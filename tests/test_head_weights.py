"""The ridge start weighs the head's blocks by their own leave-one-out accuracy."""

from __future__ import annotations

import keras
import numpy as np

import tltf
from tests.helpers import make_tiny_base
from tltf.heads import HeadConfig, pixel_columns
from tltf.probe import group_weights, ridge_fit
from tltf.schedule import prepare_head


def _features(n=60, classes=3, informative=8, noise=48, seed=0, shift=1.5):
    """Columns [informative | noise]: the first group carries the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    signal = rng.normal(size=(n, informative))
    signal[np.arange(n), y] += shift
    return np.hstack([signal, rng.normal(size=(n, noise))]), y


def test_group_weights_keep_the_informative_group_and_shrink_noise():
    z, y = _features()
    chosen = group_weights(z, y, 3, [8, 48])
    assert chosen.weights[0] == 1.0 and chosen.accuracy[0] > 0.8
    assert chosen.accuracy[1] < 0.6 and chosen.weights[1] < 0.2
    assert chosen.power >= 2
    # The ridge fit it returns is the one on the weighted features, and it beats
    # equal weights by leave-one-out.
    equal = ridge_fit(z, y, 3)
    loo = np.mean(chosen.fit.loo.argmax(axis=1) == y)
    assert loo > np.mean(equal.loo.argmax(axis=1) == y) + 0.1


def test_group_weights_are_equal_for_equally_good_groups():
    z, y = _features(noise=0, shift=3.0)
    doubled = np.hstack([z, z[:, ::-1]])  # the same information twice
    chosen = group_weights(doubled, y, 3, [8, 8])
    assert np.allclose(chosen.weights, 1.0)


def test_group_weights_balance_the_widths():
    # Two equally good groups, 8 and 32 columns wide: each is scaled by one over
    # the square root of its width, so both bring the same total variance.
    z, y = _features(noise=0, shift=3.0)
    wide = np.hstack([z, z[:, ::-1], z, z[:, ::-1]])
    chosen = group_weights(np.hstack([z, wide]), y, 3, [8, 32])
    assert chosen.power == 0
    np.testing.assert_allclose(chosen.weights, [1.0, 0.5])
    balanced = np.hstack([z, wide]) * np.repeat(chosen.weights, [8, 32])
    variance = [balanced[:, :8].var(axis=0).sum(), balanced[:, 8:].var(axis=0).sum()]
    np.testing.assert_allclose(variance[0], variance[1], rtol=1e-6)


def test_prepare_head_scales_each_block_by_its_weight():
    model = tltf.build_model(
        make_tiny_base(),
        3,
        weights=None,
        head=HeadConfig(pool_from=("block2", "block4"), pixels=0),
    )
    widths = [int(t.shape[-1]) for t in model.get_layer("head_pool").input]
    assert widths == [8, 16]
    z, y = _features(informative=8, noise=16)
    features = 5.0 + 2.0 * z  # not standardised yet: the layer does that
    note = prepare_head(model, features, y)
    assert "its 2 blocks weighted by their own leave-one-out accuracy" in note
    assert "best block2" in note
    layer = model.get_layer("head_standardize")
    scale = layer.scale.numpy()
    unweighted = 1.0 / (features.std(axis=0) + layer.epsilon)
    np.testing.assert_allclose(scale[:8], unweighted[:8], rtol=1e-4)
    assert np.all(scale[8:] < 0.2 * unweighted[8:])


def test_a_head_on_one_block_is_not_weighted():
    model = tltf.build_model(
        make_tiny_base(), 3, weights=None, head=HeadConfig(pool_from="top", pixels=0)
    )
    z, y = _features(informative=16, noise=0, shift=3.0)
    note = prepare_head(model, z, y)
    assert "weighted" not in note
    layer = model.get_layer("head_standardize")
    np.testing.assert_allclose(
        layer.scale.numpy(), 1.0 / (z.std(axis=0) + layer.epsilon), rtol=1e-4
    )


def test_blocks_that_help_alike_keep_equal_weights():
    model = tltf.build_model(
        make_tiny_base(),
        3,
        weights=None,
        head=HeadConfig(pool_from=("block2", "block4"), pixels=0),
    )
    z, y = _features(informative=8, noise=0, shift=3.0)
    features = np.hstack([z, z, z[:, ::-1]])  # 8 + 16 columns, the same signal
    note = prepare_head(model, features, y)
    assert (
        "its 2 blocks at equal weight, each scaled to the same total variance" in note
    )
    layer = model.get_layer("head_standardize")
    # Equal weight per block: the 16-column block's columns at 1 / sqrt(2) of
    # the 8-column block's, so both bring the same variance.
    balance = np.repeat([1.0, np.sqrt(0.5)], [8, 16])
    np.testing.assert_allclose(
        layer.scale.numpy(),
        balance / (features.std(axis=0) + layer.epsilon),
        rtol=1e-4,
    )


def _pixel_model(pool_from=("block2", "block4")):
    model = tltf.build_model(
        make_tiny_base(), 3, weights=None, head=HeadConfig(pool_from=pool_from)
    )
    assert pixel_columns(model) == slice(24, 24 + 192)
    return model


def test_the_raw_pixels_start_muted():
    # A model fit directly (no fine_tune) never reads the raw-pixel group.
    layer = _pixel_model().get_layer("head_standardize")
    np.testing.assert_array_equal(layer.scale.numpy()[24:], 0.0)
    np.testing.assert_array_equal(layer.scale.numpy()[:24], 1.0)


def test_pixels_that_score_like_the_blocks_are_read_and_weighed():
    model = _pixel_model()
    z, y = _features(informative=8, noise=16, shift=2.0)
    noise = np.random.default_rng(1).normal(size=(len(y), 192))
    pixels = np.tile(z[:, :8], 24) + 0.5 * noise  # block2's signal, less clean
    features = np.hstack([z, 100.0 + 50.0 * pixels])
    note = prepare_head(model, features, y)
    assert "the raw pixels read too" in note
    layer = model.get_layer("head_standardize")
    scale = layer.scale.numpy()
    # Weighed like a block: its 192 columns balanced against block2's 8 (one
    # over the square root of the widths), and at least half of that kept.
    balance = np.sqrt(8 / 192)
    unweighted = 1.0 / (features[:, 24:].std(axis=0) + layer.epsilon)
    assert np.all(scale[24:] > 0.5 * balance * unweighted)
    assert np.any(model.get_layer("head_output").kernel.numpy()[24:] != 0)


def test_pixels_that_do_not_help_stay_muted():
    # The pixel group scores at chance: its columns stay scaled by 0 and the
    # head's kernel rows for them start at 0, so no gradient ever moves them.
    model = _pixel_model()
    z, y = _features(informative=8, noise=16, shift=2.0)
    noise = np.random.default_rng(2).normal(size=(len(y), 192))
    note = prepare_head(model, np.hstack([z, noise]), y)
    assert "raw pixels" not in note
    np.testing.assert_array_equal(
        model.get_layer("head_standardize").scale.numpy()[24:], 0.0
    )
    np.testing.assert_array_equal(model.get_layer("head_output").kernel.numpy()[24:], 0)


def _colour_images(n, seed):
    """16-px images whose class (0..2) is the one bright colour channel."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 120, size=(n, 16, 16, 3)).astype("float32")
    x[np.arange(n), :, :, y] += 120.0
    return x, y


def _blind_base():
    """The tiny base with every kernel at zero: its blocks see nothing."""
    base = make_tiny_base()
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    return base


def test_fine_tune_reads_the_pixels_where_the_base_is_blind(tmp_path):
    # The logistic-regression-on-pixels baseline: a base that adds nothing must
    # not leave the model below it. Without the pixel group (pixels=0) the same
    # run is at chance.
    train, (x_test, y_test) = _colour_images(30, 0), _colour_images(60, 1)
    accuracy = {}
    for side in (8, 0):
        keras.utils.set_random_seed(0)
        model = tltf.build_model(_blind_base(), 3, head={"pixels": side})
        tltf.fine_tune(model, train, fine_tune_epochs=0, verbose=0)
        predicted = model.predict(x_test, verbose=0).argmax(axis=1)
        accuracy[side] = float(np.mean(predicted == y_test))
        if side:  # the group's scale is a weight: a saved model reads it too
            model.save(tmp_path / "pixels.keras")
            loaded = keras.models.load_model(tmp_path / "pixels.keras", safe_mode=True)
            np.testing.assert_allclose(
                loaded.predict(x_test, verbose=0),
                model.predict(x_test, verbose=0),
                rtol=1e-5,
                atol=1e-6,
            )
    assert accuracy[8] >= 0.95
    assert accuracy[0] <= 0.5


def test_pixels_beside_blocks_that_score_zero_are_reported_plainly():
    # Constant block features on balanced classes score 0 by leave-one-out
    # (leaving an image out makes its class the minority); the stage-1 line
    # then says so, not a ratio to 0.
    model = _pixel_model()
    _, y = _features(informative=8, noise=16, shift=2.0)
    signal = np.eye(3)[y].repeat(64, axis=1)  # 192 columns that name the class
    noise = np.random.default_rng(3).normal(size=signal.shape)
    features = np.hstack([np.zeros((len(y), 24)), 100.0 + 50.0 * (signal + noise)])
    note = prepare_head(model, features, y)
    assert "the raw pixels read too" in note and "the blocks score 0" in note
    assert "of the best block's" not in note
