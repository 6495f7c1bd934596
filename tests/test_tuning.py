"""Tuning what to unfreeze: every tuner, shared stage 1, failures, resume, workers."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests import processes, tuning_job
from tests.helpers import ROOT, PenaltySeen, free_ports, make_data, make_tiny_base
from tltf.errors import ConfigError, TrainingError
from tltf.regularizers import head_l2
from tltf.reports import plot_tuning
from tltf.tuning import (
    HEADS_DIR,
    FineTuneHyperModel,
    HeadStore,
    SearchSpace,
    format_table,
    results,
    tune,
)
from tltf.tuning.hypermodel import TRIAL_RECORD, _TrialContext


def _rows(result):
    return {row["trial"]: row for row in result.table}


# -- search space -------------------------------------------------------------------
def test_search_space_declares_fixed_choice_and_range():
    space = SearchSpace.from_dict(
        {"unfreeze": (1, 3), "fine_tune_lr": 1e-5, "bn": ["frozen", "affine"]}
    )
    hp = kt.HyperParameters()
    values = space.declare(hp, n_blocks=4)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds["unfreeze_blocks"] == "Int"
    assert kinds["fine_tune_lr"] == "Fixed" and values["fine_tune_lr"] == 1e-5
    assert kinds["bn"] == "Choice" and kinds["head_dropout"] == "Choice"
    assert values["lr_decay"] == 1.0  # None: one rate
    # "all" spans 0..all blocks of the base's block map.
    hp = kt.HyperParameters()
    SearchSpace().declare(hp, n_blocks=4)
    blocks = next(p for p in hp.space if p.name == "unfreeze_blocks")
    assert (blocks.min_value, blocks.max_value) == (0, 4)


def test_search_space_rejects_bad_entries_with_the_fix():
    with pytest.raises(ConfigError, match="Did you mean 'unfreeze'"):
        SearchSpace.from_dict({"unfrezee": 3})
    with pytest.raises(ConfigError, match="positive numbers"):
        SearchSpace.from_dict({"fine_tune_lr": [1e-5, -1.0]})
    with pytest.raises(ConfigError, match="BatchNorm policies"):
        SearchSpace.from_dict({"bn": "sometimes"})
    with pytest.raises(ConfigError, match=r"block counts in \[0, 4\]"):
        FineTuneHyperModel(make_tiny_base(), 3, search={"unfreeze": (0, 9)})
    with pytest.raises(ConfigError, match="set by the hypermodel"):
        FineTuneHyperModel(make_tiny_base(), 3, unfreeze=2)
    # The trials run without the guard that patience counts with.
    patience = "the tuner's trials run without keep_best"
    with pytest.raises(ConfigError, match=patience):
        FineTuneHyperModel(make_tiny_base(), 3, fine_tune_patience=2)
    with pytest.raises(ConfigError, match=patience):
        settings = tltf.FineTuneSettings(fine_tune_patience=2)
        FineTuneHyperModel(make_tiny_base(), 3, settings=settings)
    both = FineTuneHyperModel(make_tiny_base(), 3, fine_tune_patience=2, keep_best=True)
    assert both.fine_tune_kwargs == {"fine_tune_patience": 2, "keep_best": True}
    with pytest.raises(ConfigError, match="validation"):
        train, _ = tuning_job.data()
        tune(make_tiny_base(), train, None, tuner="random", verbose=0)


# -- the stage-1 store (no TensorFlow training) -----------------------------------
def test_head_store_waits_for_a_working_owner_then_loads(tmp_path):
    store = HeadStore(tmp_path, stale_s=30, poll_s=0.05)
    _, record, lock = store.paths("k")
    lock.write_text("other worker\n")  # another worker is training this head

    def other_worker_finishes():
        time.sleep(0.3)
        store.paths("k")[0].write_bytes(b"weights")
        record.write_text(json.dumps({"trained_by": "7"}))
        lock.unlink()

    threading.Thread(target=other_worker_finishes).start()
    trained, loaded = [], []
    found, reused = store.obtain("k", lambda: trained.append(1), loaded.append)
    assert reused and not trained and found["trained_by"] == "7"
    assert loaded == [store.paths("k")[0]]


def test_head_store_takes_over_a_stale_lock_and_cleans_up(tmp_path):
    store = HeadStore(tmp_path, stale_s=0.2, poll_s=0.05)
    weights, record, lock = store.paths("k")
    lock.write_text("dead worker\n")
    old = time.time() - 60
    os.utime(lock, (old, old))

    def train():
        assert lock.exists()  # we hold the lock while training
        weights.write_bytes(b"w")
        return {"trained_by": "1"}

    found, reused = store.obtain("k", train, lambda path: None)
    assert not reused and found == {"trained_by": "1"}
    assert json.loads(record.read_text()) == {"trained_by": "1"} and not lock.exists()


# -- searches -------------------------------------------------------------------------
class SeenByUser(keras.callbacks.Callback):
    """A user callback: records epochs and the head at the start of stage 2."""

    log: list = []

    def on_train_begin(self, logs=None):
        kernel = self.model.get_layer("head_output").kernel.numpy().copy()
        SeenByUser.log.append({"head": kernel, "epochs": self.params["epochs"]})

    def on_epoch_begin(self, epoch, logs=None):
        SeenByUser.log[-1].setdefault("seen", []).append(epoch)


class Interrupt(keras.callbacks.Callback):
    """Interrupts the search (like Ctrl-C) in the n-th trial."""

    fits = 0

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_begin(self, logs=None):
        Interrupt.fits += 1
        if Interrupt.fits == self.at:
            raise KeyboardInterrupt


def _log(log_dir):
    lines = []
    for path in sorted(Path(log_dir).glob("*.log")):
        lines += path.read_text().split()
    return lines


@pytest.mark.slow
def test_random_search_shares_stage1_resumes_and_exports(tmp_path):
    """Random search: one stage 1 for all trials, callbacks, resume, exports."""
    train, val = tuning_job.data()
    logs = tmp_path / "logs"
    logs.mkdir()
    common = dict(
        tuner="random", directory=tmp_path, project_name="p", verbose=0, seed=0
    )
    SeenByUser.log = []
    Interrupt.fits = 0
    with pytest.raises(KeyboardInterrupt):
        tune(
            tuning_job.hypermodel(
                logs, search={**tuning_job.FIXED_HEAD, "unfreeze": [1, 2, 3]}
            ),
            train,
            val,
            max_trials=2,
            callbacks=[Interrupt(at=2), SeenByUser()],
            **common,
        )
    assert _log(logs) == ["0", "1"]  # trial 1 was interrupted

    # Resume with one more trial: trial 0 is not run again, 1 reruns, 2 is new.
    result = tune(
        tuning_job.hypermodel(
            logs, search={**tuning_job.FIXED_HEAD, "unfreeze": [1, 2, 3]}
        ),
        train,
        val,
        max_trials=3,
        callbacks=[SeenByUser()],
        **common,
    )
    assert _log(logs) == ["0", "1", "1", "2"]
    rows = _rows(result)
    assert sorted(rows) == ["0", "1", "2"]
    assert all(r["status"] == "COMPLETED" for r in rows.values())
    # Stage 1 was trained once (trial 0), and every later trial, across the
    # interruption, started stage 2 from it.
    assert [rows[t]["stage1"] for t in "012"] == ["trained", "reused", "reused"]
    assert {rows[t]["stage1_from"] for t in "012"} == {"0"}
    assert len(list((tmp_path / "p" / HEADS_DIR).glob("*.weights.h5"))) == 1
    heads = [entry["head"] for entry in SeenByUser.log]
    assert all(np.array_equal(heads[0], h) for h in heads[1:])
    untrained = tuning_job.hypermodel().build(kt.HyperParameters())
    assert not np.array_equal(
        heads[0], untrained.get_layer("head_output").kernel.numpy()
    )
    # The user's callbacks see stage 2 as epoch 2 of 2 (after the shared stage 1).
    assert all(e["epochs"] == 2 and e["seen"] == [1] for e in SeenByUser.log)
    # Rows say what was unfrozen and how many params trained.
    assert rows["0"]["blocks"] in (1, 2, 3) and rows["0"]["trainable_params"] > 0
    deeper = sorted(rows.values(), key=lambda r: r["blocks"])
    assert deeper[0]["trainable_params"] <= deeper[-1]["trainable_params"]
    record = json.loads((tmp_path / "p" / "trial_2" / "tltf_trial.json").read_text())
    assert record["history"]["stage"] == [1.0, 2.0]  # stage 1 prepended
    # Exports: CSV, JSON, plot and the best model, which loads safely.
    with open(result.paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 3
    assert len(json.loads(Path(result.paths["json"]).read_text())) == 3
    assert Path(result.paths["plot"]).stat().st_size > 0
    loaded = tltf.load_model(result.paths["model"])
    x = val[0][:4]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0),
        result.best_model.predict(x, verbose=0),
        atol=1e-6,
    )
    # The best model comes back compiled for its task: evaluate works at once.
    metrics = result.best_model.evaluate(*val, verbose=0, return_dict=True)
    assert set(metrics) >= {"loss", "accuracy"}
    best = max(r["score"] for r in rows.values())
    # (Trials can tie: the tuner keeps one of the best.)
    assert result.best_values["unfreeze_blocks"] in {
        r["blocks"] for r in rows.values() if r["score"] == best
    }
    assert "val_accuracy" in format_table(result.table, "val_accuracy")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bayesian", "hyperband"])
def test_bayesian_and_hyperband_share_stage1(tmp_path, kind):
    train, val = tuning_job.data()
    extra = {}
    if kind == "hyperband":
        # factor 2, max 2 stage-2 epochs: two 1-epoch trials, then the best one
        # continues from its checkpoint to epoch 2. Multi-label: a trial that
        # continues another trains with its stage 1's head L2 too.
        extra = dict(fine_tune_epochs=2, tuner_kwargs={"factor": 2}, task="multilabel")
        (x, y), (xv, yv) = train, val
        train, val = (x, np.eye(3)[y]), (xv, np.eye(3)[yv])
    result = tune(
        make_tiny_base(),
        train,
        val,
        search=tuning_job.FIXED_HEAD,
        tuner=kind,
        max_trials=3 if kind == "hyperband" else 2,
        head_epochs=1,
        fine_tune_epochs=extra.pop("fine_tune_epochs", 1),
        directory=tmp_path,
        project_name=kind,
        verbose=0,
        seed=0,
        batch_size=16,
        **extra,
    )
    rows = _rows(result)
    assert all(r["status"] == "COMPLETED" for r in rows.values())
    assert rows["0"]["stage1"] == "trained" and rows["1"]["stage1"] == "reused"
    assert rows["1"]["stage1_from"] == "0"
    if kind == "hyperband":
        assert rows["2"]["stage1"] == "continued"
        assert rows["2"]["stage1_from"] in ("0", "1")
        assert rows["2"]["best_epoch"] == 3  # 1 head + 2 fine-tune epochs
        records = [json.loads(p.read_text()) for p in tmp_path.rglob(TRIAL_RECORD)]
        assert len(records) == 3
        for record in records:
            assert record["stage1"]["head_l2"] == pytest.approx(1 / (2 * 48 * 3))
    assert result.best_model is not None


#: A head on the top block only, no raw pixels: one tensor crosses the cut.
TOP_ONLY = {"pool_from": "top", "pixels": 0}


def _stage2_trial(cache, blocks, train, val, head=TOP_ONLY):
    """One trial of a fixed head outside a tuner (no trial, no store: stage 1
    then stage 2): the model's weights and the History's logs. With
    `cache="auto"`, stage 2 must read cached frozen-block features."""
    hypermodel = tuning_job.hypermodel(
        cache_features=cache,
        search={**tuning_job.FIXED_HEAD, "unfreeze": blocks, "fine_tune_lr": 1e-3},
        fine_tune_epochs=2,
        head=head,
    )
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    if cache == "auto":
        assert hypermodel._partial_cache(
            model, hypermodel.trial_values(hp), {}, train, val, []
        )
    history = FineTuneHyperModel.fit(hypermodel, hp, model, train, val, verbose=0)
    return model.get_weights(), history.history


@pytest.mark.slow
@pytest.mark.parametrize(
    "blocks, head",
    [(0, TOP_ONLY), (2, TOP_ONLY), (2, {})],
    ids=["head-only", "two-blocks", "two-blocks-default-head"],
)
def test_stage2_on_cached_frozen_blocks_matches_full_passes(blocks, head):
    """Below the unfrozen blocks, stage 2 reads features computed once: same
    weights, same History as full forward passes (cache_features=False). The
    default head reads the frozen blocks and the raw pixels too: they are
    computed once with the cut."""
    train, val = tuning_job.data()
    cached, logs = _stage2_trial("auto", blocks, train, val, head)
    full, full_logs = _stage2_trial(False, blocks, train, val, head)
    for a, b in zip(cached, full, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(logs["val_loss"], full_logs["val_loss"], rtol=1e-5)
    assert list(logs["stage"]) == [2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["bundle", "dataset"])
def test_a_trials_stage_2_on_datasets_reads_the_frozen_blocks_once(form, capsys):
    """A `load_data` bundle, or a `tf.data` input of known length, gets the
    cached stage 2 too (until 2026-12-06, arrays only): the frozen blocks,
    BatchNorm statistics included, stay bitwise as they were, and the
    validation loss it logs last is the model's own on the validation data
    (the cached features are the model's, each with its image's label)."""
    (x, y), (xv, yv) = tuning_job.data()
    if form == "bundle":
        train = tltf.load_data((x, y), validation=(xv, yv), batch_size=16, seed=0)
        val = train.validation
    else:
        train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(48, seed=0)
        val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(16)
    hypermodel = tuning_job.hypermodel(
        search={**tuning_job.FIXED_HEAD, "unfreeze": 2, "fine_tune_lr": 1e-3},
        fine_tune_epochs=2,
    )
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hypermodel._partial_cache(
        model, hypermodel.trial_values(hp), {}, train, val, []
    )
    info = tltf.model_info(model)
    frozen = [
        info.base.get_layer(name)
        for block in info.block_map
        if block.name in ("block1", "block2")
        for name in block.layers
    ]
    before = [w.numpy().copy() for layer in frozen for w in layer.weights]
    history = FineTuneHyperModel.fit(hypermodel, hp, model, train, val, verbose=1)
    assert "frozen blocks, computed once" in capsys.readouterr().out
    after = [w.numpy() for layer in frozen for w in layer.weights]
    assert before and len(before) == len(after)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert list(history.history["stage"]) == [2, 2]
    loss = model.evaluate(xv, yv, verbose=0)[0]
    np.testing.assert_allclose(history.history["val_loss"][-1], loss, rtol=1e-5)


def _nudge(hp, model):
    """A build hook: with `nudge` 1, block1's BatchNorm (frozen in stage 2)
    divides by a larger epsilon. No weight changes, so only the output shows it."""
    if hp.Choice("nudge", [0, 1]):
        tltf.model_info(model).base.get_layer("block1_bn").epsilon = 0.5
    return model


@pytest.mark.slow
@pytest.mark.parametrize("form", ["arrays", "bundle"])
def test_trials_that_unfreeze_the_same_blocks_read_one_frozen_output(form, capsys):
    """The second trial to unfreeze the same top blocks on the same data reads
    the frozen blocks' output the first computed: the same weights as a trial
    that computes it itself, bit for bit. A trial whose frozen blocks differ (a
    build hook that changes a frozen layer) computes its own."""
    (x, y), (xv, yv) = tuning_job.data()
    train, val = (x, y), (xv, yv)
    if form == "bundle":
        train = tltf.load_data((x, y), validation=(xv, yv), batch_size=16, seed=0)
        val = train.validation

    def trial(hypermodel, rate, nudge=0):
        hp = kt.HyperParameters()
        hp.Fixed("fine_tune_lr", rate)
        hp.Fixed("nudge", nudge)
        model = hypermodel.build(hp)
        FineTuneHyperModel.fit(hypermodel, hp, model, train, val, verbose=1)
        printed = capsys.readouterr().out
        reused = "computed by an earlier trial" in printed
        assert reused or "frozen blocks, computed once" in printed
        return model.get_weights(), reused

    def searched():
        return tuning_job.hypermodel(
            search={**tuning_job.FIXED_HEAD, "unfreeze": 2},
            build_hook=_nudge,
            fine_tune_epochs=1,
        )

    shared = searched()
    _, reused = trial(shared, 1e-3)
    assert not reused
    second, reused = trial(shared, 3e-4)
    assert reused
    alone, _ = trial(searched(), 3e-4)
    assert all(np.array_equal(a, b) for a, b in zip(second, alone, strict=True))
    if form == "arrays":
        # The same key (no weight changed), but not the same first batch.
        _, reused = trial(shared, 3e-4, nudge=1)
        assert not reused


@pytest.mark.slow
def test_a_trials_frozen_output_over_the_limit_is_read_from_disk_for_datasets(
    tmp_path, monkeypatch, capsys
):
    """Past the memory limit, without a GPU or TPU, a bundle's trial reads the
    frozen blocks' output back from a file: the weights of a trial that holds
    it in memory, bit for bit, and no file left. Arrays, whose output a trial
    computes in memory, run full passes there."""
    import tempfile

    import tltf.cache

    (x, y), (xv, yv) = tuning_job.data()
    bundle = tltf.load_data((x, y), validation=(xv, yv), batch_size=16, seed=0)

    def trial(train, val):  # a hypermodel of its own: nothing shared
        hp = kt.HyperParameters()
        hp.Fixed("fine_tune_lr", 1e-3)
        hypermodel = tuning_job.hypermodel(
            search={**tuning_job.FIXED_HEAD, "unfreeze": 2}, fine_tune_epochs=2
        )
        model = hypermodel.build(hp)
        FineTuneHyperModel.fit(hypermodel, hp, model, train, val, verbose=1)
        return model.get_weights(), capsys.readouterr().out

    in_memory, printed = trial(bundle, bundle.validation)
    assert "frozen blocks, computed once" in printed and "disk" not in printed
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr(tltf.cache, "has_accelerator", lambda: False)
    on_disk, printed = trial(bundle, bundle.validation)
    assert "computed once" in printed and "it is read back from disk" in printed
    for got, want in zip(on_disk, in_memory, strict=True):
        np.testing.assert_array_equal(got, want)
    _, printed = trial((x, y), (xv, yv))
    assert "stage 2" in printed and "computed once" not in printed
    assert not list(tmp_path.glob("features-*"))  # where files keep names


@pytest.mark.parametrize("setting", ["auto", 0.01])
def test_a_trials_stage_2_trains_with_the_heads_l2_of_its_stage_1(setting):
    """Under head_l2="auto" a ridge-started multi-label head trains with an L2
    penalty, and one fine_tune call keeps it through stage 2. A trial's stage 2
    (a call of its own) keeps stage 1's strength too, on cached frozen blocks
    and on full passes alike (the same weights). A number applies to both."""
    (x, y), (xv, yv) = tuning_job.data()
    train, val = (x, np.eye(3)[y]), (xv, np.eye(3)[yv])
    strength = 1 / (2 * len(x) * 3) if setting == "auto" else setting
    weights = {}
    for cache in ("auto", False):
        hypermodel = tuning_job.hypermodel(
            task="multilabel",
            cache_features=cache,
            head_l2=setting,
            search={**tuning_job.FIXED_HEAD, "unfreeze": 1, "fine_tune_lr": 1e-3},
            fine_tune_epochs=2,
            head={"pool_from": "top", "pixels": 0},  # one tensor crosses the cut
        )
        hp = kt.HyperParameters()
        model = hypermodel.build(hp)
        options = hypermodel.fit_options(hp)
        partial = hypermodel._partial_cache(
            model, hypermodel.trial_values(hp), options, train, val, []
        )
        assert bool(partial) == (cache == "auto")
        seen = PenaltySeen()
        FineTuneHyperModel.fit(
            hypermodel, hp, model, train, val, callbacks=[seen], verbose=0
        )
        assert seen.strengths == [pytest.approx(strength)] * 2, cache
        assert head_l2(model) is None  # a training-time penalty only
        weights[cache] = model.get_weights()
    for a, b in zip(weights["auto"], weights[False], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("share_stage1", [True, False])
def test_a_continued_trial_reads_the_heads_l2_from_the_trial_it_continues(
    tmp_path, share_stage1
):
    """Hyperband continues a trial from its checkpoint: no stage 1 runs, and
    the strength comes from the continued trial's record, also when stage 1 is
    not shared (there is no store to look it up in)."""
    hypermodel = tuning_job.hypermodel(task="multilabel", share_stage1=share_stage1)
    previous = tmp_path / "trial_0" / TRIAL_RECORD
    previous.parent.mkdir()
    previous.write_text(json.dumps({"stage1": {"mode": "trained", "head_l2": 0.25}}))
    context = _TrialContext(trial_id="1", project_dir=str(tmp_path))
    continued = {"mode": "continued", "from": "0"}
    assert hypermodel._stage2_head_l2(continued, context) == 0.25
    unknown = {"mode": "continued", "from": "7"}  # no record: no penalty
    assert hypermodel._stage2_head_l2(unknown, context) is None


class Fault(keras.callbacks.Callback):
    """Injects the fault that the trial's "fault" hyperparameter names."""

    def on_train_batch_begin(self, batch, logs=None):
        fault = getattr(self.model, "fault", "none")
        if fault == "nan":
            kernel = self.model.get_layer("head_output").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))
        elif fault == "oom":
            raise tf.errors.ResourceExhaustedError(
                None, None, "OOM when allocating tensor with shape [4096,4096]"
            )


