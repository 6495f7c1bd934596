"""Optimizers: made from a name, cloned at a new rate, given per-variable rates.

Every place tltf needs a fresh optimizer (stage 2, the LR finder, the tuner's
trials, a distribution strategy's scope) goes through `make_optimizer` or
`clone_optimizer`, so names are checked once and a `LossScaleOptimizer` is always
cloned with its inner optimizer.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tltf.errors import ConfigError


def make_optimizer(optimizer, learning_rate=None):
    """A new optimizer from a name (e.g. "adam") or like an optimizer instance.

    Args:
        optimizer: str or keras.optimizers.Optimizer. A Keras optimizer name, or an
            instance to copy (same class and config; never shares its state).
        learning_rate: float, schedule or None. The rate; None keeps the
            instance's rate (or the Keras default for a name).

    Raises:
        ConfigError: for an unknown name or something that is not an optimizer.
    """
    if isinstance(optimizer, str):
        config = {} if learning_rate is None else {"learning_rate": learning_rate}
        try:
            return keras.optimizers.get({"class_name": optimizer, "config": config})
        except ValueError:
            raise ConfigError(
                f"Unknown optimizer {optimizer!r}. Use a Keras optimizer name such as "
                "'adam', 'adamw' or 'sgd', or an optimizer instance."
            ) from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ConfigError(
            "Expected optimizer as a name or a keras.optimizers.Optimizer. "
            f"Received: {type(optimizer).__name__}"
        )
    return clone_optimizer(optimizer, learning_rate)


def clone_optimizer(template, learning_rate=None):
    """A fresh optimizer like `template` (same class and config), at a new rate.

    A `LossScaleOptimizer` is cloned with a clone of its inner optimizer.
    """
    if isinstance(template, keras.optimizers.LossScaleOptimizer):
        inner = clone_optimizer(template.inner_optimizer, learning_rate)
        return keras.optimizers.LossScaleOptimizer(inner)
    config = template.get_config()
    if learning_rate is not None:
        config["learning_rate"] = learning_rate
    return type(template).from_config(config)


def set_lr_multipliers(optimizer: keras.optimizers.Optimizer, multipliers) -> None:
    """Gives variables their own learning-rate multipliers in a Keras optimizer.

    Works with every built-in optimizer (Adam, AdamW, SGD, RMSprop, Lion, ...):
    their `update_step(gradient, variable, learning_rate)` receives the learning
    rate per variable, so this scales it for the listed variables. The optimizer
    must be built on those variables. Multipliers scale the gradient step; AdamW's
    decoupled weight decay keeps the base rate. They are training-time settings and
    are not saved with the optimizer's config.

    Args:
        optimizer: keras.optimizers.Optimizer. A built optimizer (a
            LossScaleOptimizer is unwrapped).
        multipliers: `(variable, multiplier)` pairs; other variables keep 1.0.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    table = {inner._var_key(v): float(m) for v, m in multipliers if m != 1.0}
    class_update_step = type(inner).update_step

    def update_step(gradient, variable, learning_rate):
        scale = table.get(inner._var_key(variable))
        if scale is not None:
            learning_rate = learning_rate * scale
        return class_update_step(inner, gradient, variable, learning_rate)

    object.__setattr__(inner, "update_step", update_step)


def set_rgn_rates(optimizer: keras.optimizers.Optimizer, groups) -> keras.Variable:
    """Scales each group's learning rate by its relative gradient norm (Auto-RGN).

    Auto-RGN (Lee et al. 2023, "Surgical fine-tuning improves adaptation to
    distribution shifts"): at every step, each group `g` of variables gets the
    rate `lr * RGN_g / max_h RGN_h`, where `RGN_g = ||grad_g|| / ||w_g||`, the
    norm of the group's gradient relative to the norm of its weights. Groups
    whose gradients are large for their size (the paper finds: the blocks that a
    shift touches) train at the full rate; the others slow down, without anyone
    choosing which blocks to tune. tltf groups by block (the paper by layer).

    Works with every built-in optimizer (the per-variable rate of `update_step`,
    as `set_lr_multipliers`), on one device: under a tf.distribute strategy the
    gradients reach the optimizer per replica, so it raises there.

    Args:
        optimizer: keras.optimizers.Optimizer. A built optimizer (a
            LossScaleOptimizer is unwrapped).
        groups: sequence of sequences of variables. Variables in no group keep
            the base rate.

    Returns:
        A non-trainable float32 variable of shape `(len(groups),)` holding the
        last step's multipliers (1.0 before the first step), for reports.

    Raises:
        ConfigError: under a tf.distribute strategy.
    """
    if tf.distribute.has_strategy():
        raise ConfigError(
            "lr_policy='auto_rgn' is not supported under a tf.distribute strategy "
            "(the optimizer sees each replica's gradients). Use lr_decay for "
            "per-block rates there, or train on one device."
        )
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    index = {inner._var_key(v): i for i, group in enumerate(groups) for v in group}
    n = len(groups)
    last = keras.Variable(
        [1.0] * n, dtype="float32", trainable=False, name="rgn_multipliers"
    )
    current: dict = {}
    class_backend_step = type(inner)._backend_update_step
    class_update_step = type(inner).update_step

    def backend_update_step(grads, variables, learning_rate):
        grad_sq = [tf.constant(0.0)] * n
        weight_sq = [tf.constant(0.0)] * n
        for gradient, variable in zip(grads, variables, strict=True):
            i = index.get(inner._var_key(variable))
            if i is None or gradient is None:
                continue
            grad_sq[i] += tf.reduce_sum(tf.square(tf.cast(gradient, "float32")))
            weight_sq[i] += tf.reduce_sum(
                tf.square(tf.cast(tf.convert_to_tensor(variable), "float32"))
            )
        rgn = tf.sqrt(tf.stack(grad_sq)) / (tf.sqrt(tf.stack(weight_sq)) + 1e-12)
        scales = rgn / tf.maximum(tf.reduce_max(rgn), 1e-30)
        last.assign(scales)
        current["scales"] = scales
        return class_backend_step(inner, grads, variables, learning_rate)

    def update_step(gradient, variable, learning_rate):
        i = index.get(inner._var_key(variable))
        scales = current.get("scales")
        if i is not None and scales is not None:
            learning_rate = learning_rate * tf.cast(scales[i], learning_rate.dtype)
        return class_update_step(inner, gradient, variable, learning_rate)

    object.__setattr__(inner, "_backend_update_step", backend_update_step)
    object.__setattr__(inner, "update_step", update_step)
    return last
