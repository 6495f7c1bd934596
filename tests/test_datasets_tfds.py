"""The procedural datasets load through the real tfds path, offline."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

import tltf.datasets_tfds  # noqa: F401  (registers tltf_shapes)
from tltf import datasets


def test_tfds_load_prepares_and_reads_the_builder(tmp_path):
    train, info = tfds.load(
        "tltf_shapes/counting",
        split="train[:50%]",
        as_supervised=True,
        with_info=True,
        data_dir=str(tmp_path),
    )
    assert info.features["label"].names == datasets.class_names("counting")
    assert info.splits["train"].num_examples == 6 * 200
    assert info.splits["test"].num_examples == 6 * 50
    images, labels = zip(*tfds.as_numpy(train), strict=True)
    assert len(images) == 600 and images[0].shape == (64, 64, 3)
    expected, expected_labels = datasets.make_images(
        "counting", per_class=200, image_size=64, seed=0
    )
    got = {
        int(np.asarray(x, np.int64).sum()): int(y)
        for x, y in zip(images, labels, strict=True)
    }
    want = {
        int(x.astype(np.int64).sum()): int(y)
        for x, y in zip(expected, expected_labels, strict=True)
    }
    assert set(got.items()) <= set(want.items())  # the same images, with their labels
