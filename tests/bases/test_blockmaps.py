"""Block-map validation and inference for bases tltf has no rule for."""

from __future__ import annotations

import keras
import pytest

from tests.helpers import make_tiny_base
from tltf.bases.blockmaps import (
    Block,
    BlockMap,
    infer_block_map,
    validate_block_map,
)
from tltf.errors import BlockMapError


def test_infer_from_name_prefixes():
    block_map = infer_block_map(make_tiny_base())
    assert block_map.names == ["block1", "block2", "block3", "block4"]
    assert block_map.block_of("block2_bn") == "block2"
    assert block_map.block_of("block2_relu") == "block2"


def test_infer_with_auto_names_attaches_bn_to_its_conv():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
        ]
    )
    block_map = infer_block_map(model)
    assert len(block_map) == 2
    assert [len(b.layers) for b in block_map] == [3, 2]


def test_validate_reports_missing_duplicate_unknown_and_order():
    model = make_tiny_base()
    names = [layer.name for layer in model.layers[1:]]
    with pytest.raises(BlockMapError, match="in no block"):
        validate_block_map(model, BlockMap([Block("a", tuple(names[:-3]))]))
    with pytest.raises(BlockMapError, match="several blocks"):
        validate_block_map(
            model, BlockMap([Block("a", tuple(names)), Block("b", (names[0],))])
        )
    with pytest.raises(BlockMapError, match="not layers of the model"):
        validate_block_map(model, BlockMap([Block("a", (*names, "ghost"))]))
    reversed_map = BlockMap(
        [Block("top", tuple(names[6:])), Block("bottom", tuple(names[:6]))]
    )
    with pytest.raises(BlockMapError, match="which comes later"):
        validate_block_map(model, reversed_map)


def test_config_round_trip():
    block_map = infer_block_map(make_tiny_base())
    assert BlockMap.from_config(block_map.to_config()) == block_map
    assert block_map.truncate("block2").names == ["block1", "block2"]
