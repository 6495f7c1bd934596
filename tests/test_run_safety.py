"""Nothing lost: run folders, exports and saved bases never destroy a user's files.

`--overwrite` and `--resume` touch only tltf runs; a run folder is locked against
a second process; exports and saved bases replace only what tltf wrote; a kill at
any point of the completion resumes to the finished state; stale temporary files
are swept; a full disk is a clear error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import tltf
from tests import processes
from tests.helpers import (
    TRAIN_CONFIG,
    check_error,
    cli_error,
    folder_snapshot,
    make_data,
    make_image_folder,
    make_plain_model,
    make_tiny_base,
)
from tltf._io import atomic_dir, atomic_write_json, sweep_tmp_files
from tltf.cli import main
from tltf.config import TrainConfig, load_config_file
from tltf.errors import ConfigError, DiskFullError
from tltf.export import export_model
from tltf.runs import (
    LOCK_FILE,
    RUN_MARKER,
    RunFolder,
    is_run_folder,
    lock_folder,
    lock_holder,
    run_training,
    unlock_folder,
)

TMP_NAME = ".best.keras.k3j_2x9a.tmp.keras"  # as tltf._io.atomic_path names it


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    make_image_folder(root / "images")
    tltf.save_base(tltf.load_base(make_tiny_base(), preprocessing="tf"), root / "base")
    text = TRAIN_CONFIG.format(base=root / "base", images=root / "images")
    (root / "train.yaml").write_text(text.replace("head_epochs: 2", "head_epochs: 1"))
    return root


def _config(work) -> TrainConfig:
    return TrainConfig.from_dict(load_config_file(work / "train.yaml"))


def _old_run(folder: Path, marker: bool = True) -> Path:
    """A finished run folder as tltf leaves it (with or without the marker)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {base: demo}\n")
    (folder / "summary.json").write_text('{"status": "finished"}\n')
    if marker:
        (folder / RUN_MARKER).write_text("{}\n")
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. --overwrite and --resume touch only tltf runs ----------------------------------
def test_overwrite_and_resume_refuse_a_folder_that_is_not_a_run(work, tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "thesis.tex").write_text("x")
    (proj / "config.yaml").write_text("mine: true\n")  # a user's, not tltf's
    before = folder_snapshot(proj)
    train_args = ["train", "--config", work / "train.yaml", "--out", proj]
    err = cli_error([*train_args, "--overwrite"], capsys)
    assert "--overwrite replaces only a tltf run" in err and str(proj) in err
    assert "Choose another --out" in err
    err = cli_error(["train", "--out", proj, "--resume"], capsys)
    assert "is not a tltf run folder" in err
    # Without a flag, the error says at once that neither flag would take it
    # (it used to suggest --resume and --overwrite), and so does --resume with
    # other flags (it used to ask to drop them).
    err = cli_error(train_args, capsys)
    assert "is a folder that is not a tltf run" in err and "--resume" not in err
    assert "never writes into it or replaces it" in err and "another --out" in err
    err = cli_error([*train_args, "--resume"], capsys)
    assert "is not a tltf run folder" in err and "drop" not in err
    err = cli_error(["train", "--out", tmp_path / "elsewhere", "--resume"], capsys)
    assert "Nothing to resume in" in err and "it does not exist" in err
    assert folder_snapshot(proj) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]
    with pytest.raises(ConfigError) as info:
        RunFolder(proj, overwrite=True)
    check_error(info.value, ConfigError, "not one", "--out")


def test_an_unfreeze_the_base_cannot_take_fails_before_the_run_starts(
    work, tmp_path, capsys
):
    # Checked against the built model, before the run folder and its notes
    # (without validation data, the note on best.keras used to come first).
    out = tmp_path / "run"
    argv = ["train", "--config", work / "train.yaml", "--out", out]
    argv += ["--set", "data.val_fraction=null"]
    argv += ["--set", "schedule.unfreeze={range: [0, 99]}"]
    assert main([str(a) for a in argv]) == 2
    printed = capsys.readouterr()
    assert "unfreeze range positions in [-4, 3]" in printed.err
    assert "Received: 99" in printed.err and "Traceback" not in printed.err
    assert "tltf: note" not in printed.out
    assert not out.exists()


