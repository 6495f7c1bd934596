"""The learning-rate finder: an exponential LR sweep that leaves the model as it was.

`find_lr` trains the model for a few hundred steps while the learning rate grows
exponentially from `min_lr` to `max_lr` (Smith, 2017, "Cyclical learning rates",
section 3.3; the fastai `lr_find`), with the trainability of one stage of the
schedule: the head alone (`stage="head"`), or the head and the top blocks
(`stage="fine_tune"`). It records the loss at every step, smooths it, and stops
early when the loss diverges. Then it puts back everything it touched: every
variable of the model (weights, BatchNorm statistics, random-seed states) bit for
bit, every layer's and variable's `trainable` flag and BatchNorm policy. It trains
with its own optimizer (a clone), so the model's optimizer and compile state are
never touched. For the head stage on a small data set (fewer batches than
steps), the frozen base's features are computed once and the sweep cycles over
them, so it costs one pass of the base, not `steps`.

The suggested rate (`LRFinderResult.suggestion`) is the *minimum / 10* rule: the
rate at the minimum of the smoothed loss curve, divided by 10. At the minimum the
rate is already on the edge of divergence; a tenth of it is still in the steep,
fast-learning part of the curve. The steepest-descent rate (most negative slope of
the smoothed loss against log LR) is reported as `steepest` for comparison.

The sweep widens itself when its range was wrong (`widen` decades at most):

- The loss did not diverge by `max_lr` and still fell there (the minimum is in
  the last twentieth), or never clearly fell at all: the sweep goes on upward
  from where it is, at the same steps per decade, until the loss diverges or
  the rate reaches `max_lr * 10**widen`, never past `MAX_LR_CAP` for the stage.
- The loss rose from the start (the minimum is in the first tenth, the smoothing
  warm-up, and the loss diverged or ended above its start): the model is put
  back and the sweep starts again, from `min_lr / 10**widen` (never below
  `MIN_LR_FLOOR`), on the same grid of rates.

And it never reads a rate off a curve that did not fall: when the smoothed loss
never fell by `MIN_FALL` of its starting level, nor clearly above its noise, the
suggestion is the stage's safe default (`SAFE_LR`, the `fine_tune` defaults) and
`LRFinderResult.fallback` is True.

Why one module of about 800 lines: the sweep, its widening, the suggestion rule
and the per-stage finder that `fine_tune` calls share the sweep's state and
constants; apart they would import each other.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from numbers import Real

import keras
import numpy as np
import tensorflow as tf

from tltf._checks import check_keywords, named_arguments
from tltf.cache import FrozenSplit
from tltf.data import DataBundle
from tltf.data.inputs import (
    as_dataset,
    check_image_shape,
    check_labels,
    pipeline_errors,
)
from tltf.errors import ConfigError, DataError, TrainingError
from tltf.freezing import (
    apply_trainable,
    check_bn_policy,
    resolve_unfreeze,
    unfreeze_kwargs,
)
from tltf.info import default_loss_and_metrics, model_info
from tltf.optimizers import make_optimizer
from tltf.reports import new_figure, save_figure

STAGES = ("head", "fine_tune")
# The rate used when the curve gives none: `fine_tune`'s defaults (the keras.io
# transfer-learning recipe).
SAFE_LR = {"head": 1e-3, "fine_tune": 1e-4}
# Upward widening never sweeps past these rates (an explicit larger `max_lr` is
# swept as asked, but not widened).
MAX_LR_CAP = {"head": 10.0, "fine_tune": 1.0}
# Downward widening never starts below this rate.
MIN_LR_FLOOR = 1e-10
# The least fall of the smoothed loss, as a fraction of its starting level, that
# counts as learning.
MIN_FALL = 0.05

#: A training loss this low at the start of a sweep means the model already fits
#: its training images (a converged head on a few images): nothing can fall, and
#: the stage's safe default is used.
FITTED_LOSS = 1e-3

# How far above its noise the fall must be (in standard deviations of the
# difference between the starting level and the smoothed minimum).
_NOISE_SIGMAS = 3.0


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """The loss curve of an LR sweep and the suggested learning rate.

    Attributes:
        lrs: np.ndarray. The learning rate of each step.
        losses: np.ndarray. The training loss of each step (raw).
        smoothed: np.ndarray. The bias-corrected exponential moving average of
            `losses`.
        suggestion: float. The suggested rate: the minimum / 10 rule.
        minimum: float. The rate at the minimum of the smoothed loss.
        steepest: float. The rate where the smoothed loss falls fastest.
        stage: str. "head" or "fine_tune".
        stopped_early: bool. Whether the sweep stopped because the loss diverged.
        reason: str. How the suggestion was reached, in words, with any widening
            of the range and any fallback.
        fallback: bool. Whether the curve never fell meaningfully, so that
            `suggestion` is the stage's safe default (`SAFE_LR`), not read off
            the curve. Defaults to False.
        widened: tuple of str. How the sweep widened its range, in order:
            "down" (restarted from a lower rate), "up" (went on past
            `max_lr`), or empty. `lrs` covers the widened range. Defaults to ().
        fall: float. How far the smoothed loss fell below its starting level
            (after the warm-up), as a fraction of that level. Defaults to NaN.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    minimum: float
    steepest: float
    stage: str
    stopped_early: bool
    reason: str
    fallback: bool = False
    widened: tuple[str, ...] = ()
    fall: float = math.nan

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None):
        """Plots loss against learning rate (log scale), marking the suggestion.

        Args:
            path: str or None. Also write the figure to this PNG file
                (atomically). Defaults to None.
            title: str or None. The title. Defaults to the stage.

        Returns:
            A `matplotlib.figure.Figure`.
        """

        figure = new_figure(path, figsize=(5.5, 3.6))
        ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        ax.axvline(self.minimum, color="C3", linestyle=":", label="minimum")
        ax.axvline(
            self.suggestion,
            color="C2",
            linestyle="--",
            label=f"suggestion {self.suggestion:.1e}"
            + (" (safe default)" if self.fallback else ""),
        )
        ax.set_xscale("log")
        low, high = np.nanmin(self.smoothed), np.nanmax(self.smoothed[:1])
        if np.isfinite(low) and np.isfinite(high) and high > low:
            ax.set_ylim(low - 0.1 * (high - low), high + 0.5 * (high - low))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
        ax.set_title(title or f"LR finder ({self.stage} stage)")
        figure.tight_layout()
        if path is not None:
            save_figure(figure, path)
        return figure


