"""The `tltf` command line end to end: train -> evaluate, predict, export; tune.

One `tltf train` in a subprocess (a generated image folder, a tiny saved base)
feeds the other commands. Subprocesses prove what a user sees (exit status, no
traceback); everything else calls `tltf.cli.main` in-process. The subprocesses
start with tltf imported (tests/processes.py), except the one whose whole
output, import included, is checked.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

import tltf
from tests import processes
from tests.helpers import (
    IMAGE_CLASSES,
    TRAIN_CONFIG,
    cli_error,
    make_image_folder,
    make_tiny_base,
)
from tltf import runs
from tltf.cli import main
from tltf.runs import HistoryCSV, default_image_size, read_history, still_improving
from tltf.schedule import fine_tune


def _tltf(*args, cwd, fresh=False):
    """`python -m tltf.cli ...` in a new process: one started with tltf imported
    (tests/processes.py), or with `fresh=True` a new interpreter, whose output
    includes what importing tltf prints."""
    env = {**os.environ, "TLTF_HOME": str(cwd / "home")}
    args = [sys.executable, "-m", "tltf.cli", *map(str, args)]
    if not fresh:
        return processes.run(args, env=env, cwd=cwd, timeout=300)
    return subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_image_folder(root / "images")
    base = tltf.load_base(make_tiny_base(), preprocessing="tf")
    tltf.save_base(base, root / "base")
    (root / "train.yaml").write_text(TRAIN_CONFIG.format(base="base", images="images"))
    return root


@pytest.fixture(scope="module")
def trained(work):
    """`tltf train` in a subprocess; flags override the config file."""
    result = _tltf(
        "train",
        "--config",
        "train.yaml",
        "--head-epochs",
        "1",
        "--out",
        "runs/first",
        cwd=work,
    )
    _ok(result)
    return work / "runs" / "first", result


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(trained):
    run, result = trained
    assert "tltf: wrote runs/first" in result.stdout
    # Keras progress, each stage counted to its last epoch
    assert "Epoch 1/1" in result.stdout and "Epoch 2/2" in result.stdout
    # Piped, one line per epoch: no progress bars, no terminal control codes.
    assert "\x1b[" not in result.stdout and "━" not in result.stdout
    assert "tltf: stage 2 from epoch 2" in result.stdout
    for name in (
        "config.yaml",
        "history.csv",
        "best.keras",
        "last.keras",
        "summary.json",
        "evaluation.json",
        "plots/history.png",
        "plots/confusion.png",
    ):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # removed once the run finished
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((run / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    # The resolved config: the file's values, then the flag (--head-epochs 1).
    from tltf.config import TrainConfig, load_config_file

    config = TrainConfig.from_dict(load_config_file(run / "config.yaml"))
    assert config.schedule.head_epochs == 1 and config.schedule.unfreeze == 2
    assert config.schedule.head_lr == 1e-2 and config.model.head.dropout == 0.1
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["stage"] for r in rows] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"]["run"] == 2
    assert summary["class_names"] == list(IMAGE_CLASSES)
    assert summary["best"]["monitor"] == "val_loss"
    assert summary["best"]["value"] == min(float(r["val_loss"]) for r in rows)
    assert summary["evaluation"]["num_examples"] == 6
    for name in ("best.keras", "last.keras"):
        model = keras.saving.load_model(run / name, safe_mode=True)
        assert tltf.model_info(model).metadata["class_names"] == list(IMAGE_CLASSES)
    report = json.loads((run / "evaluation.json").read_text())
    assert [r["class"] for r in report["per_class"]] == list(IMAGE_CLASSES)


@pytest.mark.slow
def test_history_plot_shows_the_metrics_not_the_epoch_column(trained):
    from tltf.runs import plot_run_history

    figure = plot_run_history(read_history(trained[0] / "history.csv"))
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "accuracy"]


@pytest.mark.slow
def test_evaluate_predict_and_export_a_run(trained, work, capsys, monkeypatch):
    run, _ = trained
    monkeypatch.chdir(work)
    monkeypatch.setenv("TLTF_HOME", str(work / "home"))
    # evaluate: the run's own validation data, per-class metrics, top-k.
    assert main(["evaluate", str(run), "--top-k", "2", "--out", "eval"]) == 0
    out = capsys.readouterr().out
    assert "top-2 accuracy" in out and "precision" in out
    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["top_k"] == 2 and report["num_examples"] == 6
    assert {"precision", "recall", "f1", "support"} <= set(report["per_class"][0])
    assert (work / "eval" / "confusion.png").stat().st_size > 1000
    # predict: a folder and a single file, top-2 labels and scores, CSV.
    argv = ["predict", str(run), "images/red", "images/blue/0_0.jpg", "--top-k", "2"]
    assert main([*argv, "--output", "preds.csv"]) == 0
    with open(work / "preds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert list(rows[0]) == ["file", "label_1", "score_1", "label_2", "score_2"]
    assert all(r["label_1"] in IMAGE_CLASSES for r in rows)
    assert all(float(r["score_1"]) >= float(r["score_2"]) for r in rows)
    # export: a TFLite flavour in a subprocess (the console path)...
    _ok(_tltf("export", run, "--output", "m.tflite", cwd=work))  # float32
    from tltf.export import tflite_predict

    images = np.stack(
        [
            np.asarray(Image.open(p), np.float32)
            for p in sorted(work.glob("images/*/*.png"))
        ]
    )[:, 2:18, 2:18]
    model = keras.saving.load_model(run / "best.keras", safe_mode=True)
    # The model trained 1+1 epochs: its classes are close, so compare the
    # probabilities (quantized flavours' tolerances: tests/test_export.py).
    np.testing.assert_allclose(
        tflite_predict(work / "m.tflite", images),
        model.predict(images, verbose=0),
        atol=1e-4,
    )
    # ...and .keras and JSON predictions in-process.
    assert (
        main(
            ["export", str(run), "--format", "keras", "--output", str(work / "m.keras")]
        )
        == 0
    )
    assert keras.saving.load_model(work / "m.keras", safe_mode=True).count_params()
    assert (
        main(
            [
                "predict",
                str(work / "m.keras"),
                str(work / "images"),
                "--output",
                str(work / "p.json"),
            ]
        )
        == 0
    )
    rows = json.loads((work / "p.json").read_text())
    assert len(rows) == 24 and rows[0]["labels"][0] in IMAGE_CLASSES
    capsys.readouterr()


@pytest.mark.slow
def test_bad_config_exits_2_without_traceback(work):
    (work / "typo.yaml").write_text("schedule:\n  head_epoch: 3\n")
    result = _tltf(
        "train", "--config", "typo.yaml", "--out", "runs/typo", cwd=work, fresh=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "tltf: error: Unknown key 'head_epoch' in the [schedule] section. Did you "
        "mean 'head_epochs'"
    )
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not (work / "runs" / "typo").exists()


@pytest.mark.slow
def test_bad_paths_and_values_exit_2(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    args = ["train", "--base", "base", "--image-size", "16", "--cut", "none"]
    args += ["--out", "runs/x"]
    err = cli_error([*args, "--train", "no_such_folder"], capsys)
    assert "No such folder 'no_such_folder'" in err
    assert "No base" in cli_error(["train", "--train", "images"], capsys)
    assert "does not exist" in cli_error(["train", "--config", "nope.toml"], capsys)
    assert "Unknown base 'mobilenet_v9'" in cli_error(
        ["train", "--base", "mobilenet_v9", "--train", "images"], capsys
    )
    assert "No such model" in cli_error(["evaluate", "missing.keras"], capsys)
    assert "needs --representative" in cli_error(
        ["export", "missing.keras", "--quantize", "int8"], capsys
    )
    err = cli_error([*args, "--set", "schedule.bn=frozn", "--train", "images"], capsys)
    assert "Did you mean 'frozen'" in err
    # An error raised once training has started, before any epoch: no folder.
    err = cli_error([*args, "--train", "images", "--unfreeze", "9"], capsys)
    assert "Expected unfreeze blocks in [0, 4]" in err
    assert not (work / "runs" / "x").exists()
    # A file-system error is one line too.
    (work / "a_file").write_text("")
    err = cli_error([*args[:-1], "a_file/run", "--train", "images"], capsys)
    assert "Not a directory: 'a_file/run'. Give a folder path, not a file." in err
    # argparse errors are exit 2 too.
    assert main(["train", "--head-epochs", "-1"]) == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_flags_and_set_override_the_file(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    argv = [
        "train",
        "--config",
        "train.yaml",
        "--unfreeze",
        "all",
        "--set",
        "model.head.hidden_units=[8]",
        "--val",
        "images",
        "--set",
        "data.val_fraction=null",
        "--print-config",
    ]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["schedule"]["unfreeze"] == "all"
    assert printed["schedule"]["head_lr"] == 1e-2  # from the file
    assert printed["model"]["head"] == {**printed["model"]["head"], "hidden_units": [8]}
    assert (
        printed["data"]["val"] == "images" and printed["data"]["val_fraction"] is None
    )
    assert not (work / "runs" / "x").exists()


def _stat_snapshot(folder: Path) -> dict:
    """Every entry's (mtime, size) under `folder`: a touched file counts as changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
    }


