"""The stage-2 guard's held-out slice: who holds what out, and the hand-back."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
import tltf.cache
from tests.helpers import (
    NO_PIXELS,
    BatchesPerEpoch,
    CrashAt,
    make_data,
    make_image_folder,
    make_tiny_model,
)
from tltf.errors import ConfigError
from tltf.guard import KeepBest, holdout_rows
from tltf.layers import Standardization


def test_holdout_rows_are_a_stratified_reproducible_slice():
    y = np.repeat(np.arange(4), [10, 5, 2, 23])
    trained, held = holdout_rows(y, seed=3)
    assert sorted([*trained, *held]) == list(range(len(y)))
    assert np.bincount(y[held]).tolist() == [2, 1, 1, 5]  # 20%, at least one
    again = holdout_rows(y, seed=3)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(holdout_rows(y, seed=4)[1], held)
    # One-hot labels and labels as floats name the same classes.
    np.testing.assert_array_equal(holdout_rows(np.eye(4)[y], 3)[1], held)
    # At most 1,000 images, one per class at least.
    big = np.repeat(np.arange(3), [9000, 3000, 2])
    trained, held = holdout_rows(big, seed=0)
    assert len(held) <= 1000 and set(big[held]) == {0, 1, 2}
    # A class with one image cannot give one away.
    assert holdout_rows(np.array([0, 0, 1]), seed=0) is None
    assert holdout_rows(np.zeros(5, int), seed=0) is None


def test_holdout_rows_of_regression_and_multilabel_are_a_random_slice():
    targets = np.linspace(0, 1, 40, dtype="float32")
    for task, labels in (("regression", targets), ("multilabel", np.ones((40, 3)))):
        trained, held = holdout_rows(labels, seed=3, task=task)
        assert len(held) == 8 and sorted([*trained, *held]) == list(range(40))
        np.testing.assert_array_equal(holdout_rows(labels, 3, task)[1], held)
        assert not np.array_equal(holdout_rows(labels, 4, task)[1], held)
        # Too few rows to spare any: no slice.
        assert holdout_rows(labels[:9], seed=3, task=task) is None
    assert len(holdout_rows(np.zeros(20_000), seed=0, task="regression")[1]) == 1000


def _standardization(model):
    return next(la for la in model.layers if isinstance(la, Standardization))


@pytest.mark.parametrize("cache", [True, False])
def test_neither_stage_trains_on_the_slice(cache, capsys):
    x, y = make_data(48)
    model = make_tiny_model(head={"pool_from": "top", **NO_PIXELS})
    seen = BatchesPerEpoch()
    tltf.fine_tune(
        model,
        (x, y),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        batch_size=8,
        cache_features=cache,
        callbacks=[seen],
        verbose=1,
    )
    out = capsys.readouterr().out
    trained, held = holdout_rows(y, seed=None)
    assert len(held) == 9  # 3 of each class's 16
    assert "9 of 48 training images (a stratified slice) are held out" in out
    if cache:
        assert "one pass over 39 train" in out
    # 39 images in batches of 8 are 5 steps an epoch (48 would be 6).
    assert seen.batches[-1] == 5
    assert "keep_best:" in out and "accuracy on 9 held-out training images" in out
    assert "handed the 9 held-out images back" in out


@pytest.mark.parametrize("cache", [True, False])
def test_stage_2_is_skipped_when_stage_1_classifies_the_whole_slice(
    cache, tmp_path, monkeypatch, capsys
):
    """A stage-2 epoch would have to be more accurate on the slice to be kept:
    when stage 1 classifies all of it, the run ends after stage 1, with the
    model the full run would have restored (bitwise without the cache, to 1e-6
    with it), and its backup counts as finished."""
    x, y = make_data(48)

    def run(**kwargs):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()  # its ridge start classifies every image
        history = tltf.fine_tune(
            model,
            (x, y),
            head_epochs=2,
            fine_tune_epochs=2,
            unfreeze=1,
            cache_features=cache,
            seed=0,
            verbose=1,
            **kwargs,
        )
        return model, history, capsys.readouterr().out

    skipped, history, out = run(backup_dir=tmp_path / "backup")
    assert history.history["stage"] == [1, 1]
    assert "classifies all 9 held-out training images correctly" in out
    assert "stage 2 was skipped" in out and "stage 2 from" not in out
    assert "handed the 9 held-out images back" in out
    # history.kept: stage 1's last epoch, the base frozen, and why.
    kept = history.kept
    assert (kept.epoch, kept.stage, kept.blocks) == (2, 1, ())
    assert "stage 2 was skipped" in kept.note and "refit" in kept.note
    _, again, out = run(backup_dir=tmp_path / "backup")  # finished: nothing trains
    assert again.history["stage"] == [1, 1] and "holds a finished run" in out
    assert (again.kept.epoch, again.kept.stage) == (2, 1)
    with monkeypatch.context() as patch:  # stage 2 runs, and is thrown away
        patch.setattr(KeepBest, "_end_if_nothing_to_gain", lambda self: None)
        full, history, out = run()
    assert history.history["stage"] == [1, 1, 2, 2]
    assert "restored the weights of the end of stage 1" in out
    assert (history.kept.epoch, history.kept.blocks) == (2, ())
    for a, b in zip(skipped.variables, full.variables, strict=True):
        if cache:
            # After a cached stage 2, the hand-back reads the features through
            # the split, not the whole model: the same sums in another order,
            # equal to the last bit on some CPUs only (one weight in 240 moved
            # by 3e-8 on an AMD EPYC).
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    trained, history, _ = run(keep_best=False)
    assert history.history["stage"] == [1, 1, 2, 2]
    top = tltf.block_summary(trained)[-1]["block"]
    kept = history.kept
    assert (kept.epoch, kept.stage, kept.blocks) == (4, 2, (top,))
    assert "keep_best=False" in kept.note


class _ZeroHead(keras.callbacks.Callback):
    """Zeroes the head's output layer when stage 1 ends: it then scores chance."""

    def on_epoch_end(self, epoch, logs=None):
        if logs.get("stage") == 1:
            for variable in self.model.get_layer("head_output").weights:
                variable.assign(np.zeros(variable.shape, "float32"))


