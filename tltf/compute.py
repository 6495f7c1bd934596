"""How a model computes: mixed precision, XLA, and bases rebuilt for either.

`build_model(..., mixed_precision=True)` builds the whole model under a Keras
mixed dtype policy: layers compute in float16 (or bfloat16) and keep float32
variables, and the head's output layer stays float32, so losses and predictions
are float32. The global dtype policy is restored afterwards. `fine_tune(...,
jit_compile=...)` passes XLA compilation on to `model.compile`.

Which mixed policy:

- "mixed_float16" when a GPU is visible (Tensor Cores; Keras wraps the optimizer
  in a `LossScaleOptimizer` at compile time, so small float16 gradients do not
  underflow);
- "mixed_bfloat16" otherwise: CPUs (and TPUs) have bfloat16 units but slow or
  no float16 arithmetic, and bfloat16 has float32's exponent range, so no loss
  scaling is needed.

Pass the policy name instead of True to choose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

import keras
import tensorflow as tf

from tltf.data.inputs import pipeline_errors
from tltf.distribute import in_scope, is_distributed
from tltf.errors import ConfigError, TrainingError

#: Mixed dtype policies `mixed_precision=` accepts by name.
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")

#: Values `jit_compile=` accepts.
JIT_COMPILE = ("auto", True, False)


def resolve_policy(mixed_precision) -> str | None:
    """Turns a `mixed_precision=` option into a Keras dtype policy name.

    Args:
        mixed_precision: bool, None, "mixed_float16" or "mixed_bfloat16". True
            picks "mixed_float16" when a GPU is visible, else "mixed_bfloat16".
            False and None keep the current global policy (float32 by default).

    Returns:
        The policy name, or None for "leave the global policy".

    Example:

    >>> tltf.compute.resolve_policy(True)          # on a CPU-only machine
    'mixed_bfloat16'
    """
    if mixed_precision is None or mixed_precision is False:
        return None
    if mixed_precision is True:
        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
        return "mixed_bfloat16"
    if isinstance(mixed_precision, str) and mixed_precision in MIXED_POLICIES:
        return mixed_precision
    raise ConfigError(
        "Expected mixed_precision as True, False or one of "
        f"{MIXED_POLICIES}. Received: mixed_precision={mixed_precision!r}"
    )


@contextlib.contextmanager
def policy_scope(policy: str | None):
    """Sets Keras's global dtype policy for a block and restores it afterwards.

    Args:
        policy: str or None. A dtype policy name; None changes nothing.
    """
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check_jit_compile(value):
    """Validates a `jit_compile=` option ("auto", True or False)."""
    if not any(value is v or (isinstance(v, str) and value == v) for v in JIT_COMPILE):
        raise ConfigError(
            "Expected jit_compile as 'auto', True or False. "
            f"Received: jit_compile={value!r}"
        )
    return value


_XLA_MARKERS = (
    "XLA",
    "xla",
    "jit_compile",
    "Detected unsupported operations",
    "No registered",
)


@contextlib.contextmanager
def xla_errors(jit_compile):
    """Turns an XLA compilation failure into a TrainingError that names the fix.

    Only active when `jit_compile is True`: "auto" lets Keras decide, and Keras
    turns XLA off where it knows it cannot work (CPU-only machines, tf.distribute).
    """
    if jit_compile is not True:
        yield
        return
    try:
        yield
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.UnimplementedError,
        tf.errors.NotFoundError,
    ) as error:
        message = str(error)
        if not any(marker in message for marker in _XLA_MARKERS):
            raise
        found = re.search(r"compile graph \S* ?on (\w+): ([^(\n]+?) \(", message)
        node = re.search(r"\{\{node ([^}]+)\}\}", message)
        if found:
            what = f"op {found.group(2).strip()} has no XLA kernel on {found.group(1)}"
            if node:
                what += f" (node {node.group(1)})"
        else:
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            what = next((x for x in lines if "XLA" in x or "xla" in x), lines[0])[:300]
        raise TrainingError(
            f"XLA could not compile the training step (jit_compile=True): {what}. "
            "Use jit_compile='auto' (XLA only where Keras knows it works) or "
            "jit_compile=False, or replace that op."
        ) from error


def with_training_errors(function):
    """Decorates a training function with `xla_errors` (for its `jit_compile`
    keyword argument) and `pipeline_errors`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with xla_errors(kwargs.get("jit_compile", "auto")), pipeline_errors():
            return function(*args, **kwargs)

    return wrapper


# -- rebuilding a base under a strategy or a dtype policy ------------------------
def needs_rebuild(model: keras.Model, strategy, policy: str | None) -> list[str]:
    """Why a base model must be rebuilt to suit a strategy and a dtype policy.

    Returns:
        The reasons (empty when the model can be used as it is).
    """

    reasons = []
    if is_distributed(strategy) and not in_scope(model, strategy):
        reasons.append(f"its variables were created outside {type(strategy).__name__}")
    if policy is not None:
        off = [
            layer.name
            for layer in _leaf_layers(model)
            if layer.weights and layer.dtype_policy.name != policy
        ]
        if off:
            reasons.append(f"{len(off)} layers compute in another dtype than {policy}")
    return reasons


def rebuild_base(base, strategy, policy: str | None):
    """The base itself, or a rebuilt copy when the strategy or policy needs one.

    Args:
        base: tltf.Base. A loaded base.
        strategy: tf.distribute.Strategy. The strategy the model is built under.
        policy: str or None. The dtype policy the model is built under.

    Returns:
        A `Base` whose model suits both (same weights, names and block map).
    """
    if not needs_rebuild(base.model, strategy, policy):
        return base
    return dataclasses.replace(base, model=rebuild(base.model, policy))


def _leaf_layers(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.Model):
            yield layer


def rebuild(model: keras.Model, policy: str | None = None) -> keras.Model:
    """A copy of a functional model, built in the current scope, same weights.

    Call it under a strategy's scope to get variables of that strategy; with
    `policy`, every layer gets that dtype policy (variables stay float32 under a
    mixed policy). Layer and model names are kept, so block maps still apply.

    Args:
        model: keras.Model. A functional or Sequential model.
        policy: str or None. A dtype policy name for every layer. Defaults to
            None (keep each layer's).

    Returns:
        The new model.

    Raises:
        ConfigError: for a subclassed model, which cannot be cloned.
    """

    def clone_layer(layer):
        config = layer.get_config()
        if policy is not None:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(
            model, clone_function=clone_layer, recursive=True
        )
    except (ValueError, TypeError, NotImplementedError) as error:
        reason = " ".join(str(error).split())  # Keras's message spans lines
        raise ConfigError(
            f"Base {model.name!r} cannot be rebuilt for the strategy or dtype "
            f"policy ({error.__class__.__name__}: {reason[:200]}). Build it "
            "yourself under `strategy.scope()` (and "
            "`keras.config.set_dtype_policy(...)`) and pass that model."
        ) from None
    for layer in model.layers:
        if layer.weights:
            clone.get_layer(layer.name).set_weights(layer.get_weights())
    return clone
