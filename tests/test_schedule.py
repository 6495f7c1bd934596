"""The two-stage schedule: what trains, what stays bitwise frozen, callbacks."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests.helpers import (
    CrashAt,
    PoisonAt,
    Recorder,
    block_variables,
    changed_keys,
    make_data,
    make_tiny_model,
    weights_snapshot,
)
from tltf.errors import ConfigError, DataError
from tltf.model import model_info


def test_stage1_leaves_base_bitwise_unchanged(data):
    model = make_tiny_model()
    info = model_info(model)
    base_before, head_before = (
        weights_snapshot(info.base),
        weights_snapshot(model.get_layer("head_output")),
    )
    tltf.fine_tune(model, data, head_epochs=2, fine_tune_epochs=0, verbose=0)
    assert not changed_keys(base_before, weights_snapshot(info.base))
    assert changed_keys(head_before, weights_snapshot(model.get_layer("head_output")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "unfreeze, trained, frozen",
    [
        (2, ["block3", "block4"], ["block1", "block2"]),
        # A range: the two bottom blocks train, the top ones stay frozen.
        ({"range": [0, 1]}, ["block1", "block2"], ["block3", "block4"]),
    ],
)
def test_stage2_trains_unfrozen_blocks_only_and_bn_stats_stay(
    data, unfreeze, trained, frozen
):
    model = make_tiny_model()
    info = model_info(model)
    before = weights_snapshot(info.base)
    history = tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=2,
        fine_tune_lr=1e-3,
        unfreeze=unfreeze,
        keep_best=False,  # the guard may put stage 1's weights back
        verbose=0,
    )
    assert history.history["stage"] == [1, 2, 2]
    changed = changed_keys(before, weights_snapshot(info.base))
    for block in trained:
        kernels = {
            k for k in block_variables(info, block, before) if k.endswith("kernel")
        }
        assert kernels and kernels <= changed, block
    for block in frozen:
        assert not (block_variables(info, block, before) & changed), block
    # bn="frozen": moving statistics, gamma and beta are bitwise unchanged everywhere.
    bn_vars = {k for k in before if "_bn/" in k}
    assert bn_vars and not (bn_vars & changed)
    assert tltf.trainable_blocks(model) == trained


@pytest.mark.slow
@pytest.mark.parametrize("bn", ["affine", "train"])
def test_bn_policies(data, bn):
    model = make_tiny_model()
    info = model_info(model)
    before = weights_snapshot(info.base)
    tltf.fine_tune(
        model,
        data,
        head_epochs=0,
        fine_tune_epochs=2,
        fine_tune_lr=1e-2,
        unfreeze=1,
        bn=bn,
        keep_best=False,
        verbose=0,
    )
    changed = changed_keys(before, weights_snapshot(info.base))
    stats = {k for k in before if k.startswith("block4_bn") and "moving" in k}
    affine = {
        k
        for k in before
        if k.startswith("block4_bn") and k.rsplit("/", 1)[-1] in ("gamma", "beta")
    }
    assert len(stats) == 2 and len(affine) == 2
    assert affine <= changed
    if bn == "affine":
        assert not (stats & changed)
    else:
        assert stats <= changed
    lower_bn = {k for k in before if "_bn/" in k and not k.startswith("block4")}
    assert not (lower_bn & changed)


@pytest.mark.slow
def test_callbacks_see_both_stages_with_continuous_epochs(data, tmp_path):
    model = make_tiny_model()
    recorder = Recorder()
    log = tmp_path / "log.csv"
    history = tltf.fine_tune(
        model,
        data,
        data,
        head_epochs=2,
        fine_tune_epochs=3,
        unfreeze=1,
        callbacks=[recorder, keras.callbacks.CSVLogger(str(log))],
        verbose=0,
    )
    assert recorder.train_begins == 1
    assert recorder.begins == [0, 1, 2, 3, 4]
    assert [stage for _, stage in recorder.ends] == [1, 1, 2, 2, 2]
    assert history.history["stage"] == [1, 1, 2, 2, 2]
    assert len(history.history["val_loss"]) == 5
    rows = list(csv.DictReader(log.open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [float(r["stage"]) for r in rows] == [1, 1, 2, 2, 2]
    assert recorder.trainable == [[], [], ["block4"], ["block4"], ["block4"]]


class _LogsScore(keras.callbacks.Callback):
    """Adds an entry of its own to each epoch's logs, as a user's callback that
    computes, say, a validation F1 does."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = float(epoch)