@dataclasses.dataclass(frozen=True)
class LRSweep:
    """The numbers of an LR sweep: `find_lr`'s keywords, checked when made.

    Attributes:
        min_lr: float. The first rate. Defaults to 1e-7.
        max_lr: float. The last rate (before any widening). Defaults to 1.0.
        steps: int. Sweep steps (at least 10) from `min_lr` to `max_lr`.
            Defaults to 100.
        smoothing: float. Weight of the loss's moving average, in [0, 1).
            Defaults to 0.9.
        diverge: float. Stop when the smoothed loss exceeds this many times its
            minimum (> 1). Defaults to 4.0.
        widen: float. At most this many decades to widen the range by, each
            way (>= 0). Defaults to 3.

    Example:

    >>> sweep = LRSweep(max_lr=1e-1, steps=50)
    >>> tltf.find_lr(model, train_ds, **dataclasses.asdict(sweep))
    """

    min_lr: float = 1e-7
    max_lr: float = 1.0
    steps: int = 100
    smoothing: float = 0.9
    diverge: float = 4.0
    widen: float = 3

    def __post_init__(self):
        _check_range(self.min_lr, self.max_lr)
        steps, smoothing = self.steps, self.smoothing
        diverge, widen = self.diverge, self.widen
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
            raise ConfigError(
                f"Expected steps as an integer >= 10. Received: steps={steps!r}"
            )
        if not (isinstance(smoothing, Real) and 0 <= smoothing < 1):
            raise ConfigError(
                f"Expected smoothing in [0, 1). Received: smoothing={smoothing!r}"
            )
        if not (isinstance(diverge, Real) and diverge > 1):
            raise ConfigError(f"Expected diverge > 1. Received: diverge={diverge!r}")
        if (
            isinstance(widen, bool)
            or not isinstance(widen, Real)
            or not (math.isfinite(widen) and widen >= 0)
        ):
            raise ConfigError(
                f"Expected widen as a number of decades >= 0. Received: widen={widen!r}"
            )


