"""Class names travel with the model: fine_tune records them; predict and evaluate
name the classes and label a test folder's subfolders by them, after a reload too."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import (
    IMAGE_CLASSES,
    make_image_folder,
    make_tiny_model,
)
from tltf.errors import DataError

# One quick epoch each: these tests are about names, not accuracy.
QUICK = {"head_epochs": 1, "fine_tune_epochs": 0, "head_steps": 0, "verbose": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model fine-tuned on an image folder, and that folder."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("names") / "photos"
    make_image_folder(root, per_class=4)
    model = make_tiny_model(3)
    tltf.fine_tune(model, tltf.load_data(root, image_size=16), **QUICK)
    return model, root


def test_fine_tune_records_the_folders_class_names(trained, tmp_path):
    model, _ = trained
    assert tltf.model_info(model).class_names == list(IMAGE_CLASSES)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert tltf.model_info(loaded).class_names == list(IMAGE_CLASSES)


def test_predict_and_evaluate_name_the_classes_without_being_told(trained):
    model, root = trained
    rows = tltf.predict(model, root / "red", top_k=3)
    assert sorted(rows[0]["labels"]) == sorted(IMAGE_CLASSES)  # not "0", "1", "2"
    report = tltf.evaluate(model, root)
    assert report.class_names == list(IMAGE_CLASSES)


def test_a_test_folder_with_some_classes_is_labelled_by_name(trained, tmp_path):
    """Without the model's names, "red" alone would be label 0 ("blue")."""
    model, root = trained
    test = tmp_path / "test"
    shutil.copytree(root / "red", test / "red")
    report = tltf.evaluate(model, test)
    red = IMAGE_CLASSES.index("red")
    assert report.confusion.sum(axis=1).tolist() == [
        4 if c == red else 0 for c in range(3)
    ]
    shutil.copytree(root / "red", test / "pink")
    with pytest.raises(DataError, match=r"\['pink'\].*not among the classes"):
        tltf.evaluate(model, test)


def test_data_with_other_class_names_is_refused(trained):
    model, _ = trained
    x = np.zeros((3, 16, 16, 3), np.float32)
    data = tltf.load_data((x, np.arange(3)), class_names=["x", "y", "z"])
    with pytest.raises(DataError, match=r"\['x', 'y', 'z'\].*would not line up"):
        tltf.evaluate(model, data)
    with pytest.raises(DataError, match="trained on the classes.*would not line up"):
        tltf.fine_tune(model, data, **QUICK)


def test_arrays_record_nothing_and_keep_the_numbers():
    model = make_tiny_model(3)
    x = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype("float32")
    tltf.fine_tune(model, (x, np.arange(6) % 3), **QUICK)
    assert tltf.model_info(model).class_names is None
    assert tltf.predict(model, x[:1], top_k=1)[0]["labels"][0] in ("0", "1", "2")


@pytest.mark.slow
def test_tunes_best_model_names_the_classes(tmp_path):
    """keras-tuner rebuilds the best model from a checkpoint; it keeps the names.
    One hypermodel searched on data of other classes names those."""
    from tests import tuning_job

    root = tmp_path / "photos"
    make_image_folder(root, per_class=4)
    hypermodel = tuning_job.hypermodel(
        search={"unfreeze": [1], "head_units": 0, "head_dropout": 0.0}
    )
    renamed = tmp_path / "renamed"
    for name in IMAGE_CLASSES:
        shutil.copytree(root / name, renamed / f"{name}_2")
    for folder, names in ((root, IMAGE_CLASSES), (renamed, None)):
        data = tltf.load_data(folder, image_size=16, validation_split=0.25)
        names = list(names or data.class_names)
        result = tltf.tune(
            hypermodel,
            data,
            tuner="grid",
            max_trials=1,
            directory=tmp_path / f"search-{folder.name}",
            verbose=0,
        )
        assert tltf.model_info(result.best_model).class_names == names
        saved = tltf.load_model(result.paths["model"])
        assert tltf.model_info(saved).class_names == names
    assert names == [f"{n}_2" for n in IMAGE_CLASSES]