@pytest.mark.parametrize("cache", [True, False])
def test_what_a_callback_adds_to_the_logs_reaches_the_later_ones_and_the_history(
    data, cache, tmp_path
):
    """As in Keras's own fit: an entry a user's callback logs is in the
    history (with the stage-1 feature cache too) and in the backup's, and a
    callback after it may monitor it (no ConfigError before training: nothing
    compiled logs it)."""

    def run(stop):
        return tltf.fine_tune(
            make_tiny_model(),
            data,
            data,
            head_epochs=2,
            fine_tune_epochs=2,
            callbacks=[_LogsScore(), stop],
            cache_features=cache,
            backup_dir=tmp_path / "backup",
            verbose=0,
        )

    stop = keras.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=0)
    history = run(stop)
    assert history.history["val_score"] == [0.0, 1.0, 2.0, 3.0]
    assert history.history["stage"] == [1, 1, 2, 2]
    assert stop.best == 3.0 and stop.stopped_epoch == 0  # it watched, never stopped
    # The finished run, called again, returns the history its backup recorded.
    again = run(keras.callbacks.EarlyStopping(monitor="val_score", mode="max"))
    assert again.history["val_score"] == [0.0, 1.0, 2.0, 3.0]


def test_a_monitor_nothing_logs_by_the_end_of_epoch_1_is_a_config_error(data):
    """With a user's callback before it, a monitor is checked against the first
    epoch's logs instead of before training, and the error names what was
    logged; after it (or with no such callback), before training."""
    stop = keras.callbacks.EarlyStopping(monitor="val_scor", mode="max")
    recorder = Recorder()
    with pytest.raises(ConfigError) as info:
        tltf.fine_tune(
            make_tiny_model(),
            data,
            data,
            head_epochs=2,
            fine_tune_epochs=1,
            callbacks=[_LogsScore(), recorder, stop],
            verbose=0,
        )
    message = str(info.value)
    for words in ("'val_scor'", "end of the first epoch", "'val_score'", "before"):
        assert words in message, message
    assert recorder.begins == [0]  # raised at the end of epoch 0
    recorder = Recorder()
    with pytest.raises(ConfigError, match="does not log"):
        tltf.fine_tune(
            make_tiny_model(),
            data,
            data,
            callbacks=[stop, _LogsScore(), recorder],
            verbose=0,
        )
    assert recorder.begins == []


def _stages_with(stopping, **kwargs) -> list[int]:
    """The stages of a fine_tune run on a tiny model with one EarlyStopping."""
    history = tltf.fine_tune(
        make_tiny_model(),
        make_data(48),
        keep_best=False,
        callbacks=[stopping],
        **kwargs,
    )
    return history.history["stage"]


def _never_improving():
    """An EarlyStopping that stops at the second epoch it watches: with this
    min_delta no later epoch improves (a margin, not the loss, decides)."""
    return keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)


@pytest.mark.parametrize("augment", [False, True])  # cached stage 1, full passes
def test_early_stopping_watches_stage_2_when_stage_1_sizes_itself(augment, capsys):
    """An EarlyStopping left at start_from_epoch=0 would spend its patience in
    stage 1 ("auto": the head trains until its loss converges) and end the run
    before stage 2. tltf starts it at stage 2's first epoch, says so, and sets
    it back when fine_tune ends."""
    stopping = _never_improving()
    stages = _stages_with(stopping, fine_tune_epochs=5, unfreeze=1, augment=augment)
    assert stages.count(1) > 2 and stages.count(2) == 2, stages
    assert "EarlyStopping watches stage 2 only" in capsys.readouterr().out
    assert stopping.start_from_epoch == 0


