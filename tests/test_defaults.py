"""fine_tune's automatic defaults: a converged stage 1, probed depth and cut, the guard."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
import tltf.cache
import tltf.model
import tltf.probe
import tltf.schedule
import tltf.settings
from tests.helpers import (
    NO_PIXELS,
    CrashAt,
    PenaltySeen,
    count_probe_reads,
    make_data,
    make_tiny_base,
    make_tiny_model,
)
from tltf.cache import MIN_FALL_NATS, converged, is_cross_entropy
from tltf.errors import ConfigError
from tltf.heads import pixel_columns
from tltf.layers import Standardization
from tltf.model import model_info
from tltf.probe import probe_blocks, ridge_regression
from tltf.regularizers import head_l2
from tltf.schedule import prepare_head


def _train_loss(model, data) -> float:
    return float(model.evaluate(*data, verbose=0)[0])


def _useless_top(widths=(8, 8, 16, 16), batchnorm=True):
    """A tiny base whose top two blocks output a constant: they destroy everything."""
    base = make_tiny_base(widths=widths, batchnorm=batchnorm)
    for name in ("block3_conv", "block4_conv"):
        layer = base.get_layer(name)
        layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
        layer.bias.assign(np.ones(layer.bias.shape, "float32"))
    return base


@pytest.mark.slow
def test_auto_stage1_reaches_a_lower_training_loss_than_ten_epochs():
    data = make_data(48)
    losses = {}
    for epochs in (10, "auto"):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(head={"pool_from": "top"})
        history = tltf.fine_tune(
            model,
            data,
            head_epochs=epochs,
            fine_tune_epochs=0,
            head_init="random",  # the step budget alone (the ridge start: below)
            seed=0,
            verbose=0,
        )
        losses[epochs] = _train_loss(model, data)
        if epochs == "auto":
            # Budgeted in optimizer steps (2,000 by default), not in epochs:
            # 48 images are 2 batches a pass, so an epoch is 100 steps.
            steps = int(model.optimizer.iterations.numpy())
            assert steps == 100 * len(history.history["loss"])
            assert 300 <= steps <= 2000
    assert losses["auto"] < 0.5 * losses[10], losses


@pytest.mark.slow
def test_auto_stage1_stops_once_the_loss_has_converged():
    assert converged([1.0, 0.5, 0.3, 0.299, 0.2985], 0.01)
    assert not converged([1.0, 0.5, 0.3, 0.25, 0.2], 0.01)
    assert not converged([1.0, 0.5], 0.01)
    # A third of the labels are noise, on 16 times as many images as the head
    # has features: the loss has a floor, which it reaches (on 48 images the
    # noisy labels can be fit, and only dropout's noise kept a floor).
    x, y = make_data(768)
    y = y.copy()
    y[::3] = np.random.default_rng(0).integers(0, 3, size=len(y[::3]))
    model = make_tiny_model()
    history = tltf.fine_tune(
        model,
        (x, y),
        head_epochs="auto",
        head_steps=4000,
        fine_tune_epochs=1,
        unfreeze=1,
        head_init="random",
        seed=0,
        verbose=0,
    )
    stages = history.history["stage"]
    head = stages.count(1)
    # 4,000 steps would be 20 epochs of 200; it stopped before (10 epochs).
    assert 3 <= head < 20, history.history["loss"]
    assert stages == [1] * head + [2]
    assert converged(history.history["loss"][:head], 0.01)


@pytest.mark.slow
def test_auto_stage1_stops_once_a_cross_entropy_falls_by_under_a_millinat():
    assert converged([0.02, 0.006, 0.003, 0.0025, 0.002], 0.01, min_fall=1e-3)
    assert not converged([0.02, 0.006, 0.003, 0.0025, 0.002], 0.01)
    assert is_cross_entropy("sparse_categorical_crossentropy")
    assert is_cross_entropy(keras.losses.BinaryCrossentropy(from_logits=True))
    assert is_cross_entropy(keras.losses.sparse_categorical_crossentropy)
    assert not is_cross_entropy(keras.losses.MeanSquaredError())
    # Separable images: from the ridge start every training image already has its
    # label, and the loss goes on falling toward 0 by more than 1% an epoch (for
    # 12 epochs of 100 steps here without the absolute floor). Once it falls by
    # under a millinat an epoch, stage 1 has converged: 6 epochs here.
    history = tltf.fine_tune(
        make_tiny_model(), make_data(48), fine_tune_epochs=0, seed=0, verbose=0
    )
    losses = history.history["loss"]
    assert 3 <= len(losses) <= 8, losses
    assert losses[-1] < 0.01, losses
    assert converged(losses, 0.01, min_fall=MIN_FALL_NATS)
    assert not converged(losses, 0.01), losses  # 1% alone would have run on


@pytest.mark.slow
def test_the_head_starts_from_the_ridge_classifier(capsys):
    data = make_data(48, seed=3)
    losses = {}
    for init in ("random", "ridge"):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        tltf.fine_tune(
            model, data, head_epochs=1, fine_tune_epochs=0, head_init=init, verbose=1
        )
        losses[init] = _train_loss(model, data)
    # One epoch (2 steps) from the closed-form start is far ahead of a random start.
    assert losses["ridge"] < 0.5 * losses["random"], losses
    assert "head starts from the ridge classifier" in capsys.readouterr().out
    # A head with hidden layers starts as Keras initialised it.
    model = make_tiny_model(head={"hidden_units": [8]})
    out = model.get_layer("head_output").kernel.numpy().copy()
    features = tltf.cache.feature_model(model).predict(data[0], verbose=0)
    assert prepare_head(model, features, data[1]) is None
    assert model.get_layer("head_standardize").is_set
    np.testing.assert_array_equal(model.get_layer("head_output").kernel.numpy(), out)


def test_the_default_head_trains_on_from_its_ridge_start_without_dropout():
    """Stage 1's first epoch, at a rate too small to move the weights, has the
    ridge start's own loss: the default head has no dropout to add noise to
    the ridge weights (with `dropout=0.2` the same epoch's loss is higher;
    on 4,800 texture images 15.9 against 0.58, benchmarks/head_dropout.py)."""
    data = make_data(96, seed=3)
    rises = {}
    for head in (None, {"dropout": 0.2}):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(head=head)
        history = tltf.fine_tune(
            model,
            data,
            head_epochs=1,
            fine_tune_epochs=0,
            head_lr=1e-7,
            keep_best=False,
            seed=0,
            verbose=0,
        )
        rises[str(head)] = history.history["loss"][0] / _train_loss(model, data)
        dropouts = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        assert bool(dropouts) == (head is not None)
    assert rises["None"] == pytest.approx(1.0, abs=0.005), rises
    assert rises[str({"dropout": 0.2})] > 1.05, rises


def _other_task_data(task, n=48, seed=0):
    """`make_data` images with regression targets (the bright channel plus noise)
    or multi-label rows (the bright channel, and whether it is not channel 0)."""
    x, y = make_data(n, seed=seed)
    if task == "regression":
        noise = np.random.default_rng(seed).normal(0, 0.1, n)
        return x, (2.0 * y + 5.0 + noise).astype("float32")[:, None]
    return x, np.stack([y == 0, y == 1, y == 2, y != 0], axis=1).astype("float32")


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_regression_and_multilabel_heads_start_from_the_ridge_fit(task, capsys):
    x, t = _other_task_data(task)
    units = t.shape[1]
    losses = {}
    for init in ("random", "ridge"):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(units, task=task)
        tltf.fine_tune(
            model,
            (x, t),
            head_epochs=1,
            fine_tune_epochs=0,
            head_init=init,
            verbose=1,
        )
        losses[init] = _train_loss(model, (x, t))
    # One epoch (2 steps) from the closed-form start is far ahead of a random one.
    assert losses["ridge"] < 0.5 * losses["random"], losses
    words = "ridge regression" if task == "regression" else "a ridge fit per label"
    assert f"head starts from {words}" in capsys.readouterr().out
    # Before any step the head is the closed-form fit on the standardised
    # features: for regression the ridge regression itself.
    keras.utils.set_random_seed(0)
    model = make_tiny_model(units, task=task)
    features = tltf.cache.feature_model(model).predict(x, verbose=0)
    assert prepare_head(model, features, t) is not None
    layer = model.get_layer("head_standardize")
    z = (features - layer.mean.numpy()) * layer.scale.numpy()
    fit = ridge_regression(z, t)
    predictions = model.predict(x, verbose=0)
    if task == "regression":
        np.testing.assert_allclose(
            predictions, z @ fit.weights + fit.prior, rtol=1e-3, atol=1e-3
        )
        assert np.sqrt(np.mean((predictions - t) ** 2)) < 0.5  # targets span 4
    else:  # sigmoid outputs, one per label, calibrated on leave-one-out scores
        assert np.all((predictions > 0.5) == (t > 0.5))
        bce = -np.mean(t * np.log(predictions) + (1 - t) * np.log(1 - predictions))
        assert bce < 0.3, bce


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_a_ridge_started_head_trains_on_with_an_l2_penalty(task, monkeypatch, capsys):
    """Stage 1 keeps the regularisation of the ridge start (`HeadL2`): on 24
    images with more pooled features than images its steps would fit noise
    ever more closely. The penalty is on the head's kernel only while
    fine_tune trains."""
    x, t = _other_task_data(task, n=24, seed=3)
    rng = np.random.default_rng(3)
    t = rng.permutation(t)  # targets unrelated to the images: nothing to learn
    results = {}
    for penalty in (True, False):
        if not penalty:
            monkeypatch.setattr(tltf.schedule, "attach_head_l2", lambda *a: False)
        seen = PenaltySeen()
        keras.utils.set_random_seed(0)
        model = make_tiny_model(t.shape[1], task=task)
        tltf.fine_tune(
            model,
            (x, t),
            head_epochs=100,  # the same 300 steps with and without the penalty
            head_lr=0.03,
            fine_tune_epochs=0,
            batch_size=8,
            keep_best=False,
            callbacks=[seen],
            verbose=1 if penalty else 0,
        )
        kernel = model.get_layer("head_output").kernel.numpy()
        results[penalty] = (np.linalg.norm(kernel), _train_loss(model, (x, t)))
        if penalty:
            n_units = 24 * t.shape[1]
            if task == "regression":
                strength = _ridge_strength(model, x, t) / n_units
            else:  # scikit-learn's default C=1, per label
                strength = 1 / (2 * n_units)
            assert seen.strengths
            assert all(s == pytest.approx(strength) for s in seen.strengths)
            assert f"an L2 penalty of {strength:.3g} on its kernel" in (
                capsys.readouterr().out
            )
            # Gone once fine_tune returns: not in the model, not in its config.
            assert head_l2(model) is None
            output = model.get_layer("head_output")
            assert output.kernel.regularizer is None
            assert output.get_config()["kernel_regularizer"] is None
    # The penalised head is smaller and fits the noise less closely.
    (norm, loss), (plain_norm, plain_loss) = results[True], results[False]
    assert norm < 0.6 * plain_norm, results
    assert loss > 1.5 * plain_loss, results


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_a_separable_task_starts_calibrated_not_saturated(task):
    """Leave-one-out scores that separate the classes perfectly once scaled the
    ridge start to logits of hundreds: probabilities of exactly 0 and 1, a
    training loss near 1e-30, and no gradient left for stage 1 or stage 2.
    Platt's targets bound the scale: a class of 8 images gets about 9/10."""
    x, y = make_data(24, seed=3)  # 3 classes of 8 images
    if task == "binary":
        x, y = x[y < 2], y[y < 2]
    labels = np.eye(3, dtype="float32")[y] if task == "multilabel" else y
    keras.utils.set_random_seed(0)
    model = make_tiny_model(None if task == "binary" else 3, task=task)
    features = tltf.cache.feature_model(model).predict(x, verbose=0)
    assert "accuracy 1.000" in prepare_head(model, features, labels)  # separable
    p = model.predict(x, verbose=0)
    if task == "binary":
        right = np.where(y == 1, p[:, 0], 1 - p[:, 0])
    elif task == "multilabel":
        right = np.where(labels > 0.5, p, 1 - p)
    else:
        right = p[np.arange(len(y)), y]
    assert right.min() > 0.8, right.min()
    assert right.max() < 0.97, right.max()  # 1.0 before
    assert np.mean(right) == pytest.approx(0.9, abs=0.04)
    if task == "multiclass":  # stage 1 has a loss to lower (1e-30 before)
        keras.utils.set_random_seed(0)
        model = make_tiny_model(3)
        history = tltf.fine_tune(
            model, (x, y), head_epochs=1, fine_tune_epochs=0, verbose=0
        )
        assert history.history["loss"][0] > 0.01, history.history["loss"]