def _add_fault(hp, model):
    model.fault = hp.Choice("fault", ["none", "nan", "oom"])
    return model


@pytest.mark.slow
def test_grid_search_failed_trials_keep_their_reason(tmp_path):
    train, val = tuning_job.data()
    result = tune(
        make_tiny_base(),
        train,
        val,
        search={**tuning_job.FIXED_HEAD, "unfreeze": 1, "fine_tune_lr": 1e-4},
        build_hook=_add_fault,
        stage2_hps=["fault"],  # the fault only changes stage 2: one shared stage 1
        callbacks=[Fault()],
        tuner="grid",
        max_trials=5,
        head_epochs=1,
        fine_tune_epochs=1,
        directory=tmp_path,
        project_name="grid",
        verbose=0,
        seed=0,
        batch_size=16,
    )
    by_fault = {r["hp:fault"]: r for r in result.table}
    assert set(by_fault) == {"none", "nan", "oom"}  # the grid is exhausted
    assert by_fault["none"]["status"] == "COMPLETED"
    assert by_fault["nan"]["status"] == "FAILED"
    assert "TrainingError: The loss became nan" in by_fault["nan"]["reason"]
    assert by_fault["oom"]["status"] == "FAILED"
    assert by_fault["oom"]["reason"].startswith("Out of memory")
    # Failed trials still shared the one stage 1 (trained by the first trial).
    assert [by_fault[f]["stage1"] for f in ("none", "nan", "oom")] == [
        "trained",
        "reused",
        "reused",
    ]
    assert result.best_values["fault"] == "none"
    text = result.summary()
    assert "FAILED" in text and "Out of memory" in text


