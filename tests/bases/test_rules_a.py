"""Checks the block rules of `tltf.bases._rules_a` on real models."""

from __future__ import annotations

from collections.abc import Callable

import keras
import pytest

from tltf.bases._rules_a import RULES
from tltf.bases.blockmaps import Rule

_SIZE = 32

# Smallest constructor of each family, keyed by the family's rule name.
_CONSTRUCTORS: dict[str, Callable[..., keras.Model]] = {
    "mobilenet": lambda **kw: keras.applications.MobileNet(alpha=0.25, **kw),
    "mobilenet_v2": lambda **kw: keras.applications.MobileNetV2(alpha=0.35, **kw),
    "mobilenet_v3": keras.applications.MobileNetV3Small,
    "efficientnet": keras.applications.EfficientNetB0,
    "efficientnet_v2": keras.applications.EfficientNetV2B0,
    "convnext": keras.applications.ConvNeXtTiny,
    "vgg16": keras.applications.VGG16,
}


def _block_indices(model: keras.Model, rule: Rule) -> dict[int, int]:
    """Numbers the blocks of `model` by the first appearance of their layers.

    Args:
        model: The model to split into blocks.
        rule: The block rule applied to the names of `model.layers`.

    Returns:
        Block index per `id()` of each layer assigned to a block.
    """
    numbers: dict[str, int] = {}
    indices: dict[int, int] = {}
    for layer in model.layers:
        block = rule(layer.name)
        if block is not None:
            indices[id(layer)] = numbers.setdefault(block, len(numbers))
    return indices


def _upstream_block(
    operation: object, indices: dict[int, int], memo: dict[int, int]
) -> int:
    """Returns the highest block index feeding `operation`, or -1 if none.

    Unassigned operations (weightless layers without a block, and non-layer
    operations such as `x + y`) are passed through.

    Args:
        operation: A layer or other operation of the model.
        indices: Block index per `id()` of each assigned layer.
        memo: Cache of results per `id()` of operation.

    Returns:
        The maximum block index among the nearest assigned ancestors.
    """
    key = id(operation)
    if key not in memo:
        highest = -1
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                parent = tensor._keras_history.operation
                parent_index = indices.get(id(parent))
                if parent_index is None:
                    parent_index = _upstream_block(parent, indices, memo)
                highest = max(highest, parent_index)
        memo[key] = highest
    return memo[key]


@pytest.fixture(scope="module", params=sorted(_CONSTRUCTORS))
def family(request: pytest.FixtureRequest) -> tuple[keras.Model, Rule]:
    """Builds the smallest model of a family at the minimum input size."""
    model = _CONSTRUCTORS[request.param](
        weights=None, include_top=False, input_shape=(_SIZE, _SIZE, 3)
    )
    return model, RULES[request.param]


def test_rules_cover_all_families() -> None:
    assert set(RULES) == set(_CONSTRUCTORS) | {"vgg19"}


def test_weighted_layers_are_covered(family: tuple[keras.Model, Rule]) -> None:
    model, rule = family
    uncovered = [
        layer.name
        for layer in model.layers
        if layer.weights and rule(layer.name) is None
    ]
    assert not uncovered


def test_input_layer_has_no_block(family: tuple[keras.Model, Rule]) -> None:
    model, rule = family
    inputs = [
        layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)
    ]
    assert inputs
    assert all(rule(layer.name) is None for layer in inputs)


def test_blocks_are_contiguous(family: tuple[keras.Model, Rule]) -> None:
    model, rule = family
    indices = _block_indices(model, rule)
    sequence = [indices[id(layer)] for layer in model.layers if id(layer) in indices]
    assert sequence == sorted(sequence)


def test_blocks_respect_dataflow(family: tuple[keras.Model, Rule]) -> None:
    model, rule = family
    indices = _block_indices(model, rule)
    memo: dict[int, int] = {}
    violations = [
        layer.name
        for layer in model.layers
        if id(layer) in indices
        and _upstream_block(layer, indices, memo) > indices[id(layer)]
    ]
    assert not violations
