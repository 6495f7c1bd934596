"""evaluate, predict and write_predictions: metrics checked by hand, files read back."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tltf.errors import ConfigError, DataError
from tltf.evaluation import (
    EvaluationReport,
    evaluate,
    predict,
    read_images,
    write_predictions,
)


def _pixel_model(units, activation, shape=(1, 2, 3)):
    """Outputs `activation(first `units` pixel values)`: we choose the logits."""
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(units, activation=activation, name="out")
    outputs = dense(x)
    size = int(np.prod(shape))
    kernel = np.zeros((size, units), "float32")
    kernel[np.arange(units), np.arange(units)] = 1.0
    dense.set_weights([kernel, np.zeros(units, "float32")])
    return keras.Model(inputs, outputs)


def _images(logits, shape=(1, 2, 3)):
    logits = np.asarray(logits, "float32")
    x = np.zeros((len(logits), int(np.prod(shape))), "float32")
    x[:, : logits.shape[1]] = logits
    return x.reshape(len(logits), *shape)


# Eight examples over 4 classes. Predictions (argmax): 0 0 1 1 2 2 2 0.
LOGITS = [
    [3, 1, 0, 0],  # true 0 -> 0
    [3, 0, 1, 0],  # true 0 -> 0
    [1, 3, 0, 0],  # true 0 -> 1 (0 second: a top-2 hit)
    [0, 3, 1, 0],  # true 1 -> 1
    [0, 1, 3, 0],  # true 1 -> 2 (1 second: a top-2 hit)
    [0, 0, 3, 1],  # true 2 -> 2
    [1, 0, 3, 0],  # true 2 -> 2
    [3, 0, 1, 0],  # true 3 -> 0 (3 last: a top-2 miss)
]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3])
NAMES = ["ant", "bee", "cat", "dog"]


def _softmax(z):
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_multiclass_metrics_match_a_hand_computation():
    model = _pixel_model(4, "softmax")
    report = evaluate(model, (_images(LOGITS), LABELS), class_names=NAMES, top_k=2)
    assert report.task == "multiclass" and report.num_examples == 8
    np.testing.assert_array_equal(
        report.confusion,
        [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [1, 0, 0, 0]],
    )
    assert report.accuracy == pytest.approx(5 / 8)
    assert report.top_k == 2 and report.top_k_accuracy == pytest.approx(7 / 8)
    probs = _softmax(np.array(LOGITS, float))
    assert report.loss == pytest.approx(-np.log(probs[np.arange(8), LABELS]).mean())
    by_class = {row["class"]: row for row in report.per_class}
    # precision = tp / predicted, recall = tp / true, f1 = harmonic mean.
    expected = {
        "ant": (2 / 3, 2 / 3, 2 / 3, 3),
        "bee": (1 / 2, 1 / 2, 1 / 2, 2),
        "cat": (2 / 3, 1.0, 0.8, 2),
        "dog": (0.0, 0.0, 0.0, 1),  # Never predicted: 0/0 counts as 0.
    }
    for name, (p, r, f, s) in expected.items():
        row = by_class[name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == (
            pytest.approx(p),
            pytest.approx(r),
            pytest.approx(f),
            s,
        ), name
    macro = report.averages["macro"]
    assert macro["precision"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0) / 4)
    assert macro["f1"] == pytest.approx((2 / 3 + 1 / 2 + 0.8 + 0) / 4)
    weighted = report.averages["weighted"]
    assert weighted["recall"] == pytest.approx(5 / 8)  # Weighted recall = accuracy.
    assert weighted["f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 2 * 0.8) / 8)
    assert weighted["support"] == 8
    # No top-k accuracy for k at or above the number of classes (always 1).
    assert evaluate(model, (_images(LOGITS), LABELS), top_k=10).top_k is None


def test_logits_model_gets_the_same_report():
    """A linear multi-unit output is read as logits: softmax is applied."""
    data = (_images(LOGITS), LABELS)
    probs = evaluate(_pixel_model(4, "softmax"), data, top_k=2)
    logits = evaluate(_pixel_model(4, None), data, top_k=2)
    assert logits.task == "multiclass"
    assert logits.metrics == pytest.approx(probs.metrics)
    np.testing.assert_array_equal(logits.confusion, probs.confusion)


def test_binary_metrics_match_a_hand_computation():
    model = _pixel_model(1, "sigmoid")
    logits = [[2.0], [-1.0], [0.5], [-3.0], [1.0]]
    y = np.array([1, 1, 0, 0, 1])  # Predicted: 1 0 1 0 1.
    report = evaluate(model, (_images(logits), y), class_names=["no", "yes"])
    assert report.task == "binary" and report.top_k is None
    assert "top_k_accuracy" not in report.metrics
    np.testing.assert_array_equal(report.confusion, [[1, 1], [1, 2]])
    assert report.accuracy == pytest.approx(3 / 5)
    p = 1 / (1 + np.exp(-np.array(logits)[:, 0]))
    assert report.loss == pytest.approx(
        -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-5
    )
    yes = report.per_class[1]
    assert (yes["precision"], yes["recall"], yes["support"]) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        3,
    )


def test_multilabel_metrics_per_label_at_one_half():
    model = _pixel_model(3, "sigmoid")
    logits = [[1, -1, 1], [1, 1, -1], [-1, -1, -1], [1, -1, -1]]
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    report = evaluate(model, (_images(logits), y), class_names=["a", "b", "c"])
    assert report.task == "multilabel" and report.confusion is None
    # Rows exactly right: 0 and 3. Per label: a 4/4, b 2/4 (one fp, one fn), c 4/4.
    assert report.accuracy == pytest.approx(2 / 4)
    assert report.metrics["label_accuracy"] == pytest.approx(10 / 12)
    a, b, c = report.per_class
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 1.0, 3)
    assert (b["precision"], b["recall"], b["support"]) == (0.0, 0.0, 1)
    assert (c["precision"], c["recall"], c["support"]) == (1.0, 1.0, 1)
    # micro: tp 4, fp 1, fn 1.
    assert report.averages["micro"]["precision"] == pytest.approx(4 / 5)
    assert report.plot_confusion() is None  # No confusion matrix to plot.


def test_regression_metrics():
    model = _pixel_model(1, None)
    values = np.array([[1.0], [2.0], [4.0], [3.0]])
    y = np.array([1.5, 2.0, 3.0, 3.0])
    report = evaluate(model, (_images(values), y))
    assert report.task == "regression"
    err = values[:, 0] - y
    assert report.metrics["mae"] == pytest.approx(np.abs(err).mean())
    assert report.metrics["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert report.loss == pytest.approx((err**2).mean())
    r2 = 1 - (err**2).sum() / ((y - y.mean()) ** 2).sum()
    assert report.metrics["r2"] == pytest.approx(r2)
    assert "MAE" in str(report) and report.plot_confusion() is None


def test_report_outputs(tmp_path, capsys):
    report = evaluate(
        _pixel_model(4, "softmax"),
        (_images(LOGITS), LABELS),
        class_names=NAMES,
        top_k=3,
    )
    path = report.to_json(tmp_path / "out" / "evaluation.json")
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert loaded["confusion_matrix"][0] == [2, 1, 0, 0]
    assert loaded["per_class"][2]["class"] == "cat"
    assert loaded["metrics"]["accuracy"] == pytest.approx(5 / 8)
    report.print()
    text = capsys.readouterr().out
    assert text.strip() == str(report).strip()
    for needle in ("accuracy", "top-3 accuracy", "precision", "macro avg", "dog"):
        assert needle in text
    assert "confusion matrix" in text
    figure = report.plot_confusion(tmp_path / "confusion.png")
    assert figure is not None
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "out"]


def test_class_names_are_checked():
    with pytest.raises(ConfigError, match="Expected 4 class names"):
        evaluate(
            _pixel_model(4, "softmax"), (_images(LOGITS), LABELS), class_names=["a"]
        )
    with pytest.raises(ConfigError, match="top_k"):
        evaluate(_pixel_model(4, "softmax"), (_images(LOGITS), LABELS), top_k=0)


# -- predict on files --------------------------------------------------------------
def _channel_model(size=8):
    """Scores the mean of each channel: predicts the dominant colour."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    dense.set_weights([np.eye(3, dtype="float32") / 20, np.zeros(3, "float32")])
    return keras.Model(inputs, outputs)


