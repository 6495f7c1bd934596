"""Stage 1's absolute floor for a cross-entropy: the accuracy and time it changes.

`head_epochs="auto"` ends stage 1 when the training loss falls by less than 1%
twice in a row, or, for a cross-entropy, by less than
`tltf.cache.MIN_FALL_NATS` (0.001) an epoch. This benchmark runs the defaults
twice per split in one process: with the floor ("floor", what `fine_tune`
does) and without it ("1% only": `tltf.schedule.MIN_FALL_NATS` set to 0, the
rule before the floor). Which runs first alternates from split to split. It
prints, per run, the test accuracy, stage 1's epochs, the seconds from the call
to stage 1's last epoch (the probe and the feature cache included), and the
seconds of the whole `fine_tune`.

Usage:
    .venv/bin/python benchmarks/stage1_floor.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 10] [--seeds 0 1 2] [--weights-dir DIR]

The last line prints the mean test accuracy with the floor over the one
without it.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

import tltf.schedule


class _StageClock(keras.callbacks.Callback):
    """The time at the end of each epoch, with its stage."""

    def __init__(self):
        super().__init__()
        self.ends: list[tuple[int, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append((int(logs["stage"]), time.perf_counter()))


def run(base_name, weights_dir, train, test, n, seed, floor: bool) -> dict:
    """One default `fine_tune`, with or without the floor."""
    saved = tltf.schedule.MIN_FALL_NATS
    tltf.schedule.MIN_FALL_NATS = saved if floor else 0.0
    try:
        keras.utils.set_random_seed(seed)
        model = tltf.build_model(realdata.benchmark_base(base_name, 64, weights_dir), n)
        clock = _StageClock()
        start = time.perf_counter()
        tltf.fine_tune(model, train, seed=seed, verbose=0, callbacks=[clock])
        seconds = time.perf_counter() - start
    finally:
        tltf.schedule.MIN_FALL_NATS = saved
    stage1 = [t for stage, t in clock.ends if stage == 1]
    return {
        "accuracy": realdata.accuracy(model, *test),
        "stage1_epochs": len(stage1),
        "stage1_seconds": stage1[-1] - start if stage1 else 0.0,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test", type=int, default=30, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    print(
        "task     base   seed  floor: accuracy, stage-1 epochs and s, s  |  "
        "1% only: the same"
    )
    rows, turn = [], 0
    for task in args.tasks:
        x, y = realdata.task_data(task, 64)
        n = int(y.max()) + 1
        for base_name in args.bases:
            for seed in args.seeds:
                train, test = realdata.few_shot(x, y, args.k, seed, args.test)
                order = (True, False) if turn % 2 == 0 else (False, True)
                turn += 1
                result = {
                    floor: run(base_name, weights_dir, train, test, n, seed, floor)
                    for floor in order
                }
                rows.append(result)
                cells = "  |  ".join(
                    f"{r['accuracy']:.3f}, {r['stage1_epochs']:2d} ep "
                    f"{r['stage1_seconds']:5.1f} s, {r['seconds']:5.1f} s"
                    for r in (result[True], result[False])
                )
                print(f"{task:8s} {base_name:6s} {seed:4d}  {cells}", flush=True)
    floor = np.mean([r[True]["accuracy"] for r in rows])
    plain = np.mean([r[False]["accuracy"] for r in rows])
    s1 = [np.mean([r[f]["stage1_seconds"] for r in rows]) for f in (True, False)]
    print(f"mean stage-1 seconds, floor / 1% only: {s1[0]:.1f} / {s1[1]:.1f}")
    print(
        f"mean test accuracy over {len(rows)} runs, floor / 1% only: "
        f"{floor:.3f} / {plain:.3f} = {floor / plain:.3f}x"
    )


if __name__ == "__main__":
    main()