def test_a_multilabel_head_starts_at_the_label_frequencies_where_features_do_not_help():
    """Labels the features cannot predict start at their frequencies, not at
    logits of hundreds (the calibration's Newton steps once overshot there)."""
    x, t = _other_task_data("multilabel", n=24, seed=3)
    t = np.random.default_rng(3).permutation(t)
    model = make_tiny_model(4, task="multilabel")
    features = tltf.cache.feature_model(model).predict(x, verbose=0)
    assert prepare_head(model, features, t) is not None
    predictions = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        predictions, np.broadcast_to(t.mean(0), t.shape), atol=0.1
    )
    bce = -np.mean(t * np.log(predictions) + (1 - t) * np.log(1 - predictions))
    frequency = t.mean(0)
    entropy = -np.mean(
        frequency * np.log(frequency) + (1 - frequency) * np.log(1 - frequency)
    )
    assert bce < entropy + 0.05, (bce, entropy)


def _ridge_strength(model, x, t) -> float:
    """The L2 strength the ridge start chose, from the model's head features."""
    features = tltf.cache.feature_model(model).predict(x, verbose=0)
    layer = model.get_layer("head_standardize")
    z = (features - layer.mean.numpy()) * layer.scale.numpy()
    return ridge_regression(z, t).l2


@pytest.mark.parametrize(
    "task, strength, expected",
    [
        ("multilabel", 0, None),  # off
        ("multilabel", 0.01, 0.01),  # a strength of one's own
        ("classification", "auto", None),  # "auto": none for a classifier
        ("classification", 0.01, 0.01),
    ],
)
def test_head_l2_sets_the_penalty_or_turns_it_off(task, strength, expected):
    if task == "multilabel":
        x, t = _other_task_data(task, n=24)
        model = make_tiny_model(4, task=task)
    else:
        x, t = make_data(24)
        model = make_tiny_model()
    seen = PenaltySeen()
    tltf.fine_tune(
        model,
        (x, t),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        head_l2=strength,
        callbacks=[seen],
        keep_best=False,  # stage 2 runs however well stage 1 did
        verbose=0,
    )
    assert seen.strengths == [expected, expected]  # both stages
    assert head_l2(model) is None


