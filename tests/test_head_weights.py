"""The ridge start weighs the head's blocks by their own leave-one-out accuracy."""

from __future__ import annotations

import numpy as np

import tltf
from tests.helpers import make_tiny_base
from tltf.heads import HeadConfig
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


def test_prepare_head_scales_each_block_by_its_weight():
    model = tltf.build_model(
        make_tiny_base(),
        3,
        weights=None,
        head=HeadConfig(pool_from=("block2", "block4")),
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
        make_tiny_base(), 3, weights=None, head=HeadConfig(pool_from="top")
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
        head=HeadConfig(pool_from=("block2", "block4")),
    )
    z, y = _features(informative=8, noise=0, shift=3.0)
    features = np.hstack([z, z, z[:, ::-1]])  # 8 + 16 columns, the same signal
    note = prepare_head(model, features, y)
    assert "its 2 blocks at equal weight" in note
    layer = model.get_layer("head_standardize")
    np.testing.assert_allclose(
        layer.scale.numpy(), 1.0 / (features.std(axis=0) + layer.epsilon), rtol=1e-4
    )