#: The keywords of `find_lr` that set its sweep (`LRSweep`'s fields).
SWEEP_FIELDS = tuple(f.name for f in dataclasses.fields(LRSweep))


@pipeline_errors()
def find_lr(
    model: keras.Model,
    train,
    *,
    stage: str = "head",
    unfreeze: int | str | dict | Sequence[str] = "all",
    bn: str = "frozen",
    optimizer: str | keras.optimizers.Optimizer = "adam",
    loss="auto",
    batch_size: int = 32,
    seed: int | None = None,
    verbose: int = 1,
    **sweep,
) -> LRFinderResult:
    """Sweeps the learning rate exponentially and suggests one; restores the model.

    Each step trains on one batch at the next rate, `min_lr * (max_lr /
    min_lr) ** (i / (steps - 1))`, with the trainability of `stage`. The sweep
    stops early when the smoothed loss exceeds `diverge` times its minimum (or
    the loss is not finite). Afterwards the model's variables, trainable flags and
    BatchNorm policy are exactly as before; its optimizer is never used.

    When the range was wrong, the sweep widens it, on the same geometric grid of
    rates (the same steps per decade), by at most `widen` decades each way:

    - *Upward*, when the loss did not diverge by `max_lr` and either still
      fell there (the smoothed minimum is in the last twentieth of the sweep)
      or never clearly fell at all (every rate was too low to learn). The sweep
      goes on from where it is, with the same model and optimizer state, until
      the loss diverges or the rate reaches `max_lr * 10**widen` (at most
      `MAX_LR_CAP[stage]`: 10 for the head, 1 for fine-tuning). Going on is
      exact: a sweep over the wider range would have trained through the same
      rates in the same order up to `max_lr`, so the curve is the one that
      sweep would have drawn, at the cost of the new steps alone.
    - *Downward*, when the loss rose from the start: the smoothed minimum is in
      the first tenth (the smoothing warm-up), and the loss diverged or ended
      clearly above its starting level. Going on cannot help here: the
      lower rates must come *before* the higher ones, on the model as it was.
      So the model is put back (bit for bit, as at the end) and the sweep
      starts again, with a fresh optimizer, from `min_lr / 10**widen` (at least
      `MIN_LR_FLOOR`) up to `max_lr`, stopping again when the loss diverges.

    The downward restart comes first, so a sweep can widen both ways. When the
    smoothed loss never fell by `MIN_FALL` (5%) of its starting level, nor by
    three times its noise, across the whole (widened) sweep, there is no rate to
    read off the curve: the suggestion is the stage's safe default, `SAFE_LR`
    (1e-3 for the head, 1e-4 for fine-tuning: `fine_tune`'s defaults), and the
    result says so (`fallback=True`, and in `reason`).

    Args:
        model: keras.Model. A model built by `build_model`.
        train: Training data: `(images, labels)` arrays (shuffled with `seed`, in
            batches of `batch_size`), a tf.data Dataset of `(image, label)`, or a
            `DataBundle`. It is repeated if it has fewer than `steps` batches;
            for `stage="head"` the frozen base then runs once per batch and the
            sweep cycles over the cached features (see `tltf.cache`).
        stage: str. "head" (base frozen) or "fine_tune" (top blocks unfrozen).
            Defaults to "head".
        unfreeze: For `stage="fine_tune"`: what to unfreeze, as for `fine_tune`
            (int, "all", `{"layers": n}`, `{"names": regex}`), or a list of block
            names. Defaults to "all".
        bn: str. BatchNorm policy for `stage="fine_tune"`. Defaults to "frozen".
        optimizer: str or Optimizer. The optimizer class to sweep with; an
            instance is cloned (its config, not its state), never changed.
            Defaults to "adam".
        loss: A Keras loss, or "auto" for the task's (as `fine_tune`). Defaults
            to "auto".
        batch_size: int. Batch size for array inputs. Defaults to 32.
        seed: int or None. Shuffle seed for array inputs. Defaults to None.
        verbose: int. 1 prints one line with the suggestion. Defaults to 1.
        **sweep: The sweep's numbers, the fields of `LRSweep` (any other
            keyword is a ConfigError naming the closest argument):

            - min_lr: float. The first rate. Defaults to 1e-7.
            - max_lr: float. The last rate (before any widening). Defaults to
              1.0.
            - steps: int. Sweep steps (at least 10) from `min_lr` to `max_lr`;
              widening adds steps at the same density. Defaults to 100.
            - smoothing: float. Weight of the exponential moving average of the
              loss, in [0, 1). Defaults to 0.9.
            - diverge: float. Stop when the smoothed loss exceeds this many
              times its minimum. Defaults to 4.0.
            - widen: float. At most this many decades to widen the range by,
              each way, when the minimum is at an end of it; 0 never widens.
              Defaults to 3.

    Returns:
        An `LRFinderResult` with `.lrs`, `.losses`, `.smoothed`, `.suggestion`,
        `.reason`, `.fallback`, `.widened` and `.plot()`.

    Raises:
        ConfigError: An argument is invalid.
        DataError: The data is empty, or the loss is not finite before the first
            update.
        TrainingError: The loss never fell and diverged at or below the safe
            default rate, so no rate can be suggested.

    Example:

    >>> result = tltf.find_lr(model, train_ds)
    >>> result.suggestion
    0.0031
    >>> result.plot()
    >>> tltf.fine_tune(model, train_ds, val_ds, head_lr=result.suggestion)
    """
    check_keywords(
        sweep,
        (*named_arguments(find_lr), *SWEEP_FIELDS),
        "find_lr",
        f"Its other keywords are the fields of LRSweep: {', '.join(SWEEP_FIELDS)}.",
    )
    info = model_info(model)
    if stage not in STAGES:
        raise ConfigError(f"Expected stage in {STAGES}. Received: stage={stage!r}")
    numbers = LRSweep(**sweep)
    min_lr, max_lr, steps = numbers.min_lr, numbers.max_lr, numbers.steps
    smoothing, diverge, widen = numbers.smoothing, numbers.diverge, numbers.widen
    check_bn_policy(bn)
    blocks = _stage_blocks(info, stage, unfreeze)
    dataset, remake, one_hot = _training_batches(model, info, train, batch_size, seed)
    loss_fn = _loss(info, loss, one_hot)
    # One step multiplies the rate by `ratio`; widening keeps to this grid.
    ratio = (max_lr / min_lr) ** (1 / (steps - 1))
    notes, widened = [], []
    saved = _ModelState(model)
    try:
        apply_trainable(info, blocks, bn)
        network, batches = _batch_source(model, dataset, remake, stage, steps)
        sweep = _Sweep(network, batches, loss_fn, optimizer, smoothing, diverge)
        sweep.run(np.geomspace(min_lr, max_lr, steps))
        low, high = min_lr, max_lr
        way, why = _edge(sweep.losses, sweep.smoothed, sweep.stopped, smoothing)
        if widen and way == "down":
            k = _grid_steps(min_lr / max(min_lr / 10**widen, MIN_LR_FLOOR), ratio)
            if k:
                low = min_lr / ratio**k
                saved.restore()
                apply_trainable(info, blocks, bn)
                sweep.start()
                sweep.run(np.geomspace(low, max_lr, steps + k))
                widened.append("down")
                notes.append(
                    f"Widened down: at min_lr={min_lr:.1e} {why}, so the model was "
                    f"put back and the sweep restarted at {low:.1e}."
                )
        way, why = _edge(sweep.losses, sweep.smoothed, sweep.stopped, smoothing)
        if widen and way == "up":
            top = min(max_lr * 10**widen, MAX_LR_CAP[stage])
            k = _grid_steps(top / max_lr, ratio) if top > max_lr else 0
            if k:
                high = max_lr * ratio**k
                sweep.run(max_lr * ratio ** np.arange(1, k + 1))
                widened.append("up")
                notes.append(
                    f"Widened up: at max_lr={max_lr:.1e} {why}, so the sweep went "
                    f"on upward, to {high:.1e} at most."
                )
    finally:
        saved.restore()
    if widened:
        notes.append(
            f"Widened the range to {low:.1e}..{high:.1e} "
            f"({1 / math.log10(ratio):.3g} steps per decade)."
        )
    result = _suggest(
        np.asarray(sweep.lrs),
        np.asarray(sweep.losses),
        np.asarray(sweep.smoothed),
        stage,
        sweep.stopped,
        smoothing=smoothing,
        widened=tuple(widened),
        notes=" ".join(notes),
    )
    if verbose:
        print(
            f"tltf: find_lr ({stage}): suggested rate {result.suggestion:.1e}: "
            f"{result.reason}"
        )
    return result