def _colour(channel, size=(10, 14)):
    image = np.full((*size, 3), 30, np.uint8)
    image[..., channel] = 220
    return image


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = tf.io.encode_png if path.suffix == ".png" else tf.io.encode_jpeg
    path.write_bytes(encode(image).numpy())


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    _write(root / "a_red.png", _colour(0))
    _write(root / "b_green.jpg", _colour(1))
    _write(root / "sub" / "c_blue.png", _colour(2, size=(6, 20)))
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.slow
def test_predict_on_a_folder_with_png_and_jpg(photo_folder, capsys):
    rows = predict(
        _channel_model(), photo_folder, class_names=["red", "green", "blue"], top_k=2
    )
    assert "skipped 1 unreadable file(s): broken.png" in capsys.readouterr().out
    assert [r["file"] for r in rows] == [
        str(photo_folder / "a_red.png"),
        str(photo_folder / "b_green.jpg"),
        str(photo_folder / "sub" / "c_blue.png"),
    ]
    assert [r["labels"][0] for r in rows] == ["red", "green", "blue"]
    for row in rows:
        assert len(row["labels"]) == len(row["scores"]) == 2
        assert row["scores"][0] >= row["scores"][1] > 0
    # Top-k is capped at the number of classes.
    rows = predict(_channel_model(), photo_folder, top_k=5)
    assert len(rows[0]["labels"]) == 3 and rows[0]["labels"][0] == "0"
    assert sum(rows[0]["scores"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_predict_reads_images_as_load_data_does(photo_folder, tmp_path):
    classes = tmp_path / "classes"
    _write(classes / "one" / "x.png", _colour(0, size=(9, 13)))
    _write(classes / "two" / "y.jpg", _colour(1, size=(15, 7)))
    for resize in ("stretch", "crop", "pad"):
        images, files = read_images(classes, 8, resize=resize)
        data = tltf.load_data(classes, image_size=8, shuffle=False, resize=resize)
        expected = np.concatenate([x.numpy() for x, _ in data.train])
        np.testing.assert_array_equal(images, expected)
    assert files == [str(classes / "one" / "x.png"), str(classes / "two" / "y.jpg")]


@pytest.mark.slow
def test_predict_on_arrays_files_and_npz(photo_folder, tmp_path):
    model = _channel_model()
    images = np.stack([_colour(2, (8, 8)), _colour(0, (8, 8))])
    rows = predict(model, images, top_k=1)
    assert rows == [
        {"index": 0, "labels": ["2"], "scores": rows[0]["scores"]},
        {"index": 1, "labels": ["0"], "scores": rows[1]["scores"]},
    ]
    # Another size: resized to the model's input.
    big = np.stack([_colour(1, (30, 30))])
    assert predict(model, big, top_k=1)[0]["labels"] == ["1"]
    # One file, and a list of files.
    one = predict(model, photo_folder / "b_green.jpg", top_k=1)
    assert one[0]["file"].endswith("b_green.jpg") and one[0]["labels"] == ["1"]
    files = [photo_folder / "sub" / "c_blue.png", photo_folder / "a_red.png"]
    assert [r["labels"][0] for r in predict(model, files, top_k=1)] == ["2", "0"]
    with pytest.raises(DataError, match="Could not decode"):
        predict(model, [photo_folder / "broken.png"])
    with pytest.raises(DataError, match="No such file"):
        predict(model, tmp_path / "missing")
    # A .npz file, with its class names.
    np.savez(tmp_path / "x.npz", x=images, class_names=np.array(["r", "g", "b"]))
    rows = predict(model, tmp_path / "x.npz", top_k=1)
    assert [r["labels"] for r in rows] == [["b"], ["r"]]
    # A tf.data.Dataset of images or (image, label) pairs, batched or not.
    pairs = tf.data.Dataset.from_tensor_slices((images, np.array([2, 0])))
    for ds in (pairs, pairs.batch(1), pairs.map(lambda x, y: x)):
        rows = predict(model, ds, top_k=1)
        assert [(r["index"], r["labels"]) for r in rows] == [(0, ["2"]), (1, ["0"])]
    with pytest.raises(DataError, match="empty dataset"):
        predict(model, pairs.take(0))


@pytest.mark.slow
def test_write_predictions_csv_and_json(photo_folder, tmp_path):
    rows = predict(
        _channel_model(), photo_folder, class_names=["red", "green", "blue"], top_k=2
    )
    path = write_predictions(rows, tmp_path / "out" / "predictions.csv")
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["file", "label_1", "score_1", "label_2", "score_2"]
    assert [r["label_1"] for r in table] == ["red", "green", "blue"]
    assert float(table[0]["score_1"]) == pytest.approx(rows[0]["scores"][0])
    path = write_predictions(rows, tmp_path / "out" / "predictions.json")
    assert json.loads(path.read_text()) == rows
    with pytest.raises(ConfigError, match=r"\.csv or \.json"):
        write_predictions(rows, tmp_path / "predictions.txt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predictions.csv",
        "predictions.json",
    ]


def test_multilabel_and_regression_rows(tmp_path):
    logits = [[2, -2, 1]]
    rows = predict(_pixel_model(3, "sigmoid"), _images(logits), top_k=2)
    assert rows[0]["labels"] == ["0", "2"] and rows[0]["predicted"] == ["0", "2"]
    rows = predict(_pixel_model(1, None), _images([[4.5]]))
    assert rows == [{"index": 0, "values": [4.5]}]
    table = write_predictions(rows, tmp_path / "r.csv").read_text().splitlines()
    assert table == ["index,value_1", "0,4.5"]


@pytest.mark.slow
def test_evaluate_on_a_folder_and_a_bundle(tmp_path):
    root = tmp_path / "classes"
    for i, name in enumerate(["red", "green", "blue"]):
        _write(root / name / "one.png", _colour(i))
        _write(root / name / "two.jpg", _colour(i, size=(20, 9)))
    model = _channel_model()
    report = evaluate(model, root)
    assert report.class_names == ["blue", "green", "red"]  # Sorted subfolders.
    # The model's classes are (red, green, blue); folder labels are alphabetical.
    np.testing.assert_array_equal(report.confusion, [[0, 0, 2], [0, 2, 0], [2, 0, 0]])
    data = tltf.load_data(root, image_size=8, validation_split=0.5, seed=0)
    report = evaluate(model, data)
    assert report.num_examples == data.num_validation == 3
    with pytest.raises(DataError, match="image_size"):
        evaluate(model, tltf.load_data(root, image_size=10))


def test_report_is_a_frozen_dataclass():
    report = evaluate(_pixel_model(4, "softmax"), (_images(LOGITS), LABELS))
    assert isinstance(report, EvaluationReport)
    with pytest.raises(AttributeError):
        report.task = "binary"


def test_evaluate_takes_kerass_x_y_form():
    """`evaluate(model, x, y)`, as Keras's `model.evaluate(x, y)`: the report of
    `evaluate(model, (x, y))`. Labels with data that is not an array of images
    are a ConfigError that names both forms."""
    model = _pixel_model(4, "softmax")
    x = _images(LOGITS)
    assert (
        evaluate(model, x, LABELS).to_dict() == evaluate(model, (x, LABELS)).to_dict()
    )
    with pytest.raises(ConfigError, match=r"evaluate\(model, \(x, y\)\)"):
        evaluate(model, (x, LABELS), LABELS)


# -- sample weights ---------------------------------------------------------------
#: One case per task: a model, its images and labels, as the tests above build them.
WEIGHED_TASKS = {
    "multiclass": lambda: (_pixel_model(4, "softmax"), _images(LOGITS), LABELS),
    "binary": lambda: (
        _pixel_model(1, "sigmoid"),
        _images([[2.0], [-1.0], [0.5], [-3.0], [1.0], [0.2], [-0.4], [1.5]]),
        np.array([1, 1, 0, 0, 1, 0, 1, 1]),
    ),
    "multilabel": lambda: (
        _pixel_model(3, "sigmoid"),
        _images([[1, -1, 1], [1, 1, -1], [-1, -1, -1], [1, -1, -1]] * 2),
        np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]] * 2),
    ),
    "regression": lambda: (
        _pixel_model(1, None),
        _images([[1.0], [2.0], [4.0], [3.0], [0.0], [2.5], [1.0], [5.0]]),
        np.array([1.5, 2.0, 3.0, 3.0, 0.5, 2.0, 2.0, 4.0]),
    ),
}