def test_the_slice_is_handed_back_to_a_closed_form_head(capsys):
    x, y = make_data(48)
    model = make_tiny_model(head={"pool_from": "top", **NO_PIXELS})
    tltf.fine_tune(
        model,
        (x, y),
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_lr=1e-12,  # stage 2 leaves the zeroed head at chance
        unfreeze=1,
        callbacks=[_ZeroHead()],
        verbose=1,
    )
    out = capsys.readouterr().out
    assert "handed the 9 held-out images back" in out
    assert "refit in closed form on all 48 training images" in out
    # The head's statistics are those of every training image, slice included,
    # and the refit head classifies them.
    features = tltf.cache.feature_model(model).predict(x, verbose=0)
    np.testing.assert_allclose(
        _standardization(model).mean.numpy(),
        features.mean(axis=0),
        rtol=1e-4,
        atol=1e-5,
    )
    assert np.mean(model.predict(x, verbose=0).argmax(axis=1) == y) > 0.9


class _Plan:
    """A schedule whose stage 2 starts at epoch 0 (what KeepBest asks of one)."""

    unfreeze_at_epoch = 0

    def plan(self, epoch):
        return 2, []


@pytest.mark.parametrize(
    "accuracies, kept",
    [
        ([1.0, 1.0, 1.0, 1.0], -1),  # ties: stage 1
        ([0.5, 0.5, 0.5, 0.5], -1),
        ([0.5, 1.0, 1.0, 1.0], 0),  # the first epoch that is more accurate
        ([0.5, 0.5, 1.0, 1.0], 1),
    ],
)
def test_on_the_slice_a_later_epoch_must_be_more_accurate(
    accuracies, kept, monkeypatch, capsys
):
    """Stage 1's end (candidate -1), then 3 stage-2 epochs, each fitting the
    slice more closely (a higher likelihood): only a higher accuracy replaces
    the best."""
    scores = iter(zip(accuracies, [-0.5, -0.3, -0.2, -0.1], strict=True))
    monkeypatch.setattr(KeepBest, "holdout_score", lambda self: next(scores))
    model = make_tiny_model()
    marker = model.get_layer("head_output").bias
    guard = KeepBest(_Plan(), None, holdout=(None, np.zeros(2), True))
    guard.set_model(model)
    guard.on_epoch_begin(0)  # stage 1's end
    for epoch in range(3):
        marker.assign(np.full(marker.shape, epoch, "float32"))
        guard.on_epoch_end(epoch, {"stage": 2})
    guard.on_train_end()
    assert guard.best_epoch == kept
    want = 0.0 if kept == -1 else float(kept)  # the stage-1 bias starts at 0
    np.testing.assert_array_equal(marker.numpy(), np.full(marker.shape, want))
    out = capsys.readouterr().out
    if kept == -1:
        assert "restored the weights of the end of stage 1" in out


