"""Search safety: stale locks, two searches on one project, bad objectives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import pytest
import tensorflow as tf

from tests import processes, tuning_job
from tests.helpers import ROOT, check_error, folder_snapshot, make_data, make_tiny_base
from tltf.data.inputs import split_validation
from tltf.errors import ConfigError, TrainingError
from tltf.locks import LockFile
from tltf.tuning import (
    HEADS_DIR,
    PROJECT_LOCK,
    HeadStore,
    project_lock,
    tune,
)
from tltf.tuning.hypermodel import split_data_args

#: A search process, cut down to its locks: it holds the project and a head.
HOLDER = """
import sys, time
from pathlib import Path
from tltf.locks import LockFile
from tltf.tuning import HEADS_DIR, project_lock

project = Path(sys.argv[1])
with project_lock(project):
    (project / HEADS_DIR).mkdir()
    assert LockFile(project / HEADS_DIR / "k.lock").acquire()
    print("locked", flush=True)
    time.sleep(600)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, **owner) -> None:
    path.write_text(json.dumps({"host": socket.gethostname(), **owner}))


def _train_head(weights: Path):
    def train():
        weights.write_bytes(b"w")
        return {"trained_by": "1"}

    return train


def _search(tmp_path, **kwargs):
    train, val = tuning_job.data()
    options = dict(
        search=tuning_job.FIXED_HEAD,
        tuner="random",
        max_trials=1,
        head_epochs=1,
        fine_tune_epochs=1,
        directory=tmp_path,
        project_name="p",
        verbose=0,
        seed=0,
        batch_size=16,
    )
    options.update(kwargs)
    return tune(make_tiny_base(), train, val, **options)


# -- stale locks ------------------------------------------------------------------
def test_head_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    store = HeadStore(tmp_path, stale_s=30, poll_s=0.05)
    weights, record, lock = store.paths("k")
    _write_lock(lock, pid=_dead_pid())  # a search killed during stage 1
    start = time.monotonic()
    found, reused = store.obtain("k", _train_head(weights), lambda path: None)
    assert time.monotonic() - start < 5  # not stale_s
    assert not reused and found == {"trained_by": "1"}
    # No lock and no renamed stale lock left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.weights.h5"]


def test_lock_file_staleness_rules(tmp_path):
    path = tmp_path / "x.lock"
    lock = LockFile(path, stale_s=60)
    _write_lock(path, pid=os.getppid())  # a live process of this host
    assert not lock.is_stale() and not lock.acquire()
    # This process's pid, written by an earlier process (a restarted container).
    _write_lock(path, pid=os.getpid(), token="an earlier process")
    assert lock.is_stale()
    # Another host: its pids mean nothing here; only the age counts.
    path.write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid()}))
    assert not lock.is_stale()
    old = time.time() - 120
    os.utime(path, (old, old))
    assert lock.is_stale()
    assert lock.acquire() and lock.owner()["pid"] == os.getpid()
    lock.release()
    assert list(tmp_path.iterdir()) == []