@pytest.mark.slow
def test_an_existing_run_is_never_touched_without_resume_or_overwrite(
    trained, work, capsys, monkeypatch
):
    run, _ = trained
    monkeypatch.chdir(work)
    before = _stat_snapshot(run)
    err = cli_error(["train", "--config", "train.yaml", "--out", run], capsys)
    assert "already exists. Pass --resume to continue it, --overwrite" in err
    err = cli_error(["train", "--out", run, "--resume"], capsys)
    assert "has finished" in err
    err = cli_error(
        ["train", "--config", "train.yaml", "--out", run, "--resume"], capsys
    )
    assert "drop --config" in err
    # --overwrite validates the config and loads the data before touching the run.
    err = cli_error(
        [
            "train",
            "--config",
            "train.yaml",
            "--train",
            "missing/",
            "--out",
            run,
            "--overwrite",
        ],
        capsys,
    )
    assert "No such folder 'missing/'" in err
    assert _stat_snapshot(run) == before
    # A killed --overwrite leaves the old run beside it: never silently lost.
    (run.parent / ".first.old").mkdir()
    err = cli_error(
        ["train", "--config", "train.yaml", "--out", run, "--overwrite"], capsys
    )
    assert "An interrupted --overwrite left the previous run" in err
    (run.parent / ".first.old").rmdir()
    assert _stat_snapshot(run) == before


