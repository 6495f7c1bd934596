"""Block maps: the ordered list of an architecture's real blocks, bottom to top.

A block is the unit tltf freezes and unfreezes: a MobileNetV2 inverted-residual
block, a ResNet unit, an EfficientNet `block2a`, an Inception `mixed3`. Blocks never
split a residual unit, so unfreezing "the top 3 blocks" always trains whole units.

Block maps of Keras Applications come from per-family naming rules (see `rules`).
For any other model, `infer_block_map` derives one from layer names (see its
docstring), and a user can always pass an explicit map.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence

import keras

from tltf.errors import BlockMapError

#: A naming rule: layer name -> block name, or None for a weightless layer that
#: belongs to no block (the InputLayer, say).
Rule = Callable[[str], "str | None"]


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a base: its name and the names of its layers."""

    name: str
    layers: tuple[str, ...]


class BlockMap(tuple):
    """An ordered tuple of `Block`s, bottom (input side) to top.

    Example:

    >>> bm = BlockMap([Block("stem", ("conv",)), Block("top", ("head_bn",))])
    >>> bm.names
    ['stem', 'top']
    >>> bm.block_of("head_bn")
    'top'
    """

    def __new__(cls, blocks: Iterable[Block]):
        return super().__new__(cls, tuple(blocks))

    @property
    def names(self) -> list[str]:
        """The block names, bottom to top."""
        return [b.name for b in self]

    def position(self, name: str) -> int:
        """The 0-based position of block `name`, counted from the bottom."""
        for i, block in enumerate(self):
            if block.name == name:
                return i
        raise BlockMapError(f"No block named {name!r}. Blocks: {self.names}")

    def block_of(self, layer_name: str) -> str | None:
        """Returns the name of the block holding `layer_name`, or None."""
        return self._layer_index().get(layer_name)

    def layer_names(self) -> set[str]:
        """All layer names covered by the map."""
        return set(self._layer_index())

    def _layer_index(self) -> dict[str, str]:
        index = getattr(self, "_index", None)
        if index is None:
            index = {layer: b.name for b in self for layer in b.layers}
            self.__dict__["_index"] = index
        return index

    def to_config(self) -> list[list]:
        """A JSON-serializable form: `[[block_name, [layer, ...]], ...]`."""
        return [[b.name, list(b.layers)] for b in self]

    @classmethod
    def from_config(cls, config: Sequence) -> BlockMap:
        """Inverse of `to_config`; also accepts `{block: [layers]}` dicts."""
        items = config.items() if isinstance(config, dict) else config
        return cls(Block(str(name), tuple(layers)) for name, layers in items)

    def truncate(self, last_block: str) -> BlockMap:
        """The map up to and including `last_block`."""
        return BlockMap(self[: self.position(last_block) + 1])


def carries_weights(layer: keras.layers.Layer) -> bool:
    """Whether a layer owns variables (trainable or not, e.g. BN statistics)."""
    return len(layer.weights) > 0


