"""Resumable fine-tuning (`fine_tune(backup_dir=...)`): kills, stages, optimizer state."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tltf
from tests import processes
from tests.helpers import (
    ROOT,
    CrashAt,
    PoisonAt,
    Recorder,
    make_tiny_base,
    variable_values,
)
from tests.resume_job import run
from tltf.errors import ConfigError, TrainingError
from tltf.guard import BEST_FILE
from tltf.resume import BACKUP_FILE, backup_state
from tltf.wise import STAGE1_FILE

#: What the job's schedule gives each epoch (head_epochs=2, unfreeze=2,
#: gradual_every=1): the stage and the trainable blocks.
STAGES = [1, 1, 2, 2, 2]
EPOCHS = len(STAGES)
TRAINABLE = [[], [], ["block4"], ["block3", "block4"], ["block3", "block4"]]


def _spawn(backup, log, out, kill=None):
    """The job in a new process (started with tltf imported: tests/processes.py)."""
    args = [sys.executable, "-m", "tests.resume_job", str(backup), str(log), str(out)]
    return processes.python(
        [*args, kill] if kill else args,
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs (cache_features False or "auto"), computed once each.

    `reference(cache)` gives the final variables, the history and the (finished)
    backup folder.
    """
    cached = {}

    def get(cache):
        if cache not in cached:
            backup = tmp_path_factory.mktemp("reference") / "backup"
            model, history = run(backup, cache_features=cache)
            variables = [v.numpy() for v in model.variables]
            cached[cache] = (variables, history.history, backup)
        return cached[cache]

    return get


def _assert_same_weights(model_or_arrays, arrays):
    got = [
        v.numpy() if hasattr(v, "numpy") else v
        for v in getattr(model_or_arrays, "variables", model_or_arrays)
    ]
    assert len(got) == len(arrays)
    for g, w in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(g, w)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def _load(out: Path):
    with np.load(out, allow_pickle=False) as data:
        n = sum(1 for k in data.files if k.startswith("v"))
        return [data[f"v{i}"] for i in range(n)], json.loads(
            bytes(data["history"]).decode()
        )


def _run_with_kills(tmp_path: Path, kills) -> tuple[list[list[dict]], tuple]:
    """The job in one fresh process per entry of `kills` (each SIGKILLs itself
    there; None runs to the end): each process's events, and the final
    variables and history."""
    backup, log, out = tmp_path / "backup", tmp_path / "run.log", tmp_path / "out.npz"
    for kill in kills:
        proc = _spawn(backup, log, out, kill)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == (0 if kill is None else -9), (kill, output[-3000:])
    return _events_by_process(log), _load(out)


def _events_by_process(log: Path) -> list[list[dict]]:
    """The logged events, one list per process, in the order the processes ran."""
    runs: dict[int, list[dict]] = {}
    for event in _events(log):
        runs.setdefault(event["pid"], []).append(event)
    return list(runs.values())


def _kill_points(rng: random.Random) -> list[str]:
    """Kinds of kill for three processes, in a random order: mid-save twice (in
    the temporary file's writing, and just before it is moved into place) and
    once mid-training (at a batch's end or an epoch's start)."""
    kinds = ["write", "replace", rng.choice(["batch", "epoch"])]
    rng.shuffle(kinds)
    return kinds


def _kill_at(rng: random.Random, kind: str, start: int) -> str:
    """A kill point that lands within this process's next two epochs.

    Counts are per process: 4 batches per epoch; one temporary-file write and one
    `os.replace` per epoch-end checkpoint; `epoch:n` kills at the start of epoch n.
    """
    left = EPOCHS - start
    if kind == "epoch" and start + 1 < EPOCHS:
        return f"epoch:{rng.randint(start + 1, min(start + 2, EPOCHS - 1))}"
    if kind in ("write", "replace"):
        return f"{kind}:{rng.randint(1, min(2, left))}"
    return f"batch:{rng.randint(1, min(8, 4 * left))}"