# -- two searches on one project ------------------------------------------------------
@pytest.mark.slow
def test_a_second_search_on_a_project_fails_fast_and_a_dead_ones_locks_go(tmp_path):
    project = tmp_path / "p"
    holder = processes.python(  # a new process, started with tltf imported
        [sys.executable, "-c", HOLDER, str(project)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        new_session=True,
    )
    try:
        holder.wait_for("locked", timeout=120)
        before = folder_snapshot(project)
        start = time.monotonic()
        with pytest.raises(ConfigError) as info:
            _search(tmp_path, overwrite=True)
        assert time.monotonic() - start < 10
        check_error(
            info.value,
            ConfigError,
            "one search at a time",
            str(project),
            f"process {holder.pid}",
            socket.gethostname(),
            "project_name",
            "chief/worker",
        )
        assert folder_snapshot(project) == before  # overwrite=True deleted nothing
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)  # killed mid-search: locks stay
        holder.wait()
    assert (project / PROJECT_LOCK).exists()

    # Its head lock is taken over at once, and nothing stale is left.
    heads = project / HEADS_DIR
    store = HeadStore(heads, stale_s=300, poll_s=0.05)
    start = time.monotonic()
    _, reused = store.obtain("k", _train_head(heads / "k.weights.h5"), print)
    assert not reused and time.monotonic() - start < 5
    # So is the project: the next search runs, and releases it.
    result = _search(tmp_path)
    assert [row["status"] for row in result.table] == ["COMPLETED"]
    assert not list(project.rglob("*.lock")) and not list(project.rglob("*.stale-*"))
    with project_lock(project):  # free again
        pass


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_search_never_writes_into_or_empties_a_folder_of_the_users(
    tmp_path, overwrite
):
    """A project folder holding the user's files is refused before anything is
    written (overwrite=True emptied it); so is a file where the project or its
    parent folder goes. (A search's own project is resumed or emptied: the
    tests of tune's resume and overwrite.)"""
    project = tmp_path / "p"
    project.mkdir()
    (project / "thesis.txt").write_text("my precious\n")
    before = folder_snapshot(tmp_path)
    with pytest.raises(ConfigError) as info:
        _search(tmp_path, overwrite=overwrite)
    check_error(
        info.value,
        ConfigError,
        str(project),
        "thesis.txt",
        "directory=",
        "project_name=",
    )
    assert folder_snapshot(tmp_path) == before
    (tmp_path / "file").write_text("mine\n")
    for directory, project_name in ((tmp_path / "file", "p"), (tmp_path, "file")):
        with pytest.raises(ConfigError) as info:
            _search(directory, project_name=project_name, overwrite=overwrite)
        check_error(info.value, ConfigError, str(tmp_path / "file"), "a file")
    assert (tmp_path / "file").read_text() == "mine\n"


# -- objectives and failed searches ------------------------------------------------
@pytest.mark.parametrize(
    "objective",
    ["val_acc", kt.Objective("val_acc", "max"), ["val_loss", "val_acc"]],
    ids=["str", "Objective", "list"],
)
def test_an_objective_the_trials_do_not_log_is_rejected_first(tmp_path, objective):
    with pytest.raises(ConfigError) as info:
        _search(tmp_path, objective=objective)
    check_error(
        info.value,
        ConfigError,
        "objective='val_acc'",
        "Did you mean 'val_accuracy'",
        "'val_loss'",
    )
    assert list(tmp_path.iterdir()) == []  # before any tuner or folder


def test_objective_of_a_keras_tuner_instance_and_of_regression(tmp_path):
    tuner = kt.RandomSearch(
        tuning_job.hypermodel(),
        objective=kt.Objective("val_acc", "max"),
        max_trials=1,
        directory=tmp_path,
        project_name="kt",
    )
    train, val = tuning_job.data()
    with pytest.raises(ConfigError) as info:
        tune(None, train, val, tuner=tuner, verbose=0)
    check_error(info.value, ConfigError, "objective='val_acc'", "'val_accuracy'")
    x, y = make_data(16)
    y = y.astype("float32")
    with pytest.raises(ConfigError) as info:
        tune(
            make_tiny_base(),
            (x, y),
            (x, y),
            task="regression",
            objective="val_accuracy",  # regression logs mae, not accuracy
            tuner="random",
            directory=tmp_path,
            project_name="reg",
            verbose=0,
        )
    check_error(info.value, ConfigError, "objective='val_accuracy'", "'val_mae'")
    assert not (tmp_path / "reg").exists()


@pytest.mark.slow
def test_a_search_whose_every_trial_failed_raises_with_the_first_reason(tmp_path):
    builds = []

    def broken(hp, model):
        builds.append(1)
        if len(builds) > 1:  # the first build only declares the search space
            raise ConfigError("this combination is not supported")
        return model

    with pytest.raises(TrainingError) as info:
        _search(
            tmp_path, build_hook=broken, max_trials=2, max_consecutive_failed_trials=3
        )
    check_error(
        info.value,
        TrainingError,
        "2 of 2 trials failed",
        "no best model",
        "trial 0 failed",
        "not supported",
        "overwrite=True",
    )
    project = tmp_path / "p"
    rows = json.loads((project / "tltf_results.json").read_text())
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    assert not (project / "best_model.keras").exists()
    assert not (project / PROJECT_LOCK).exists()  # released on the error too


