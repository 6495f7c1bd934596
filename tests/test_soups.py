"""Greedy soups (Wortsman et al. 2022): `tltf.soup` and `TuneResult.soup`."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tltf
from tests import tuning_job
from tests.helpers import (
    NO_PIXELS,
    check_error,
    count_traces,
    make_data,
    make_tiny_model,
    raises,
)
from tltf.averaging import batchnorm_layers
from tltf.errors import ConfigError, ModelError
from tltf.tuning import TuneResult, tune


@pytest.fixture(scope="module")
def trained_weights():
    """The weights of a tiny model whose head trained on `make_data` (stage 1)."""
    keras.utils.set_random_seed(0)
    model = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(
        model,
        make_data(96),
        make_data(48, seed=1),
        head_epochs=4,
        fine_tune_epochs=0,
        verbose=0,
    )
    return model.get_weights()


def _model(weights, noise=0.0, seed=0, bn_shift=0.0, roll=0):
    """A tiny model with `weights`: Gaussian noise on every trainable weight, the
    head's classes rolled by `roll` (a wrong head), BN means shifted."""
    keras.utils.set_random_seed(0)
    model = make_tiny_model(head=NO_PIXELS)
    model.set_weights(weights)
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        value = variable.numpy()
        scale = noise * (value.std() + 1e-3)
        variable.assign(value + rng.normal(0, scale, value.shape).astype("float32"))
    head = model.get_layer("head_output")
    head.kernel.assign(np.roll(head.kernel.numpy(), roll, axis=1))
    head.bias.assign(np.roll(head.bias.numpy(), roll))
    for bn in batchnorm_layers(model):
        bn.moving_mean.assign(bn.moving_mean + bn_shift)
    return model


def _accuracy(model, data) -> float:
    return tltf.evaluate(model, data).accuracy


def test_soup_is_never_worse_than_its_best_ingredient(trained_weights):
    """Two good ingredients and three with a wrong head: their uniform average
    is wrong; the greedy soup keeps what helps."""
    val = make_data(48, seed=1)
    models = [
        _model(trained_weights, 0.3, seed, roll=roll)
        for seed, roll in enumerate((0, 1, 0, 1, 1))
    ]
    result = tltf.soup(models, val, verbose=0)
    own = {str(i): _accuracy(m, val) for i, m in enumerate(models)}
    assert result.metric == "accuracy"
    assert result.scores == pytest.approx(own)
    best = max(own.values())
    assert result.score >= best
    assert result.kept[0] in {n for n, s in own.items() if s == best}
    # The score is the returned model's own, on the data used to choose.
    assert _accuracy(result.model, val) == pytest.approx(result.score)
    # Every other ingredient was tried once, in order of its own score.
    assert sorted(row["ingredient"] for row in result.tried) == sorted(
        set(own) - {result.kept[0]}
    )
    tried = [own[row["ingredient"]] for row in result.tried]
    assert tried == sorted(tried, reverse=True)
    assert {row["ingredient"] for row in result.tried if row["kept"]} == set(
        result.kept[1:]
    )
    assert not all(row["kept"] for row in result.tried)
    assert result.model not in models
    assert "soup of" in result.summary()
    # The plain uniform average of all five would be worse than the best.
    uniform = tltf.interpolate(models[0], models[0], 0.0)
    uniform.set_weights(
        [
            np.mean(ws, axis=0)
            for ws in zip(*(m.get_weights() for m in models), strict=True)
        ]
    )
    assert _accuracy(uniform, val) < best


def test_soup_keeps_an_ingredient_when_the_score_does_not_drop(trained_weights):
    val = make_data(48, seed=1)
    a = _model(trained_weights)
    same = _model(trained_weights)  # the average of a and a is a: an equal score
    worse = _model(trained_weights, noise=5.0, seed=3)
    result = tltf.soup([worse, a, same], val, names=["w", "a", "a2"], verbose=0)
    assert result.kept == ("a", "a2")
    assert [r["kept"] for r in result.tried] == [True, False]
    for p, q in zip(result.model.get_weights(), a.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)
    # With the loss to choose by, the same soup.
    by_loss = tltf.soup([worse, a, same], val, metric="loss", verbose=0)
    assert by_loss.metric == "loss" and by_loss.kept == ("1", "2")
    assert by_loss.score <= min(by_loss.scores.values())


def test_soup_traces_one_prediction_step_for_all_its_ingredients(
    trained_weights, monkeypatch
):
    """One model, its weights set in turn, scores the ingredients and the averages:
    as many prediction traces for four ingredients as for one evaluation (10
    before, when each ingredient's model and the averaging model traced their own)."""
    val = make_data(48, seed=1)
    models = [_model(trained_weights, noise=0.3, seed=s) for s in range(4)]
    alone = count_traces(monkeypatch)
    tltf.evaluate(_model(trained_weights), val)
    one = alone["predict"]
    counts = count_traces(monkeypatch)
    result = tltf.soup(models, val, bn="keep", verbose=0)
    assert len(result.tried) == 3
    assert one >= 1 and counts["predict"] == one
    # The ingredients' own scores are those of the models themselves.
    for name, model in zip("0123", models, strict=True):
        assert result.scores[name] == _accuracy(model, val)