def _is_input(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def block_map_from_rule(model: keras.Model, rule: Rule) -> BlockMap:
    """Builds a block map by applying a naming rule to every layer of `model`.

    Blocks are ordered by the first appearance of their layers in `model.layers`,
    which Keras keeps in topological order.

    Args:
        model: keras.Model. The base.
        rule: callable. Maps a layer name to a block name, or None.

    Returns:
        The `BlockMap`. It is not validated; call `validate_block_map`.
    """
    groups: dict[str, list[str]] = {}
    for layer in model.layers:
        block = rule(layer.name)
        if block is not None:
            groups.setdefault(block, []).append(layer.name)
    return BlockMap(Block(name, tuple(layers)) for name, layers in groups.items())


def block_map_from_assignment(
    model: keras.Model, assignment: dict[str, str]
) -> BlockMap:
    """Builds a block map from an explicit `{layer_name: block_name}` dict."""
    return block_map_from_rule(model, assignment.get)


def _producers(layer) -> list:
    """The operations whose outputs feed `layer` in its model's graph."""
    producers = []
    for node in layer._inbound_nodes:
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is not None:
                producers.append(history.operation)
    return producers


def validate_block_map(model: keras.Model, block_map: BlockMap) -> None:
    """Checks that `block_map` describes `model` and is ordered.

    Coverage: every weight-carrying layer is in exactly one block, and every name in
    the map is a layer of the model. Order: no data flows from a higher block into a
    lower one, so that "the top k blocks" is a well-defined upper part of the
    network.

    Args:
        model: keras.Model. The base the map describes.
        block_map: BlockMap. The map to check.

    Raises:
        BlockMapError: naming the layers that are missing, duplicated, unknown or
            out of order.
    """
    layer_names = [layer.name for layer in model.layers]
    known = set(layer_names)
    seen: dict[str, str] = {}
    duplicated, unknown = [], []
    for block in block_map:
        for name in block.layers:
            if name in seen:
                duplicated.append(f"{name} (in {seen[name]!r} and {block.name!r})")
            seen[name] = block.name
            if name not in known:
                unknown.append(name)
    missing = [
        layer.name
        for layer in model.layers
        if carries_weights(layer) and layer.name not in seen
    ]
    problems = []
    if missing:
        problems.append(f"weight-carrying layers in no block: {missing[:10]}")
    if duplicated:
        problems.append(f"layers in several blocks: {duplicated[:10]}")
    if unknown:
        problems.append(f"names that are not layers of the model: {unknown[:10]}")
    if not problems:
        problems.extend(_order_problems(model, block_map, seen))
    if problems:
        raise BlockMapError(
            f"The block map does not describe model {model.name!r}: "
            + "; ".join(problems)
            + ". Pass an explicit map with `block_map={'block': [layer names], ...}` "
            "(bottom to top) or fix the naming rule."
        )


def _order_problems(
    model: keras.Model, block_map: BlockMap, block_of: dict[str, str]
) -> list[str]:
    rank = {name: i for i, name in enumerate(block_map.names)}
    # Rank of the highest block feeding each operation, propagated through
    # operations in no block: inputs, and ops that are not layers (the `x + y` of a
    # ConvNeXt residual, say). `model.operations` is in topological order.
    reach: dict[int, int] = {}
    problems = []
    layer_ids = {id(layer) for layer in model.layers}
    for op in getattr(model, "operations", model.layers):
        upstream = max((reach.get(id(p), -1) for p in _producers(op)), default=-1)
        own = rank.get(block_of.get(op.name, "")) if id(op) in layer_ids else None
        if own is None:
            reach[id(op)] = upstream
            continue
        if upstream > own:
            problems.append(
                f"layer {op.name!r} in block {block_map.names[own]!r} is fed by "
                f"block {block_map.names[upstream]!r}, which comes later"
            )
        reach[id(op)] = max(own, upstream)
    return problems[:5]


_AUTO_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)*(?:_\d+)?$")
_SPLIT = re.compile(r"[_/.]")


def _unit_key(name: str) -> str | None:
    """The name prefix up to the first token with a digit: `block3_conv1` -> `block3`."""
    tokens = _SPLIT.split(name)
    for i, token in enumerate(tokens[:-1]):
        if any(ch.isdigit() for ch in token):
            return "_".join(tokens[: i + 1])
    return None


def _is_auto_name(layer: keras.layers.Layer) -> bool:
    """Whether a layer's name is Keras's default (`conv2d_3`, `dense`)."""
    base = re.sub(r"_\d+$", "", layer.name)
    auto = re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()
    return base == auto or base.replace("_", "") == auto.replace("_", "")


def _graph_nodes(model: keras.Model) -> list:
    """The call nodes of `model`'s own graph, in `model.operations` order (the
    topological order `infer_block_map` walks `model.layers` in).

    Walks back from the outputs through each tensor's `_keras_history`, so nodes
    from other graphs a layer was called in are left out.
    """
    nodes, seen, stack = [], set(), [t for t in model.outputs]
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None:
            continue
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(node.input_tensors)
    order = getattr(model, "operations", None) or model.layers  # Sequential: layers
    rank = {id(op): i for i, op in enumerate(order)}
    return sorted(nodes, key=lambda node: rank.get(id(node.operation), -1))


