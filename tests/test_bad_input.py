"""The bad-input catalogue (README, Troubleshooting): one test per case.

Each case must raise a `tltf.TltfError` subclass before any training starts, with
a message that names the problem and the fix, raised from tltf's own code (so the
user never reads a traceback from deep inside TensorFlow), and it must not lose
work: files that existed before the bad call are unchanged after it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import (
    check_error,
    folder_snapshot,
    make_data,
    make_lambda_model,
    make_tiny_base,
    make_tiny_model,
    raises,
)
from tltf import errors


def test_unknown_base_suggests_names():
    error = raises(errors.UnknownBaseError, tltf.build_model, "mobilenet_v5", 3)
    check_error(
        error, errors.UnknownBaseError, "mobilenet_v5", "did you mean", "mobilenet_v2"
    )


def test_input_below_minimum_and_wrong_channels():
    small = raises(
        errors.InputShapeError,
        tltf.build_model,
        "inception_v3",
        3,
        weights=None,
        input_shape=(32, 32, 3),
    )
    check_error(small, errors.InputShapeError, "75", "received")
    gray = raises(
        errors.InputShapeError,
        tltf.build_model,
        "mobilenet_v2",
        3,
        weights="imagenet",
        input_shape=(96, 96, 1),
    )
    check_error(gray, errors.InputShapeError, "RGB")


def test_grayscale_images_on_an_rgb_base_say_how_to_convert_them():
    # A saved base rebuilt at one channel, and one-channel images given to an
    # RGB model: each error names the channels and the conversion.
    gray = raises(
        errors.InputShapeError,
        tltf.build_model,
        "demo",
        3,
        input_shape=(64, 64, 1),
    )
    check_error(gray, errors.InputShapeError, "3-channel", "np.repeat")
    model = tltf.build_model("demo", 3)
    x = np.zeros((6, 64, 64, 1), "float32")
    error = raises(errors.DataError, tltf.fine_tune, model, (x, np.arange(6) % 3))
    check_error(error, errors.DataError, "grayscale", "np.repeat(images, 3, axis=-1)")


def test_images_of_another_size_fail_before_any_line_about_the_run(capsys):
    # The size is checked before fine_tune announces what it will do (the
    # guard's held-out slice used to be announced first).
    x, y = make_data(n=30, size=20)
    error = raises(errors.DataError, tltf.fine_tune, make_tiny_model(), (x, y))
    check_error(error, errors.DataError, "(20, 20, 3)", "(16, 16, 3)", "image_size")
    assert "tltf:" not in capsys.readouterr().out


def test_a_model_with_two_inputs_is_not_a_base():
    image, extra = keras.Input((16, 16, 3)), keras.Input((4,))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    model = keras.Model([image, extra], keras.layers.Concatenate()([pooled, extra]))
    error = raises(errors.ModelError, tltf.build_model, model, 3)
    check_error(error, errors.ModelError, "one image input", "(None, 4)", "wrap")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_a_subclassed_model_says_how_to_wrap_it_and_the_wrapped_one_trains():
    model = _Subclassed()
    model(np.zeros((1, 16, 16, 3), "float32"))
    error = raises(errors.ModelError, tltf.build_model, model, 3)
    check_error(error, errors.ModelError, "subclassed", "keras.Model(inputs, model(")
    inputs = keras.Input((16, 16, 3))  # the fix the message gives
    wrapped = tltf.build_model(keras.Model(inputs, model(inputs)), 3)
    assert tltf.model_info(wrapped).block_map.names == [model.name]
    tltf.fine_tune(wrapped, make_data(24), head_epochs=1, fine_tune_epochs=1, verbose=0)


def test_labels_out_of_range_and_num_classes_mismatch():
    x, y = make_data(n=32, classes=3)
    error = raises(
        errors.DataError, tltf.fine_tune, make_tiny_model(2), (x, y), head_epochs=1
    )
    check_error(error, errors.DataError, "labels outside [0, 2)", "num_classes")


def test_empty_dataset():
    x = np.zeros((0, 16, 16, 3), "float32")
    y = np.zeros((0,), "int32")
    error = raises(
        errors.DataError, tltf.fine_tune, make_tiny_model(), (x, y), head_epochs=1
    )
    check_error(error, errors.DataError, "empty")


@pytest.mark.slow
def test_corrupt_images_are_skipped_by_default_and_named_when_strict(tmp_path):
    import PIL.Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            PIL.Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(
                tmp_path / cls / f"{i}.png"
            )
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    before = folder_snapshot(tmp_path)
    bundle = tltf.load_data(str(tmp_path), image_size=(16, 16))
    assert bundle.num_train == 6
    assert [Path(f).name for f in bundle.skipped] == ["broken.jpg"]
    error = raises(
        errors.DataError,
        tltf.load_data,
        str(tmp_path),
        image_size=(16, 16),
        strict=True,
    )
    check_error(error, errors.DataError, "broken.jpg")
    assert folder_snapshot(tmp_path) == before


def test_unfreeze_deeper_than_the_base():
    x, y = make_data(n=16)
    error = raises(
        errors.ConfigError, tltf.fine_tune, make_tiny_model(), (x, y), unfreeze=20
    )
    check_error(error, errors.ConfigError, "[0, 4]", "received")


@pytest.mark.parametrize(
    "kwargs", [{"head_lr": -1e-3}, {"fine_tune_lr": "fast"}, {"head_lr": float("nan")}]
)
def test_learning_rate_not_a_positive_number(kwargs):
    x, y = make_data(n=16)
    error = raises(
        errors.ConfigError, tltf.fine_tune, make_tiny_model(), (x, y), **kwargs
    )
    check_error(error, errors.ConfigError, "positive number", "received")


def test_unknown_config_keys_suggest_the_right_one():
    from tltf.config import TrainConfig

    error = raises(
        errors.ConfigError,
        TrainConfig.from_dict,
        {"model": {"base": "mobilenet_v2"}, "schedule": {"head_epoch": 3}},
    )
    check_error(error, errors.ConfigError, "head_epoch", "head_epochs")
    head = raises(errors.ConfigError, tltf.HeadConfig.from_dict, {"hidden_unit": 8})
    check_error(head, errors.ConfigError, "hidden_units")


@pytest.mark.slow
def test_weights_file_for_another_architecture(tmp_path):
    other = make_tiny_base(input_shape=(32, 32, 3))
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    before = folder_snapshot(tmp_path)
    error = raises(
        errors.WeightsError,
        tltf.load_base,
        "mobilenet_v3_small",
        weights=str(path),
        input_shape=(32, 32, 3),
    )
    check_error(error, errors.WeightsError, "does not match", "mobilenet_v3_small")
    assert folder_snapshot(tmp_path) == before


def test_imagenet_weights_offline_names_the_file_and_place(tmp_path):
    error = raises(
        errors.WeightsError,
        tltf.load_base,
        "mobilenet_v2",
        weights="imagenet",
        weights_dir=tmp_path,
        input_shape=(96, 96, 3),
        alpha=0.35,
    )
    check_error(error, errors.WeightsError, ".h5", str(tmp_path))


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, capsys):
    from tltf import cli

    run = tmp_path / "run"
    run.mkdir()  # a finished run, as tltf leaves one
    (run / "config.yaml").write_text("model: {base: demo}\n")
    (run / "summary.json").write_text('{"done": true}')
    (run / ".tltf-run").write_text("{}\n")
    before = folder_snapshot(run)
    status = cli.main(
        ["train", "--base", "mobilenet_v2", "--train", str(tmp_path), "--out", str(run)]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "tltf: error:" in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert folder_snapshot(run) == before


def test_truncated_keras_file_and_lambda_layer(tmp_path):
    model = make_tiny_model()
    good = tmp_path / "model.keras"
    model.save(good)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    check_error(
        raises(errors.ModelError, tltf.load_model, truncated),
        errors.ModelError,
        "truncated",
    )
    lam = make_lambda_model()
    lam_path = tmp_path / "lambda.keras"
    lam.save(lam_path)
    check_error(
        raises(errors.ModelError, tltf.load_model, lam_path),
        errors.ModelError,
        "Lambda",
        "safe_mode",
    )
    check_error(
        raises(errors.ConfigError, tltf.load_model, good, safe_mode=False),
        errors.ConfigError,
        "safe_mode=True",
    )


def test_no_unsafe_loading_anywhere_in_the_package():
    """tltf never enables unsafe deserialization, never unpickles, never yaml.load."""
    root = Path(tltf.__file__).parent
    forbidden = (
        "enable_unsafe_deserialization",
        "safe_mode=False",
        "import pickle",
        "pickle.load",
        "yaml.load(",
        "yaml.unsafe_load",
        "yaml.full_load",
        "allow_pickle=True",
    )
    offenders = [
        f"{path.relative_to(root)}: {word}"
        for path in root.rglob("*.py")
        for word in forbidden
        if word in path.read_text()
    ]
    assert not offenders, offenders


def test_bad_calls_leave_an_existing_backup_untouched(tmp_path):
    """A bad argument or a mismatched call never touches a run's checkpoint."""
    x, y = make_data(n=32)
    backup = tmp_path / "backup"
    tltf.fine_tune(
        make_tiny_model(),
        (x, y),
        head_epochs=1,
        fine_tune_epochs=0,
        backup_dir=backup,
        seed=0,
        verbose=0,
    )
    before = folder_snapshot(backup)
    assert before
    bad_lr = raises(
        errors.ConfigError,
        tltf.fine_tune,
        make_tiny_model(),
        (x, y),
        head_epochs=1,
        fine_tune_epochs=0,
        head_lr=0,
        backup_dir=backup,
        verbose=0,
    )
    check_error(bad_lr, errors.ConfigError, "positive number")
    other_run = raises(
        errors.ConfigError,
        tltf.fine_tune,
        make_tiny_model(),
        (x, y),
        head_epochs=2,
        fine_tune_epochs=0,
        backup_dir=backup,
        verbose=0,
    )
    check_error(other_run, errors.ConfigError, "head_epochs", "untouched")
    assert folder_snapshot(backup) == before