def find_stage_lr(
    model: keras.Model,
    train,
    stage: str,
    optimizer,
    loss,
    *,
    unfreeze="all",
    bn: str = "frozen",
    verbose: int = 1,
) -> float:
    """Runs `find_lr` for `fine_tune(head_lr="find", fine_tune_lr="find")`.

    Sweeps with the stage's optimizer class and loss, silently, and prints one
    line with the rate found (unless `verbose` is 0). The sweep widens its range
    as `find_lr` does; when the curve never fell, the rate is the stage's safe
    default (`SAFE_LR`) and the line says "fallback".

    Returns:
        The suggested rate.
    """
    result = find_lr(
        model,
        train,
        stage=stage,
        unfreeze=unfreeze,
        bn=bn,
        optimizer=optimizer,
        loss=loss,
        verbose=0,
    )
    if verbose:
        name = "head_lr" if stage == "head" else "fine_tune_lr"
        print(f"tltf: {name}='find' -> {result.suggestion:.1e}: {result.reason}")
    return result.suggestion


def _check_range(min_lr, max_lr) -> None:
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if (
            isinstance(value, bool)
            or not isinstance(value, Real)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ConfigError(
                f"Expected {name} as a positive number. Received: {name}={value!r}"
            )
    if min_lr >= max_lr:
        raise ConfigError(
            f"Expected min_lr < max_lr. Received: min_lr={min_lr!r}, max_lr={max_lr!r}"
        )


def _stage_blocks(info, stage: str, unfreeze) -> list[str]:
    """The blocks the sweep trains (none for the head stage)."""
    if stage == "head":
        return []
    if isinstance(unfreeze, (list, tuple)):
        unknown = [b for b in unfreeze if b not in info.block_map.names]
        if unknown:
            raise ConfigError(
                f"Unknown blocks {unknown} in unfreeze. Blocks: {info.block_map.names}"
            )
        return list(unfreeze)

    chosen, _ = resolve_unfreeze(info.block_map, info.base, **unfreeze_kwargs(unfreeze))
    return chosen


def _training_batches(model, info, train, batch_size, seed):
    """The training batches, a maker of the same anew, and whether labels are one-hot.

    Each call of the maker builds the pipeline again, so a restarted sweep sees
    the batches in the order a fresh `find_lr` would (for arrays with a `seed`).
    """

    if isinstance(train, DataBundle):
        train = train.train
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ConfigError(
            f"Expected batch_size as an integer >= 1. Received: {batch_size!r}"
        )

    def make() -> tf.data.Dataset:
        return as_dataset(train, batch_size, True, seed, "train")

    dataset = make()
    one_hot = check_labels(train, info, "train")
    check_image_shape(dataset, model, "train")
    if dataset.cardinality() == 0:
        raise DataError("train is empty: it has no batches to sweep the rate on.")
    return dataset, make, one_hot


def _loss(info, loss, one_hot):
    if isinstance(loss, str) and loss == "auto":
        return default_loss_and_metrics(info, one_hot)[0]
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError):
        raise ConfigError(
            f"Expected loss as 'auto' or a Keras loss. Received: loss={loss!r}"
        ) from None


