"""A model that tltf built (and fine-tuned) is a base for the next task."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import make_data, make_tiny_base, variable_values
from tltf.errors import ConfigError, ModelError
from tltf.model import model_info


def _assert_same_features(base, model, x):
    """`base` outputs what the top of `model`'s base outputs, on images `x`."""
    pre = model.get_layer("preprocessing")(x)
    outputs = model_info(model).base(pre, training=False)
    expected = outputs[-1] if isinstance(outputs, list) else outputs
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(base.model(pre, training=False)),
        keras.ops.convert_to_numpy(expected),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def fine_tuned():
    x, y = make_data(n=48, classes=3, seed=1)
    model = tltf.build_model(make_tiny_base(), 3, preprocessing="tf")
    tltf.fine_tune(
        model, (x, y), head_epochs=1, fine_tune_epochs=1, unfreeze=2, verbose=0
    )
    return model, x


def test_the_base_of_a_fine_tuned_model_is_a_copy_of_its_weights(fine_tuned):
    model, x = fine_tuned
    base = tltf.load_base(model)
    assert base.name == "tiny" and base.preprocessing == "tf"
    assert base.block_map == model_info(model).block_map
    assert base.info["fine_tuned"] is True and "path" not in base.info
    _assert_same_features(base, model, x[:8])
    # Its own weights: training a model built on it leaves the first one as it was.
    before = variable_values(model.weights)
    second = tltf.build_model(base, 2)
    x2, y2 = make_data(n=32, classes=2, seed=2)
    second_base = model_info(second).base
    built = variable_values(second_base.weights)
    tltf.fine_tune(
        second,
        (x2, y2),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze="all",
        keep_best=False,
        verbose=0,
    )
    trained = variable_values(second_base.weights)
    assert any(not np.array_equal(a, b) for a, b in zip(built, trained, strict=True))
    for old, now in zip(before, variable_values(model.weights), strict=True):
        np.testing.assert_array_equal(old, now)


def test_build_model_takes_a_tltf_model_and_save_base_keeps_it(fine_tuned, tmp_path):
    model, x = fine_tuned
    second = tltf.build_model(model, 5)
    assert model_info(second).metadata["base"] == "tiny"
    path = tltf.save_base(tltf.load_base(model), tmp_path / "tiny-finetuned")
    loaded = tltf.load_base(path)
    _assert_same_features(loaded, model, x[:8])
    with pytest.raises(ConfigError, match="brings its own block map"):
        tltf.load_base(model, preprocessing="caffe")
    with pytest.raises(ModelError, match="No such model file: .*best.keras"):
        tltf.build_model(str(tmp_path / "runs" / "best.keras"), 3)


@pytest.mark.parametrize("head", ["top", "auto"])
def test_the_base_of_a_cut_model_ends_at_the_cut(head):
    model = tltf.build_model(
        make_tiny_base(), 3, cut="block3", head={"pool_from": head}
    )
    base = tltf.load_base(model)
    assert base.block_map.names == ["block1", "block2", "block3"]
    assert base.model.output_shape == (None, 4, 4, 16)


def test_a_model_with_several_outputs_is_refused_with_the_fix():
    model = tltf.build_model(make_tiny_base(), 3)
    inner = model_info(model).base  # one output per block the head reads
    assert len(inner.outputs) > 1
    with pytest.raises(ModelError, match=r"tltf.load_base\(model\)"):
        tltf.build_model(inner, 3)


class _NoConfig(keras.layers.Layer):
    """A layer Keras cannot rebuild: its constructor needs an argument."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def call(self, x):
        return x * self.scale


def test_a_base_that_cannot_be_copied_says_how_to_share_it():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inputs)
    x = _NoConfig(2.0)(x)
    model = tltf.build_model(keras.Model(inputs, x, name="odd"), 3)
    with pytest.raises(ModelError, match="Could not copy the base of model") as info:
        tltf.load_base(model)
    assert "\n" not in str(info.value) and "preprocessing='none'" in str(info.value)
