"""Training on several devices or machines with `tf.distribute`.

tltf adds no distribution layer of its own: `resolve_strategy` picks a
`tf.distribute` strategy, `build_model(..., strategy=)` creates the model's
variables under its scope, and `fine_tune` compiles and trains under the same
scope. Keras then does the rest (sharding the data, all-reducing the gradients).

Keras 3's `fit` does not work with `MultiWorkerMirroredStrategy` as released
(https://github.com/keras-team/keras/issues/20585, open). It fails in two
places, and `apply_keras_compat` patches exactly those two, only for the Keras
versions known to carry them (`KERAS_COMPAT_VERSIONS`) and only while a
multi-worker strategy is in use (see its docstring).

Example:

>>> strategy = tltf.distribute.resolve_strategy("multi_worker")  # reads TF_CONFIG
>>> model = tltf.build_model("efficientnet_b0", 5, strategy=strategy)
>>> tltf.fine_tune(model, train_ds, val_ds)      # trains under the same strategy
"""

from __future__ import annotations

import json
import os
import threading

import keras
import tensorflow as tf

from tltf.errors import ConfigError
from tltf.optimizers import clone_optimizer

#: Names `resolve_strategy` accepts.
STRATEGIES = ("auto", "mirrored", "multi_worker")

#: Keras versions `[low, high)` whose TensorFlow trainer has the two
#: MultiWorkerMirroredStrategy bugs of keras-team/keras#20585 (checked up to
#: 3.15.1). Raise the bound only after checking a new release's
#: `keras/src/backend/tensorflow/trainer.py` (tests/test_distribute.py fails on an
#: unchecked version).
KERAS_COMPAT_VERSIONS = ((3, 0), (3, 16))

_LOCK = threading.RLock()
_CACHE: dict = {}  # one strategy per request: MWMS can only be created once


def resolve_strategy(strategy=None) -> tf.distribute.Strategy:
    """Turns a `strategy=` option into a `tf.distribute.Strategy`.

    Args:
        strategy: None, "auto", "mirrored", "multi_worker" or a
            `tf.distribute.Strategy`. None and "auto" give a `MirroredStrategy`
            over all GPUs when more than one GPU is visible, else the default
            (no-op) strategy. "mirrored" gives a `MirroredStrategy` over all
            visible GPUs (or the CPU). "multi_worker" gives a
            `MultiWorkerMirroredStrategy` configured from the `TF_CONFIG`
            environment variable (one process per worker). A strategy instance
            is returned as is. Defaults to None.

    Returns:
        The strategy. The same request returns the same instance within a
        process, so `build_model` and `fine_tune` agree on it.

    Raises:
        ConfigError: for an unknown name, or "multi_worker" without a valid
            `TF_CONFIG`.

    Example:

    >>> strategy = tltf.distribute.resolve_strategy("mirrored")  # 4-GPU machine
    >>> strategy.num_replicas_in_sync
    4
    """
    if isinstance(strategy, tf.distribute.Strategy):
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            apply_keras_compat(strategy)
        return strategy
    if strategy is None:
        strategy = "auto"
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ConfigError(
            f"Expected strategy as one of {STRATEGIES}, None or a "
            f"tf.distribute.Strategy. Received: strategy={strategy!r}"
        )
    if strategy == "auto":
        if len(tf.config.list_physical_devices("GPU")) > 1:
            strategy = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if strategy == "mirrored":
        with _LOCK:
            if "mirrored" not in _CACHE:
                _CACHE["mirrored"] = tf.distribute.MirroredStrategy()
            return _CACHE["mirrored"]
    config = check_tf_config()
    with _LOCK:
        key = ("multi_worker", config)
        if key not in _CACHE:
            if any(k[0] == "multi_worker" for k in _CACHE):
                raise ConfigError(
                    "TF_CONFIG changed after a MultiWorkerMirroredStrategy was "
                    "created in this process; TensorFlow allows one per process. "
                    "Set TF_CONFIG once, before the first resolve_strategy call."
                )
            try:
                _CACHE[key] = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as error:
                raise ConfigError(
                    "Could not create a MultiWorkerMirroredStrategy "
                    f"({error}). Create it at program start, before any other "
                    "TensorFlow operation runs (resolve_strategy('multi_worker') "
                    "first thing after `import tltf`)."
                ) from None
        apply_keras_compat(_CACHE[key])
        return _CACHE[key]