@pytest.mark.slow
def test_a_keras_tuner_search_takes_kerass_x_y_form(tmp_path):
    """`tuner.search(x, y, validation_data=...)`, as keras-tuner's guides write it,
    trains the trial that `search((x, y), (x_val, y_val))` trains, and
    `search(x, y, validation_split=0.25)`, as TensorFlow's keras-tuner tutorial
    writes it, the trial on the split that `fine_tune` makes; a form no trial
    could run on (validation_split= with a dataset, images without labels)
    stops the search at once with one message, as a keras-tuner FatalError,
    instead of failing every trial with a traceback."""
    (x, y), val = tuning_job.data()
    # Keras's forms are tltf's: the same training and validation data.
    for args, kwargs in [
        ((x, y), {"validation_data": val}),
        ((), {"x": x, "y": y, "validation_data": val}),
    ]:
        train, validation = split_data_args(args, kwargs)
        assert train[0] is x and train[1] is y and len(train) == 2
        assert validation is val
    # validation_split= trains the trial on the split fine_tune makes, seeded
    # by the hypermodel: the trial given that split by hand.
    part, rest = split_validation(
        (x, y), 0.25, task="multiclass", seed=tuning_job.hypermodel().seed, caller="t"
    )
    scores = {}
    for form, args, kwargs in [
        ("keras", (x, y), {"validation_data": val}),
        ("split", (x, y), {"validation_split": 0.25}),
        ("split by hand", (part,), {"validation_data": rest}),
    ]:
        tuner = kt.RandomSearch(
            tuning_job.hypermodel(),
            objective="val_accuracy",
            max_trials=1,
            directory=tmp_path,
            project_name=form,
        )
        tuner.search(*args, verbose=0, **kwargs)
        (trial,) = tuner.oracle.trials.values()
        assert trial.status == "COMPLETED", (form, trial.message)
        scores[form] = trial.score
    assert scores["split"] == scores["split by hand"]

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    for args, kwargs, words in [
        ((dataset,), {"validation_split": 0.2}, ["validation_split=", "load_data"]),
        ((x,), {"validation_data": val}, ["without their labels", "(x, y)"]),
    ]:
        tuner = kt.RandomSearch(
            tuning_job.hypermodel(),
            objective="val_accuracy",
            max_trials=3,
            directory=tmp_path,
            project_name="bad",
            overwrite=True,
        )
        with pytest.raises(ConfigError) as info:
            tuner.search(*args, verbose=0, **kwargs)
        assert isinstance(info.value, kt.errors.FatalError)
        check_error(info.value, ConfigError, *words)
        assert len(tuner.oracle.trials) == 1  # stopped at the first trial
    # tltf.tune takes its data as fine_tune does, and says so before any trial.
    with pytest.raises(ConfigError) as info:
        tune(make_tiny_base(), x, y, directory=tmp_path, project_name="x", verbose=0)
    check_error(info.value, ConfigError, "tltf.tune(base, (x, y), (x_val, y_val))")
    with pytest.raises(ConfigError) as info:
        tune(make_tiny_base(), (x, y), val, validation_split=0.2, directory=tmp_path)
    check_error(info.value, ConfigError, "both validation_data and validation_split")
    assert not (tmp_path / "x").exists() and not (tmp_path / "tune").exists()
    # tltf.tune splits once, as tuner.search does: the same trial.
    result = tune(
        tuning_job.hypermodel(),
        (x, y),
        validation_split=0.25,
        tuner="random",
        max_trials=1,
        objective="val_accuracy",
        directory=tmp_path,
        project_name="tune_split",
        verbose=0,
    )
    assert result.table[0]["score"] == scores["split"]
