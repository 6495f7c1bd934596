"""fine_tune's data options: DataBundle inputs, augmentation, class weights."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import make_data, make_tiny_model
from tltf import data as tltf_data
from tltf.errors import ConfigError, DataError
from tltf.model import model_info


@pytest.mark.slow
def test_data_bundle_with_its_validation_split():
    x, y = make_data(n=48, size=20)
    bundle = tltf_data.load_data((x, y), image_size=16, validation_split=0.25, seed=0)
    history = tltf.fine_tune(
        make_tiny_model(), bundle, head_epochs=1, fine_tune_epochs=1, verbose=0
    )
    assert "val_loss" in history.history and history.history["stage"] == [1, 2]


def test_validation_data_given_with_a_bundle_is_checked_and_used():
    # The bundle's own split is used only when no validation_data is given; one
    # given was taken as checked by load_data, and failed inside tltf (an
    # AttributeError on a tuple) instead of validating.
    x, y = make_data(n=48, size=16)
    bundle = tltf_data.load_data((x, y), validation_split=0.25, seed=0)
    model = make_tiny_model()
    history = tltf.fine_tune(
        model,
        bundle,
        (x[:5], y[:5]),  # not the bundle's split of 12 images
        head_epochs=1,
        fine_tune_epochs=0,
        keep_best=False,
        verbose=0,
    )
    # The model ends at stage 1's one epoch: its validation loss is the loss on
    # the 5 images given.
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(x[:5], y[:5], verbose=0)[0], rel=1e-4
    )
    with pytest.raises(DataError, match="lower bound|outside"):
        tltf.fine_tune(make_tiny_model(), bundle, (x[:5], y[:5] + 7), verbose=0)
    with pytest.raises(DataError, match="validation_data=bundle.train"):
        tltf.fine_tune(make_tiny_model(), (x, y), bundle, verbose=0)


def test_image_size_mismatch_names_the_fix():
    x, y = make_data(n=8, size=20)
    with pytest.raises(DataError, match=r"load_data\(\.\.\., image_size=\(16, 16\)\)"):
        tltf.fine_tune(make_tiny_model(), (x, y), verbose=0)


@pytest.mark.slow
def test_augmentation_turns_the_cache_off_and_keeps_the_base_frozen(data, capsys):
    model = make_tiny_model()
    base = model_info(model).base
    before = [w.numpy().copy() for w in base.weights]
    tltf.fine_tune(
        model, data, head_epochs=2, fine_tune_epochs=0, augment=True, verbose=2
    )
    assert "augmentation is active" in capsys.readouterr().out
    for old, new in zip(before, base.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.slow
def test_balanced_class_weights_and_label_smoothing():
    x, y = make_data(n=40)
    y = np.where(np.arange(40) < 30, 0, y).astype("int32")  # class 0 dominates
    model = make_tiny_model()
    tltf.fine_tune(
        model,
        (x, y),
        head_epochs=1,
        fine_tune_epochs=0,
        class_weight="balanced",
        label_smoothing=0.1,
        verbose=0,
    )
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    weights = tltf_data.class_weights(y, 3)
    assert weights[0] < 1 < weights[1]
    with pytest.raises(ConfigError, match="class_weight as a dict, 'balanced'"):
        tltf.fine_tune(make_tiny_model(), (x, y), class_weight="even", verbose=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        tltf.fine_tune(make_tiny_model(), (x, y), label_smoothing=1.5, verbose=0)


def test_array_batches_keep_the_order_of_shuffled_tensor_slices():
    """Arrays are gathered per batch (no up-front copy into TensorFlow), in the
    exact order `from_tensor_slices(...).shuffle(n, seed).batch(b)` gives."""
    import tensorflow as tf

    from tltf.schedule import array_batches

    x, y = make_data(n=37)
    ours = array_batches((x, y), "train", 8, True, 3)
    reference = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(37, seed=3, reshuffle_each_iteration=True)
        .batch(8)
    )
    assert ours.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    assert ours.element_spec[0].dtype == tf.float32
    for _ in range(2):  # two epochs: the reshuffles match too
        got, want = list(ours), list(reference)
        assert len(got) == len(want) == 5
        for (gx, gy), (wx, wy) in zip(got, want, strict=True):
            np.testing.assert_array_equal(gx.numpy(), wx.numpy())
            np.testing.assert_array_equal(gy.numpy(), wy.numpy())
    plain = list(array_batches((x, y), "train", 8, False, None))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in plain]), x)


class _Steps(keras.callbacks.Callback):
    """Records the steps that Keras knows at the start of each epoch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(self.params.get("steps"))


def test_a_dataset_of_unknown_length_is_counted_once(recwarn):
    """A generator has no known length. fine_tune counts its batches in one pass
    of the input pipeline, so that Keras knows each epoch's steps: no "Unknown"
    progress, no "Your input ran out of data" warning at each stage's start, and
    the automatic epochs count optimizer steps."""
    x, y = make_data(40)

    def generator():
        yield from zip(x, y, strict=True)

    spec = (tf.TensorSpec(x.shape[1:], x.dtype), tf.TensorSpec((), y.dtype))
    train = tf.data.Dataset.from_generator(generator, output_signature=spec)
    val = train.take(20)
    assert train.cardinality() == val.cardinality() == tf.data.UNKNOWN_CARDINALITY
    warnings.simplefilter("always")
    steps = _Steps()
    tltf.fine_tune(
        make_tiny_model(),
        train,
        val,
        head_epochs=1,
        fine_tune_epochs=1,
        batch_size=16,
        callbacks=[steps],
        verbose=0,
    )
    assert steps.seen == [3, 3]  # 40 images in batches of 16, in both stages
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]
