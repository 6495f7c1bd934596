"""`class_weight` reaches the closed-form fits: the ridge start and the hand-back.

Keras weighs each image's loss by its class's weight. tltf's head starts from a
ridge classifier and, without validation data, ends with one refit on every
training image; both weigh each image the same way, or a `class_weight` the user
asked for would be lost from the model `fine_tune` returns.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import tltf
from tests.helpers import make_tiny_model
from tltf.data import class_weights
from tltf.probe import loo_accuracy, ridge_fit
from tltf.schedule import refit_head


def _weighted_ridge(z, t, w, l2):
    """Weighted least squares with an unpenalised intercept, solved directly."""
    w = w / w.sum()
    mean_z, mean_t = w @ z, w @ t
    zc, tc = z - mean_z, t - mean_t
    gram = (zc * w[:, None]).T @ zc
    kernel = np.linalg.solve(gram + l2 * np.eye(z.shape[1]), (zc * w[:, None]).T @ tc)
    return kernel, mean_t - mean_z @ kernel


def test_weighted_ridge_and_its_leave_one_out_scores_are_exact():
    rng = np.random.default_rng(0)
    n, d, classes = 18, 5, 3
    z = rng.normal(size=(n, d))
    y = np.arange(n) % classes
    z[np.arange(n), y] += 1.0
    w = rng.uniform(0.2, 3.0, size=n)
    fit = ridge_fit(z, y, classes, sample_weight=w)
    t = np.eye(classes)[y]
    unit = w * n / w.sum()  # the fit's own scale of the weights: a mean of 1
    # The fit's L2 is on sum(w * error**2); _weighted_ridge's on the mean.
    kernel, bias = _weighted_ridge(z, t, unit, fit.l2 / n)
    np.testing.assert_allclose(fit.weights, kernel, atol=1e-8)
    np.testing.assert_allclose(fit.prior, bias, atol=1e-8)
    for i in range(n):
        keep = np.arange(n) != i
        # Leaving row i out keeps the others' weights: the mean is over them.
        kernel, bias = _weighted_ridge(
            z[keep], t[keep], unit[keep], fit.l2 / unit[keep].sum()
        )
        np.testing.assert_allclose(fit.loo[i], z[i] @ kernel + bias, atol=1e-8)
    # The weighted accuracy: each correct image counts by its weight.
    correct = fit.loo.argmax(axis=1) == y
    assert 0 < correct.sum() < n
    np.testing.assert_allclose(loo_accuracy(fit.loo, y, w), w @ correct / w.sum())


def test_equal_weights_give_the_unweighted_fit():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(12, 4))
    z -= z.mean(axis=0)
    y = np.arange(12) % 3
    plain = ridge_fit(z, y, 3)
    weighted = ridge_fit(z, y, 3, sample_weight=np.full(12, 2.5))
    for field in ("weights", "prior", "loo"):
        np.testing.assert_allclose(
            getattr(weighted, field), getattr(plain, field), atol=1e-10
        )
    assert weighted.l2 == plain.l2


def _imbalanced(n_major=24, n_minor=4, seed=0, size=16):
    """Three classes that one channel's brightness tells apart, barely: 24
    images of class 0 and 4 of each other class. Unweighted, the head predicts
    class 0 for nearly everything."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_major + [1] * n_minor + [2] * n_minor, dtype="int32")
    x = rng.integers(0, 120, size=(len(y), size, size, 3)).astype("float32")
    x[np.arange(len(y)), :, :, y] += 2.0
    return x, y


def test_fine_tune_keeps_class_weight_in_the_model_it_returns(capsys):
    x, y = _imbalanced()
    test_x, _ = _imbalanced(n_major=20, n_minor=20, seed=1)
    minority, models = {}, {}
    for weights in (None, "balanced"):
        keras.utils.set_random_seed(0)
        models[weights] = model = make_tiny_model()
        tltf.fine_tune(model, (x, y), class_weight=weights, seed=0, verbose=1)
        probabilities = model.predict(test_x, verbose=0)
        minority[weights] = float(probabilities[:, 1:].sum(axis=1).mean())
    printed = capsys.readouterr().out
    assert "handed the 7 held-out images back" in printed
    assert "class-weighted leave-one-out accuracy" in printed
    # Balanced weights count each minority image 3 times as much as a majority
    # one: the returned head gives the minority classes more of the probability
    # (measured +0.13 to +0.37 over seeds of the base; +0.005 when the hand-back
    # refit dropped the weights).
    assert minority["balanced"] > minority[None] + 0.08, minority
    # The head fine_tune returns is a class-weighted refit, not the plain one.
    # (fine_tune balanced the weights on the images outside the held-out
    # slice, so a refit balanced on all of them lands near, not on, its head.)
    model, batches = models["balanced"], tf.data.Dataset.from_tensor_slices((x, y))
    returned = minority["balanced"]
    refit_head(model, batches.batch(8), class_weight=class_weights(y))
    weighted = float(model.predict(test_x, verbose=0)[:, 1:].sum(axis=1).mean())
    refit_head(model, batches.batch(8))
    plain = float(model.predict(test_x, verbose=0)[:, 1:].sum(axis=1).mean())
    assert abs(weighted - returned) < 0.03 < returned - plain - 0.05


def test_sample_weights_in_the_data_reach_the_ridge_start(capsys):
    x, y = _imbalanced()
    test_x, _ = _imbalanced(n_major=20, n_minor=20, seed=1)
    minority = {}
    for name, weights in {
        "equal": np.ones(len(y), "float32"),
        "minority x6": np.where(y == 0, 1.0, 6.0).astype("float32"),
    }.items():
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
        # head_steps=0, no stage 2: the model is the closed-form head alone.
        tltf.fine_tune(model, data, head_steps=0, fine_tune_epochs=0, verbose=1)
        probabilities = model.predict(test_x, verbose=0)
        minority[name] = float(probabilities[:, 1:].sum(axis=1).mean())
    # Measured: 0.293 with equal weights, 0.631 with the minority's x6.
    assert minority["minority x6"] > minority["equal"] + 0.1, minority
    assert "sample-weighted leave-one-out accuracy" in capsys.readouterr().out


def test_imbalanced_classes_get_a_note_that_names_class_weight(capsys):
    x, y = _imbalanced()
    cases = {
        (None, "imbalanced"): True,
        ("balanced", "imbalanced"): False,
        (None, "balanced"): False,
    }
    for (weights, kind), noted in cases.items():
        data = (x, y) if kind == "imbalanced" else _imbalanced(8, 8)
        tltf.fine_tune(
            make_tiny_model(),
            data,
            class_weight=weights,
            head_steps=0,
            fine_tune_epochs=0,
            verbose=1,
        )
        printed = capsys.readouterr().out
        assert ("tltf: note: the classes are imbalanced" in printed) == noted, printed
        if noted:  # all the images, the guard's held-out slice included
            assert "(24 training images in the largest, 4 in the smallest)" in printed
            assert "pass class_weight='balanced' (tltf train: --class-weight" in printed
