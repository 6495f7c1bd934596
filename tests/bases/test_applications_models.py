"""A keras.Model passed as a base: Keras Applications models and classifier tops.

A Keras Applications model object gets the registry's block map and its family's
preprocessing (a registry name gets them already); a model that ends in a
classifier (`include_top=True`, or any trained classifier) loses that top, and
tltf's head replaces it.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tltf
from tltf.bases.base import _classifier_top


def _mobilenet_v2(**kwargs):
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, **kwargs
    )


def test_an_applications_model_gets_its_registry_block_map_and_preprocessing(capsys):
    registry = tltf.load_base(
        "mobilenet_v2", weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    given = tltf.load_base(_mobilenet_v2(include_top=False))
    out = capsys.readouterr().out
    assert given.preprocessing == registry.preprocessing == "tf"
    assert given.block_map.names == registry.block_map.names
    assert "is keras.applications.MobileNetV2" in out and "'tf'" in out
    # The model built on it preprocesses as the registry's does: the same
    # weights give the same predictions on raw pixels.
    a = tltf.build_model(registry, 3)
    b = tltf.build_model(given, 3)
    b.set_weights(a.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(b.predict(x, verbose=0), a.predict(x, verbose=0))
    # An explicit preprocessing is kept, and the note says whose it is.
    mine = tltf.load_base(_mobilenet_v2(include_top=False), preprocessing="none")
    assert mine.preprocessing == "none"
    assert mine.block_map.names == registry.block_map.names
    assert "preprocessing='none' as passed (its family's is 'tf')" in (
        capsys.readouterr().out
    )


def test_a_model_named_like_an_application_but_built_otherwise_is_not_one(capsys):
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    base = tltf.load_base(keras.Model(inputs, outputs, name="vgg16"))
    assert base.preprocessing == "none"
    assert base.block_map.names == ["conv1"]
    assert "keras.applications" not in capsys.readouterr().out


def _classifier(last, dropout=True, name="classifier"):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(0.2, name="drop")(x)
    return keras.Model(inputs, last(x), name=name)


@pytest.mark.parametrize(
    "top",
    [
        {"units": 5, "activation": "softmax", "name": "scores"},
        {"units": 1, "activation": "sigmoid", "name": "scores"},
        {"units": 5, "name": "predictions"},  # classifier_activation=None
    ],
    ids=["softmax", "sigmoid", "predictions"],
)
def test_a_classifier_top_is_replaced_by_tltfs_head(top, tmp_path, capsys):
    last = keras.layers.Dense(**top)  # a new layer for every run of the test
    model = tltf.build_model(_classifier(last), 3)
    out = capsys.readouterr().out
    assert "ends in a classifier" in out and f"{last.name!r}" in out
    # The Dropout and the pooling before the classifier go too: the base ends
    # at the feature map, where include_top=False would end it.
    assert "at 'conv1' (14, 14, 8)" in out
    base = tltf.load_base(model)
    assert base.model.output.shape == (None, 14, 14, 8)
    assert {"scores", "predictions", "drop", "pool"}.isdisjoint(
        layer.name for layer in base.model.layers
    )
    assert model.output.shape == (None, 3)
    model.save(tmp_path / "model.keras")
    keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)


def test_what_is_not_a_classifier_top_stays(capsys):
    embedding = _classifier(keras.layers.Dense(16, name="embedding"), dropout=False)
    assert _classifier_top(embedding) is None
    assert tltf.load_base(embedding).model.output.shape == (None, 16)
    # Weighted layers before a classifier stay: VGG's fully connected ones.
    vgg = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=5)
    assert _classifier_top(vgg)[1] is vgg.get_layer("fc2").output
    # An explicit block map keeps the model whole, top included.
    scores = _classifier(keras.layers.Dense(5, activation="softmax", name="scores"))
    blocks = {"conv": ["conv1"], "top": ["scores"]}
    kept = tltf.load_base(scores, block_map=blocks)
    assert kept.model.output.shape == (None, 5)
    assert "ends in a classifier" not in capsys.readouterr().out


def test_a_mobilenet_v3_top_is_cut_before_its_pointwise_classifier(capsys):
    """MobileNetV3's top is a 1x1 Conv2D classifier, a Flatten and a softmax
    Activation; the base ends at the features before its Dropout."""
    full = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=7
    )
    classifier, features = _classifier_top(full)
    assert isinstance(classifier, keras.layers.Conv2D) and classifier.filters == 7
    base = tltf.load_base(full)
    assert base.model.output.shape == tuple(features.shape) == (None, 1, 1, 1024)
    registry = tltf.load_base(
        "mobilenet_v3_small", weights=None, input_shape=(32, 32, 3)
    )
    assert base.block_map.names == registry.block_map.names
    out = capsys.readouterr().out
    assert "ends in a classifier ('logits'" in out
    assert "is keras.applications.MobileNetV3Small" in out