def test_automatic_settings_misspelt_or_without_data():
    data = make_data(8)
    auto = raises(
        errors.ConfigError, tltf.fine_tune, make_tiny_model(), data, head_epochs="autp"
    )
    check_error(auto, errors.ConfigError, "head_epochs", "'auto'", "received", "autp")
    cut = raises(errors.ConfigError, tltf.build_model, make_tiny_base(), 3, cut="auto")
    check_error(cut, errors.ConfigError, "cut='auto'", "data=train")
    pool = raises(
        errors.ConfigError,
        tltf.build_model,
        make_tiny_base(),
        3,
        head={"pool_from": "middle"},
    )
    check_error(pool, errors.ConfigError, "pool_from", "'auto'", "received", "middle")
    for bad in (-8, 2.5, True):
        pixels = raises(
            errors.ConfigError,
            tltf.build_model,
            make_tiny_base(),
            3,
            head={"pixels": bad},
        )
        check_error(pixels, errors.ConfigError, "head pixels", ">= 0", repr(bad))


def test_model_fit_habits_get_the_fine_tune_spelling():
    """fine_tune(model, x, y), x=/y=, epochs= and sample_weight= are how
    model.fit is called; each error names the argument and what to pass
    (validation_split= is taken: tests/test_validation_split.py)."""
    model = make_tiny_model()
    x, y = make_data(20)
    error = raises(errors.DataError, tltf.fine_tune, model, x, y)
    check_error(error, errors.DataError, "(20, 16, 16, 3)", "without labels")
    check_error(error, errors.DataError, "(images, labels)")
    # The learning-rate finder and the probe read their data as fine_tune does.
    for function in (tltf.find_lr, tltf.probe_blocks):
        error = raises(errors.DataError, function, model, x)
        check_error(error, errors.DataError, "(20, 16, 16, 3)", "without labels")
    for keywords, words in (
        ({"x": x, "y": y}, ("x=", "fine_tune(model, (x, y))")),
        (
            {"train": (x, y), "epochs": 3},
            ("epochs=", "head_epochs", "fine_tune_epochs"),
        ),
        (
            {"train": (x, y), "sample_weight": np.ones(20)},
            ("sample_weight=", "fine_tune(model, (x, y, sample_weight))"),
        ),
    ):
        error = raises(errors.ConfigError, tltf.fine_tune, model, **keywords)
        check_error(error, errors.ConfigError, "model.fit", *words)
    # The split the message gives works.
    data = tltf.load_data((x, y), image_size=x.shape[1:3], validation_split=0.2, seed=0)
    assert (data.num_train, data.num_validation) == (16, 4)