@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, reference):
    """Three SIGKILLs of one run at random points, two of them mid-save, each resumed
    in a fresh process.

    The kill points are drawn from a seed (printed on failure; set
    TLTF_KILL_SEED to replay one). The setup is deterministic (fixed seeds, CPU,
    array inputs with a shuffle seed; `fine_tune` replays the reshuffling of the
    finished epochs), so the final weights and the per-epoch history must be
    bitwise those of an uninterrupted run: `np.array_equal`, no tolerance.
    """
    seed = int(os.environ.get("TLTF_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    backup, log, out = tmp_path / "backup", tmp_path / "run.log", tmp_path / "out.npz"
    kills, starts = [], []
    for kind in [*_kill_points(rng), None]:
        state = backup_state(backup)
        start = state["epoch"] if state else 0
        kill = None if kind is None else _kill_at(rng, kind, start)
        proc = _spawn(backup, log, out, kill)
        output, _ = proc.communicate(timeout=180)
        expected = 0 if kill is None else -9
        assert proc.returncode == expected, (seed, kill, output[-3000:])
        kills.append(kill)
        starts.append(start)
    kills = kills[:-1]
    context = f"TLTF_KILL_SEED={seed}, kills {kills}"

    runs = _events_by_process(log)
    assert [events[-1]["event"] for events in runs] == ["kill"] * 3 + ["done"], context
    assert sum(k.split(":")[0] in ("write", "replace") for k in kills) >= 2, context
    # Each fresh process resumed where the last checkpoint moved into place said.
    assert [events[0]["epoch"] for events in runs] == starts, context
    assert starts == sorted(starts), context
    for events in runs:
        start = events[0]["epoch"]
        begins = [e for e in events if e["event"] == "begin"]
        # Callbacks see continuous epoch numbers from the resumed epoch on...
        assert [e["epoch"] for e in begins] == list(
            range(start, start + len(begins))
        ), context
        # ... with the right trainable blocks (none re-frozen) and stages.
        for e in begins:
            assert e["trainable"] == TRAINABLE[e["epoch"]], (context, start, e)
        for e in events:
            if e["event"] == "end":
                assert e["stage"] == STAGES[e["epoch"]]
        # A finished stage 1 is never run again, feature pass included.
        passes = [e for e in events if e["event"] == "feature_pass"]
        assert (len(passes) > 0) == (start < 2), (context, start, passes)
    assert runs[-1][-1]["trainable"] == ["block3", "block4"]
    assert runs[-1][-1]["epochs"] == [0, 1, 2, 3, 4]
    # No temporary file of an interrupted save is left behind.
    assert sorted(p.name for p in backup.iterdir()) == sorted([BACKUP_FILE, BEST_FILE])
    state = backup_state(backup)
    assert (state["epoch"], state["stage"], state["finished"]) == (5, 2, True)
    assert state["unfrozen"] == ["block3", "block4"]

    weights, history = _load(out)
    ref_weights, ref_history, _ = reference("auto")
    assert history == ref_history, context
    assert history["stage"] == STAGES
    _assert_same_weights(weights, ref_weights)


# -- in-process: a raised exception stands in for the kill; the resume always runs
# on a freshly built model.
def _fit(backup_dir, callbacks=(), cache=False, **changes):
    return run(backup_dir, callbacks, cache_features=cache, **changes)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, "auto"])
def test_resume_in_stage2_restores_the_stage2_optimizer(
    tmp_path, cache, reference, monkeypatch
):

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                self.state = variable_values(self.model.optimizer.variables)
                self.weights = [v.numpy() for v in self.model.variables]

    ref_weights, ref_history, _ = reference(cache)  # before the patch below
    snapshot = Snapshot()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", [snapshot, CrashAt(4)], cache=cache)

    class Check(keras.callbacks.Callback):
        """Sees the optimizer after the schedule and the resume set it up."""

        def on_train_batch_begin(self, batch, logs=None):
            if not hasattr(self, "state"):
                self.state = variable_values(self.model.optimizer.variables)
                self.lr = float(self.model.optimizer.learning_rate.numpy())

    if cache:
        import tltf.cache

        def no_pass(*args, **kwargs):
            raise AssertionError("stage 1's feature pass ran again")

        # A finished stage 1 is skipped, its feature pass included.
        monkeypatch.setattr(tltf.cache.FeatureCache, "__init__", no_pass)
    check, recorder = Check(), Recorder()
    model, history = _fit(tmp_path / "b", [recorder, check], cache=cache)
    # Stage 2's Adam state (step count, moments) is back, not a fresh optimizer.
    iterations = int(check.state[0])
    assert iterations == 2 * 4  # two stage-2 epochs of four batches
    assert len(check.state) == len(snapshot.state) > 2
    for got, want in zip(check.state, snapshot.state, strict=True):
        np.testing.assert_array_equal(got, want)
    assert check.lr == pytest.approx(1e-4)  # fine_tune's default
    assert recorder.train_begins == 1
    assert recorder.begins == [4]
    assert recorder.trainable == [TRAINABLE[4]]
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.history == ref_history
    _assert_same_weights(model, ref_weights)


@pytest.mark.slow
def test_resume_at_the_stage_boundary_starts_stage2_with_a_fresh_optimizer(
    tmp_path, reference
):
    with pytest.raises(RuntimeError):
        _fit(tmp_path / "b", [CrashAt(2)])
    assert backup_state(tmp_path / "b")["stage"] == 1
    recorder = Recorder()
    model, history = _fit(tmp_path / "b", [recorder])
    assert recorder.begins == [2, 3, 4]
    assert recorder.trainable == TRAINABLE[2:]
    # Built fresh at stage 2 (3 epochs x 4 batches), not stage 1's restored state.
    assert int(model.optimizer.iterations.numpy()) == 12
    _assert_same_weights(model, reference(False)[0])