@pytest.mark.slow
def test_too_many_failures_in_a_row_stop_with_the_reasons(tmp_path):
    builds = []

    def broken(hp, model):
        builds.append(1)
        if len(builds) > 1:  # the first build only declares the search space
            raise ConfigError("this combination is not supported")
        return model

    train, val = tuning_job.data()
    with pytest.raises(TrainingError, match="2 trials in a row failed.*not supported"):
        tune(
            make_tiny_base(),
            train,
            val,
            build_hook=broken,
            tuner="random",
            max_trials=5,
            max_consecutive_failed_trials=2,
            directory=tmp_path,
            project_name="broken",
            verbose=0,
        )
    rows = json.loads((tmp_path / "broken" / "tltf_results.json").read_text())
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    assert all("not supported" in r["reason"] for r in rows)


@pytest.mark.slow
def test_user_hyperparameters_get_their_own_stage1(tmp_path, capsys):
    """A user's fit_hook entry is part of the head key; a kt.Tuner instance works."""
    train, val = tuning_job.data()
    hypermodel = tuning_job.hypermodel(
        search={**tuning_job.FIXED_HEAD, "unfreeze": 2, "fine_tune_lr": 1e-4},
        fit_hook=lambda hp: {"label_smoothing": hp.Choice("smoothing", [0.0, 0.1])},
    )
    tuner = kt.GridSearch(
        hypermodel,
        objective="val_accuracy",
        max_trials=4,
        directory=tmp_path,
        project_name="user",
    )
    result = tune(None, train, val, tuner=tuner, verbose=0)
    rows = list(_rows(result).values())
    assert sorted(r["hp:smoothing"] for r in rows) == [0.0, 0.1]
    assert [r["stage1"] for r in rows] == ["trained", "trained"]
    assert rows[0]["head_key"] != rows[1]["head_key"]
    # A chief that cannot read the best checkpoint still returns the results.
    for checkpoint in (tmp_path / "user").glob("trial_*/checkpoint.weights.h5"):
        checkpoint.unlink()
    again = results(tuner, export=False, verbose=0)
    assert again.best_model is None and len(again.table) == 2
    assert "could not load the best trial's checkpoint" in capsys.readouterr().out


