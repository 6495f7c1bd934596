"""Which blocks transfer: linear probes on every block of a frozen base.

`probe_blocks` answers, before any fine-tuning or search, the question the
transfer-learning recipe leaves to intuition: up to which depth do the base's
features carry over to the new task? It runs the frozen base once over the data,
pooling (global average) the output of every probed block in the same forward
pass, fits a linear classifier on each block's pooled features, and reports the
accuracy by depth. Without a validation set, the accuracy is the exact
leave-one-out accuracy on the training set (robust with 60 images, where a 20 %
split would score on a dozen), and the raw input pixels get a row of their own:
the no-transfer baseline, so that a base that does not help shows. For a
regression or multi-label task (`task=`) the linear model is ridge regression
on the targets, scored by R² instead of accuracy; the rest is the same.

The linear classifier is a closed-form ridge (least-squares) classifier on
standardised features: one eigendecomposition per block gives the exact
leave-one-out predictions for a whole grid of L2 strengths, so the strength is
chosen on the training features alone, with no iterative training, no learning
rate and no randomness. The probe is deterministic.

The recommendation (see `recommend`):

1. *Cut.* Let `peak` be the (shallowest) block with the best validation
   accuracy, and `tol` the tolerance (by default the larger of 0.01 and the
   standard error of the peak accuracy on the validation set). If the top block's
   accuracy is more than `tol` below the peak, the blocks above the peak destroy
   information the task needs: cut at the peak (`build_model(..., cut=peak)`).
   Otherwise keep the whole base (`cut=None`).
2. *Unfreeze.* Let `top` be the new top block (the cut, or the base's top) and
   `knee` the shallowest block whose accuracy is within `tol` of the peak. The
   blocks above the knee, up to `top`, add no linearly readable information for
   this task, so they are the ones to adapt: `unfreeze = index(top) -
   index(knee)` blocks, at least 1 (accuracy still rising at the top means the
   top features transfer as they are: unfreeze only the top block).

Why one module of about 800 lines: the probe's forward pass, the ridge fit with
exact leave-one-out, the recommendation rule and the head's block weights are one
method; `ProbeResult` (table, plot, CSV) is its report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tltf._checks import take_renamed
from tltf._io import atomic_write_csv, check_file_replaceable, csv_table
from tltf.bases.base import Base, check_load_kwargs, load_base
from tltf.bases.cut import block_outputs, resolve_block
from tltf.cache import inference_function
from tltf.data import DataBundle
from tltf.data.inputs import as_dataset, batch_weights, pipeline_errors
from tltf.data.labels import check_sample_weights
from tltf.errors import ConfigError, DataError, LeaveOneOutError
from tltf.layers import Preprocessing, rgb_into_gray
from tltf.reports import new_figure, save_figure

#: Columns of `ProbeResult.table` (of a classification task; for regression and
#: multi-label, "val_r2" and "train_r2" stand in for the accuracies).
COLUMNS = ("block", "index", "features", "val_accuracy", "train_accuracy", "l2")

#: The tasks `probe_blocks` scores by R² (the rest by accuracy).
R2_TASKS = ("regression", "multilabel")

#: Each `ProbeResult.metric` in words.
MEASURES = {"accuracy": "accuracy", "r2": "R²"}

#: Relative L2 strengths tried for each block (times the mean eigenvalue).
_L2_GRID = np.logspace(-4, 2, 13)

#: The most training images that `fine_tune(unfreeze="auto")` and
#: `build_model(cut="auto")` probe (`sample_training_data`): a seeded sample of
#: a larger training set, so that choosing the depth costs one
#: forward pass over at most this many images rather than a second pass over
#: all of them (the feature cache reads them all anyway). Every benchmark of the
#: defaults on small data has fewer images, so none of them changes; see
#: benchmarks/RESULTS.md, "The probe reads a sample of a large training set".
PROBE_IMAGES = 2_000
#: ...but at least this many images of each class (all of a smaller class), so
#: that a task of many classes keeps some of each in the sample.
PROBE_PER_CLASS = 20


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What `probe_blocks` measured and what it recommends.

    Attributes:
        table: list of dict. One row per probed block, bottom to top, with keys
            "block", "index" (0-based position in the block map), "features"
            (pooled width), "val_accuracy", "train_accuracy" (leave-one-out on
            the training features) and "l2" (the ridge strength chosen). For
            regression and multi-label the scores are "val_r2" and "train_r2"
            (see `metric`).
        cut: str or None. The recommended `build_model(..., cut=)`; None keeps
            the whole base.
        unfreeze: int. The recommended number of blocks to unfreeze in stage 2,
            counted from the top of the (cut) base.
        reason: str. How the recommendation was reached, in words.
        tolerance: float. Accuracy differences below this count as ties.
        base: str. The base's name.
        num_blocks: int. Blocks in the base's block map.
        num_train: int. Training examples probed.
        num_val: int. Validation examples probed.
        seconds: float. Wall time of the forward pass and of the probes.
        pixels: dict or None. A row like the table's for the raw input pixels
            (index -1): the no-transfer baseline. None when not probed.
        scoring: str. "leave-one-out" (on the training set; `val_accuracy` is
            then the leave-one-out accuracy) or "validation".
        metric: str. "accuracy" (a classifier), or "r2" (regression and
            multi-label): the share of the targets' variance about their training
            mean that the ridge predictions explain (for 0/1 labels, the Brier
            skill score).
        weighted: bool. Whether the data carried sample weights: then every
            fit and score counts each image by its weight, and `num_val`
            scales the default tolerance as their effective count.
    """

    table: list
    cut: str | None
    unfreeze: int
    reason: str
    tolerance: float
    base: str
    num_blocks: int
    num_train: int
    num_val: int
    seconds: float
    pixels: dict | None = None
    scoring: str = "validation"
    metric: str = "accuracy"
    weighted: bool = False

    @property
    def key(self) -> str:
        """The table key of the score: "val_accuracy", or "val_r2"."""
        return f"val_{self.metric}"

    @property
    def measure(self) -> str:
        """The score in words: "accuracy" or "R²"."""
        return MEASURES[self.metric]

    @property
    def base_helps(self) -> bool:
        """False when a linear probe on the raw pixels ties or beats every block."""
        if self.pixels is None:
            return True
        best = max(r[self.key] for r in self.table)
        return self.pixels[self.key] < best - self.tolerance

    @property
    def best(self) -> dict:
        """The row with the best validation score (the shallowest on ties)."""
        return max(self.table, key=lambda r: (r[self.key], -r["index"]))

    def build_kwargs(self) -> dict:
        """`{"cut": ...}` to pass to `build_model`, and `{"unfreeze": ...}` for
        `fine_tune`, merged: `{"cut": cut, "unfreeze": unfreeze}`."""
        return {"cut": self.cut, "unfreeze": self.unfreeze}

    def to_dict(self) -> dict:
        """A JSON-serializable dict of everything in the result."""
        return dataclasses.asdict(self)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Writes the table as CSV (atomically) and returns the path.

        An existing file is replaced only if it is such a table: tltf never
        replaces a file it did not write (a ConfigError names it).
        """
        columns = [c.replace("accuracy", self.metric) for c in COLUMNS]
        check_file_replaceable(path, csv_table(COLUMNS[0]), "probe table")
        return atomic_write_csv(path, self.table, columns)

    def __str__(self) -> str:
        width = max(len("block"), *(len(r["block"]) for r in self.table))
        short = "acc" if self.metric == "accuracy" else "r2"
        score = ("loo_" if self.scoring == "leave-one-out" else "val_") + short
        lines = [
            f"{'block':<{width}}  {'index':>5}  {'features':>8}  {score:>7}"
            f"  {'train_' + short:>9}"
        ]
        for r in ([self.pixels] if self.pixels else []) + self.table:
            mark = "  <- cut" if r["block"] == self.cut else ""
            lines.append(
                f"{r['block']:<{width}}  {r['index']:>5}  {r['features']:>8}  "
                f"{r[self.key]:>7.3f}  {r['train_' + self.metric]:>9.3f}{mark}"
            )
        lines.append(f"cut={self.cut!r}, unfreeze={self.unfreeze}: {self.reason}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None):
        """Plots validation (and leave-one-out train) accuracy or R² against depth.

        The recommended cut is marked with a vertical line and the blocks to
        unfreeze are shaded.

        Args:
            path: str or None. Also write the figure to this PNG file
                (atomically). Defaults to None.
            title: str or None. The title. Defaults to a description of the base.

        Returns:
            A `matplotlib.figure.Figure`.
        """

        index = [r["index"] for r in self.table]
        figure = new_figure(path, figsize=(max(5.0, 0.35 * len(index) + 2), 3.6))
        ax = figure.add_subplot()
        ax.plot(
            index,
            [r[self.key] for r in self.table],
            "o-",
            label="leave-one-out" if self.scoring == "leave-one-out" else "validation",
        )
        ax.plot(
            index,
            [r["train_" + self.metric] for r in self.table],
            "s--",
            alpha=0.6,
            label="train (leave-one-out)",
        )
        if self.pixels is not None:
            ax.axhline(
                self.pixels[self.key],
                color="0.4",
                linestyle="-.",
                label="raw pixels (no transfer)",
            )
        top = index[-1]
        if self.cut is not None:
            top = next(r["index"] for r in self.table if r["block"] == self.cut)
            ax.axvline(top, color="C3", linestyle=":", label=f"cut at {self.cut}")
        ax.axvspan(
            top - self.unfreeze + 0.5,
            top + 0.5,
            color="C2",
            alpha=0.12,
            label=f"unfreeze {self.unfreeze}",
        )
        ax.set_xticks(index)
        ax.set_xticklabels([r["block"] for r in self.table], rotation=60, ha="right")
        ax.set_xlabel("block (bottom to top)")
        if self.metric == "accuracy":
            ax.set_ylabel("linear-probe accuracy")
            ax.set_ylim(0, 1.02)
        else:
            ax.set_ylabel("linear-probe R² (variance explained)")
            rows = self.table + ([self.pixels] if self.pixels else [])
            low = min(r[k] for r in rows for k in (self.key, "train_r2"))
            ax.set_ylim(max(-1.0, min(0.0, low - 0.05)), 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(title or f"Linear probes on {self.base} ({self.num_val} val)")
        figure.tight_layout()
        if path is not None:
            save_figure(figure, path)
        return figure


@pipeline_errors()
def probe_blocks(
    base: str | os.PathLike | keras.Model | Base,
    train,
    validation_data=None,
    *,
    every: int = 1,
    blocks: Sequence[int | str] | None = None,
    input_shape: tuple | None = None,
    batch_size: int = 32,
    tolerance: float | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    pixels: bool = True,
    task: str | None = None,
    verbose: int = 1,
    **base_kwargs,
) -> ProbeResult:
    """Probes how well each block's features solve the task, and recommends a cut.

    The frozen base runs once over `train` and `validation_data` (inference
    mode); the
    global-average-pooled output of every probed block comes out of that one
    pass. A ridge (least-squares) linear classifier per block, with its L2
    strength chosen by exact leave-one-out on the training features, is scored on
    `validation_data`. See the module docstring for the recommendation rule.
    For `task="regression"` or `"multilabel"` the ridge fit predicts the targets
    (or the 0/1 labels) and is scored by R² instead of accuracy.

    Args:
        base: A registry name, a saved base folder, a `keras.Model` or a `Base`
            (as for `build_model`).
        train: Labelled training images: `(images, labels)` arrays, a tf.data
            Dataset of `(image, label)` (batched or not), or a `DataBundle`.
            Images are raw RGB in [0, 255], as for `fine_tune`. Labels are class
            indices or one-hot rows (binary labels are two classes); real
            targets for `task="regression"`, 0/1 rows for `task="multilabel"`.
        validation_data: Same forms, or None: a bundle's validation split,
            else (with `val_fraction`) a seeded share of `train` held out, else
            exact leave-one-out on `train`. Called `val` before; `val=` still
            works, with a DeprecationWarning. Defaults to None.
        every: int. Probe every k-th block, counted down from the top (the top
            block is always probed). Defaults to 1 (every block). A block that
            hands on more than one tensor (NASNet's cells pass on two) cannot be
            read alone and is left out.
        blocks: sequence of block names or indices, or None. Probe exactly these
            blocks (plus the top block, the reference); a block that hands on
            more than one tensor is a BlockMapError. Defaults to None.
        input_shape: tuple or None. As for `build_model`. Defaults to the base's.
        batch_size: int. Batch size of the forward pass for array inputs.
            Defaults to 32.
        tolerance: float or None. Accuracy differences up to this are ties.
            Defaults to None: max(0.01, standard error of the peak accuracy).
        val_fraction: float or None. Share of `train` held out when there is no
            `validation_data`; None scores by leave-one-out on all of `train`. Defaults to
            None.
        seed: int. Seed of that hold-out split. Defaults to 0.
        pixels: bool. Also probe the raw input pixels (average-pooled to at most
            32x32): the no-transfer baseline, in `ProbeResult.pixels`. Defaults
            to True.
        task: str or None. None, "multiclass" or "binary": a classifier scored
            by accuracy; "regression" or "multilabel": scored by R², the share
            of the targets' variance (about their training mean) the ridge
            predictions explain. Defaults to None.
        verbose: int. 1 prints the table and the recommendation. Defaults to 1.
        **base_kwargs: How to load the base, passed on to `tltf.load_base` (as
            for `build_model`):

            - weights: "imagenet", None or a weights file path. Defaults to
              "imagenet".
            - weights_dir: str or None. Offline folder for ImageNet weight
              files. Defaults to `$TLTF_WEIGHTS_DIR`.
            - block_map: Block map of a custom `keras.Model` base. Defaults to
              None (inferred).
            - preprocessing: str or None. Preprocessing mode of a custom base.
              Defaults to None ("none").
            - Any other keyword is an argument of the Keras constructor (e.g.
              `alpha`); a name that is none of these is a ConfigError naming
              the closest one.

    Returns:
        A `ProbeResult`: `.table`, `.cut`, `.unfreeze`, `.reason`, `.plot()`,
        `.to_csv(path)`.

    Example:

    >>> result = tltf.probe_blocks("mobilenet_v2", data, input_shape=(96, 96, 3))
    >>> print(result)                      # accuracy by depth, and why
    >>> model = tltf.build_model("mobilenet_v2", data.num_classes, cut=result.cut)
    >>> tltf.fine_tune(model, data, unfreeze=result.unfreeze)
    """

    start = time.perf_counter()
    val = take_renamed(
        base_kwargs, "val", "validation_data", validation_data, "probe_blocks"
    )
    check_load_kwargs(base_kwargs, probe_blocks, "probe_blocks")
    if task not in (None, "multiclass", "binary", *R2_TASKS):
        raise ConfigError(
            'Expected task as None, "multiclass", "binary", "regression" or '
            f'"multilabel". Received: task={task!r}'
        )
    metric = "r2" if task in R2_TASKS else "accuracy"
    loaded = load_base(base, input_shape=input_shape, **base_kwargs)
    positions = _positions(loaded.block_map, every, blocks)
    if blocks is None:
        positions = _readable(loaded, positions)
    if isinstance(train, DataBundle):
        if val is None:
            val = train.validation
        # Its batches in a fixed order: a pass over `train` would advance its
        # reshuffling, so a fine_tune after the probe would read other orders.
        train = train.unshuffled if train.unshuffled is not None else train.train
    if isinstance(val, DataBundle):
        val = val.validation if val.validation is not None else val.train
    if val_fraction is not None:
        _check_fraction(val_fraction)
    train_ds = _batches(train, batch_size, "train")
    extractor = _extractor(loaded, positions, train_ds, pixels)

    run = inference_function(extractor)

    outputs = len(positions) + bool(pixels)
    x_train, y_train, w_train = _features(run, train_ds, outputs, "train")
    loo = val is None and val_fraction is None
    if val is not None:
        x_val, y_val, w_val = _features(
            run,
            _batches(val, batch_size, "validation_data"),
            outputs,
            "validation_data",
        )
    elif not loo:
        x_train, y_train, x_val, y_val, w_train, w_val = _hold_out(
            x_train, y_train, w_train, val_fraction, seed
        )
    else:
        x_val, y_val, w_val = x_train, y_train, w_train
    if metric == "accuracy":
        y_train, y_val, classes = _class_labels(y_train, y_val)
        if loo and not scorable(y_train).any():
            raise LeaveOneOutError(
                f"Every class has one training image ({len(y_train)} images), so "
                "leave-one-out cannot score a linear probe: an image left out "
                "leaves its class with none. Pass validation_data=, or label 2 or "
                "more images of some class."
            )
    else:
        y_train, y_val = _targets(y_train, task), _targets(y_val, task)

    def row(k: int, name: str, index: int) -> dict:
        if metric == "accuracy":
            val_score, loo_score, l2 = ridge_probe(
                x_train[k], y_train, x_val[k], y_val, classes, w_train, w_val
            )
        else:
            val_score, loo_score, l2 = ridge_r2_probe(
                x_train[k], y_train, x_val[k], y_val, w_train, w_val
            )
        return {
            "block": name,
            "index": index,
            "features": int(x_train[k].shape[1]),
            f"val_{metric}": round(loo_score if loo else val_score, 6),
            f"train_{metric}": round(loo_score, 6),
            "l2": float(f"{l2:.4g}"),
        }

    rows = [
        row(k, loaded.block_map.names[position], position)
        for k, position in enumerate(positions)
    ]
    pixel_row = row(len(positions), "pixels", -1) if pixels else None
    cut, unfreeze, reason, tol = recommend(
        rows,
        effective_count(w_val, len(y_val)),
        tolerance,
        "leave-one-out" if loo else "validation",
        metric,
    )
    key = f"val_{metric}"
    if pixel_row is not None:
        best = max(r[key] for r in rows)
        if pixel_row[key] >= best - tol:
            reason += (
                f" A linear probe on the raw pixels scores {pixel_row[key]:.3f}"
                f" against {best:.3f} for the best block: the base adds little or "
                "nothing for this task."
            )
    result = ProbeResult(
        table=rows,
        cut=cut,
        unfreeze=unfreeze,
        reason=reason,
        tolerance=tol,
        base=loaded.name,
        num_blocks=len(loaded.block_map),
        num_train=len(y_train),
        num_val=len(y_val),
        seconds=round(time.perf_counter() - start, 3),
        pixels=pixel_row,
        scoring="leave-one-out" if loo else "validation",
        metric=metric,
        weighted=w_train is not None or w_val is not None,
    )
    if verbose:
        weighted = (
            ", each image counted by its sample weight" if result.weighted else ""
        )
        print(
            f"tltf: probed {len(rows)} blocks of {loaded.name} in "
            f"{result.seconds:.1f}s (one forward pass{weighted})."
        )
        print(result)
    return result


def _positions(block_map, every, blocks) -> list[int]:
    n = len(block_map)
    if blocks is not None:
        if every != 1:
            raise ConfigError(
                f"Pass either blocks= or every=, not both. Received: blocks={blocks!r}"
                f", every={every!r}"
            )
        if isinstance(blocks, (str, int)):
            blocks = [blocks]
        chosen = {resolve_block(block_map, b, "blocks") for b in blocks}
        return sorted(chosen | {n - 1})
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(
            f"Expected every as an integer >= 1. Received: every={every!r}"
        )
    return sorted(range(n - 1, -1, -every))


def _readable(base: Base, positions: list[int]) -> list[int]:
    """The positions whose block ends in one tensor, which a probe can read.

    Most bases pass one tensor from block to block. NASNet's cells pass two (the
    cell's output and the one before it), so of NASNetMobile's 18 blocks only
    `stem`, `cell_12` and `top` can be read alone; the top block always can.
    """
    tensors = block_outputs(base.model, base.block_map, positions, strict=False)
    return [
        p for p, tensor in zip(positions, tensors, strict=True) if tensor is not None
    ]


def _check_fraction(value) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0 < value < 1)
    ):
        raise ConfigError(
            f"Expected val_fraction in (0, 1). Received: val_fraction={value!r}"
        )


def sample_rows(
    labels, max_images: int, seed: int, task: str | None = None
) -> np.ndarray | None:
    """Sorted indices of a seeded sample of about `max_images` of `labels`' rows,
    or None when there are not more rows than that.

    For a classifier (`task` not in `R2_TASKS`) the sample is stratified: each
    class keeps its share of `max_images`, rounded up, and at least
    `PROBE_PER_CLASS` images (all of a smaller class). Labels are class indices
    or one-hot rows. For regression and multi-label, `max_images` rows at random.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= max_images:
        return None
    rng = np.random.default_rng(seed)
    if task in R2_TASKS:
        return np.sort(rng.choice(n, max_images, replace=False))
    classes = (
        labels.argmax(axis=1)
        if labels.ndim == 2 and labels.shape[1] > 1
        else labels.reshape(n)
    )
    _, inverse = np.unique(classes, return_inverse=True)
    share = max_images / n
    keep = []
    for c in range(int(inverse.max()) + 1):
        rows = np.flatnonzero(inverse == c)
        count = min(len(rows), max(PROBE_PER_CLASS, math.ceil(len(rows) * share)))
        keep.append(rng.choice(rows, count, replace=False))
    rows = np.sort(np.concatenate(keep))
    return None if len(rows) == n else rows


@pipeline_errors()
def count_rows(ds: tf.data.Dataset) -> int:
    """The rows (examples) in the batches of `ds`: one pass of its input
    pipeline, not of any model. An element the pipeline cannot read is a
    `DataError` that names it (`pipeline_errors`)."""
    return int(
        ds.reduce(
            np.int64(0), lambda n, batch: n + tf.shape(batch[0], out_type=tf.int64)[0]
        )
    )


def probe_sample(
    ds: tf.data.Dataset,
    max_images: int,
    seed: int,
    batch_size: int,
    labels=None,
    total: int | None = None,
    task: str | None = None,
) -> tuple[tf.data.Dataset, int | None]:
    """The batches of a sample of `ds`'s rows, and how many rows it was drawn
    from: `(dataset, total)`, or `(ds, None)` when `ds` holds at most
    `max_images` rows.

    `ds` yields batches in a fixed order; `labels` (or None) are its rows'
    labels in that order. With labels, the sample is `sample_rows`'. Without,
    each row is kept with chance `max_images / total`, by a draw seeded with
    `seed` and the row's position, so that a run repeats it; `total` (or a
    count of `ds`'s rows, one pass of its input pipeline, not of any model)
    is the number of rows. The rows keep their order and are batched by
    `batch_size`.
    """
    if labels is not None:
        rows = sample_rows(labels, max_images, seed, task)
        if rows is None:
            return ds, None
        total = len(labels)
        mask = np.zeros(total, dtype=bool)
        mask[rows] = True
        chosen = tf.constant(mask)

        def keep(index, _):
            return tf.gather(chosen, index)

    else:
        if total is None:
            total = count_rows(ds)
        if total <= max_images:
            return ds, None
        chance = max_images / total

        def keep(index, _):
            pair = tf.stack([tf.constant(seed, tf.int64), index])
            return tf.random.stateless_uniform((), seed=pair) < chance

    sampled = (
        ds.unbatch().enumerate().filter(keep).map(lambda _, row: row).batch(batch_size)
    )
    return sampled.prefetch(tf.data.AUTOTUNE), total


def sample_training_data(
    train, max_images: int, seed: int, batch_size: int = 32, task: str | None = None
) -> tuple:
    """`(train, validation, total)` for `probe_blocks`: a seeded sample of at
    most about `max_images` of `train`'s images (`probe_sample`), the validation
    split of a `DataBundle` (else None), and the number of images the sample was
    drawn from (None, with `train` unchanged, when there are not more).

    The labels of arrays, image folders and `.npz` bundles are known without a
    pass, so a classifier's sample is stratified (`sample_rows`); the images
    of a `tf.data` input or a TFDS bundle are drawn one by one.
    """
    validation = None
    if isinstance(train, DataBundle):
        validation = train.validation
        labels, total = train.labels, train.num_train
        if train.unshuffled is not None:  # the order `labels` has
            data = train.unshuffled
        else:
            data, labels = train.train, None  # a shuffled order: drawn one by one
    else:
        data = _batches(train, batch_size, "train")
        arrays = isinstance(train, (tuple, list))
        labels, total = (np.asarray(train[1]), None) if arrays else (None, None)
    sampled, total = probe_sample(
        data, max_images, seed, batch_size, labels, total, task
    )
    if total is None:
        return train, validation, None
    return sampled, validation, total


def _batches(data, batch_size: int, what: str) -> tf.data.Dataset:
    """Unshuffled batches of (image, label) from arrays or a dataset."""

    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ConfigError(
            f"Expected batch_size as an integer >= 1. Received: {batch_size!r}"
        )
    return as_dataset(data, batch_size, False, None, what)


def _extractor(
    base: Base, positions: list[int], ds: tf.data.Dataset, pixels: bool = False
) -> keras.Model:
    """Images in, the pooled output of every probed block out (one model).

    With `pixels`, a last output holds the raw input pixels, average-pooled to at
    most 32x32 and flattened: the no-transfer baseline.
    """
    shape = tuple(base.input_shape)
    given = tuple(ds.element_spec[0].shape[1:])
    if any(d is None for d in shape):
        shape = given
    # RGB images for a grayscale base: converted as build_model's model does.
    grayscale = rgb_into_gray(shape, given)
    if grayscale:
        shape = (*shape[:-1], 3)
    outputs = block_outputs(base.model, base.block_map, positions)
    multi = keras.Model(base.model.inputs[0], outputs, name=f"{base.model.name}_probe")
    inputs = keras.Input(shape=shape, name="image")
    x = Preprocessing(base.preprocessing, grayscale=grayscale, name="preprocessing")(
        inputs
    )
    maps = multi(x)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    pooled = []
    for i, tensor in enumerate(maps):
        rank = len(tensor.shape)
        if rank == 4:
            tensor = keras.layers.GlobalAveragePooling2D(name=f"pool_{i}")(tensor)
        elif rank == 3:
            tensor = keras.layers.GlobalAveragePooling1D(name=f"pool_{i}")(tensor)
        elif rank != 2:
            tensor = keras.layers.Flatten(name=f"pool_{i}")(tensor)
        pooled.append(tensor)
    if pixels:
        pooled.append(_pixels(inputs))
    return keras.Model(inputs, pooled, name="probe_features")


def _pixels(images):
    """Raw pixels, average-pooled to at most 32x32, flattened."""
    x = images
    if len(x.shape) == 4 and x.shape[1] and x.shape[2]:
        factor = max(1, math.ceil(max(x.shape[1], x.shape[2]) / 32))
        if factor > 1:
            x = keras.layers.AveragePooling2D(
                factor, padding="same", name="pixels_pool"
            )(x)
    return keras.layers.Flatten(name="pixels")(x)


def _features(run, ds: tf.data.Dataset, count: int, what: str = "data"):
    """One inference pass: pooled features per probed block, the labels, and
    the sample weights (checked, one per image) or None."""
    parts: list[list[np.ndarray]] = [[] for _ in range(count)]
    labels, weights = [], []
    dtype = run.input_signature[0].dtype
    for batch in ds:
        images, y = batch[0], batch[1]
        outs = run(tf.cast(images, dtype))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for part, out in zip(parts, outs, strict=True):
            part.append(np.asarray(out, dtype=np.float32))
        labels.append(np.asarray(y))
        if len(batch) > 2:
            weights.append(batch_weights(np.asarray(batch[2]), len(labels[-1]), what))
    if not labels:
        raise DataError("The data is empty: no batch to probe. Pass labelled images.")
    labels = np.concatenate(labels)
    checked = None
    if weights:
        checked = check_sample_weights(np.concatenate(weights), len(labels), what)
    return [np.concatenate(p) for p in parts], labels, checked


def block_features(
    base: Base, positions: list[int], data, batch_size: int = 32
) -> tuple[list[np.ndarray], np.ndarray]:
    """The probe's forward pass on its own: pooled features of blocks, and labels.

    The frozen base runs once over `data` in inference mode, behind its own
    preprocessing; the global-average-pooled output of every block in
    `positions` comes out of that one pass (as in `probe_blocks`).
    `tltf.rank_bases` scores candidate bases with it.

    Args:
        base: Base. The loaded base.
        positions: list of int. Block positions in `base.block_map`, bottom to top.
        data: `(images, labels)` arrays or a tf.data.Dataset of them, in a fixed
            order; the images must have the base's input size when it is fixed.
        batch_size: int. Batch size for arrays. Defaults to 32.

    Returns:
        `(features, labels)`: one float32 array `(n, width)` per position, and
        the labels as read.
    """
    ds = _batches(data, batch_size, "data")
    extractor = _extractor(base, positions, ds)

    run = inference_function(extractor)

    features, labels, _ = _features(run, ds, len(positions))
    return features, labels


def _hold_out(x, y, w, fraction: float, seed: int):
    n = len(y)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 2:
        raise DataError(
            f"Too few training examples ({n}) to hold out a validation set. Pass "
            "validation_data= or more data."
        )
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    if w is not None and not (w[train].any() and w[val].any()):
        raise DataError(
            "The held-out share of the data, or the rest, has only images of "
            "sample weight 0: pass validation_data= or weigh more images."
        )
    split = (None, None) if w is None else (w[train], w[val])
    return [f[train] for f in x], y[train], [f[val] for f in x], y[val], *split


def _class_labels(y_train: np.ndarray, y_val: np.ndarray):
    """Class indices from index, one-hot or binary labels; and the class count."""

    def to_index(y, what):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
                raise DataError(
                    f"probe_blocks needs one class per {what} example (class indices "
                    "or one-hot rows); these look like multi-label or soft targets: "
                    "pass task='multilabel' (0/1 rows) or task='regression'."
                )
            return y.argmax(axis=1)
        y = y.reshape(len(y), -1)[:, 0] if y.ndim > 1 else y
        if not np.all(np.equal(np.mod(y, 1), 0)) or (len(y) and y.min() < 0):
            raise DataError(
                f"probe_blocks needs class labels (integers >= 0); the {what} labels "
                f"are not (min {y.min()}, e.g. {y[:3].tolist()}). For regression "
                "targets pass task='regression'."
            )
        return y.astype(np.int64)

    a, b = to_index(y_train, "train"), to_index(y_val, "validation_data")
    classes = int(max(a.max(), b.max()) + 1)
    if len(np.unique(a)) < 2:
        raise DataError(
            "probe_blocks needs at least 2 classes in the training data. Received "
            f"only class {a[0]}."
        )
    return a, b, classes


def _targets(y: np.ndarray, task: str) -> np.ndarray:
    """Regression targets or multi-label rows as float64 (n, k), checked."""
    t = np.asarray(y, dtype=np.float64)
    t = t.reshape(len(t), -1)
    if not np.all(np.isfinite(t)):
        raise DataError(
            "probe_blocks needs finite targets; some are NaN or infinite. Drop or "
            "fill those examples."
        )
    if task == "multilabel" and not np.all((t == 0) | (t == 1)):
        raise DataError(
            "probe_blocks(task='multilabel') needs 0/1 label rows (one column per "
            f"label). Received values such as {np.unique(t)[:5].tolist()}."
        )
    return t


def _standardised(x_train: np.ndarray, x_val: np.ndarray, weight=None):
    """Both feature sets standardised by the training statistics (weighted by
    `weight`, one per training row, where given), constant columns dropped;
    None when every column is constant."""
    x = np.asarray(x_train, dtype=np.float64)
    v = np.asarray(x_val, dtype=np.float64)
    mean = np.average(x, axis=0, weights=weight)
    std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weight))
    keep = std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0)))
    if not keep.any():
        return None
    return (x[:, keep] - mean[keep]) / std[keep], (v[:, keep] - mean[keep]) / std[keep]