def _make_optimizer(optimizer, learning_rate: float):
    # The sweep does not scale its loss, so a LossScaleOptimizer's unscaling would
    # shrink every step: sweep with the optimizer inside it.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return make_optimizer(inner, learning_rate)


def _batch_source(model: keras.Model, dataset, remake, stage: str, steps: int):
    """The network the sweep trains, and a maker of endless iterators of its batches.

    For the head stage on data of fewer batches than `steps` (the usual small
    transfer set), the frozen base's features are computed once per batch and the
    sweep cycles over them, training the head sub-model (which shares its layers
    with the model): the same sweep without repeating the base's forward passes.
    Each call of the maker starts again from the first batch: the first iterates
    `dataset`, later ones a new pipeline from `remake` (a restarted sweep reuses
    the cached features).
    """
    batches = int(dataset.cardinality())
    if stage == "head" and 0 < batches < steps:
        split = FrozenSplit(model)
        features = split.extract()
        dtype = features.input_signature[0].dtype
        cached = [(features(tf.cast(batch[0], dtype)), *batch[1:]) for batch in dataset]
        return split.trainable, lambda: itertools.cycle(cached)
    first = [dataset]

    def batches():
        source = first.pop() if first else remake()
        return iter(source.repeat())

    return model, batches


class _Sweep:
    """A sweep in progress: its optimizer, its batches and the curve so far.

    `run` trains one step per rate and extends the curve, so a sweep can go on
    where it stopped; `start` begins a new curve with a fresh optimizer and the
    first batch (the caller puts the model back first).
    """

    def __init__(self, network, batches, loss_fn, optimizer, beta, diverge):
        self.network, self.batches, self.loss_fn = network, batches, loss_fn
        self.optimizer, self.beta, self.diverge = optimizer, beta, diverge
        self.start()

    def start(self) -> None:
        network, loss_fn = self.network, self.loss_fn
        variables = list(network.trainable_variables)
        if not variables:
            raise ConfigError("The model has no trainable variables in this stage.")
        opt = self._opt = _make_optimizer(self.optimizer, 1e-3)
        opt.build(variables)

        def train_step(images, labels, *weights):
            with tf.GradientTape() as tape:
                predictions = network(images, training=True)
                value = loss_fn(labels, predictions, *weights)
                if network.losses:
                    value = value + tf.add_n(network.losses)
            grads = tape.gradient(value, variables)
            opt.apply_gradients(zip(grads, variables, strict=True))
            return value

        self._train_step, self._step, self._spec = train_step, None, None
        self._iterator = self.batches()
        self.lrs, self.losses, self.smoothed = [], [], []
        self._average, self._best, self.stopped = 0.0, math.inf, False

    def _step_for(self, batch):
        """The compiled training step for `batch`, traced once for any batch size.

        A `reduce_retracing` function traces twice on data whose last batch is
        smaller: a whole model's training step, over a second, in every stage-2
        sweep. The batch size is left open in the signature instead; the other
        dimensions are the batch's own, so a batch of another shape traces anew.
        """
        spec = tf.nest.map_structure(
            lambda t: tf.TensorSpec((None, *t.shape[1:]), t.dtype), list(batch)
        )
        if spec != self._spec:
            self._spec = spec
            self._step = tf.function(self._train_step, input_signature=spec)
        return self._step

    def run(self, rates) -> None:
        """Trains one batch at each rate, until the loss diverges."""
        beta = self.beta
        for rate in rates:
            if self.stopped:
                return
            self._opt.learning_rate.assign(float(rate))
            batch = next(self._iterator)
            value = float(self._step_for(batch)(*batch))
            self.lrs.append(float(rate))
            self.losses.append(value)
            if not math.isfinite(value):
                self.smoothed.append(math.nan)
                self.stopped = True
                return
            self._average = beta * self._average + (1 - beta) * value
            current = self._average / (1 - beta ** len(self.losses))
            self.smoothed.append(current)
            self._best = min(self._best, current)
            if current > self.diverge * self._best:
                self.stopped = True