def check_tf_config() -> str:
    """Checks the `TF_CONFIG` environment variable of a multi-worker run.

    Returns:
        The variable's text.

    Raises:
        ConfigError: when it is missing, not JSON, or lacks the cluster's workers
            or this process's task.
    """
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' (index 1 on the second host)'
    )
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise ConfigError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable, "
            f"which is not set. Set it in every worker process, e.g. {example}; "
            "or use strategy='mirrored' for the GPUs of one machine."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({error.msg} at character {error.pos}). "
            f"Expected e.g. {example}."
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not (
        cluster.get("worker") or cluster.get("chief")
    ):
        raise ConfigError(
            "TF_CONFIG has no cluster.worker list of 'host:port' addresses. "
            f"Received: {text[:200]}. Expected e.g. {example}."
        )
    if (
        not isinstance(task, dict)
        or task.get("type") not in cluster
        or not isinstance(task.get("index"), int)
        or not 0 <= task["index"] < len(cluster[task["type"]])
    ):
        raise ConfigError(
            "TF_CONFIG's task must name this process's place in the cluster: "
            '{"type": "worker", "index": i} with i in [0, number of workers). '
            f"Received: task={task!r}. Expected e.g. {example}."
        )
    return text


def is_chief() -> bool:
    """Whether this process should write the run's files in a multi-worker run.

    Every worker runs the same script; only one should save the model. That is
    the "chief" task if `TF_CONFIG` names one, else worker 0, else (no
    `TF_CONFIG`, a single process) this process.

    Example:

    >>> if tltf.distribute.is_chief():
    ...     model.save("model.keras")
    """
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError:
        return True
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return (
        "chief" not in cluster
        and task.get("type") == "worker"
        and (task.get("index", 0) == 0)
    )


def is_distributed(strategy) -> bool:
    """Whether `strategy` is a real (non-default) `tf.distribute` strategy."""
    return strategy is not None and not _is_default(strategy)


def _is_default(strategy) -> bool:
    # The default strategy is a private class; compare with the one outside scopes.
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def model_strategy(model: keras.Model, strategy=None) -> tf.distribute.Strategy:
    """The strategy a model trains under, checked against a requested one.

    Args:
        model: keras.Model. A model (its variables were created under the
            strategy it was built with).
        strategy: The `strategy=` given to `fine_tune`, or None to take the
            model's. Defaults to None.

    Returns:
        `model.distribute_strategy`.

    Raises:
        ConfigError: when `strategy` differs from the one the model was built
            under: variables cannot move to another strategy after creation.
    """
    own = model.distribute_strategy
    if strategy is None:
        if isinstance(own, tf.distribute.MultiWorkerMirroredStrategy):
            apply_keras_compat(own)
        return own
    wanted = resolve_strategy(strategy)
    same = wanted is own or (_is_default(wanted) and _is_default(own))
    if not same:
        raise ConfigError(
            f"fine_tune got strategy={_describe(wanted)}, but the model was built "
            f"under {_describe(own)}. A model's variables belong to the strategy "
            "they were created under: pass the strategy to "
            "`build_model(..., strategy=...)` and leave fine_tune's strategy unset."
        )
    return own


def _describe(strategy) -> str:
    if _is_default(strategy):
        return "no strategy (the default)"
    return f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas)"


def in_scope(model: keras.Model, strategy) -> bool:
    """Whether all of a model's variables were created under `strategy`'s scope."""
    extended = strategy.extended
    return all(
        extended.variable_created_in_scope(getattr(v, "value", v))
        for v in model.weights
    )


