"""One image per class: what `fine_tune` should do where leave-one-out scores nothing.

With one training image per class, leave-one-out leaves each image's class
with none, so nothing can score a block, a depth or the raw pixels. Since
2026-12-05 `fine_tune`'s defaults then skip stage 2 and keep the head's raw
pixels muted. This script measures those two choices against the other two,
on the same splits:

- "tltf": the defaults (stage 1 alone, pixels muted);
- "pixels on": the same, with the pixel group read as if it had been scored
  (`tltf.schedule.scorable` patched to call every image scorable, so the gate
  compares 0 with 0 and reads the pixels, as the code before did; the ridge
  start then also takes its temperature from the leave-one-out scores, as
  before);
- "stage 2": the defaults with `unfreeze` set to the top third of the blocks
  (the probe's fallback), so stage 2 runs (unguarded: nothing scores it);
- "stage 2, pixels on": both.

Real data and weights as in `benchmarks/realdata.py`, 64 px, one image per
class for training, 30 per class for the test; logistic regression on the
pixels as the no-transfer baseline.

Usage:
    .venv/bin/python benchmarks/one_per_class.py [--bases vgg16 demo] \
        [--tasks mnist fonts textures] [--seeds 0 1 2] [--weights-dir W]

Each row prints the accuracies and the seconds of each variant; the last line
prints the mean of "tltf" over the best other variant's mean.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time
from unittest import mock

import keras
import numpy as np
import realdata

import tltf.schedule
from tltf.model import model_info

VARIANTS = ("tltf", "pixels on", "stage 2", "stage 2, pixels on")


def _run(base_name, weights_dir, train, test, seed, variant) -> float:
    keras.utils.set_random_seed(seed)
    classes = int(max(train[1].max(), test[1].max())) + 1
    model = tltf.build_model(
        realdata.benchmark_base(base_name, 64, weights_dir), classes
    )
    settings = {}
    if variant.startswith("stage 2"):
        settings["unfreeze"] = max(1, len(model_info(model).block_map) // 3)
    patch = mock.patch.object(
        tltf.schedule, "scorable", lambda y: np.ones(len(y), dtype=bool)
    )
    if "pixels on" in variant:
        with patch:
            tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
    else:
        tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
    return realdata.accuracy(model, *test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument("--tasks", nargs="+", default=["mnist", "fonts", "textures"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, bases=("vgg16",))
    scores = {v: [] for v in ("pixels", *VARIANTS)}
    for base_name in args.bases:
        for task in args.tasks:
            for seed in args.seeds:
                train, test = realdata.task_split(task, 1, seed, 30)
                row = {"pixels": realdata.logreg_pixels(train, test)}
                cells = [f"pixels {row['pixels']:.3f}"]
                for variant in VARIANTS:
                    start = time.perf_counter()
                    row[variant] = _run(
                        base_name, weights_dir, train, test, seed, variant
                    )
                    seconds = time.perf_counter() - start
                    cells.append(f"{variant} {row[variant]:.3f} ({seconds:.0f}s)")
                for name, value in row.items():
                    scores[name].append(value)
                print(f"{base_name:6s} {task:9s} seed {seed}  " + "  ".join(cells))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    print("means: " + ", ".join(f"{name} {value:.3f}" for name, value in means.items()))
    other = max(VARIANTS[1:], key=lambda v: means[v])
    print(
        f"mean test accuracy, tltf / best other ({other}): {means['tltf']:.3f} / "
        f"{means[other]:.3f} = {means['tltf'] / means[other]:.2f}x"
    )


if __name__ == "__main__":
    main()