def test_runs_with_and_without_the_marker_are_runs(tmp_path):
    new = _old_run(tmp_path / "new")
    old = _old_run(tmp_path / "old", marker=False)  # written before markers
    assert is_run_folder(new) and is_run_folder(old)
    assert not is_run_folder(tmp_path)
    for folder in (new, old):
        run = RunFolder(folder, overwrite=True)
        run.begin()
        assert (folder / RUN_MARKER).is_file() and (folder / LOCK_FILE).is_file()
        run.commit()
        assert not (folder / LOCK_FILE).exists()
        assert not run.old_path.exists()


# -- 2. exports and saved bases replace only what tltf wrote ---------------------------
def test_savedmodel_export_never_replaces_a_users_folder_or_file(tmp_path):
    model = make_plain_model()
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "letter.txt").write_text("dear")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = folder_snapshot(tmp_path)
    for target in (documents, notes):
        with pytest.raises(ConfigError) as info:
            export_model(model, target, format="savedmodel")
        check_error(
            info.value, ConfigError, str(target), "did not write", "another path"
        )
    assert folder_snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Documents", "notes.txt"]
    # Its own export is replaced, and so is an earlier, unmarked export.
    export_model(model, tmp_path / "sm", format="savedmodel")
    assert (tmp_path / "sm" / ".tltf-savedmodel").is_file()
    export_model(model, tmp_path / "sm", format="savedmodel")
    (tmp_path / "sm" / ".tltf-savedmodel").unlink()
    export_model(model, tmp_path / "sm", format="savedmodel")
    assert (tmp_path / "sm" / "saved_model.pb").is_file()


def test_cli_export_refuses_an_existing_folder(work, tmp_path, capsys):
    model_file = tmp_path / "m.keras"
    make_plain_model().save(model_file)
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "cv.pdf").write_text("cv")
    before = folder_snapshot(tmp_path / "Documents")
    argv = ["export", model_file, "--output", tmp_path / "Documents"]
    err = cli_error(argv, capsys)
    assert "SavedModel export" in err and "Documents" in err
    assert folder_snapshot(tmp_path / "Documents") == before


