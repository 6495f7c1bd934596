"""Tests of the block rules in `tltf.bases._rules_multibranch`."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from tltf.bases._rules_multibranch import GRAPH_RULES, RULES  # noqa: E402

Constructor = Callable[..., keras.Model]

_STAGES = {
    "resnet": ((2, 3), (3, 4), (4, 6), (5, 3)),
    "densenet": ((2, 6), (3, 12), (4, 24), (5, 16)),
}
_RESNET50 = ["stem"] + [
    f"conv{s}_block{n}" for s, k in _STAGES["resnet"] for n in range(1, k + 1)
]

# Blocks, bottom to top, of the smallest constructor of each family.
EXPECTED_BLOCKS = {
    "resnet": _RESNET50,
    "resnet_v2": [*_RESNET50, "top"],
    "densenet": ["stem"]
    + [
        block
        for s, k in _STAGES["densenet"]
        for block in [*(f"conv{s}_block{n}" for n in range(1, k + 1)), f"pool{s}"]
        if block != "pool5"
    ]
    + ["top"],
    "inception_v3": ["stem"] + [f"mixed{i}" for i in range(11)],
    "inception_resnet_v2": ["stem", "mixed_5b"]
    + [f"block35_{i}" for i in range(1, 11)]
    + ["mixed_6a"]
    + [f"block17_{i}" for i in range(1, 21)]
    + ["mixed_7a"]
    + [f"block8_{i}" for i in range(1, 11)]
    + ["top"],
    "xception": [f"block{i}" for i in range(1, 15)],
    "nasnet": ["stem", "cell_stem_1", "cell_stem_2"]
    + [f"cell_{i}" for i in range(4)]
    + ["cell_reduce_4"]
    + [f"cell_{i}" for i in range(5, 9)]
    + ["cell_reduce_8"]
    + [f"cell_{i}" for i in range(9, 13)]
    + ["top"],
}

# (family, smallest constructor, minimum input size, another input size).
CASES = [
    ("resnet", keras.applications.ResNet50, 32, 67),
    ("resnet_v2", keras.applications.ResNet50V2, 32, 67),
    ("densenet", keras.applications.DenseNet121, 32, 67),
    ("inception_v3", keras.applications.InceptionV3, 75, 139),
    ("inception_resnet_v2", keras.applications.InceptionResNetV2, 75, 139),
    ("xception", keras.applications.Xception, 71, 99),
    ("nasnet", keras.applications.NASNetMobile, 32, 67),
]


#: The families whose model takes seconds to build: `make test-fast` skips them.
SLOW_FAMILIES = {"inception_v3", "inception_resnet_v2", "nasnet"}


def _params(cases: list[tuple[str, Constructor, int, int]]) -> list[object]:
    """Turns cases into pytest params ``(family, ctor, size)``.

    The registry test already checks every entry at its minimum size; here the
    smallest model of each family is built once at a second, odd size.
    """
    return [
        pytest.param(
            family,
            ctor,
            other,
            id=f"{ctor.__name__}-{other}",
            marks=pytest.mark.slow if family in SLOW_FAMILIES else (),
        )
        for family, ctor, _minimum, other in cases
    ]


def build(ctor: Constructor, size: int) -> keras.Model:
    """Builds the layer graph of a headless base at ``size`` x ``size``.

    The rules read the graph alone, so the variables are declared but never
    created (see test_registry.py).
    """
    with keras.StatelessScope(initialize_variables=False):
        return ctor(weights=None, include_top=False, input_shape=(size, size, 3))


def feeders(layer: keras.Layer) -> list[keras.Layer]:
    """Returns the layers whose outputs ``layer`` consumes."""
    return [
        tensor._keras_history.operation
        for node in layer._inbound_nodes
        for tensor in node.input_tensors
    ]


def block_order(model: keras.Model, assignment: dict[str, str]) -> list[str]:
    """Returns the blocks ordered by their first layer in ``model.layers``."""
    order: list[str] = []
    for layer in model.layers:
        block = assignment.get(layer.name)
        if block is not None and block not in order:
            order.append(block)
    return order


def check_coverage(model: keras.Model, assignment: dict[str, str]) -> None:
    """Checks that every weight-carrying layer lies in a block."""
    missing = [
        layer.name
        for layer in model.layers
        if layer.weights and layer.name not in assignment
    ]
    assert not missing, f"weighted layers without block: {missing}"


def check_dataflow(model: keras.Model, assignment: dict[str, str]) -> None:
    """Checks that no layer consumes a layer of a later block.

    Unassigned layers are passed through: their feeders count as feeders of
    their consumers.
    """
    rank = {block: i for i, block in enumerate(block_order(model, assignment))}
    for layer in model.layers:
        if layer.name not in assignment:
            continue
        own = assignment[layer.name]
        pending, seen = feeders(layer), set()
        while pending:
            feeder = pending.pop()
            if id(feeder) in seen:
                continue
            seen.add(id(feeder))
            if feeder.name not in assignment:
                pending.extend(feeders(feeder))
                continue
            other = assignment[feeder.name]
            assert rank[other] <= rank[own], (
                f"{layer.name} ({own}) consumes {feeder.name} ({other})"
            )


def check_monotone(model: keras.Model, assignment: dict[str, str]) -> None:
    """Checks that the block index never decreases along ``model.layers``."""
    rank = {block: i for i, block in enumerate(block_order(model, assignment))}
    ranks = [
        (rank[assignment[layer.name]], layer.name)
        for layer in model.layers
        if layer.name in assignment
    ]
    drops = [
        name for (r0, _), (r1, name) in zip(ranks, ranks[1:], strict=False) if r1 < r0
    ]
    assert not drops, f"block index decreases at {drops}"


def nasnet_adjust_path(model: keras.Model) -> set[str]:
    """Returns the layers on the ``adjust`` paths of NASNet cells.

    These are the ``adjust_*`` layers and the auto-named layers (padding,
    cropping, concatenation) that only feed them. An adjust path transforms
    the output of the cell before the previous one, so Keras lists it among
    the previous cell's layers.
    """
    consumers: dict[str, list[str]] = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for feeder in feeders(layer):
            consumers[feeder.name].append(layer.name)
    path: set[str] = set()
    for layer in reversed(model.layers):
        helper = RULES["nasnet"](layer.name) is None and bool(consumers[layer.name])
        if layer.name.startswith("adjust_") or (
            helper and all(name in path for name in consumers[layer.name])
        ):
            path.add(layer.name)
    return path


def check_order(family: str, model: keras.Model, assignment: dict[str, str]) -> None:
    """Checks dataflow and ``model.layers`` order of the blocks.

    NASNet's adjust paths are left out of the ``model.layers`` order check
    (they are still checked for dataflow).
    """
    check_dataflow(model, assignment)
    if family == "nasnet":
        path = nasnet_adjust_path(model)
        assert len(path) > 0
        assignment = {k: v for k, v in assignment.items() if k not in path}
    check_monotone(model, assignment)


@pytest.mark.parametrize(("family", "ctor", "size"), _params(CASES))
def test_graph_rule(family: str, ctor: Constructor, size: int) -> None:
    """The graph rule assigns every layer, in dataflow order, to known blocks."""
    model = build(ctor, size)
    assignment = GRAPH_RULES[family](model)
    assert set(assignment) == {
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    }
    check_coverage(model, assignment)
    check_order(family, model, assignment)
    assert block_order(model, assignment) == EXPECTED_BLOCKS[family]


@pytest.mark.parametrize(
    ("family", "ctor", "size"),
    _params([case for case in CASES if case[0] in ("inception_v3", "xception")]),
)
def test_graph_rule_ignores_name_counters(
    family: str, ctor: Constructor, size: int
) -> None:
    """Auto-generated names differ between two builds; the blocks must not."""
    first, second = build(ctor, size), build(ctor, size)
    blocks = []
    for model in (first, second):
        assignment = GRAPH_RULES[family](model)
        blocks.append([assignment.get(layer.name) for layer in model.layers])
    assert blocks[0] == blocks[1]
    if family in ("inception_v3", "inception_resnet_v2", "xception"):
        names = [[layer.name for layer in model.layers] for model in (first, second)]
        assert names[0] != names[1]
