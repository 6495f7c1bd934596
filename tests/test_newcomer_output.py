"""Issue 14, items 3 and 4: small-data guardrails and what a newcomer reads.

Small data: a validation set too small for its classes is named in a warning,
empty class folders are dropped (or refused with `strict=True`), and top-k
accuracy is reported only when k is below the number of classes. Output:
`tltf evaluate -q` still prints its report, loading a model for inference prints
no optimizer warning, the progress bar shows no `stage: 2.0000`, a base prints
as one short line, and the docs say what a seed fixes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import tltf
from tests.helpers import check_error, folder_snapshot, make_data, make_tiny_base
from tltf import errors
from tltf.cli import main
from tltf.evaluation import evaluate
from tltf.info import set_class_names

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """A class-folder tree with `counts[name]` tiny PNGs per class (0: empty)."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# -- item 3: small data --------------------------------------------------------------
@pytest.mark.slow
def test_a_validation_split_smaller_than_the_classes_is_warned(tmp_path, capsys):
    # The newcomer's case: two images per class, validation_split=0.2.
    root = _folder(tmp_path / "photos", {"ant": 2, "bee": 2, "cat": 2})
    data = tltf.load_data(root, image_size=8, validation_split=0.2)
    assert data.num_validation == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "warning" in x)
    assert "1 image for 3 classes" in line and "validation_split" in line
    missing = [n for n in ("ant", "bee", "cat") if n in line]
    assert len(missing) == 2, line  # the two classes with no validation image


def test_a_validation_set_missing_a_class_is_warned(capsys):
    x, y = make_data(n=30, size=8, classes=3)
    xv, yv = make_data(n=10, size=8, classes=2, seed=1)  # classes 0 and 1 only
    tltf.load_data((x, y), image_size=8, validation=(xv, yv))
    out = capsys.readouterr().out
    assert "warning" in out and "none of class 2" in out
    assert "validation images of every class" in out
    # A validation set with every class says nothing.
    tltf.load_data((x, y), image_size=8, validation=(x[:6], y[:6]))
    assert "warning" not in capsys.readouterr().out


@pytest.mark.slow
def test_an_empty_class_folder_is_dropped_with_a_note(tmp_path, capsys):
    root = _folder(tmp_path / "photos", {"ant": 2, "bee": 0, "cat": 2})
    data = tltf.load_data(root, image_size=8, shuffle=False)
    note = capsys.readouterr().out
    assert "dropped class folders with no readable images: bee" in note
    assert "num_classes=3" in note and "strict=True" in note
    assert data.class_names == ["ant", "cat"] and data.num_classes == 2
    labels = np.concatenate([y.numpy() for _, y in data.train])
    assert labels.tolist() == [0, 0, 1, 1]  # cat is class 1 now
    assert data.counts.tolist() == [2, 2]
    # Asked for: num_classes=3 keeps the empty class.
    kept = tltf.load_data(root, image_size=8, num_classes=3)
    assert kept.class_names == ["ant", "bee", "cat"] and kept.counts.tolist() == [
        2,
        0,
        2,
    ]


def test_an_empty_class_folder_is_refused_in_strict_mode(tmp_path):
    root = _folder(tmp_path / "photos", {"ant": 2, "bee": 0, "cat": 2})
    before = folder_snapshot(root)
    with pytest.raises(errors.DataError) as info:
        tltf.load_data(root, image_size=8, strict=True)
    check_error(
        info.value, errors.DataError, "bee", "no readable images", "num_classes=3"
    )
    assert folder_snapshot(root) == before


def test_one_class_with_images_is_refused(tmp_path):
    root = _folder(tmp_path / "photos", {"cats": 3, "dogs": 0})
    for task in ("multiclass", "binary"):
        with pytest.raises(errors.DataError) as info:
            tltf.load_data(root, image_size=8, task=task)
        check_error(
            info.value, errors.DataError, "only one class", "dogs", "at least 2"
        )


def test_evaluate_keeps_an_empty_test_class_of_the_model(tmp_path):
    model = tltf.build_model(make_tiny_base((8, 8, 3)), 3, weights=None)
    test = _folder(tmp_path / "test", {"ant": 2, "bee": 0, "cat": 2})
    report = evaluate(model, test)
    assert report.class_names == ["ant", "bee", "cat"]
    assert sorted(set(report.y_true.tolist())) == [0, 2]


@pytest.mark.slow
def test_cli_evaluate_keeps_an_empty_test_class_of_the_model(tmp_path, capsys):
    model = tltf.build_model(make_tiny_base((8, 8, 3)), 3, weights=None)
    set_class_names(model, ["ant", "bee", "cat"])
    model.save(tmp_path / "model.keras")
    test = _folder(tmp_path / "test", {"ant": 2, "bee": 0, "cat": 2})
    out = str(tmp_path / "eval")
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "model.keras"),
                "--data",
                str(test),
                "--out",
                out,
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["class_names"] == ["ant", "bee", "cat"]
    assert "dropped" not in capsys.readouterr().out


@pytest.mark.slow
def test_top_k_accuracy_only_below_the_number_of_classes():
    model = tltf.build_model(make_tiny_base((8, 8, 3)), 3, weights=None)
    x, y = make_data(n=9, size=8, classes=3)
    report = evaluate(model, (x, y))  # top_k=5 by default, 3 classes
    assert report.top_k is None and "top_k_accuracy" not in report.metrics
    assert "top-" not in str(report)
    assert evaluate(model, (x, y), top_k=3).top_k is None
    two = evaluate(model, (x, y), top_k=2)
    assert two.top_k == 2 and "top-2 accuracy" in str(two)