def test_early_stopping_is_left_alone_with_head_epochs_or_without_stage_2():
    stopping = _never_improving()
    # A number of head epochs: the user's choice, patience 1 in stage 1.
    assert _stages_with(stopping, head_epochs=4, fine_tune_epochs=5, verbose=0) == [
        1,
        1,
    ]
    # Without stage 2 it watches stage 1, the only one.
    assert _stages_with(stopping, fine_tune_epochs=0, verbose=0) == [1, 1]


@pytest.mark.parametrize("head_epochs", [3, "auto"])
def test_reduce_lr_on_plateau_starts_afresh_at_stage_2(head_epochs):
    """Stage 2's fresh optimizer is not cut for stage 1's plateau: with no epoch
    ever improving (min_delta), patience 3 spent 2 epochs in stage 1, so the
    rate would fall at stage 2's first epoch if the counters carried over."""
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", min_delta=1e9, patience=3, factor=0.5
    )
    rates = []
    after_each_epoch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: rates.append(
            float(plateau.model.optimizer.learning_rate.numpy())
        )
    )
    history = tltf.fine_tune(
        make_tiny_model(),
        make_data(48),
        head_epochs=head_epochs,
        fine_tune_epochs=3,
        fine_tune_lr=1e-4,
        unfreeze=1,
        keep_best=False,
        callbacks=[plateau, after_each_epoch],
        verbose=0,
    )
    stages = history.history["stage"]
    assert stages.count(1) >= 2 and stages.count(2) == 3, stages
    assert rates[-3:] == pytest.approx([1e-4] * 3)


@pytest.mark.slow
def test_callback_form_matches_fine_tune_form(data):
    ds = tf.data.Dataset.from_tensor_slices(data).batch(16)
    # The plain callback form has no guard and no feature standardization.
    keras.utils.set_random_seed(1)
    a = make_tiny_model(head={"standardize": False})
    tltf.fine_tune(
        a,
        ds,
        head_epochs=2,
        fine_tune_epochs=2,
        unfreeze=2,
        fine_tune_lr=1e-4,
        cache_features=False,
        keep_best=False,
        verbose=0,
    )
    keras.utils.set_random_seed(1)
    b = make_tiny_model(head={"standardize": False})
    b.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    b.fit(
        ds,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[
            tltf.FineTuneSchedule(
                unfreeze_at_epoch=2, unfreeze=2, fine_tune_lr=1e-4, verbose=0
            )
        ],
    )
    assert tltf.trainable_blocks(a) == tltf.trainable_blocks(b) == ["block3", "block4"]
    for layer in ("tiny", "head_output"):
        wa = weights_snapshot(a.get_layer(layer))
        wb = weights_snapshot(b.get_layer(layer))
        assert wa.keys() == wb.keys()
        for key in wa:
            np.testing.assert_allclose(
                wa[key], wb[key], rtol=1e-4, atol=1e-5, err_msg=key
            )


def _mean_update(before, after, info, block):
    keys = [k for k in block_variables(info, block, before) if k.endswith("kernel")]
    return float(np.mean([np.abs(after[k] - before[k]).mean() for k in keys]))


@pytest.mark.slow
@pytest.mark.parametrize("decay", [None, 0.1])
def test_discriminative_lr_moves_lower_blocks_less(data, decay):
    model = make_tiny_model()
    info = model_info(model)
    before = weights_snapshot(info.base)
    tltf.fine_tune(
        model,
        data,
        head_epochs=0,
        fine_tune_epochs=2,
        fine_tune_lr=1e-3,
        unfreeze="all",
        lr_decay=decay,
        keep_best=False,
        verbose=0,
    )
    after = weights_snapshot(info.base)
    moves = [
        _mean_update(before, after, info, b)
        for b in ("block1", "block2", "block3", "block4")
    ]
    ratio = moves[0] / moves[3]
    if decay is None:
        assert ratio > 0.2, moves
    else:
        # Rates are 1e-3 (block4), 1e-4, 1e-5, 1e-6 (block1): Adam steps scale with them.
        assert ratio < 0.01, moves
        assert moves[0] < moves[1] < moves[2] < moves[3], moves