def test_head_l2_is_detached_when_fine_tune_fails():
    x, t = _other_task_data("multilabel", n=24)
    model = make_tiny_model(4, task="multilabel")
    with pytest.raises(RuntimeError, match="simulated crash"):
        tltf.fine_tune(model, (x, t), callbacks=[CrashAt(1)], verbose=0)
    assert model.get_layer("head_standardize").is_set  # the ridge start ran
    assert head_l2(model) is None


@pytest.mark.slow
def test_standardization_is_set_from_the_training_features_and_saved(tmp_path):
    data = make_data(48)
    model = make_tiny_model()
    layer = model.get_layer("head_standardize")
    assert isinstance(layer, Standardization) and not layer.is_set
    # A random head start: the ridge start would also scale each block by its
    # weight (tests/test_head_weights.py), and this test checks the statistics.
    tltf.fine_tune(
        model, data, head_epochs=1, fine_tune_epochs=0, head_init="random", verbose=0
    )
    features = tltf.cache.feature_model(model).predict(data[0], verbose=0)
    np.testing.assert_allclose(
        layer.mean.numpy(), features.mean(0), rtol=1e-4, atol=1e-4
    )
    pixels = pixel_columns(model)  # muted without the ridge start
    np.testing.assert_allclose(
        layer.scale.numpy()[: pixels.start],
        1 / (features[:, : pixels.start].std(0) + 1e-3),
        rtol=1e-3,
    )
    np.testing.assert_array_equal(layer.scale.numpy()[pixels], 0.0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = tltf.load_model(path)  # safe_mode=True: no Lambda anywhere
    assert loaded.get_layer("head_standardize").is_set
    np.testing.assert_allclose(
        loaded.predict(data[0], verbose=0), model.predict(data[0], verbose=0), atol=1e-6
    )
    # A second fine_tune keeps the statistics the head was trained with.
    before = layer.mean.numpy().copy()
    tltf.fine_tune(
        model, make_data(48, seed=5), head_epochs=1, fine_tune_epochs=0, verbose=0
    )
    np.testing.assert_array_equal(layer.mean.numpy(), before)


def test_the_uncached_path_sets_the_statistics_too():
    data = make_data(48)
    model = make_tiny_model()
    tltf.fine_tune(
        model, data, head_epochs=1, fine_tune_epochs=0, cache_features=False, verbose=0
    )
    assert model.get_layer("head_standardize").is_set


@pytest.mark.slow
def test_auto_cut_and_unfreeze_follow_the_probe_when_the_top_blocks_are_useless(
    capsys,
):
    data = make_data(60)
    probe = probe_blocks(_useless_top(), data, verbose=0)
    assert probe.scoring == "leave-one-out" and probe.num_train == 60
    # The best (shallowest on ties) block: the two above block2 are constant.
    assert probe.cut == probe.best["block"] in ("block1", "block2")
    kept = ["block1", "block2"][: 1 + ["block1", "block2"].index(probe.cut)]
    cut = tltf.build_model(_useless_top(), 3, cut="auto", data=data)
    assert model_info(cut).block_map.names == kept
    assert f"cut='auto' -> {probe.cut!r}" in capsys.readouterr().out
    # On the whole base, unfreeze="auto" adapts the blocks above the best one.
    model = make_tiny_model(base=_useless_top(), head={"pool_from": "top", **NO_PIXELS})
    tltf.fine_tune(model, data, head_epochs=1, fine_tune_epochs=1, verbose=1)
    above = ["block2", "block3", "block4"][len(kept) - 1 :]
    assert tltf.trainable_blocks(model) == above
    out = capsys.readouterr().out
    assert f"unfreeze='auto' -> {len(above)} of 4 blocks" in out and "cut='auto'" in out


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_auto_cut_and_unfreeze_probe_regression_and_multilabel_by_r2(task, capsys):
    # Not the top third of the blocks (which would be 1 of 4): the blocks above
    # the best one, as the probe's R² says.
    x, t = _other_task_data(task, n=60)
    probe = probe_blocks(_useless_top(), (x, t), task=task, verbose=0)
    assert probe.metric == "r2" and probe.cut in ("block1", "block2")
    cut = tltf.build_model(
        _useless_top(), t.shape[1], task=task, cut="auto", data=(x, t)
    )
    assert model_info(cut).block_map.names[-1] == probe.cut
    assert "leave-one-out R² of a linear probe" in capsys.readouterr().out
    model = make_tiny_model(t.shape[1], task=task, base=_useless_top())
    tltf.fine_tune(model, (x, t), head_epochs=1, fine_tune_epochs=1, verbose=1)
    above = ["block2", "block3", "block4"][["block1", "block2"].index(probe.cut) :]
    assert tltf.trainable_blocks(model) == above
    out = capsys.readouterr().out
    assert f"unfreeze='auto' -> {len(above)} of 4 blocks" in out and "R²" in out


@pytest.mark.slow
def test_auto_cut_and_unfreeze_probe_a_sample_of_a_large_training_set(
    monkeypatch, capsys
):
    # PROBE_IMAGES (2,000) made 40, so that 96 images are a large training set.
    monkeypatch.setattr(tltf.schedule, "PROBE_IMAGES", 40)
    monkeypatch.setattr(tltf.model, "PROBE_IMAGES", 40)
    probed = count_probe_reads(monkeypatch)
    data = make_data(96)
    tltf.build_model(_useless_top(), 3, cut="auto", data=data)
    # 20 of each class of 32 (PROBE_PER_CLASS): more than 40 / 96 of them.
    assert sum(probed) == 60
    assert "on a seeded sample of 60 of 96 training images" in capsys.readouterr().out
    depths = []
    for _ in range(2):  # seeded: the same sample and depth each time
        probed.clear()
        model = make_tiny_model(base=_useless_top())
        tltf.fine_tune(model, data, head_epochs=1, fine_tune_epochs=1, verbose=1)
        out = capsys.readouterr().out
        # The guard holds 18 of the 96 out; the probe reads 60 of the other 78.
        assert sum(probed) == 60
        assert "(probe of a seeded sample of 60 of 78 training images: " in out
        depths.append(out.split("unfreeze='auto' -> ")[1].split(" blocks:")[0])
    assert depths[0] == depths[1] in ("2 of 4", "3 of 4")  # above block1 or 2
    # A tf.data input, not read for a slice (keep_best=False): its labels are
    # not known before a pass, so each image is drawn with chance 40 / 96.
    probed.clear()
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(16)
    tltf.fine_tune(
        make_tiny_model(base=_useless_top()),
        dataset,
        head_epochs=1,
        fine_tune_epochs=1,
        keep_best=False,
        verbose=1,
    )
    assert 20 <= sum(probed) <= 60
    assert f"sample of {sum(probed)} of 96 training images" in capsys.readouterr().out
    # At most PROBE_IMAGES training images: all of them, and no sample named.
    monkeypatch.setattr(tltf.schedule, "PROBE_IMAGES", 78)
    probed.clear()
    tltf.fine_tune(
        make_tiny_model(base=_useless_top()),
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        verbose=1,
    )
    assert sum(probed) == 78 and "sample" not in capsys.readouterr().out


class _StageTwo(keras.callbacks.Callback):
    """The blocks stage 2 trains and the optimizer's rate, at its first batch
    (the guard may end the run with stage 1's frozen base)."""

    def __init__(self):
        super().__init__()
        self.blocks, self.rate = [], None

    def on_train_batch_begin(self, batch, logs=None):
        blocks = tltf.trainable_blocks(self.model)
        if blocks and self.rate is None:
            self.blocks = blocks
            self.rate = float(self.model.optimizer.learning_rate.numpy())


@pytest.mark.slow
def test_a_large_training_set_fine_tunes_every_block_at_a_higher_rate(
    monkeypatch, capsys
):
    # LARGE_SET_IMAGES (1,000) made 60. The held-out slice counts: 60 images are
    # a large set although 48 of them train until the hand-back.
    monkeypatch.setattr(tltf.settings, "LARGE_SET_IMAGES", 60)

    def run(data, batchnorm=True, **kwargs):
        seen = _StageTwo()
        tltf.fine_tune(
            make_tiny_model(base=_useless_top(batchnorm=batchnorm)),
            data,
            head_epochs=1,
            fine_tune_epochs=1,
            callbacks=[seen],
            verbose=1,
            **kwargs,
        )
        return seen.blocks, seen.rate, capsys.readouterr().out

    def noisy(n):  # every fifth label wrong, so that stage 1 leaves errors
        x, y = make_data(n)
        y[::5] = (y[::5] + 1) % 3
        return x, y

    blocks, rate, out = run(noisy(60))
    assert blocks == ["block1", "block2", "block3", "block4"]
    assert rate == pytest.approx(3e-4)
    size = "a training set of 60 images (60 or more) and 20 a class (15 or more)"
    assert f"fine_tune_lr='auto' -> 0.0003: {size}." in out
    assert f"unfreeze='auto' -> 4 of 4 blocks: {size} fine-tunes every block" in out
    # The probe still runs, and its line says what it alone would adapt.
    assert "the probe alone would adapt 2" in out or "alone would adapt 3" in out
    # One image fewer: the probe's depth (above the best block), at 1e-4.
    blocks, rate, out = run(noisy(59))
    assert blocks in (["block2", "block3", "block4"], ["block3", "block4"])
    assert rate == pytest.approx(1e-4) and "fine_tune_lr" not in out
    # A classifier's large set needs LARGE_SET_PER_CLASS (15, made 21) a class
    # too: 60 images of 3 classes, 20 a class, get the probe's depth at 1e-4.
    with monkeypatch.context() as patch:
        patch.setattr(tltf.settings, "LARGE_SET_PER_CLASS", 21)
        blocks, rate, out = run(noisy(60))
    assert blocks in (["block2", "block3", "block4"], ["block3", "block4"])
    assert rate == pytest.approx(1e-4) and "fine_tune_lr" not in out
    assert (
        "a training set of 60 images (60 or more) but 20 a class (under 21) takes "
        "the probe's depth" in out
    )
    # A classifier whose probe's best block already scores SATURATED_PROBE
    # (0.95; made 0.5, where these noisy labels probe at about 0.8) keeps the
    # probe's depth at 1e-4, large set or not.
    with monkeypatch.context() as patch:
        patch.setattr(tltf.settings, "SATURATED_PROBE", 0.5)
        blocks, rate, out = run(noisy(60))
    assert blocks in (["block2", "block3", "block4"], ["block3", "block4"])
    assert rate == pytest.approx(1e-4) and "fine_tune_lr" not in out
    assert f"{size}, but its best block already scores 0." in out
    assert "(0.5 or more), so the probe's depth: " in out
    # A base without normalization layers (as VGG) keeps the probe's depth at
    # 1e-4, a depth the user set too (LARGE_SET_NEEDS_NORMALIZATION).
    blocks, rate, out = run(noisy(60), batchnorm=False)
    assert blocks in (["block2", "block3", "block4"], ["block3", "block4"])
    assert rate == pytest.approx(1e-4) and "fine_tune_lr" not in out
    assert (
        f"{size} but on a base without normalization layers (tiny) takes the "
        "probe's depth: " in out
    )
    blocks, rate, _ = run(noisy(60), batchnorm=False, unfreeze=1)
    assert blocks == ["block4"] and rate == pytest.approx(1e-4)
    with monkeypatch.context() as patch:
        patch.setattr(tltf.settings, "LARGE_SET_NEEDS_NORMALIZATION", False)
        blocks, rate, _ = run(noisy(60), batchnorm=False)
    assert len(blocks) == 4 and rate == pytest.approx(3e-4)
    # A tf.data input, not read for a slice: of a known number of batches,
    # that number times the first batch's rows (4 x 16: "about"); a rate the
    # user set stays.
    dataset = tf.data.Dataset.from_tensor_slices(noisy(60)).batch(16)
    blocks, rate, out = run(dataset, keep_best=False, fine_tune_lr=1e-5)
    assert len(blocks) == 4 and rate == pytest.approx(1e-5)
    assert "fine_tune_lr=" not in out and "a training set of about 64 images" in out
    # Of an unknown number of batches too (fine_tune counts the batches of
    # such an input in one pass of its pipeline before anything trains).
    unknown = dataset.filter(lambda x, y: True)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    blocks, rate, out = run(unknown, keep_best=False)
    assert len(blocks) == 4 and rate == pytest.approx(3e-4)
    assert "fine_tune_lr='auto' -> 0.0003: a training set of about 64 images" in out
    # A depth the user set stays too, at the large set's rate.
    blocks, rate, _ = run(noisy(60), unfreeze=1)
    assert blocks == ["block4"] and rate == pytest.approx(3e-4)


def test_cut_auto_needs_data():
    with pytest.raises(ConfigError, match="needs the training data"):
        tltf.build_model(make_tiny_base(), 3, cut="auto")
    with pytest.raises(ConfigError, match="only used with cut='auto'"):
        tltf.build_model(make_tiny_base(), 3, data=make_data(8))


@pytest.mark.slow
def test_the_probe_has_a_raw_pixel_row_and_fine_tune_says_when_the_base_is_useless(
    capsys,
):
    data = make_data(60)
    base = make_tiny_base()
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    probe = probe_blocks(base, data, verbose=0)
    assert probe.pixels["block"] == "pixels"
    assert probe.pixels["val_accuracy"] > 0.9  # the classes are a channel's mean
    assert not probe.base_helps
    assert "raw pixels" in str(probe) or "pixels" in str(probe)
    model = make_tiny_model(base=base)
    tltf.fine_tune(model, data, head_epochs=1, fine_tune_epochs=1, verbose=1)
    assert "this base adds little or nothing" in capsys.readouterr().out


class Wreck(keras.callbacks.Callback):
    """Makes stage 2 'diverge': zeroes blocks' kernels after each of its batches
    (the top two by default; `every=True`: all four, so that no block's
    features are left for a head that reads them all)."""

    def __init__(self, every=False):
        super().__init__()
        self.names = [f"block{i}_conv" for i in ((1, 2, 3, 4) if every else (3, 4))]

    def on_train_begin(self, logs=None):
        # A closed-form stage 1 (no epochs) ends before training begins.
        self.stage_one = [np.array(v.numpy()) for v in self.model.variables]

    def on_epoch_begin(self, epoch, logs=None):
        self.in_stage_two = bool(tltf.trainable_blocks(self.model))

    def on_epoch_end(self, epoch, logs=None):
        if logs.get("stage") == 1:
            self.stage_one = [np.array(v.numpy()) for v in self.model.variables]

    def on_train_batch_end(self, batch, logs=None):
        if self.in_stage_two:
            for name in self.names:
                kernel = model_info(self.model).base.get_layer(name).kernel
                kernel.assign(np.zeros(kernel.shape, "float32"))


def _assert_base_is_stage_one(model, wreck) -> None:
    """Every variable of the base equals stage 1's, bit for bit."""
    base = model_info(model).base
    compared = 0
    for got, want in zip(model.variables, wreck.stage_one, strict=True):
        if any(got is v for v in base.variables):
            np.testing.assert_array_equal(got.numpy(), want)
            compared += 1
    assert compared == len(base.variables) > 0


@pytest.mark.slow
@pytest.mark.parametrize("head_steps", [400, 0])
@pytest.mark.parametrize("score", ["val_loss", "features", "holdout"])
def test_keep_best_restores_stage1_when_stage2_is_made_to_diverge(
    score, head_steps, capsys
):
    # Stage 1 ends with the head trained on from the ridge start, or with
    # head_steps=0 with the closed-form ridge head (no epochs): the guard keeps
    # either, also by an evaluation of the validation data when stage 1 had no
    # epochs to log it. Without validation data it scores a held-out slice of
    # the training images (the default) or the leave-one-out accuracy of the
    # features.
    data = make_data(48)
    model = make_tiny_model(head={"pool_from": "top", **NO_PIXELS})
    wreck = Wreck()
    tltf.fine_tune(
        model,
        data,
        data if score == "val_loss" else None,
        head_epochs="auto",
        head_steps=head_steps,
        fine_tune_epochs=2,
        unfreeze=2,
        keep_best=True if score == "val_loss" else score,
        callbacks=[wreck],
        verbose=1,
    )
    out = capsys.readouterr().out
    assert "keep_best: restored the weights of the end of stage 1" in out
    assert ("val_loss" in out) == (score == "val_loss")
    if score != "holdout":
        for got, want in zip(model.variables, wreck.stage_one, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)
        return
    # The held-out slice scored it, then joined the rest for a closed-form refit
    # of the head: the base is stage 1's, bit for bit.
    assert "accuracy on 9 held-out training images" in out
    assert "handed the 9 held-out images back" in out
    _assert_base_is_stage_one(model, wreck)


def _wrecked_run(model, data, keep_best, wreck) -> None:
    """A short verbose run whose stage 2 `wreck` makes diverge."""
    tltf.fine_tune(
        model,
        data,
        head_steps=400,
        fine_tune_epochs=2,
        unfreeze=2,
        keep_best=keep_best,
        callbacks=[wreck],
        verbose=1,
    )


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_the_held_out_guard_restores_stage1_of_other_tasks_too(task, capsys):
    # Without validation data a regression run holds out a random slice (a
    # multi-label one when asked to: by default it costs more than it saves),
    # scores stage 2 on it (mean squared error, label accuracy), and hands it
    # back to a closed-form refit of the head.
    x, t = _other_task_data(task)
    model = make_tiny_model(t.shape[1], task=task)
    wreck = Wreck(every=True)  # the head reads every block
    _wrecked_run(model, (x, t), True if task == "regression" else "holdout", wreck)
    out = capsys.readouterr().out
    assert "10 of 48 training images (a random slice) are held out" in out
    assert "keep_best: restored the weights of the end of stage 1" in out
    what = "mean squared error" if task == "regression" else "label accuracy"
    assert f"{what} on 10 held-out training images" in out
    assert "handed the 10 held-out images back" in out
    _assert_base_is_stage_one(model, wreck)
    # The refit head is the closed-form fit on all 48 images.
    predictions = model.predict(x, verbose=0)
    if task == "regression":
        assert np.sqrt(np.mean((predictions - t) ** 2)) < 0.5
    else:
        assert np.all((predictions > 0.5) == (t > 0.5))
        tltf.fine_tune(
            make_tiny_model(t.shape[1], task=task),
            (x, t),
            head_steps=10,
            fine_tune_epochs=1,
            verbose=1,
        )
        out = capsys.readouterr().out
        # By default it holds nothing out; the features guard scores it.
        assert "held out" not in out
        assert "leave-one-out R² of the features" in out


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_head_steps_0_leaves_the_closed_form_head_alone(cache, capsys):
    """head_steps=0: stage 1 is the ridge classifier; stage 2 starts from it."""
    x, y = make_data(48)
    keras.utils.set_random_seed(0)
    reference = make_tiny_model()
    features = tltf.cache.feature_model(reference).predict(x, verbose=0)
    assert prepare_head(reference, features, y) is not None
    keras.utils.set_random_seed(0)
    model = make_tiny_model()
    history = tltf.fine_tune(
        model, (x, y), head_steps=0, fine_tune_epochs=0, cache_features=cache, verbose=1
    )
    assert history.history.get("loss", []) == []
    assert int(model.optimizer.iterations.numpy()) == 0
    np.testing.assert_allclose(
        model.get_layer("head_output").kernel.numpy(),
        reference.get_layer("head_output").kernel.numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
    out = capsys.readouterr().out
    assert "stage 1 (no epochs): head only, solved in closed form" in out
    assert "head_steps=0: no gradient steps, stage 2 starts from it" in out
    # Stage 2 follows at once, epochs 1..N; by default the head trains on first.
    keras.utils.set_random_seed(0)
    history = tltf.fine_tune(
        make_tiny_model(),
        (x, y),
        head_steps=0,
        fine_tune_epochs=2,
        unfreeze=1,
        cache_features=cache,
        verbose=0,
    )
    assert history.history["stage"] == [2, 2]
    history = tltf.fine_tune(
        make_tiny_model(),
        (x, y),
        fine_tune_epochs=1,
        unfreeze=1,
        keep_best=False,  # stage 2 runs however well stage 1 did
        verbose=0,
    )
    assert history.history["stage"][0] == 1 and history.history["stage"][-1] == 2


def test_keep_best_false_keeps_the_wrecked_weights():
    data = make_data(48)
    model = make_tiny_model(head={"pool_from": "top", **NO_PIXELS})
    wreck = Wreck()
    tltf.fine_tune(
        model,
        data,
        head_epochs=2,
        fine_tune_epochs=1,
        unfreeze=2,
        keep_best=False,
        callbacks=[wreck],
        verbose=0,
    )
    kernel = model_info(model).base.get_layer("block4_conv").kernel.numpy()
    assert not kernel.any()


def test_bad_auto_settings_are_config_errors():
    data = make_data(8)
    with pytest.raises(ConfigError, match="integer >= 0 or 'auto'"):
        tltf.fine_tune(make_tiny_model(), data, head_epochs="autp", verbose=0)
    with pytest.raises(ConfigError, match="head_steps"):
        tltf.fine_tune(make_tiny_model(), data, head_steps=-1, verbose=0)
    with pytest.raises(ConfigError, match="keep_best"):
        tltf.fine_tune(make_tiny_model(), data, keep_best="yes", verbose=0)
    with pytest.raises(ConfigError, match="pool_from"):
        make_tiny_model(head={"pool_from": "middle"})


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_the_features_guard_scores_other_tasks_by_r2(task, capsys):
    # Where no slice is held out (multi-label by default; keep_best="features"
    # on request), the guard scores the leave-one-out R² of ridge regression
    # on the features, and the wrecked stage 2 loses to stage 1.
    x, t = _other_task_data(task)
    model = make_tiny_model(t.shape[1], task=task, head={"pool_from": "top"})
    wreck = Wreck()
    _wrecked_run(model, (x, t), "features" if task == "regression" else True, wreck)
    out = capsys.readouterr().out
    assert "held out" not in out
    assert "keep_best: restored the weights of the end of stage 1" in out
    assert "leave-one-out R² of the features" in out
    _assert_base_is_stage_one(model, wreck)