# -- item 4: output ----------------------------------------------------------------------
@pytest.fixture
def tuned_model_file(tmp_path):
    """A model saved as the tuner saves its best one: compiled, optimizer unbuilt."""
    model = tltf.build_model(make_tiny_base((8, 8, 3)), 3, weights=None)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    path = tmp_path / "best_model.keras"
    model.save(path)
    x, y = make_data(n=9, size=8, classes=3)
    np.savez(tmp_path / "test.npz", x=x.astype("uint8"), y=y)
    return path


@pytest.mark.slow
def test_evaluate_quiet_still_prints_the_report(tuned_model_file, capsys):
    folder = tuned_model_file.parent
    argv = ["evaluate", str(tuned_model_file), "--data", str(folder / "test.npz")]
    assert main([*argv, "-q", "--out", str(folder / "eval")]) == 0
    out = capsys.readouterr().out
    assert "Evaluation of 9 examples" in out and "precision" in out
    assert "tltf: wrote" in out
    # The data given first, in place of --data (`tltf evaluate RUN photos/`).
    argv = ["evaluate", str(tuned_model_file), str(folder / "test.npz")]
    assert main([*argv, "-q", "--out", str(folder / "eval2")]) == 0
    assert "Evaluation of 9 examples" in capsys.readouterr().out
    assert main([*argv, "--data", "other/"]) == 2
    assert capsys.readouterr().err == (
        f"tltf: error: the labelled data is given twice: {str(folder / 'test.npz')!r}"
        " and --data 'other/'; give it once.\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_inference_loads_print_no_optimizer_warning(tuned_model_file, command):
    folder = tuned_model_file.parent
    data = str(folder / "test.npz")
    argv = (
        ["evaluate", str(tuned_model_file), "--data", data, "--out", str(folder / "e")]
        if command == "evaluate"
        else ["predict", str(tuned_model_file), data]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]


@pytest.mark.slow
def test_the_progress_bar_shows_no_float_stage(capsys):
    x, y = make_data(n=32, size=16, classes=3)
    for cache in (True, False):
        keras.utils.set_random_seed(0)
        model = tltf.build_model(make_tiny_base(), 3, weights=None)
        history = tltf.fine_tune(
            model,
            (x, y),
            (x, y),
            head_epochs=1,
            fine_tune_epochs=1,
            unfreeze=1,
            cache_features=cache,
            verbose=1,
        )
        out = capsys.readouterr().out
        assert "val_loss:" in out  # the bar was shown...
        assert " - stage:" not in out  # ...without Keras's "stage: 2.0000"
        assert history.history["stage"] == [1, 2]
        assert list(map(type, history.history["stage"])) == [int, int]


@pytest.mark.slow
def test_the_demo_base_prints_as_one_short_line():
    from tltf.pretrain import default_demo_base

    base = default_demo_base(verbose=0)
    text = repr(base)
    assert len(text) < 300 and "\n" not in text, text
    assert base.name in text and "(64, 64, 3)" in text
    assert f"{len(base.block_map)} blocks" in text
    assert "shapes_source" in text and Path(base.info["path"]).name in text


@pytest.mark.slow
def test_a_registry_base_prints_its_weights():
    base = tltf.bases.load_base(
        "mobilenet_v3_small", weights=None, input_shape=(32, 32, 3)
    )
    text = repr(base)
    assert text.startswith("Base('mobilenet_v3_small'") and "weights='random'" in text


def test_the_docs_say_what_a_seed_fixes():
    text = " ".join((DOCS / "resume.md").read_text().split())
    assert "## What a seed fixes" in (DOCS / "resume.md").read_text()
    for words in (
        "keras.utils.set_random_seed(0)",
        "before `build_model`",
        "head's initial weights",
        "dropout",
        "not bit-equal across machines",
    ):
        assert words in text, words


@pytest.mark.slow
@pytest.mark.parametrize("augment", [None, True])
def test_the_documented_seed_recipe_repeats_a_run(augment):
    """The docs' recipe: seed Keras before build_model, then the same weights.

    Augmented too: `seed` fixes the random layers, and their draws must reach the
    same images in the same order (several batches per epoch).
    """
    x, y = make_data(n=128, size=48, classes=3)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        base = make_tiny_base(input_shape=(48, 48, 3))
        model = tltf.build_model(base, 3, weights=None, head={"dropout": 0.2})
        tltf.fine_tune(
            model,
            (x, y),
            head_epochs=1,
            fine_tune_epochs=1,
            unfreeze=1,
            batch_size=16,
            augment=augment,
            seed=0,
            verbose=0,
        )
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_kerass_global_seed_alone_repeats_a_run_with_the_defaults():
    """Without `seed=`, `keras.utils.set_random_seed` repeats a default run, as
    it repeats a Keras `fit`: stage 1 draws its batches of cached features from
    TensorFlow's global seed (they came from fresh entropy: the same call
    converged after 3, 4 or 10 epochs)."""
    x, y = make_data(48)
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = tltf.build_model(make_tiny_base(), 3)
        tltf.fine_tune(model, (x, y), fine_tune_epochs=0, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_cut_says_plainly_when_no_cut_is_needed(monkeypatch, capsys):
    # The line read "top 0.688, top 0.688" when the best block was the top one.
    class Probed:
        cut = None
        table = [{"block": "block1", "val_accuracy": 0.5}]
        table.append({"block": "block4", "val_accuracy": 0.688})
        best = table[-1]
        key, metric, measure = "val_accuracy", "accuracy", "accuracy"

    monkeypatch.setattr("tltf.model.probe_blocks", lambda *a, **k: Probed())
    tltf.build_model(make_tiny_base(), 3, weights=None, cut="auto", data=make_data(6))
    line = capsys.readouterr().out
    assert "cut='auto' -> None" in line
    assert "the top block is as good as any: 0.688" in line
    assert "top 0.688, top" not in line