def optimizer_in_scope(optimizer, strategy):
    """The optimizer, or a copy made under `strategy` if it was made outside.

    A Keras optimizer creates variables (its step count, its learning rate) when
    it is constructed; under a distributed strategy they must be the strategy's.

    Args:
        optimizer: A Keras optimizer instance, or anything `compile` accepts.
        strategy: The strategy the model trains under.

    Returns:
        An optimizer whose variables belong to `strategy` (call under its scope).
    """
    if not is_distributed(strategy) or not isinstance(
        optimizer, keras.optimizers.Optimizer
    ):
        return optimizer
    extended = strategy.extended
    if all(
        extended.variable_created_in_scope(getattr(v, "value", v))
        for v in optimizer.variables
    ):
        return optimizer
    if optimizer.built:
        raise ConfigError(
            f"The optimizer {type(optimizer).__name__} was created and built "
            f"outside {type(strategy).__name__}. Pass an optimizer name or a new "
            "optimizer instance (tltf then creates it under the strategy's scope)."
        )
    with strategy.scope():
        return clone_optimizer(optimizer)


# -- Keras compatibility fixes (keras-team/keras#20585) ------------------------
def keras_compat_needed(version: str | None = None) -> bool:
    """Whether a Keras version carries the multi-worker bugs `apply_keras_compat` fixes.

    Args:
        version: str or None. A Keras version. Defaults to the installed one.
    """
    version = version or keras.__version__
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    low, high = KERAS_COMPAT_VERSIONS
    return low <= tuple(parts) < high


def apply_keras_compat(strategy) -> bool:
    """Patches Keras 3's `fit` for `MultiWorkerMirroredStrategy` (keras#20585).

    Keras 3's TensorFlow trainer fails under a multi-worker strategy in two places
    (https://github.com/keras-team/keras/issues/20585):

    1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first
       batch, which it gets by MEAN-reducing the `PerReplica` batch across
       workers, eagerly, outside any replica context. A collective reduce cannot
       take a `PerReplica` there, so `fit` raises "Attempt to convert a value
       (PerReplica...) to a Tensor". The build only needs shapes and dtypes, so
       the fix builds from this worker's first local replica batch.
    2. `reduce_per_replica` reduces each step's metric values with
       `strategy.reduce("MEAN", v, axis=0)`, and metric values are scalars:
       "Invalid reduction dimension 0 for input with 0 dimensions"
       (tensorflow/tensorflow#72388). The fix reduces scalars with `axis=None`
       (the mean over workers); everything else goes to Keras unchanged.

    Both patches act only on models whose strategy is a multi-worker
    `MultiWorkerMirroredStrategy` (Keras's own `_collective_all_reduce_multi_worker`
    test) and call the original Keras code otherwise. Applying them twice is a
    no-op. They are applied only for `KERAS_COMPAT_VERSIONS`.

    Args:
        strategy: The strategy in use; nothing is patched unless it is a
            `MultiWorkerMirroredStrategy`.

    Returns:
        True when the patches are (now or already) installed.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    if not keras_compat_needed():
        return False
    from keras.src.backend.tensorflow import trainer as tf_trainer

    with _LOCK:
        cls = tf_trainer.TensorFlowTrainer
        if not getattr(cls._maybe_symbolic_build, "_tltf_compat", False):
            cls._maybe_symbolic_build = _patched_symbolic_build(
                cls._maybe_symbolic_build, tf_trainer
            )
        if not getattr(tf_trainer.reduce_per_replica, "_tltf_compat", False):
            tf_trainer.reduce_per_replica = _patched_reduce(
                tf_trainer.reduce_per_replica, tf_trainer
            )
    return True


def _patched_symbolic_build(original, tf_trainer):
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if (
            iterator is None
            or strategy is None
            or not tf_trainer._collective_all_reduce_multi_worker(strategy)
        ):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                next(it),
            )
            break
        return original(self, iterator=None, data_batch=data_batch)

    _maybe_symbolic_build._tltf_compat = True
    _maybe_symbolic_build._tltf_original = original
    return _maybe_symbolic_build


def _patched_reduce(original, tf_trainer):
    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not (
            tf_trainer._collective_all_reduce_multi_worker(strategy)
        ):
            return original(values, strategy, reduction)

        def reduce(v):
            local = (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            )
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return keras.tree.map_structure(reduce, values)

    reduce_per_replica._tltf_compat = True
    reduce_per_replica._tltf_original = original
    return reduce_per_replica