def test_a_loss_for_the_other_kind_of_labels_is_named_before_training():
    """A sparse Keras loss on one-hot rows used to fail inside a traced training
    step, with a TensorFlow `InvalidArgumentError` ("Incompatible shapes")
    after the probe had run (a categorical loss on class indices too: those
    now become one-hot rows, `test_a_categorical_loss_takes_class_indices`)."""
    x, y = make_data(20)
    one_hot = keras.utils.to_categorical(y, 3)
    cases = (
        (
            {"loss": "sparse_categorical_crossentropy"},
            one_hot,
            ("class indices", "argmax"),
        ),
        ({"loss": "categorical_crosentropy"}, one_hot, ("Unknown loss", "Did you")),
        (
            {"loss": "categorical_crossentropy", "label_smoothing": 0.1},
            one_hot,
            ("label_smoothing=0.1", "CategoricalCrossentropy(label_smoothing=0.1)"),
        ),
        ({"loss": 3}, y, ("Expected loss as", "Received: loss=3")),
    )
    for kwargs, labels, words in cases:
        model = make_tiny_model()
        before = [w.copy() for w in model.get_weights()]
        error = raises(
            errors.ConfigError, tltf.fine_tune, model, (x, labels), verbose=0, **kwargs
        )
        check_error(error, errors.ConfigError, *words)
        for a, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)
    # A binary model has one sigmoid output: a categorical cross-entropy of one
    # column is 0 whatever it predicts, so before, nothing trained, silently.
    binary = make_tiny_model(2, task="binary")
    error = raises(
        errors.ConfigError,
        tltf.fine_tune,
        binary,
        (x, (y > 0).astype("int32")),
        loss="categorical_crossentropy",
        verbose=0,
    )
    check_error(error, errors.ConfigError, "one sigmoid output", "binary_crossentropy")


