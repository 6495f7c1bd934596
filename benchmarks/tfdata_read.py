"""What reading a `tf.data` input into memory for the guard's slice costs.

Without validation data, `fine_tune` reads a `tf.data.Dataset` of up to
`tltf.guard.HOLDOUT_READ_BYTES` (1 GiB) into memory, so that its guard can hold a
slice out of it (RESULTS.md, "A `tf.data` input"). It reads the dataset twice
(the second time to check that the pipeline gives the same images) and sorts
the rows by digest. The baseline is one plain pass over the same dataset, what
any use of the data costs at least.

The dataset: N random images at SIZE px, float32 in [0, 255] (as
`image_dataset_from_directory` gives them), cast and batched by 32 in the
pipeline; by default 1,700 at 224 px, just under 1 GiB.

Usage:
    .venv/bin/python benchmarks/tfdata_read.py [--images 1700] [--size 224]

It also prints the process's peak resident memory (the random pixels and
TensorFlow's copy of them included). The last line prints the read's time over
the plain pass's.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import resource
import time

import numpy as np
import tensorflow as tf

from tltf.data.inputs import read_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1700)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, args.size, args.size, 3), np.uint8)
    labels = (np.arange(args.images) % 10).astype("int32")
    dataset = (
        tf.data.Dataset.from_tensor_slices((pixels, labels))
        .shuffle(args.images, seed=0, reshuffle_each_iteration=True)
        .map(lambda x, y: (tf.cast(x, tf.float32), y))
        .batch(32)
    )
    start = time.perf_counter()
    for _ in dataset:
        pass
    plain = time.perf_counter() - start
    start = time.perf_counter()
    data, why = read_dataset(dataset, "train", 2**30)
    read = time.perf_counter() - start
    if data is None:
        raise SystemExit(f"not read: {why}")
    size = (data.images.nbytes + data.labels.nbytes) / 2**20
    print(f"{args.images} images at {args.size} px: {size:,.0f} MiB")
    print(f"one plain pass: {plain:.2f} s")
    print(f"read_dataset (two passes, digests, sorted): {read:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"the process's peak resident memory: {peak:.2f} GiB")
    print(f"read / plain pass: {read:.2f} / {plain:.2f} = {read / plain:.2f}x")


if __name__ == "__main__":
    main()