def cut_layers(model: keras.Model) -> set[str]:
    """The layers that every path from the input to the output runs through.

    A layer is a cut when the one tensor it reads is the only tensor still
    needed at that point of the graph, as at the first layer after a residual
    unit's `Add`. Inside a unit, the shortcut is still alive, so no layer there
    is a cut. In a plain chain every layer is. Empty for a model whose graph
    cannot be read (a subclassed model).
    """
    try:
        nodes = _graph_nodes(model)
    except (AttributeError, IndexError, TypeError):
        return set()
    last_use: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for tensor in node.input_tensors:
            last_use[id(tensor)] = i
    for tensor in model.outputs:
        last_use[id(tensor)] = len(nodes)
    alive = {id(t) for t in model.inputs}
    cuts = set()
    for i, node in enumerate(nodes):
        alive = {t for t in alive if last_use.get(t, -1) >= i}
        inputs = {id(t) for t in node.input_tensors}
        if len(inputs) == 1 and alive == inputs:
            cuts.add(node.operation.name)
        alive |= {id(t) for t in node.outputs}
    return cuts


def infer_block_map(model: keras.Model) -> BlockMap:
    """Infers a block map for a model that tltf has no rule for.

    How it works, in `model.layers` order (topological):

    1. Each layer gets a *unit key*: its name up to the first `_`/`/`/`.`-separated
       token that contains a digit, so `block3_conv1` and `block3_pool` share
       `block3`, and `stage2_unit1_bn` has `stage2`. Keras's default names
       (`conv2d_3`, `batch_normalization_1`) give no key.
    2. Consecutive layers with the same key form one block.
    3. A layer without a key joins the current block if it carries no weights
       (activations, adds, pooling), if it is a normalization layer that
       directly follows its input's block, or if a shortcut runs past it and
       past every layer since the block's last weighted one (no cut of the
       graph lies between them, see `cut_layers`: a residual unit's second
       convolution or its projection). Otherwise it starts a block of its own,
       named after the layer. So a residual unit with Keras's default layer
       names is one block, as in the registry's maps, also when it begins with
       a weightless layer (a pre-activation ReLU). Weightless layers before the
       first block (a `Rescaling`) join it.

    The result is validated (coverage and order, see `validate_block_map`). When
    names carry no structure, pass `block_map=` explicitly.

    Args:
        model: keras.Model. Any functional or sequential base.

    Returns:
        The inferred, validated `BlockMap`.
    """
    blocks: list[tuple[str, list[str]]] = []
    used: set[str] = set()

    def start(name: str, layer_name: str) -> None:
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}_{n}", n + 1
        used.add(unique)
        blocks.append((unique, [layer_name]))

    current_key = None
    cuts = cut_layers(model)
    # Where the current block's trailing weightless layers were last cut: the
    # next block begins there (a residual unit's pre-activation ReLU is its
    # own). None: no cut since the block's last weighted layer.
    cut_at: int | None = None
    leading: list[str] = []  # weightless layers before the first block
    for layer in model.layers:
        if _is_input(layer):
            continue
        key = None if _is_auto_name(layer) else _unit_key(layer.name)
        if key is not None:
            if key == current_key and blocks:
                blocks[-1][1].append(layer.name)
            else:
                start(key, layer.name)
            current_key, cut_at = key, None
            continue
        is_norm = isinstance(
            layer,
            (
                keras.layers.BatchNormalization,
                keras.layers.LayerNormalization,
                keras.layers.GroupNormalization,
            ),
        )
        is_cut = not cuts or layer.name in cuts  # unreadable graph: names only
        if not carries_weights(layer) or is_norm:
            if not blocks and not carries_weights(layer):
                leading.append(layer.name)
                continue
            if not blocks:
                start(layer.name, layer.name)
            else:
                if is_cut and not is_norm:
                    cut_at = len(blocks[-1][1])
                blocks[-1][1].append(layer.name)
            continue
        if blocks and not is_cut and cut_at is None:
            blocks[-1][1].append(layer.name)  # a shortcut runs past it
        else:
            moved = []
            if blocks and not is_cut and cut_at is not None:
                moved = blocks[-1][1][cut_at:]
                del blocks[-1][1][cut_at:]
            start(layer.name, layer.name)
            blocks[-1][1][:0] = moved
            current_key = None
        cut_at = None
    if leading and blocks:  # a Rescaling or Normalization first joins block 1
        blocks[0] = (blocks[0][0], leading + blocks[0][1])
    block_map = BlockMap(Block(name, tuple(layers)) for name, layers in blocks)
    validate_block_map(model, block_map)
    return block_map
