"""find_lr: the sweep, its restore guarantee, the suggestion rule, and "find"."""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

import tltf
import tltf.settings
from tests.helpers import make_data, make_tiny_base, variable_values
from tltf.errors import ConfigError, DataError, TrainingError
from tltf.lr_finder import SAFE_LR, _suggest, find_lr


def _trainable_map(model):
    layers = model._flatten_layers(include_self=True, recursive=True)
    return (
        [(layer.name, layer.trainable, "call" in layer.__dict__) for layer in layers],
        [(v.path, v.trainable) for v in model.variables],
    )


@pytest.mark.slow
def test_find_lr_restores_weights_trainability_and_optimizer(data):
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    # A non-trivial state: top block unfrozen with the "affine" BN policy (which
    # overrides BN calls), compiled, with an optimizer that has state.
    tltf.unfreeze(model, 1, bn="affine")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for v in optimizer.variables:
        v.assign(7 if "int" in str(v.dtype) else rng.random(v.shape).astype(v.dtype))
    before_vars = variable_values(model.variables)
    before_opt = variable_values(optimizer.variables)
    before_map = _trainable_map(model)
    iterations = int(optimizer.iterations.numpy())
    result = find_lr(
        model, data, stage="fine_tune", unfreeze="all", bn="train", steps=30, seed=0
    )
    assert len(result.lrs) >= 10 and np.ptp(result.losses) > 0  # it did train
    after_vars = variable_values(model.variables)
    assert len(after_vars) == len(before_vars)
    for a, b in zip(before_vars, after_vars, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: weights, BN stats, seeds
    assert _trainable_map(model) == before_map
    assert model.optimizer is optimizer
    assert int(optimizer.iterations.numpy()) == iterations
    for a, b in zip(before_opt, variable_values(optimizer.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tltf.trainable_blocks(model) == ["block4"]


@pytest.mark.slow
def test_find_lr_suggests_a_sane_rate_and_plots(tmp_path):
    data = make_data(128)
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    result = find_lr(model, data, stage="fine_tune", seed=0, verbose=0)
    assert 1e-4 <= result.suggestion <= 1e-1
    assert result.suggestion == pytest.approx(result.minimum / 10)
    # Learning happened: the smoothed loss at its minimum is well below the start.
    assert np.nanmin(result.smoothed) < 0.8 * result.smoothed[0]
    assert len(result.lrs) == len(result.losses) == len(result.smoothed)
    assert np.all(np.diff(np.log(result.lrs)) > 0)
    figure = result.plot(tmp_path / "lr.png")
    assert isinstance(figure, Figure) and (tmp_path / "lr.png").stat().st_size


def test_find_lr_stops_when_the_loss_diverges(data):
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    result = find_lr(
        model, data, optimizer="sgd", min_lr=1e-4, max_lr=1e3, steps=60, verbose=0
    )
    assert result.stopped_early
    assert len(result.lrs) < 60
    assert "diverged" in result.reason


def test_head_sweep_on_small_data_runs_the_base_once_per_batch():
    x, y = make_data(64)
    reads = []

    def examples():
        for i in range(len(x)):
            reads.append(i)
            yield x[i], y[i]

    spec = (tf.TensorSpec((16, 16, 3), tf.float32), tf.TensorSpec((), tf.int32))
    ds = (
        tf.data.Dataset.from_generator(examples, output_signature=spec)
        .apply(tf.data.experimental.assert_cardinality(len(x)))
        .batch(16)
    )
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    result = find_lr(model, ds, steps=40, verbose=0)
    assert len(result.lrs) > 4  # 40 steps over 4 cached batches
    assert sorted(reads) == list(range(64))  # the data was read once


def test_suggestion_rule_on_a_known_curve():
    lrs = np.geomspace(1e-6, 1.0, 61)
    losses = (np.log10(lrs) + 2) ** 2 + 1  # minimum at 1e-2
    result = _suggest(lrs, losses, losses, "head", False)
    assert result.minimum == pytest.approx(1e-2)
    assert result.suggestion == pytest.approx(1e-3)
    assert result.steepest < result.minimum
    assert not result.fallback and result.fall == pytest.approx(15 / 16, abs=0.05)
    falling = _suggest(lrs, 2 - lrs, 2 - lrs, "head", False)
    assert "raise max_lr" in falling.reason and not falling.fallback
    # A curve that rises from the start never fell: the stage's safe default.
    rising = _suggest(lrs, lrs + 1, lrs + 1, "fine_tune", True)
    assert rising.fallback and rising.suggestion == SAFE_LR["fine_tune"]
    # The fallbacks are fine_tune's own defaults (fine_tune_lr="auto" on fewer
    # than LARGE_SET_IMAGES images).
    defaults = tltf.FineTuneSettings()
    assert defaults.fine_tune_lr == "auto"
    small = tltf.settings.SMALL_SET_LR
    assert {"head": defaults.head_lr, "fine_tune": small} == SAFE_LR
    assert "never fell meaningfully" in rising.reason and "fallback" in rising.reason


def _ema(losses, beta=0.9):
    out, average = [], 0.0
    for i, value in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return np.asarray(out)


def test_noise_alone_is_not_a_fall_but_a_clear_fall_is():
    lrs = np.geomspace(1e-7, 1.0, 100)
    rng = np.random.default_rng(0)
    for seed in range(20):  # flat with 20% batch noise: never a suggestion
        noisy = 1 + 0.2 * np.random.default_rng(seed).standard_normal(100)
        result = _suggest(lrs, noisy, _ema(noisy), "head", False)
        assert result.fallback, (seed, result.reason)
        assert result.suggestion == SAFE_LR["head"] == 1e-3
    # The same noise on a loss that falls by a third before it rises is read.
    shape = np.where(lrs < 1e-2, 1 - 0.35 * np.clip(np.log10(lrs) + 5, 0, 3) / 3, 2)
    curve = shape + 0.2 * rng.standard_normal(100)
    result = _suggest(lrs, curve, _ema(curve), "head", True)
    assert not result.fallback and 1e-4 < result.suggestion < 1e-2, result.reason


def test_a_loss_that_never_falls_and_diverges_below_the_default_is_an_error():
    lrs = np.geomspace(1e-7, 1e-4, 40)
    losses = np.r_[np.ones(39), np.nan]
    with pytest.raises(TrainingError, match=r"never fell.*diverged at lr 1\.0e-04"):
        _suggest(lrs, losses, np.r_[np.ones(39), np.nan], "head", True)
    with pytest.raises(DataError, match="finite loss before the first update"):
        _suggest(lrs[:1], losses[-1:], losses[-1:], "head", True)


def test_a_model_that_already_fits_its_training_images_falls_back():
    # A converged head on a few images: the loss starts at 0, so the first rise
    # looks like divergence at the lowest rate. That is no error: there is
    # nothing to learn, and the stage's safe default is used.
    lrs = np.geomspace(1e-10, 4e-9, 23)
    losses = np.r_[np.zeros(22), 1e-7]
    result = _suggest(lrs, losses, losses, "fine_tune", True)
    assert result.fallback and result.suggestion == SAFE_LR["fine_tune"]
    assert "already 0 before the sweep" in result.reason


def _state(model):
    return variable_values(model.variables), _trainable_map(model)


def _assert_state(model, state):
    values, flags = state
    for a, b in zip(values, variable_values(model.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _trainable_map(model) == flags


@pytest.mark.slow
def test_sweep_widens_upward_when_the_loss_still_falls_at_max_lr(data):
    # The tiny head learns best near 1e-2 to 1e-1: below 1e-4 it hardly moves.
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    before = _state(model)
    result = find_lr(model, data, max_lr=1e-4, steps=30, seed=0, verbose=0)
    _assert_state(model, before)
    assert result.widened == ("up",) and not result.fallback
    assert result.lrs[0] == pytest.approx(1e-7)
    assert result.lrs[-1] == pytest.approx(1e-1)  # three more decades
    assert result.suggestion > 1e-4 / 10  # what it used to return
    assert "Widened up" in result.reason and "1.0e-07..1.0e-01" in result.reason
    steps = np.diff(np.log10(result.lrs))
    np.testing.assert_allclose(steps, 3 / 29)  # same steps per decade throughout
    # Going on is exact: the same curve as one sweep over the wider range.
    wide = find_lr(model, data, max_lr=1e-1, steps=59, seed=0, widen=0, verbose=0)
    np.testing.assert_allclose(wide.lrs, result.lrs, rtol=1e-9)
    np.testing.assert_allclose(wide.losses, result.losses, rtol=1e-5)
    # widen=0 keeps the asked range (and says the loss still fell at the top).
    narrow = find_lr(model, data, max_lr=1e-4, steps=30, seed=0, widen=0, verbose=0)
    assert narrow.widened == () and narrow.lrs[-1] == pytest.approx(1e-4)


@pytest.mark.slow
def test_sweep_widens_downward_when_the_loss_rises_from_the_start(data):
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    # A non-trivial state for the mid-sweep restore: one block unfrozen with the
    # "affine" BN policy, while the sweep trains all blocks with BN frozen.
    tltf.unfreeze(model, 1, bn="affine")
    before = _state(model)
    kwargs = dict(stage="fine_tune", seed=0, verbose=0)
    # Adam from lr 1 diverges at once on the tiny model; its best rate is ~5e-2.
    result = find_lr(model, data, min_lr=1.0, max_lr=1e3, steps=30, **kwargs)
    _assert_state(model, before)
    assert result.widened == ("down",) and not result.fallback
    assert result.lrs[0] == pytest.approx(1e-3)  # three decades lower
    assert result.suggestion < 1.0  # below the asked min_lr
    assert "Widened down" in result.reason and "restarted at 1.0e-03" in result.reason
    # The restart is a sweep from the model as it was: the same curve as asking
    # for the wider range at once.
    wide = find_lr(model, data, min_lr=1e-3, max_lr=1e3, steps=59, widen=0, **kwargs)
    _assert_state(model, before)
    n = len(result.lrs)
    np.testing.assert_allclose(wide.lrs[:n], result.lrs, rtol=1e-9)
    np.testing.assert_allclose(wide.losses[:n], result.losses, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["head", "fine_tune"])
def test_a_flat_curve_falls_back_to_the_stage_default(stage):
    # Blank images and a zero output kernel: every prediction is uniform, and no
    # rate can beat it on balanced labels.
    x, y = make_data()
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    kernel = model.get_layer("head_output").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    before = _state(model)
    result = find_lr(model, (np.zeros_like(x), y), stage=stage, steps=30, verbose=0)
    _assert_state(model, before)
    assert result.fallback and result.suggestion == SAFE_LR[stage]
    assert result.fall < 0.05
    assert "never fell meaningfully" in result.reason
    assert f"safe default for the {stage} stage" in result.reason


@pytest.mark.slow
def test_find_lr_validates_arguments(data):
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    with pytest.raises(ConfigError, match="stage"):
        find_lr(model, data, stage="body")
    with pytest.raises(ConfigError, match="min_lr < max_lr"):
        find_lr(model, data, min_lr=1.0, max_lr=1e-3)
    with pytest.raises(ConfigError, match="steps"):
        find_lr(model, data, steps=3)
    for widen in (-1, True, math.inf):
        with pytest.raises(ConfigError, match="widen"):
            find_lr(model, data, widen=widen)
    with pytest.raises(ConfigError, match=r"\[0, 4\]"):
        find_lr(model, data, stage="fine_tune", unfreeze=9)
    with pytest.raises(ConfigError, match="'find'"):
        tltf.fine_tune(model, data, head_lr="fnd")
    with pytest.raises(ConfigError, match="lr_finder_data"):
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(
            *data,
            epochs=1,
            verbose=0,
            callbacks=[tltf.FineTuneSchedule(0, fine_tune_lr="find")],
        )


@pytest.mark.slow
def test_fine_tune_finds_both_rates(capsys):
    data = make_data(96)
    model = tltf.build_model(make_tiny_base(), num_classes=3)
    history = tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        head_lr="find",
        fine_tune_lr="find",
        unfreeze=2,
        keep_best=False,  # stage 2 runs however well stage 1 did
        seed=0,
        verbose=2,
    )
    out = capsys.readouterr().out
    head = re.findall(r"head_lr='find' -> ([0-9.e+-]+)", out)
    stage2 = re.findall(r"fine_tune_lr='find' -> ([0-9.e+-]+)", out)
    assert len(head) == 1 and len(stage2) == 1
    assert history.history["stage"] == [1, 2]
    # The stage-2 line comes after stage 1 and before the stage-2 summary.
    assert out.index("stage 1 from") < out.index("fine_tune_lr='find'")
    assert out.index("fine_tune_lr='find'") < out.index("stage 2 from")
    rate = float(model.optimizer.learning_rate.numpy())
    assert rate == pytest.approx(float(stage2[0]), rel=0.06)  # 2 significant digits
    assert tltf.trainable_blocks(model) == ["block3", "block4"]


def test_a_multilabel_dataset_is_checked_by_its_columns():
    # Its element spec used to be checked as one label per image: find_lr
    # refused every multi-label tf.data input.
    x, y = make_data(24)
    rows = tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype="float32")[y]))
    model = tltf.build_model(make_tiny_base(), 3, task="multilabel")
    result = find_lr(model, rows.batch(8), verbose=0)
    assert result.suggestion > 0
    four = tf.data.Dataset.from_tensor_slices((x, np.eye(4, dtype="float32")[y]))
    with pytest.raises(DataError, match="targets of 3 columns, one per class"):
        find_lr(model, four.batch(8), verbose=0)