def test_a_misspelt_loss_or_metric_is_named_before_any_data_is_read():
    import tensorflow as tf

    def unread():  # a pipeline that fails the moment anything reads it
        raise AssertionError("the data was read")
        yield

    data = tf.data.Dataset.from_generator(
        unread,
        output_signature=(
            tf.TensorSpec((None, 16, 16, 3), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ),
    )
    for kwargs, words in (
        ({"loss": "sparse_categorical_crosentropy"}, ("Unknown loss", "Did you")),
        (
            {"loss": "categorical_crossentropy", "label_smoothing": 0.1},
            ("label_smoothing=0.1", "one of yours"),
        ),
        # Keras raised its own ValueError at compile, after the data was read.
        ({"metrics": ["acuracy"]}, ("Unknown metric 'acuracy'", "'accuracy'")),
        ({"metrics": "top_5_accuracy"}, ("Unknown metric", "'auto'")),
    ):
        error = raises(
            errors.ConfigError, tltf.fine_tune, make_tiny_model(), data, **kwargs
        )
        check_error(error, errors.ConfigError, *words)


def _one_head_epoch(data, **kwargs):
    """The History of one stage-1 epoch of the tiny model on `data`."""
    return tltf.fine_tune(
        make_tiny_model(), data, head_epochs=1, fine_tune_epochs=0, verbose=0, **kwargs
    )


def test_one_metric_alone_is_taken_as_keras_takes_a_list_of_one():
    # Keras's compile raised its own ValueError ("Expected `metrics` argument to
    # be a list, tuple, or dict") for a name alone.
    x, y = make_data(20)
    for metric, logged in (
        ("accuracy", "accuracy"),
        (keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"), "top2"),
    ):
        history = _one_head_epoch((x, y), metrics=metric)
        assert logged in history.history, history.history.keys()


def test_a_loss_that_fits_the_labels_trains():
    x, y = make_data(20)
    one_hot = keras.utils.to_categorical(y, 3)

    def own(y_true, y_pred):  # a function of the user's own: theirs to check
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    for loss, labels in (
        ("sparse_categorical_crossentropy", y),
        (keras.losses.CategoricalFocalCrossentropy(), one_hot),
        (own, y),
    ):
        history = _one_head_epoch((x, labels), loss=loss)
        assert len(history.history["loss"]) == 1


@pytest.mark.parametrize(
    "loss",
    ["categorical_focal_crossentropy", keras.losses.CategoricalHinge()],
    ids=["name", "object"],
)
def test_a_categorical_loss_takes_class_indices(loss):
    """Class indices become one-hot rows for a Keras loss that takes them, as
    for label smoothing: the model trains as on `to_categorical` labels (with
    sample weights, and validation data, turned likewise). Before, a
    ConfigError asked for `to_categorical`, which a `tltf train` config could
    not give."""
    x, y = make_data(30)
    w = np.linspace(0.5, 2.0, 30)
    xv, yv = make_data(12, seed=1)
    trained = []
    for to_labels in (lambda t: t, lambda t: keras.utils.to_categorical(t, 3)):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(
            model,
            (x, to_labels(y), w),
            validation_data=(xv, to_labels(yv)),
            loss=loss,
            head_epochs=1,
            fine_tune_epochs=1,
            unfreeze=1,
            seed=0,
            verbose=0,
        )
        trained.append((model.get_weights(), history.history["val_loss"]))
    (indices, val_a), (one_hot, val_b) = trained
    for a, b in zip(indices, one_hot, strict=True):
        np.testing.assert_array_equal(a, b)
    assert val_a == val_b


def test_callbacks_take_one_keras_callback_and_name_anything_else():
    # One callback, as Keras's own fit takes it, sees both stages.
    class Epochs(keras.callbacks.Callback):
        seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(epoch)

    tltf.fine_tune(
        make_tiny_model(),
        make_data(24),
        head_epochs=1,
        fine_tune_epochs=1,
        keep_best=False,
        callbacks=Epochs(),
        verbose=0,
    )
    assert Epochs.seen == [0, 1]
    # A class instead of an instance, or something else, fails before training.
    for bad, words in (
        ([keras.callbacks.EarlyStopping], "add the parentheses"),
        (["early_stopping"], "str 'early_stopping'"),
    ):
        error = raises(
            errors.ConfigError,
            tltf.fine_tune,
            make_tiny_model(),
            make_data(24),
            callbacks=bad,
        )
        check_error(error, errors.ConfigError, "keras.callbacks.Callback", words)
    error = raises(
        errors.ConfigError,
        tltf.tune,
        make_tiny_base(),
        make_data(24),
        num_classes=3,
        callbacks=[None],
    )
    check_error(error, errors.ConfigError, "NoneType None")


def test_class_indices_for_a_multilabel_or_binary_model_say_which_task_fits():
    x, y = make_data(12)  # class indices 0, 1, 2
    for task, classes, words in (
        ("multilabel", 3, ("shape (N, 3)", "task='multiclass'", "np.eye(3)[labels]")),
        ("binary", 2, ("outside [0, 1]", "task='multiclass' and num_classes=3")),
    ):
        model = tltf.build_model(make_tiny_base(), classes, task=task)
        error = raises(errors.DataError, tltf.fine_tune, model, (x, y), verbose=0)
        check_error(error, errors.DataError, *words)
