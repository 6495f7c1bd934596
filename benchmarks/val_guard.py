"""The guard with validation data: stage-1 epochs as candidates, or only its end?

With validation data, `fine_tune(keep_best=True)` scores every epoch by its
validation loss. It used to keep the best of stage 1's *end* and the stage-2
epochs: a head that began to overfit before stage 1 stopped (on a few images the
validation loss can turn up after one or two epochs, while stage 1 stops two
epochs later) was never put back, although the run's summary named its epoch as
the best. Now every stage-1 epoch is a candidate too.

Each run trains three models on the same split and data, with `fine_tune`'s
defaults and validation data, and scores the test images: "every epoch" (tltf
now), "restart" (tried, not kept: also starts stage 2 from stage 1's best epoch
when that is not its last, LP-FT from the best probe; patched in here) and
"stage-1 end" (the previous guard, restored here by patching
`KeepBest.on_epoch_end`). Bases, tasks and splits as in `benchmarks/realdata.py`: k
training images per class and 30 more, split by `realdata.few_shot` into 10
validation and 20 test images per class.

Usage:
    .venv/bin/python benchmarks/val_guard.py [--bases demo] \\
        [--tasks shapes digits textures] [--k 10] [--seeds 0 1]

The last line prints the mean test accuracy of "every epoch" over "stage-1 end".
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import time

import numpy as np
import realdata

from tltf.guard import KeepBest

VAL_PER_CLASS = 10


@contextlib.contextmanager
def restart():
    """Tried, not kept: every epoch a candidate, and stage 2 starts from stage 1's
    best epoch when that is not its last (LP-FT from the best probe)."""
    real = KeepBest.on_epoch_begin

    def on_epoch_begin(self, epoch, logs=None):
        best = self.best_epoch
        at_start = epoch == self.schedule.unfreeze_at_epoch
        if at_start and best is not None and 0 <= best < epoch - 1:
            self._restore(self.model)
        real(self, epoch, logs)

    KeepBest.on_epoch_begin = on_epoch_begin
    try:
        yield
    finally:
        KeepBest.on_epoch_begin = real


@contextlib.contextmanager
def stage_one_end_only():
    """The previous guard: stage-1 epochs only record their logs."""
    real = KeepBest.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        stage = (logs or {}).get("stage") or self.schedule.plan(epoch)[0]
        if int(stage) == 1:
            self._stage_one_logs = dict(logs or {})
            return
        real(self, epoch, logs)

    KeepBest.on_epoch_end = on_epoch_end
    try:
        yield
    finally:
        KeepBest.on_epoch_end = real


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["shapes", "digits", "textures"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args(argv)
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    totals = {"every epoch": [], "restart": [], "stage-1 end": []}
    print("| base | task | k | seed | every epoch | restart | stage-1 end | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for base in args.bases:
        for task in args.tasks:
            for seed in args.seeds:
                train, test = realdata.task_split(
                    task, args.k, seed, test_per_class=VAL_PER_CLASS + 20
                )
                val, test = realdata.few_shot(*test, VAL_PER_CLASS, seed, 20)
                settings = {"validation_data": val}
                start = time.perf_counter()
                (new,) = realdata.fine_tune_accuracy(
                    base, weights_dir, train, [test], seed, settings
                )
                with restart():
                    (again,) = realdata.fine_tune_accuracy(
                        base, weights_dir, train, [test], seed, settings
                    )
                with stage_one_end_only():
                    (old,) = realdata.fine_tune_accuracy(
                        base, weights_dir, train, [test], seed, settings
                    )
                totals["every epoch"].append(new)
                totals["restart"].append(again)
                totals["stage-1 end"].append(old)
                seconds = time.perf_counter() - start
                print(
                    f"| {base} | {task} | {args.k} | {seed} | {new:.3f} | {again:.3f} "
                    f"| {old:.3f} | {seconds:.0f} |",
                    flush=True,
                )
    new, again, old = (float(np.mean(v)) for v in totals.values())
    print(
        f"mean test accuracy: every epoch {new:.4f}, restart {again:.4f}, "
        f"stage-1 end {old:.4f}"
    )
    print(f"every epoch / stage-1 end = {new / old:.3f}x")


if __name__ == "__main__":
    main()
