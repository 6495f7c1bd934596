"""The public API's shape: no function with more than about 12 named parameters
(issue 13), and the keywords that moved into `**kwargs` still work, with a
misspelt one named before anything is built, trained or written."""

from __future__ import annotations

import dataclasses
import inspect

import keras
import keras_tuner as kt
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
from tltf.errors import ConfigError
from tltf.lr_finder import LRSweep
from tltf.model import model_info

#: The most named parameters a public function may have; more go into a settings
#: object (a frozen dataclass) or a documented `**kwargs` group.
MAX_NAMED = 13

#: A block map of the tiny base in two blocks (for `block_map=`).
TWO_BLOCKS = {
    "low": ["block1_conv", "block1_bn", "block1_relu", "block2_conv", "block2_bn"],
    "high": ["block3_conv", "block3_bn", "block4_conv", "block4_bn"],
}


def _named(callable_) -> list[str]:
    """Named parameters of a function (or a class's `__init__`), without self,
    *args and **kwargs."""
    function = callable_.__init__ if inspect.isclass(callable_) else callable_
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _too_many(names) -> dict[str, int]:
    """The callables among `tltf`'s `names` with more than MAX_NAMED parameters.

    Dataclasses are the settings and result objects the rule groups arguments
    into (FineTuneSettings, HeadConfig, ...): their fields are not counted.
    Modules are not callables.
    """
    found = {}
    for name in names:
        obj = getattr(tltf, name)
        if inspect.ismodule(obj) or dataclasses.is_dataclass(obj):
            continue
        count = len(_named(obj))
        if count > MAX_NAMED:
            found[name] = count
    return found


def test_no_public_function_takes_more_than_about_12_named_parameters():
    assert _too_many(tltf.__all__) == {}


def test_the_parameter_count_catches_a_long_signature(monkeypatch):
    def long(a, b, c, d, e, f, g, h, i, j, k, m, n, o, *args, **kwargs):
        """14 named parameters."""

    def short(a, b, c, d, e, f, g, h, i, j, k, m, n, *args, **kwargs):
        """13 named parameters."""

    class Long:
        def __init__(self, a, b, c, d, e, f, g, h, i, j, k, m, n, o):
            pass

    for name, obj in (("long_fn", long), ("short_fn", short), ("LongCls", Long)):
        monkeypatch.setattr(tltf, name, obj, raising=False)
    found = _too_many(["long_fn", "short_fn", "LongCls", "FineTuneSettings"])
    assert found == {"long_fn": 14, "LongCls": 14}


def _rejects(call, misspelt: str, meant: str) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        call(**{misspelt: 1})
    check_error(error.value, ConfigError, repr(misspelt), f"Did you mean {meant!r}")
    return error.value


# -- build_model ----------------------------------------------------------------------
def test_build_model_takes_the_base_loading_keywords_it_took_by_name(tmp_path):
    model = tltf.build_model(
        make_tiny_base(),
        3,
        weights=None,
        weights_dir=tmp_path,
        block_map=TWO_BLOCKS,
        preprocessing="tf",
        name="old_call",
    )
    info = model_info(model)
    assert info.block_map.names == ["low", "high"] and model.name == "old_call"
    assert model.get_layer("preprocessing").mode == "tf"
    with pytest.warns(DeprecationWarning, match=r"build_model\(block_map=...\)"):
        old = tltf.build_model(make_tiny_base(), 3, blocks=TWO_BLOCKS)
    assert model_info(old).block_map.names == ["low", "high"]


def test_build_model_names_a_misspelt_keyword_before_loading_anything():
    for misspelt, meant in (
        ("weigths", "weights"),
        ("block_mpa", "block_map"),
        ("mixed_precison", "mixed_precision"),
    ):
        _rejects(
            lambda **kw: tltf.build_model(make_tiny_base(), 3, **kw), misspelt, meant
        )
    # A registry base: a misspelt constructor argument is named too, before
    # Keras builds anything (Keras itself raised a TypeError).
    _rejects(
        lambda **kw: tltf.build_model("mobilenet_v2", 3, weights=None, **kw),
        "alpah",
        "alpha",
    )