@pytest.mark.slow
def test_finished_run_returns_its_history_without_training(capsys, reference):
    weights, history, backup = reference(False)
    before = (backup / BACKUP_FILE).read_bytes()
    recorder = Recorder()
    model, again = _fit(backup, [recorder], verbose=1)
    assert recorder.begins == []  # nothing trained
    assert again.history == history
    assert again.epoch == [0, 1, 2, 3, 4]
    assert "holds a finished run (5 epochs)" in capsys.readouterr().out
    assert tltf.trainable_blocks(model) == TRAINABLE[4]
    _assert_same_weights(model, weights)
    assert (backup / BACKUP_FILE).read_bytes() == before  # kept after success


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"head_epochs": 3}, "head_epochs: 2 in the backup, 3 now"),
        ({"unfreeze": 1}, "unfreeze: 2 in the backup, 1 now"),
        ({"fine_tune_lr": 1e-5}, "fine_tune_lr: 0.0001 in the backup, 1e-05 now"),
        ({"bn": "train"}, 'bn: "affine" in the backup, "train" now'),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"num_classes": 4}, "model num_outputs: 3 in the backup, 4 now"),
        ({"widths": (8, 8, 16, 32)}, "model variable 'block4_conv/kernel'"),
    ],
)
def test_backup_of_another_run_is_refused_and_kept(
    tmp_path, change, match, epoch1_backup
):
    shutil.copytree(epoch1_backup, tmp_path / "b")
    before = (tmp_path / "b" / BACKUP_FILE).read_bytes()
    change = dict(change)
    model = tltf.build_model(
        make_tiny_base(widths=change.pop("widths", (8, 8, 16, 16))),
        num_classes=change.pop("num_classes", 3),
    )
    with pytest.raises(ConfigError, match=match) as error:
        _fit(tmp_path / "b", model=model, **change)
    assert "pass another backup_dir" in str(error.value)
    assert (tmp_path / "b" / BACKUP_FILE).read_bytes() == before


@pytest.fixture(scope="module")
def epoch1_backup(tmp_path_factory):
    """The backup of a run that crashed after epoch 1."""
    backup = tmp_path_factory.mktemp("epoch1") / "b"
    with pytest.raises(RuntimeError):
        _fit(backup, [CrashAt(1)])
    return backup


