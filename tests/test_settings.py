"""`FineTuneSettings`: one checked object for fine_tune, the config and the tuner."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import (
    check_error,
    make_data,
    make_tiny_base,
    make_tiny_model,
    weights_snapshot,
)
from tltf.config import ScheduleConfig
from tltf.errors import ConfigError
from tltf.settings import FIELDS, FineTuneSettings, defaults


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("head_epochs", -1, ["head_epochs", "integer >= 0 or 'auto'"]),
        ("fine_tune_epochs", "many", ["fine_tune_epochs", "'auto'"]),
        ("head_lr", 0.0, ["head_lr", "positive number", "'find'"]),
        ("fine_tune_lr", "fast", ["fine_tune_lr", "positive number"]),
        ("unfreeze", "al", ["unfreeze", "Did you mean 'all'"]),
        ("unfreeze", -2, ["unfreeze", ">= 0"]),
        ("unfreeze", {"block": 2}, ["unfreeze", "one key"]),
        ("unfreeze", {"names": "("}, ["unfreeze.names", "regex"]),
        ("unfreeze", {"layers": 1.5}, ["unfreeze.layers", "integer >= 0"]),
        ("head_steps", -1, ["head_steps", "integer >= 0"]),
        ("head_init", "zeros", ["head_init", "'ridge'"]),
        ("head_l2", -0.1, ["head_l2", "'auto' or a number >= 0"]),
        ("head_l2", "sklearn", ["head_l2", "'auto' or a number >= 0"]),
        ("head_l2", True, ["head_l2", "'auto' or a number >= 0"]),
        ("keep_best", "yes", ["keep_best", "True, False, 'holdout' or 'features'"]),
        ("bn", "frozn", ["Did you mean 'frozen'"]),
        ("optimizer", 3, ["optimizer", "name"]),
        ("lr_decay", 1.5, ["lr_decay", "(0, 1]"]),
        ("gradual_every", 0, ["gradual_every", ">= 1"]),
        ("class_weight", [1, 2], ["class_weight", "'balanced'"]),
        ("augment", "yes", ["augment", "Keras layer"]),
        ("label_smoothing", 1.0, ["label_smoothing", "[0, 1)"]),
        ("batch_size", 0, ["batch_size", ">= 1"]),
        ("seed", 1.5, ["seed", "integer"]),
        ("cache_features", "yes", ["cache_features", "'auto'"]),
        ("jit_compile", "xla", ["jit_compile", "'auto'"]),
    ],
)
def test_every_bad_setting_is_named_when_the_settings_are_made(field, value, words):
    with pytest.raises(ConfigError) as error:
        FineTuneSettings(**{field: value})
    check_error(error.value, ConfigError, *words)


def test_nothing_to_train_and_unknown_names_are_errors():
    with pytest.raises(ConfigError, match="Nothing to train"):
        FineTuneSettings(head_epochs=0, fine_tune_epochs=0)
    with pytest.raises(ConfigError, match="Did you mean 'head_epochs'"):
        FineTuneSettings().replace(head_epoch=3)
    # Every field has a default, and the defaults are what fine_tune runs.
    assert set(defaults()) == set(FIELDS)
    assert FineTuneSettings().changed() == {}


def test_replace_checks_and_leaves_the_original_alone():
    settings = FineTuneSettings(unfreeze=2)
    changed = settings.replace(fine_tune_lr=1e-5)
    assert settings.fine_tune_lr == "auto" and changed.fine_tune_lr == 1e-5
    assert changed.unfreeze == 2
    with pytest.raises(ConfigError, match="head_lr"):
        settings.replace(head_lr=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.unfreeze = 3


def test_fine_tune_rejects_an_unknown_keyword_before_training(data):
    model = make_tiny_model()
    before = weights_snapshot(model)
    for name, hint in (
        ("head_epoch", "head_epochs"),
        ("steps_per_epok", "steps_per_epoch"),
    ):
        with pytest.raises(ConfigError) as error:
            tltf.fine_tune(model, data, **{name: 1})
        check_error(error.value, ConfigError, repr(name), f"Did you mean {hint!r}")
    with pytest.raises(ConfigError, match="FineTuneSettings or None"):
        tltf.fine_tune(model, data, None, {"head_epochs": 1})
    after = weights_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _run(settings=None, **kwargs):
    keras.utils.set_random_seed(1)
    model = make_tiny_model(base=make_tiny_base())
    x, y = make_data(n=48)
    history = tltf.fine_tune(model, (x, y), None, settings, verbose=0, **kwargs)
    return history.history, [np.array(w) for w in model.get_weights()]


def test_settings_object_and_keywords_train_the_same_run():
    # keep_best=False: stage 2 runs however well stage 1 did.
    common = dict(
        head_epochs=2, fine_tune_epochs=1, unfreeze=1, seed=0, keep_best=False
    )
    by_keywords = _run(**common)
    by_object = _run(FineTuneSettings(**common))
    # Keywords change fields of the settings given.
    mixed = _run(FineTuneSettings(**{**common, "unfreeze": 3}), unfreeze=1)
    for other in (by_object, mixed):
        assert other[0]["stage"] == by_keywords[0]["stage"] == [1, 1, 2]
        np.testing.assert_allclose(other[0]["loss"], by_keywords[0]["loss"], rtol=1e-6)
        for a, b in zip(other[1], by_keywords[1], strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_config_section_and_the_tuner_make_settings():
    config = ScheduleConfig.from_dict({"unfreeze": 2, "head_lr": "find"})
    assert config.settings() == FineTuneSettings(unfreeze=2, head_lr="find")
    # The tuner checks its fine_tune arguments as settings, before any trial.
    with pytest.raises(ConfigError, match="label_smoothing"):
        tltf.tuning.FineTuneHyperModel(
            make_tiny_base(), 3, weights=None, label_smoothing=2.0
        )
    with pytest.raises(ConfigError, match="Did you mean 'label_smoothing'"):
        tltf.tuning.FineTuneHyperModel(make_tiny_base(), 3, label_smothing=0.1)
    with pytest.raises(ConfigError, match="initial_epoch is set by the tuner"):
        tltf.tuning.FineTuneHyperModel(make_tiny_base(), 3, initial_epoch=1)
    tltf.tuning.FineTuneHyperModel(make_tiny_base(), 3, steps_per_epoch=2)  # to fit
    hypermodel = tltf.tuning.FineTuneHyperModel(
        make_tiny_base(), 3, label_smoothing=0.1, seed=4
    )
    # The tuner's own defaults (fixed epochs, no guard) are settings too.
    assert hypermodel.settings.changed() == {
        "head_epochs": 5,
        "fine_tune_epochs": 5,
        "keep_best": False,
        "label_smoothing": 0.1,
        "seed": 4,
    }


def test_a_large_set_counts_images_and_for_a_classifier_images_a_class():
    large = tltf.settings.is_large_set
    assert tltf.settings.LARGE_SET_IMAGES == 1000
    assert tltf.settings.LARGE_SET_PER_CLASS == 15
    assert not large(None) and not large(999) and large(1000)
    # Regression and multi-label (no classes): the images alone decide.
    assert large(1000, None) and not large(999, None)
    # A classifier also needs 15 images a class on average.
    assert large(1000, 2) and large(1500, 100) and large(1005, 67)
    assert not large(1000, 100) and not large(1499, 100) and not large(999, 2)
    assert tltf.settings.LARGE_SET_LR == 3e-4 and tltf.settings.SMALL_SET_LR == 1e-4


def test_a_base_has_normalization_in_any_of_its_layers_or_nested_models():
    from tltf.freezing import has_normalization

    assert tltf.settings.LARGE_SET_NEEDS_NORMALIZATION
    assert has_normalization(make_tiny_base())
    assert not has_normalization(make_tiny_base(batchnorm=False))  # as VGG
    inputs = keras.Input((4, 4, 3))
    for layer in (
        keras.layers.LayerNormalization(),
        keras.layers.GroupNormalization(3),
    ):
        assert has_normalization(keras.Model(inputs, layer(inputs)))  # as ConvNeXt
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert not has_normalization(plain)
    nested = make_tiny_base()  # BN inside a model inside the model
    outer_in = keras.Input((16, 16, 3))
    assert has_normalization(keras.Model(outer_in, nested(outer_in)))
