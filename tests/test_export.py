"""Exports: .keras, SavedModel, and TFLite in four flavours match the Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import cli_error, make_data
from tltf.errors import ConfigError, DataError, ModelError
from tltf.export import _calibration_images, export_model, tflite_predict
from tltf.layers import PREPROCESSING_MODES, Preprocessing

SIZE = 24

#: Measured on the fixture model (max |TFLite - Keras| over the sample images,
#: probabilities of 3 classes): float32 ~1e-7, float16 ~4e-5, dynamic ~6e-4,
#: int8 ~5e-3. The tolerances leave headroom for other CPUs and TF versions.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "dynamic": 2e-2, "int8": 0.1}
MIN_TOP1_AGREEMENT = {"float32": 1.0, "float16": 1.0, "dynamic": 0.95, "int8": 0.9}


def _tiny_base():
    """Two conv blocks without a BN that shrinks features: learns in a few epochs."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(
        8, 3, strides=2, padding="same", activation="relu", name="block1_conv"
    )(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="block2_conv")(x)
    x = keras.layers.BatchNormalization(name="block2_bn")(x)
    x = keras.layers.Activation("relu", name="block2_relu")(x)
    return keras.Model(inputs, x, name="tiny")


@pytest.fixture(scope="module")
def trained():
    """A tltf model with "tf" preprocessing, its head trained; sample images.

    Module-scoped: the autouse fixture's `clear_session` after each test does not
    touch a model that already exists.
    """
    keras.utils.set_random_seed(0)
    x, y = make_data(n=96, size=SIZE)
    model = tltf.build_model(
        _tiny_base(), num_classes=3, weights=None, preprocessing="tf"
    )
    model.compile(keras.optimizers.Adam(3e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    x_test, y_test = make_data(n=60, size=SIZE, seed=1)
    noise = np.random.default_rng(2).uniform(0, 255, (20, SIZE, SIZE, 3))
    samples = np.concatenate([x_test, noise.astype("float32")])
    expected = model.predict(samples, verbose=0)
    # Non-trivial predictions: the head learned the classes, not saturated.
    assert (expected[:60].argmax(1) == y_test).mean() >= 0.9
    assert expected.max(axis=1).mean() < 0.95
    return {"model": model, "x": x, "samples": samples, "expected": expected}


@pytest.fixture(scope="module")
def tflite_files(trained, tmp_path_factory):
    """Each flavour converted once, lazily."""
    folder = tmp_path_factory.mktemp("tflite")
    cache = {}

    def get(flavour):
        if flavour not in cache:
            cache[flavour] = export_model(
                trained["model"],
                folder / f"model_{flavour}.tflite",
                quantize=None if flavour == "float32" else flavour,
                representative_data=trained["x"] if flavour == "int8" else None,
            )
        return cache[flavour]

    return get


def _tensor_dtypes(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["float32", "float16", "dynamic", "int8"])
def test_tflite_flavour_matches_keras(flavour, trained, tflite_files):
    path = tflite_files(flavour)
    got = tflite_predict(path, trained["samples"], batch_size=16)
    expected = trained["expected"]
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[flavour], rtol=0)
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    assert agreement >= MIN_TOP1_AGREEMENT[flavour]
    # The flavour is real: its tensors have the quantized types.
    dtypes = _tensor_dtypes(path)
    if flavour == "float32":
        assert not dtypes & {"float16", "int8"}
    elif flavour == "float16":
        assert "float16" in dtypes
    else:
        assert "int8" in dtypes


@pytest.mark.slow
def test_full_int8_keeps_float_input_and_output(tflite_files):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_files("int8")))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    # Internally integer: every conv/FC weight tensor is int8.
    weights = [
        t for t in interpreter.get_tensor_details() if "conv" in t["name"].lower()
    ]
    assert weights and all(
        np.dtype(t["dtype"]).name in ("int8", "int32") for t in weights
    ), [(t["name"], t["dtype"]) for t in weights]


