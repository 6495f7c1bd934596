"""One trace per pass: the probe and a stage-2 LR sweep, against `reduce_retracing`.

`tltf.probe_blocks` runs its feature extractor, and `tltf.find_lr(stage=
"fine_tune")` its training step, as one `tf.function` whose input signature
leaves the batch size open (`tltf.cache.inference_function`,
`lr_finder._Sweep._step_for`). Until 2026-12-06 both were
`tf.function(reduce_retracing=True)`, which traces once for the first batch
size and once more, relaxed, for the next: on data whose last batch is smaller
(240 images in batches of 32), every probe and every stage-2 sweep traced its
model twice. The baseline here is that: the same calls, with the two functions
put back to `reduce_retracing` in this process.

The data: the shipped demo base (MobileNetV3Small at 64 px) and `shapes_target`
at `--per-class` images per class (240 by default: 7 batches of 32 and one of
16). The two sides alternate (tltf, baseline, tltf, ...) after one uncounted
warm-up run of each; each run loads the base again, as a call of
`probe_blocks` or `fine_tune` does, so each traces anew.

Usage:
    .venv/bin/python benchmarks/one_trace.py [--per-class 20] [--repeats 3]

The last line prints baseline time / tltf time, summed over the probe and the
sweep (medians).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import statistics
import time

import keras
import tensorflow as tf

import tltf.lr_finder
import tltf.probe
from tltf import datasets


class _Retracing:
    """`reduce_retracing` with the signature attribute tltf reads the dtype from."""

    def __init__(self, part: keras.Model):
        self.input_signature = [tf.TensorSpec(None, part.inputs[0].dtype)]
        self._run = tf.function(
            lambda images: part(images, training=False), reduce_retracing=True
        )

    def __call__(self, images):
        return self._run(images)


def _retracing_step(self, batch):
    if self._step is None:
        self._step = tf.function(self._train_step, reduce_retracing=True)
    return self._step


@contextlib.contextmanager
def baseline():
    """The probe and the sweep as they were: `reduce_retracing` functions."""
    saved = tltf.probe.inference_function, tltf.lr_finder._Sweep._step_for
    tltf.probe.inference_function = _Retracing
    tltf.lr_finder._Sweep._step_for = _retracing_step
    try:
        yield
    finally:
        tltf.probe.inference_function, tltf.lr_finder._Sweep._step_for = saved


def timed(x, y, classes: int) -> tuple[float, float]:
    """Seconds of one probe and of one stage-2 sweep, each on a fresh load."""
    start = time.perf_counter()
    tltf.probe_blocks("demo", (x, y), verbose=0)
    probe = time.perf_counter() - start
    keras.utils.set_random_seed(0)
    model = tltf.build_model("demo", classes)
    start = time.perf_counter()
    tltf.find_lr(model, (x, y), stage="fine_tune", unfreeze=2, seed=0, verbose=0)
    return probe, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = datasets.make_images("shapes_target", per_class=args.per_class, seed=0)
    classes = int(y.max()) + 1
    print(f"{len(x)} images of {x.shape[1]} px, batches of 32; demo base")
    rows = {"tltf": [], "baseline": []}
    for repeat in range(args.repeats + 1):
        for side in rows:
            with baseline() if side == "baseline" else contextlib.nullcontext():
                probe, sweep = timed(x, y, classes)
            if repeat:  # the first of each is a warm-up
                rows[side].append((probe, sweep))
                print(f"{side:9s} probe {probe:6.2f} s  stage-2 sweep {sweep:6.2f} s")
    medians = {
        side: [statistics.median(column) for column in zip(*runs, strict=True)]
        for side, runs in rows.items()
    }
    for side, (probe, sweep) in medians.items():
        print(f"median {side:9s} probe {probe:6.2f} s  stage-2 sweep {sweep:6.2f} s")
    ratio = sum(medians["baseline"]) / sum(medians["tltf"])
    print(f"baseline / tltf, probe + sweep: {ratio:.2f}x")


if __name__ == "__main__":
    main()