def test_the_features_guard_and_validation_data_hold_nothing_out(capsys):
    data = make_data(48)
    for kwargs in ({"keep_best": "features"}, {"validation_data": data}):
        tltf.fine_tune(
            make_tiny_model(),
            data,
            head_epochs=1,
            fine_tune_epochs=1,
            unfreeze=1,
            verbose=1,
            **kwargs,
        )
        out = capsys.readouterr().out
        assert "held out" not in out and "handed" not in out
        assert "one pass over 48 train" in out


def test_holdout_where_it_cannot_apply_is_a_config_error(monkeypatch):
    x, y = make_data(48)
    # Not read into memory (tests/test_guard_tfdata.py has every reason).
    monkeypatch.setattr(tltf.guard, "HOLDOUT_READ_BYTES", 0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    lonely = (x[:7], np.array([0, 0, 0, 1, 1, 1, 2]))
    for data, words in ((dataset, "validation_data"), (lonely, "2 or more")):
        with pytest.raises(ConfigError, match="keep_best='holdout'") as error:
            tltf.fine_tune(make_tiny_model(), data, keep_best="holdout", verbose=0)
        assert words in str(error.value)
    # keep_best=True falls back to the features guard where the slice cannot
    # be held out.
    tltf.fine_tune(
        make_tiny_model(), lonely, head_epochs=1, fine_tune_epochs=1, verbose=0
    )


def test_a_bundle_from_an_image_folder_holds_its_slice_out_too(tmp_path, capsys):
    make_image_folder(tmp_path / "images", per_class=10)
    data = tltf.data.load_data(tmp_path / "images", image_size=16, batch_size=8, seed=0)
    assert data.validation is None and len(data.labels) == 30
    trained, held = holdout_rows(data.labels, seed=None)
    part = data.subset(held)
    assert part.num_train == 6 and part.counts.tolist() == [2, 2, 2]
    slice_labels = np.concatenate([y for _, y in part.unshuffled])
    np.testing.assert_array_equal(slice_labels, data.labels[held])
    model = make_tiny_model()
    tltf.fine_tune(
        model, data, head_epochs=1, fine_tune_epochs=1, unfreeze=1, verbose=1
    )
    out = capsys.readouterr().out
    assert "6 of 30 training images (a stratified slice) are held out" in out
    assert "one pass over 24 train" in out
    assert "handed the 6 held-out images back" in out
    assert "refit in closed form on all 30 training images" in out


class _Snapshots(keras.callbacks.Callback):
    """The model's variables after every epoch."""

    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(v.numpy()) for v in self.model.variables])


def _overfitting_head(cache, callbacks=(), **kwargs):
    """A run whose head overfits in stage 1 (4 epochs, then 2 of stage 2): the
    validation labels are the training rule shifted by one class, so the
    validation loss rises as the head learns. `(model, history dict)`."""
    x, y = make_data(48)
    xv, yv = make_data(24, seed=1)
    keras.utils.set_random_seed(0)
    model = make_tiny_model()
    history = tltf.fine_tune(
        model,
        (x, y),
        (xv, (yv + 1) % 3),
        head_epochs=4,
        head_init="random",  # the ridge start fits this data at once
        fine_tune_epochs=2,
        unfreeze=1,
        cache_features=cache,
        callbacks=list(callbacks),
        seed=0,
        **kwargs,
    )
    return model, history