@pytest.mark.slow
def test_tflite_predict_batching_and_bytes(trained, tflite_files):
    path = tflite_files("float32")
    samples = trained["samples"]
    whole = tflite_predict(path.read_bytes(), samples, batch_size=128)
    np.testing.assert_allclose(
        tflite_predict(path, samples, batch_size=7), whole, atol=1e-6
    )
    single = tflite_predict(path, samples[3])  # One (H, W, C) image.
    np.testing.assert_allclose(single, whole[3:4], atol=1e-6)
    with pytest.raises(DataError, match="Expected images of shape"):
        tflite_predict(path, samples[:, :8, :8])
    with pytest.raises(ModelError, match="does not exist"):
        tflite_predict(path.with_name("missing.tflite"), samples)


def test_tflite_predict_fixed_batch_and_uint8_io(tmp_path):
    """A model from elsewhere: fixed batch of 2 (padded), uint8 in and out."""
    inputs = keras.Input((4, 4, 3), batch_size=2, name="image")
    model = keras.Model(inputs, Preprocessing("torch")(inputs))
    images = np.random.default_rng(0).uniform(0, 255, (5, 4, 4, 3)).astype("float32")
    expected = model.predict(images, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([2, 4, 4, 3], tf.float32)])
    def serve(x):
        return model(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i : i + 2]] for i in range(3))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    content = converter.convert()
    got = tflite_predict(content, images)
    assert got.shape == expected.shape and got.dtype == np.float32
    step = (expected.max() - expected.min()) / 255
    np.testing.assert_allclose(got, expected, atol=3 * step + 0.02)