# -- probe_blocks ---------------------------------------------------------------------
def test_probe_blocks_takes_the_base_loading_keywords_it_took_by_name(tmp_path):
    x, y = make_data(32)
    result = tltf.probe_blocks(
        make_tiny_base(),
        (x, y),
        weights=None,
        weights_dir=tmp_path,
        block_map=TWO_BLOCKS,
        preprocessing="none",
        pixels=False,
        verbose=0,
    )
    assert [row["block"] for row in result.table] == ["low", "high"]


def test_probe_blocks_names_a_misspelt_keyword_before_the_forward_pass():
    x, y = make_data(32)
    for misspelt, meant in (("tolerence", "tolerance"), ("weight_dir", "weights_dir")):
        _rejects(
            lambda **kw: tltf.probe_blocks(make_tiny_base(), (x, y), **kw),
            misspelt,
            meant,
        )


# -- load_data ------------------------------------------------------------------------
def test_load_data_takes_cache_and_data_dir_as_before():
    x, y = make_data(12, size=8)
    data = tltf.load_data(
        (x, y),
        image_size=8,
        batch_size=4,
        validation_split=0.25,
        seed=0,
        task="multiclass",
        num_classes=3,
        resize="stretch",
        shuffle=False,
        cache=False,
        strict=True,
        data_dir=None,
    )
    assert (data.num_train, data.num_validation, data.num_classes) == (9, 3, 3)


def test_load_data_names_a_misspelt_keyword():
    x, y = make_data(12, size=8)
    for misspelt, meant in (("validaton_split", "validation_split"), ("cach", "cache")):
        _rejects(
            lambda **kw: tltf.load_data((x, y), image_size=8, **kw), misspelt, meant
        )


# -- find_lr --------------------------------------------------------------------------
def test_find_lr_takes_the_sweep_keywords_it_took_by_name():
    model = make_tiny_model()
    x, y = make_data(32)
    result = tltf.find_lr(
        model,
        (x, y),
        stage="head",
        min_lr=1e-5,
        max_lr=1e-1,
        steps=10,
        smoothing=0.5,
        diverge=10.0,
        widen=0,
        batch_size=16,
        seed=0,
        verbose=0,
    )
    assert len(result.lrs) <= 10
    np.testing.assert_allclose(result.lrs[0], 1e-5)
    # The keywords are LRSweep's fields, checked by it.
    assert LRSweep().steps == 100
    with pytest.raises(ConfigError, match="Expected diverge > 1"):
        tltf.find_lr(model, (x, y), diverge=1.0, verbose=0)


def test_find_lr_names_a_misspelt_keyword_before_any_step():
    model = make_tiny_model()
    before = weights_snapshot(model)
    x, y = make_data(32)
    for misspelt, meant in (("smothing", "smoothing"), ("batchsize", "batch_size")):
        _rejects(lambda **kw: tltf.find_lr(model, (x, y), **kw), misspelt, meant)
    after = weights_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# -- FineTuneHyperModel ---------------------------------------------------------------
def test_hypermodel_takes_its_former_arguments_as_keywords(tmp_path):
    optimizer = keras.optimizers.SGD(0.1)
    hypermodel = tltf.FineTuneHyperModel(
        make_tiny_base(),
        3,
        head_epochs=2,
        fine_tune_epochs=3,
        optimizer=optimizer,
        seed=4,
        batch_size=8,
        cache_features=False,
        share_stage1=False,
        head_store=tmp_path,
        name="old_call",
        label_smoothing=0.1,
        base_kwargs={"block_map": TWO_BLOCKS},
    )
    assert (hypermodel.head_epochs, hypermodel.fine_tune_epochs) == (2, 3)
    assert hypermodel.optimizer is optimizer
    assert (hypermodel.seed, hypermodel.batch_size) == (4, 8)
    assert hypermodel.cache_features is False and hypermodel.share_stage1 is False
    assert hypermodel.head_store == tmp_path and hypermodel.name == "old_call"
    assert hypermodel.n_blocks == 2
    settings = hypermodel.settings
    assert (settings.head_epochs, settings.fine_tune_epochs, settings.seed) == (2, 3, 4)
    assert settings.label_smoothing == 0.1 and settings.keep_best is False
    # Only the other fine_tune settings are passed again (and are in the head key).
    assert hypermodel.fine_tune_kwargs == {"label_smoothing": 0.1}
    # Nothing given: the tuner's defaults, not fine_tune's "auto".
    default = tltf.FineTuneHyperModel(make_tiny_base(), 3)
    assert (default.head_epochs, default.fine_tune_epochs) == (5, 5)
    assert default.settings.keep_best is False and default.share_stage1 is True
    assert default.optimizer == "adam" and default.fine_tune_kwargs == {}


