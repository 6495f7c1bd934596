"""probe_blocks: linear probes by depth, one forward pass, and the recommendation."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

import tltf
from tests.helpers import (
    check_error,
    count_probe_reads,
    make_data,
    make_tiny_base,
    raises,
)
from tltf.errors import BlockMapError, ConfigError, DataError
from tltf.probe import (
    PROBE_PER_CLASS,
    probe_blocks,
    probe_sample,
    recommend,
    ridge_fit,
    ridge_probe,
    ridge_r2_probe,
    ridge_regression,
    sample_rows,
    sample_training_data,
    sigmoid,
)


def _broken_base():
    """A tiny base whose block3 outputs a constant: blocks 3 and 4 carry no signal."""
    base = make_tiny_base()
    conv = base.get_layer("block3_conv")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    return base


@pytest.mark.slow
def test_probe_finds_the_early_block_when_the_top_destroys_the_signal():
    train, val = make_data(120, seed=0), make_data(60, seed=1)
    result = probe_blocks(_broken_base(), train, val, verbose=0)
    acc = {r["block"]: r["val_accuracy"] for r in result.table}
    assert [r["block"] for r in result.table] == [
        "block1",
        "block2",
        "block3",
        "block4",
    ]
    assert min(acc["block1"], acc["block2"]) >= 0.9
    assert max(acc["block3"], acc["block4"]) <= 0.5  # chance is 1/3
    assert result.cut in ("block1", "block2")
    assert result.unfreeze >= 1
    assert f"cut={result.cut!r}" in result.reason
    assert result.reason.startswith("Val accuracy of a linear probe")
    # Without validation data the scores are leave-one-out, and the reason says so.
    loo = probe_blocks(_broken_base(), train, verbose=0)
    assert loo.reason.startswith("Leave-one-out accuracy of a linear probe")
    # The recommendation builds: a model cut there trains blocks below it only.
    model = tltf.build_model(_broken_base(), 3, cut=result.cut)
    assert tltf.model_info(model).block_map.names[-1] == result.cut


@pytest.mark.slow
def test_probe_reads_the_data_once_for_all_blocks():
    x, y = make_data(48)
    reads = []

    def images():
        for i in range(len(x)):
            reads.append(i)
            yield x[i], y[i]

    spec = (
        tf.TensorSpec((16, 16, 3), tf.float32),
        tf.TensorSpec((), tf.int32),
    )
    ds = tf.data.Dataset.from_generator(images, output_signature=spec).batch(16)
    result = probe_blocks(make_tiny_base(), ds, val_fraction=0.25, verbose=0)
    assert len(result.table) == 4
    assert sorted(reads) == list(range(48))  # one pass, whatever the block count
    assert result.num_train + result.num_val == 48  # a held-out split
    assert result.scoring == "validation"


@pytest.mark.slow
def test_probe_accepts_arrays_datasets_and_bundles_alike():
    x, y = make_data(64)
    base = make_tiny_base()
    bundle = tltf.load_data((x, y), image_size=16, validation_split=0.25, seed=0)
    from_bundle = probe_blocks(base, bundle, verbose=0)
    assert from_bundle.num_val == bundle.num_validation
    # The probe reads the bundle's fixed order: the reshuffled training batches
    # a fine_tune reads next are those of a bundle that was never probed.
    fresh = tltf.load_data((x, y), image_size=16, validation_split=0.25, seed=0)
    for _ in range(2):
        orders = [np.concatenate([b[1] for b in d.train]) for d in (bundle, fresh)]
        np.testing.assert_array_equal(*orders)
    assert not np.array_equal(orders[0], np.sort(orders[0]))  # it does reshuffle
    one_hot = np.eye(3, dtype="float32")[y]
    arrays = probe_blocks(base, (x, one_hot), (x[:16], y[:16]), verbose=0)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = probe_blocks(base, unbatched, unbatched.take(16), batch_size=8, verbose=0)
    for a, b in zip(arrays.table, dataset.table, strict=True):
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_probe_options_table_csv_and_plot(tmp_path, capsys):
    data = make_data(60)
    every = probe_blocks(make_tiny_base(), data, every=2, verbose=0)
    assert [r["index"] for r in every.table] == [1, 3]  # counted down from the top
    chosen = probe_blocks(make_tiny_base(), data, blocks=["block1"], verbose=1)
    assert [r["block"] for r in chosen.table] == ["block1", "block4"]  # + the top
    printed = capsys.readouterr().out
    assert "one forward pass" in printed and "loo_acc" in printed
    path = chosen.to_csv(tmp_path / "probe.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["block"] for r in rows] == ["block1", "block4"]
    assert float(rows[0]["val_accuracy"]) == chosen.table[0]["val_accuracy"]
    figure = chosen.plot(tmp_path / "probe.png")
    assert isinstance(figure, Figure) and (tmp_path / "probe.png").stat().st_size
    assert chosen.build_kwargs() == {"cut": chosen.cut, "unfreeze": chosen.unfreeze}


def _two_tensor_base():
    """Block 2 hands on two tensors, its own output and block 1's, as NASNet's
    cells do: block 2 cannot be read alone."""
    inputs = keras.Input((16, 16, 3), name="skip_input")
    a = keras.layers.Conv2D(8, 3, padding="same", name="block1_conv")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", name="block2_conv")(a)
    x = keras.layers.Concatenate(name="block3_concat")([a, b])
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="block3_conv")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="block4_conv")(x)
    return keras.Model(inputs, x, name="skip")


def test_blocks_that_hand_on_two_tensors_are_left_out_of_the_probe(capsys):
    """fine_tune's defaults probe the blocks (unfreeze="auto"): on a base like
    NASNet they probe the blocks that can be read, instead of failing. A block
    asked for by name still fails, naming it."""
    data = make_data(30)
    result = probe_blocks(_two_tensor_base(), data, verbose=0)
    assert [r["block"] for r in result.table] == ["block1", "block3", "block4"]
    model = tltf.build_model(_two_tensor_base(), 3)
    tltf.fine_tune(model, data, head_epochs=1, fine_tune_epochs=1, batch_size=16)
    assert "tltf: unfreeze='auto' ->" in capsys.readouterr().out
    error = raises(
        BlockMapError, probe_blocks, _two_tensor_base(), data, blocks=["block2"]
    )
    check_error(error, BlockMapError, "block2", "2 tensors", "single tensor")


def test_probe_errors():
    data = make_data(30)
    with pytest.raises(BlockMapError, match="Did you mean 'block2'"):
        probe_blocks(make_tiny_base(), data, blocks=["blok2"], verbose=0)
    with pytest.raises(ConfigError, match="every"):
        probe_blocks(make_tiny_base(), data, every=0, verbose=0)
    with pytest.raises(DataError, match="task='regression'"):
        probe_blocks(make_tiny_base(), (data[0], data[1] + 0.5), verbose=0)
    with pytest.raises(DataError, match="task='multilabel'"):
        probe_blocks(make_tiny_base(), (data[0], np.ones((30, 2))), verbose=0)
    with pytest.raises(DataError, match="0/1 label rows"):
        labels = np.full((30, 2), 0.5)
        probe_blocks(make_tiny_base(), (data[0], labels), task="multilabel", verbose=0)
    with pytest.raises(ConfigError, match="task="):
        probe_blocks(make_tiny_base(), data, task="ordinal", verbose=0)


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_probe_scores_regression_and_multilabel_by_r2(task, tmp_path):
    # The bright channel as a real target, or as 0/1 labels: blocks 3 and 4 of
    # the broken base carry nothing of it.
    x, y = make_data(60)
    if task == "regression":
        targets = (2.0 * y + np.random.default_rng(0).normal(0, 0.1, 60))[:, None]
    else:
        targets = np.stack([y == 0, y == 1, y != 2], axis=1).astype("float32")
    result = probe_blocks(_broken_base(), (x, targets), task=task, verbose=0)
    assert result.metric == "r2" and result.key == "val_r2"
    r2 = {r["block"]: r["val_r2"] for r in result.table}
    assert max(r2["block1"], r2["block2"]) > 0.9
    assert max(r2["block3"], r2["block4"]) < 0.05  # the training mean, no better
    assert result.cut == result.best["block"] in ("block1", "block2")
    assert result.reason.startswith("Leave-one-out R² of a linear probe")
    assert "loo_r2" in str(result) and "train_r2" in str(result)
    rows = list(csv.DictReader(result.to_csv(tmp_path / "probe.csv").open()))
    assert float(rows[0]["val_r2"]) == result.table[0]["val_r2"]
    assert isinstance(result.plot(), Figure)


def test_ridge_r2_probe_scores_against_the_training_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    t = x @ np.array([1.0, -1.0, 0.0, 0.0]) + 0.1 * rng.normal(size=80)
    val_r2, loo_r2, _ = ridge_r2_probe(x[:60], t[:60], x[60:], t[60:])
    assert val_r2 > 0.98 and loo_r2 > 0.98
    # Noise features explain nothing: about 0, and never much above it.
    noise = rng.normal(size=(80, 4))
    val_r2, loo_r2, _ = ridge_r2_probe(noise[:60], t[:60], noise[60:], t[60:])
    assert loo_r2 < 0.1 and val_r2 < 0.1
    # Constant features predict the training mean: R² 0 on the training targets.
    flat = np.ones((80, 3))
    assert ridge_r2_probe(flat[:60], t[:60], flat[60:], t[60:])[1] == pytest.approx(0)


def _rows(acc):
    return [
        {"block": f"b{i}", "index": i, "val_accuracy": a} for i, a in enumerate(acc)
    ]


def test_recommend_rule():
    # Rising to the top: whole base, unfreeze the top block only.
    cut, unfreeze, reason, _ = recommend(_rows([0.5, 0.7, 0.85, 0.95]), 1000, 0.02)
    assert (cut, unfreeze) == (None, 1) and "cut=None" in reason
    # Plateau from b1 on: whole base, adapt the blocks above the plateau's start.
    cut, unfreeze, reason, _ = recommend(_rows([0.6, 0.9, 0.91, 0.9, 0.9]), 1000, 0.02)
    assert (cut, unfreeze) == (None, 3) and "unfreeze=3" in reason
    # Peak at b3, then a drop: cut at the peak; b1 is within the tolerance already.
    cut, unfreeze, reason, _ = recommend(
        _rows([0.5, 0.89, 0.895, 0.9, 0.6]), 1000, 0.02
    )
    assert (cut, unfreeze) == ("b3", 2) and "cut='b3'" in reason
    # Every other block probed: unfreeze counts blocks of the map, not probes.
    rows = [
        {"block": f"b{i}", "index": i, "val_accuracy": a}
        for i, a in [(1, 0.6), (3, 0.9), (5, 0.9)]
    ]
    assert recommend(rows, 1000, 0.02)[:2] == (None, 2)
    # The default tolerance is the standard error of the peak (or 0.01).
    assert recommend(_rows([0.8, 0.7]), 100)[3] == pytest.approx(0.04)
    with pytest.raises(ConfigError, match="tolerance"):
        recommend(_rows([0.8, 0.7]), 100, 2.0)


def test_ridge_probe_is_an_exact_linear_classifier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    val_acc, loo_acc, l2 = ridge_probe(x[:150], y[:150], x[150:], y[150:], 2)
    assert val_acc >= 0.95 and loo_acc >= 0.9 and l2 > 0
    noise_acc, _, _ = ridge_probe(
        rng.normal(size=(150, 5)), y[:150], rng.normal(size=(50, 5)), y[150:], 2
    )
    assert noise_acc < 0.75


def test_ridge_regression_picks_its_strength_by_leave_one_out_error():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 5))
    z = (z - z.mean(axis=0)) / z.std(axis=0)  # standardised, as the head's are
    clean = z @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 3.0
    fit = ridge_regression(z, clean)
    # Noiseless targets: the weakest strength, the exact solution, LOO ~ exact.
    np.testing.assert_allclose(fit.prior, [clean.mean()])
    np.testing.assert_allclose(fit.weights[:, 0], [1.0, -2.0, 0.5, 0, 0], atol=1e-2)
    np.testing.assert_allclose(fit.loo[:, 0], clean, atol=0.05)
    noisy = ridge_regression(z, rng.normal(size=40))  # nothing to learn
    assert noisy.l2 > 10 * fit.l2
    # ridge_fit is the same fit on one-hot targets, picked by accuracy.
    y = (clean > 3.0).astype(int)
    assert ridge_fit(z, y, 2).weights.shape == (5, 2)


def test_sigmoid_is_quiet_at_extreme_logits():
    # RuntimeWarnings from tltf are errors in this suite (setup.cfg).
    np.testing.assert_allclose(sigmoid([-1e4, 0.0, 1e4]), [0.0, 0.5, 1.0])


def test_sample_rows_is_a_seeded_stratified_sample_with_a_floor_per_class():
    # 1,000 of class 0, 400 of class 1, 8 of class 2: a sample of ~200.
    labels = np.repeat([0, 1, 2], [1000, 400, 8])
    rows = sample_rows(labels, 200, seed=3)
    counts = np.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [143, 57, 8]  # each share rounded up; all 8 of 2
    assert np.all(np.diff(rows) > 0)  # sorted, no repeats
    assert np.array_equal(rows, sample_rows(labels, 200, seed=3))
    assert not np.array_equal(rows, sample_rows(labels, 200, seed=4))
    # One-hot rows are classes too; a class below the floor's share keeps
    # PROBE_PER_CLASS images.
    one_hot = np.eye(3)[labels]
    assert np.array_equal(rows, sample_rows(one_hot, 200, seed=3))
    small = np.bincount(labels[sample_rows(labels, 40, seed=0)], minlength=3)
    assert small.tolist() == [29, PROBE_PER_CLASS, 8]
    # Regression and multi-label: exactly max_images rows; few rows: no sample.
    assert len(sample_rows(np.random.rand(500), 100, 0, "regression")) == 100
    assert sample_rows(labels, len(labels), seed=0) is None
    # A floor that would keep every row takes no sample either.
    assert sample_rows(np.arange(60) % 30, 50, seed=0) is None


@pytest.mark.slow
def test_a_sample_of_the_training_data_is_all_the_probe_reads(monkeypatch):
    x, y = make_data(150)
    base = make_tiny_base()
    seen = count_probe_reads(monkeypatch)
    train, validation, total = sample_training_data((x, y), 60, seed=1)
    assert validation is None and total == 150
    result = probe_blocks(base, train, verbose=0)
    rows = sample_rows(y, 60, seed=1)
    assert sum(seen) == len(rows) == result.num_train == 60
    # The table is the probe of exactly those rows.
    seen.clear()
    direct = probe_blocks(base, (x[rows], y[rows]), verbose=0)
    assert sum(seen) == 60
    assert result.table == direct.table
    # No more images than max_images: the data as it was, and no sample.
    assert sample_training_data((x[:50], y[:50]), 60, seed=1)[2] is None


@pytest.mark.slow
def test_datasets_and_bundles_are_sampled_too():
    x, y = make_data(150)
    base = make_tiny_base()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    # A dataset's labels are not known before a pass: each row is drawn with
    # the same chance, repeatably by seed.
    first, _, total = sample_training_data(ds, 60, seed=2)
    again, _, _ = sample_training_data(ds, 60, seed=2)
    labels = [np.concatenate([b[1].numpy() for b in d]) for d in (first, again)]
    assert total == 150 and 30 <= len(labels[0]) <= 90
    assert np.array_equal(labels[0], labels[1])
    # A bundle of arrays knows its labels: the stratified sample, in the order
    # of its unshuffled batches, and its validation split scores the probe.
    bundle = tltf.load_data((x, y), image_size=16, validation_split=0.2, seed=0)
    train, validation, total = sample_training_data(bundle, 60, seed=2)
    assert validation is bundle.validation and total == bundle.num_train == 120
    read = np.concatenate([b[1].numpy() for b in train])
    assert np.array_equal(read, bundle.labels[sample_rows(bundle.labels, 60, 2)])
    from_bundle = probe_blocks(base, train, validation, verbose=0)
    assert from_bundle.num_train == 60 and from_bundle.scoring == "validation"
    # The batches of probe_sample keep the rows' order and batch size.
    sampled, total = probe_sample(ds, 60, 2, 16, labels=y)
    read = np.concatenate([b[1].numpy() for b in sampled])
    assert total == 150 and np.array_equal(read, y[sample_rows(y, 60, 2)])
    assert [len(b[0]) for b in sampled] == [16, 16, 16, 12]
