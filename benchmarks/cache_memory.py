"""Peak memory of features over the memory limit: a pass and one epoch read back.

`tltf.cache.FeatureCache` keeps each extractor output in memory up to
`tltf.cache.MEMORY_LIMIT_BYTES` (2 GiB) and puts larger ones on disk. Until
2026-12-06 it computed every batch first, held them all, then wrote the file,
and `FeatureCache.dataset` handed the memory-mapped file to
`tf.data.Dataset.from_tensor_slices`, which copies it into TensorFlow whole.
Now each batch past the limit goes to the file as it is computed, and an epoch
reads the file a batch at a time. The baseline is the old way, written out
here: hold every batch's features, copy them into a memory-mapped file, and
read one shuffled epoch through `from_tensor_slices`.

The features are a stand-in extractor's (each 16 x 16 x 3 image tiled to
`--width` floats): the model does not matter, only the bytes the pass keeps.
The limit is `--limit-mib` (the default 2 GiB would need 2 GiB of features).
Peak memory is the process's resident peak (`ru_maxrss`) over what it held
before each side ran, tltf first: the peak only grows, so the baseline, run
second, is measured from tltf's peak.

Usage:
    .venv/bin/python benchmarks/cache_memory.py [--images 16384]
        [--width 8192] [--limit-mib 64]

The last line prints the baseline's extra peak memory over tltf's.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tltf  # noqa: F401,I001  (first: imports TensorFlow quietly)

import numpy as np
import tensorflow as tf

import tltf.cache


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def held_then_written(dataset, extract, folder: Path) -> np.ndarray:
    """The old pass: every batch held, then copied into a file; then one
    shuffled epoch read through `from_tensor_slices`, as the old
    `FeatureCache.dataset` did."""
    parts = [extract(images).numpy() for images, _ in dataset]
    shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
    out = np.lib.format.open_memmap(
        folder / "held.npy", mode="w+", dtype=parts[0].dtype, shape=shape
    )
    i = 0
    for part in parts:
        out[i : i + len(part)] = part
        i += len(part)
    out.flush()
    epoch = tf.data.Dataset.from_tensor_slices(out).shuffle(len(out), seed=0)
    for _ in epoch.batch(256):
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16384)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--limit-mib", type=int, default=64)
    args = parser.parse_args()
    tltf.cache.MEMORY_LIMIT_BYTES = args.limit_mib * 1024**2
    repeats = -(-args.width // (16 * 16 * 3))

    @tf.function(input_signature=[tf.TensorSpec((None, 16, 16, 3), tf.float32)])
    def extract(images):
        flat = tf.reshape(images, (tf.shape(images)[0], -1))
        return tf.tile(flat, (1, repeats))[:, : args.width]

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, args.images)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
    total = args.images * args.width * 4 / 1024**2
    print(
        f"{args.images} images x {args.width} float32 features = {total:.0f} MiB; "
        f"limit {args.limit_mib} MiB"
    )
    extract(x[:1])  # traced before either side runs
    with tempfile.TemporaryDirectory() as folder:
        gc.collect()
        before, start = peak_mib(), time.perf_counter()
        cache = tltf.cache.FeatureCache(
            None, dataset, directory=folder, labels=y, extractor=extract
        )
        tltf_extra, tltf_s = peak_mib() - before, time.perf_counter() - start
        assert isinstance(cache.features, np.memmap)
        for _ in cache.dataset(256, shuffle=True, seed=0):  # one epoch
            pass
        first = np.array(cache.features[:4])
        cache.close()
        del cache
        gc.collect()
        before, start = peak_mib(), time.perf_counter()
        held = held_then_written(dataset, extract, Path(folder))
        held_extra, held_s = peak_mib() - before, time.perf_counter() - start
        np.testing.assert_array_equal(first, held[:4])
        del held
    print(f"tltf FeatureCache: peak +{tltf_extra:.0f} MiB, {tltf_s:.1f} s")
    print(f"held, then written: peak +{held_extra:.0f} MiB, {held_s:.1f} s")
    print(
        f"held-then-written extra peak / tltf's: {held_extra / max(tltf_extra, 1):.1f}x"
    )


if __name__ == "__main__":
    main()
