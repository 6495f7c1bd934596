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
    model = make_tiny_model()
    for call in (
        lambda: tltf.data.load_data((x, y, np.ones(12)), image_size=16),
        lambda: tltf.evaluate(model, (x, y, np.ones(12))),
    ):
        error = raises(DataError, call)
        assert "Pass (images, labels) here" in str(error)
        assert "fine_tune takes (images, labels, sample_weights)" in str(error)


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


def test_probe_blocks_says_it_does_not_weigh(capsys):
    x, y = make_data(24)
    tltf.probe_blocks(make_tiny_model(), (x, y, np.ones(24)))
    assert "the sample weights are not used here" in capsys.readouterr().out
    tltf.probe_blocks(make_tiny_model(), (x, y))
    assert "sample weights" not in capsys.readouterr().out


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
