"""Cutting a base at a block: the output tensor of a block, and truncated bases.

A block's *output* is the one tensor through which everything at or below the
block reaches the blocks above it. Block maps never split a residual unit, so for
the blocks of Keras Applications that tensor exists and is unique; when it does not
(two tensors cross the boundary, as with a long skip connection), cutting there
raises a `BlockMapError` that names the tensors.

`block_outputs` finds the output tensors of many blocks in one walk of the graph
(the probe pools them all in one forward pass); `cut_base` turns a `Base` into one
that ends at a block, with its block map truncated to match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras

from tltf.bases.base import Base
from tltf.bases.blockmaps import BlockMap, validate_block_map
from tltf.errors import BlockMapError, ConfigError, suggest


def resolve_block(block_map: BlockMap, block: int | str, what: str = "cut") -> int:
    """The 0-based position of a block given by name or index.

    Args:
        block_map: BlockMap. The base's blocks, bottom to top.
        block: str or int. A block name, or an index in `[0, n - 1]` (negative
            indices count from the top, as in Python: -1 is the top block).
        what: str. The argument name, for error messages. Defaults to "cut".

    Returns:
        The position, in `[0, n - 1]`.

    Raises:
        BlockMapError: for an unknown block name (with suggestions).
        ConfigError: for an index out of range or a value of another type.
    """
    n = len(block_map)
    if isinstance(block, str):
        if block in block_map.names:
            return block_map.position(block)
        raise BlockMapError(
            f"Expected {what} as a block of the base. Received: {what}={block!r}, "
            f"which is not a block.{suggest(block, block_map.names)} Blocks "
            f"(bottom to top, indices 0 to {n - 1}): {block_map.names}"
        )
    if isinstance(block, bool) or not isinstance(block, int) or not -n <= block < n:
        raise ConfigError(
            f"Expected {what} as a block name or an index in [0, {n - 1}] (or "
            f"[-{n}, -1] from the top; the base has {n} blocks). Received: "
            f"{what}={block!r}. Blocks: {block_map.names}"
        )
    return block % n


def _graph_ranks(model: keras.Model, block_map: BlockMap) -> dict[int, int]:
    """For every operation: the rank of the highest block it depends on.

    An operation in a block gets at least its block's rank; operations in no block
    (inputs, weightless auto-named layers, `x + y` ops) get the highest rank among
    their producers, so they belong to the region of the block that feeds them.
    """
    rank = {name: i for i, name in enumerate(block_map.names)}
    block_of = {layer: b.name for b in block_map for layer in b.layers}
    layer_ids = {id(layer) for layer in model.layers}
    nodes = _own_nodes(model)
    reach: dict[int, int] = {}
    for op in getattr(model, "operations", model.layers):
        upstream = max(
            (reach.get(id(t._keras_history.operation), -1) for t in _inputs(op, nodes)),
            default=-1,
        )
        own = rank.get(block_of.get(op.name, "")) if id(op) in layer_ids else None
        reach[id(op)] = upstream if own is None else max(own, upstream)
    return reach


def _own_nodes(model: keras.Model) -> set | None:
    """The keys of the nodes of `model`'s own graph, or None where Keras keeps
    none (a Sequential model keeps them in its functional form)."""
    graph = getattr(model, "_functional", None) or model
    nodes = getattr(graph, "_nodes", None)
    return nodes if isinstance(nodes, set) else None


def _inputs(op, nodes=None) -> list:
    """The symbolic tensors an operation was called on, over all its calls in
    the model whose graph's node keys are `nodes` (Keras's `Functional._nodes`;
    None: every call). A layer's calls in other models built on it (a
    `tltf.cache.FrozenSplit` calls the base's top blocks on its own input) are
    not the model's."""
    tensors = []
    for index, node in enumerate(op._inbound_nodes):
        if nodes is not None and f"{id(op)}_ib-{index}" not in nodes:
            continue
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None and history.operation is not None:
                tensors.append(tensor)
    return tensors


def block_outputs(
    model: keras.Model,
    block_map: BlockMap,
    positions: Sequence[int],
    strict: bool = True,
) -> list:
    """The output tensor of each block at `positions`, in one walk of the graph.

    The output of block k is the unique tensor made at or below block k that an
    operation above block k consumes. The top block's output is the model's (its
    last, for a base with one output per pooled block).

    Args:
        model: keras.Model. The base.
        block_map: BlockMap. Its blocks, bottom to top.
        positions: sequence of int. 0-based block positions.
        strict: bool. Raise for a block that does not end in exactly one tensor;
            with False, its entry is None instead. Defaults to True.

    Returns:
        One symbolic tensor per position, usable as a `keras.Model` output.

    Raises:
        BlockMapError: when a block does not end in exactly one tensor (`strict`).
    """
    reach = _graph_ranks(model, block_map)
    nodes = _own_nodes(model)
    ops = list(getattr(model, "operations", model.layers))
    outputs = []
    last = len(block_map) - 1
    for k in positions:
        if k == last:
            # A base that `build_model` gave several outputs (`HeadConfig.pool_from`)
            # lists its blocks bottom to top: the top block's output is the last.
            outputs.append(model.outputs[-1])
            continue
        crossing: dict[int, object] = {}
        for op in ops:
            if reach[id(op)] <= k:
                continue
            for tensor in _inputs(op, nodes):
                if reach.get(id(tensor._keras_history.operation), -1) <= k:
                    crossing.setdefault(id(tensor), tensor)
        found = list(crossing.values())
        if len(found) != 1 and not strict:
            outputs.append(None)
            continue
        if len(found) != 1:
            producers = sorted({t._keras_history.operation.name for t in found})
            raise BlockMapError(
                f"Cannot cut base {model.name!r} after block "
                f"{block_map.names[k]!r}: {len(found)} tensors flow from it and the "
                f"blocks below into the blocks above (made by {producers[:6]}), not "
                "exactly one. Cut at a block that ends in a single tensor."
            )
        outputs.append(found[0])
    return outputs


def cut_base(base: Base, cut: int | str) -> tuple[Base, dict]:
    """A base that ends at block `cut`, with its block map truncated to match.

    The truncated model is a proper functional sub-model of the base (it shares
    the base's layers and weights), named `<base>_to_<block>`. Cutting at the top
    block keeps the base as it is.

    Args:
        base: Base. The full base.
        cut: str or int. The last block to keep: a block name, or an index in
            the block map (negative counts from the top).

    Returns:
        `(base, record)`: the cut `Base`, and the JSON record of the cut
        (`{"block", "index", "of"}`) that `build_model` stores in the model's
        metadata.

    Raises:
        BlockMapError, ConfigError: for a bad `cut` (see `resolve_block`).
    """
    block_map = base.block_map
    k = resolve_block(block_map, cut)
    name = block_map.names[k]
    record = {"block": name, "index": k, "of": len(block_map)}
    if k == len(block_map) - 1:
        return base, record
    (tensor,) = block_outputs(base.model, block_map, [k])
    model = keras.Model(
        base.model.inputs[0], tensor, name=f"{base.model.name}_to_{name}"
    )
    truncated = block_map.truncate(name)
    try:
        validate_block_map(model, truncated)
    except BlockMapError as error:
        raise BlockMapError(
            f"Cannot cut base {base.name!r} after block {name!r}: the blocks below "
            f"it do not all lead to its output ({error})"
        ) from None
    info = {**base.info, "cut": record}
    return dataclasses.replace(
        base, model=model, block_map=truncated, info=info
    ), record
