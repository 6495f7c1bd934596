"""Block rules for the ResNet, DenseNet, Inception, Xception and NASNet bases.

These are multi-branch networks (residual, dense and inception cells); some need
rules that read the graph, not only the names (`GRAPH_RULES`).

A *block rule* maps a layer name of a ``keras.applications`` model to the
name of the architecture block it belongs to (the architecture's own units,
bottom to top), or to ``None`` for weightless layers that belong to no block
(the ``InputLayer``, or a layer whose name says nothing about its block).

Keras 3 gives unnamed layers auto-generated names (``conv2d_17``,
``activation_3``...) from process-wide counters that are *not* reset per
model: building the same model twice in one process yields different names,
and only ``keras.backend.clear_session()`` resets them. Such names carry no
block information, so:

* ``RULES`` holds the purely name-based rules. They exist only for the
  families where every weight-carrying layer is explicitly named (``resnet``,
  ``resnet_v2``, ``densenet``, ``nasnet``); they return ``None`` for the
  auto-named weightless layers (the shortcut ``MaxPooling2D`` of ResNetV2,
  the stem ``ZeroPadding2D`` of DenseNet, the ReLUs, paddings, croppings and
  some adds and concatenations inside NASNet cells, and NASNet's final ReLU).
* ``GRAPH_RULES`` holds, for all seven families, a function that takes the
  built model and returns the complete ``{layer_name: block_name}`` mapping,
  deriving the blocks of auto-named layers from the graph. ``inception_v3``,
  ``inception_resnet_v2`` and ``xception`` auto-name weight-carrying layers
  (convolutions and batch norms in the Inception branches and stems, the
  Xception shortcut convolutions), so they have graph rules only.

Block names:

* ``resnet`` / ``resnet_v2``: ``stem``, ``conv2_block1`` ... ``conv5_blockN``,
  ``top`` (ResNetV2's ``post_bn``/``post_relu``, pooling, classifier).
* ``densenet``: ``stem``, ``conv2_block1`` ..., transitions ``pool2``,
  ``pool3``, ``pool4``, ``top`` (final ``bn``/``relu``, pooling, classifier).
* ``inception_v3``: ``stem``, ``mixed0`` ... ``mixed10``, ``top``.
* ``inception_resnet_v2``: ``stem``, ``mixed_5b``, ``block35_1`` ...
  ``block35_10``, ``mixed_6a``, ``block17_1`` ... ``block17_20``,
  ``mixed_7a``, ``block8_1`` ... ``block8_10``, ``top`` (``conv_7b``).
* ``xception``: ``block1`` ... ``block14``, ``top``.
* ``nasnet``: ``stem``, then ``cell_<id>`` per cell with the Keras cell id
  (``cell_stem_1``, ``cell_stem_2``, ``cell_0`` ..., ``cell_reduce_4`` ...),
  ``top``. A cell's ``adjust_*`` layers belong to the cell that creates them,
  although they transform the output of the cell before the previous one;
  Keras therefore lists them in ``model.layers`` among the previous cell's
  layers, so NASNet blocks are not contiguous in ``model.layers``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import keras

BlockRule = Callable[[str], str | None]
"""Maps a layer name to its block name, or ``None``."""

GraphRule = Callable[[keras.Model], dict[str, str]]
"""Maps a built model to ``{layer_name: block_name}`` for its layers."""

_Table = tuple[tuple[re.Pattern[str], str], ...]

_STEM = "stem"
_TOP = "top"

_RESNET: _Table = (
    (re.compile(r"(?:conv1|pool1)_[a-z]+"), _STEM),
    (re.compile(r"(conv[2-5]_block\d+)_\w+"), r"\1"),
    (re.compile(r"post_bn|post_relu|avg_pool|max_pool|predictions"), _TOP),
)

_DENSENET: _Table = (
    (re.compile(r"conv1_[a-z]+|pool1"), _STEM),
    (re.compile(r"(conv[2-5]_block\d+)_\w+"), r"\1"),
    (re.compile(r"(pool[2-4])_[a-z]+"), r"\1"),
    (re.compile(r"bn|relu|avg_pool|max_pool|predictions"), _TOP),
)

_NASNET: _Table = (
    (re.compile(r"stem_conv1|stem_bn1"), _STEM),
    (
        re.compile(
            r"(?:normal|reduction|adjust|separable_conv)_\w+?"
            r"_(stem_[12]|reduce_\d+|\d+)"
        ),
        r"cell_\1",
    ),
    (re.compile(r"predictions"), _TOP),
)

# Landmark tables of the graph-only families: they label the explicitly
# named layers; the auto-named ones are placed by `_assign_by_segments`.
_INCEPTION_V3: _Table = (
    (re.compile(r"mixed\d+"), r"\g<0>"),
    (re.compile(r"avg_pool|max_pool|predictions"), _TOP),
)

_INCEPTION_RESNET_V2: _Table = (
    (re.compile(r"mixed_5b|mixed_6a|mixed_7a"), r"\g<0>"),
    (re.compile(r"(block(?:35|17|8)_\d+)_(?:mixed|conv|ac)"), r"\1"),
    (re.compile(r"conv_7b|conv_7b_bn|conv_7b_ac|avg_pool|predictions"), _TOP),
)

_XCEPTION: _Table = (
    (re.compile(r"(block\d+)_\w+"), r"\1"),
    (re.compile(r"avg_pool|predictions"), _TOP),
)


def _lookup(name: str, table: _Table) -> str | None:
    """Returns the block of the first pattern of ``table`` matching ``name``.

    Args:
        name: Layer name.
        table: ``(pattern, template)`` pairs; a pattern must match the whole
            name, and the template is expanded with its groups.

    Returns:
        The block name, or ``None`` when no pattern matches.
    """
    for pattern, template in table:
        match = pattern.fullmatch(name)
        if match is not None:
            return match.expand(template)
    return None


def resnet_rule(name: str) -> str | None:
    """Block rule of ResNet50/101/152 and ResNet50V2/101V2/152V2.

    Args:
        name: Layer name.

    Returns:
        ``"stem"``, ``"conv<S>_block<N>"`` or ``"top"``; ``None`` for the
        input layer and ResNetV2's auto-named shortcut ``MaxPooling2D``.
    """
    return _lookup(name, _RESNET)


def densenet_rule(name: str) -> str | None:
    """Block rule of DenseNet121/169/201.

    Args:
        name: Layer name.

    Returns:
        ``"stem"``, ``"conv<S>_block<N>"``, ``"pool<S>"`` or ``"top"``;
        ``None`` for the input layer and the auto-named stem paddings.
    """
    return _lookup(name, _DENSENET)


def nasnet_rule(name: str) -> str | None:
    """Block rule of NASNetMobile and NASNetLarge.

    Args:
        name: Layer name.

    Returns:
        ``"stem"``, ``"cell_<id>"`` or ``"top"``; ``None`` for the input
        layer and the auto-named weightless layers (ReLUs, paddings,
        croppings, some adds and concatenations, the final ReLU).
    """
    return _lookup(name, _NASNET)


def _layer_parents(model: keras.Model) -> dict[str, list[str]]:
    """Returns, per layer of ``model``, the names of the layers feeding it.

    Args:
        model: A functional model.

    Returns:
        ``{layer_name: [parent_name, ...]}`` restricted to ``model.layers``.
    """
    names = {id(layer): layer.name for layer in model.layers}
    parents: dict[str, list[str]] = {}
    for layer in model.layers:
        found: list[str] = []
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                name = names.get(id(tensor._keras_history.operation))
                if name is not None and name not in found:
                    found.append(name)
        parents[layer.name] = found
    return parents


def _is_input(layer: keras.Layer) -> bool:
    """Tells whether ``layer`` is a model input."""
    return isinstance(layer, keras.layers.InputLayer)


def _assign_by_consumers(model: keras.Model, rule: BlockRule) -> dict[str, str]:
    """Completes a name rule by placing unnamed layers with their consumers.

    Fits architectures whose auto-named layers only prepare inputs of a
    named layer of their own block (ResNetV2 shortcut pooling, DenseNet stem
    padding, NASNet cell internals). A layer ``rule`` leaves unassigned gets
    the earliest block among the layers it feeds (transitively through other
    unassigned layers), or ``"top"`` when it feeds none (NASNet's final
    ReLU, an unnamed global pooling).

    Args:
        model: A functional model.
        rule: Name rule of the model's family.

    Returns:
        ``{layer_name: block_name}`` for every non-input layer.
    """
    layers = [layer for layer in model.layers if not _is_input(layer)]
    blocks = {layer.name: rule(layer.name) for layer in layers}
    rank: dict[str, int] = {}
    for block in blocks.values():
        if block is not None:
            rank.setdefault(block, len(rank))
    children: dict[str, list[str]] = {layer.name: [] for layer in layers}
    for name, parents in _layer_parents(model).items():
        for parent in parents:
            if parent in children:
                children[parent].append(name)
    assigned: dict[str, str] = {}
    for layer in reversed(layers):
        block = blocks[layer.name]
        if block is None:
            below = [assigned[child] for child in children[layer.name]]
            block = min(below, key=rank.__getitem__, default=_TOP)
            rank.setdefault(block, len(rank))
        assigned[layer.name] = block
    return {layer.name: assigned[layer.name] for layer in layers}


def _assign_by_segments(model: keras.Model, table: _Table) -> dict[str, str]:
    """Assigns blocks by cutting the graph at the layers every path crosses.

    Fits single-path architectures (Inception, Xception) whose blocks end in
    a layer that all data flows through. The model is split at its *cut*
    layers (those that every other layer precedes or follows); each segment
    (the layers after one cut, up to and including the next) gets the block
    of its landmark layers, named layers that ``table`` labels. A segment
    without landmarks (auto-named stem layers, InceptionResNetV2's final
    scaling layer) joins the previous landmark's block, or ``"stem"`` before
    the first landmark, or ``"top"`` after the last.

    Args:
        model: A functional model with one input and one output.
        table: Landmark patterns of the model's family.

    Returns:
        ``{layer_name: block_name}`` for every non-input layer.

    Raises:
        ValueError: If a segment holds landmarks of two blocks.
    """
    layers = model.layers
    parents = _layer_parents(model)
    index = {layer.name: i for i, layer in enumerate(layers)}
    ancestors: dict[str, int] = {}
    for layer in layers:  # model.layers is in topological order.
        mask = 1 << index[layer.name]
        for parent in parents[layer.name]:
            mask |= ancestors[parent]
        ancestors[layer.name] = mask
    descendants = dict.fromkeys(ancestors, 0)
    for layer in reversed(layers):
        descendants[layer.name] |= 1 << index[layer.name]
        for parent in parents[layer.name]:
            descendants[parent] |= descendants[layer.name]
    everything = (1 << len(layers)) - 1
    cuts = [
        layer.name
        for layer in layers
        if ancestors[layer.name] | descendants[layer.name] == everything
    ]
    segments: list[tuple[list[str], str | None]] = []
    done = 0
    for cut in cuts:  # Nested ancestor sets, in topological order.
        fresh = ancestors[cut] & ~done
        done |= fresh
        members = [
            layer.name
            for layer in layers
            if fresh >> index[layer.name] & 1 and not _is_input(layer)
        ]
        labels = {_lookup(name, table) for name in members} - {None}
        if len(labels) > 1:
            raise ValueError(f"Layers {members} span blocks {sorted(labels)}.")
        if members:
            segments.append((members, labels.pop() if labels else None))
    last = max(
        (i for i, (_, label) in enumerate(segments) if label is not None),
        default=-1,
    )
    assigned: dict[str, str] = {}
    block = _STEM
    for position, (members, label) in enumerate(segments):
        block = label or (_TOP if position > last else block)
        assigned.update(dict.fromkeys(members, block))
    return assigned


def _by_consumers(rule: BlockRule) -> GraphRule:
    """Binds a name rule to `_assign_by_consumers`."""
    return lambda model: _assign_by_consumers(model, rule)


def _by_segments(table: _Table) -> GraphRule:
    """Binds a landmark table to `_assign_by_segments`."""
    return lambda model: _assign_by_segments(model, table)


RULES: dict[str, BlockRule] = {
    "resnet": resnet_rule,
    "resnet_v2": resnet_rule,
    "densenet": densenet_rule,
    "nasnet": nasnet_rule,
}
"""Name-based block rules, keyed by ``keras.applications`` module name."""

GRAPH_RULES: dict[str, GraphRule] = {
    "resnet": _by_consumers(resnet_rule),
    "resnet_v2": _by_consumers(resnet_rule),
    "densenet": _by_consumers(densenet_rule),
    "nasnet": _by_consumers(nasnet_rule),
    "inception_v3": _by_segments(_INCEPTION_V3),
    "inception_resnet_v2": _by_segments(_INCEPTION_RESNET_V2),
    "xception": _by_segments(_XCEPTION),
}
"""Graph-based block assignments, keyed by ``keras.applications`` module name.

They agree with ``RULES`` wherever a name rule returns a block.
"""
