"""Weights: the offline directory, local files, and the offline error message.

The ImageNet download really runs (and fails: tests have no network); the files
the offline directory serves are weights files this test writes.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

import tltf
from tltf.errors import WeightsError

ARGS = {"input_shape": (96, 96, 3), "alpha": 0.35}


def _write_legacy_weights(model, path):
    """Writes weights in the legacy HDF5 layout that Keras's ImageNet files use."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _offline_error(weights_dir) -> WeightsError:
    with pytest.raises(WeightsError) as info:
        tltf.load_base(
            "mobilenet_v2", weights="imagenet", weights_dir=weights_dir, **ARGS
        )
    return info.value


def test_offline_download_names_the_file_and_where_to_put_it(tmp_path):
    message = str(_offline_error(tmp_path))
    assert (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    )
    assert f"place the file at {tmp_path}/" in message
    assert "https://" in message  # the URL to fetch elsewhere


@pytest.mark.slow
@pytest.mark.parametrize("via", ["argument", "environment"])
def test_offline_directory_is_used_before_any_download(tmp_path, monkeypatch, via):
    target = re.search(r"place the file at (\S+?\.h5)", str(_offline_error(tmp_path)))[
        1
    ]
    source = tltf.load_base("mobilenet_v2", weights=None, **ARGS)
    _write_legacy_weights(source.model, target)
    if via == "environment":
        monkeypatch.setenv("TLTF_WEIGHTS_DIR", str(tmp_path))
        loaded = tltf.load_base("mobilenet_v2", weights="imagenet", **ARGS)
    else:
        loaded = tltf.load_base(
            "mobilenet_v2", weights="imagenet", weights_dir=tmp_path, **ARGS
        )
    for a, b in zip(source.model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_local_weights_file_and_mismatch(tmp_path):
    source = tltf.load_base("mobilenet_v2", weights=None, **ARGS)
    path = tmp_path / "mine.weights.h5"
    source.model.save_weights(path)
    loaded = tltf.load_base("mobilenet_v2", weights=str(path), **ARGS)
    for a, b in zip(source.model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(WeightsError, match="does not match"):
        tltf.load_base(
            "mobilenet_v2", weights=str(path), input_shape=(96, 96, 3), alpha=0.5
        )
    with pytest.raises(WeightsError, match="does not exist"):
        tltf.load_base("mobilenet_v2", weights=str(tmp_path / "nope.h5"), **ARGS)