@pytest.mark.slow
def test_gradual_unfreezing_adds_one_block_per_period(data):
    model = make_tiny_model()
    recorder = Recorder()
    tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=4,
        unfreeze=3,
        gradual_every=1,
        callbacks=[recorder],
        keep_best=False,  # stage 2 runs however well stage 1 did
        verbose=0,
    )
    assert recorder.trainable == [
        [],
        ["block4"],
        ["block3", "block4"],
        ["block2", "block3", "block4"],
        ["block2", "block3", "block4"],
    ]


@pytest.mark.slow
def test_unfreeze_on_compiled_model_recompiles(data):
    model = make_tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(*data, epochs=1, verbose=0)
    info = model_info(model)
    before = weights_snapshot(info.base)
    tltf.unfreeze(model, blocks=1)
    model.fit(*data, epochs=1, verbose=0)
    changed = changed_keys(before, weights_snapshot(info.base))
    assert "block4_conv/kernel" in changed
    assert "block1_conv/kernel" not in changed
    tltf.freeze(model)
    frozen = weights_snapshot(info.base)
    model.fit(*data, epochs=1, verbose=0)
    assert not changed_keys(frozen, weights_snapshot(info.base))


@pytest.mark.slow
def test_resume_with_backup_and_restore_lands_in_stage2(data, tmp_path, capsys):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = make_tiny_model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tltf.fine_tune(
            model,
            data,
            head_epochs=2,
            fine_tune_epochs=3,
            unfreeze=2,
            callbacks=[backup, CrashAt(3)],
            keep_best=False,  # stage 2 runs however well stage 1 did
            verbose=1,
        )
    # One line points to backup_dir, which restores stage 2's optimizer too.
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "backup_dir=" in notes[0], notes
    saved = weights_snapshot(model_info(model).base)
    fresh = make_tiny_model()
    recorder = Recorder()
    # The note's claim: Keras restores the epoch and the weights, and says that
    # it could not restore stage 2's optimizer.
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        history = tltf.fine_tune(
            fresh,
            data,
            head_epochs=2,
            fine_tune_epochs=3,
            unfreeze=2,
            callbacks=[
                keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                recorder,
            ],
            keep_best=False,
            verbose=0,
        )
    assert recorder.begins == [3, 4]
    assert recorder.trainable[0] == ["block3", "block4"]
    assert history.history["stage"] == [2, 2]
    restored_block1 = {
        k: v
        for k, v in weights_snapshot(model_info(fresh).base).items()
        if "block1" in k
    }
    for k, v in restored_block1.items():
        np.testing.assert_array_equal(v, saved[k])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head_lr": -1e-3}, "head_lr to be a positive number"),
        ({"fine_tune_lr": "fast"}, "fine_tune_lr to be a positive number"),
        ({"unfreeze": 99}, r"Expected unfreeze blocks in \[0, 4\].*blocks=99"),
        ({"unfreeze": {"layers": 50}}, r"unfreeze layers in \[0, 8\]"),
        ({"unfreeze": {"names": "nothing"}}, "No block name matches"),
        ({"bn": "sometimes"}, "Expected bn in"),
        ({"head_epochs": -1}, "head_epochs to be an integer"),
        ({"lr_decay": 2.0}, r"lr_decay in \(0, 1\]"),
        ({"optimizer": "adamm"}, "Unknown optimizer 'adamm'"),
    ],
)
def test_bad_arguments_fail_before_training(data, kwargs, match):
    model = make_tiny_model()
    with pytest.raises(ConfigError, match=match):
        tltf.fine_tune(model, data, verbose=0, **kwargs)


