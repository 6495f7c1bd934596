"""What one stage-1 step on cached features costs: tltf's head against plain Keras.

A default `fine_tune` trains its head on cached base features for up to
`head_steps` optimizer steps (`tltf.cache.fit_part`, fed by
`FeatureCache.stream`). This times those steps in a default `fine_tune` on a
tiny base (16 px, 4 blocks: the tests' `make_tiny_base`; 60 images, 48 of them
trained on, 12 held out by the guard),
and the same number of steps (in epochs of 100) of a plain Keras `Dense` head on
48 random rows of the head's width, fed three ways. Both sides include their
one trace.

- `numpy_function`: batches gathered in NumPy, as `FeatureCache.stream` does;
- `gather`: batches gathered by `tf.gather` on the features as a constant;
- `gather + XLA`: the same, compiled with `jit_compile=True` (compile included).

Each side runs `--repeats` times after one uncounted warm-up; medians are
printed. The last line gives tltf's time per step over plain Keras's (fed as
tltf feeds it).

Usage:
    .venv/bin/python benchmarks/stage1_step.py [--repeats 3]
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import tltf.schedule
from tests.helpers import make_data, make_tiny_base

BATCH = 32
PER_CALL = 32


def tltf_stage_one() -> tuple[float, int, int]:
    """(seconds, steps, feature width) of `fit_part` in a default `fine_tune`."""
    seen = {}
    real = tltf.schedule.fit_part

    def timed(part, data, **kwargs):
        start = time.perf_counter()
        history = real(part, data, **kwargs)
        seen["seconds"] = time.perf_counter() - start
        seen["steps"] = len(history.epoch) * kwargs["steps_per_epoch"]
        seen["width"] = int(part.inputs[0].shape[-1])
        return history

    tltf.schedule.fit_part = timed
    try:
        keras.utils.set_random_seed(0)
        model = tltf.build_model(make_tiny_base(), 3)
        x, y = make_data(60, seed=0)
        # Classes the bright channel barely tells apart: stage 1 runs ~1,800
        # steps, not the few hundred of the separable test data.
        x[np.arange(60), :, :, y % 3] -= 96.0
        tltf.fine_tune(model, (x, y), fine_tune_epochs=0, seed=0, verbose=0)
    finally:
        tltf.schedule.fit_part = real
    return seen["seconds"], seen["steps"], seen["width"]


def stream(features, labels, steps: int, gather: str) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    need = steps * BATCH
    order = np.concatenate(
        [rng.permutation(len(labels)) for _ in range(-(-need // len(labels)))]
    )[:need]
    batches = tf.data.Dataset.from_tensor_slices(order).batch(BATCH)
    if gather == "numpy_function":
        columns = (features, labels)

        def rows(index):
            out = tf.numpy_function(
                lambda i: tuple(c[i] for c in columns),
                [index],
                [tf.float32, tf.int32],
                stateful=False,
            )
            out[0].set_shape((None, features.shape[1]))
            out[1].set_shape((None,))
            return tuple(out)

    else:
        constants = (tf.constant(features), tf.constant(labels))

        def rows(index):
            return tuple(tf.gather(c, index) for c in constants)

    return batches.map(rows).prefetch(tf.data.AUTOTUNE)


def plain_keras(width: int, steps: int, gather: str, jit: bool) -> float:
    """Seconds for `steps` steps of a plain Dense head on 48 random rows."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(48, width)).astype("float32")
    labels = (np.arange(48) % 3).astype("int32")
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(3)])
    head.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=PER_CALL,
        jit_compile=jit,
    )
    epochs = max(1, steps // 100)
    data = stream(features, labels, epochs * 100, gather)
    start = time.perf_counter()
    head.fit(data, epochs=epochs, steps_per_epoch=100, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tltf_stage_one()  # warm-up
    runs = [tltf_stage_one() for _ in range(args.repeats)]
    steps, width = runs[0][1], runs[0][2]
    ms = {"tltf stage 1": statistics.median(r[0] / r[1] for r in runs) * 1e3}
    for name, gather, jit in (
        ("numpy_function", "numpy_function", False),
        ("gather", "gather", False),
        ("gather + XLA", "gather", True),
    ):
        plain_keras(width, steps, gather, jit)  # warm-up
        seconds = [plain_keras(width, steps, gather, jit) for _ in range(args.repeats)]
        steps_run = max(1, steps // 100) * 100
        ms[f"plain Dense, {name}"] = statistics.median(seconds) / steps_run * 1e3
    print(f"{steps} stage-1 steps of a default fine_tune (head width {width})")
    for name, value in ms.items():
        print(f"{name:28s} {value:6.3f} ms/step")
    ratio = ms["tltf stage 1"] / ms["plain Dense, numpy_function"]
    print(f"tltf stage-1 step / plain Keras Dense step: {ratio:.2f}x")


if __name__ == "__main__":
    main()
