"""Any blocks, not only the top: range unfreezing, Auto-RGN rates and L2-SP."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import tltf
from tests.helpers import (
    make_data,
    make_tiny_base,
    make_tiny_model,
    weights_snapshot,
)
from tltf.cli import main as cli_main
from tltf.errors import ConfigError
from tltf.heads import HeadConfig
from tltf.info import model_info
from tltf.regularizers import StartingPoint
from tltf.schedule import FineTuneSchedule
from tltf.tuning.space import SearchSpace, top_blocks, unfreeze_spec


# -- range unfreezing ---------------------------------------------------------
# (That a range trains exactly its blocks, BN statistics kept: test_schedule.py.)
@pytest.mark.parametrize(
    "spec, expected",
    [
        ((0, 0), ["block1"]),
        (("block2", "block3"), ["block2", "block3"]),
        ((-2, -1), ["block3", "block4"]),
        ((1, "block4"), ["block2", "block3", "block4"]),
    ],
)
def test_unfreeze_range_forms(spec, expected):
    model = make_tiny_model()
    assert tltf.unfreeze(model, range=spec) == expected
    assert tltf.trainable_blocks(model) == expected


@pytest.mark.parametrize(
    "spec, words",
    [
        ((2, 1), ["lower block to a higher one", "Swap"]),
        (("block9", "block4"), ["Unknown block 'block9'", "block1"]),
        ((0, 4), ["[-4, 3]", "4 blocks"]),
    ],
)
def test_bad_range_is_a_clear_error(spec, words):
    model = make_tiny_model()
    with pytest.raises(ConfigError) as error:
        tltf.unfreeze(model, range=spec)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "value", [{"range": [0]}, {"range": "0..1"}, {"range": [0.5, 1]}]
)
def test_bad_range_settings_fail_before_training(value):
    with pytest.raises(ConfigError, match="range"):
        tltf.FineTuneSettings(unfreeze=value)


def test_cli_reads_a_block_range(capsys):
    argv = ["train", "--base", "demo", "--train", "x/", "--print-config"]
    assert cli_main([*argv, "--unfreeze", "block2..-1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["schedule"]["unfreeze"] == {"range": ["block2", -1]}
    assert cli_main([*argv, "--unfreeze", "0.."]) == 2
    err = capsys.readouterr().err
    assert "FIRST..LAST" in err and "Traceback" not in err


def test_tuner_searches_where_to_unfreeze():
    assert unfreeze_spec({"unfreeze": 2}, 6) == 2
    assert unfreeze_spec({"unfreeze": 2, "unfreeze_offset": 0}, 6) == 2
    assert unfreeze_spec({"unfreeze": 2, "unfreeze_offset": 1}, 6) == {"range": [3, 4]}
    assert unfreeze_spec({"unfreeze": 3, "unfreeze_offset": 4}, 6) == {"range": [0, 1]}
    assert unfreeze_spec({"unfreeze": 0, "unfreeze_offset": 4}, 6) == 0
    assert top_blocks({"unfreeze": 2, "unfreeze_offset": 3}) == 5
    import keras_tuner as kt

    hp = kt.HyperParameters()
    values = SearchSpace(unfreeze=1, unfreeze_offset=[0, 3]).declare(hp, 4)
    assert values["unfreeze_offset"] in (0, 3)
    assert "unfreeze_offset" in hp.values
    hp = kt.HyperParameters()
    SearchSpace(unfreeze=1).declare(hp, 4)
    assert "unfreeze_offset" not in hp.values  # only declared when searched
    with pytest.raises(ConfigError, match="unfreeze_offset"):
        SearchSpace(unfreeze=1, unfreeze_offset=4).declare(kt.HyperParameters(), 4)


# -- Auto-RGN -----------------------------------------------------------------
def test_auto_rgn_scales_each_block_by_its_relative_gradient_norm():
    x, y = make_data(n=24)
    model = make_tiny_model(head=HeadConfig(dropout=0.0))
    lr = 0.05
    model.compile(
        keras.optimizers.SGD(lr), "sparse_categorical_crossentropy", run_eagerly=False
    )
    schedule = FineTuneSchedule(
        0, unfreeze=2, fine_tune_lr=lr, lr_policy="auto_rgn", verbose=0
    )
    before = [np.array(v.numpy()) for v in model.weights]
    model.fit(
        x, y, batch_size=24, epochs=1, shuffle=False, callbacks=[schedule], verbose=0
    )
    after = [np.array(v.numpy()) for v in model.weights]
    # The same step by hand: gradients at the starting weights, one group per
    # unfrozen block and one for the head.
    for v, value in zip(model.weights, before, strict=True):
        v.assign(value)
    trainable = list(model.trainable_variables)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        loss = tf.reduce_mean(loss)
    gradients = tape.gradient(loss, trainable)
    grads = dict(zip([id(v) for v in trainable], gradients, strict=True))
    groups = schedule._rgn_groups()
    # block3, block4 (conv kernel and bias; BN frozen), then the head.
    assert [len(g) for g in groups[:2]] == [2, 2] and len(groups) == 3
    rgn = np.array(
        [
            np.sqrt(sum(np.sum(np.square(grads[id(v)])) for v in group))
            / np.sqrt(sum(np.sum(np.square(v.numpy())) for v in group))
            for group in groups
        ]
    )
    expected = rgn / rgn.max()
    np.testing.assert_allclose(schedule.rgn_multipliers.numpy(), expected, rtol=1e-4)
    assert 0 < expected.min() < 0.99  # the blocks do get different rates
    # SGD applied each group's rate: w1 = w0 - lr * multiplier * grad.
    position = {id(v): i for i, v in enumerate(model.weights)}
    for multiplier, group in zip(expected, groups, strict=True):
        for v in group:
            i = position[id(v)]
            np.testing.assert_allclose(
                after[i], before[i] - lr * multiplier * grads[id(v)], atol=1e-6
            )


def test_auto_rgn_through_fine_tune_and_its_checks(data):
    model = make_tiny_model()
    history = tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=2,
        lr_policy="auto_rgn",
        keep_best=False,
        verbose=0,
    )
    assert history.history["stage"] == [1, 2]
    with pytest.raises(ConfigError, match="lr_decay"):
        tltf.FineTuneSettings(lr_policy="auto_rgn", lr_decay=0.5)
    with pytest.raises(ConfigError, match="auto_rgn"):
        tltf.FineTuneSettings(lr_policy="auto-rgn")


# -- L2-SP --------------------------------------------------------------------
def _drift(data, regularize):
    keras.utils.set_random_seed(0)
    model = make_tiny_model()
    info = model_info(model)
    before = weights_snapshot(info.base)
    tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=3,
        fine_tune_lr=1e-2,
        unfreeze=2,
        regularize=regularize,
        keep_best=False,
        verbose=0,
        seed=0,
    )
    after = weights_snapshot(info.base)
    kernels = [
        k for k in before if k.endswith("kernel") and k.startswith(("block3", "block4"))
    ]
    assert kernels
    return model, max(np.abs(after[k] - before[k]).max() for k in kernels)


def test_l2sp_with_a_huge_weight_keeps_the_base_at_its_start(data, tmp_path):
    _, free = _drift(data, None)
    model, held = _drift(data, {"l2sp": 1e6})
    assert free > 0.02
    # Adam's steps are about lr (1e-2) each whatever the gradient's size: under
    # the penalty the weights stay within one step of their start instead of
    # drifting by several.
    assert held < 1e-2 and held < 0.2 * free, (held, free)
    # The penalty lives only while fine_tune trains: nothing in the saved model.
    assert not any(
        isinstance(v.regularizer, StartingPoint) for v in model_info(model).base.weights
    )
    path = tmp_path / "m.keras"
    model.save(path)
    tltf.load_model(path)


def test_l2sp_anchors_are_the_weights_when_training_starts(data):
    schedule = FineTuneSchedule(0, unfreeze=1, regularize="l2sp", verbose=0)
    assert schedule.regularize == ("l2sp", 0.01)
    model = make_tiny_model()
    base = model_info(model).base
    start = weights_snapshot(base)
    schedule.set_model(model)
    for variable in base.weights:  # later changes do not move the anchors
        variable.assign(variable.numpy() + 1.0)
    assert set(schedule.anchors) == set(start)
    for path, value in start.items():
        np.testing.assert_array_equal(schedule.anchors[path], value)
    for bad in ("l2", {"l2sp": -1}, {"l1": 0.1}, 0.1):
        with pytest.raises(ConfigError, match="regularize"):
            tltf.FineTuneSettings(regularize=bad)


def test_a_search_over_where_to_unfreeze_trains_those_ranges(tmp_path):
    from tests import tuning_job

    train, val = make_data(n=48, seed=0), make_data(n=24, seed=1)
    result = tltf.tune(
        make_tiny_base(),
        train,
        val,
        search={
            **tuning_job.FIXED_HEAD,
            "unfreeze": 1,
            "fine_tune_lr": 1e-4,
            "unfreeze_offset": [0, 3],
        },
        tuner="grid",
        max_trials=2,
        head_epochs=1,
        fine_tune_epochs=1,
        directory=tmp_path,
        project_name="where",
        verbose=0,
        seed=0,
        batch_size=16,
    )
    unfrozen = sorted(row["unfrozen"] for row in result.table)
    assert unfrozen == ["block1", "block4"]  # the top block, or the bottom one


# -- bn="adapt" ---------------------------------------------------------------
def test_bn_adapt_re_estimates_the_statistics_on_the_training_images_then_freezes(
    data, capsys
):
    x, y = data
    model = make_tiny_model()
    info = model_info(model)
    bn = info.base.get_layer("block1_bn")
    conv = info.base.get_layer("block1_conv")
    # AdaBN: block1's BN statistics become those of its inputs on the training
    # images (conv output, in inference mode: the base is frozen).
    from tltf.layers import Preprocessing

    modes = [layer.mode for layer in model.layers if isinstance(layer, Preprocessing)]
    assert modes == ["none"]  # the base sees x as it is
    inputs = keras.Model(info.base.inputs[0], conv.output)(x).numpy()
    tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=2,
        bn="adapt",
        keep_best=False,
        seed=0,
    )
    printed = capsys.readouterr().out
    assert "bn='adapt'" in printed and "4 BatchNorm layers" in printed
    axes = (0, 1, 2)
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), inputs.mean(axes), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), inputs.var(axes), rtol=1e-3, atol=1e-3
    )
    # ... and frozen through stage 2: blocks 3-4 trained, their BN did not.
    assert tltf.trainable_blocks(model) == ["block3", "block4"]
    assert not info.base.get_layer("block4_bn").trainable
    with pytest.raises(ConfigError, match="adapt"):
        tltf.FineTuneSettings(bn="adapted")
