"""Pretraining a registry architecture on a procedural task, and reusing its base."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import count_traces
from tltf import datasets
from tltf.bases.base import BASE_INFO_FILE, BASE_MODEL_FILE, load_saved_base
from tltf.errors import ConfigError, UnknownBaseError
from tltf.model import model_info
from tltf.pretrain import (
    DEMO_BASE,
    QUICK_BASE,
    demo_base_path,
    near_chance_note,
    pretrain,
    set_bn_momentum,
    store_dir,
)

TINY = dict(images=64, image_size=32, epochs=1, batch_size=32, alpha=0.25)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A MobileNet (alpha 0.25) pretrained for one epoch on 64 images at 32 px.

    `TRACES` gets the number of times its training step was traced.
    """
    path = tmp_path_factory.mktemp("pretrain") / "tiny-base"
    keras.backend.clear_session()
    with pytest.MonkeyPatch.context() as patch:
        counts = count_traces(patch)
        base = pretrain("mobilenet", **TINY, bn_momentum=0.8, save_to=path, verbose=0)
    TRACES.update(counts)
    return base, path


#: Filled by the `pretrained` fixture (`tests.helpers.count_traces`).
TRACES = {}


@pytest.fixture(autouse=True)
def _tltf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TLTF_HOME", str(tmp_path / "home"))


@pytest.mark.slow
def test_saved_base_folder_and_info(pretrained):
    base, path = pretrained
    assert base.info["path"] == str(path)
    assert (path / BASE_MODEL_FILE).is_file()
    record = json.loads((path / BASE_INFO_FILE).read_text())
    info = record["info"]
    for key, value in {
        "architecture": "mobilenet",
        "task": "shapes_source",
        "images": 64,
        "image_size": 32,
        "epochs": 1,
        "seed": 0,
        "bn_momentum": 0.8,
        "tltf_version": tltf.__version__,
        "constructor_kwargs": {"alpha": 0.25},
    }.items():
        assert info[key] == value, key
    assert 0.0 <= info["train_accuracy"] <= 1.0
    assert 0.0 <= info["val_accuracy"] <= 1.0
    assert record["input_shape"] == [32, 32, 3]
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # atomic


