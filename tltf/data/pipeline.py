"""A `Source` as batched, prefetched `tf.data` pipelines: shuffled (seeded) for
training, and the same batches in a fixed order.
"""

from __future__ import annotations

import tensorflow as tf

from tltf.data.bundle import Source
from tltf.data.images import ImageOptions

_AUTOTUNE = tf.data.AUTOTUNE
# A shuffle buffer holds at most this many bytes of images (and at least 1024
# elements); smaller datasets get a full shuffle.
_SHUFFLE_BYTES = 256 * 2**20


def _shuffle_buffer(size: int | None, bytes_per_element: int) -> int:
    cap = max(1024, _SHUFFLE_BYTES // max(bytes_per_element, 1))
    return min(size, cap) if size else cap


def pipeline(
    source: Source, indices, opts: ImageOptions, training: bool
) -> tf.data.Dataset:
    return pipelines(source, indices, opts, training)[0]


def pipelines(
    source: Source, indices, opts: ImageOptions, training: bool
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The batches (shuffled for training, when asked) and the same in a fixed order.

    Each pass over a `shuffle(..., reshuffle_each_iteration=True)` draws the next
    order, so any extra pass over the training pipeline (a feature pass, a probe)
    would change the orders later epochs read, and a resumed run, which skips
    those passes, could not replay them. One-off passes read the fixed-order copy
    instead. With `cache`, both read the same in-memory cache.
    """
    ds = source.make(indices)
    n = len(indices) if indices is not None else source.size
    shuffle = training and opts.shuffle
    if shuffle and not opts.cache:
        # Shuffle the raw elements (file names, small arrays) before decoding.
        buffer = (
            n if source.bytes_per_raw == 0 else _shuffle_buffer(n, source.bytes_per_raw)
        )
        fixed = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
        ds = ds.shuffle(buffer, seed=opts.seed, reshuffle_each_iteration=True)
        ds = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
    else:
        ds = ds.map(source.prepare, num_parallel_calls=_AUTOTUNE)
        if opts.cache:
            ds = ds.cache()
        fixed = ds
        if shuffle:
            per_image = opts.size[0] * opts.size[1] * 3 * (1 if source.uint8 else 4)
            ds = ds.shuffle(
                _shuffle_buffer(n, per_image),
                seed=opts.seed,
                reshuffle_each_iteration=True,
            )
    return _batched(ds, source, opts), _batched(fixed, source, opts)


def _batched(
    ds: tf.data.Dataset, source: Source, opts: ImageOptions
) -> tf.data.Dataset:
    if source.uint8:
        ds = ds.map(
            lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=_AUTOTUNE
        )
    return ds.batch(opts.batch_size).prefetch(_AUTOTUNE)
