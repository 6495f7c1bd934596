"""Sample weights: `fine_tune(model, (images, labels, sample_weights))`.

As Keras's `fit(x, y, sample_weight=w)` takes them: every fit weighs each image
by its weight (the ridge start, stage 1, stage 2, the hand-back), so does the
validation loss and the guard's held-out slice; a `tf.data` input that yields
them is read into memory for the slice with its weights. Weights that are not
one finite number >= 0 per image are a DataError before anything trains.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import (
    NO_PIXELS,
    make_data,
    make_tiny_base,
    make_tiny_model,
    raises,
)
from tltf.data.inputs import read_dataset
from tltf.errors import DataError
from tltf.guard import KeepBest, holdout_rows
from tltf.probe import ridge_r2_probe, ridge_regression
from tltf.schedule import prepare_head

RUN = {"head_epochs": 1, "fine_tune_epochs": 2, "unfreeze": 1, "seed": 0}


def _weights(model):
    return [np.array(v) for v in model.get_weights()]


def _sample_weights(n, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 3.0, n).astype("float32")


def test_weighted_arrays_train_the_model_a_weighted_dataset_trains(capsys):
    # A dataset of (image, label, weight) batches is read into memory, weights
    # too, and trains exactly as its arrays do.
    x, y = make_data(48)
    w = _sample_weights(48)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y, w[:, None]))  # (n, 1): one each
        .shuffle(48, reshuffle_each_iteration=True)
        .batch(8)
    )
    read, why = read_dataset(dataset, "train", 2**30)
    assert why is None and read.weights.shape == (48,)
    lookup = {row.tobytes(): weight for row, weight in zip(x, w, strict=True)}
    assert [lookup[row.tobytes()] for row in read.images] == read.weights.tolist()
    keras.utils.set_random_seed(0)
    from_arrays = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(from_arrays, read.arrays, batch_size=8, verbose=0, **RUN)
    keras.utils.set_random_seed(0)
    from_dataset = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(from_dataset, dataset, verbose=1, **RUN)
    out = capsys.readouterr().out
    assert "the tf.data input was read into memory" in out
    assert "9 of 48 training images (a stratified slice) are held out" in out
    assert "sample-weighted leave-one-out accuracy" in out  # the hand-back's refit
    for a, b in zip(_weights(from_arrays), _weights(from_dataset), strict=True):
        np.testing.assert_array_equal(a, b)
    # Unweighted, the same arrays train another model.
    keras.utils.set_random_seed(0)
    unweighted = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(unweighted, read.arrays[:2], batch_size=8, verbose=0, **RUN)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_weights(unweighted), _weights(from_arrays), strict=True)
    )


def test_weights_that_change_every_pass_are_not_read():
    x, y = make_data(24)
    draws = tf.random.Generator.from_seed(0)

    def reweigh(images, labels):
        return images, labels, draws.uniform(tf.shape(labels), 0.5, 2.0)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(reweigh)
    read, why = read_dataset(dataset, "train", 2**30)
    assert (
        read is None
        and "it gives other images or sample weights each time it is read" in why
    )


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_class_weighed_zero_is_not_learned(keep_best):
    # Every fit weighs the images: with class 2's images at weight 0 the model
    # never predicts class 2; with weights of 1 it classifies them all.
    x, y = make_data(48)
    predicted = {}
    for name, w in (("ones", np.ones(48)), ("no class 2", (y != 2).astype(float))):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        tltf.fine_tune(model, (x, y, w), keep_best=keep_best, verbose=0, **RUN)
        predicted[name] = model.predict(x, verbose=0).argmax(axis=1)
    assert (predicted["ones"] == y).mean() > 0.9
    assert (predicted["no class 2"] == 2).sum() == 0
    assert (predicted["no class 2"][y != 2] == y[y != 2]).mean() > 0.9


def test_the_slice_is_scored_by_its_weights(monkeypatch):
    # A model right on the first two images (weight 3 each) and wrong on the
    # other two (weight 1): accuracy 0.75 weighed, 0.5 not.
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inputs))
    model.layers[-1].set_weights([np.eye(2, dtype="float32")])
    images = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], "float32")
    labels = np.array([0, 1, 1, 0])
    batches = tf.data.Dataset.from_tensor_slices(images).batch(4)
    scores = {}
    for name, w in (("alike", None), ("weighed", np.array([3.0, 3.0, 1.0, 1.0]))):
        guard = KeepBest(None, validation=None, holdout=(batches, labels, True, w))
        guard.set_model(model)
        scores[name] = guard.holdout_score()[0]
    assert scores == {"alike": 0.5, "weighed": 0.75}
    # fine_tune gives the guard the held-out images' own weights.
    seen = []
    score = KeepBest.holdout_score

    def spy(self):
        seen.append(self.holdout[3])
        return score(self)

    monkeypatch.setattr(KeepBest, "holdout_score", spy)
    x, y = make_data(48)
    w = _sample_weights(48)
    tltf.fine_tune(make_tiny_model(head=NO_PIXELS), (x, y, w), verbose=0, **RUN)
    _, held = holdout_rows(y, seed=0)
    assert seen and all(np.array_equal(s, w[held]) for s in seen)


def test_validation_loss_is_weighed_as_keras_weighs_it():
    x, y = make_data(48)
    xv, yv = make_data(24, seed=1)
    wv = _sample_weights(24, seed=1)
    model = make_tiny_model()
    history = tltf.fine_tune(
        model, (x, y), validation_data=(xv, yv, wv), keep_best=False, verbose=0, **RUN
    )
    weighed = model.evaluate(xv, yv, sample_weight=wv, verbose=0, return_dict=True)
    alike = model.evaluate(xv, yv, verbose=0, return_dict=True)
    last = history.history["val_loss"][-1]
    assert last == pytest.approx(weighed["loss"], rel=1e-4)
    assert last != pytest.approx(alike["loss"], rel=1e-3)


@pytest.mark.parametrize(
    "weights, words",
    [
        (
            np.ones(5),
            "one number per image, an array of shape (48,). Received shape (5,)",
        ),
        (-np.ones(48), "finite numbers >= 0. Received -1 at index 0"),
        (np.r_[np.ones(47), np.nan], "finite numbers >= 0. Received nan at index 47"),
        (np.zeros(48), "are all 0, so nothing would be learned"),
        (["heavy"] * 48, "as numbers, one per image"),
    ],
    ids=["shape", "negative", "nan", "zeros", "strings"],
)
@pytest.mark.parametrize("where", ["train", "validation_data"])
def test_bad_sample_weights_are_data_errors_before_anything_trains(
    weights, words, where
):
    x, y = make_data(48)
    model = make_tiny_model()
    before = _weights(model)
    data = {"train": (x, y, weights), "validation_data": (x, y, weights)}
    if where == "train":
        data["validation_data"] = None
    else:
        data["train"] = (x, y)
    error = raises(DataError, tltf.fine_tune, model, **data, verbose=0, **RUN)
    assert f"{where}'s sample weights" in str(error) and words in str(error)
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_data_source_with_sample_weights_says_where_they_go(tmp_path):
    x, y = make_data(12)
    error = raises(
        DataError, lambda: tltf.data.load_data((x, y, np.ones(12)), image_size=16)
    )
    assert "Pass (images, labels) here" in str(error)
    assert "fine_tune and evaluate take (images, labels, sample_weights)" in str(error)
    # evaluate weighs them (tests/test_evaluation.py).
    assert tltf.evaluate(make_tiny_model(), (x, y, np.ones(12))).total_weight == 12


def test_tune_takes_weighted_arrays(tmp_path, capsys):
    # The classes are inferred from the labels; each trial fine-tunes on the
    # weighted arrays (stage 2 on cached frozen blocks weighs them too:
    # tests/test_tuning.py).
    x, y = make_data(32)
    w = (y != 2).astype("float32")
    result = tltf.tune(
        make_tiny_base(),
        (x, y, w),
        make_data(16, seed=1),
        input_shape=(16, 16, 3),
        weights=None,
        search={"head_dropout": 0.0, "head_units": 0, "unfreeze": 1},
        tuner="random",
        max_trials=1,
        directory=tmp_path,
        head_epochs=1,
        fine_tune_epochs=1,
        seed=0,
        verbose=1,
    )
    assert result.best_model.output_shape == (None, 3)
    assert "sample-weighted leave-one-out accuracy" in capsys.readouterr().out


def test_the_skip_line_counts_only_the_images_that_weigh(capsys):
    # Stage 1 gets every held-out image of weight above 0 right (class 2 weighs
    # 0 and is never predicted): stage 2 is skipped, and the line does not
    # claim the 2 images of class 2 held out.
    x, y = make_data(32)
    tltf.fine_tune(make_tiny_model(), (x, y, (y != 2).astype("float32")), **RUN)
    out = capsys.readouterr().out
    assert "6 of 32 training images (a stratified slice) are held out" in out
    assert (
        "stage 1 classifies all 4 held-out training images of a sample weight "
        "above 0 correctly" in out
    )


def _wrong_at_weight_0(n, classes=3):
    """`make_data(n)` with every fourth label wrong (in every class), those
    images at weight 0."""
    x, y = make_data(n)
    wrong = np.arange(n) % 4 == 0
    noisy = np.where(wrong, (y + 1) % classes, y)
    return x, noisy, (~wrong).astype("float32")


def test_probe_blocks_weighs_each_image_as_fine_tune_does(capsys):
    # An image of weight 0 counts for nothing: not in the features'
    # statistics, the ridge fits, the leave-one-out scores or the tolerance.
    # The weighted probe is the probe of the other images alone (its L2 is on
    # the scale of weights of mean 1 over all 36 images: 36 / 27 times).
    x, y, w = _wrong_at_weight_0(36)
    base, keep = make_tiny_base(), w > 0
    weighed = tltf.probe_blocks(base, (x, y, w))
    assert "each image counted by its sample weight" in capsys.readouterr().out
    alone = tltf.probe_blocks(base, (x[keep], y[keep]), verbose=0)
    alike = tltf.probe_blocks(base, (x, y), verbose=0)
    assert weighed.weighted and not alone.weighted
    for row, other in zip(
        [weighed.pixels, *weighed.table], [alone.pixels, *alone.table], strict=True
    ):
        assert row["val_accuracy"] == pytest.approx(other["val_accuracy"], abs=1e-6)
        assert row["l2"] == pytest.approx(other["l2"] * 36 / 27, rel=1e-3)
    assert weighed.tolerance == pytest.approx(alone.tolerance)
    assert (weighed.cut, weighed.unfreeze) == (alone.cut, alone.unfreeze)
    # Unweighted, the 9 wrong labels count against every block.
    assert max(q["val_accuracy"] for q in alike.table) <= 0.8
    assert max(q["val_accuracy"] for q in weighed.table) == 1.0


def test_auto_cut_and_unfreeze_probe_with_the_weights(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        result = tltf.probe.probe_blocks(*args, **kwargs)
        seen.append(result.weighted)
        return result

    monkeypatch.setattr(tltf.model, "probe_blocks", spy)
    monkeypatch.setattr(tltf.schedule, "probe_blocks", spy)
    x, y, w = _wrong_at_weight_0(24)
    model = tltf.build_model(make_tiny_base(), 3, cut="auto", data=(x, y, w))
    tltf.fine_tune(
        model, (x, y, w), unfreeze="auto", head_epochs=1, fine_tune_epochs=1, verbose=0
    )
    assert seen == [True, True]


def test_probe_blocks_weighs_a_validation_set_and_refuses_a_weight_a_batch():
    x, y, w = _wrong_at_weight_0(36)
    base = make_tiny_base()
    train, val = (x[:24], y[:24], w[:24]), (x[24:], y[24:], w[24:])
    weighed = tltf.probe_blocks(base, train, val, verbose=0)
    keep = w[24:] > 0
    alone = tltf.probe_blocks(base, train, (x[24:][keep], y[24:][keep]), verbose=0)
    assert [r["val_accuracy"] for r in weighed.table] == pytest.approx(
        [r["val_accuracy"] for r in alone.table], abs=1e-6
    )
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    scalar = batched.map(lambda images, labels: (images, labels, 2.0))
    error = raises(DataError, tltf.probe_blocks, base, scalar, verbose=0)
    assert "Expected train's sample weights as one number per image" in str(error)


def test_a_held_out_share_of_weight_0_is_a_data_error():
    # With one image of weight above 0, the share val_fraction holds out, or
    # the rest, weighs nothing: named, not a ZeroDivisionError from NumPy.
    x, y = make_data(24)
    w = np.zeros(24, "float32")
    w[0] = 1.0
    error = raises(
        DataError,
        tltf.probe_blocks,
        make_tiny_base(),
        (x, y, w),
        val_fraction=0.5,
        verbose=0,
    )
    assert "only images of sample weight 0" in str(error)


def test_weighted_ridge_regression_is_the_fit_without_the_images_of_weight_0():
    # Regression and multi-label heads start from `ridge_regression` and are
    # scored by `ridge_r2_probe`: with an outlier of weight 0, both match the
    # fit and the R² without it; unweighted, the outlier pulls the fit.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 5))
    t = z @ rng.normal(size=(5, 2)) + rng.normal(0, 0.1, (40, 2))
    t_out, w = t.copy(), np.ones(40)
    t_out[7], w[7] = 1e3, 0.0
    keep = w > 0
    z -= z[keep].mean(axis=0)  # standardised features, as the callers pass
    weighed = ridge_regression(z, t_out, w)
    alone = ridge_regression(z[keep], t[keep])
    np.testing.assert_allclose(weighed.weights, alone.weights, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(weighed.prior, alone.prior, atol=1e-6)
    assert weighed.l2 == pytest.approx(alone.l2 * 40 / 39)  # weights of mean 1
    assert np.abs(ridge_regression(z, t_out).weights - alone.weights).max() > 1
    r2 = ridge_r2_probe(z, t_out, z, t_out, w, w)
    r2_alone = ridge_r2_probe(z[keep], t[keep], z[keep], t[keep])
    assert r2[:2] == pytest.approx(r2_alone[:2], abs=1e-9)  # fit R², leave-one-out R²
    assert r2[1] > 0.99 > 0.5 > ridge_r2_probe(z, t_out, z, t_out)[1]


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_regression_and_multilabel_heads_start_from_the_weighted_fit(task):
    # A quarter of the targets are wrong (far off, or every label flipped) and
    # weigh 0: the head's closed-form start fits the other images as if the
    # wrong ones were absent, and the unweighted start does not.
    x, y = make_data(48)
    wrong = np.arange(48) % 4 == 0
    if task == "regression":
        t = (2.0 * y + 5.0)[:, None].astype("float32")
        bad = np.where(wrong[:, None], 60.0, t)
    else:
        t = np.stack([y == 0, y == 1, y == 2, y != 0], axis=1).astype("float32")
        bad = np.where(wrong[:, None], 1 - t, t)
    w = (~wrong).astype("float32")
    errors, lines = {}, {}
    for name, weights in (("weighed", w), ("alike", np.ones(48, "float32"))):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(t.shape[1], task=task)
        features = tltf.cache.feature_model(model).predict(x, verbose=0)
        lines[name] = prepare_head(model, features, bad, sample_weight=weights)
        p = model.predict(x[~wrong], verbose=0)
        errors[name] = (
            np.sqrt(np.mean((p - t[~wrong]) ** 2))
            if task == "regression"
            else np.mean((p > 0.5) != (t[~wrong] > 0.5))
        )
    assert "sample-weighted ridge" in lines["weighed"]
    assert "sample-weighted" not in lines["alike"]  # equal weights: no weighing
    if task == "regression":
        assert errors["weighed"] < 0.5 < 5 < errors["alike"], errors
    else:
        assert errors["weighed"] < 0.01 < 0.05 < errors["alike"], errors


def test_a_regression_heads_l2_grows_with_the_weights_as_keras_loss_does():
    # All weights 4 fit the same ridge, and Keras's weighted loss is 4 times
    # the mean squared error: the head's L2 is 4 times the unweighted one.
    x, y = make_data(24)
    t = (2.0 * y + 5.0)[:, None].astype("float32")
    strengths = []
    for weights in (None, np.full(24, 4.0)):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(1, task="regression")
        features = tltf.cache.feature_model(model).predict(x, verbose=0)
        line = prepare_head(model, features, t, sample_weight=weights)
        strengths.append(float(line.split("an L2 penalty of ")[1].split()[0]))
    assert strengths[1] == pytest.approx(4 * strengths[0], rel=2e-3)


def test_the_features_guard_weighs_its_leave_one_out(monkeypatch):
    # keep_best="features" (also a weighted dataset too big to read): the
    # leave-one-out accuracy of the features counts each image by its weight.
    # A quarter of the labels are wrong and weigh 0: weighed, the score sees
    # only the right ones.
    x, y = make_data(48)
    wrong = np.arange(48) % 4 == 0
    noisy = np.where(wrong, (y + 1) % 3, y)
    w = (~wrong).astype("float32")
    model = make_tiny_model()
    scores = {}
    for name, data in (("alike", (x, noisy)), ("weighed", (x, noisy, w))):
        batches = tf.data.Dataset.from_tensor_slices(data).batch(8)
        guard = KeepBest(None, validation=None, train_features=batches)
        guard.set_model(model)
        scores[name] = guard._loo_score()[0]
    assert scores["alike"] <= 0.8 < 0.95 <= scores["weighed"]


def test_the_features_guard_weighs_a_regression_heads_r2(monkeypatch):
    # The regression twin: a quarter of the targets far off at weight 0. The
    # leave-one-out R² of the features, weighed, sees only the others.
    x, y = make_data(48)
    t = (2.0 * y + 5.0)[:, None].astype("float32")
    wrong = np.arange(48) % 4 == 0
    bad = np.where(wrong[:, None], 60.0, t)
    model = make_tiny_model(1, task="regression")
    scores = {}
    for name, data in (("alike", (x, bad)), ("weighed", (x, bad, (~wrong) * 1.0))):
        batches = tf.data.Dataset.from_tensor_slices(data).batch(8)
        guard = KeepBest(
            None, validation=None, train_features=batches, task="regression"
        )
        guard.set_model(model)
        scores[name] = guard._loo_score()[0]
    assert scores["alike"] < 0.5 < 0.9 < scores["weighed"], scores


def test_a_dataset_with_one_weight_a_batch_is_a_data_error():
    x, y = make_data(24)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(8)
        .map(lambda images, labels: (images, labels, 2.0))
    )
    error = raises(DataError, tltf.fine_tune, make_tiny_model(), dataset, **RUN)
    assert "Expected train's sample weights as one number per image" in str(error)
    assert "shape () for a batch of 8 images" in str(error)


@pytest.mark.parametrize("keep_best", [True, False])
def test_class_weight_with_sample_weights_multiplies_them(keep_best):
    # Keras's fit takes one or the other ("You cannot `class_weight` and
    # `sample_weight` at the same time"): fine_tune gives each image their
    # product, in every fit, as if the user had multiplied them. (With the
    # guard, stage 2 is skipped here and the slice handed back; without it,
    # stage 2 trains.) Class 2 has no class weight: 1.
    x, y = make_data(30)
    w = _sample_weights(30)
    class_weight = {0: 2.0, 1: 0.5}
    product = w * np.array([class_weight.get(c, 1.0) for c in y], "float32")
    trained = []
    for data, kwargs in (
        ((x, y, w), {"class_weight": class_weight}),
        ((x, y, product), {}),
    ):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(head=NO_PIXELS)
        history = tltf.fine_tune(
            model, data, keep_best=keep_best, verbose=0, **RUN, **kwargs
        )
        trained.append(_weights(model))
    assert (2 in history.history["stage"]) is not keep_best
    for a, b in zip(*trained, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("keep_best", [True, False])
def test_balanced_class_weight_counts_a_weighted_dataset(keep_best):
    # "balanced" counts the classes of the dataset's labels: read into memory
    # for the guard, or counted in a pass of the pipeline (keep_best=False).
    # Before, the pass refused a dataset that yields sample weights.
    x, y = make_data(24)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, np.ones(24, "float32")))
    history = tltf.fine_tune(
        make_tiny_model(),
        dataset.batch(8),
        class_weight="balanced",
        keep_best=keep_best,
        verbose=0,
        **RUN,
    )
    assert history.history["stage"][0] == 1
    labels = tltf.data.dataset_labels(dataset)
    np.testing.assert_array_equal(labels, y)