def test_bad_data_gives_clear_errors():
    model = make_tiny_model()
    x, y = make_data()
    with pytest.raises(DataError, match=r"labels outside \[0, 3\)"):
        tltf.fine_tune(model, (x, y + 5), verbose=0)
    with pytest.raises(DataError, match="empty"):
        tltf.fine_tune(model, (x[:0], y[:0]), verbose=0)
    with pytest.raises(DataError, match="3 labels"):
        tltf.fine_tune(model, (x[:4], y[:3]), verbose=0)
    dicts = tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
    with pytest.raises(DataError, match=r"\(image, label\) pairs"):
        tltf.fine_tune(model, dicts, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_backup(data, tmp_path, cache):
    from tltf.errors import TrainingError

    callbacks = [PoisonAt(1)]
    if not cache:
        callbacks.append(keras.callbacks.BackupAndRestore(str(tmp_path / "b")))
    with pytest.raises(
        TrainingError, match=r"stage 1, epoch 2.*learning rate 0.001.*head_lr"
    ):
        tltf.fine_tune(
            make_tiny_model(),
            data,
            head_epochs=2,
            fine_tune_epochs=1,
            cache_features=cache,
            callbacks=callbacks,
            verbose=0,
        )
    if not cache:
        assert list((tmp_path / "b").iterdir())  # the epoch-1 backup survives


@pytest.mark.slow
@pytest.mark.parametrize("cache_features", ["auto", False])
def test_progress_counts_each_stages_epochs_to_that_stages_last(
    data, capsys, cache_features
):
    """Keras's bar counted every epoch to the run's last: stage 1 read `Epoch
    1/5` under a stage line that says "(to 2)"."""
    tltf.fine_tune(
        make_tiny_model(),
        data,
        data,
        head_epochs=2,
        fine_tune_epochs=3,
        keep_best=False,
        cache_features=cache_features,
        verbose=2,
    )
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("Epoch ")] == [
        "Epoch 1/2",
        "Epoch 2/2",
        "Epoch 3/5",
        "Epoch 4/5",
        "Epoch 5/5",
    ]
    assert any(line.startswith("tltf: stage 1 from epoch 1 (to 2)") for line in out)


@pytest.mark.slow
def test_a_stage_one_ended_by_convergence_counts_to_its_most_epochs(capsys):
    x, y = make_data(96)
    tltf.fine_tune(make_tiny_model(), (x, y), (x, y), keep_best=False, verbose=2)
    out = capsys.readouterr().out.splitlines()
    start = next(line for line in out if line.startswith("tltf: stage 1 from epoch"))
    most = int(start.split("(to ")[1].split(")")[0])
    epochs = [line.split()[1].split("/") for line in out if line.startswith("Epoch ")]
    stage_two = next(line for line in out if line.startswith("tltf: stage 2 from"))
    last = int(stage_two.split("(to ")[1].split(")")[0])
    first = int(stage_two.split()[5])
    assert first - 1 < most  # stage 1 converged before its most epochs
    assert epochs == [[str(e), str(most)] for e in range(1, first)] + [
        [str(e), str(last)] for e in range(first, last + 1)
    ]


@pytest.mark.slow
def test_verbose_zero_prints_nothing_and_default_prints_one_line_per_stage(
    data, capsys
):
    tltf.fine_tune(
        make_tiny_model(), data, data, head_epochs=1, fine_tune_epochs=1, verbose=0
    )
    assert capsys.readouterr().out == ""
    tltf.fine_tune(
        make_tiny_model(), data, data, head_epochs=1, fine_tune_epochs=1, verbose=2
    )
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("tltf:")
    ]
    stages = [line.split()[2] for line in lines if line.startswith("tltf: stage ")]
    assert stages == ["1", "2"]
    # unfreeze="auto" says what the probe chose, keep_best what it kept.
    assert any(line.startswith("tltf: unfreeze='auto' -> ") for line in lines)
    assert any(line.startswith("tltf: keep_best: ") for line in lines)