class _Interrupt(HistoryCSV):
    """Interrupts like Ctrl-C as the second epoch begins."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_run_resumes_and_overwrite_restores_the_old_run(
    work, capsys, monkeypatch
):
    monkeypatch.chdir(work)
    argv = ["train", "--config", "train.yaml", "--out", "runs/int", "-q"]
    monkeypatch.setattr("tltf.runs.HistoryCSV", _Interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "partial run is kept in runs/int; continue it with --resume" in err
    run = work / "runs" / "int"
    assert not (run / "summary.json").exists()
    assert read_history(run / "history.csv")["epoch"] == [1]
    assert (run / "last.keras").is_file() and (run / "backup").is_dir()
    monkeypatch.setattr("tltf.runs.HistoryCSV", HistoryCSV)
    assert main(["train", "--out", "runs/int", "--resume", "-q"]) == 0
    history = read_history(run / "history.csv")
    assert history["epoch"] == [1, 2, 3] and history["stage"] == [1, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True and summary["epochs"]["run"] == 3
    # --overwrite that fails midway puts the finished run back.
    before = _stat_snapshot(run)
    monkeypatch.setattr("tltf.runs.HistoryCSV", _Interrupt)
    assert main([*argv, "--overwrite"]) == 130
    assert "previous run in runs/int was restored" in capsys.readouterr().err
    assert _stat_snapshot(run) == before
    assert not list(run.parent.glob(".int*"))


def _fail_once(self, *args, **kwargs):
    raise tltf.errors.TrainingError("the refit stopped")


@pytest.mark.slow
def test_tune_writes_a_run_folder(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    (work / "tune.toml").write_text(
        '[model]\nbase = "base"\n[data]\ntrain = "images"\nval_fraction = 0.25\n'
        "image_size = 16\nbatch_size = 8\n[schedule]\nhead_epochs = 1\n"
        'fine_tune_epochs = 1\nhead_l2 = 0.001\n[tune]\ntuner = "grid"\nmax_trials = 2\n'
        "[tune.search_space]\nunfreeze = [1, 2]\nhead_units = 0\nhead_dropout = 0.2\n"
        "fine_tune_lr = 1e-4\n"
    )
    argv = ["tune", "--config", "tune.toml", "--out", "runs/tune", "--soup", "2"]
    # A loss of the user's own reaches every trial's fine_tune (class indices
    # become one-hot rows there).
    argv += ["--loss", "categorical_focal_crossentropy", "--refit"]
    losses, head_l2, calls = [], [], []

    def spy(model, train, validation, settings, **kwargs):
        losses.append(kwargs.get("loss", settings.loss))
        head_l2.append(kwargs.get("head_l2", settings.head_l2))
        calls.append((train, validation, settings, kwargs))
        return fine_tune(model, train, validation, settings, **kwargs)

    monkeypatch.setattr(tltf.tuning.hypermodel, "fine_tune", spy)
    # The refit fails the first time: the trials stay, and --resume runs the
    # refit alone.
    with monkeypatch.context() as patch:
        patch.setattr(tltf.tuning.TuneResult, "refit", _fail_once)
        assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert "the refit stopped" in err and "continue it with --resume" in err
    trials = len(calls)
    assert main(["tune", "--out", "runs/tune", "--resume"]) == 0
    assert len(calls) == trials + 1  # the refit; no trial ran again
    assert losses and set(losses) == {"categorical_focal_crossentropy"}
    assert set(head_l2) == {0.001}  # and the other [schedule] keys
    out = capsys.readouterr().out
    assert "tltf: wrote runs/tune (best: " in out
    run = work / "runs" / "tune"
    # --refit: the last fine_tune trains the best values on the 18 training and
    # 6 validation images together, with no validation data: the stage-2
    # guard (which the trials ran without) judges it on a held-out slice.
    train, validation, settings, kwargs = calls[-1]
    rows = train.reduce(0, lambda n, batch: n + tf.shape(batch[0])[0])
    assert int(rows) == 24 and validation is None
    assert settings.keep_best is True
    assert kwargs["backup_dir"].resolve() == (run / "backup").resolve()
    assert all(c[2].keep_best is False for c in calls[:-1])
    assert "refit.keras: the best values trained again on all 24 labelled" in out
    assert "tltf evaluate runs/tune/refit.keras --data TEST" in out
    # The note on the 6 validation images does not ask for the --refit this
    # run has.
    assert "the trials were compared on 6 validation images" in out
    assert "tltf tune --refit" not in out
    refit = keras.saving.load_model(run / "refit.keras", safe_mode=True)
    assert tltf.model_info(refit).metadata["class_names"] == list(IMAGE_CLASSES)
    # The run folder itself reads best.keras, and one line names the others.
    assert main(["predict", "runs/tune", "images/red", "--output", "p.csv"]) == 0
    assert (
        "tltf: note: read best.keras of runs/tune, which also holds refit.keras "
        "and soup.keras: pass runs/tune/refit.keras to use that instead."
    ) in capsys.readouterr().err
    assert not (run / "backup").exists()  # the finished run deleted it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refit"]["images"] == 24
    assert summary["files"]["refit_model"] == "refit.keras"
    assert summary["trials"] == {"total": 2, "completed": 2}
    assert summary["best"]["hyperparameters"]["unfreeze_blocks"] in (1, 2)
    assert (run / summary["files"]["tuning_plot"]).is_file()
    assert (run / summary["files"]["tuning_csv"]).is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(run / "best.keras", safe_mode=True)
        souped = keras.saving.load_model(run / "soup.keras", safe_mode=True)
    # Both load with their optimizer: no "Skipping variable loading" warning.
    assert [str(w.message) for w in caught] == []
    assert tltf.model_info(model).metadata["class_names"] == list(IMAGE_CLASSES)
    # --soup 2: both trials share a head, so both are ingredients; the soup is
    # never worse than the best of them on the validation data that chose it.
    soup = summary["soup"]
    assert summary["files"]["soup_model"] == "soup.keras"
    assert set(soup["scores"]) == {r["trial"] for r in summary["table"]}
    assert soup["left_out"] == [] and 1 <= len(soup["kept"]) <= 2
    assert soup["metric"] == "accuracy"
    assert soup["score"] >= max(soup["scores"].values())
    assert tltf.model_info(souped).metadata["class_names"] == list(IMAGE_CLASSES)
    report = tltf.evaluate(souped, tltf.load_data("images", image_size=16))
    assert report.num_examples == 24


@pytest.mark.slow
def test_train_on_the_shipped_base_with_the_defaults(work, capsys, monkeypatch):
    """`--base demo` (offline), everything else "auto": cut, unfreeze, epochs."""
    monkeypatch.chdir(work)
    argv = ["train", "--base", "demo", "--train", "images", "--val-fraction", "0.25"]
    argv += ["--head-steps", "20", "--fine-tune-epochs", "1", "--out", "runs/demo"]
    assert main([*argv, "-q"]) == 0
    out = capsys.readouterr().out
    run = work / "runs" / "demo"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["base"] == "demo" and config["model"]["weights"] is None
    assert config["model"]["cut"] == "auto"  # what was asked; the summary resolves
    assert config["schedule"]["head_epochs"] == "auto"
    assert config["schedule"]["unfreeze"] == "auto"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["image_size"] == [64, 64]  # the shipped base's own size
    assert summary["cut"]["requested"] == "auto"
    resolved = summary["cut"]["resolved"]
    assert resolved is None or set(resolved) >= {"block", "index", "of"}
    assert summary["unfreeze"]["requested"] == "auto"
    assert 0 <= summary["unfreeze"]["blocks"] <= summary["unfreeze"]["of"]
    epochs = summary["epochs"]
    assert epochs["requested"] == {"head": "auto", "fine_tune": 1}
    assert epochs["fine_tune"] == 1 and epochs["head"] + 1 == epochs["run"]
    last = summary["best"]["epoch"] == epochs["run"]
    # Still improving: the last epoch is the best, by a margin (still_improving).
    history = read_history(run / "history.csv")["val_loss"]
    improving = last and still_improving(history, "min", min_fall=1e-3)
    assert summary["still_improving"] is improving
    assert (
        "(val_loss still improving): train longer, e.g. --fine-tune-epochs 2" in out
    ) is improving


@pytest.fixture
def ended(monkeypatch):
    """The weights of the model `tltf train`'s `fine_tune` call ends with."""
    weights = {}

    def spy(model, *args, **kwargs):
        history = fine_tune(model, *args, **kwargs)
        weights["weights"] = [np.array(w, copy=True) for w in model.get_weights()]
        weights["kept"] = history.kept
        return history

    monkeypatch.setattr(runs, "fine_tune", spy)
    return weights