def test_hypermodel_settings_object_and_keywords_are_the_same_trials():
    base = make_tiny_base()  # the same weights: the head key has their digest
    by_keywords = tltf.FineTuneHyperModel(
        base, 3, head_epochs=2, seed=1, label_smoothing=0.1
    )
    by_object = tltf.FineTuneHyperModel(
        base,
        3,
        settings=tltf.FineTuneSettings(head_epochs=2, seed=1, label_smoothing=0.1),
    )
    assert by_object.settings == by_keywords.settings
    assert by_object.fine_tune_kwargs == by_keywords.fine_tune_kwargs
    hp = kt.HyperParameters()
    by_keywords.declare_hyperparameters(hp)
    train = make_data(16)
    assert by_object.head_key(
        hp, by_object.fit_options(hp), train, train
    ) == by_keywords.head_key(hp, by_keywords.fit_options(hp), train, train)
    # What the search sets cannot come in through the settings either.
    with pytest.raises(ConfigError, match=r"search=\{'unfreeze': 2\}"):
        tltf.FineTuneHyperModel(
            make_tiny_base(), 3, settings=tltf.FineTuneSettings(unfreeze=2)
        )


def test_hypermodel_names_a_misspelt_keyword():
    for misspelt, meant in (
        ("serach", "search"),
        ("share_stage_1", "share_stage1"),
        ("head_epoch", "head_epochs"),
        ("label_smothing", "label_smoothing"),
    ):
        _rejects(
            lambda **kw: tltf.FineTuneHyperModel(make_tiny_base(), 3, **kw),
            misspelt,
            meant,
        )


# -- tune -----------------------------------------------------------------------------
def test_tune_names_a_misspelt_keyword_before_anything_is_written(tmp_path):
    train, val = make_data(16), make_data(8, seed=1)
    for misspelt, meant in (
        ("max_trails", "max_trials"),
        ("num_clases", "num_classes"),
        ("head_epoch", "head_epochs"),
        ("tuner_kwarg", "tuner_kwargs"),
        ("share_stage_1", "share_stage1"),
    ):
        _rejects(
            lambda **kw: tltf.tune(
                make_tiny_base(), train, val, directory=tmp_path, verbose=0, **kw
            ),
            misspelt,
            meant,
        )
    # A hypermodel passed as the base takes no model or settings keywords (left
    # at their former defaults, they are ignored, as before).
    hypermodel = tltf.FineTuneHyperModel(make_tiny_base(), 3)
    with pytest.raises(ConfigError, match=r"received \['head_epochs'\]"):
        tltf.tune(hypermodel, train, val, directory=tmp_path, head_epochs=2)
    assert list(tmp_path.iterdir()) == []


def test_tune_takes_every_former_named_argument_as_a_keyword(tmp_path):
    train, val = make_data(32), make_data(16, seed=1)
    result = tltf.tune(
        make_tiny_base(),
        train,
        val,
        num_classes=3,
        task="multiclass",
        input_shape=(16, 16, 3),
        weights=None,
        search={"head_dropout": 0.2, "head_units": 0, "unfreeze": 1},
        tuner="random",
        max_trials=1,
        objective="auto",
        directory=tmp_path,
        project_name="p",
        overwrite=False,
        head_epochs=1,
        fine_tune_epochs=1,
        optimizer="adam",
        callbacks=[],
        share_stage1=True,
        seed=3,
        max_consecutive_failed_trials=3,
        hyperparameters=kt.HyperParameters(),
        tuner_kwargs={},
        export=False,
        verbose=0,
        batch_size=16,
        label_smoothing=0.0,
    )
    assert [row["status"] for row in result.table] == ["COMPLETED"]
    assert result.tuner.oracle.seed == 3  # the search's seed (0 is random to kt)
    assert result.best_model is not None and "csv" not in result.paths
