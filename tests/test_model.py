"""build_model: a plain, safely loadable keras.Model with the right head."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import make_lambda_model, make_tiny_base
from tltf.errors import ConfigError, InputShapeError, ModelError, UnknownBaseError
from tltf.heads import HIDDEN_DROPOUT, HeadConfig, pixel_columns
from tltf.model import model_info


def _no_lambda(model):
    return not any(
        isinstance(layer, keras.layers.Lambda)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


def _tltf_class(model) -> bool:
    return any(c.__module__.startswith("tltf") for c in type(model).__mro__)


@pytest.mark.slow
def test_registry_model_saves_and_loads_safely(tmp_path):
    model = tltf.build_model(
        "mobilenet_v2", num_classes=4, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    # A plain Keras functional model: no tltf subclass that a loader would need.
    assert isinstance(model, keras.Model)
    assert type(model).__module__.startswith("keras.") and not _tltf_class(model)
    assert _no_lambda(model)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    info, loaded_info = model_info(model), model_info(loaded)
    assert loaded_info.block_map == info.block_map
    assert loaded_info.base.name == info.base.name
    assert loaded_info.block_map.names[:2] == ["stem", "block_1"]
    assert not loaded_info.base.trainable_weights  # the base is still frozen
    assert tltf.load_model(path).count_params() == model.count_params()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "num_classes", "units", "check"),
    [
        ("multiclass", 5, 5, lambda p: np.allclose(p.sum(axis=1), 1, atol=1e-5)),
        ("binary", None, 1, lambda p: ((p >= 0) & (p <= 1)).all()),
        ("multilabel", 4, 4, lambda p: ((p >= 0) & (p <= 1)).all()),
        # Unbounded: a bias of -50 comes out as -50 (no squashing activation).
        ("regression", 2, 2, lambda p: np.allclose(p, -50.0, atol=1e-4)),
    ],
)
def test_task_heads(task, num_classes, units, check):
    model = tltf.build_model(make_tiny_base(), num_classes, task=task)
    output = model.get_layer("head_output")
    if task == "regression":
        output.kernel.assign(np.zeros(output.kernel.shape))
        output.bias.assign(np.full(output.bias.shape, -50.0))
    preds = model.predict(np.zeros((2, 16, 16, 3)), verbose=0)
    assert preds.shape == (2, units)
    assert check(preds)


def test_head_options_and_logits():
    model = tltf.build_model(
        make_tiny_base(),
        3,
        head={
            "pooling": "avgmax",
            "hidden_units": [8],
            "batchnorm": True,
            "logits": True,
        },
    )
    names = [layer.name for layer in model.layers]
    # pool_from="auto" (the default) reads every block of the tiny base: each is
    # pooled both ways, then all eight are concatenated, with the raw pixels
    # (16 px average-pooled to 8 x 8, RGB) last.
    assert model_info(model).metadata["head_blocks"] == [
        "block1",
        "block2",
        "block3",
        "block4",
    ]
    assert {"head_avg_pool_0", "head_max_pool_3", "head_dense_1", "head_bn_1"} <= set(
        names
    )
    assert model.get_layer("head_pool").output.shape[-1] == 2 * (8 + 8 + 16 + 16) + 192
    assert pixel_columns(model) == slice(2 * (8 + 8 + 16 + 16), 288)
    assert model.get_layer("head_output").activation.__name__ == "linear"
    top = tltf.build_model(
        make_tiny_base(),
        3,
        head={"pooling": "avgmax", "pool_from": "top", "pixels": 0},
    )
    assert {"head_avg_pool", "head_max_pool"} <= {layer.name for layer in top.layers}
    assert top.get_layer("head_pool").output.shape[-1] == 2 * 16
    assert pixel_columns(top) is None
    with pytest.raises(ConfigError, match="Did you mean 'hidden_units'"):
        tltf.build_model(make_tiny_base(), 3, head={"hidden_unit": [8]})


def test_auto_dropout_is_none_for_a_linear_head_and_0_2_with_hidden_layers():
    """`dropout="auto"` (the default): a linear head, which `fine_tune` starts
    from the ridge classifier, has no dropout; a head with hidden layers, which
    starts from random weights, has HIDDEN_DROPOUT before each Dense. A number
    is taken as given; anything else is refused with the accepted values."""

    def rates(head):
        model = tltf.build_model(make_tiny_base(), 3, head=head)
        return {
            la.name: la.rate
            for la in model.layers
            if isinstance(la, keras.layers.Dropout)
        }

    assert HeadConfig().dropout == "auto" and HIDDEN_DROPOUT == 0.2
    assert rates(None) == {}
    assert rates({"hidden_units": [8]}) == {"head_dropout_1": 0.2, "head_dropout": 0.2}
    assert rates({"hidden_units": [8], "dropout": 0.0}) == {}
    assert rates({"dropout": 0.3}) == {"head_dropout": 0.3}
    for bad in ("some", None, True, 1.0):
        with pytest.raises(ConfigError, match=r'\[0, 1\), or "auto"'):
            HeadConfig(dropout=bad)


def test_mixed_precision_output_stays_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tltf.build_model(make_tiny_base(), 3)
        assert model.get_layer("head_pool").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_custom_base_block_map_is_inferred_and_explicit_map_accepted():
    model = tltf.build_model(make_tiny_base(), 3)
    assert model_info(model).block_map.names == ["block1", "block2", "block3", "block4"]
    explicit = {
        "low": ["block1_conv", "block1_bn", "block1_relu", "block2_conv", "block2_bn"],
        "high": ["block3_conv", "block3_bn", "block4_conv", "block4_bn"],
    }
    model = tltf.build_model(make_tiny_base(), 3, block_map=explicit)
    assert model_info(model).block_map.names == ["low", "high"]
    # The old name of block_map= still works, and says it is the old name.
    with pytest.warns(DeprecationWarning, match=r"build_model\(block_map=...\)"):
        model = tltf.build_model(make_tiny_base(), 3, blocks=explicit)
    assert model_info(model).block_map.names == ["low", "high"]
    with pytest.raises(ConfigError, match="got both blocks= and block_map="):
        tltf.build_model(make_tiny_base(), 3, blocks=explicit, block_map=explicit)


def test_probe_blocks_takes_validation_data_and_still_its_old_name(data):
    x, y = data
    new = tltf.probe_blocks(
        make_tiny_base(), (x[:40], y[:40]), (x[40:], y[40:]), verbose=0
    )
    with pytest.warns(DeprecationWarning, match="validation_data="):
        old = tltf.probe_blocks(
            make_tiny_base(), (x[:40], y[:40]), val=(x[40:], y[40:]), verbose=0
        )
    assert new.num_val == old.num_val == 24


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base": "mobilenet_v5"}, UnknownBaseError, "Did you mean 'mobilenet_v2'"),
        ({"base": "resnet"}, UnknownBaseError, "resnet50"),
        ({"input_shape": (16, 16, 3)}, InputShapeError, "at least 32x32"),
        (
            {"input_shape": (64, 64, 1), "weights": "imagenet"},
            InputShapeError,
            "3 \\(RGB\\)",
        ),
        ({"input_shape": (64, 64)}, InputShapeError, "height, width, channels"),
        ({"num_classes": 1}, ConfigError, "num_classes to be an integer >= 2"),
        ({"task": "classification"}, ConfigError, "Unknown task"),
        ({"weights": "/nonexistent/w.h5"}, tltf.TltfError, "does not exist"),
        # Another constructor's argument, and a value Keras rejects with TypeError.
        (
            {"base": "resnet50", "alpha": 0.5},
            ConfigError,
            "ResNet50\\(\\) got an unexpected argument 'alpha'. 'resnet50' takes "
            "input_tensor, pooling",
        ),
        ({"alpha": [1]}, ConfigError, "MobileNetV2 rejected the arguments"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {
        "base": "mobilenet_v2",
        "num_classes": 3,
        "weights": None,
        "input_shape": (32, 32, 3),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        tltf.build_model(args.pop("base"), args.pop("num_classes"), **args)


def test_model_info_rejects_foreign_models():
    with pytest.raises(ModelError, match="not built by tltf.build_model"):
        model_info(make_tiny_base())


def test_load_model_refuses_lambda_and_truncated_files(tmp_path):
    lam = make_lambda_model()
    lam.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="Lambda"):
        tltf.load_model(tmp_path / "lambda.keras")
    good = tltf.build_model(make_tiny_base(), 3)
    good.save(tmp_path / "good.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        tltf.load_model(tmp_path / "cut.keras")
    assert (tmp_path / "cut.keras").stat().st_size == len(data) // 2  # left untouched


def test_auto_head_reads_every_block_within_a_channel_budget(monkeypatch):
    from tltf import heads

    # A small base: every block.
    assert heads.pool_positions(5, "auto") == [0, 1, 2, 3, 4]
    # A wide base: the top block, then an even spread (1/2, 1/4, 3/4, ...) of the
    # blocks below it while their channels fit the budget; unreadable blocks
    # (None) are skipped.
    monkeypatch.setattr(heads, "AUTO_POOL_CHANNELS", 24)
    assert heads.pool_positions(4, "auto", widths=[8, 8, 16, 16]) == [0, 1, 3]
    assert heads.pool_positions(4, "auto", widths=[8, None, 8, 16]) == [0, 2, 3]
    model = tltf.build_model(make_tiny_base(widths=(8, 8, 16, 16)), 3)
    assert model_info(model).metadata["head_blocks"] == ["block1", "block2", "block4"]
    assert model.get_layer("head_pool").output.shape[-1] == 8 + 8 + 16 + 8 * 8 * 3


def test_auto_head_skips_blocks_that_end_in_two_tensors():
    # block2 hands two tensors to block3 (a skip connection over the boundary):
    # the head reads the other blocks; an explicit request for block2 is refused.
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="block2_conv")(x)
    z = keras.layers.Add(name="block3_add")([x, y])
    z = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="block4_conv")(z)
    base = keras.Model(inputs, z, name="skippy")
    model = tltf.build_model(base, 3)
    assert model_info(model).metadata["head_blocks"] == ["block1", "block3", "block4"]
    with pytest.raises(tltf.errors.BlockMapError, match="block2"):
        tltf.build_model(base, 3, head={"pool_from": ["block2"]})


@pytest.mark.parametrize("build", [{}, {"cut": "block3"}], ids=["every_block", "cut"])
def test_the_users_base_reads_frozen_and_thaws(build):
    # The head reads the blocks through another model over the same layers (a
    # multi-output or cut one). The user's own base says it is frozen too, so
    # the keras.io step `base.trainable = True` thaws every layer the model uses.
    base = tltf.load_base(make_tiny_base(widths=(4, 4, 8, 8)))
    model = tltf.build_model(base, 3, **build)
    head = len(model.trainable_weights)
    assert model_info(model).metadata["head_blocks"][:2] == ["block1", "block2"]
    assert base.model.trainable is False
    base.model.trainable = True
    assert len(model.trainable_weights) > head
    assert tltf.trainable_blocks(model)
