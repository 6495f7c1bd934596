"""Which base: rank candidate bases on the labelled data, before any training.

`rank_bases` answers "which backbone should I use?" without fine-tuning each
one. Every candidate runs once, frozen and in inference mode, over the same
labelled images, behind its own preprocessing (`tltf.probe.block_features`);
the global-average-pooled features of its top block (and, with `every`, of
more blocks in the same pass) are scored by three transferability estimates:

- **LogME** (You et al. 2021, "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning"): the log marginal likelihood (evidence) of
  the labels under Bayesian linear regression on the features, maximised over
  the prior precision alpha and the noise precision beta by MacKay's
  fixed-point iteration on one SVD of the features (`logme`). Classification
  labels become one-hot columns, one regression per class; the score is the
  mean over the columns of the log evidence per example. The features are the
  raw pooled ones, as in the paper (the score does not change when they are
  scaled by a constant).
- **kNN**: the leave-one-out accuracy of a k-nearest-neighbour classifier with
  cosine similarity (features centred, then L2-normalised; `knn_accuracy`).
  Each example's `k` nearest other examples vote, one vote each; a tie goes
  to the class with the larger summed similarity. `k` defaults to 5 (`knn=`).
- **ridge**: the exact leave-one-out accuracy of tltf's closed-form ridge
  probe (`tltf.probe.ridge_probe`, its L2 strength chosen by leave-one-out),
  at its best probed block; the row records that block.

LogME and kNN score the top block: the features that `build_model` puts its
head on (cut a base first, or pass a cut base, to rank a cut). For a
regression task (float targets), LogME regresses each target column; kNN
reports the leave-one-out R^2 of the mean target of the `k` nearest
neighbours; the ridge probe, a classifier, is left out (None).

Published comparisons (Agostinelli et al. 2022, "How stable are
Transferability Metrics evaluations?") find that these estimates often rank
bases differently, so `RankResult` reports all of them and how much their
rankings agree: Kendall's tau-b between each pair of scores.

Sizes. Every candidate sees the same images: all of them, or of more than
`max_images` (default `tltf.probe.PROBE_IMAGES`, 2,000) a seeded sample,
stratified by class where the labels are known without a pass, so that ranking
60,000 images costs a pass over 2,000 per base. The kNN score computes its
similarities a block of rows at a time (`_SIMILARITY_BLOCK`), so that its memory
grows with the examples, not with their square. A registry name, or a saved base
of a registry architecture (such as the shipped "demo" base), is built at
`input_shape`, which defaults to the data's image shape, as
`build_model(..., input_shape=)` builds it. A base whose input size is fixed
otherwise (a keras.Model, a `Base`, a saved custom base) gets the images
resized (bilinear) to its own input size inside the pass.

Errors fail fast: every candidate name is checked before the first forward
pass (an unknown name is a ConfigError naming the closest ones), and a
candidate that fails to load stops the ranking with an error that names it.

Why one module of about 800 lines: the three estimators (LogME's fixed point,
kNN, Kendall's tau) are small and used nowhere else, and `RankResult` (table,
plot, CSV) is their report, as `ProbeResult` is the probe's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tltf._checks import check_choice, check_positive_int, is_int
from tltf._io import atomic_write_csv, check_file_replaceable, csv_table
from tltf.bases.base import Base, check_load_kwargs, load_base
from tltf.bases.registry import get_spec, shipped_base_path
from tltf.data import DataBundle
from tltf.data.inputs import as_dataset, peek, pipeline_errors
from tltf.errors import (
    ConfigError,
    DataError,
    InputShapeError,
    ModelError,
    TltfError,
    WeightsError,
)
from tltf.probe import (
    PROBE_IMAGES,
    block_features,
    probe_sample,
    ridge_probe,
    sample_rows,
)
from tltf.reports import new_figure, save_figure

#: The scores `rank_bases` computes, in table order.
SCORES = ("logme", "knn", "ridge")

#: Columns of `RankResult.table` (and of its CSV).
COLUMNS = (
    "candidate",
    "base",
    *SCORES,
    *(f"{s}_rank" for s in SCORES),
    "features",
    "block",
    "seconds",
    "forward_seconds",
)

#: Iterations and relative tolerance (on the evidence) of LogME's fixed point.
_LOGME_ITERATIONS = 500
_LOGME_TOLERANCE = 1e-10


@dataclasses.dataclass(frozen=True)
class RankResult:
    """What `rank_bases` measured: scores, ranks, times and their agreement.

    Attributes:
        table: list of dict. One row per candidate, best first by `score`, with
            the keys of `COLUMNS`: "candidate" (its name), "base" (the loaded
            base's name), "logme", "knn", "ridge" (the scores; None where not
            computed), "logme_rank", "knn_rank", "ridge_rank" (1 is the best;
            ties share the better rank), "features" (the top block's pooled
            width), "block" (the ridge probe's best block; the top block for
            regression), "seconds" (load, forward pass and scores) and
            "forward_seconds" (the forward pass alone).
        score: str. The score that orders the table and picks `best`.
        agreement: dict. Kendall's tau-b between the candidates' values of
            each pair of scores, keyed "logme~knn" and so on (NaN with fewer
            than two candidates or when a score is constant).
        task: str. "classification" or "regression".
        num_examples: int. The labelled examples scored.
        num_classes: int or None. Classes (None for regression).
        knn: int. The k of the kNN score.
        seconds: float. Wall time of the whole ranking.
        failed: dict. `{candidate: error message}` for the candidates that
            could not be loaded or run on the data (weights not found offline,
            an input below the base's minimum, ...): the others are ranked
            without them. Empty when every candidate ran.
        sampled_from: int or None. The number of examples that the scored
            `num_examples` were sampled from (`rank_bases(max_images=)`), or
            None when every example was scored.
    """

    table: list
    score: str
    agreement: dict
    task: str
    num_examples: int
    num_classes: int | None
    knn: int
    seconds: float
    failed: dict = dataclasses.field(default_factory=dict)
    sampled_from: int | None = None

    @property
    def best(self) -> dict:
        """The row ranked first by `score` (the first candidate given on ties)."""
        return self.table[0]

    @property
    def ranking(self) -> list[str]:
        """The candidates' names, best first by `score`."""
        return [r["candidate"] for r in self.table]

    def to_dict(self) -> dict:
        """A JSON-serializable dict of everything in the result."""
        return dataclasses.asdict(self)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Writes the table as CSV (atomically) and returns the path.

        An existing file is replaced only if it is such a table: tltf never
        replaces a file it did not write (a ConfigError names it).
        """
        check_table_path(path)
        return atomic_write_csv(path, self.table, COLUMNS)

    def __str__(self) -> str:
        width = max(len("candidate"), *(len(r["candidate"]) for r in self.table))
        block = max(len("block"), *(len(str(r["block"])) for r in self.table))
        head = f"{'candidate':<{width}}" + "".join(
            f"  {name + ('*' if name == self.score else ''):>12}" for name in SCORES
        )
        lines = [head + f"  {'block':<{block}}  {'features':>8}  {'seconds':>7}"]
        for r in self.table:
            cells = "".join(
                f"  {'-':>12}"
                if r[name] is None
                else f"  {r[name]:>7.3f} ({r[name + '_rank']:>2})"
                for name in SCORES
            )
            lines.append(
                f"{r['candidate']:<{width}}{cells}  {r['block']!s:<{block}}  "
                f"{r['features']:>8}  {r['seconds']:>7.1f}"
            )
        examples = f"{self.num_examples} examples"
        if self.sampled_from is not None:
            examples = (
                f"a seeded sample of {self.num_examples} of {self.sampled_from} "
                "examples (max_images=None scores all)"
            )
        what = (
            f"{examples}, {self.num_classes} classes"
            if self.task == "classification"
            else f"{examples}, regression"
        )
        lines.append(
            f"best by {self.score}: {self.best['candidate']} ({what}; kNN k="
            f"{self.knn}; {self.seconds:.1f}s in all)"
        )
        if self.agreement and len(self.table) > 1:
            taus = ", ".join(
                f"{k} {v:+.2f}" if math.isfinite(v) else f"{k} n/a (a score is tied)"
                for k, v in self.agreement.items()
            )
            lines.append(f"agreement of the rankings (Kendall tau): {taus}")
        for message in self.failed.values():  # each names its candidate
            lines.append(f"not ranked: {message}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None):
        """Plots each score and the time per candidate, one panel each.

        Bars are in table order (best first by `score`); the best candidate of
        each score is drawn in a darker colour.

        Args:
            path: str or None. Also write the figure to this PNG file
                (atomically). Defaults to None.
            title: str or None. The title. Defaults to the task's description.

        Returns:
            A `matplotlib.figure.Figure`.
        """
        panels = [s for s in SCORES if any(r[s] is not None for r in self.table)]
        labels = {
            "logme": "LogME (log evidence / example)",
            "knn": f"kNN leave-one-out ({self.knn}-NN)",
            "ridge": "ridge probe leave-one-out",
            "seconds": "seconds (load + pass + scores)",
        }
        if self.task == "regression":
            labels["knn"] = f"kNN leave-one-out R^2 ({self.knn}-NN)"
        names = [r["candidate"] for r in self.table]
        count = len(panels) + 1
        figure = new_figure(
            path, figsize=(3.2 * count, max(2.4, 0.45 * len(names) + 1.2))
        )
        axes = figure.subplots(1, count, sharey=True, squeeze=False)[0]
        y = np.arange(len(names))
        for ax, key in zip(axes, [*panels, "seconds"], strict=True):
            values = [np.nan if r[key] is None else r[key] for r in self.table]
            top = np.nanargmax(values) if key != "seconds" else np.nanargmin(values)
            colors = ["C0" if i != top else "C3" for i in range(len(names))]
            ax.barh(y, values, color=colors, alpha=0.85)
            ax.set_title(labels[key], fontsize="small")
            ax.grid(axis="x", alpha=0.3)
            if key in ("knn", "ridge") and self.task == "classification":
                ax.set_xlim(0, 1.02)
        axes[0].set_yticks(y)
        axes[0].set_yticklabels(names)
        axes[0].invert_yaxis()
        what = (
            f"{self.num_classes} classes"
            if self.task == "classification"
            else "regression"
        )
        figure.suptitle(
            title
            or f"Ranking {len(names)} bases on {self.num_examples} examples ({what})",
            fontsize="medium",
        )
        figure.tight_layout()
        if path is not None:
            save_figure(figure, path)
        return figure


@pipeline_errors()
def rank_bases(
    candidates,
    data,
    *,
    score: str = "logme",
    every: int | None = None,
    knn: int = 5,
    input_shape: tuple | None = None,
    batch_size: int = 32,
    task: str = "auto",
    max_images: int | None = PROBE_IMAGES,
    seed: int = 0,
    verbose: int = 1,
    **load_kwargs,
) -> RankResult:
    """Ranks candidate bases for a task from one frozen forward pass each.

    Each candidate is loaded, run once over `data` (frozen, inference mode, its
    own preprocessing) and scored by LogME, a kNN leave-one-out accuracy and
    the ridge probe's leave-one-out accuracy (see the module docstring). No
    training happens: it takes seconds per base where fine-tuning takes
    minutes.

    Args:
        candidates: The bases to compare: a list of registry names
            ("vgg16", see `list_bases()`), "demo", folders of saved bases,
            `keras.Model`s or `Base`s; or a dict `{name: candidate}` to name
            them in the table.
        data: The labelled images: `(images, labels)` arrays, a tf.data.Dataset
            of `(image, label)` in a fixed order, or a `DataBundle` (its
            training data). Images are RGB in [0, 255], as for `fine_tune`.
        score: str. The score that orders the table and picks `best`: "logme",
            "knn" or "ridge". Defaults to "logme".
        every: int or None. Also probe every `every`-th block below the top in
            the same pass; the ridge score is then the best block's. Defaults
            to None (the top block only).
        knn: int. The k of the kNN score (at most the examples less one).
            Defaults to 5.
        input_shape: tuple or None. `(height, width, channels)` to build
            registry bases at. Defaults to the data's image shape.
        batch_size: int. Batch size of the forward pass (for arrays). Defaults
            to 32.
        task: str. "classification" (class indices or one-hot rows),
            "regression" (float targets) or "auto" (regression for a
            "regression" `DataBundle` or labels that are not all integers).
            Defaults to "auto".
        max_images: int or None. Score a seeded sample of at most about this
            many images when `data` holds more, the same images for every
            candidate: stratified by class where the labels are known without
            a pass (arrays, image folders, `.npz` files; at least
            `tltf.probe.PROBE_PER_CLASS` of each class), else drawn one by one
            (a `tf.data` input or a TFDS bundle, whose sample is then held in
            memory after the first candidate's pass). None scores every image.
            Defaults to `tltf.probe.PROBE_IMAGES` (2,000).
        seed: int. The seed of that sample. Defaults to 0.
        verbose: int. 1 prints a line per candidate and the table. Defaults
            to 1.
        **load_kwargs: Options of `load_base` used for every candidate:
            `weights`, `weights_dir`, and the like.

    Returns:
        A `RankResult`. A candidate that cannot be loaded (its weights not found
        offline, an input below its minimum size) or run on the data is left
        out of the table, named in `failed` with its error and in one printed
        line; the others are ranked as usual.

    Raises:
        ConfigError: for an unknown base name (naming the closest ones) or a
            bad argument, before any forward pass.
        DataError: for fewer than 2 classes, fewer than 2 examples per class on
            average, or data whose order changes between passes.
        WeightsError, InputShapeError or ModelError: when no candidate could be
            loaded and run (each error names its candidate).

    Example:

    >>> result = tltf.rank_bases(
    ...     ["demo", "vgg16"], (x, y), weights_dir="weights/")
    >>> result.best["candidate"]
    'vgg16'
    >>> result.plot("rank.png")
    """
    start = time.perf_counter()
    check_load_kwargs(load_kwargs, rank_bases, "rank_bases")
    named = _named(candidates)
    check_choice(score, SCORES, "score")
    check_choice(task, ("auto", "classification", "regression"), "task")
    knn = check_positive_int(knn, "knn")
    batch_size = check_positive_int(batch_size, "batch_size")
    if every is not None:
        every = check_positive_int(every, "every")
    if max_images is not None:
        max_images = check_positive_int(max_images, "max_images")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"Expected seed as an integer >= 0. Received: seed={seed!r}")
    bundle = data if isinstance(data, DataBundle) else None
    if isinstance(data, DataBundle):
        if task == "auto" and data.task == "regression":
            task = "regression"
        elif data.task == "multilabel":
            raise DataError(
                "rank_bases scores single-label classification or regression; this "
                "DataBundle is multi-label."
            )
        data = data.unshuffled if data.unshuffled is not None else data.train
    ds = as_dataset(data, batch_size, False, None, "data")
    if verbose and len(ds.element_spec) == 3:
        print(
            "tltf: note: rank_bases scores every image alike: LogME and the "
            "linear probe here do not take the sample weights (fine_tune and "
            "probe_blocks do)."
        )
    image_shape = tuple(ds.element_spec[0].shape[1:])
    if input_shape is None:
        if len(image_shape) != 3 or any(d is None for d in image_shape):
            raise DataError(
                "rank_bases needs images of one size to build every base at; this "
                f"data's image shape is {image_shape}. Pass input_shape=(height, "
                "width, 3), or resize the images (tltf.load_data(image_size=...))."
            )
        input_shape = image_shape
    if not isinstance(data, tf.data.Dataset):
        _targets(peek(data, "data")[1], task)  # bad labels fail before any pass
    for name, candidate in named.items():
        _check_name(name, candidate)
    ds, total = _sample(ds, data, bundle, task, max_images, seed, batch_size)

    rows, labels, kind, classes = [], None, None, None
    failed: dict[str, TltfError] = {}
    for name, candidate in named.items():
        tick = time.perf_counter()
        try:
            base, positions, features, y = _forward(
                name,
                candidate,
                (input_shape, image_shape),
                load_kwargs,
                ds,
                every,
                batch_size,
            )
        except (WeightsError, InputShapeError, ModelError) as error:
            # One candidate's problem: the others are still ranked (keras-tuner
            # keeps going past a failed trial the same way).
            if len(named) == 1:
                raise
            failed[name] = error
            if verbose:
                print(f"tltf: not ranked: {error}", flush=True)
            continue
        forward = time.perf_counter() - tick
        if labels is None:
            labels = y
            kind, targets, classes = _targets(y, task)
        elif y.shape != labels.shape or not np.array_equal(y, labels):
            raise DataError(
                "rank_bases reads the data once per candidate, and this data's "
                f"labels came in another order for {name!r}. Pass arrays, or a "
                "dataset that is not shuffled on each pass."
            )
        rows.append(
            _score_row(name, base, positions, features, targets, kind, classes, knn)
        )
        rows[-1]["forward_seconds"] = round(forward, 3)
        rows[-1]["seconds"] = round(time.perf_counter() - tick, 3)
        if verbose:
            print(
                f"tltf: ranked {name} ({rows[-1]['seconds']:.1f}s: "
                + ", ".join(
                    f"{s} {rows[-1][s]:.3f}" for s in SCORES if rows[-1][s] is not None
                )
                + ")",
                flush=True,
            )
        del base, features

    if not rows:  # every candidate failed: the first error, the others named
        first = next(iter(failed.values()))
        if len(failed) > 1:
            others = "; ".join(str(e) for e in list(failed.values())[1:])
            raise type(first)(f"{first} (and: {others})") from None
        raise first
    if kind == "regression" and score == "ridge":
        raise ConfigError(
            "score='ridge' ranks by the ridge probe, a classifier: it is not "
            "computed for regression targets. Use score='logme' or 'knn'."
        )
    _add_ranks(rows)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][f"{score}_rank"], i))
    result = RankResult(
        table=[rows[i] for i in order],
        score=score,
        agreement=_agreement(rows),
        task=kind,
        num_examples=int(len(labels)),
        num_classes=classes,
        knn=knn,
        seconds=round(time.perf_counter() - start, 3),
        failed={name: str(error) for name, error in failed.items()},
        sampled_from=total,
    )
    if verbose:
        print(result)
    return result


def _sample(ds, data, bundle, task, max_images, seed, batch_size):
    """`(batches, total)`: the batches that every candidate reads, a seeded
    sample of at most about `max_images` of `ds`'s rows when it has more, and
    the number of rows it was drawn from (None, with `ds` itself, when not).

    Known labels (arrays, or a bundle's) give a stratified sample
    (`tltf.probe.sample_rows`) that only those rows are read for. Otherwise each
    row is kept by a seeded draw (`tltf.probe.probe_sample`: a first pass of the
    input pipeline counts the rows), and the sample is cached in memory by the
    first candidate's pass, so that the others read it from there.
    """
    if max_images is None:
        return ds, None
    labels, total = None, bundle.num_train if bundle is not None else None
    if bundle is not None and bundle.unshuffled is not None:
        labels = bundle.labels
    elif isinstance(data, (tuple, list)):
        labels = np.asarray(data[1])
    if labels is None:
        sampled, total = probe_sample(ds, max_images, seed, batch_size, None, total)
        return (ds, None) if total is None else (sampled.cache(), total)
    kind = _targets(labels, task)[0]
    rows = sample_rows(
        labels, max_images, seed, "regression" if kind == "regression" else None
    )
    if rows is None:
        return ds, None
    if bundle is None:
        subset = tuple(np.asarray(part)[rows] for part in data)
        return as_dataset(subset, batch_size, False, None, "data"), len(labels)
    return bundle.subset(rows).unshuffled, len(labels)  # its labels: it selects


# -- candidates ----------------------------------------------------------------
def _named(candidates) -> dict:
    """`{name: candidate}` from a dict or a list (or a single candidate)."""
    if isinstance(candidates, Mapping):
        named = {str(k): v for k, v in candidates.items()}
    else:
        if isinstance(candidates, (str, os.PathLike, keras.Model, Base)):
            candidates = [candidates]
        try:
            items = list(candidates)
        except TypeError:
            raise ConfigError(
                "Expected candidates as a list of bases (registry names, 'demo', "
                "saved base folders, keras.Models or Bases) or a dict {name: base}. "
                f"Received: {type(candidates).__name__}"
            ) from None
        names = [_name_of(c) for c in items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(
                f"Two candidates share the name {twice[0]!r}. Pass a dict "
                "{name: base} to name them apart."
            )
        named = dict(zip(names, items, strict=True))
    if not named:
        raise ConfigError("Expected at least one candidate base. Received none.")
    return named


def _name_of(candidate) -> str:
    if isinstance(candidate, Base):
        return candidate.name
    if isinstance(candidate, keras.Model):
        return candidate.name
    if isinstance(candidate, (str, os.PathLike)):
        return os.fspath(candidate)
    raise ConfigError(
        "Expected each candidate as a registry name, 'demo', a saved base folder, a "
        f"keras.Model or a Base. Received: {type(candidate).__name__}"
    )


def _check_name(name: str, candidate) -> None:
    """A registry name that does not exist fails here, before any forward pass."""
    if not isinstance(candidate, str) or shipped_base_path(candidate) is not None:
        return
    if os.sep in candidate or Path(candidate).exists():
        if not Path(candidate).expanduser().exists():
            raise ModelError(
                f"rank_bases: candidate {candidate!r} does not exist. Pass a "
                "registry name (see tltf.list_bases()), 'demo', a saved base "
                "folder or a model file."
            )
        return
    get_spec(candidate)  # UnknownBaseError (a ConfigError) with the closest names


def _forward(name, candidate, shapes, load_kwargs, ds, every, batch_size):
    """Loads a candidate and runs it over the data once: `(base, positions,
    pooled features of those blocks, labels)`. Errors name the candidate."""
    input_shape, image_shape = shapes
    base = _load(name, candidate, input_shape, load_kwargs)
    n = len(base.block_map)
    positions = sorted(range(n - 1, -1, -every)) if every else [n - 1]
    try:
        features, y = block_features(
            base, positions, _resized(ds, base, image_shape), batch_size
        )
    except (tf.errors.OpError, ValueError) as error:
        if isinstance(error, TltfError):
            raise
        raise ModelError(
            f"rank_bases: candidate {name!r} failed on the data: {error}"
        ) from None
    return base, positions, features, y


def _load(name: str, candidate, input_shape, load_kwargs) -> Base:
    """The candidate as a Base at `input_shape`; errors name the candidate."""
    try:
        try:
            return load_base(candidate, input_shape=input_shape, **load_kwargs)
        except InputShapeError:
            if isinstance(candidate, str) and not (
                os.sep in candidate or Path(candidate).exists()
            ):
                raise
            # A saved custom base: load it at its own size (images are resized).
            return load_base(candidate, **load_kwargs)
    except TltfError as error:
        raise type(error)(f"rank_bases: candidate {name!r}: {error}") from None
    except (OSError, ValueError) as error:
        raise ModelError(
            f"rank_bases: candidate {name!r} could not be loaded: {error}"
        ) from None


def _resized(ds: tf.data.Dataset, base: Base, image_shape) -> tf.data.Dataset:
    """`ds` with images resized to the base's fixed input size, if it differs."""
    size = tuple(base.input_shape[:2])
    if any(d is None for d in size) or size == tuple(image_shape[:2]):
        return ds

    def resize(images, labels, *_):
        return tf.image.resize(tf.cast(images, tf.float32), size), labels

    return ds.map(resize)


# -- labels --------------------------------------------------------------------
def _targets(y, task: str) -> tuple[str, np.ndarray, int | None]:
    """`(kind, targets, classes)`: class indices or float target columns."""
    y = np.asarray(y)
    if y.ndim == 0 or len(y) == 0:
        raise DataError("rank_bases needs labelled examples. Received none.")
    flat = y.reshape(len(y), -1)
    integral = np.issubdtype(y.dtype, np.integer) or bool(
        np.all(np.isfinite(flat)) and np.all(np.equal(np.mod(flat, 1), 0))
    )
    if task == "regression" or (task == "auto" and not integral):
        if not np.all(np.isfinite(flat)):
            raise DataError("rank_bases: the regression targets hold NaN or inf.")
        return "regression", flat.astype(np.float64), None
    if flat.shape[1] > 1:
        if not (np.all((flat == 0) | (flat == 1)) and np.all(flat.sum(axis=1) == 1)):
            raise DataError(
                "rank_bases needs one class per example (class indices or one-hot "
                "rows); these labels look multi-label or soft. Pass task='regression'"
                " to score them as targets."
            )
        index = flat.argmax(axis=1)
    else:
        if not integral or flat.min() < 0:
            raise DataError(
                "rank_bases needs class labels (integers >= 0) for classification. "
                f"Received e.g. {flat[:3, 0].tolist()}. Pass task='regression' for "
                "numeric targets."
            )
        index = flat[:, 0].astype(np.int64)
    present = np.unique(index)
    if len(present) < 2:
        raise DataError(
            "rank_bases needs at least 2 classes in the data. Received only class "
            f"{int(present[0])}."
        )
    if len(index) < 2 * len(present):
        raise DataError(
            f"rank_bases needs at least 2 examples per class on average to score "
            f"leave-one-out; received {len(index)} examples of {len(present)} "
            "classes. Pass more labelled images."
        )
    # Classes numbered 0..C-1 in order of appearance in the sorted labels.
    return "classification", np.searchsorted(present, index), len(present)


# -- scores --------------------------------------------------------------------
def _score_row(name, base, positions, features, targets, kind, classes, knn) -> dict:
    top = features[-1]
    row = {"candidate": name, "base": base.name}
    row["logme"] = round(
        logme(top, np.eye(classes)[targets] if kind == "classification" else targets),
        6,
    )
    if kind == "classification":
        row["knn"] = round(knn_accuracy(top, targets, knn), 6)
        ridge = [ridge_probe(f, targets, f, targets, classes)[1] for f in features]
        best = int(np.argmax(ridge))  # the first (shallowest) of the best
        row["ridge"] = round(float(ridge[best]), 6)
        row["block"] = base.block_map.names[positions[best]]
    else:
        row["knn"] = round(knn_r2(top, targets, knn), 6)
        row["ridge"] = None
        row["block"] = base.block_map.names[positions[-1]]
    row["features"] = int(top.shape[1])
    return row


def log_evidence(features, target, alpha: float, beta: float) -> float:
    """The log evidence of Bayesian linear regression, from one SVD.

    The model: `target = features @ w + noise`, with the prior `w ~ N(0, I /
    alpha)` and `noise ~ N(0, I / beta)`; the evidence is `log p(target |
    features, alpha, beta)`, the marginal likelihood of the targets.

    Args:
        features: array (n, d). The features.
        target: array (n,). One target column.
        alpha: float. The prior precision of the weights.
        beta: float. The precision of the noise.

    Returns:
        The log evidence (a total over the n examples, not per example).
    """
    svd = _svd(features)
    return _evidence(svd, np.asarray(target, np.float64), alpha, beta)[0]


def logme_fit(features, target) -> tuple[float, float, float]:
    """LogME on one target column: the evidence maximised over alpha and beta.

    MacKay's fixed point (as in You et al. 2021, Algorithm 1): with `m` the
    posterior mean of the weights, `gamma = sum(beta s / (alpha + beta s))`
    over the eigenvalues `s` of `features.T @ features`, repeat `alpha =
    gamma / |m|^2` and `beta = (n - gamma) / |target - features @ m|^2` until
    the evidence settles (relative change below 1e-10, at most 500
    iterations; each costs O(rank) after the one SVD).

    Args:
        features: array (n, d). The features.
        target: array (n,). One target column.

    Returns:
        `(log evidence per example, alpha, beta)` at the fixed point.
    """
    return _logme_column(_svd(features), np.asarray(target, dtype=np.float64))


def logme(features, targets) -> float:
    """LogME: the mean, over target columns, of the maximised log evidence per example.

    For classification pass one-hot rows (one column per class), as the paper
    does; for regression, the target columns. Higher is better. See
    `logme_fit` for one column.

    Args:
        features: array (n, d). The features.
        targets: array (n,) or (n, t). The target columns.

    Returns:
        The LogME score.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(40, 3))
    >>> logme(x, np.eye(2)[(x[:, 0] > 0).astype(int)]) > logme(
    ...     x[:, 1:], np.eye(2)[(x[:, 0] > 0).astype(int)])
    True
    """
    targets = np.asarray(targets, dtype=np.float64)
    targets = targets.reshape(len(targets), -1)
    svd = _svd(features)
    return float(np.mean([_logme_column(svd, column)[0] for column in targets.T]))


def _logme_column(svd, y) -> tuple[float, float, float]:
    """`logme_fit` on one column, given `_svd(features)`.

    Each step raises the evidence (MacKay's updates); the best point seen is
    returned. Where the features fit the target exactly (more feature
    dimensions than examples), the evidence can rise towards a finite limit as
    beta grows without bound: the loop then stops when the evidence settles.
    """
    n = len(y)
    alpha, beta = 1.0, 1.0
    best = None
    for _ in range(_LOGME_ITERATIONS):
        evidence, gamma, m2, r2 = _evidence(svd, y, alpha, beta)
        if best is not None and evidence - best[0] <= _LOGME_TOLERANCE * max(
            1.0, abs(evidence)
        ):
            if evidence > best[0]:
                best = (evidence, alpha, beta)
            break
        if best is None or evidence > best[0]:
            best = (evidence, alpha, beta)
        if r2 <= 0.0 or gamma >= n:  # an exact fit: no finite beta to move to
            break
        if m2 > 0.0:  # without signal (m = 0) alpha cancels out of the evidence
            alpha = gamma / m2
        beta = (n - gamma) / r2
    evidence, alpha, beta = best
    return evidence / n, float(alpha), float(beta)


def _svd(features):
    """`(u, s2, d)`: the left singular vectors and squared singular values."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or not np.all(np.isfinite(f)):
        raise DataError(
            "Expected finite features of shape (examples, width). Received an array "
            f"of shape {f.shape}" + ("" if f.ndim != 2 else " with NaN or inf") + "."
        )
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > 1e-10 * max(float(s.max(initial=0.0)), 1e-300)
    return u[:, keep], s[keep] ** 2, f.shape[1]


def _evidence(svd, y, alpha: float, beta: float):
    """`(log evidence, gamma, |m|^2, |y - F m|^2)` at (alpha, beta).

    With F = U S V^T (rank r, eigenvalues s = S^2 of F^T F) and z = U^T y:
    m = V diag(beta sqrt(s) / (alpha + beta s)) z, so |m|^2 and the residual
    need only z; log|alpha I + beta F^T F| = sum log(alpha + beta s) + (d - r)
    log alpha.
    """
    u, s2, d = svd
    n = len(y)
    z = u.T @ y
    denominator = alpha + beta * s2
    m2 = float(np.sum((beta * np.sqrt(s2) * z / denominator) ** 2))
    r2 = float(y @ y - z @ z + np.sum((alpha * z / denominator) ** 2))
    r2 = max(r2, 0.0)
    gamma = float(np.sum(beta * s2 / denominator))
    log_det = float(np.sum(np.log(denominator))) + (d - len(s2)) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * r2
        - 0.5 * alpha * m2
        - 0.5 * log_det
    )
    return evidence, gamma, m2, r2


#: How many similarities `_neighbours` holds at a time (about 128 MiB of float64):
#: the examples' similarities to all others are computed a block of rows at a
#: time, so that memory grows with the examples, not with their square.
_SIMILARITY_BLOCK = 16 * 2**20


def _neighbours(features, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's `k` most similar *other* examples: `(indices, similarities)`,
    both (n, k), most similar first (ties: the lower index first).

    Cosine similarity of the centred features. The (n, n) matrix is never held
    whole: it is computed `_SIMILARITY_BLOCK` entries at a time.
    """
    f = np.asarray(features, dtype=np.float64)
    f = f.reshape(len(f), -1) - f.reshape(len(f), -1).mean(axis=0)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = len(f)
    indices = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k))
    rows = max(1, _SIMILARITY_BLOCK // max(n, 1))
    for start in range(0, n, rows):
        block = f[start : start + rows] @ f.T
        local = np.arange(len(block))
        block[local, start + local] = -np.inf  # not its own neighbour
        chosen = _top_k(block, k)
        indices[start : start + rows] = chosen
        similarities[start : start + rows] = np.take_along_axis(block, chosen, 1)
    return indices, similarities


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """The column indices of each row's `k` largest values, largest first; of
    equal values the lower index first (as a stable sort), found by a partial
    sort."""
    chosen = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(similarity, chosen, 1)
    # A value equal to a row's k-th largest may have been left out in favour of
    # a higher index: such rows (duplicate images, say) are sorted in full.
    kth = values.min(axis=1, keepdims=True)
    tied = (similarity == kth).sum(axis=1) > (values == kth).sum(axis=1)
    order = np.lexsort((chosen, -values), axis=1)
    chosen = np.take_along_axis(chosen, order, 1)
    if tied.any():
        full = np.argsort(-similarity[tied], axis=1, kind="stable")[:, :k]
        chosen[tied] = full
    return chosen


def knn_accuracy(features, labels, k: int = 5) -> float:
    """Leave-one-out accuracy of a cosine k-nearest-neighbour classifier.

    Features are centred (their mean removed) and L2-normalised. Each example
    is classified by its `k` most similar *other* examples, one vote each; a
    tie goes to the class with the larger summed similarity (then the lower
    class index). `k` is capped at n - 1.

    Args:
        features: array (n, d). The features.
        labels: array (n,). Class indices.
        k: int. Neighbours. Defaults to 5.

    Returns:
        The leave-one-out accuracy.

    Example:

    >>> knn_accuracy(np.array([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]),
    ...              np.array([0, 0, 1, 1]), k=1)
    1.0
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    k = min(k, n - 1)
    nearest, similarity = _neighbours(features, k)
    classes = int(labels.max()) + 1
    votes = np.zeros((n, classes))
    weight = np.zeros((n, classes))
    rows = np.repeat(np.arange(n), k)
    np.add.at(votes, (rows, labels[nearest].ravel()), 1.0)
    np.add.at(weight, (rows, labels[nearest].ravel()), similarity.ravel())
    # Votes first; the summed similarity (in [-k, k]) breaks ties only.
    predicted = np.argmax(votes * (4.0 * k + 1.0) + weight, axis=1)
    return float(np.mean(predicted == labels))


def knn_r2(features, targets, k: int = 5) -> float:
    """Leave-one-out R^2 of a cosine k-nearest-neighbour regressor.

    Each example's prediction is the mean target of its `k` most similar other
    examples (features centred and L2-normalised, as in `knn_accuracy`);
    R^2 = 1 - squared error / the targets' total variance, over all columns.

    Args:
        features: array (n, d). The features.
        targets: array (n,) or (n, t). The targets.
        k: int. Neighbours. Defaults to 5.

    Returns:
        The leave-one-out R^2 (1 is perfect, 0 is the mean's, below 0 worse).
    """
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    k = min(k, len(y) - 1)
    nearest, _ = _neighbours(features, k)
    predicted = y[nearest].mean(axis=1)
    total = float(np.sum((y - y.mean(axis=0)) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / max(total, 1e-300)


# -- ranks and agreement ---------------------------------------------------------
def _add_ranks(rows: list[dict]) -> None:
    """Adds "<score>_rank" to each row: 1 is the best; ties share the better rank."""
    for name in SCORES:
        for row in rows:
            value = row[name]
            row[f"{name}_rank"] = (
                None
                if value is None
                else 1 + sum(r[name] is not None and r[name] > value for r in rows)
            )


def check_table_path(path: str | os.PathLike) -> None:
    """Raises (a ConfigError) unless a ranking table may be written at `path`: a
    new path, or a CSV file that `RankResult.to_csv` wrote (its first column)."""
    check_file_replaceable(path, csv_table(COLUMNS[0]), "ranking table")


def _agreement(rows: list[dict]) -> dict:
    """Kendall's tau-b between each pair of scores, over the candidates."""
    scored = [s for s in SCORES if all(r[s] is not None for r in rows)]
    return {
        f"{a}~{b}": round(kendall_tau([r[a] for r in rows], [r[b] for r in rows]), 4)
        for i, a in enumerate(scored)
        for b in scored[i + 1 :]
    }


def kendall_tau(a, b) -> float:
    """Kendall's tau-b rank correlation of two sequences (ties accounted for).

    `(concordant - discordant) / sqrt((pairs - ties in a) * (pairs - ties in
    b))`, over all pairs; NaN when either sequence is constant or has fewer
    than 2 values. It equals `scipy.stats.kendalltau`'s default (tau-b).

    Args:
        a: sequence of float.
        b: sequence of float, as long as `a`.

    Returns:
        tau-b, in [-1, 1], or NaN.

    Example:

    >>> kendall_tau([1, 2, 3], [10, 30, 20])
    0.3333333333333333
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(
            f"Expected two sequences of one length. Received lengths {a.shape} and "
            f"{b.shape}."
        )
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    pairs = len(i)
    ties_a, ties_b = int(np.sum(da == 0)), int(np.sum(db == 0))
    denominator = math.sqrt((pairs - ties_a) * (pairs - ties_b))
    if denominator == 0:
        return math.nan
    return float(np.sum(da * db)) / denominator