def test_backup_dir_conflicts_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="either backup_dir or a keras"):
        _fit(tmp_path / "b", [keras.callbacks.BackupAndRestore(str(tmp_path / "k"))])
    with pytest.raises(ConfigError, match="initial_epoch cannot be combined"):
        _fit(tmp_path / "b", initial_epoch=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _fit(tmp_path / "file")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / BACKUP_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        _fit(tmp_path / "c")


@pytest.mark.slow
def test_nan_keeps_the_last_good_checkpoint_and_resumes_from_it(tmp_path, reference):
    """A NaN in stage 2 leaves the epoch-3 checkpoint; the resume finishes the run."""
    with pytest.raises(TrainingError, match=r"stage 2, epoch 4.*fine_tune_lr"):
        _fit(tmp_path / "b", [PoisonAt(3)])
    state = backup_state(tmp_path / "b")
    assert (state["epoch"], state["stage"], state["finished"]) == (3, 2, False)
    assert all(np.isfinite(state["history"]["loss"]))
    recorder = Recorder()
    model, history = _fit(tmp_path / "b", [recorder])
    assert recorder.begins == [3, 4]
    assert history.history["stage"] == STAGES
    assert all(np.all(np.isfinite(v.numpy())) for v in model.variables)
    _assert_same_weights(model, reference(False)[0])


@pytest.mark.slow
def test_an_epoch_that_ends_diverged_is_never_checkpointed(tmp_path):
    """E.g. with Keras's TerminateOnNaN, a diverged epoch can end "normally"."""

    class DivergedLogs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                logs["loss"] = float("nan")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", [DivergedLogs(), CrashAt(4)])
    state = backup_state(tmp_path / "b")
    assert state["epoch"] == 3
    assert all(np.isfinite(state["history"]["loss"]))


def test_only_the_chief_writes_the_backup(tmp_path, monkeypatch):
    import tltf.resume

    monkeypatch.setattr(tltf.resume, "is_chief", lambda: False)
    _fit(tmp_path / "b", head_epochs=1, fine_tune_epochs=0, cache="auto")
    assert not (tmp_path / "b" / BACKUP_FILE).exists()


@pytest.mark.slow
def test_a_run_stopped_early_counts_as_finished(tmp_path):
    class StopAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True  # as EarlyStopping does

    _, history = _fit(tmp_path / "b", [StopAt()])
    assert history.epoch == [0, 1, 2]
    state = backup_state(tmp_path / "b")
    assert (state["epoch"], state["finished"]) == (3, True)
    recorder = Recorder()
    _, again = _fit(tmp_path / "b", [recorder])
    assert recorder.begins == []
    assert again.history == history.history


@pytest.mark.slow
def test_resume_in_stage2_reuses_the_rate_fine_tune_lr_find_found(
    tmp_path, monkeypatch
):
    import tltf.lr_finder

    calls = []
    real = tltf.lr_finder.find_stage_lr

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(tltf.schedule, "find_stage_lr", counting)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", [CrashAt(4)], fine_tune_lr="find")
    assert calls == ["fine_tune"]
    found = backup_state(tmp_path / "b")["found_lr"]
    assert found is not None and found > 0

    class Rate(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.lr = float(self.model.optimizer.learning_rate.numpy())

    rate = Rate()
    _fit(tmp_path / "b", [rate], fine_tune_lr="find")
    assert calls == ["fine_tune"]  # no second sweep on the resumed stage 2
    assert rate.lr == pytest.approx(found)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["multilabel", "2"])
def test_automatic_defaults_resume_after_sigkill_in_the_right_stage(
    tmp_path, monkeypatch, mode
):
    """fine_tune's automatic settings (a stage 1 that ends when its loss
    converges, or with head_steps=0 the closed-form ridge head alone; a probed
    depth; the stage-2 guard) resume bitwise too: one SIGKILL in stage 1 (when
    it has epochs) and one in stage 2, each resumed in a fresh process. The run
    with stage-1 epochs has a multi-label head (4 labels), whose ridge start
    puts an L2 penalty on the head: both resumed processes train with the
    penalty kept in the backup (neither fits the ridge again)."""
    monkeypatch.setenv("TLTF_JOB_AUTO", mode)
    reference_model, reference_history = run(tmp_path / "reference")
    ref = {k: list(v) for k, v in reference_history.history.items()}
    ref_weights = [v.numpy() for v in reference_model.variables]
    stage_one = ref["stage"].count(1)
    if mode == "multilabel":
        assert stage_one >= 2
        kills = (f"epoch:{stage_one - 1}", f"epoch:{stage_one + 1}", None)
    else:
        assert stage_one == 0  # the ridge head: no stage-1 epochs
        kills = ("epoch:1", None)
    assert ref["stage"][stage_one:] == [2, 2, 2]
    runs, (weights, history) = _run_with_kills(tmp_path, kills)
    starts = [events[0]["epoch"] for events in runs]
    assert starts == [0, *(int(k.split(":")[1]) for k in kills[:-1])]
    for events in runs:
        for e in events:
            if e["event"] == "end":
                assert e["stage"] == ref["stage"][e["epoch"]], e
    assert history == ref
    _assert_same_weights(weights, ref_weights)
    if mode == "multilabel":
        state = backup_state(tmp_path / "backup")
        assert state["head_l2"] == pytest.approx(1 / (2 * 32 * 4))  # C=1, 4 labels


@pytest.mark.slow
def test_robust_options_resume_after_sigkill_with_the_same_anchors_and_mix(
    tmp_path, monkeypatch
):
    """A block range, bn="adapt", L2-SP, Auto-RGN and WiSE-FT together, SIGKILLed
    in stage 2 and resumed in a fresh process: the range trains again (block2
    and block3), the L2-SP anchors are the starting weights again (not the
    restored ones), Auto-RGN rescales the same blocks, and the stage-1 weights
    WiSE-FT mixes in come from the backup folder: bitwise the uninterrupted
    run's. Called once more, the finished run mixes the same way."""
    monkeypatch.setenv("TLTF_JOB_AUTO", "robust")
    reference_model, reference_history = run(tmp_path / "reference")
    ref = {k: list(v) for k, v in reference_history.history.items()}
    ref_weights = [v.numpy() for v in reference_model.variables]
    assert ref["stage"] == STAGES
    runs, (weights, history) = _run_with_kills(tmp_path, ("epoch:3", None))
    assert [events[0]["epoch"] for events in runs] == [0, 3]
    trainable = [e["trainable"] for e in runs[1] if e["event"] == "begin"]
    assert trainable == [["block2", "block3"]] * 2
    assert (tmp_path / "backup" / STAGE1_FILE).exists()
    assert history == ref
    _assert_same_weights(weights, ref_weights)
    again, _ = run(tmp_path / "backup")
    _assert_same_weights(again, ref_weights)