@pytest.mark.slow
def test_preprocessing_layer_converts_in_every_mode(tmp_path, capfd):
    """Every mode side by side in one model, and the grayscale conversion:
    converted once per flavour."""
    inputs = keras.Input((6, 6, 3), name="image")
    layers = [Preprocessing(mode) for mode in PREPROCESSING_MODES]
    layers.append(Preprocessing("tf", grayscale=True))  # one channel out
    outputs = [layer(inputs) for layer in layers]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    images = np.random.default_rng(1).uniform(0, 255, (8, 6, 6, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    path = export_model(model, tmp_path / "f32.tflite")
    got = tflite_predict(path, images)
    start = 0
    for layer, output in zip(layers, outputs, strict=True):  # Exact in float32.
        part = slice(start, start + output.shape[-1])
        start = part.stop
        np.testing.assert_allclose(
            got[..., part], expected[..., part], atol=1e-4, err_msg=layer.mode
        )
    assert start == 3 * len(PREPROCESSING_MODES) + 1
    # Full int8, one model per group: "unit" and "torch" side by side share
    # x / 255, which the converter then quantizes for one of them only.
    unit = PREPROCESSING_MODES.index("unit")
    for group in (outputs[:unit] + outputs[unit + 1 :], outputs[unit : unit + 1]):
        joined = keras.layers.Concatenate()(group) if len(group) > 1 else group[0]
        part = keras.Model(inputs, joined)
        expected = part.predict(images, verbose=0)
        path = export_model(
            part, tmp_path / "int8.tflite", quantize="int8", representative_data=images
        )
        step = (expected.max() - expected.min()) / 255  # One int8 step of it.
        got = tflite_predict(path, images)
        np.testing.assert_allclose(got, expected, atol=2 * step)
    # Quiet: the converter's and interpreter's C++ INFO lines are dropped.
    captured = capfd.readouterr()
    assert "fully_quantize" not in captured.err and "INFO:" not in captured.err
    assert "Saved artifact" not in captured.out


@pytest.mark.slow
def test_savedmodel_serving_signature_matches_keras(trained, tmp_path):
    target = tmp_path / "exported"
    target.mkdir()
    (target / "stale.txt").write_text("an older export")
    (target / ".tltf-savedmodel").write_text("")  # one that tltf wrote
    assert export_model(trained["model"], target, format="savedmodel") == target
    assert not (target / "stale.txt").exists()  # Replaced as a whole.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # No temp dirs.
    loaded = tf.saved_model.load(str(target))
    serve = loaded.signatures["serving_default"]
    outputs = serve(image=tf.constant(trained["samples"]))
    assert list(outputs) == ["output_0"]
    np.testing.assert_allclose(
        outputs["output_0"].numpy(), trained["expected"], atol=1e-5
    )


@pytest.mark.slow
def test_keras_round_trip_with_safe_mode(trained, tmp_path):
    path = export_model(trained["model"], tmp_path / "model.keras")
    assert path == tmp_path / "model.keras"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(trained["samples"], verbose=0), trained["expected"], atol=1e-6
    )
    assert tltf.model_info(loaded).metadata["base"] == "tiny"
    # A model path works as the source too, and the format follows the suffix.
    again = export_model(path, tmp_path / "again.tflite")
    np.testing.assert_allclose(
        tflite_predict(again, trained["samples"]), trained["expected"], atol=1e-5
    )


@pytest.mark.slow
def test_bad_arguments_raise_clear_errors(trained, tmp_path):
    model = trained["model"]
    with pytest.raises(ConfigError, match="needs representative_data"):
        export_model(model, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(ConfigError, match="Did you mean 'float16'"):
        export_model(model, tmp_path / "m.tflite", quantize="float61")
    with pytest.raises(ConfigError, match="Did you mean 'tflite'"):
        export_model(model, tmp_path / "m.tflite", format="tflight")
    with pytest.raises(ConfigError, match="TFLite exports only"):
        export_model(model, tmp_path / "m.keras", quantize="dynamic")
    with pytest.raises(ConfigError, match=r"ending in \.keras"):
        export_model(model, tmp_path / "m.h5", format="keras")
    with pytest.raises(ConfigError, match="SavedModel is a folder"):
        export_model(model, tmp_path / "m.keras", format="savedmodel")
    # A model file's suffix that tltf does not write is named, not taken for a
    # SavedModel folder's name (m.onnx/saved_model.pb, as before).
    for name, words in (("m.onnx", "ONNX"), ("m.h5", "HDF5"), ("m.pb", "frozen")):
        with pytest.raises(
            ConfigError, match=f"a format tltf does not export: .*{words}"
        ):
            export_model(model, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_the_command_line_names_a_model_suffix_it_does_not_export(tmp_path, capsys):
    # Checked from --output before the model is read (here: there is none).
    err = cli_error(
        ["export", tmp_path / "run", "--output", tmp_path / "m.onnx"], capsys
    )
    assert "ends in .onnx, a format tltf does not export" in err
    assert "m.keras" in err and "m.tflite" in err
    assert not list(tmp_path.iterdir())


def test_calibration_images_from_every_source(tmp_path):
    x, y = make_data(n=20, size=12)
    shape = (SIZE, SIZE, 3)
    data = tltf.load_data((x, y), image_size=SIZE, batch_size=8)
    assert _calibration_images(data, shape, 10).shape == (10, SIZE, SIZE, 3)
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert _calibration_images(batched, (12, 12, 3), 6).shape == (6, 12, 12, 3)
    images_only = tf.data.Dataset.from_tensor_slices(x)
    assert _calibration_images(images_only, (12, 12, 3), 100).shape == (20, 12, 12, 3)
    # Arrays of another size are resized as load_data resizes them.
    resized = _calibration_images((x, y), shape, 5)
    loaded = tltf.load_data((x[:5], y[:5]), image_size=SIZE, shuffle=False)
    np.testing.assert_allclose(resized, next(iter(loaded.train))[0].numpy())
    with pytest.raises(DataError, match="empty"):
        _calibration_images(images_only.take(0), (12, 12, 3), 5)
    # A folder: `count` files evenly spaced over the sorted listing (all classes).
    for name, channel in (("a_red", 0), ("b_blue", 2)):
        for i in range(3):
            image = np.zeros((10, 10, 3), np.uint8)
            image[..., channel] = 200
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(tf.io.encode_png(image).numpy())
    picked = _calibration_images(tmp_path, (8, 8, 3), 2)
    assert picked.shape == (2, 8, 8, 3)
    assert picked[0, 0, 0].argmax() == 0 and picked[1, 0, 0].argmax() == 2
