"""The stage-1 feature cache: same head, same callbacks, same History."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests import processes
from tests.helpers import (
    Recorder,
    block_variables,
    changed_keys,
    check_error,
    make_data,
    make_tiny_model,
    raises,
    weights_snapshot,
)
from tltf.cache import FeatureCache, FrozenSplit, feature_model, head_model
from tltf.errors import DataError


def _model():
    keras.utils.set_random_seed(3)
    return make_tiny_model(head={"dropout": 0.0})


def test_head_and_feature_models_compose_to_the_model(data):
    model = _model()
    x = data[0][:5]
    np.testing.assert_allclose(
        head_model(model)(feature_model(model)(x)), model(x), rtol=1e-5, atol=1e-6
    )
    cache = FeatureCache(model, tf.data.Dataset.from_tensor_slices(data).batch(16))
    # The head pools every block (8 + 8 + 16 + 16 channels: HeadConfig.pool_from)
    # and reads the raw pixels (16 px pooled to 8 x 8, RGB: HeadConfig.pixels).
    assert cache.count == 64 and cache.features.shape == (64, 48 + 192)


def test_frozen_splits_compose_to_the_model_and_share_its_layers(data):
    # The one split that the stage-1 cache, the LR finder and the tuner's
    # cached stage 2 train through.
    model = make_tiny_model(head={"dropout": 0.0, "pool_from": "top", "pixels": 0})
    x = data[0][:5]
    for k in (0, 1, 2):
        split = FrozenSplit(model, k)
        np.testing.assert_allclose(
            split.trainable(split.features(x, 2)), model(x), rtol=1e-5, atol=1e-6
        )
        assert split.features(x, 2).shape == (5, *split.cut_shape)
        mine = {id(w) for w in model.weights}
        assert {id(w) for w in split.trainable.weights} <= mine
    # The trainable side holds the top k blocks: more weights for larger k.
    assert len(FrozenSplit(model, 2).trainable.weights) > len(
        FrozenSplit(model, 1).trainable.weights
    )
    with pytest.raises(ValueError, match="nothing frozen"):
        FrozenSplit(model, len(tltf.model_info(model).block_map))


@pytest.mark.parametrize(
    "head, frozen_at_k1",
    [
        ({}, 4),  # the 3 lower blocks' pooled features, the pixels
        ({"pixels": 0}, 3),
        ({"pool_from": "top"}, 1),  # the pixels alone
        ({"pooling": "avgmax"}, 7),  # an average and a max of each lower block
    ],
    ids=["every-block-and-pixels", "every-block", "top-and-pixels", "avgmax"],
)
def test_splits_of_heads_that_read_the_frozen_blocks_compose_to_the_model(
    data, head, frozen_at_k1
):
    """A head that reads several blocks or the raw pixels is cut at its pooling:
    the frozen part also gives the pooled features the top blocks cannot change."""
    model = make_tiny_model(head={"dropout": 0.0, **head})
    x = data[0][:5]
    for k in (1, 2, 3):
        split = FrozenSplit(model, k)
        features = split.features(x, 2)
        assert isinstance(features, tuple) and len(features) == len(split.shapes) > 1
        assert [f.shape[1:] for f in features] == list(split.shapes)
        assert split.shapes[0] == split.cut_shape
        np.testing.assert_allclose(
            split.trainable(list(features)), model(x), rtol=1e-5, atol=1e-6
        )
        mine = {id(w) for w in model.weights}
        assert {id(w) for w in split.trainable.weights} <= mine
    # Each block's pooled features sit on one side of the cut.
    assert len(FrozenSplit(model, 1).shapes) == 1 + frozen_at_k1
    # The frozen part runs the blocks below the cut, once, and none above it.
    layers = [layer.name for layer in FrozenSplit(model, 1).extractor._flatten_layers()]
    assert layers.count("block3_conv") == 1 and "block4_conv" not in layers


@pytest.mark.slow
def test_cached_and_uncached_heads_agree(data):
    heads = []
    for cache in (False, True):
        model = _model()
        tltf.fine_tune(
            model,
            data,
            data,
            head_epochs=3,
            fine_tune_epochs=0,
            seed=7,
            cache_features=cache,
            verbose=0,
        )
        heads.append([w.numpy() for w in model.get_layer("head_output").weights])
    for plain, cached in zip(*heads, strict=True):
        np.testing.assert_allclose(plain, cached, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_callbacks_and_history_are_the_same_with_the_cache(data, tmp_path):
    runs = []
    for cache in (False, True):
        model = _model()
        recorder = Recorder()
        checkpoint = tmp_path / f"best-{cache}.keras"
        history = tltf.fine_tune(
            model,
            data,
            data,
            head_epochs=2,
            fine_tune_epochs=2,
            unfreeze=1,
            seed=1,
            cache_features=cache,
            verbose=0,
            callbacks=[recorder, keras.callbacks.ModelCheckpoint(str(checkpoint))],
        )
        runs.append((recorder, history))
        saved = tltf.load_model(checkpoint)
        assert saved.input_shape == (None, 16, 16, 3)  # the full model, not the head
    (plain, plain_history), (cached, cached_history) = runs
    assert cached.train_begins == plain.train_begins == 1
    assert cached.begins == plain.begins == [0, 1, 2, 3]
    assert cached.trainable == plain.trainable
    assert [s for _, s in cached.ends] == [s for _, s in plain.ends] == [1, 1, 2, 2]
    assert set(cached_history.history) == set(plain_history.history)
    assert cached_history.history["stage"] == [1, 1, 2, 2]
    # The same History values, types included (ints, not Keras's floats).
    assert list(map(type, cached_history.history["stage"])) == [int] * 4
    assert list(map(type, plain_history.history["stage"])) == [int] * 4


def test_early_stopping_in_stage1_ends_the_run_as_without_cache(data):
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    recorder = Recorder()
    history = tltf.fine_tune(
        _model(),
        data,
        head_epochs=3,
        fine_tune_epochs=2,
        cache_features=True,
        callbacks=[stopper, recorder],
        verbose=0,
    )
    assert recorder.begins == [0, 1]
    assert history.history["stage"] == [1, 1]


def test_auto_falls_back_with_backup_and_restore(data, tmp_path, capsys):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "b"))
    tltf.fine_tune(
        _model(), data, head_epochs=1, fine_tune_epochs=0, callbacks=[backup], verbose=2
    )
    assert "full forward passes" in capsys.readouterr().out


def test_large_feature_sets_go_to_disk(data, tmp_path, monkeypatch):
    import tltf.cache

    model = _model()
    ds = tf.data.Dataset.from_tensor_slices(data).batch(16)
    in_memory = FeatureCache(model, ds)
    # The limit at two batches' features: the third batch starts the file.
    limit = 2 * 16 * in_memory.features.shape[1] * in_memory.features.itemsize
    monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", limit)
    on_file = []  # the file's size when each batch comes
    add = tltf.cache._Spill.add

    def watching(self, part):
        on_file.append(os.fstat(self.file.fileno()).st_size if self.file else 0)
        return add(self, part)

    monkeypatch.setattr(tltf.cache._Spill, "add", watching)
    on_disk = FeatureCache(model, ds, directory=tmp_path)
    assert isinstance(on_disk.features, np.memmap) and on_disk.paths
    assert on_disk.disk_bytes == 4 * limit // 2
    # Written while the pass ran, batch by batch, not after it: the pass held
    # at most the limit (and one batch) in memory.
    assert on_file == [0, 0, 0, 3 * limit // 2]
    # Nameless in its folder from the start, so that no end of the process
    # (a SIGKILL included) leaves it behind.
    assert not list(tmp_path.glob("features-*"))
    np.testing.assert_array_equal(np.asarray(on_disk.features), in_memory.features)
    batch = next(iter(on_disk.dataset(16, shuffle=False)))
    assert batch[0].shape == (16, 48 + 192)
    # Read a batch at a time: the same batches as from memory, shuffled or not,
    # and the file never handed to TensorFlow whole.
    slices = tf.data.Dataset.from_tensor_slices

    def no_memmap(tensors):
        assert not any(isinstance(t, np.memmap) for t in tf.nest.flatten(tensors))
        return slices(tensors)

    with monkeypatch.context() as patch:
        patch.setattr(tf.data.Dataset, "from_tensor_slices", no_memmap)
        read = {s: list(on_disk.dataset(24, s, seed=3)) for s in (False, True)}
    for shuffle, batches in read.items():
        expected = list(in_memory.dataset(24, shuffle, seed=3))
        assert len(batches) == len(expected) == 3
        for got, want in zip(batches, expected, strict=True):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
    on_disk.close()
    assert not list(tmp_path.glob("features-*"))


@pytest.mark.slow
def test_a_run_whose_features_are_all_on_disk_trains_the_same_model(
    tmp_path, monkeypatch
):
    """With the memory limit at 0, every feature cache of a default run (the
    training and validation features, read by `stream` and by `dataset`) is
    a file; the run ends with the weights and History of the run in memory,
    and leaves no file behind."""
    import tltf.cache

    train, val = make_data(64), make_data(24, seed=1)

    def run():
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(model, train, val, seed=0, verbose=0)
        return model.get_weights(), history.history

    in_memory = run()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", 0)
    files = []
    spill = tltf.cache._Spill.finish

    def finish(self):
        files.append(self.path)
        return spill(self)

    monkeypatch.setattr(tltf.cache._Spill, "finish", finish)
    weights, history = run()
    assert len(files) >= 2 and all(path is not None for path in files)
    assert history == in_memory[1]
    for got, want in zip(weights, in_memory[0], strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("setting", ["held-out-slice", "validation"])
def test_stage_two_reads_frozen_output_over_the_limit_from_disk(
    data, setting, tmp_path, monkeypatch, capsys
):
    """Without a GPU or TPU, the frozen blocks' output over the memory limit
    goes to a file that stage 1, stage 2, the guard's slice and the hand-back
    read a batch at a time: the run ends with the weights and History of the
    run in memory and leaves no file. With an accelerator, or without room on
    disk, stage 2 runs full passes, as before."""
    import shutil

    import tltf.cache

    x, y = data
    y = np.random.default_rng(1).permutation(y)  # the guard keeps stage 2 going
    validation = (x[:16], y[:16]) if setting == "validation" else None
    kwargs = {"head_epochs": 2, "fine_tune_epochs": 2, "unfreeze": 2, "seed": 3}

    def run():
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(model, (x, y), validation, verbose=1, **kwargs)
        return model.get_weights(), history.history, capsys.readouterr().out

    in_memory = run()
    assert "read back from" not in in_memory[2]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr(tltf.cache, "has_accelerator", lambda: False)
    spilled, joined = [], []
    finish, getitem = tltf.cache._Spill.finish, tltf.cache.Joined.__getitem__

    def spy_finish(self):
        spilled.append(len(self.row_shape))
        return finish(self)

    def spy_getitem(self, rows):
        joined.append({type(a) for a in self.arrays})
        return getitem(self, rows)

    monkeypatch.setattr(tltf.cache._Spill, "finish", spy_finish)
    monkeypatch.setattr(tltf.cache.Joined, "__getitem__", spy_getitem)
    weights, history, printed = run()
    assert "run once, in stage 1's pass" in printed
    assert f"is read back from {tmp_path}" in printed
    assert 3 in spilled  # a frozen block's output: (height, width, channels) a row
    if setting == "held-out-slice":  # the hand-back: memory maps, not a copy
        assert "handed the 12 held-out images back" in printed
        assert joined and all(kinds == {np.memmap} for kinds in joined)
    assert history == in_memory[1]
    for got, want in zip(weights, in_memory[0], strict=True):
        np.testing.assert_array_equal(got, want)
    # Where files keep their names (Windows), `close` deleted them; on POSIX
    # they never had one (test_a_killed_run_leaves_no_features_on_disk).
    assert list(tmp_path.glob("features-*")) == []
    if setting == "validation":
        return  # the choice below does not depend on the data

    class Full:  # a disk with 1 KiB free
        free = 1024

    for accelerator, usage in ((True, shutil.disk_usage), (False, lambda _: Full)):
        monkeypatch.setattr(tltf.cache, "has_accelerator", lambda a=accelerator: a)
        monkeypatch.setattr(shutil, "disk_usage", usage)
        assert "run once" not in run()[2]


#: A run whose stage 2 reads the frozen blocks' output from disk, held at the
#: start of stage 2 until it is killed.
_HELD_IN_STAGE_2 = """
import time
import keras
import tltf, tltf.cache
from tests.helpers import make_data, make_tiny_model