@pytest.mark.parametrize("task", list(WEIGHED_TASKS))
def test_integer_weights_report_what_repeated_images_report(task, capsys):
    """A weight of n counts an image n times, as scikit-learn's sample_weight
    does: every metric, support and confusion count equals the unweighted
    report of the data with each image repeated n times (0: left out)."""
    model, x, y = WEIGHED_TASKS[task]()
    w = np.array([1, 2, 0, 3, 1, 1, 2, 4], "float32")[: len(x)]
    weighted = evaluate(model, (x, y, w), top_k=2)
    repeated = evaluate(
        model,
        (np.repeat(x, w.astype(int), axis=0), np.repeat(y, w.astype(int), axis=0)),
        top_k=2,
    )
    assert weighted.num_examples == len(x) and weighted.total_weight == w.sum()
    assert repeated.total_weight is None
    assert weighted.metrics == pytest.approx(repeated.metrics)
    for ours, theirs in zip(weighted.per_class, repeated.per_class, strict=True):
        assert ours == pytest.approx(theirs)
    assert weighted.averages.keys() == repeated.averages.keys()
    for key, row in weighted.averages.items():
        assert row == pytest.approx(repeated.averages[key])
    if task in ("multiclass", "binary"):
        np.testing.assert_allclose(weighted.confusion, repeated.confusion)
        assert weighted.plot_confusion() is not None
    text = str(weighted)
    assert f"Evaluation of {len(x)} examples" in text
    assert f"weighted (total weight {w.sum():g})" in text
    assert weighted.to_dict()["total_weight"] == w.sum()


