"""The head's raw-pixel group: the closed-form head with it, without it, and gated.

The default head reads every block of the base, and its ridge start weighs the
blocks by their own leave-one-out accuracy (`tltf.probe.group_weights`). Where
the base adds little (scikit-learn's 8x8 digits on a base pretrained on
shapes), a head on the blocks alone loses to logistic regression on the pixels.
`HeadConfig.pixels` (8 by default) gives the head a group of raw pixels (the
image average-pooled to 8 x 8, RGB), muted until the ridge start turns it on
where a linear probe on the pixels alone scores at least `PIXEL_GROUP_RATIO` of
the best block's leave-one-out accuracy.

This script compares, on the same split, the test accuracy of the closed-form
head (the ridge start, no gradient step: the head stage 1 starts from and the
one the guard's hand-back refits) in three forms:

- "no group": `HeadConfig(pixels=0)`, the head before the group existed;
- "always": the group weighed like a block in every run (measured on
  2026-12-03 and not kept: it cost up to 3 points on letters and textures);
- "tltf": the head as `build_model` builds it, the group gated.

Real data and weights as in `benchmarks/realdata.py`, 64 px, k images per class
for training, 30 per class for the test.

Usage:
    .venv/bin/python benchmarks/pixel_group.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1 2]

Each row prints the three accuracies, the pixels' leave-one-out accuracy over
the best block's (the gate's measure) and whether the gate read the pixels. The
last lines print the range of that ratio per task, and the mean test accuracy of
tltf's head over the head without the group.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse

import numpy as np
import realdata

from tltf.cache import feature_model
from tltf.heads import pixel_columns
from tltf.probe import group_accuracy, group_weights
from tltf.schedule import prepare_head


def _features(model, images) -> np.ndarray:
    """The head's input features (every block pooled, the raw pixels last)."""
    part = feature_model(model)  # what stage 1 caches
    return part.predict(images, batch_size=64, verbose=0)


def _ridge_head(model, features, y, xt, yt) -> tuple[float, str]:
    """Test accuracy of the model's closed-form head, and its stage-1 words."""
    words = prepare_head(model, features, y) or ""
    predicted = model.predict(xt, batch_size=64, verbose=0).argmax(axis=1)
    return float(np.mean(predicted == yt)), words


def _always(z, zt, y, yt, widths, classes, accuracy) -> float:
    """Test accuracy with the pixel group weighed like a block in every run."""
    chosen = group_weights(z, y, classes, widths, accuracy=accuracy)
    columns = np.repeat(chosen.weights, widths)
    scores = (zt * columns) @ chosen.fit.weights + chosen.fit.prior
    return float(np.mean(scores.argmax(axis=1) == yt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--pixels",
        type=int,
        default=None,
        help="side of the group's pooled image (default: HeadConfig's)",
    )
    args = parser.parse_args()
    head = {} if args.pixels is None else {"pixels": args.pixels}
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows, ratios = [], {}
    for name in args.bases:
        for task in args.tasks:
            for k in args.k:
                for seed in args.seeds:
                    (x, y), (xt, yt) = realdata.task_split(task, k, seed, 30)
                    classes = int(y.max()) + 1
                    base = realdata.benchmark_base(name, 64, weights_dir)
                    plain = tltf.build_model(base, classes, head={"pixels": 0})
                    none, _ = _ridge_head(plain, _features(plain, x), y, xt, yt)
                    base = realdata.benchmark_base(name, 64, weights_dir)
                    model = tltf.build_model(base, classes, head=head)
                    widths = model_widths(model)
                    features = _features(model, x)
                    mean = features.mean(axis=0)
                    scale = 1 / (features.std(axis=0) + 1e-3)
                    z = (features - mean) * scale
                    zt = (_features(model, xt) - mean) * scale
                    accuracy = group_accuracy(z, y, classes, widths)
                    ratio = accuracy[-1] / accuracy[:-1].max()
                    ratios.setdefault(task, []).append(ratio)
                    always = _always(z, zt, y, yt, widths, classes, accuracy)
                    gated, words = _ridge_head(model, features, y, xt, yt)
                    read = "raw pixels read" in words
                    rows.append((none, always, gated))
                    print(
                        f"{name:6} {task:8} k={k:<3} seed {seed}  no group {none:.3f}"
                        f"  always {always:.3f}  tltf {gated:.3f}"
                        f"  (pixels/best block {ratio:.2f}: "
                        f"{'pixels read' if read else 'pixels muted'})",
                        flush=True,
                    )
    table = np.array(rows)
    print(
        f"{len(rows)} runs; mean test accuracy: no group {table[:, 0].mean():.4f}, "
        f"always {table[:, 1].mean():.4f}, tltf {table[:, 2].mean():.4f}"
    )
    print(
        "leave-one-out accuracy of the pixels over the best block's: "
        + ", ".join(f"{t} {min(r):.2f} to {max(r):.2f}" for t, r in ratios.items())
    )
    print(
        "mean test accuracy of the closed-form head, tltf's / without the pixel "
        f"group: {table[:, 2].mean():.4f} / {table[:, 0].mean():.4f} = "
        f"{table[:, 2].mean() / table[:, 0].mean():.3f}x"
    )


def model_widths(model) -> list[int]:
    """The widths of the head's groups: each block (its pools summed), then the
    raw pixels."""
    pooled = [int(t.shape[-1]) for t in model.get_layer("head_pool").input]
    pixels = pixel_columns(model)
    blocks = tltf.model_info(model).metadata["head_blocks"]
    per = (len(pooled) - 1) // len(blocks)
    widths = [sum(pooled[i : i + per]) for i in range(0, len(pooled) - 1, per)]
    return [*widths, pixels.stop - pixels.start]


if __name__ == "__main__":
    main()