def _assert_weights(path, expected):
    """The weights of the model file at `path`, checked equal to `expected`."""
    weights = tltf.load_model(path).get_weights()
    for saved, kept in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(saved, kept)
    return weights


@pytest.mark.slow
def test_without_validation_data_best_keras_is_the_model_fine_tune_ends_with(
    work, capsys, monkeypatch, ended
):
    # Without validation data the guard holds a slice of the training images
    # out, keeps its best epoch, and refits the head on every image. That model
    # is best.keras, not the epoch with the lowest training loss (before: often
    # a stage-2 epoch the guard had refused, and never the refit head).
    monkeypatch.chdir(work)
    argv = ["train", "--config", "train.yaml", "--set", "data.val_fraction=null"]
    argv += ["--fine-tune-epochs", "2", "--out", "runs/noval"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no validation data, so best.keras is the model fine_tune ends with" in out
    assert "keep_best: handed the" in out
    kept = ended["kept"]
    assert (
        "(best.keras: the model fine_tune ended with, kept at epoch "
        f"{kept.epoch}, stage {kept.stage})"
    ) in out
    run = work / "runs" / "noval"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kept"] == {
        "epoch": kept.epoch,
        "stage": kept.stage,
        "blocks": list(kept.blocks),
        "note": kept.note,
    }
    assert "held-out slice included" in summary["kept"]["note"]
    assert summary["best"] == {
        "monitor": None,
        "mode": None,
        "value": None,
        "epoch": None,
    }
    assert summary["still_improving"] is False
    best = _assert_weights(run / "best.keras", ended["weights"])
    last = tltf.load_model(run / "last.keras").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(best, last, strict=True))


