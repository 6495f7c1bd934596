"""The guard's held-out slice for a `tf.data.Dataset` input, and its errors.

Without validation data the guard holds a slice of the training images out of
both stages and hands it back at the end. A `tf.data.Dataset` (or a TFDS
bundle) that fits in `tltf.guard.HOLDOUT_READ_BYTES` and gives the same images
every pass is read into memory for that; any other keeps the features guard and
says why. An element that a pipeline cannot read, or images of their own sizes,
are a DataError wherever tltf reads them.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tltf
import tltf.guard
from tests.helpers import (
    NO_PIXELS,
    BatchesPerEpoch,
    CrashAt,
    make_data,
    make_image_folder,
    make_tiny_model,
    mock_tf_flowers,
)
from tltf.data.inputs import read_dataset
from tltf.errors import ConfigError, DataError
from tltf.info import model_base

RUN = {"head_epochs": 1, "fine_tune_epochs": 2, "unfreeze": 1, "seed": 0}


def _shuffled(x, y, seed=None):
    """A batched dataset that reshuffles every pass, as user pipelines do."""
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        .batch(8)
    )


def _weights(model):
    return [np.array(v) for v in model.get_weights()]


def test_read_dataset_gives_the_same_arrays_whatever_the_order():
    x, y = make_data(40)
    first, why = read_dataset(_shuffled(x, y, seed=1), "train", 2**30)
    assert why is None
    unbatched = tf.data.Dataset.from_tensor_slices((x[::-1], y[::-1]))
    second, _ = read_dataset(unbatched, "train", 2**30)
    # `.filter()`: a count of batches not known, so the arrays grow as read.
    filtered = _shuffled(x, y, seed=2).filter(lambda images, labels: True)
    assert filtered.cardinality() == tf.data.UNKNOWN_CARDINALITY
    third, _ = read_dataset(filtered, "train", 2**30)
    for name in ("images", "labels"):
        a, b, c = (getattr(read, name) for read in (first, second, third))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert (first.batch_size, second.batch_size, third.batch_size) == (8, None, 8)
    assert read_dataset(filtered, "train", 100_000) == (
        None,
        "it holds more than 0.09537 MiB",
    )
    # Every row is one of the inputs', with its own label.
    assert sorted(map(tuple, first.images.reshape(40, -1)[:, :4].tolist())) == sorted(
        map(tuple, x.reshape(40, -1)[:, :4].tolist())
    )
    lookup = {row.tobytes(): label for row, label in zip(x, y, strict=True)}
    assert [lookup[row.tobytes()] for row in first.images] == first.labels.tolist()


def test_a_tf_data_input_trains_the_model_its_arrays_train(capsys):
    x, y = make_data(48)
    dataset = _shuffled(x, y)
    read, _ = read_dataset(dataset, "train", 2**30)
    keras.utils.set_random_seed(0)
    from_arrays = make_tiny_model(head=NO_PIXELS)
    # The dataset's batches are of 8: the arrays' run is given that size.
    tltf.fine_tune(
        from_arrays, (read.images, read.labels), batch_size=8, verbose=0, **RUN
    )
    keras.utils.set_random_seed(0)
    from_dataset = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(from_dataset, dataset, verbose=1, **RUN)
    out = capsys.readouterr().out
    assert "the tf.data input was read into memory (0.1 MiB" in out
    assert (
        "trained on as arrays are (reshuffled every epoch, in its batches of 8)" in out
    )
    assert "9 of 48 training images (a stratified slice) are held out" in out
    assert "handed the 9 held-out images back" in out
    for a, b in zip(_weights(from_arrays), _weights(from_dataset), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_image_folder_read_by_keras_is_held_out_of(tmp_path, capsys):
    # The keras.io recipe's input, end to end: read, held out of, handed back.
    make_image_folder(tmp_path / "images", per_class=10)
    models = []
    for _ in range(2):
        # Keras reshuffles it every pass, unseeded: the reading order differs.
        # (Stage 2 is skipped here, so the weights would match for any slice:
        # the slice's order is test_read_dataset_gives_the_same_arrays_...)
        dataset = keras.utils.image_dataset_from_directory(
            tmp_path / "images", image_size=(16, 16), batch_size=8, verbose=False
        )
        keras.utils.set_random_seed(0)
        model = make_tiny_model(head=NO_PIXELS)
        tltf.fine_tune(model, dataset, verbose=1, **RUN)
        models.append(model)
    out = capsys.readouterr().out
    assert out.count("6 of 30 training images (a stratified slice)") == 2
    for a, b in zip(*map(_weights, models), strict=True):
        np.testing.assert_array_equal(a, b)


def _augmented(x, y):
    # A stateful generator draws anew every pass. (`tf.random.uniform` under a
    # global seed would draw the same numbers every pass: a pipeline that gives
    # the same images every pass, which is read.)
    generator = tf.random.Generator.from_seed(1)

    def jitter(images, labels):
        return images + generator.uniform(tf.shape(images), 0, 8), labels

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(jitter)


def _sharded_by_the_user(x, y):
    options = tf.data.Options()
    off = tf.data.experimental.AutoShardPolicy.OFF
    options.experimental_distribute.auto_shard_policy = off
    return _shuffled(x, y).with_options(options)


@pytest.mark.parametrize(
    "make, limit, why",
    [
        (_augmented, 2**30, "pipeline? fine_tune(augment=your_layers) applies it"),
        (_sharded_by_the_user, 2**30, "it shards itself across workers"),
        (lambda x, y: _shuffled(x, y).repeat(2), 10_000, "it holds more than"),
        (_shuffled, 0, "tltf.guard.HOLDOUT_READ_BYTES is 0"),
    ],
    ids=["augmented", "sharded", "too-big", "turned-off"],
)
def test_a_tf_data_input_that_cannot_be_read_keeps_the_features_guard(
    make, limit, why, monkeypatch, capsys
):
    monkeypatch.setattr(tltf.guard, "HOLDOUT_READ_BYTES", limit)
    x, y = make_data(48)
    tltf.fine_tune(make_tiny_model(head=NO_PIXELS), make(x, y), verbose=1, **RUN)
    out = capsys.readouterr().out
    assert "tltf: keep_best: no training images are held out" in out
    assert why in out and "Pass validation_data" in out
    assert "held out of both stages" not in out and "handed" not in out
    assert "leave-one-out accuracy of the features" in out
    with pytest.raises(ConfigError, match="keep_best='holdout' cannot be used") as e:
        tltf.fine_tune(make_tiny_model(), make(x, y), keep_best="holdout", verbose=0)
    assert why in str(e.value)


def _pngs_with_one_bad(x, y, bad):
    blobs = []
    for i, image in enumerate(x.astype("uint8")):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        blobs.append(b"not a png" if i == bad else buffer.getvalue())

    def decode(blob, label):
        image = tf.cast(tf.io.decode_png(blob, channels=3), tf.float32)
        return tf.ensure_shape(image, x.shape[1:]), label

    return tf.data.Dataset.from_tensor_slices((blobs, y)).map(decode).batch(8)


@pytest.mark.parametrize("keep_best, head_epochs", [(True, 1), (False, 1), (False, 0)])
def test_an_element_the_pipeline_cannot_read_is_a_data_error(keep_best, head_epochs):
    # Element 40 is in the sixth batch: past the two batches checked up front,
    # so the guard's read, the feature cache or `fit` meets it.
    x, y = make_data(48)
    with pytest.raises(DataError) as error:
        tltf.fine_tune(
            make_tiny_model(),
            _pngs_with_one_bad(x, y, bad=40),
            head_epochs=head_epochs,
            fine_tune_epochs=1,
            unfreeze=1,
            keep_best=keep_best,
            verbose=0,
        )
    message = str(error.value)
    assert message.startswith("Reading a tf.data input failed inside its pipeline")
    assert "Unknown image file format" in message and "(op DecodePng)" in message
    assert ".ignore_errors()" in message and "function_node" not in message


@pytest.mark.parametrize(
    "call",
    [
        lambda model, ds: tltf.evaluate(model, ds),
        lambda model, ds: tltf.predict(model, ds),
        lambda model, ds: tltf.find_lr(model, ds, verbose=0),
        lambda model, ds: tltf.probe_blocks(model_base(model), ds, verbose=0),
    ],
    ids=["evaluate", "predict", "find_lr", "probe_blocks"],
)
def test_the_other_entry_points_name_an_element_they_cannot_read(call):
    x, y = make_data(48)
    with pytest.raises(DataError) as error:
        call(make_tiny_model(), _pngs_with_one_bad(x, y, bad=40))
    message = str(error.value)
    assert "Could not read" in message or "failed inside its pipeline" in message
    assert "Unknown image file format" in message and "(op DecodePng)" in message
    assert "function_node" not in message and "differ in size" not in message


def test_a_tfds_bundle_without_validation_is_read_and_held_out_of(tmp_path, capsys):
    with mock_tf_flowers(tmp_path / "tfds", num_examples=60):
        data = tltf.load_data("tfds:tf_flowers", image_size=16, batch_size=8)
        assert data.labels is None and data.validation is None
        model = make_tiny_model(num_classes=5, head=NO_PIXELS)
        tltf.fine_tune(model, data, verbose=1, **RUN)
    out = capsys.readouterr().out
    assert "the TFDS bundle was read into memory" in out
    assert "13 of 60 training images (a stratified slice) are held out" in out
    assert "handed the 13 held-out images back" in out


def test_an_imbalanced_tf_data_input_read_into_memory_gets_the_note(capsys):
    x, y = make_data(48)
    y = np.where(np.arange(48) < 36, 0, y).astype("int32")  # 40 + 4 + 4
    tltf.fine_tune(make_tiny_model(), _shuffled(x, y), verbose=1, **RUN)
    out = capsys.readouterr().out
    assert "read into memory" in out
    assert "the classes are imbalanced (40 training images in the largest, 4 " in out


@pytest.mark.parametrize("keep_best", [True, "features"])
def test_images_of_their_own_sizes_unbatched_are_a_data_error(keep_best):
    # What `tfds.load(..., as_supervised=True)` gives before any resizing.
    def images():
        rng = np.random.default_rng(0)
        for i in range(24):
            size = 16 + (i % 2) * 4
            yield rng.integers(0, 255, (size, size, 3)).astype("float32"), i % 3

    spec = (tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((), tf.int64))
    dataset = tf.data.Dataset.from_generator(images, output_signature=spec)
    with pytest.raises(DataError, match="differ in size, so they cannot be batched"):
        tltf.fine_tune(make_tiny_model(), dataset, keep_best=keep_best, verbose=0)


def test_a_killed_run_on_a_reshuffled_dataset_resumes_to_the_same_weights(tmp_path):
    # Each call gets the data in another order, and the run is killed in stage
    # 1 and resumed from its backup. (That the slice does not depend on the
    # order: test_read_dataset_gives_the_same_arrays_whatever_the_order.)
    x, y = make_data(48)
    settings = {**RUN, "head_epochs": 3}

    def run(shuffle_seed, **kwargs):
        keras.utils.set_random_seed(0)
        model = make_tiny_model(head=NO_PIXELS)
        data = _shuffled(x, y, seed=shuffle_seed)
        tltf.fine_tune(model, data, verbose=0, **settings, **kwargs)
        return model

    reference = run(1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(2, callbacks=[CrashAt(2)], backup_dir=tmp_path / "backup")
    resumed = run(3, backup_dir=tmp_path / "backup")
    for a, b in zip(_weights(reference), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch", [8, 5])
def test_a_dataset_read_into_memory_trains_in_its_own_batches(batch):
    # 48 images, 9 held out: 39 trained on, in batches of `batch`, not of
    # fine_tune's batch_size (32), which sizes only what it batches itself.
    # (Without the feature cache, whose head fits take batches of their own.)
    x, y = make_data(48)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    steps = BatchesPerEpoch()
    tltf.fine_tune(
        make_tiny_model(),
        dataset,
        head_epochs=2,
        fine_tune_epochs=1,
        unfreeze=1,
        cache_features=False,
        callbacks=[steps],
        verbose=0,
    )
    assert steps.batches[:2] == [-(-39 // batch)] * 2
