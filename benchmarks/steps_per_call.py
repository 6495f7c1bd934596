"""Several head steps per call in stage 1, against one step per call.

A default `fine_tune` trains its head on cached features with Keras's
`steps_per_execution` of up to 32 (`tltf.schedule._per_call`): one call runs a
`tf.while_loop` of steps. Tracing that loop costs more than tracing one step
(TensorFlow analyses the loop body's resource inputs), so on a few hundred
steps the question is whether it pays. The baseline is the same `fine_tune`
with `_per_call` patched to return 1 in this process.

The data: the tests' tiny base (16 px, 4 blocks: `make_tiny_base`) and 64
images of 3 classes (`make_data`), or with `--demo` the shipped demo base and
`shapes_target` at 20 per class (240 images). Every run builds a fresh model, so
each traces anew. The two sides alternate after one uncounted warm-up run of
each.

Usage:
    .venv/bin/python benchmarks/steps_per_call.py [--repeats 3] [--demo]

The last line prints one-step time / tltf time (medians of whole `fine_tune`
calls).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import statistics
import time
from unittest import mock

import keras

import tltf.schedule
from tests.helpers import make_data, make_tiny_base
from tltf import datasets


def run(demo: bool, one_step: bool, seed: int) -> float:
    """Seconds of one default `fine_tune` on a fresh model."""
    keras.utils.set_random_seed(seed)
    if demo:
        model = tltf.build_model("demo", datasets.num_classes("shapes_target"))
        data = datasets.make_images(
            "shapes_target", per_class=20, image_size=64, seed=seed
        )
    else:
        model = tltf.build_model(make_tiny_base(), 3)
        data = make_data(64, seed=seed)
    patch = (
        mock.patch.object(tltf.schedule, "_per_call", lambda per_epoch, fixed: 1)
        if one_step
        else contextlib.nullcontext()
    )
    with patch:
        start = time.perf_counter()
        tltf.fine_tune(model, data, seed=seed, verbose=0)
        seconds = time.perf_counter() - start
    keras.backend.clear_session(free_memory=False)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="the shipped demo base")
    args = parser.parse_args()
    times = {"tltf": [], "one step": []}
    for repeat in range(args.repeats + 1):
        for side in times:
            seconds = run(args.demo, side == "one step", seed=repeat)
            if repeat:  # the first of each is a warm-up
                times[side].append(seconds)
    for side, values in times.items():
        print(
            f"{side:9s} median {statistics.median(values):.2f} s "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})"
        )
    ratio = statistics.median(times["one step"]) / statistics.median(times["tltf"])
    base = "demo base" if args.demo else "tiny base"
    print(f"{base}: one step per call / tltf's steps per call: {ratio:.2f}x")


if __name__ == "__main__":
    main()