def test_sample_weights_in_every_form_give_one_report():
    """`(x, y, w)`, Keras's `evaluate(model, x, y, sample_weight=w)`, and a
    tf.data.Dataset of (image, label, weight), batched or not, give the same
    report; weights of 1 give the unweighted one, and fractional weights are
    printed as sums."""
    model, x, y = WEIGHED_TASKS["multiclass"]()
    w = np.array([0.5, 2, 1, 1.5, 0.25, 1, 3, 1], "float32")
    report = evaluate(model, (x, y, w), class_names=NAMES).to_dict()
    assert report["per_class"][0]["support"] == pytest.approx(3.5)  # ant: 0.5+2+1
    for form in (
        evaluate(model, x, y, sample_weight=w, class_names=NAMES),
        evaluate(model, (x, y), sample_weight=w, class_names=NAMES),
        evaluate(
            model, tf.data.Dataset.from_tensor_slices((x, y, w)), class_names=NAMES
        ),
        evaluate(
            model,
            tf.data.Dataset.from_tensor_slices((x, y, w)).batch(3),
            class_names=NAMES,
        ),
    ):
        assert form.to_dict() == report
    ones = evaluate(model, (x, y, np.ones(8)), class_names=NAMES).to_dict()
    plain = evaluate(model, (x, y), class_names=NAMES).to_dict()
    assert ones.pop("total_weight") == 8 and plain.pop("total_weight") is None
    assert ones == plain
    text = str(evaluate(model, (x, y, w), class_names=NAMES))
    assert "3.5" in text  # ant's support, and a confusion count
    assert "2.5" in text.split("confusion matrix")[1]  # ant predicted ant: 0.5+2