def ridge_r2_probe(
    x_train: np.ndarray,
    t_train: np.ndarray,
    x_val: np.ndarray,
    t_val: np.ndarray,
    sample_weight: np.ndarray | None = None,
    val_weight: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Fits ridge regression; returns val R², leave-one-out R², L2.

    The regression twin of `ridge_probe` (see `ridge_regression`): features are
    standardised with the training statistics, the L2 strength is the one with
    the lowest exact leave-one-out squared error. R² is one minus the squared
    error over that of predicting the training mean, pooled over the target
    columns; on 0/1 labels it is the Brier skill score.

    Args:
        x_train: array (n, d). Training features.
        t_train: array (n, k). Training targets.
        x_val: array (m, d). Validation features.
        t_val: array (m, k). Validation targets.
        sample_weight: array (n,) or None. Each training example's weight in
            the statistics, the fit and the leave-one-out R² (with weights, R²
            compares weighted squared errors). Defaults to None.
        val_weight: array (m,) or None. Each validation example's weight in
            the validation R². Defaults to None.

    Returns:
        `(val_r2, loo_r2, l2)`.
    """
    t_train = np.asarray(t_train, dtype=np.float64).reshape(len(x_train), -1)
    t_val = np.asarray(t_val, dtype=np.float64).reshape(len(x_val), -1)
    mean = np.average(t_train, axis=0, weights=sample_weight)

    def r2(predictions, targets, weight):
        w = np.ones(len(targets)) if weight is None else np.asarray(weight, float)
        total = float(w @ np.sum((targets - mean) ** 2, axis=1))
        error = float(w @ np.sum((targets - predictions) ** 2, axis=1))
        return 1.0 - error / max(total, 1e-300)

    z = _standardised(x_train, x_val, sample_weight)
    if z is None:  # Constant features: only the mean is left.
        return (
            r2(mean, t_val, val_weight),
            r2(mean, t_train, sample_weight),
            math.inf,
        )
    fit = ridge_regression(z[0], t_train, sample_weight)
    return (
        r2(z[1] @ fit.weights + fit.prior, t_val, val_weight),
        r2(fit.loo, t_train, sample_weight),
        fit.l2,
    )


def ridge_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: int,
    sample_weight: np.ndarray | None = None,
    val_weight: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Fits a ridge linear classifier; returns val accuracy, LOO accuracy, L2.

    Features are standardised with the (weighted) training statistics;
    targets are one-hot rows. One eigendecomposition gives, for every L2
    strength of the grid, the exact leave-one-out predictions on the training
    set (via the diagonal of the hat matrix); the strength with the best
    leave-one-out accuracy (ties: lower leave-one-out squared error) is used
    for the validation predictions (see `ridge_fit`).

    Args:
        x_train: array (n, d). Training features.
        y_train: array (n,). Training class indices.
        x_val: array (m, d). Validation features.
        y_val: array (m,). Validation class indices.
        classes: int. Number of classes.
        sample_weight: array (n,) or None. Each training example's weight in
            the fit and the leave-one-out accuracy (`ridge_fit`). Defaults to
            None.
        val_weight: array (m,) or None. Each validation example's weight in
            the validation accuracy. Defaults to None.

    Returns:
        `(val_accuracy, loo_accuracy, l2)`.
    """
    standardised = _standardised(x_train, x_val, sample_weight)
    if standardised is None:  # Constant features: only the class prior is left.
        prior = np.bincount(y_train, weights=sample_weight, minlength=classes)
        guess = int(np.argmax(prior))
        return (
            float(np.average(y_val == guess, weights=val_weight)),
            float(np.average(y_train == guess, weights=sample_weight)),
            math.inf,
        )
    z, zv = standardised
    fit = ridge_fit(z, y_train, classes, sample_weight)
    predictions = zv @ fit.weights + fit.prior
    val_acc = float(np.average(predictions.argmax(axis=1) == y_val, weights=val_weight))
    return val_acc, loo_accuracy(fit.loo, y_train, sample_weight), fit.l2


def scorable(y: np.ndarray) -> np.ndarray:
    """The training examples that leave-one-out can score: those whose class
    has another example (left out, an only example leaves its class with none,
    so no classifier could name it).

    Args:
        y: array (n,). Class indices.

    Returns:
        A boolean array (n,).
    """
    y = np.asarray(y, dtype=np.int64)
    return np.bincount(y)[y] >= 2


def loo_accuracy(
    scores: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """Leave-one-out accuracy over the examples `scorable` keeps; 0.0 if none.

    Args:
        scores: array (n, classes). Leave-one-out class scores.
        y: array (n,). Class indices.
        sample_weight: array (n,) or None. Each example's weight (a class
            weight, say): the accuracy is then the weighted share of correct
            examples. Defaults to None (every example counts once).
    """
    keep = scorable(y)
    if not keep.any():
        return 0.0
    correct = scores[keep].argmax(axis=1) == np.asarray(y)[keep]
    if sample_weight is None:
        return float(np.mean(correct))
    weight = np.asarray(sample_weight, dtype=np.float64)[keep]
    return float(weight @ correct / weight.sum()) if weight.sum() > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class RidgeFit:
    """A closed-form ridge classifier (see `ridge_fit`).

    Attributes:
        weights: np.ndarray (d, classes). Class scores are `z @ weights + prior`.
        prior: np.ndarray (classes,). The intercept: the class frequencies
            (fit with `sample_weight`: the weighted frequencies, less the
            weighted mean row's scores).
        loo: np.ndarray (n, classes). The exact leave-one-out class scores of
            the training examples.
        l2: float. The L2 strength chosen.
    """

    weights: np.ndarray
    prior: np.ndarray
    loo: np.ndarray
    l2: float


def sigmoid(z) -> np.ndarray:
    """The logistic function, without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def ridge_fit(
    z: np.ndarray,
    y: np.ndarray,
    classes: int,
    sample_weight: np.ndarray | None = None,
) -> RidgeFit:
    """Least squares on one-hot targets, L2 strength chosen by leave-one-out.

    `z` should be standardised (no intercept is fitted beyond the class prior).
    One eigendecomposition (of `z.T @ z` or `z @ z.T`, the smaller) gives the
    exact leave-one-out scores for every strength of the grid; the one with the
    best leave-one-out accuracy (ties: lower squared error) is kept.

    With `sample_weight`, each example's squared error counts that many times
    (weighted least squares, an intercept fitted at the weighted means), the
    leave-one-out scores are still exact, and the strength is chosen by the
    weighted accuracy: a class weight of 3 counts each of that class's images
    as 3, as `class_weight` does in Keras's loss.

    Args:
        z: array (n, d). Standardised training features.
        y: array (n,). Class indices.
        classes: int. Number of classes.
        sample_weight: array (n,) or None. Weights >= 0, not all 0. Defaults
            to None (every example counts once).

    Returns:
        A `RidgeFit`.

    Example:

    >>> z = np.array([[1.0], [-1.0], [0.9], [-1.1]])
    >>> ridge_fit(z, np.array([1, 0, 1, 0]), 2).weights.shape
    (1, 2)
    """
    y = np.asarray(y)
    w = None if sample_weight is None else _unit_mean(sample_weight, len(y))

    def score(loo, residual):
        if w is None:
            return (loo_accuracy(loo, y), -float(np.mean(residual**2)))
        return (loo_accuracy(loo, y, w), -float(np.mean(w[:, None] * residual**2)))

    return _ridge(z, np.eye(classes)[y], score, w)


def _unit_mean(sample_weight, n: int) -> np.ndarray:
    """Example weights scaled to a mean of 1 (a weight of 0 stays exactly 0,
    so that the scores ignore it; `_ridge` floors it where it divides)."""
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(
            f"Expected sample_weight as {n} finite weights >= 0, not all 0. "
            f"Received: shape {w.shape}"
        )
    return w * (n / w.sum())


def ridge_regression(
    z: np.ndarray, targets: np.ndarray, sample_weight: np.ndarray | None = None
) -> RidgeFit:
    """Least squares on real targets, L2 strength chosen by leave-one-out error.

    The regression twin of `ridge_fit`: the same eigendecomposition and grid,
    the strength with the lowest exact leave-one-out squared error kept. Also
    fits 0/1 targets (multi-label rows), whose scores are then probabilities
    of a sort (see `tltf.schedule.prepare_head` for turning them into logits).

    Args:
        z: array (n, d). Standardised training features.
        targets: array (n,) or (n, k). Real targets.
        sample_weight: array (n,) or None. Weights >= 0, not all 0: each
            example's squared error counts that many times, in the fit and in
            the leave-one-out error that picks the L2 strength (as in
            `ridge_fit`). Defaults to None.

    Returns:
        A `RidgeFit`: `prior` holds the targets' (weighted) means, `loo` the
        exact leave-one-out predictions.

    Example:

    >>> z = np.array([[1.0], [-1.0], [0.5], [-0.5]])
    >>> fit = ridge_regression(z, np.array([2.0, -2.0, 1.0, -1.0]))
    >>> fit.weights.shape, fit.prior
    ((1, 1), array([0.]))
    """
    t = np.asarray(targets, dtype=np.float64).reshape(len(z), -1)
    w = None if sample_weight is None else _unit_mean(sample_weight, len(t))

    def score(loo, residual):
        return (-float(np.average(np.mean(residual**2, axis=1), weights=w)),)

    return _ridge(z, t, score, w)


def effective_count(sample_weight: np.ndarray | None, n: int) -> float:
    """How many equally weighted examples `sample_weight` is worth (Kish's
    effective sample size, `sum(w)**2 / sum(w**2)`); `n` without weights."""
    if sample_weight is None:
        return n
    w = np.asarray(sample_weight, dtype=np.float64)
    return float(w.sum() ** 2 / max(float(w @ w), 1e-300))


def _ridge(z: np.ndarray, targets: np.ndarray, score, w=None) -> RidgeFit:
    """`ridge_fit` and `ridge_regression`: `score(loo, residual)` picks the L2.

    `w`: example weights of mean 1 (`_unit_mean`), or None. Weighted, the
    problem is centred at the weighted means and each row scaled by the square
    root of its weight: an unweighted ridge, whose leave-one-out residuals are
    mapped back by that root (the intercept's leverage is then `w / n`).
    """
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    root, center = None, None
    if w is not None:
        # The floor keeps a weight of 0 from dividing by 0 in the residuals.
        root = np.sqrt(np.maximum(w, 1e-12))[:, None]
        center = w @ z / n
        z = (z - center) * root
        prior = w @ targets / n
        t = (targets - prior) * root
    else:
        prior = targets.mean(axis=0)
        t = targets - prior
    if n >= z.shape[1]:
        s2, vecs = np.linalg.eigh(z.T @ z)
        good = s2 > 1e-10 * max(s2.max(), 1e-300)
        s2, vecs = s2[good], vecs[:, good]
        u = (z @ vecs) / np.sqrt(s2)
    else:
        s2, u = np.linalg.eigh(z @ z.T)
        good = s2 > 1e-10 * max(s2.max(), 1e-300)
        s2, u = s2[good], u[:, good]
        vecs = (z.T @ u) / np.sqrt(s2)
    ut = u.T @ t
    u2 = u**2
    best = None
    # All-zero features (a dead block) leave no eigenvalue: any scale will do.
    for l2 in _L2_GRID * (s2.mean() if s2.size else 1.0):
        shrink = s2 / (s2 + l2)
        fitted = u @ (shrink[:, None] * ut)
        leverage = (1.0 if w is None else w) / n + u2 @ shrink
        residual = (t - fitted) / np.maximum(1.0 - leverage, 1e-6)[:, None]
        if root is not None:  # back from the rows scaled by their weight's root
            residual = residual / root
            loo = t / root - residual + prior
        else:
            loo = t - residual + prior
        value = score(loo, residual)
        if best is None or value > best[0]:
            best = (value, l2, loo)
    _, l2, loo = best
    weights = vecs @ ((np.sqrt(s2) / (s2 + l2))[:, None] * ut)
    if center is not None:  # scores are z @ weights + prior on uncentred rows
        prior = prior - center @ weights
    return RidgeFit(weights=weights, prior=prior, loo=loo, l2=float(l2))


#: The powers `group_weights` chooses among by leave-one-out accuracy. A group's
#: weight is its own accuracy over the best group's, to the power (times its
#: width balance): 0 leaves the accuracy out; at 4, a group at 90 % of the best
#: keeps 66 % of its scale and one at chance level on ten classes almost none.
GROUP_WEIGHT_POWERS = (0, 1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class GroupWeights:
    """Weights for groups of feature columns (see `group_weights`).

    Attributes:
        weights: np.ndarray (groups,). The scale of each group's columns, the
            width balance included; the best group's weight is 1.0.
        accuracy: np.ndarray (groups,). Each group's own leave-one-out accuracy.
        power: float. The power chosen from `GROUP_WEIGHT_POWERS`.
        fit: RidgeFit. The ridge classifier on the weighted features.
    """

    weights: np.ndarray
    accuracy: np.ndarray
    power: float
    fit: RidgeFit


def group_accuracy(
    z: np.ndarray, y: np.ndarray, classes: int, widths, sample_weight=None
) -> np.ndarray:
    """Each group's own leave-one-out accuracy (one `ridge_fit` per group).

    Args:
        z: array (n, d). Standardised features.
        y: array (n,). Class indices.
        classes: int. Number of classes.
        widths: list of int. The widths of the groups, in column order; they
            sum to d.
        sample_weight: array (n,) or None. Example weights (`ridge_fit`); the
            accuracies are then weighted. Defaults to None.

    Returns:
        An array (groups,) of accuracies.
    """
    edges = np.cumsum([0, *widths])
    return np.array(
        [
            loo_accuracy(
                ridge_fit(z[:, a:b], y, classes, sample_weight).loo, y, sample_weight
            )
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
    )


def group_weights(
    z: np.ndarray,
    y: np.ndarray,
    classes: int,
    widths,
    accuracy=None,
    balance=True,
    sample_weight=None,
) -> GroupWeights:
    """Weights for groups of feature columns (a head's blocks), by leave-one-out.

    Two factors make a group's weight:

    - **Width balance.** Each group's columns are scaled by one over the square
      root of its width (its number of columns), so that every group brings the
      same total variance, whatever its width (on standardised columns a
      group's variance grows with its width; these are multiple-kernel
      learning's unit-trace kernels). The ridge then weighs each block alike,
      where VGG16's two 512-column top blocks would otherwise drown its
      64-column first one.
    - **Accuracy.** One ridge classifier (`ridge_fit`) per group scores how well
      the group alone predicts the labels, by exact leave-one-out accuracy on
      the training examples. The group's accuracy over the best group's is
      raised to a power chosen from `GROUP_WEIGHT_POWERS` by the leave-one-out
      accuracy of the ridge classifier on all the weighted features (ties go
      to the lower power; 0 leaves the accuracy out). On cross-domain data one
      low block often carries the task, and equal weights across every block
      dilute it; where every block helps, the choice stays near 0.

    Args:
        z: array (n, d). Standardised features.
        y: array (n,). Class indices.
        classes: int. Number of classes.
        widths: list of int. The widths of the groups, in column order; they
            sum to d.
        accuracy: array or None. Each group's own accuracy, when the caller
            has it from `group_accuracy` already. Defaults to None.
        balance: bool. Balance the widths; False weighs by accuracy alone (the
            head before 2026-12-05, for `benchmarks/width_balance.py`).
            Defaults to True.
        sample_weight: array (n,) or None. Example weights: every fit and
            accuracy is weighted (`ridge_fit`). Defaults to None.

    Returns:
        A `GroupWeights`.
    """
    if accuracy is None:
        accuracy = group_accuracy(z, y, classes, widths, sample_weight)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    top = int(np.argmax(accuracy))
    ratio = accuracy / max(float(accuracy[top]), 1e-12)
    widths = np.asarray(widths, dtype=np.int64)
    factor = np.sqrt(widths[top] / widths) if balance else np.ones(len(widths))
    best = None
    for power in GROUP_WEIGHT_POWERS:
        weights = ratio**power * factor
        fit = ridge_fit(z * np.repeat(weights, widths), y, classes, sample_weight)
        score = loo_accuracy(fit.loo, y, sample_weight)
        if best is None or score > best[0]:
            best = (score, GroupWeights(weights, accuracy, float(power), fit))
    return best[1]


def recommend(
    rows: list[dict],
    num_val: int,
    tolerance: float | None = None,
    scoring: str = "validation",
    metric: str = "accuracy",
) -> tuple[str | None, int, str, float]:
    """The cut and unfreeze depth from probe scores (see the module docstring).

    Args:
        rows: list of dict. `ProbeResult.table` rows, bottom to top; the last
            row is the base's top block.
        num_val: int or float. Validation examples (for the default
            tolerance); with sample weights, their effective count
            (`effective_count`).
        tolerance: float or None. Score differences up to this are ties.
            Defaults to max(0.01, standard error of the peak score): of a
            proportion for accuracy, `2 sqrt(R²) (1 - R²) / sqrt(n)` for R².
        scoring: str. What the scores are: "validation" or "leave-one-out"
            (for the wording of the reason). Defaults to "validation".
        metric: str. "accuracy" or "r2": the rows' `val_` key. Defaults to
            "accuracy".

    Returns:
        `(cut, unfreeze, reason, tolerance)`.
    """
    acc = [r[f"val_{metric}"] for r in rows]
    names = [r["block"] for r in rows]
    index = [r["index"] for r in rows]
    peak = int(np.argmax(acc))  # the first (shallowest) maximum
    if tolerance is None:
        p, n = acc[peak], max(1, num_val)
        if metric == "accuracy":
            tolerance = max(0.01, math.sqrt(p * (1 - p) / n))
        else:
            tolerance = max(0.01, 2 * math.sqrt(max(p, 0.0)) * (1 - p) / math.sqrt(n))
    elif (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not (0 <= tolerance < 1)
    ):
        raise ConfigError(
            f"Expected tolerance in [0, 1) or None. Received: tolerance={tolerance!r}"
        )
    tol = float(tolerance)
    last = len(rows) - 1
    measure = "Leave-one-out" if scoring == "leave-one-out" else "Val"
    measure += " " + MEASURES[metric]
    head = (
        f"{measure} of a linear probe peaks at {names[peak]} "
        f"({acc[peak]:.3f}); "
        f"differences up to {tol:.3f} count as ties. "
    )
    if acc[last] < acc[peak] - tol:
        cut, top = names[peak], peak
        why_cut = (
            f"The top block {names[last]} reaches only {acc[last]:.3f}: the blocks "
            f"above {names[peak]} lose information this task needs, so build on "
            f"{names[peak]}: cut={names[peak]!r}. "
        )
    else:
        cut, top = None, last
        why_cut = (
            f"The top block {names[last]} ({acc[last]:.3f}) is within the tolerance "
            "of the peak, so keep the whole base: cut=None. "
        )
    knee = next(i for i in range(top + 1) if acc[i] >= acc[peak] - tol)
    unfreeze = max(1, index[top] - index[knee])
    if knee == top:
        why_unfreeze = (
            f"No probed block below {names[top]} comes within the tolerance of the "
            f"peak (the score still rises up to it), so its features transfer as they "
            "are: unfreeze=1 (the top block only)."
        )
    else:
        why_unfreeze = (
            f"The score is already within the tolerance of the peak at {names[knee]}; "
            f"the {unfreeze} block(s) above it, up to {names[top]}, add nothing a "
            f"linear probe can read for this task, so adapt them: unfreeze={unfreeze}."
        )
    return cut, unfreeze, head + why_cut + why_unfreeze, tol
