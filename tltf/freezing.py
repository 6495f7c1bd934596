"""Freezing and unfreezing by block, and the BatchNorm policy.

BatchNorm policies (`bn=`):

- "frozen" (default): every BN layer of the base runs in inference mode, with its
  moving mean and variance never updated and gamma/beta not trained.
- "affine": BN layers in unfrozen blocks train gamma and beta, but still normalise
  with (and never update) the moving statistics.
- "train": BN layers in unfrozen blocks train fully (batch statistics, moving
  averages updated). Frozen blocks keep their BN frozen.
- "adapt": as "frozen" while training, but `fine_tune` first re-estimates every
  BN layer's moving statistics on the target's training images (AdaBN, Li et
  al. 2016; `tltf.recalibrate_bn`), once, before stage 1. Used as a policy of
  `unfreeze`/`FineTuneSchedule` directly, it is "frozen".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import keras

from tltf.bases.blockmaps import BlockMap, carries_weights
from tltf.errors import ConfigError, suggest
from tltf.info import ModelInfo, model_info

BN_POLICIES = ("frozen", "affine", "train", "adapt")


def check_bn_policy(bn: str) -> str:
    """Validates a BatchNorm policy name."""
    if bn not in BN_POLICIES:
        raise ConfigError(
            f"Expected bn in {BN_POLICIES}. Received: bn={bn!r}."
            f"{suggest(str(bn), BN_POLICIES, n=1)}"
        )
    return bn


def resolve_unfreeze(
    block_map: BlockMap,
    base: keras.Model,
    blocks: int | str | None = None,
    *,
    layers: int | None = None,
    names: str | None = None,
    range: tuple | list | None = None,  # noqa: A002  (the config's key)
) -> tuple[list[str], str]:
    """Turns an unfreeze request into block names (bottom to top) and a note.

    Exactly one of `blocks`, `layers`, `names`, `range` is given.

    - `blocks=k`: the top k blocks (0 to all); `blocks="all"`: every block.
    - `layers=n`: the top n weight-carrying layers, rounded *up* to whole blocks so
      that no block is split; the note says how many blocks that made.
    - `names=regex`: every block whose name matches (`re.search`).
    - `range=(first, last)`: the contiguous blocks from `first` to `last`, both
      included; each end is a block name or a 0-based position from the bottom
      (negative positions count from the top, as in Python). The bottom blocks
      can be trained this way with the top ones frozen (surgical fine-tuning,
      Lee et al. 2023).
    """
    given = [v is not None for v in (blocks, layers, names, range)]
    if sum(given) != 1:
        raise ConfigError(
            "Pass exactly one of blocks=, layers=, names= or range=. "
            f"Received: blocks={blocks!r}, layers={layers!r}, names={names!r}, "
            f"range={range!r}"
        )
    n = len(block_map)
    if range is not None:
        first, last = (_block_position(block_map, end) for end in range)
        if first > last:
            raise ConfigError(
                f"Expected an unfreeze range from a lower block to a higher one. "
                f"Received: range={list(range)!r} (block {block_map.names[first]!r} "
                f"is above {block_map.names[last]!r}). Swap the two ends."
            )
        chosen = block_map.names[first : last + 1]
        span = chosen[0] if len(chosen) == 1 else f"{chosen[0]}..{chosen[-1]}"
        return chosen, f"blocks {span}"
    if names is not None:
        try:
            pattern = re.compile(names)
        except re.error as error:
            raise ConfigError(f"Invalid names= regex {names!r}: {error}") from None
        chosen = [b.name for b in block_map if pattern.search(b.name)]
        if not chosen:
            raise ConfigError(
                f"No block name matches names={names!r}. Blocks: {block_map.names}"
            )
        return chosen, f"blocks matching {names!r}"
    if layers is not None:
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ConfigError(f"Expected layers >= 0. Received: layers={layers!r}")
        weighted = {layer.name for layer in base.layers if carries_weights(layer)}
        counts = [sum(name in weighted for name in b.layers) for b in block_map]
        total = sum(counts)
        if layers > total:
            raise ConfigError(
                f"Expected unfreeze layers in [0, {total}] (weight-carrying layers of "
                f"the base). Received: layers={layers}"
            )
        k, covered = 0, 0
        while covered < layers:
            k += 1
            covered += counts[-k]
        note = f"layers={layers} rounded up to {k} whole blocks ({covered} layers)"
        return block_map.names[n - k :] if k else [], note
    if blocks == "all":
        return block_map.names, "all blocks"
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 0 <= blocks <= n:
        raise ConfigError(
            f"Expected unfreeze blocks in [0, {n}] or 'all' ({n} blocks in this base)."
            f" Received: blocks={blocks!r}"
        )
    return (block_map.names[n - blocks :] if blocks else []), f"top {blocks} blocks"


def _block_position(block_map: BlockMap, end) -> int:
    """The 0-based position of a range end: a block name or a position."""
    n = len(block_map)
    if isinstance(end, str):
        if end not in block_map.names:
            raise ConfigError(
                f"Unknown block {end!r} in the unfreeze range.{suggest(end, block_map.names)}"
                f" Blocks: {block_map.names}"
            )
        return block_map.position(end)
    if isinstance(end, bool) or not isinstance(end, int) or not -n <= end < n:
        raise ConfigError(
            f"Expected unfreeze range positions in [{-n}, {n - 1}] ({n} blocks in "
            f"this base; negative counts from the top). Received: {end!r}"
        )
    return end % n


def _batchnorms(layer: keras.layers.Layer) -> Iterable[keras.layers.BatchNormalization]:
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, keras.layers.BatchNormalization):
            yield sub


#: The layers that normalize activations: a base with none of them (VGG) keeps
#: the probe's depth on a large set (`LARGE_SET_NEEDS_NORMALIZATION`).
NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def has_normalization(model: keras.Model) -> bool:
    """Whether a model, nested models included, has a normalization layer
    (`NORMALIZATION_LAYERS`)."""
    return any(
        isinstance(layer, NORMALIZATION_LAYERS)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


def _force_inference(bn: keras.layers.BatchNormalization, enabled: bool) -> None:
    """Makes a trainable BN layer normalise with its moving statistics.

    Keras BN uses batch statistics whenever it is trainable and called with
    training=True; the "affine" policy needs trainable gamma/beta with inference
    statistics, so the instance's `call` pins `training=False`. Nothing of this is
    serialized: a saved model keeps only the layer's `trainable` flag.
    """
    if enabled:
        layer_call = type(bn).call

        def call(inputs, training=None, mask=None):
            return layer_call(bn, inputs, training=False, mask=mask)

        object.__setattr__(bn, "call", call)
    else:
        bn.__dict__.pop("call", None)


def apply_trainable(info: ModelInfo, trainable_blocks: Iterable[str], bn: str) -> None:
    """Sets the trainability of every base layer and the head (no recompile).

    Args:
        info: ModelInfo. The model's parts (see `model_info`).
        trainable_blocks: iterable of str. Blocks to train.
        bn: str. The BatchNorm policy.
    """
    check_bn_policy(bn)
    chosen = set(trainable_blocks)
    unknown = chosen - set(info.block_map.names)
    if unknown:
        raise ConfigError(
            f"Unknown blocks {sorted(unknown)}. Blocks: {info.block_map.names}"
        )
    for layer in info.head_layers:
        layer.trainable = True
    base = info.base
    for bn_layer in _batchnorms(base):
        _force_inference(bn_layer, False)
    if not chosen:
        base.trainable = False
        return
    base.trainable = True
    for layer in base.layers:
        on = info.block_map.block_of(layer.name) in chosen
        layer.trainable = on
        for bn_layer in _batchnorms(layer):
            if bn in ("frozen", "adapt") or not on:
                bn_layer.trainable = False
            elif bn == "affine":
                _force_inference(bn_layer, True)


def trainable_blocks(model: keras.Model) -> list[str]:
    """The blocks of the model's base that have trainable weights, bottom to top.

    Read from what `fit` trains, the model's trainable weights: a layer thawed
    through another model over the same layers counts, as Keras trains it.
    """
    info = model_info(model)
    trainable = {id(v) for v in model.trainable_weights}
    out = []
    for block in info.block_map:
        for name in block.layers:
            layer = info.base.get_layer(name)
            if any(id(v) in trainable for v in layer.weights):
                out.append(block.name)
                break
    return out


def _recompile(model: keras.Model) -> None:
    """Recompiles after a change of trainability, keeping the compile arguments."""
    if not getattr(model, "compiled", False):
        return
    config = model.get_compile_config()
    if config is None:
        raise ConfigError(
            "The model's compile arguments cannot be serialized, so tltf cannot "
            "recompile it after changing trainability. Call model.compile(...) again."
        )
    model.compile_from_config(config)


def freeze(model: keras.Model) -> keras.Model:
    """Freezes the whole base; the head stays trainable (stage 1).

    Every BN layer of the base runs in inference mode. A compiled model is
    recompiled with the same arguments, so the change takes effect.

    Example:

    >>> tltf.freeze(model)
    >>> tltf.trainable_blocks(model)
    []
    """
    info = model_info(model)
    apply_trainable(info, [], "frozen")
    _recompile(model)
    return model


def unfreeze(
    model: keras.Model,
    blocks: int | str | None = None,
    *,
    layers: int | None = None,
    names: str | None = None,
    range: tuple | list | None = None,  # noqa: A002  (the config's key)
    bn: str = "frozen",
) -> list[str]:
    """Unfreezes whole blocks of the base: the top ones, or any contiguous range.

    Blocks are the recommended unit. `layers=n` counts weight-carrying layers from
    the top and rounds up to whole blocks, so a residual unit is never split; the
    number of blocks it made is printed. Blocks that are not chosen stay frozen.
    A compiled model is recompiled with the same arguments.

    Args:
        model: keras.Model. A model built by `build_model`.
        blocks: int or "all". How many blocks to unfreeze, from the top.
        layers: int or None. Unfreeze at least this many layers from the top.
        names: str or None. A regex; unfreeze the blocks whose name matches.
        range: `(first, last)` or None. A contiguous range of blocks, both ends
            included: block names, or 0-based positions from the bottom
            (negative from the top). `range=(0, 0)` trains only the first
            block (surgical fine-tuning for input-level shifts, Lee et al.
            2023).
        bn: str. BatchNorm policy: "frozen", "affine" or "train". Defaults to
            "frozen".

    Returns:
        The names of the unfrozen blocks, bottom to top.

    Example:

    >>> tltf.unfreeze(model, blocks=3)
    ['block_15', 'block_16', 'top']
    """
    info = model_info(model)
    chosen, note = resolve_unfreeze(
        info.block_map, info.base, blocks, layers=layers, names=names, range=range
    )
    if layers is not None:
        print(f"tltf: {note}.")
    apply_trainable(info, chosen, check_bn_policy(bn))
    _recompile(model)
    return chosen


def block_summary(model: keras.Model, print_fn=print) -> list[dict]:
    """Prints and returns one row per block: layers, parameters, trainable or not.

    Args:
        model: keras.Model. A model built by `build_model`.
        print_fn: callable or None. Where to print; None prints nothing.
            Defaults to `print`.

    Returns:
        A list of dicts with keys "block", "layers", "params", "trainable".
    """
    info = model_info(model)
    trainable = {id(v) for v in info.base.trainable_weights}
    rows = []
    for block in info.block_map:
        weights = [
            w for name in block.layers for w in info.base.get_layer(name).weights
        ]
        rows.append(
            {
                "block": block.name,
                "layers": len(block.layers),
                "params": int(sum(math.prod(w.shape) for w in weights)),
                "trainable": any(id(w) in trainable for w in weights),
            }
        )
    if print_fn is not None:
        width = max(len(r["block"]) for r in rows)
        print_fn(f"{'block':<{width}}  {'layers':>6}  {'params':>10}  trainable")
        for r in rows:
            mark = "yes" if r["trainable"] else "-"
            print_fn(
                f"{r['block']:<{width}}  {r['layers']:>6}  {r['params']:>10,}  {mark}"
            )
    return rows


def unfreeze_kwargs(unfreeze) -> dict[str, Any]:
    """`unfreeze` as keyword arguments of `resolve_unfreeze`."""
    if isinstance(unfreeze, dict):
        allowed = {"blocks", "layers", "names", "range"}
        if len(unfreeze) != 1 or not set(unfreeze) <= allowed:
            raise ConfigError(
                "Expected unfreeze as an int, 'all', or one of {'blocks': k}, "
                "{'layers': n}, {'names': regex}, {'range': [first, last]}. "
                f"Received: unfreeze={unfreeze!r}"
            )
        return dict(unfreeze)
    return {"blocks": unfreeze}
