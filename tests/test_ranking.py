"""rank_bases: LogME, kNN and ridge scores, the ranking, its report and bad input."""

from __future__ import annotations

import csv
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

import tltf
from tests.helpers import make_data
from tltf.errors import ConfigError, DataError, InputShapeError, ModelError
from tltf.probe import sample_rows
from tltf.ranking import (
    COLUMNS,
    _neighbours,
    kendall_tau,
    knn_accuracy,
    knn_r2,
    log_evidence,
    logme,
    logme_fit,
)


def _closed_form_evidence(f, y, alpha, beta) -> float:
    """log N(y | 0, I / beta + F F^T / alpha), straight from the definition."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, log_det = np.linalg.slogdet(cov)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + y @ np.linalg.solve(cov, y))


def _tiny_regression(n, d, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    return f, f @ rng.normal(size=d) * 0.5 + rng.normal(size=n) * 0.7


# -- LogME ----------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(12, 3), (5, 8)])
def test_log_evidence_matches_the_closed_form(n, d):
    f, y = _tiny_regression(n, d)
    for alpha, beta in [(2.0, 0.5), (0.1, 3.0), (30.0, 1.2)]:
        assert log_evidence(f, y, alpha, beta) == pytest.approx(
            _closed_form_evidence(f, y, alpha, beta), rel=1e-10, abs=1e-10
        )


def test_logme_fixed_point_reaches_the_maximum_evidence():
    f, y = _tiny_regression(12, 3)
    per_example, alpha, beta = logme_fit(f, y)
    at_fixed_point = _closed_form_evidence(f, y, alpha, beta)
    assert per_example * 12 == pytest.approx(at_fixed_point, rel=1e-9)
    # A grid over (alpha, beta) finds nothing higher, and a fine grid around the
    # fixed point peaks next to it.
    coarse = np.logspace(-3, 4, 57)
    best = max(_closed_form_evidence(f, y, a, b) for a in coarse for b in coarse)
    assert at_fixed_point >= best - 1e-9
    fine = np.logspace(-0.5, 0.5, 61)
    values = np.array(
        [[_closed_form_evidence(f, y, alpha * a, beta * b) for b in fine] for a in fine]
    )
    i, j = np.unravel_index(np.argmax(values), values.shape)
    assert at_fixed_point >= values.max() - 1e-9
    assert (fine[i], fine[j]) == pytest.approx((1.0, 1.0), abs=0.04)
    # The hand-check: on this case the maximum is 34.81, 1.19 (alpha, beta).
    assert (alpha, beta) == pytest.approx((34.81, 1.191), rel=1e-3)


def test_logme_with_more_dimensions_than_examples_stays_finite():
    f, y = _tiny_regression(5, 8)
    per_example, alpha, beta = logme_fit(f, y)
    grid = np.logspace(-3, 6, 91)
    best = max(_closed_form_evidence(f, y, a, b) for a in grid for b in grid)
    assert np.isfinite(per_example)
    assert per_example * 5 >= best - 1e-6


def test_logme_is_the_mean_over_one_hot_columns_and_rewards_signal():
    x, y = make_data(60)
    features = x.reshape(60, -1, 3).mean(axis=1)  # the class's bright channel
    one_hot = np.eye(3)[y]
    columns = [logme_fit(features, one_hot[:, c])[0] for c in range(3)]
    assert logme(features, one_hot) == pytest.approx(np.mean(columns))
    noise = np.random.default_rng(1).normal(size=features.shape)
    assert logme(features, one_hot) > logme(noise, one_hot) + 0.1
    # A constant rescaling of the features does not change the score.
    assert logme(features * 1000.0, one_hot) == pytest.approx(
        logme(features, one_hot), rel=1e-6
    )


# -- kNN and Kendall tau --------------------------------------------------------
def test_knn_leave_one_out_on_a_constructed_case():
    # Two tight clusters (right and left), each with one point of the other class.
    right = [[1, 0.1], [1, -0.1], [1, 0.2], [1, -0.2], [1, 0]]
    left = [[-1, 0.1], [-1, -0.1], [-1, 0.2], [-1, -0.2], [-1, 0]]
    features = np.array(right + left, dtype=float)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    # The two intruders are wrong whatever k; every other point is right.
    for k in (1, 3):
        assert knn_accuracy(features, labels, k) == pytest.approx(0.8)
    # k = 9: every other point votes, 4 against 5 for one class and 5 against 4
    # for the other: each point goes to the majority class of the other nine.
    assert knn_accuracy(features, labels, 9) == pytest.approx(0.0)
    # Regression: the same neighbours averaged.
    assert knn_r2(features, features[:, 0], 1) == pytest.approx(1.0)


def test_neighbours_match_a_full_stable_sort_ties_included():
    """The partial sort picks what a stable sort of every similarity picks:
    equal similarities (duplicate rows) go to the lower index first."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        n, k = int(rng.integers(3, 80)), int(rng.integers(1, 6))
        k = min(k, n - 1)
        f = rng.normal(size=(n, 4))
        if trial % 2:  # duplicates: many equal similarities
            f = np.round(f[rng.integers(0, n // 3 + 1, n)])
        g = f - f.mean(axis=0)
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        similarity = g @ g.T
        np.fill_diagonal(similarity, -np.inf)
        expected = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        indices, values = _neighbours(f, k)
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(
            values, np.take_along_axis(similarity, expected, 1), atol=1e-12
        )


def test_knn_holds_a_block_of_similarities_at_a_time(monkeypatch):
    """kNN never holds the whole n x n similarity matrix: on 2,000 examples
    (32 MB of float64 similarities) it peaks at a few MB with blocks of 200k
    entries, and scores exactly what one block of everything scores."""
    import tracemalloc

    from tltf import ranking

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(2000, 8)), rng.integers(0, 5, 2000)
    whole = knn_accuracy(features, labels, 5)
    monkeypatch.setattr(ranking, "_SIMILARITY_BLOCK", 200_000)
    tracemalloc.start()
    try:
        blocked = knn_accuracy(features, labels, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert blocked == whole
    assert peak < 12e6  # one block: 100 rows x 2,000 similarities, and their sort


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3], [10, 30, 20]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties: 5 concordant pairs, 1 tied in b, none discordant: 5 / sqrt(6 * 5).
    assert kendall_tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 1], [1, 2]))


