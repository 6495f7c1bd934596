"""Tests for the Keras 3 port of RegNet (tltf.bases.regnet)."""

import inspect

import keras
import numpy as np
import pytest

from tltf.bases import regnet

SIZE = 32  # the minimum input size; keeps the tests fast
SMALL = ["RegNetX002", "RegNetY002"]


def _images(seed=0, n=2):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(n, SIZE, SIZE, 3)).astype("float32")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _build(ctor_name, **kwargs):
    kwargs.setdefault("include_top", False)
    return regnet.CONSTRUCTORS[ctor_name](
        weights=None, input_shape=(SIZE, SIZE, 3), **kwargs
    )


@pytest.fixture(scope="module", params=SMALL)
def built(request):
    """(constructor name, headless 32x32 model), built once per module."""
    return request.param, _build(request.param)


def test_constructors_table():
    assert len(regnet.CONSTRUCTORS) == 24
    for key in regnet.MODEL_CONFIGS:
        ctor = regnet.CONSTRUCTORS["RegNet" + key.upper()]
        assert ctor is getattr(regnet, "RegNet" + key.upper())
        params = inspect.signature(ctor).parameters
        assert params["model_name"].default == "regnet" + key
        assert params["weights"].default == "imagenet"
        assert params["classifier_activation"].default == "softmax"
        assert list(params) == [
            "model_name",
            "include_top",
            "include_preprocessing",
            "weights",
            "input_tensor",
            "input_shape",
            "pooling",
            "classes",
            "classifier_activation",
            "name",
        ]
    assert set(regnet.WEIGHTS_HASHES) == set(regnet.MODEL_CONFIGS)


def test_preprocess_input_is_identity():
    x = _images()
    assert regnet.preprocess_input(x) is x


def test_build_shapes_and_names(built):
    ctor_name, model = built
    prefix = ctor_name.lower()
    width = regnet.MODEL_CONFIGS[prefix[-4:]]["widths"][-1]
    assert model.name == prefix
    assert model.output_shape == (None, 1, 1, width)
    assert _predict(model, _images()).shape == (2, 1, 1, width)

    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert all(n.startswith(prefix + "_") for n in names), names
    assert names[1] == prefix + "_prestem_rescaling"
    assert isinstance(model.layers[1], keras.layers.Rescaling)
    block = "YBlock" if "Y" in ctor_name else "XBlock"
    assert f"{prefix}_Stage_0_{block}_0_conv_3x3" in names
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


@pytest.mark.slow
@pytest.mark.parametrize("ctor_name", SMALL)
def test_top_and_pooling(ctor_name):
    prefix = ctor_name.lower()
    model = _build(ctor_name, include_top=True, classes=5)
    assert model.output_shape == (None, 5)
    assert model.layers[-1].name == prefix + "head_dense"
    assert model.layers[-2].name == prefix + "_head_gap"
    np.testing.assert_allclose(_predict(model, _images()).sum(axis=-1), 1.0, rtol=1e-5)
    for pooling in ("avg", "max"):
        model = _build(ctor_name, pooling=pooling)
        assert model.layers[-1].name == f"{prefix}_{pooling}_pool"
        assert len(model.output_shape) == 2


def test_input_validation():
    with pytest.raises(ValueError, match="at least 32x32"):
        regnet.RegNetX002(weights=None, include_top=False, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="classes"):
        regnet.RegNetX002(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="weights"):
        regnet.RegNetX002(weights="/nonexistent/file.h5")


@pytest.mark.slow
def test_keras_save_load_safe_mode(built, tmp_path):
    _, model = built
    x = _images()
    expected = _predict(model, x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [x.name for x in loaded.layers] == [x.name for x in model.layers]
    np.testing.assert_allclose(_predict(loaded, x), expected, atol=1e-6)


@pytest.mark.slow
def test_weights_round_trip(built, tmp_path):
    ctor_name, model = built
    x = _images()
    expected = _predict(model, x)
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)

    fresh = _build(ctor_name)
    # A global seed may make `fresh` start equal to `model`: scramble it.
    rng = np.random.default_rng(1)
    fresh.set_weights(
        [w + rng.normal(0.5, 0.1, w.shape).astype(w.dtype) for w in fresh.get_weights()]
    )
    assert not np.allclose(_predict(fresh, x), expected)
    fresh.load_weights(path)
    np.testing.assert_allclose(_predict(fresh, x), expected, atol=1e-6)
