"""Does augmentation make stage 2 pay on real cross-domain data?

On the demo task (`shapes_target`, near the demo base's source) augmented runs
fine-tune 3 to 6 points above their own stage 1 (benchmarks/RESULTS.md, "The demo
augments its runs"). This asks the same of the real tasks of `benchmarks/realdata.py`:
for each task, k and seed, `build_model(base, n)` then `fine_tune(model, train,
seed=seed, augment=...)`, with everything else at its defaults (so the held-out
guard and its closed-form hand-back too), scored on 30 test images per class:

- "none": the defaults (no augmentation);
- "mild": no flip, rotation 0.03, zoom, translation and contrast 0.1 (safe for
  characters: a flipped "b" is a "d");
- "true": `augment=True`, `tltf.data.augmentation()` (horizontal flip, rotation
  0.1, zoom, translation and contrast 0.1), what `tltf demo` uses.

Usage:
    .venv/bin/python benchmarks/augment_real.py [--bases demo] [--k 10] \
        [--seeds 0 1] [--tasks digits fonts textures]

The last line prints the mean test accuracy of each augmented variant over the
defaults', as ratios.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import numpy as np
import realdata

VARIANTS = ("none", "mild", "true")


def augmentation(variant: str, seed: int):
    """What `fine_tune(augment=...)` gets for a variant."""
    if variant == "none":
        return None
    if variant == "true":
        return True
    return tltf.data.augmentation(
        flip=None, rotation=0.03, zoom=0.1, translation=0.1, contrast=0.1, seed=seed
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for task in args.tasks:
        x, y = realdata.task_data(task)
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, 30)
                    cells = []
                    for variant in VARIANTS:
                        start = time.perf_counter()
                        (accuracy,) = realdata.fine_tune_accuracy(
                            name,
                            weights_dir,
                            train,
                            [test],
                            seed,
                            {"augment": augmentation(variant, seed)},
                        )
                        scores[variant].append(accuracy)
                        cells.append(
                            f"{variant} {accuracy:.3f} "
                            f"({time.perf_counter() - start:.0f}s)"
                        )
                    print(
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  "
                        + "  ".join(cells),
                        flush=True,
                    )
    none = np.mean(scores["none"])
    print(
        "mean test accuracy over the defaults (none "
        f"{none:.3f}): "
        + ", ".join(
            f"{v} {np.mean(scores[v]):.3f} = {np.mean(scores[v]) / none:.3f}x"
            for v in VARIANTS[1:]
        )
    )


if __name__ == "__main__":
    main()