@pytest.mark.slow
def test_pretraining_trains_the_whole_base(pretrained):
    # A frozen base would leave every BatchNorm layer as it was built: its
    # moving statistics at 0 and 1 (BatchNorm runs in inference mode), its scale
    # at 1 and its offset at 0 (no gradient). All of them move when it trains.
    base, _ = pretrained
    norms = [
        layer
        for layer in base.model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 27
    for layer in norms:
        for weight, built in [
            (layer.moving_mean, 0.0),
            (layer.moving_variance, 1.0),
            (layer.gamma, 1.0),
            (layer.beta, 0.0),
        ]:
            value = keras.ops.convert_to_numpy(weight)
            assert not np.all(value == built), f"{layer.name}: {weight.name}"


@pytest.mark.slow
def test_pretraining_traces_its_training_step_once(pretrained):
    # The metrics and the optimizer are built before `fit` (tltf.cache), not
    # inside the first trace, which TensorFlow would then trace again.
    assert TRACES["train"] == 1


@pytest.mark.slow
def test_build_model_from_path_gives_the_same_features(pretrained):
    base, path = pretrained
    model = tltf.build_model(str(path), num_classes=3)
    loaded = model_info(model).base
    x, _ = datasets.make_images("shapes_target", n=4, image_size=32, seed=3)
    x = x.astype("float32") / 127.5 - 1.0  # the base's "tf" preprocessing
    expected = keras.ops.convert_to_numpy(base.model(x, training=False))
    # The model's base has one output per block its head reads; the top is last.
    actual = keras.ops.convert_to_numpy(loaded(x, training=False)[-1])
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert model.output_shape == (None, 3)
    assert tltf.trainable_blocks(model) == []


@pytest.mark.slow
def test_saved_base_keeps_bn_momentum(pretrained):
    _, path = pretrained
    loaded = load_saved_base(path)
    momenta = {
        layer.momentum
        for layer in loaded.model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.8}


def test_a_base_near_chance_gets_a_note():
    note = near_chance_note(0.073, 16)
    assert "near chance (0.062 on 16 classes)" in note and "more epochs" in note
    assert near_chance_note(0.125, 16) is None  # twice chance
    assert near_chance_note(0.84, 16) is None


def test_store_respects_tltf_home(tmp_path, monkeypatch):
    assert store_dir() == tmp_path / "home" / "bases"
    assert demo_base_path() == store_dir() / DEMO_BASE.name
    assert demo_base_path(quick=True) == store_dir() / QUICK_BASE.name
    monkeypatch.delenv("TLTF_HOME")
    assert store_dir().parts[-3:] == (".cache", "tltf", "bases")


def test_recipe_names_differ():
    assert DEMO_BASE.name != QUICK_BASE.name
    assert DEMO_BASE.name.startswith("mobilenet")
    assert DEMO_BASE.kwargs()["architecture"] == "mobilenet_v3_small"
    assert QUICK_BASE.kwargs()["alpha"] == 0.25
    assert "constructor_kwargs" not in QUICK_BASE.kwargs()
    changed = dataclasses.replace(DEMO_BASE, learning_rate=1e-3)
    assert changed.name != DEMO_BASE.name  # the hash covers the whole recipe


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"architecture": "mobilenet_v9"}, UnknownBaseError, "mobilenet"),
        ({"task": "shapes"}, ConfigError, "Unknown task"),
        ({"image_size": 16}, ConfigError, "at least 32 px"),
        ({"bn_momentum": 1.0}, ConfigError, "bn_momentum"),
        ({"epochs": 0}, ConfigError, "epochs"),
        ({"learning_rate": -1.0}, ConfigError, "learning_rate"),
        ({"depth": 2}, ConfigError, "unexpected argument 'depth'"),
    ],
)
def test_bad_arguments_fail_before_training(
    kwargs, error, match, tmp_path, monkeypatch
):
    def no_data(*args, **kwargs):
        raise AssertionError("generated training data for bad arguments")

    monkeypatch.setattr(datasets, "make_images", no_data)
    with pytest.raises(error, match=match):
        pretrain(
            **{"architecture": "mobilenet", **kwargs}, save_to=tmp_path / "b", verbose=0
        )
    assert not (tmp_path / "b").exists()


def test_a_folder_it_did_not_write_is_refused_before_training(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")

    def no_data(*args, **kwargs):
        raise AssertionError("generated training data for a refused folder")

    monkeypatch.setattr(datasets, "make_images", no_data)
    with pytest.raises(ConfigError, match="tltf did not write"):
        pretrain("mobilenet", **TINY, save_to=mine, verbose=0)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep"


def test_set_bn_momentum_counts_nested_layers():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    outer = keras.Sequential(
        [keras.Input((4,)), inner, keras.layers.BatchNormalization()]
    )
    assert set_bn_momentum(outer, 0.7) == 2
    with pytest.raises(ConfigError, match="bn_momentum"):
        set_bn_momentum(outer, 0)


@pytest.mark.slow
def test_the_shipped_demo_base_is_used_without_pretraining(monkeypatch):
    """tltf ships DEMO_BASE (under 5 MB); an empty store loads it, never pretrains."""
    import importlib

    # `tltf.pretrain` is the function; the module is reached by its name.
    pretrain_module = importlib.import_module("tltf.pretrain")

    shipped = pretrain_module.shipped_demo_base_path()
    assert (shipped / BASE_MODEL_FILE).stat().st_size < 5 * 1024**2
    info = json.loads((shipped / BASE_INFO_FILE).read_text())["info"]
    config = DEMO_BASE.kwargs()
    for key in ("architecture", "task", "images", "image_size", "epochs", "seed"):
        assert info[key] == config[key], key

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained although the base is shipped")

    monkeypatch.setattr(pretrain_module, "pretrain", no_pretraining)
    assert not demo_base_path().exists()  # the autouse TLTF_HOME is empty
    assert pretrain_module.has_demo_base()
    base = pretrain_module.default_demo_base(verbose=0)
    assert base.name == "mobilenet_v3_small" and base.input_shape == (64, 64, 3)
    assert base.info["val_accuracy"] > 0.8