# -- the ranking ------------------------------------------------------------------
def signal_base(size=16):
    """A base whose pooled features are the image's channel means: the labels."""
    inputs = keras.Input((size, size, 3), name="signal_input")
    x = keras.layers.Conv2D(3, 1, name="block1_conv")(inputs)
    x = keras.layers.Conv2D(3, 1, name="block2_conv")(x)
    model = keras.Model(inputs, x, name="signal")
    identity = [np.eye(3, dtype="float32")[None, None], np.zeros(3, "float32")]
    for name in ("block1_conv", "block2_conv"):
        model.get_layer(name).set_weights(identity)
    return model


def constant_base(size=12):
    """A base whose features ignore the image (zero kernel, fixed bias)."""
    inputs = keras.Input((size, size, 3), name="constant_input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(inputs)
    x = keras.layers.Conv2D(
        4,
        1,
        name="block2_conv",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(0.5),
    )(x)
    return keras.Model(inputs, x, name="constant")


def test_a_base_that_carries_the_labels_ranks_above_one_that_does_not(tmp_path):
    x, y = make_data(48)
    # The constant base takes 12-px images: the 16-px images are resized for it.
    result = tltf.rank_bases(
        {"noise": constant_base(), "signal": signal_base()}, (x, y), verbose=0
    )
    assert result.ranking == ["signal", "noise"]
    assert result.best["candidate"] == "signal"
    signal, noise = result.table
    for score in ("logme", "knn", "ridge"):
        assert signal[f"{score}_rank"] == 1 and noise[f"{score}_rank"] == 2
        assert signal[score] > noise[score]
    assert signal["knn"] == 1.0 and signal["ridge"] == 1.0
    assert noise["knn"] <= 0.5 and noise["ridge"] <= 0.5  # chance is 1/3
    assert signal["features"] == 3 and noise["features"] == 4
    assert signal["block"] == "block2"
    assert all(row["seconds"] >= row["forward_seconds"] > 0 for row in result.table)
    assert result.agreement == {"logme~knn": 1.0, "logme~ridge": 1.0, "knn~ridge": 1.0}
    assert (result.task, result.num_examples, result.num_classes) == (
        "classification",
        48,
        3,
    )
    text = str(result)
    assert text.splitlines()[1].startswith("signal")
    assert "best by logme: signal" in text and "Kendall tau" in text
    path = result.to_csv(tmp_path / "rank.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert [r["candidate"] for r in rows] == ["signal", "noise"]
    figure = result.plot(tmp_path / "rank.png")
    assert isinstance(figure, Figure) and (tmp_path / "rank.png").stat().st_size > 0


def test_score_orders_the_table_and_every_probes_lower_blocks():
    x, y = make_data(48)
    base = tltf.load_base(signal_base())
    # Break the top block: only block1 carries the labels.
    base.model.get_layer("block2_conv").set_weights(
        [np.zeros((1, 1, 3, 3), "float32"), np.zeros(3, "float32")]
    )
    top_only = tltf.rank_bases({"cut": base}, (x, y), score="ridge", verbose=0)
    probed = tltf.rank_bases({"cut": base}, (x, y), every=1, verbose=0)
    assert top_only.score == "ridge" and top_only.table[0]["block"] == "block2"
    assert top_only.table[0]["ridge"] < 0.5
    assert probed.table[0]["block"] == "block1" and probed.table[0]["ridge"] == 1.0
    assert probed.table[0]["logme"] == top_only.table[0]["logme"]  # top block


def test_arrays_datasets_and_bundles_give_the_same_scores():
    x, y = make_data(36)
    candidates = {"signal": signal_base()}
    arrays = tltf.rank_bases(candidates, (x, y), verbose=0).table[0]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    from_ds = tltf.rank_bases(candidates, ds, verbose=0).table[0]
    bundle = tltf.load_data((x, y), image_size=16, shuffle=False)
    from_bundle = tltf.rank_bases(candidates, bundle, verbose=0).table[0]
    for score in ("logme", "knn", "ridge"):
        assert arrays[score] == pytest.approx(from_ds[score], abs=1e-5)
        assert arrays[score] == pytest.approx(from_bundle[score], abs=1e-5)


def random_base(size=16, seed=0):
    """A base of random convolutions: features that vary with every image."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="random_input")
    x = keras.layers.Conv2D(6, 3, activation="relu", name="block1_conv")(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="block2_conv")(x)
    return keras.Model(inputs, x, name="random")


def test_a_large_set_is_ranked_on_a_seeded_stratified_sample(capsys):
    """Of more than `max_images` examples, every candidate scores the same
    seeded sample, stratified by class: the scores are those of ranking that
    sample's arrays by hand, and the table says what it scored."""
    x, y = make_data(240)
    candidates = {"signal": signal_base(), "random": random_base()}
    sampled = tltf.rank_bases(candidates, (x, y), max_images=90, seed=3)
    printed = capsys.readouterr().out
    rows = sample_rows(y, 90, 3)
    assert len(rows) == 90 and np.bincount(y[rows]).tolist() == [30, 30, 30]
    by_hand = tltf.rank_bases(
        candidates, (x[rows], y[rows]), max_images=None, verbose=0
    )
    assert (sampled.num_examples, sampled.sampled_from) == (90, 240)
    assert by_hand.sampled_from is None
    assert sampled.ranking == by_hand.ranking
    for got, want in zip(sampled.table, by_hand.table, strict=True):
        for score in ("logme", "knn", "ridge"):
            assert got[score] == pytest.approx(want[score], abs=1e-6)
    assert "a seeded sample of 90 of 240 examples (max_images=None scores all)" in (
        printed
    )
    # Every example, and another seed: other scores.
    every = tltf.rank_bases(candidates, (x, y), max_images=None, verbose=0)
    other = tltf.rank_bases(candidates, (x, y), max_images=90, seed=4, verbose=0)
    assert every.num_examples == 240 and every.sampled_from is None
    for run in (every, other):
        assert run.table[1]["logme"] != pytest.approx(sampled.table[1]["logme"])
    # A bundle of the same arrays draws the same sample.
    bundle = tltf.load_data((x, y), image_size=16, shuffle=False)
    from_bundle = tltf.rank_bases(candidates, bundle, max_images=90, seed=3, verbose=0)
    assert from_bundle.sampled_from == 240
    for got, want in zip(from_bundle.table, sampled.table, strict=True):
        assert got["logme"] == pytest.approx(want["logme"], abs=1e-5)


def counted_dataset(x, y, batch_size):
    """`(dataset, reads)`: batches of `(x, y)` from a generator that appends
    each row's index to `reads` as it is read."""
    reads = []

    def images():
        for i in range(len(x)):
            reads.append(i)
            yield x[i], y[i]

    spec = (tf.TensorSpec((16, 16, 3), tf.float32), tf.TensorSpec((), tf.int32))
    ds = tf.data.Dataset.from_generator(images, output_signature=spec)
    return ds.batch(batch_size), reads


def test_a_dataset_is_sampled_one_by_one_and_read_once_for_all_candidates():
    """A `tf.data` input's labels are not known without a pass: one pass of the
    pipeline counts its rows, the first candidate's pass draws the sample, and
    the second candidate reads that sample from memory."""
    x, y = make_data(240)
    ds, reads = counted_dataset(x, y, batch_size=16)
    candidates = {"signal": signal_base(), "random": random_base()}
    result = tltf.rank_bases(candidates, ds, max_images=90, verbose=0)
    assert result.sampled_from == 240 and 50 <= result.num_examples <= 130
    assert len(result.table) == 2 and not result.failed
    assert len(reads) == 2 * 240  # the count, and the first candidate's pass


def test_sample_weights_are_named_as_not_used(capsys):
    x, y = make_data(36)
    candidates = {"signal": signal_base()}
    alike = tltf.rank_bases(candidates, (x, y), verbose=0).table[0]
    assert "sample weights" not in capsys.readouterr().out
    weighed = tltf.rank_bases(candidates, (x, y, np.arange(36) % 2)).table[0]
    assert "rank_bases scores every image alike" in capsys.readouterr().out
    assert weighed["logme"] == alike["logme"]


def test_regression_targets_score_logme_and_knn_only():
    x, y = make_data(40)
    target = x[..., 0].mean(axis=(1, 2)) / 255.0  # the red channel's brightness
    result = tltf.rank_bases(
        {"noise": constant_base(16), "signal": signal_base()},
        (x, target.astype("float32")),
        verbose=0,
    )
    assert result.task == "regression" and result.num_classes is None
    assert result.ranking == ["signal", "noise"]
    assert result.best["ridge"] is None and result.best["knn"] > 0.5
    assert list(result.agreement) == ["logme~knn"]
    with pytest.raises(ConfigError, match="ridge"):
        tltf.rank_bases({"s": signal_base()}, (x, target), score="ridge", verbose=0)


# -- bad input --------------------------------------------------------------------
def test_an_unknown_base_fails_before_any_forward_pass():
    x, y = make_data(24)
    ds, reads = counted_dataset(x, y, batch_size=8)
    with pytest.raises(ConfigError, match="vgg16"):
        tltf.rank_bases([signal_base(), "vgg61"], ds, verbose=0)
    assert reads == []


def test_a_missing_candidate_path_fails_before_any_forward_pass(tmp_path, capsys):
    x, y = make_data(24)
    missing = str(tmp_path / "no_such_base")
    with pytest.raises(ModelError, match="candidate '.*no_such_base' does not exist"):
        tltf.rank_bases([signal_base(), missing], (x, y), verbose=1)
    assert "ranked" not in capsys.readouterr().out


def test_a_candidate_that_cannot_run_is_left_out_and_named(capsys):
    """One candidate's failure (here an input below InceptionV3's minimum; as
    well weights not found offline) costs the others nothing: they are ranked,
    and the failure is named in `failed`, the printed table and one line."""
    x, y = make_data(48)
    candidates = {"signal": signal_base(), "inception": "inception_v3"}
    result = tltf.rank_bases(candidates, (x, y), verbose=1)
    assert result.ranking == ["signal"] and list(result.failed) == ["inception"]
    assert "at least 75x75" in result.failed["inception"]
    assert "tltf: not ranked: rank_bases: candidate 'inception'" in (
        capsys.readouterr().out
    )
    assert "not ranked: rank_bases: candidate 'inception'" in str(result)
    assert json.loads(json.dumps(result.to_dict()))["failed"] == result.failed
    # When no candidate runs, the error names each.
    candidates = {"inception": "inception_v3", "xception": "xception"}
    with pytest.raises(InputShapeError, match="'inception'.*and: .*'xception'"):
        tltf.rank_bases(candidates, (x, y), verbose=0)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.zeros(24, "int32"), "at least 2 classes"),
        (np.arange(24) % 16, "at least 2 examples per class"),
        (np.ones((24, 3), "float32"), "multi-label or soft"),
    ],
)
def test_bad_labels_are_data_errors(labels, match):
    x, _ = make_data(24)
    with pytest.raises(DataError, match=match):
        tltf.rank_bases([signal_base()], (x, labels), verbose=0)