def test_bad_sample_weights_are_named(monkeypatch):
    model, x, y = WEIGHED_TASKS["multiclass"]()
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(8, "float32")))
    with pytest.raises(DataError, match="it repeats forever.*arrays"):
        evaluate(model, weighted.repeat())
    monkeypatch.setattr(tltf.evaluation, "WEIGHTED_DATASET_BYTES", 100)
    with pytest.raises(DataError, match="more than .* MiB.*arrays"):
        evaluate(model, weighted)
    with pytest.raises(ConfigError, match="sample weights twice"):
        evaluate(model, (x, y, np.ones(8)), sample_weight=np.ones(8))
    with pytest.raises(ConfigError, match=r"sample_weight= with \(images, labels\)"):
        evaluate(
            model, tf.data.Dataset.from_tensor_slices((x, y)), sample_weight=np.ones(8)
        )
    with pytest.raises(DataError, match="sample weights"):
        evaluate(model, (x, y, -np.ones(8)))
    with pytest.raises(DataError, match="one number per image"):
        evaluate(model, x, y, sample_weight=np.ones(5))


def test_labels_outside_the_models_classes_are_named_in_its_terms():
    # load_data's own error would tell evaluate's caller to pass num_classes,
    # which evaluate does not take: the model fixes its classes.
    model, x, y = WEIGHED_TASKS["multiclass"]()
    classes = model.output_shape[-1]
    for data in (
        (x, y + classes),
        tf.data.Dataset.from_tensor_slices((x, y + classes)).batch(3),
    ):
        with pytest.raises(DataError) as info:
            evaluate(model, data)
        message = str(info.value)
        assert f"the model has {classes} classes (labels 0 to {classes - 1})" in message
        assert "class_names" in message and "pass num_classes" not in message


def test_one_hot_rows_of_another_width_are_named_in_the_models_terms():
    # load_data's own error spoke of "train labels" and of a num_classes that
    # evaluate does not take.
    model, x, y = WEIGHED_TASKS["multiclass"]()
    classes = model.output_shape[-1]
    rows = np.eye(classes + 2)[y]
    for data in ((x, rows), tf.data.Dataset.from_tensor_slices((x, rows)).batch(3)):
        with pytest.raises(DataError) as info:
            evaluate(model, data)
        message = str(info.value)
        assert f"one-hot rows of {classes + 2} columns" in message, message
        assert f"the model has {classes} classes" in message
        assert "train labels" not in message and "pass num_classes" not in message