@pytest.mark.slow
def test_saved_bases_and_demo_folders_replace_only_their_own(tmp_path):
    base = tltf.load_base(make_tiny_base(), block_map=None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2")
    with pytest.raises(ConfigError) as info:
        tltf.save_base(base, mine)
    check_error(info.value, ConfigError, "saved base", str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["data.csv"]
    tltf.save_base(base, tmp_path / "b")
    tltf.save_base(base, tmp_path / "b")  # its own: replaced
    (tmp_path / "b" / ".tltf-base").unlink()  # a base saved before markers
    tltf.save_base(base, tmp_path / "b")
    # The demo writes its run folder the same way: a folder that appeared at the
    # destination during the run is never replaced.
    entered = []
    with (
        pytest.raises(ConfigError, match="demo run folder"),
        atomic_dir(mine, what="demo run folder"),
    ):
        entered.append(True)
    assert not entered and sorted(p.name for p in mine.iterdir()) == ["data.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "mine"]


# -- 3. one process per run folder -----------------------------------------------------
HOLDER = """
import sys, time
from tltf.runs import RunFolder
run = RunFolder(sys.argv[1])
run.begin()
(run / "config.yaml").write_text("model: {base: demo}\\n")
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_process_cannot_take_or_delete_a_locked_run(tmp_path):
    out = tmp_path / "run"
    late = RunFolder(out)  # checked before the other process began
    holder = processes.python(  # a new process, started with tltf imported
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(out)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        holder.wait_for("locked", timeout=120)
        before = folder_snapshot(out)
        with pytest.raises(ConfigError) as info:
            late.begin()
        words = (
            "in use by another tltf process",
            str(holder.pid),
            socket.gethostname(),
        )
        check_error(info.value, ConfigError, str(out), *words)
        assert late.abort() is None  # it never began: nothing to undo
        for kwargs in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(ConfigError, match="in use by another tltf process"):
                RunFolder(out, **kwargs)
        assert folder_snapshot(out) == before and (out / "config.yaml").is_file()
    finally:
        holder.kill()
        holder.wait()
    # Its pid is dead now: the lock is stale and taken over at once.
    assert lock_holder(out) is None
    run = RunFolder(out, overwrite=True)
    run.begin()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    run.commit()
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid is dead now
    (tmp_path / "run").mkdir()
    record = {"host": socket.gethostname(), "pid": done.pid, "since": "earlier"}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(record))
    assert lock_holder(tmp_path / "run") is None
    RunFolder(tmp_path / "run")  # a folder holding only a stale lock is empty
    lock = lock_folder(tmp_path / "run")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock_holder(tmp_path / "run")["pid"] == os.getpid()  # held by this one
    unlock_folder(tmp_path / "run")
    assert not lock.exists()


def test_a_failed_run_removes_only_what_it_made(tmp_path):
    users = tmp_path / "empty_by_user"
    users.mkdir()
    run = RunFolder(users)
    run.begin()
    (run / "config.yaml").write_text("model: {}\n")
    (run / "tensorboard").mkdir()
    assert run.abort() is None
    assert users.is_dir() and not list(users.iterdir())  # the user's folder stays


def test_a_failed_search_with_finished_trials_is_kept_for_resume(tmp_path):
    # A tune run interrupted (or whose every trial failed) after keras-tuner wrote
    # trials: they are worth resuming, and their reasons are in the table.
    run = RunFolder(tmp_path / "search", kind="tune")
    run.begin()
    (run / "config.yaml").write_text("model: {}\n")
    trial = run / "tuner" / "tune" / "trial_0"
    trial.mkdir(parents=True)
    (trial / "trial.json").write_text("{}\n")
    note = run.abort()
    assert note is not None and "--resume" in note
    assert (trial / "trial.json").is_file() and (run / "config.yaml").is_file()
    fresh = RunFolder(tmp_path / "nothing", kind="tune")
    fresh.begin()
    (fresh / "tuner").mkdir()
    assert fresh.abort() is None and not (tmp_path / "nothing").exists()


# -- 4. --overwrite through a symlink ---------------------------------------------------
def test_overwrite_through_a_symlink_twice_in_a_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = _old_run(tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    for n in (1, 2):
        run = RunFolder("link", overwrite=True)
        run.begin()
        (run / "config.yaml").write_text(f"run: {n}\n")
        (run / "summary.json").write_text("{}\n")
        run.commit()
        assert (tmp_path / "link").is_symlink()
        assert (real / "config.yaml").read_text() == f"run: {n}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


# -- 5. --out . and / -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("out", [".", "/", "..", "./"])
def test_out_must_be_a_folder_of_its_own(out, work, tmp_path, monkeypatch, capsys):
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "inner")
    err = cli_error(
        ["train", "--config", work / "train.yaml", "--out", out, "--overwrite"], capsys
    )
    assert "Expected --out to be a run folder of its own" in err
    assert "Choose a subfolder, e.g. --out runs/first" in err
    with pytest.raises(ConfigError) as info:
        RunFolder(out)
    check_error(info.value, ConfigError, "subfolder")


# -- 6. stale temporary files are swept --------------------------------------------------
def test_stale_tmp_files_are_swept_on_resume_and_on_completion(tmp_path):
    folder = _old_run(tmp_path / "run")
    (folder / "summary.json").unlink()
    (folder / "history.csv").write_text("epoch\n1\n")
    keep = [".my.notes.txt", "notes.tmp.keras", ".x.abcdefgh.tmp", "a.abcdefgh.tmp.csv"]
    for name in keep:
        (folder / name).write_text("mine")
    (folder / TMP_NAME).write_bytes(b"half a model")
    run = RunFolder(folder, resume=True)
    run.begin()
    assert not (folder / TMP_NAME).exists()
    (folder / "plots").mkdir()
    (folder / "plots" / ".history.png.0a1b2c3d.tmp.png").write_bytes(b"x")
    (folder / "backup").mkdir()
    (folder / "backup" / ".tltf-backup.npz.zz_99xyz.tmp.npz").write_bytes(b"x")
    (folder / "summary.json").write_text("{}\n")
    run.commit()
    assert sorted(p.name for p in folder.rglob("*.tmp*")) == sorted(keep[1:])
    assert all((folder / name).read_text() == "mine" for name in keep)
    assert sweep_tmp_files(folder) == []


# -- 7. every kill point of the completion resumes to the finished state ----------------
@pytest.mark.slow
def test_a_kill_before_the_summary_resumes_without_training_again(
    work, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real_write = atomic_write_json

    def killed_at_summary(path, obj, *args, **kwargs):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt  # the process dies here
        return real_write(path, obj, *args, **kwargs)

    monkeypatch.setattr("tltf.runs.atomic_write_json", killed_at_summary)
    with pytest.raises(KeyboardInterrupt):
        run_training(_config(work), out, verbose=0)
    monkeypatch.undo()
    assert not (out / "summary.json").exists()
    assert (out / "backup").is_dir()  # kept until summary.json is written
    last, history = _sha(out / "last.keras"), (out / "history.csv").read_text()
    summary = run_training(None, out, resume=True, verbose=0)
    assert _sha(out / "last.keras") == last  # no epoch trained again
    assert (out / "history.csv").read_text() == history
    assert summary["epochs"]["run"] == 2 and (out / "summary.json").is_file()
    assert not (out / "backup").exists() and not (out / LOCK_FILE).exists()
    # A kill after summary.json: the run is finished, nothing is lost.
    capsys.readouterr()
    err = cli_error(["train", "--out", out, "--resume"], capsys)
    assert "has finished" in err


def test_a_kill_after_the_summary_of_an_overwrite_says_what_to_delete(tmp_path):
    folder = _old_run(tmp_path / "run")
    _old_run(tmp_path / ".run.old")  # the previous run, not deleted yet
    with pytest.raises(ConfigError) as info:
        RunFolder(folder, overwrite=True)
    check_error(info.value, ConfigError, "the new run had finished", "rm -r")


# -- 8. a full disk ------------------------------------------------------------------------
def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"n": 1})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError) as info:
        atomic_write_json(target, {"n": 2})
    check_error(info.value, DiskFullError, "disk is full", str(target), "--resume")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(
    work, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real_save = keras.Model.save
    saves = []

    def save(self, filepath, *args, **kwargs):
        saves.append(filepath)
        if len(saves) > 2:  # epoch 1 saved best.keras and last.keras
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    argv = ["train", "--config", work / "train.yaml", "--out", out, "--quiet"]
    assert main([str(a) for a in argv]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the partial run is kept" in err
    line = err.splitlines()[-1]
    assert line.startswith("tltf: error: The disk is full: tltf could not write")
    assert str(out) in line and "Free some disk space" in line
    for name in ("best.keras", "last.keras"):
        keras.saving.load_model(out / name, safe_mode=True)  # the last good ones
    assert not [p for p in out.rglob(".*.tmp*")]
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_full_disk_reported_by_tensorflow_names_the_run_folder(
    work, tmp_path, monkeypatch
):
    def fine_tune(*args, **kwargs):  # as tf.summary reports a failed write
        raise RuntimeError("events.out.tfevents: No space left on device")

    monkeypatch.setattr("tltf.runs.fine_tune", fine_tune)
    with pytest.raises(DiskFullError) as info:
        run_training(_config(work), tmp_path / "run", verbose=0)
    check_error(info.value, DiskFullError, "disk is full", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # no epoch finished: nothing kept


# -- files a user names: predictions, reports, tables, figures, exports ------------
def _user_files(folder: Path) -> dict[str, Path]:
    """Files of the user's own, at the paths tltf's writers are given below."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        name: folder / name
        for name in (
            "mine.csv",
            "mine.json",
            "photo.png",
            "notes.png",
            "mine.keras",
            "mine.tflite",
        )
    }
    for name in ("mine.csv", "mine.json", "notes.png", "mine.keras", "mine.tflite"):
        files[name].write_text("my precious\n")
    files["mine.json"].write_text('{"mine": 1}\n')
    Image.new("RGB", (4, 4), "red").save(files["photo.png"])
    return files


@pytest.mark.slow
def test_no_writer_replaces_a_file_it_did_not_write(tmp_path, capsys):
    """Predictions, a report, a probe or ranking table, a figure and a model
    export each refuse a path that holds a file of the user's (or a folder), and
    leave it as it was; each replaces what it wrote there itself."""
    from tltf.evaluation import evaluate, predict, write_predictions

    files = _user_files(tmp_path / "user")
    before = folder_snapshot(tmp_path / "user")
    keras.utils.set_random_seed(0)
    model = tltf.build_model(make_tiny_base(), 3)
    x, y = make_data(12)
    rows = predict(model, x, top_k=2)
    report = evaluate(model, (x, y))
    probe = tltf.probe_blocks(model, (x, y), verbose=0)
    ranking = tltf.rank_bases({"tiny": make_tiny_base()}, (x, y), verbose=0)
    writers = {
        "predictions file": [
            lambda p: write_predictions(rows, p),
            ["mine.csv", "mine.json"],
            ["ours.csv", "ours.json"],
        ],
        "evaluation report": [report.to_json, ["mine.json", "mine.csv"], ["r.json"]],
        "probe table": [probe.to_csv, ["mine.csv"], ["p.csv"]],
        "ranking table": [ranking.to_csv, ["mine.csv"], ["k.csv"]],
        "figure": [
            lambda p: report.plot_confusion(p),
            ["photo.png", "notes.png"],
            ["c.png"],
        ],
        ".keras model file": [
            lambda p: export_model(model, p),
            ["mine.keras"],
            ["m.keras"],
        ],
        "TFLite model file": [
            lambda p: export_model(model, p),
            ["mine.tflite"],
            ["m.tflite"],
        ],
    }
    for what, (write, theirs, ours) in writers.items():
        for name in theirs:
            with pytest.raises(ConfigError) as info:
                write(files[name])
            check_error(info.value, ConfigError, what, "tltf never replaces it")
        for name in ours:  # written twice: the second replaces the first
            for _ in range(2):
                write(tmp_path / "ours" / name)
        folder = tmp_path / "folders" / ours[0]  # a folder at the path
        folder.mkdir(parents=True)
        with pytest.raises(ConfigError, match="an existing folder"):
            write(folder)
    # The command line: the same refusal, as one line and exit status 2.
    np.savez(tmp_path / "images.npz", x=x, y=y)
    model_file, images = tmp_path / "ours" / "m.keras", tmp_path / "images.npz"
    argv = ["predict", model_file, images, "--output", files["mine.csv"]]
    assert "tltf never replaces it" in cli_error(argv, capsys)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "confusion.png").write_text("my precious\n")
    argv = ["evaluate", model_file, images, "--out", tmp_path / "eval"]
    assert "confusion.png" in cli_error(argv, capsys)
    assert (tmp_path / "eval" / "confusion.png").read_text() == "my precious\n"
    assert not (tmp_path / "eval" / "report.json").exists()  # refused up front
    argv = ["rank", "--bases", model_file, "--data", images]
    assert "ranking table" in cli_error([*argv, "--out", files["mine.csv"]], capsys)
    assert folder_snapshot(tmp_path / "user") == before
    assert "my precious" in files["mine.csv"].read_text()