def test_data_in_a_new_order_on_each_pass_is_refused():
    x, y = make_data(40)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40, seed=0).batch(8)
    with pytest.raises(DataError, match="another order"):
        tltf.rank_bases({"a": signal_base(), "b": signal_base()}, ds, verbose=0)


def test_bad_arguments_are_config_errors():
    x, y = make_data(24)
    with pytest.raises(ConfigError, match="weights_dir"):
        tltf.rank_bases([signal_base()], (x, y), weight_dir="w")
    with pytest.raises(ConfigError, match="score"):
        tltf.rank_bases([signal_base()], (x, y), score="logmee")
    with pytest.raises(ConfigError, match="share the name"):
        tltf.rank_bases([signal_base(), signal_base()], (x, y))
    with pytest.raises(ConfigError, match="at least one"):
        tltf.rank_bases([], (x, y))
    with pytest.raises(ConfigError, match="knn"):
        tltf.rank_bases([signal_base()], (x, y), knn=0)
    with pytest.raises(ConfigError, match="max_images"):
        tltf.rank_bases([signal_base()], (x, y), max_images=0)
    with pytest.raises(ConfigError, match="seed"):
        tltf.rank_bases([signal_base()], (x, y), seed="0")
    with pytest.raises(ConfigError, match="seed"):
        tltf.rank_bases([signal_base()], (x, y), seed=-1)


def test_the_printed_table_shows_no_nan_agreement():
    """With one candidate there is nothing to agree on: no agreement line. With a
    score tied over every candidate, its tau is undefined (NaN in `agreement`,
    as scipy gives) and the printed table says so instead of printing "+nan"."""
    x, y = make_data(30)
    one = tltf.rank_bases({"signal": signal_base()}, (x, y), verbose=0)
    assert "agreement" not in str(one) and "nan" not in str(one)
    two = tltf.rank_bases({"a": signal_base(), "b": signal_base()}, (x, y), verbose=0)
    assert math.isnan(two.agreement["knn~ridge"])  # both score 1.0 on each
    assert "knn~ridge n/a (a score is tied)" in str(two)
    assert "nan" not in str(two)