def test_soup_recalibrates_batchnorm_when_the_ingredients_statistics_differ(
    trained_weights,
):
    """The second ingredient's candidate (the average of two) is scored with its
    BN statistics re-estimated (bn="auto" when they differ, or "recalibrate"),
    or averaged ("keep", or "auto" when they are equal)."""
    val = make_data(48, seed=1)
    images = make_data(32, seed=5)[0]

    def candidate_loss(a, b, recalibrate):
        mixed = tltf.interpolate(a, b, 0.5)
        if recalibrate:
            tltf.recalibrate_bn(mixed, images)
        return tltf.evaluate(mixed, val).loss

    a = _model(trained_weights, 0.2, seed=1)
    b = _model(trained_weights, 0.2, seed=2, bn_shift=0.3)
    want = {True: candidate_loss(a, b, True), False: candidate_loss(a, b, False)}
    assert want[True] != pytest.approx(want[False])
    for bn, recalibrated in (("auto", True), ("recalibrate", True), ("keep", False)):
        result = tltf.soup([a, b], val, metric="loss", bn=bn, bn_data=images, verbose=0)
        assert result.tried[0]["score"] == pytest.approx(want[recalibrated], rel=1e-5)
        assert result.recalibrated == (recalibrated and len(result.kept) == 2)
    # Equal statistics (frozen BN): "auto" does not recalibrate.
    c = _model(trained_weights, 0.2, seed=2)
    result = tltf.soup([a, c], val, metric="loss", bn_data=images, verbose=0)
    assert result.tried[0]["score"] == pytest.approx(candidate_loss(a, c, False))


def test_soup_rejects_ingredients_of_another_architecture(trained_weights):
    val = make_data(16, seed=1)
    a = _model(trained_weights)
    keras.utils.set_random_seed(0)
    other = make_tiny_model(num_classes=3, head={"hidden_units": (4,), **NO_PIXELS})
    error = raises(ModelError, tltf.soup, [a, a, other], val, verbose=0)
    check_error(error, ModelError, "model '0'", "model '2'", "weight 27")
    for kwargs, word in (
        ({"metric": "acc"}, "metric"),
        ({"bn": "adapt"}, "bn"),
        ({"names": ["x"]}, "names"),
    ):
        error = raises(ConfigError, tltf.soup, [a, a], val, verbose=0, **kwargs)
        check_error(error, ConfigError, word)
    error = raises(ConfigError, tltf.soup, [], val)
    check_error(error, ConfigError, "non-empty")


def test_tune_result_without_a_tuner_cannot_soup():
    result = TuneResult(None, None, [], "val_accuracy")
    error = raises(ConfigError, result.soup, make_data(8))
    check_error(error, ConfigError, "no tuner")


@pytest.mark.slow
def test_tune_result_soups_the_best_compatible_trials(tmp_path):
    """A grid over the head's width (0 or 4 hidden units) and the unfrozen blocks:
    trials of the best one's width go in the soup, the others are left out."""
    train, val = tuning_job.data()
    result = tune(
        tuning_job.hypermodel(
            search={
                "head_dropout": 0.2,
                "head_units": [0, 4],
                "unfreeze": [1, 2],
                "fine_tune_lr": 1e-3,
            }
        ),
        train,
        val,
        tuner="grid",
        max_trials=4,
        directory=tmp_path,
        project_name="soup",
        verbose=0,
        seed=0,
    )
    rows = {r["trial"]: r for r in result.table}
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows.values())
    soup = result.soup(val, top=4, verbose=0)
    width = result.best_values["head_units"]
    same = {t for t, r in rows.items() if r["head_units"] == width}
    assert set(soup.scores) == same
    assert set(soup.left_out) == set(rows) - same
    assert soup.left_out  # the grid covered both widths
    assert soup.score >= max(soup.scores.values())
    # Each ingredient is its trial's checkpoint: scored as the tuner saved it.
    best_trial = result.tuner.oracle.get_best_trials(1)[0].trial_id
    assert soup.scores[best_trial] == pytest.approx(_accuracy(result.best_model, val))
    # The soup model comes back compiled, as best_model does.
    metrics = soup.model.evaluate(*val, verbose=0, return_dict=True)
    assert metrics["accuracy"] == pytest.approx(soup.score)
    error = raises(ConfigError, result.soup, val, top=0)
    check_error(error, ConfigError, "top")
