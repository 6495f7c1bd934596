"""Bases: the registry of Keras Applications, block maps, weights and loading."""

from tltf.bases.base import Base, load_base, load_saved_base, save_base
from tltf.bases.blockmaps import (
    Block,
    BlockMap,
    block_map_from_rule,
    infer_block_map,
    validate_block_map,
)
from tltf.bases.registry import REGISTRY, BaseSpec, get_spec, list_bases

__all__ = [
    "REGISTRY",
    "Base",
    "BaseSpec",
    "Block",
    "BlockMap",
    "block_map_from_rule",
    "get_spec",
    "infer_block_map",
    "list_bases",
    "load_base",
    "load_saved_base",
    "save_base",
    "validate_block_map",
]
