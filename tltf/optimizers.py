"""Optimizers: made from a name, cloned at a new rate, given per-variable rates.

Every place tltf needs a fresh optimizer (stage 2, the LR finder, the tuner's
trials, a distribution strategy's scope) goes through `make_optimizer` or
`clone_optimizer`, so names are checked once and a `LossScaleOptimizer` is always
cloned with its inner optimizer.
"""

from __future__ import annotations

import keras

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