def _warmup(n: int) -> int:
    """Steps at the start of a curve of `n` that the moving average warms up in."""
    return max(3, n // 10)


def _tail(n: int) -> int:
    """Steps at the end of a curve of `n` where a minimum means "still falling"."""
    return max(2, n // 20)


def _edge(losses, smoothed, stopped: bool, beta: float) -> tuple[str | None, str]:
    """Which way the range should widen ("down", "up" or None), and why in words.

    "down" when the loss rose from the start: the smoothed minimum is in the
    warm-up, and the loss diverged or ended clearly above its starting level.
    "up" when the sweep never found where the loss rises: it did not diverge,
    and the minimum is in the last steps (the loss still fell at the top) or
    the loss never clearly fell (every rate was too low to learn).
    """
    losses = np.asarray(losses, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    if not finite.any():
        return None, ""
    n = len(smoothed)
    at_min = int(np.argmin(np.where(finite, smoothed, np.inf)))
    start, lowest, needed = _fall(losses, smoothed, beta)
    if _fitted(losses, start):
        return None, ""
    if at_min < _warmup(n) and (stopped or smoothed[finite][-1] - start > needed):
        return "down", "the loss already rose from the start"
    if not stopped and at_min >= n - _tail(n):
        return "up", "the loss still fell and had not diverged"
    if not stopped and not start - lowest > needed:
        return "up", "the loss had neither clearly fallen nor diverged"
    return None, ""


def _fitted(losses, start: float) -> bool:
    """Whether the loss was already about zero before the sweep trained at all."""
    first = float(losses[0]) if len(losses) else math.nan
    return bool(
        (math.isfinite(first) and first < FITTED_LOSS)
        or (math.isfinite(start) and start < FITTED_LOSS)
    )


def _grid_steps(factor: float, ratio: float) -> int:
    """Whole steps of `ratio` within `factor` (0 when the factor is under one)."""
    if factor <= 1:
        return 0
    return max(0, math.floor(math.log(factor) / math.log(ratio) + 1e-9))


def _fall(losses, curve, beta: float):
    """How far the smoothed loss fell after the warm-up, and how far it must.

    The starting level is the mean raw loss over the warm-up; the fall is
    measured to the lowest smoothed loss after it. It counts when it exceeds
    both `MIN_FALL` of the starting level and `_NOISE_SIGMAS` standard
    deviations of the difference a flat curve's noise would make: the batch
    noise (from successive differences of the raw loss, robust to the trend)
    through the starting mean and through the moving average.

    Returns:
        (start, lowest, needed): the starting level, the lowest smoothed loss
        after the warm-up (NaN if the curve ended in it) and the least fall that
        counts.
    """
    finite = losses[np.isfinite(losses)]
    w = _warmup(len(curve))
    head = finite[:w]
    start = float(np.mean(head))
    rest = curve[w:]
    if not np.isfinite(rest).any():
        return start, math.nan, math.inf
    lowest_at = w + int(np.argmin(np.where(np.isfinite(rest), rest, np.inf)))
    lowest = float(curve[lowest_at])
    diffs = np.diff(finite[: max(lowest_at + 1, w)])
    sigma = 1.4826 * float(np.median(np.abs(diffs))) / math.sqrt(2) if diffs.size else 0
    noise = sigma * (math.sqrt((1 - beta) / (1 + beta)) + 1 / math.sqrt(head.size))
    return start, lowest, max(MIN_FALL * abs(start), _NOISE_SIGMAS * noise)


def _suggest(
    lrs,
    losses,
    smoothed,
    stage,
    stopped,
    *,
    smoothing: float = 0.9,
    widened: tuple[str, ...] = (),
    notes: str = "",
) -> LRFinderResult:
    """The suggestion from a (possibly widened) curve, with its reason."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise DataError(
            f"Expected a finite loss before the first update; received {losses[0]} "
            f"(at lr {lrs[0]:.1e}, before any training step). Check the data for "
            "NaN or infinite values, and the loss."
        )
    curve = np.where(finite, smoothed, np.inf)
    n = len(lrs)
    at_min = int(np.argmin(curve))
    minimum = float(lrs[at_min])
    steepest = minimum
    if at_min >= 2:
        # Slope over a window of about a twentieth of the sweep, to damp the noise.
        w = max(1, n // 20)
        log = np.log(lrs[: at_min + 1])
        ahead = np.minimum(np.arange(at_min + 1) + w, at_min)
        behind = np.maximum(np.arange(at_min + 1) - w, 0)
        slope = (curve[ahead] - curve[behind]) / np.maximum(
            log[ahead] - log[behind], 1e-12
        )
        # The first tenth of the sweep is mostly the moving average warming up.
        first = min(at_min, n // 10)
        steepest = float(lrs[first + int(np.argmin(slope[first:]))])
    start, lowest, needed = _fall(losses, smoothed, smoothing)
    fall = (start - lowest) / abs(start) if start else math.nan
    fallback = not (start - lowest > needed)  # also when lowest is NaN
    end = "diverged, stopped" if stopped else "ran all steps"
    span = f"{n} steps over {lrs[0]:.1e}..{lrs[-1]:.1e}, {end}"
    if _fitted(losses, start):
        fallback = True
        suggestion = SAFE_LR[stage]
        reason = (
            f"the training loss was already {losses[0]:.2g} before the sweep: the "
            "model fits these training images, so no fall can show a rate "
            f"({span}). The suggestion is the safe default for the {stage} stage, "
            f"{suggestion:.0e} (fallback)."
        )
    elif fallback:
        suggestion = SAFE_LR[stage]
        if stopped and lrs[-1] <= suggestion:
            raise TrainingError(
                f"find_lr ({stage}): expected a loss that falls at some rate before "
                f"it diverges; received a loss that never fell (from {start:.3g}) "
                f"and diverged at lr {lrs[-1]:.1e}, at or below the safe default "
                f"{suggestion:.0e}, so no rate can be suggested ({span})."
                + (f" {notes}" if notes else "")
                + " Check the data for NaN or infinite values, the labels and the"
                " loss, or pass a lower min_lr."
            )
        level = f"{lowest:.3g}" if math.isfinite(lowest) else "no lower"
        reason = (
            f"the smoothed loss never fell meaningfully: from {start:.3g} to at "
            f"best {level}, where a fall of {needed:.2g} was needed ({MIN_FALL:.0%} "
            f"of the start, or {_NOISE_SIGMAS:g} noise deviations; {span}). There "
            "is no rate to read off such a curve, so the suggestion is the safe "
            f"default for the {stage} stage, {suggestion:.0e} (fallback). If the "
            "model should learn here, check the data, the labels and the loss."
        )
    else:
        suggestion = max(float(lrs[0]), minimum / 10)
        reason = (
            f"the smoothed loss is lowest ({curve[at_min]:.3g}) at lr {minimum:.1e}; "
            f"a tenth of that is {suggestion:.1e} (steepest descent at "
            f"{steepest:.1e}; {span})."
        )
        if at_min < _warmup(n):
            reason += (
                " The loss hardly fell before it rose: lower min_lr, or check the"
                " data and the loss."
            )
        elif not stopped and at_min >= n - _tail(n):
            reason += (
                f" The loss still fell at the top of the sweep (lr {lrs[-1]:.1e}):"
                " the suggestion may be low; raise max_lr for a clearer curve."
            )
    if notes:
        reason += " " + notes
    return LRFinderResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggestion,
        minimum=minimum,
        steepest=steepest,
        stage=stage,
        stopped_early=stopped,
        reason=reason,
        fallback=fallback,
        widened=tuple(widened),
        fall=float(fall),
    )


class _ModelState:
    """Everything `find_lr` may change in a model, captured to put back exactly.

    Variables (weights, BN statistics, seed-generator states) are copied; every
    layer's and variable's `trainable` flag is recorded in pre-order, so that
    restoring parents first (which cascades) and children after gives back the
    exact flags; the BatchNorm "affine" policy's instance `call` overrides are
    kept too.
    """

    def __init__(self, model: keras.Model):
        self.variables = list(model.variables)
        self.values = [np.array(v.numpy(), copy=True) for v in self.variables]
        self.var_flags = [v.trainable for v in self.variables]
        self.layers = list(model._flatten_layers(include_self=True, recursive=True))
        self.layer_flags = [layer.trainable for layer in self.layers]
        self.calls = [layer.__dict__.get("call") for layer in self.layers]

    def restore(self) -> None:
        for layer, flag in zip(self.layers, self.layer_flags, strict=True):
            layer.trainable = flag
        for layer, call in zip(self.layers, self.calls, strict=True):
            if call is None:
                layer.__dict__.pop("call", None)
            else:
                object.__setattr__(layer, "call", call)
        for variable, flag, value in zip(
            self.variables, self.var_flags, self.values, strict=True
        ):
            variable.trainable = flag
            variable.assign(value)
