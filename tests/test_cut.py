"""build_model(..., cut=): building on an intermediate block of the base."""

from __future__ import annotations

import numpy as np
import pytest

import tltf
from tests.helpers import make_data, make_tiny_base, weights_snapshot
from tltf.errors import BlockMapError, ConfigError
from tltf.model import model_info


@pytest.mark.parametrize("cut", ["block2", 1, -3])
def test_cut_builds_on_the_block_and_records_it(cut):
    full = make_tiny_base()
    block2_out = full.get_layer("block2_relu").output
    model = tltf.build_model(full, num_classes=3, cut=cut)
    info = model_info(model)
    assert info.block_map.names == ["block1", "block2"]
    assert info.metadata["cut"] == {"block": "block2", "index": 1, "of": 4}
    assert info.metadata["blocks"] == info.block_map.to_config()
    # A proper sub-model ending at block2's output, without the blocks above.
    assert info.base.name == "tiny_to_block2"
    # (The head reads both blocks: the base's last output is block2's.)
    assert tuple(info.base.outputs[-1].shape) == tuple(block2_out.shape)
    names = {layer.name for layer in info.base.layers}
    assert "block2_relu" in names and not names & {"block3_conv", "block4_conv"}
    assert tltf.trainable_blocks(model) == []
    assert model.predict(make_data(4)[0], verbose=0).shape == (4, 3)


def test_unfreeze_counts_only_blocks_below_the_cut():
    model = tltf.build_model(make_tiny_base(), num_classes=3, cut="block3")
    assert tltf.unfreeze(model, "all") == ["block1", "block2", "block3"]
    assert tltf.unfreeze(model, 1) == ["block3"]
    assert tltf.trainable_blocks(model) == ["block3"]
    assert [r["block"] for r in tltf.block_summary(model, print_fn=None)] == [
        "block1",
        "block2",
        "block3",
    ]
    with pytest.raises(ConfigError, match=r"\[0, 3\]"):
        tltf.unfreeze(model, 4)


@pytest.mark.slow
def test_fine_tune_on_a_cut_model_then_save_and_load(tmp_path, data):
    model = tltf.build_model(make_tiny_base(), num_classes=3, cut="block2")
    info = model_info(model)
    before = weights_snapshot(info.base)
    history = tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        fine_tune_lr=1e-3,
        unfreeze=1,
        keep_best=False,  # what stage 2 trains, whether or not the guard keeps it
        verbose=0,
    )
    assert history.history["stage"] == [1, 2]
    after = weights_snapshot(info.base)
    changed = {
        k.split("/")[-2] for k in before if not np.array_equal(before[k], after[k])
    }
    assert changed == {"block2_conv"}  # block1 frozen; BN frozen by default
    path = tmp_path / "cut.keras"
    model.save(path)
    loaded = tltf.load_model(path)  # safe_mode=True
    x = data[0][:8]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    loaded_info = model_info(loaded)
    assert loaded_info.block_map.names == ["block1", "block2"]
    assert loaded_info.metadata["cut"]["block"] == "block2"
    assert tltf.unfreeze(loaded, "all") == ["block1", "block2"]


def test_bad_cut_names_the_valid_blocks():
    with pytest.raises(BlockMapError, match=r"Did you mean 'block2'.*indices 0 to 3"):
        tltf.build_model(make_tiny_base(), num_classes=3, cut="blok2")
    for bad in (4, -5, 1.0, True):
        with pytest.raises(ConfigError, match=r"\[0, 3\].*Received: cut="):
            tltf.build_model(make_tiny_base(), num_classes=3, cut=bad)


def test_cut_at_the_top_keeps_the_whole_base():
    model = tltf.build_model(make_tiny_base(), num_classes=3, cut="block4")
    info = model_info(model)
    assert info.base.name == "tiny"
    assert len(info.block_map) == 4
    assert info.metadata["cut"] == {"block": "block4", "index": 3, "of": 4}


def test_cut_a_registry_base_after_a_residual_block():
    model = tltf.build_model(
        "mobilenet_v2",
        num_classes=2,
        weights=None,
        input_shape=(32, 32, 3),
        alpha=0.35,
        cut="block_2",
    )
    info = model_info(model)
    assert info.block_map.names[-1] == "block_2"
    # block_2 ends with the residual add: its output is the add's.
    assert info.base.outputs[-1].shape[1:] == (8, 8, 8)
    assert "block_2_add" in {layer.name for layer in info.base.layers}
    assert "block_3_expand" not in {layer.name for layer in info.base.layers}
    assert tltf.unfreeze(model, 1) == ["block_2"]
