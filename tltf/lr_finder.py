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

from tltf.errors import ConfigError, DataError
from tltf.model import model_info

STAGES = ("head", "fine_tune")


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
        reason: str. How the suggestion was reached, in words.
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

    def plot(self, path: str | os.PathLike | None = None, title: str | None = None):
        """Plots loss against learning rate (log scale), marking the suggestion.

        Args:
            path: str or None. Also write the figure to this PNG file
                (atomically). Defaults to None.
            title: str or None. The title. Defaults to the stage.

        Returns:
            A `matplotlib.figure.Figure`.
        """
        from matplotlib.figure import Figure

        figure = Figure(figsize=(5.5, 3.6))
        ax = figure.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        ax.axvline(self.minimum, color="C3", linestyle=":", label="minimum")
        ax.axvline(
            self.suggestion,
            color="C2",
            linestyle="--",
            label=f"suggestion {self.suggestion:.1e}",
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
            from tltf.reports import save_figure

            save_figure(figure, path)
        return figure


def find_lr(
    model: keras.Model,
    train,
    *,
    stage: str = "head",
    unfreeze: int | str | dict | Sequence[str] = "all",
    bn: str = "frozen",
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    steps: int = 100,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    loss="auto",
    batch_size: int = 32,
    smoothing: float = 0.9,
    diverge: float = 4.0,
    seed: int | None = None,
    verbose: int = 1,
) -> LRFinderResult:
    """Sweeps the learning rate exponentially and suggests one; restores the model.

    Each step trains on one batch at the next rate, `min_lr * (max_lr /
    min_lr) ** (i / (steps - 1))`, with the trainability of `stage`. The sweep
    stops early when the smoothed loss exceeds `diverge` times its minimum (or
    the loss is not finite). Afterwards the model's variables, trainable flags and
    BatchNorm policy are exactly as before; its optimizer is never used.

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
        min_lr: float. The first rate. Defaults to 1e-7.
        max_lr: float. The last rate. Defaults to 1.0.
        steps: int. Sweep steps (at least 10). Defaults to 100.
        optimizer: str or Optimizer. The optimizer class to sweep with; an
            instance is cloned (its config, not its state), never changed.
            Defaults to "adam".
        loss: A Keras loss, or "auto" for the task's (as `fine_tune`). Defaults
            to "auto".
        batch_size: int. Batch size for array inputs. Defaults to 32.
        smoothing: float. Weight of the exponential moving average of the loss,
            in [0, 1). Defaults to 0.9.
        diverge: float. Stop when the smoothed loss exceeds this many times its
            minimum. Defaults to 4.0.
        seed: int or None. Shuffle seed for array inputs. Defaults to None.
        verbose: int. 1 prints one line with the suggestion. Defaults to 1.

    Returns:
        An `LRFinderResult` with `.lrs`, `.losses`, `.smoothed`, `.suggestion`
        and `.plot()`.

    Example:

    >>> result = tltf.find_lr(model, train_ds)
    >>> result.suggestion
    0.0031
    >>> result.plot()
    >>> tltf.fine_tune(model, train_ds, val_ds, head_lr=result.suggestion)
    """
    info = model_info(model)
    if stage not in STAGES:
        raise ConfigError(f"Expected stage in {STAGES}. Received: stage={stage!r}")
    _check_range(min_lr, max_lr)
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
    from tltf.freezing import apply_trainable, check_bn_policy

    check_bn_policy(bn)
    blocks = _stage_blocks(info, stage, unfreeze)
    dataset, one_hot = _training_batches(model, info, train, batch_size, seed)
    loss_fn = _loss(info, loss, one_hot)
    saved = _ModelState(model)
    try:
        apply_trainable(info, blocks, bn)
        lrs, losses, smoothed, stopped = _sweep(
            model,
            dataset,
            stage,
            loss_fn,
            optimizer,
            min_lr,
            max_lr,
            steps,
            smoothing,
            diverge,
        )
    finally:
        saved.restore()
    result = _suggest(lrs, losses, smoothed, stage, stopped)
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
    line with the rate found (unless `verbose` is 0).

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
    from tltf.freezing import resolve_unfreeze
    from tltf.schedule import _unfreeze_kwargs

    chosen, _ = resolve_unfreeze(
        info.block_map, info.base, **_unfreeze_kwargs(unfreeze)
    )
    return chosen


def _training_batches(model, info, train, batch_size, seed):
    """Batches of the training data, repeated, and whether labels are one-hot."""
    from tltf.data import DataBundle
    from tltf.schedule import _as_dataset, _check_image_shape, _check_labels

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
    dataset = _as_dataset(train, batch_size, True, seed, "train")
    one_hot = _check_labels(train, info, "train")
    _check_image_shape(dataset, model, "train")
    if dataset.cardinality() == 0:
        raise DataError("train is empty: it has no batches to sweep the rate on.")
    return dataset, one_hot


def _loss(info, loss, one_hot):
    if isinstance(loss, str) and loss == "auto":
        from tltf.schedule import default_loss_and_metrics

        return default_loss_and_metrics(info, one_hot)[0]
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError):
        raise ConfigError(
            f"Expected loss as 'auto' or a Keras loss. Received: loss={loss!r}"
        ) from None