class Hold(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            print("in stage 2", flush=True)
            time.sleep(300)

tltf.cache.MEMORY_LIMIT_BYTES = 0
tltf.cache.has_accelerator = lambda: False
tltf.fine_tune(make_tiny_model(), make_data(), head_epochs=2, fine_tune_epochs=2,
               unfreeze=2, keep_best=False, callbacks=[Hold()], verbose=0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_a_killed_run_leaves_no_features_on_disk(tmp_path):
    """Features on disk have no name in their folder while the run reads them,
    so a SIGKILL, which runs no cleanup, leaves no file behind."""
    child = processes.python(
        [sys.executable, "-c", _HELD_IN_STAGE_2],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "-1"},
    )
    try:
        child.wait_for("in stage 2", timeout=120)
        # The child maps its features from files in tmp_path that have no
        # name there any more.
        maps = Path(f"/proc/{child.pid}/maps").read_text().splitlines()
        mapped = [line for line in maps if "features-" in line]
        assert mapped and all(str(tmp_path) in line for line in mapped)
        assert all(line.endswith("(deleted)") for line in mapped)
        assert not list(tmp_path.glob("features-*"))
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not list(tmp_path.glob("features-*"))


def test_a_pass_that_fails_deletes_its_file_and_a_full_disk_is_named(
    data, tmp_path, monkeypatch
):
    import tltf.cache

    model = _model()
    ds = tf.data.Dataset.from_tensor_slices(data).batch(16)
    monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", 0)
    extract = tltf.cache.feature_extractor(model)
    calls = []

    def failing(images):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("a bad batch")
        return extract(images)

    failing.input_signature = extract.input_signature
    with pytest.raises(ValueError, match="a bad batch"):
        FeatureCache(model, ds, directory=tmp_path, extractor=failing)
    assert list(tmp_path.iterdir()) == []  # the half-written file is gone

    class Full:  # a file that opens, on a disk with no room for it
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()

    real_open = open
    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", Full)
        error = raises(DataError, FeatureCache, model, ds, directory=tmp_path)
    check_error(
        error, DataError, "No space left on device", "TMPDIR", "cache_features=False"
    )
    assert list(tmp_path.iterdir()) == []
    # A folder that cannot be made (a file stands in its way) is named too.
    (tmp_path / "taken").write_text("")
    error = raises(DataError, FeatureCache, model, ds, directory=tmp_path / "taken")
    check_error(error, DataError, str(tmp_path / "taken"), "TMPDIR")


def test_automatic_stage_one_stops_when_the_validation_loss_stops_falling():
    from tltf.cache import StageOneEnd

    def run(end, train, val):
        end.set_model(keras.Sequential())
        end.model.stop_training = False
        for epoch, (loss, val_loss) in enumerate(zip(train, val, strict=True)):
            logs = (
                {"loss": loss}
                if val_loss is None
                else {"loss": loss, "val_loss": val_loss}
            )
            end.on_epoch_end(epoch, logs)
            if end.model.stop_training:
                return epoch
        return None

    # The training loss halves every epoch (never "converged" by 1%), while the
    # validation loss is lowest at the second epoch: stage 1 ends two epochs on.
    train = [2.0**-i for i in range(8)]
    val = [1.0, 0.9, 0.95, 0.97, 0.99, 1.1, 1.2, 1.3]
    end = StageOneEnd(20, tolerance=0.01)
    assert run(end, train, val) == 3 and end.why == "validation loss"
    # Without validation data it runs on; the explicit-epochs mode ignores both.
    assert run(StageOneEnd(20, tolerance=0.01), train, [None] * 8) is None
    assert run(StageOneEnd(20), train, val) is None
    # A resumed run that already had the best epoch stops at the same point.
    resumed = StageOneEnd(20, tolerance=0.01, losses=train[:2], val_losses=val[:2])
    assert run(resumed, train[2:], val[2:]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["no-guard", "validation", "held-out-slice"])
def test_stage_two_on_the_frozen_blocks_output_is_stage_two_on_full_passes(
    data, setting, monkeypatch, capsys
):
    """Stage 2 after a cached stage 1 computes the frozen blocks once. It trains
    the same weights, in the same batches, as full passes would, with the
    default head (every block, the raw pixels, dropout), and leaves the frozen
    blocks (their BatchNorm statistics included) bitwise as they were."""
    x, y = data
    if setting == "held-out-slice":
        # Labels the colours do not give: stage 1 misses some held-out images,
        # so the guard does not skip stage 2.
        y = np.random.default_rng(1).permutation(y)
    kwargs = {"head_epochs": 2, "fine_tune_epochs": 3, "unfreeze": 2, "seed": 3}
    if setting == "no-guard":
        kwargs["keep_best"] = False
    validation = (x[:16], y[:16]) if setting == "validation" else None
    runs = []
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(tltf.schedule, "_stage_two_split", lambda run: None)
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        info = tltf.model_info(model)
        before = weights_snapshot(info.base)
        history = tltf.fine_tune(model, (x, y), validation, verbose=1, **kwargs)
        printed = capsys.readouterr().out
        assert ("the 2 frozen blocks below run once" in printed) == cached
        # The guard scores its slice through the cached part: the same scores.
        kept = [line for line in printed.splitlines() if "keep_best: " in line]
        changed = changed_keys(before, weights_snapshot(info.base))
        frozen = block_variables(info, "block1", before) | block_variables(
            info, "block2", before
        )
        assert frozen and not changed & frozen  # BN moving statistics included
        if setting != "held-out-slice":  # (there the guard may restore stage 1)
            assert changed & block_variables(info, "block4", before)
        runs.append((model, history.history, kept))
    (model, cached_logs, cached_kept), (plain, plain_logs, plain_kept) = runs
    assert cached_kept == plain_kept
    assert cached_logs["stage"] == plain_logs["stage"] == [1, 1, 2, 2, 2]
    for key in plain_logs:
        np.testing.assert_allclose(cached_logs[key], plain_logs[key], rtol=1e-5)
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _count_passes(monkeypatch) -> list:
    """A list that gets an entry for each `FeatureCache` built (one pass over
    images) from now on."""
    import tltf.cache

    passes = []
    init = tltf.cache.FeatureCache.__init__

    def counted(self, model, dataset, *args, **kw):
        passes.append(1)
        init(self, model, dataset, *args, **kw)

    monkeypatch.setattr(tltf.cache.FeatureCache, "__init__", counted)
    return passes


def _with_and_without_the_reuse(monkeypatch, capsys, train, kwargs) -> list:
    """Two seeded runs of the tiny model on `train`: the hand-back reading the
    frozen blocks' cached output, then by a pass of the whole model. Each as
    `(model, passes over images, history, what it printed)`."""
    import tltf.schedule

    passes = _count_passes(monkeypatch)
    runs = []
    for reuse in (True, False):
        if not reuse:
            monkeypatch.setattr(
                tltf.schedule, "_frozen_output_features", lambda *a: None
            )
        passes.clear()
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(model, train, verbose=1, **kwargs)
        runs.append((model, len(passes), history, capsys.readouterr().out))
    return runs


@pytest.mark.slow
def test_the_guard_scores_stage_ones_end_through_the_top_blocks(data, monkeypatch):
    """With a held-out slice and stage 2 on the frozen blocks' output, the slice
    goes through the frozen blocks once, in the pass before stage 1, and the
    guard scores stage 1's end and every stage-2 epoch through the top blocks on
    that output: the whole model never runs over the slice. Each score is the
    whole model's on the slice."""
    from tltf.guard import KeepBest

    x, y = data
    y = np.random.default_rng(1).permutation(y)  # the guard keeps stage 2 going
    predicted, compared, checking = [], [], [False]
    predict, score = keras.Model.predict, KeepBest.holdout_score

    def spy_predict(self, *args, **kwargs):
        if not checking[0]:
            predicted.append(self)
        return predict(self, *args, **kwargs)

    def checked_score(self):
        result = score(self)
        through, self.holdout_predict = self.holdout_predict, None
        checking[0] = True
        try:
            compared.append((through is not None, result, score(self)))
        finally:
            checking[0], self.holdout_predict = False, through
        return result

    monkeypatch.setattr(keras.Model, "predict", spy_predict)
    monkeypatch.setattr(KeepBest, "holdout_score", checked_score)
    keras.utils.set_random_seed(0)
    model = make_tiny_model()
    history = tltf.fine_tune(
        model, (x, y), head_epochs=2, fine_tune_epochs=2, unfreeze=2, seed=3, verbose=0
    )
    assert history.history["stage"] == [1, 1, 2, 2]
    assert model not in predicted
    # Stage 1's end, then each stage-2 epoch: all through the top blocks.
    assert [through for through, _, _ in compared] == [True] * 3
    for _, got, whole in compared:
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("validation", [True, False], ids=["validation", "held-out"])
def test_stage_one_reads_its_features_from_stage_twos_pass(
    data, validation, monkeypatch, capsys
):
    """Where stage 2 runs on the frozen blocks' output, stage 1's head features
    come from that output through the top blocks, so the bottom blocks run once
    over the training (and validation) images for both stages: one pass fewer
    than a stage 1 of its own, with the same run to float rounding."""
    import tltf.schedule

    x, y = data
    y = np.random.default_rng(1).permutation(y)  # stage 1 leaves work for stage 2
    validation_data = (x[:16], y[:16]) if validation else None
    passes = _count_passes(monkeypatch)
    runs = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(tltf.schedule, "_shared_pass", lambda *a: None)
        passes.clear()
        keras.utils.set_random_seed(0)
        model = make_tiny_model()
        history = tltf.fine_tune(
            model,
            (x, y),
            validation_data,
            head_epochs=2,
            fine_tune_epochs=2,
            unfreeze=2,
            seed=3,
            verbose=1,
        )
        printed = capsys.readouterr().out
        assert ("stage 2 reuses the output of the 2 frozen blocks" in printed) == shared
        assert ("run once, in stage 1's pass" in printed) == shared
        assert history.history["stage"] == [1, 1, 2, 2]
        runs.append((model, len(passes), history.history))
    (model, shared_passes, logs), (plain, plain_passes, plain_logs) = runs
    # Stage 1's train (and validation) pass, then stage 2's again, and the
    # guard's held-out slice.
    expected = (2, 4) if validation else (2, 3)
    assert (shared_passes, plain_passes) == expected
    for key in plain_logs:
        np.testing.assert_allclose(logs[key], plain_logs[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_hand_back_after_a_run_that_ended_in_stage_1_runs_only_the_top_blocks(
    data, monkeypatch, capsys
):
    """When the guard ends the run after stage 1 (stage 1 already classifies
    the whole held-out slice), the hand-back reads every training image's head
    features from the frozen output of the pass before stage 1, through the top
    blocks alone: the same head as from a pass of the whole model over every
    image, and one pass fewer."""
    kwargs = {"head_epochs": 2, "fine_tune_epochs": 2, "unfreeze": 2, "seed": 3}
    kwargs["label_smoothing"] = 0.1  # the head is trained on after the refit
    runs = _with_and_without_the_reuse(monkeypatch, capsys, data, kwargs)
    for _, _, history, printed in runs:
        assert "stage 2 reuses the output of the 2 frozen blocks" in printed
        assert "handed the 12 held-out images back" in printed
        assert history.history["stage"] == [1, 1]  # the guard ended it there
    (model, reused_passes, reused, _), (plain, plain_passes, full, _) = runs
    # The training rows' and the slice's passes, and without the reuse the
    # hand-back's pass over every image.
    assert (reused_passes, plain_passes) == (2, 3)
    assert reused.kept.note == full.kept.note
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_memory_estimate_for_stage_two_counts_the_held_out_slice(
    data, monkeypatch, capsys
):
    """The held-out slice's frozen output lives through both stages with the
    training images': where the two together pass the memory limit and cannot
    go to a file, stage 2 runs full passes."""
    import tltf.cache
    import tltf.schedule

    x, y = data
    y = np.random.default_rng(1).permutation(y)  # the guard keeps stage 2 going
    per_image = FrozenSplit(make_tiny_model(), 2).bytes_per_image()
    bounds, at_most = [], tltf.schedule.images_at_most

    def spy(ds):  # the training images' bound: batches times batch size
        bounds.append(at_most(ds))
        return bounds[-1]

    monkeypatch.setattr(tltf.schedule, "images_at_most", spy)
    monkeypatch.setattr(tltf.cache, "frozen_output_on_disk", lambda size: False)
    kwargs = {"head_epochs": 1, "fine_tune_epochs": 1, "unfreeze": 2}
    tltf.fine_tune(make_tiny_model(), (x, y), **kwargs)
    trained, held = bounds[0], 12  # 12 of 64 images: the guard's slice
    capsys.readouterr()
    for images, once in ((trained + held, True), (trained + held - 1, False)):
        monkeypatch.setattr(tltf.cache, "MEMORY_LIMIT_BYTES", per_image * images)
        tltf.fine_tune(make_tiny_model(), (x, y), **kwargs)
        printed = capsys.readouterr().out
        assert "handed the 12 held-out images back" in printed
        assert ("the 2 frozen blocks below run once" in printed) == once


@pytest.mark.parametrize(
    "setting",
    [{"gradual_every": 1}, {"lr_decay": 0.5}, {"regularize": "l2sp"}],
    ids=["gradual", "lr-decay", "l2sp"],
)
def test_stage_two_runs_full_passes_where_its_cache_would_not_hold(
    data, setting, capsys
):
    """What changes over stage 2, or hooks beyond the trained layers, keeps full
    passes (frozen output over the memory limit with an accelerator or without
    the room on disk: test_stage_two_reads_frozen_output_over_the_limit_from_disk).
    """
    tltf.fine_tune(
        make_tiny_model(),
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=2,
        keep_best=False,
        verbose=1,
        **setting,
    )
    printed = capsys.readouterr().out
    assert "tltf: stage 2 from epoch 2" in printed
    assert "run once" not in printed


def test_the_shipped_bases_splits_compose_to_the_model():
    """MobileNetV3's activations are layers its block map does not list: which
    of the base's outputs lie above the cut is read from the graph."""
    x, _ = tltf.datasets.make_images("shapes_target", per_class=1, image_size=64)
    model = tltf.build_model("demo", 12)
    expected = model.predict(x, verbose=0)
    for k in (1, 5, 12):
        split = FrozenSplit(model, k)
        features = split.features(x, 8)
        assert len(features) == len(split.shapes) > 1
        np.testing.assert_allclose(
            split.trainable(list(features)), expected, rtol=1e-4, atol=1e-6
        )


def _residual_model():
    """A base whose blocks end in an `x + y` operation after their last layer,
    as Keras's ConvNeXt blocks do (`inputs + layer(x)`): the block's output is
    not its last layer's."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    blocks = {"stem": ["stem_conv"]}
    for i in range(3):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{i}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"b{i}_bn")(y)
        y = keras.layers.Activation("linear", name=f"b{i}_identity")(y)
        x = x + y  # an operation, not a layer
        blocks[f"b{i}"] = [f"b{i}_conv", f"b{i}_bn", f"b{i}_identity"]
    base = tltf.load_base(keras.Model(inputs, x, name="residual"), block_map=blocks)
    keras.utils.set_random_seed(0)
    return tltf.build_model(base, 3, head={"dropout": 0.0})


def test_splits_of_a_base_whose_blocks_end_in_an_operation_compose_to_the_model(
    data, capsys
):
    """The cut is the block's output found in the graph. Before, it was the
    block's last layer's output, short of the residual add, and every split of
    such a base (ConvNeXt's) was refused, so its stage 2 ran full passes.
    Splits built one after the other still find every block: a split's calls
    of the top blocks are not the base's graph."""
    from tltf.bases.cut import block_outputs

    model = _residual_model()
    info = tltf.model_info(model)
    x = data[0][:5]
    expected = model(x)
    for k in (1, 2, 3):
        split = FrozenSplit(model, k)
        np.testing.assert_array_equal(
            split.trainable(list(split.features(x, 2))), expected
        )
    positions = range(len(info.block_map))
    assert None not in block_outputs(info.base, info.block_map, positions, strict=False)
    # fine_tune's stage 2 on such a base computes the frozen blocks once.
    tltf.fine_tune(
        model, data, head_epochs=1, fine_tune_epochs=1, unfreeze=2, keep_best=False
    )
    assert "the 2 frozen blocks below run once" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting", ["weighted-and-smoothed", "weighted-and-class-weighted", "bundle"]
)
def test_the_hand_back_after_a_cached_stage_2_runs_only_the_top_blocks(
    data, setting, monkeypatch, capsys
):
    """After stage 2 on cached frozen blocks, the guard's hand-back reads every
    training image's head features from those blocks' cached output through
    the top blocks alone, not from a pass of the whole model: the same head as
    from a full pass (refit in closed form, and trained on with the run's own
    smoothing), with one pass over the images fewer, for arrays and for a
    `load_data` bundle. Sample weights that `class_weight` is folded into keep
    the pass, whose batches carry them. (The defaults take this path in
    `test_stage_two_on_the_frozen_blocks_output_is_stage_two_on_full_passes`.)"""
    x, y = data
    y = np.random.default_rng(1).permutation(y)  # stage 1 misses some of the slice
    kwargs = {"head_epochs": 2, "fine_tune_epochs": 2, "unfreeze": 2, "seed": 3}
    train = (x, y, np.random.default_rng(2).uniform(0.5, 2.0, len(y)))
    if setting == "weighted-and-smoothed":
        kwargs["label_smoothing"] = 0.1
    if setting == "weighted-and-class-weighted":
        kwargs["class_weight"] = {0: 1.0, 1: 3.0, 2: 0.5}
    if setting == "bundle":  # its own batches, its labels from the bundle
        train = tltf.load_data((x, y), batch_size=16, seed=0)
        kwargs["label_smoothing"] = 0.1
    runs = _with_and_without_the_reuse(monkeypatch, capsys, train, kwargs)
    for _, _, _, printed in runs:
        assert "the 2 frozen blocks below run once" in printed
        assert "handed the 12 held-out images back" in printed
    (model, reused_passes, reused, _), (plain, plain_passes, full, _) = runs
    # The training rows' pass that both stages read, the held-out slice's,
    # and without the reuse the hand-back's pass over every image.
    folded = setting == "weighted-and-class-weighted"
    assert (reused_passes, plain_passes) == (3 if folded else 2, 3)
    assert reused.kept.note == full.kept.note
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
