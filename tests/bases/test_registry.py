"""The registry: complete, and every entry's block map and preprocessing are right.

The block-map test builds every registered constructor with weights=None at its
minimum input size, so a new entry is tested the moment it is registered.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

import tltf
from tltf.bases.blockmaps import carries_weights, validate_block_map
from tltf.bases.registry import REGISTRY, applications_constructors, get_spec
from tltf.layers import Preprocessing

SPECS = sorted(REGISTRY.values(), key=lambda s: s.name)


def test_registry_covers_every_keras_applications_constructor():
    registered = {spec.constructor_name for spec in SPECS}
    missing = set(applications_constructors()) - registered
    assert not missing, (
        f"keras.applications constructors missing from the registry: {missing}"
    )


def test_registry_has_every_family():
    families = {spec.family for spec in SPECS}
    assert families >= {
        "convnext",
        "densenet",
        "efficientnet",
        "efficientnet_v2",
        "inception_resnet_v2",
        "inception_v3",
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3",
        "nasnet",
        "regnet",
        "resnet",
        "resnet_v2",
        "vgg16",
        "vgg19",
        "xception",
    }
    assert len([s for s in SPECS if s.family == "regnet"]) == 24


def test_names_are_snake_case_and_constructor_names_resolve():
    for spec in SPECS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert get_spec(spec.constructor_name) is spec
    assert tltf.list_bases("efficientnet_b*") == [
        f"efficientnet_b{i}" for i in range(8)
    ]


@pytest.mark.parametrize("family", sorted({s.family for s in SPECS}))
def test_preprocessing_layer_matches_preprocess_input(family):
    spec = next(s for s in SPECS if s.family == family)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.asarray(spec.preprocess_input(x.copy()))
    got = np.asarray(Preprocessing(spec.preprocessing)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


#: Small entries of each rule module (stage-wise, multi-branch, RegNet) that the
#: quick tier (`make test-fast`) builds too; the others are marked slow.
QUICK_SPECS = {"vgg16", "mobilenet_v2", "densenet121", "regnetx002"}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(s, marks=() if s.name in QUICK_SPECS else pytest.mark.slow)
        for s in SPECS
    ],
    ids=lambda s: s.name,
)
def test_block_map_covers_every_weight_layer_once_in_order(spec):
    size = spec.min_size
    # The block map reads the layer graph alone: in a StatelessScope that does
    # not initialise them on exit, the variables are declared but never created
    # (about half of the build time of the large models) and hold no memory, so
    # the autouse fixture's clear_session (which drops the uninitialised ones)
    # needs no gc.collect() after it.
    with keras.StatelessScope(initialize_variables=False):
        model = spec.constructor(
            weights=None, include_top=False, input_shape=(size, size, 3)
        )
    block_map = spec.block_map(model)
    validate_block_map(model, block_map)  # coverage, uniqueness and dataflow order
    covered = [name for block in block_map for name in block.layers]
    weighted = [layer.name for layer in model.layers if carries_weights(layer)]
    assert set(weighted) <= set(covered)
    assert len(covered) == len(set(covered))
    assert len(block_map) >= 5, block_map.names
    del model