def _make_optimizer(optimizer, learning_rate: float):
    from tltf.schedule import _clone_optimizer

    if isinstance(optimizer, str):
        try:
            return keras.optimizers.get(
                {"class_name": optimizer, "config": {"learning_rate": learning_rate}}
            )
        except ValueError:
            raise ConfigError(
                f"Unknown optimizer {optimizer!r}. Use a Keras optimizer name such as"
                " 'adam', 'adamw' or 'sgd', or an optimizer instance."
            ) from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(
            "Expected optimizer as a name or a keras.optimizers.Optimizer. "
            f"Received: {type(optimizer).__name__}"
        )
    # The sweep does not scale its loss, so a LossScaleOptimizer's unscaling would
    # shrink every step: sweep with the optimizer inside it.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return _clone_optimizer(inner, learning_rate)


def _batch_source(model: keras.Model, dataset: tf.data.Dataset, stage: str, steps: int):
    """The network the sweep trains, and an endless iterator of its input batches.

    For the head stage on data of fewer batches than `steps` (the usual small
    transfer set), the frozen base's features are computed once per batch and the
    sweep cycles over them, training the head sub-model (which shares its layers
    with the model): the same sweep without repeating the base's forward passes.
    """
    batches = int(dataset.cardinality())
    if stage == "head" and 0 < batches < steps:
        from tltf.cache import feature_model, head_model

        extractor = feature_model(model)

        @tf.function(reduce_retracing=True)
        def features(images):
            return extractor(images, training=False)

        cached = [(features(batch[0]), *batch[1:]) for batch in dataset]
        return head_model(model), itertools.cycle(cached)
    return model, iter(dataset.repeat())


def _sweep(
    model, dataset, stage, loss_fn, optimizer, min_lr, max_lr, steps, beta, diverge
):
    model, iterator = _batch_source(model, dataset, stage, steps)
    variables = list(model.trainable_variables)
    if not variables:
        raise ConfigError("The model has no trainable variables in this stage.")
    opt = _make_optimizer(optimizer, float(min_lr))
    opt.build(variables)

    @tf.function(reduce_retracing=True)
    def train_step(images, labels, *weights):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            value = loss_fn(labels, predictions, *weights)
            if model.losses:
                value = value + tf.add_n(model.losses)
        grads = tape.gradient(value, variables)
        opt.apply_gradients(zip(grads, variables, strict=True))
        return value

    lrs = np.geomspace(min_lr, max_lr, steps)
    losses, smoothed, average, best = [], [], 0.0, math.inf
    stopped = False
    for i, rate in enumerate(lrs):
        opt.learning_rate.assign(rate)
        batch = next(iterator)
        value = float(train_step(*batch))
        losses.append(value)
        if not math.isfinite(value):
            smoothed.append(math.nan)
            stopped = True
            break
        average = beta * average + (1 - beta) * value
        current = average / (1 - beta ** (i + 1))
        smoothed.append(current)
        best = min(best, current)
        if current > diverge * best:
            stopped = True
            break
    n = len(losses)
    return lrs[:n], np.asarray(losses), np.asarray(smoothed), stopped


def _suggest(lrs, losses, smoothed, stage, stopped) -> LRFinderResult:
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise DataError(
            f"The loss was not finite from the first step (at lr {lrs[0]:.1e}). "
            "Check the data for NaN or infinite values, or lower min_lr."
        )
    curve = np.where(finite, smoothed, np.inf)
    at_min = int(np.argmin(curve))
    minimum = float(lrs[at_min])
    suggestion = max(float(lrs[0]), minimum / 10)
    steepest = minimum
    if at_min >= 2:
        # Slope over a window of about a twentieth of the sweep, to damp the noise.
        w = max(1, len(lrs) // 20)
        log = np.log(lrs[: at_min + 1])
        ahead = np.minimum(np.arange(at_min + 1) + w, at_min)
        behind = np.maximum(np.arange(at_min + 1) - w, 0)
        slope = (curve[ahead] - curve[behind]) / np.maximum(
            log[ahead] - log[behind], 1e-12
        )
        # The first tenth of the sweep is mostly the moving average warming up.
        first = min(at_min, len(lrs) // 10)
        steepest = float(lrs[first + int(np.argmin(slope[first:]))])
    end = "diverged, stopped" if stopped else "ran all steps"
    reason = (
        f"the smoothed loss is lowest ({curve[at_min]:.3g}) at lr {minimum:.1e}; a "
        f"tenth of that is {suggestion:.1e} (steepest descent at {steepest:.1e}; "
        f"{len(losses)} steps, {end})."
    )
    if at_min < max(2, len(lrs) // 10):
        reason += (
            " The loss hardly fell before it rose: lower min_lr, or check the data"
            " and the loss."
        )
    elif not stopped and at_min >= len(lrs) - 2:
        reason += " The loss still fell at max_lr: raise max_lr for a clearer curve."
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