@pytest.mark.slow
def test_with_wise_best_keras_holds_the_mix_fine_tune_ends_with(
    work, capsys, monkeypatch, ended
):
    # WiSE-FT mixes the weights after the last epoch: the best epoch's
    # checkpoint alone would leave the mix out of best.keras.
    monkeypatch.chdir(work)
    argv = ["train", "--config", "train.yaml", "--wise", "0.5", "--out", "runs/wise"]
    assert main(argv) == 0
    assert "best.keras holds its WiSE-FT mix with stage 1 (wise=0.5)" in (
        capsys.readouterr().out
    )
    run = work / "runs" / "wise"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["wise"] == 0.5 and summary["best"]["monitor"] == "val_loss"
    _assert_weights(run / "best.keras", ended["weights"])


@pytest.mark.slow
def test_a_runs_best_keras_is_the_base_of_the_next_run(
    trained, work, capsys, monkeypatch
):
    # Sequential transfer on the command line: the first run's fine-tuned base.
    run, _ = trained
    monkeypatch.chdir(work)
    monkeypatch.setenv("TLTF_HOME", str(work / "home"))
    best = str(run.relative_to(work) / "best.keras")
    argv = ["train", "--config", "train.yaml", "--base", best]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["base"] == best and printed["model"]["weights"] is None
    assert default_image_size(best) == (16, 16)  # read from the file's config
    argv += ["--head-epochs", "1", "--fine-tune-epochs", "0", "--out", "runs/next"]
    assert main(argv) == 0
    first = tltf.model_info(keras.models.load_model(work / best)).base
    second = tltf.model_info(tltf.load_model(work / "runs" / "next" / "best.keras"))
    assert second.metadata["base"] == "tiny"
    assert second.metadata["base_info"]["fine_tuned"] is True
    # The frozen base of the second run holds the first run's fine-tuned weights.
    for a, b in zip(first.weights, second.base.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    err = cli_error([*argv[:4], str(run.relative_to(work)), "--print-config"], capsys)
    assert f"pass '{best}' to build on that model's fine-tuned base" in err
    (work / "notes.txt").write_text("not a model")
    err = cli_error([*argv[:4], "notes.txt", "--print-config"], capsys)
    assert "neither a folder nor a model file (.keras, .h5)" in err