def test_plot_tuning_skips_failed_trials(tmp_path):
    rows = [
        {"blocks": 0, "score": 0.5, "epoch_s": 0.1, "status": "COMPLETED"},
        {"blocks": 2, "score": 0.7, "epoch_s": 0.3, "status": "COMPLETED"},
        {"blocks": 2, "score": 0.6, "epoch_s": None, "status": "COMPLETED"},
        {"blocks": 3, "score": None, "epoch_s": None, "status": "FAILED"},
    ]
    figure = plot_tuning(rows, "val_accuracy", path=tmp_path / "t.png")
    axes = figure.get_axes()
    assert len(axes) == 2  # the metric and, on a second axis, seconds per epoch
    assert list(axes[0].lines[0].get_ydata()) == [0.5, 0.7]  # best per depth
    assert (tmp_path / "t.png").stat().st_size > 0


# -- distributed ------------------------------------------------------------------------
@pytest.mark.slow
def test_distributed_chief_and_two_workers_run_each_trial_once(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_ports(1)[0]
    trials = 3
    procs = {}
    base_env = {
        **os.environ,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    try:
        for name in ("chief", "tuner0", "tuner1"):
            procs[name] = processes.python(  # started with tltf imported
                [
                    sys.executable,
                    "-m",
                    "tests.tuning_job",
                    str(tmp_path),
                    str(logs),
                    str(trials),
                ],
                cwd=ROOT,
                env={**base_env, "KERASTUNER_TUNER_ID": name},
                new_session=True,
            )
        outputs = {}
        deadline = time.monotonic() + 240
        for name, proc in procs.items():
            outputs[name], _ = proc.communicate(
                timeout=max(1, deadline - time.monotonic())
            )
        for name, proc in procs.items():
            assert proc.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    ran = _log(logs)
    assert sorted(ran) == [str(i) for i in range(trials)]  # each trial exactly once
    assert {p.stem for p in logs.glob("*.log")} <= {"tuner0", "tuner1"}
    project = tmp_path / "dist"
    rows = json.loads((project / "tltf_results.json").read_text())
    assert [r["status"] for r in rows] == ["COMPLETED"] * trials
    # The workers shared one stage 1 through the project folder (lock file).
    assert sorted(r["stage1"] for r in rows) == ["reused"] * (trials - 1) + ["trained"]
    assert len(list((project / HEADS_DIR).glob("*.weights.h5"))) == 1
    assert not list((project / HEADS_DIR).glob("*.lock"))
    assert (project / "best_model.keras").stat().st_size > 0
    assert f"chief: {trials} rows" in outputs["chief"]


def test_tuning_without_validation_data_gives_the_split_to_make(tmp_path):
    images, labels = make_data(24)
    with pytest.raises(ConfigError) as error:
        tltf.tune(make_tiny_base(), (images, labels), directory=tmp_path)
    message = str(error.value)
    assert "Tuning needs validation data: trials are compared on it" in message
    assert "validation_split=0.2, seed=0), and pass data" in message
    # The split it gives is a bundle with its validation split.
    data = tltf.load_data(
        (images, labels), image_size=images.shape[1:3], validation_split=0.2, seed=0
    )
    assert data.validation is not None and data.num_validation == 5


@pytest.mark.slow
def test_stage2_on_cached_frozen_blocks_weighs_the_images():
    """Weighted arrays keep the cached stage 2: the same weights and
    validation loss as full forward passes, and not those of the unweighted
    run."""
    (x, y), (xv, yv) = tuning_job.data()
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(y)).astype("float32")
    wv = np.random.default_rng(1).uniform(0.2, 3.0, len(yv)).astype("float32")
    cached, logs = _stage2_trial("auto", 2, (x, y, w), (xv, yv, wv))
    full, full_logs = _stage2_trial(False, 2, (x, y, w), (xv, yv, wv))
    _, alike = _stage2_trial("auto", 2, (x, y), (xv, yv))
    for a, b in zip(cached, full, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(logs["val_loss"], full_logs["val_loss"], rtol=1e-5)
    assert not np.allclose(logs["val_loss"], alike["val_loss"], rtol=1e-3)


def test_refit_trains_the_best_values_with_fine_tunes_own_epochs_and_guard(
    tmp_path, monkeypatch
):
    """`TuneResult.refit` builds a fresh model with the best trial's values and
    runs one `fine_tune` on the data it is given: the searched depth and rate,
    the user's own settings, and fine_tune's defaults for what only the tuner
    set (keep_best=False becomes the guard; epochs the user set stay)."""
    from tltf.tuning import hypermodel as hypermodel_module
    from tltf.tuning.results import TuneResult

    train, val = tuning_job.data()
    search = {**tuning_job.FIXED_HEAD, "unfreeze": [1, 2], "fine_tune_lr": [1e-4, 3e-4]}
    result = tune(
        tuning_job.hypermodel(search=search, label_smoothing=0.1),
        train,
        val,
        tuner="random",
        max_trials=2,
        directory=tmp_path,
        verbose=0,
        seed=0,
    )
    best = result.best_values
    runs = []
    real = hypermodel_module.fine_tune

    def seen(model, data, validation, settings, **kwargs):
        runs.append((data, validation, settings, kwargs))
        return real(model, data, validation, settings, **kwargs)

    monkeypatch.setattr(hypermodel_module, "fine_tune", seen)
    everything = tuple(np.concatenate(pair) for pair in zip(train, val, strict=True))
    model = result.refit(everything, verbose=0)
    (data, validation, settings, kwargs) = runs[0]
    assert len(runs) == 1 and data is everything and validation is None
    assert kwargs["unfreeze"] == best["unfreeze_blocks"]
    assert kwargs["fine_tune_lr"] == best["fine_tune_lr"]
    assert kwargs["label_smoothing"] == 0.1  # the user's setting
    assert settings.keep_best is True  # the trials ran without the guard
    assert (settings.head_epochs, settings.fine_tune_epochs) == (1, 1)  # set
    # A fresh model of the best architecture, trained on all the images.
    assert model is not result.best_model
    assert model.get_layer("head_output").kernel.shape[-1] == 3
    untrained = tuning_job.hypermodel(search=search).build(result.best_hyperparameters)
    assert not np.array_equal(
        model.get_layer("head_output").kernel.numpy(),
        untrained.get_layer("head_output").kernel.numpy(),
    )
    # Epochs that the user left to the tuner go back to fine_tune's "auto".
    plain = FineTuneHyperModel(make_tiny_base(), num_classes=3, search=search)
    assert plain.tuner_set_fields == ("head_epochs", "fine_tune_epochs", "keep_best")
    with pytest.raises(ConfigError, match="no tuner"):
        TuneResult(None, None, [], "val_accuracy").refit(everything)


def test_a_search_on_few_validation_images_says_how_noisy_its_best_score_is(
    tmp_path, capsys
):
    from tltf.runs import _refit_hint
    from tltf.tuning.results import TuneResult
    from tltf.tuning.search import few_validation_note

    train, val = tuning_job.data()  # 24 validation images
    tune(
        tuning_job.hypermodel(),
        train,
        val,
        tuner="random",
        max_trials=1,
        directory=tmp_path,
        verbose=1,
        seed=0,
    )
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("tltf: note: the trials were compared on 24 validation")
    assert "result.refit(" in line

    def note(score, count, objective="val_accuracy"):
        rows = [{"score": score}, {"score": None}]
        result = TuneResult(None, None, rows, objective)
        labels = np.zeros(count)
        return few_validation_note(result, train, (labels, labels))

    # Wilson's 95% interval: +-0.116 for 0.857 on 35 images, +-0.069 at 1.0 on
    # 24 (not 0), +-0.025 for 0.8 on 1,000 images (no note).
    assert "+-0.116" in note(0.857, 35) and "+-0.069" in note(1.0, 24)
    assert note(0.8, 1000) is None
    # A bundle's validation split is counted too.
    bundle = tltf.load_data(train, image_size=16, validation_split=0.25, seed=0)
    result = TuneResult(None, None, [{"score": 0.9}], "val_accuracy")
    assert "on 12 validation images" in few_validation_note(
        result, bundle, bundle.validation
    )
    # The note names result.refit; `tltf tune` follows it with its flag (a run
    # that has --refit is not asked: tests/test_cli_e2e.py).
    assert "--refit" not in few_validation_note(result, bundle, bundle.validation)
    hint = _refit_hint(result, bundle)
    assert hint.startswith("tltf: note: tltf tune --refit ([tune] refit = true)")
    assert (
        _refit_hint(TuneResult(None, None, [{"score": 0.9}], "val_loss"), bundle)
        is None
    )
    assert note(0.857, 35, objective="val_loss") is None
    # A batched tf.data set of known length is counted (a last, smaller batch
    # included); one of unknown length may be endless, and gets no line.
    x_val, y_val = val
    batches = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(5)
    assert "on 24 validation images" in few_validation_note(result, train, batches)
    unknown = batches.filter(lambda x, y: True)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    assert few_validation_note(result, train, unknown) is None
