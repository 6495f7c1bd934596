"""Saved bases: atomic folders, safe loading, and rebuilding at another size."""

from __future__ import annotations

import numpy as np
import pytest

import tltf
from tests.helpers import make_tiny_base
from tltf.bases.base import load_saved_base
from tltf.errors import InputShapeError, ModelError


@pytest.mark.slow
def test_save_and_load_a_registry_base_at_its_size_and_another(tmp_path):
    base = tltf.load_base(
        "mobilenet", weights=None, input_shape=(32, 32, 3), alpha=0.25
    )
    path = tltf.save_base(base, tmp_path / "b")
    same = load_saved_base(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(
        same.model.predict(x, verbose=0), base.model.predict(x, verbose=0)
    )
    assert same.block_map == base.block_map and same.min_size == 32
    bigger = tltf.load_base(path, input_shape=(64, 64, 3))
    assert bigger.input_shape == (64, 64, 3)
    assert bigger.block_map.names == base.block_map.names
    for a, b in zip(base.model.weights, bigger.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model = tltf.build_model(path, 3, input_shape=(48, 48, 3))
    assert model.input_shape == (None, 48, 48, 3)


def test_saving_over_an_existing_base_replaces_it_whole(tmp_path):
    first = tltf.load_base(make_tiny_base(), block_map=None)
    tltf.save_base(first, tmp_path / "b", info={"run": 1})
    tltf.save_base(first, tmp_path / "b", info={"run": 2})
    assert load_saved_base(tmp_path / "b").info["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp leftovers


def test_bad_saved_bases(tmp_path):
    with pytest.raises(ModelError, match="not a saved tltf base"):
        load_saved_base(tmp_path)
    tltf.save_base(tltf.load_base(make_tiny_base()), tmp_path / "custom")
    with pytest.raises(InputShapeError, match="not a registry entry"):
        load_saved_base(tmp_path / "custom", input_shape=(32, 32, 3))