@pytest.mark.parametrize("cache", [True, False])
def test_with_validation_data_the_run_ends_at_its_best_epoch_stage_1_included(
    cache, capsys
):
    """The best epoch of the overfitting head is an early stage-1 epoch, and the
    run ends with its weights, not with those stage 1 ended with; `history.kept`
    names it."""
    snapshots = _Snapshots()
    model, returned = _overfitting_head(cache, [snapshots], verbose=1)
    history = returned.history
    best = int(np.argmin(history["val_loss"]))
    assert history["stage"] == [1, 1, 1, 1, 2, 2]
    assert best < 3, history["val_loss"]  # the setup: not where stage 1 ended
    for got, want in zip(model.variables, snapshots.weights[best], strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    out = capsys.readouterr().out
    note = f"restored the weights of epoch {best + 1}, in stage 1"
    assert f"keep_best: {note}" in out
    kept = returned.kept
    assert (kept.epoch, kept.stage, kept.blocks) == (best + 1, 1, ())
    assert kept.note.startswith(note) and "val_loss" in kept.note


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, "auto"])
def test_a_run_resumed_after_its_stage_1_best_still_ends_at_that_epoch(cache, tmp_path):
    """The overfitting head, interrupted after its best stage-1 epoch and before
    stage 1 ends: the resumed run reads that epoch's weights from the backup
    folder and ends bit for bit where an uninterrupted run does."""
    reference, ref_history = _overfitting_head(
        cache, backup_dir=tmp_path / "reference", verbose=0
    )
    ref_history = ref_history.history
    assert int(np.argmin(ref_history["val_loss"])) < 2, ref_history["val_loss"]
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _overfitting_head(cache, [CrashAt(3)], backup_dir=backup, verbose=0)
    resumed, history = _overfitting_head(cache, backup_dir=backup, verbose=0)
    assert history.history == ref_history
    for got, want in zip(resumed.variables, reference.variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_kept_names_the_blocks_stage_2_had_trained_by_the_kept_epoch():
    """With gradual unfreezing, an early stage-2 epoch had trained fewer blocks
    than the run's end: `history.kept.blocks` are the kept epoch's."""
    from tltf.schedule import FineTuneSchedule, _kept

    model = make_tiny_model()
    top, below = [row["block"] for row in tltf.block_summary(model)][-1:-3:-1]
    schedule = FineTuneSchedule(unfreeze_at_epoch=2, unfreeze=2, gradual_every=1)
    schedule.set_model(model)
    history = keras.callbacks.History()
    history.history = {"loss": [1.0] * 5, "stage": [1, 1, 2, 2, 2]}

    class Guard:  # a guard that kept `epoch`
        def __init__(self, epoch):
            self.kept_epoch = epoch

        def describe(self):
            return f"kept epoch {self.kept_epoch}."

    def kept(epoch):
        return _kept(history, model, schedule, Guard(epoch), None, False)

    assert kept(3).blocks == (top,)
    assert kept(4).blocks == kept(5).blocks == (below, top)
    assert (kept(2).stage, kept(2).blocks) == (1, ())
    assert str(kept(3)) == f"epoch 3 (stage 2, blocks {top} fine-tuned): kept epoch 3."
    mixed = _kept(history, model, schedule, Guard(5), 0.5, False)
    assert "0.5 x stage 1's + 0.5 x these" in mixed.note
    assert _kept(history, model, schedule, Guard(5), 0.0, False).blocks == ()
    # No epoch ran (a closed-form head, no stage 2): epoch 0.
    history.history = {}
    none = _kept(history, model, schedule, None, None, False)
    assert (none.epoch, none.stage, none.blocks) == (0, 1, ())
    assert "no epoch ran" in none.note


class _Epoch(keras.callbacks.Callback):
    """Records the epoch running (`now`), for a scripted guard score."""

    now = None

    def on_epoch_begin(self, epoch, logs=None):
        _Epoch.now = epoch


def _scripted_slice(monkeypatch, accuracies):
    """The slice's accuracy at the end of each epoch, by 0-based epoch (stage
    1's end is scored at its last epoch's end)."""
    monkeypatch.setattr(
        KeepBest, "holdout_score", lambda self: (accuracies[_Epoch.now], 0.0)
    )


@pytest.mark.parametrize("cache", [True, False])
def test_fine_tune_patience_ends_stage_2_with_the_model_a_full_run_keeps(
    cache, tmp_path, monkeypatch, capsys
):
    """Stage 1 ends at epoch 2 (index 1); stage 2's first epoch is kept, the
    next ones are not. With patience 2 the run stops after 2 epochs that were
    not kept, with the weights and note of a run that trains all 6 stage-2
    epochs; a crash in between resumes to the same stop, and the finished
    backup is not trained again."""
    _scripted_slice(monkeypatch, [0.2, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75])
    x, y = make_data(48)

    def run(callbacks=(), **kwargs):
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(
            model,
            (x, y),
            head_epochs=2,
            fine_tune_epochs=6,
            unfreeze=1,
            cache_features=cache,
            callbacks=[_Epoch(), *callbacks],
            seed=0,
            verbose=1,
            **kwargs,
        )
        return model, history, capsys.readouterr().out

    full, history, out = run()
    assert history.history["stage"] == [1, 1, 2, 2, 2, 2, 2, 2]
    assert history.kept.epoch == 3 and "stopped" not in out
    short, history, out = run(fine_tune_patience=2)
    assert history.history["stage"] == [1, 1, 2, 2, 2]
    kept = history.kept
    assert (kept.epoch, kept.stage) == (3, 2)
    note = "restored the weights of epoch 3: accuracy on 9 held-out training images"
    stop = "Stage 2 stopped after epoch 5: 2 epochs in a row without a better score"
    assert note in out and stop in out
    assert kept.note.startswith(note) and stop in kept.note
    assert "handed the 9 held-out images back" in out
    for a, b in zip(short.variables, full.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run([CrashAt(4)], fine_tune_patience=2, backup_dir=backup)
    resumed, again, out = run(fine_tune_patience=2, backup_dir=backup)
    assert again.history["stage"] == [1, 1, 2, 2, 2]
    assert again.history["loss"] == history.history["loss"]
    assert stop in out
    for a, b in zip(resumed.variables, short.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    _, finished, out = run(fine_tune_patience=2, backup_dir=backup)
    assert "holds a finished run" in out
    assert finished.history["stage"] == [1, 1, 2, 2, 2] and finished.kept.epoch == 3


def test_patience_counts_stage_2_epochs_that_were_scored():
    """With validation data the best epoch may be in stage 1; stage 2 still gets
    its `patience` epochs. An epoch without a validation score
    (`validation_freq`) does not count, and the run's last epoch is no stop."""

    class Plan:
        unfreeze_at_epoch = 2

        def plan(self, epoch):
            return (1 if epoch < 2 else 2), []

    def guard_after(val_losses, epochs=10):
        guard = KeepBest(Plan(), True, patience=2, verbose=False)
        guard.set_model(make_tiny_model())
        guard.set_params({"epochs": epochs})
        guard.model.stop_training = False
        for epoch, loss in enumerate(val_losses):
            logs = {"stage": Plan().plan(epoch)[0], "loss": 1.0}
            if loss is not None:
                logs["val_loss"] = loss
            guard.on_epoch_end(epoch, logs)
            if guard.model.stop_training:
                return epoch
        return None

    # The best is stage 1's first epoch: stage 2 stops after its second.
    assert guard_after([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 3
    # Unscored epochs (None) do not count; the kept epoch 3 restarts it.
    assert guard_after([0.9, 0.8, 0.7, None, 0.1, None, 0.2, 0.3, 0.4]) == 7
    # Two stage-2 epochs without a better score, but the second is the last.
    assert guard_after([0.1, 0.2, 0.3, 0.4], epochs=4) is None
    # A stop says so.
    guard = KeepBest(Plan(), True, patience=1, verbose=False)
    guard.set_model(make_tiny_model())
    guard.set_params({"epochs": 10})
    for epoch, loss in enumerate([0.5, 0.4, 0.3, 0.35]):
        guard.on_epoch_end(epoch, {"stage": 1 + (epoch >= 2), "val_loss": loss})
    assert guard.model.stop_training and guard.stopped_epoch == 3
    assert guard.describe() == (
        "restored the weights of epoch 3: val_loss 0.3 against 0.35 at the last "
        "epoch (4). Stage 2 stopped after epoch 4: 1 epoch in a row without a "
        "better score (fine_tune_patience=1)."
    )


def test_a_resumed_guard_reads_validation_logs_of_the_epochs_that_validated():
    """With `validation_freq=2`, Keras logs `val_loss` on epochs 2 and 4 only (of
    5): a resumed guard lays them on those epochs, for stage 1's end (epoch 2)
    and for the stage-2 epochs `patience` counts (epoch 4)."""

    class Plan:
        unfreeze_at_epoch = 2

        def plan(self, epoch):
            return (1 if epoch < 2 else 2), []

    history = {
        "stage": [1, 1, 2, 2, 2],
        "loss": [0.9, 0.8, 0.7, 0.6, 0.5],
        "val_loss": [0.3, 0.4],  # epochs 2 and 4 (1-based)
    }
    guard = KeepBest(Plan(), True, patience=2, validation_freq=2, verbose=False)
    guard.resume_from(history)
    assert guard._stage_one_logs == {"stage": 1, "loss": 0.8, "val_loss": 0.3}
    assert guard._scored_epochs == [3]
    # A list names the validated epochs (1-based), as Keras takes it.
    listed = KeepBest(Plan(), True, validation_freq=[2, 5], verbose=False)
    logs = listed._epoch_logs(history, 5)
    assert [log.get("val_loss") for log in logs] == [None, 0.3, None, None, 0.4]


def test_fine_tune_patience_needs_the_guard():
    with pytest.raises(ConfigError, match="keep_best is False"):
        tltf.FineTuneSettings(fine_tune_patience=2, keep_best=False)
    for bad in (0, 2.5, "3", True):
        with pytest.raises(ConfigError, match="fine_tune_patience as an int >= 1"):
            tltf.FineTuneSettings(fine_tune_patience=bad)
    assert tltf.FineTuneSettings(fine_tune_patience=None).fine_tune_patience is None
    assert tltf.FineTuneSettings(fine_tune_patience=2).fine_tune_patience == 2
