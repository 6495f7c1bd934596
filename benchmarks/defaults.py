"""Are `fine_tune`'s defaults good on tasks they were not tuned on?

Compares, on the same pretrained base and the same few labelled images:

- the keras.io recipe ("Transfer learning & fine-tuning"): a frozen base called
  with `training=False`, GlobalAveragePooling2D, Dropout(0.2), Dense, Adam(1e-3)
  for the head epochs; then the whole base trainable, Adam(1e-5) for the
  fine-tune epochs (BatchNorm stays in inference mode);
- `tltf.fine_tune` with its defaults (and any candidate settings given with
  `--variant`), with the same epoch budget.

Targets: `shapes_target` (new shapes: near the source domain), `textures`
(cross-domain: periodic patterns, not shapes) and `counting` (a different kind of
task: how many objects). The base is tltf's demo base, pretrained on
`shapes_source` (classes disjoint from every target).

Usage:
    .venv/bin/python benchmarks/defaults.py [--k 10] [--seeds 0 1]

The last line prints tltf's mean test accuracy over all tasks and seeds divided
by the recipe's.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import json
import time

import keras
import numpy as np

from tltf import datasets
from tltf.bases.base import load_saved_base
from tltf.pretrain import default_demo_base

TASKS = ("shapes_target", "textures", "counting")


def _fresh_base(path):
    return load_saved_base(path)


def recipe(base, n_classes, train, test, head_epochs, fine_tune_epochs):
    """The keras.io recipe, verbatim in structure."""
    inputs = keras.Input(base.input_shape)
    x = tltf.layers.Preprocessing(base.preprocessing)(inputs)
    base.model.trainable = False
    x = base.model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(n_classes)(x)
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(), loss, metrics=["accuracy"])
    model.fit(*train, batch_size=32, epochs=head_epochs, verbose=0)
    base.model.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), loss, metrics=["accuracy"])
    model.fit(
        *train,
        batch_size=32,
        epochs=head_epochs + fine_tune_epochs,
        initial_epoch=head_epochs,
        verbose=0,
    )
    return model.evaluate(*test, verbose=0)[1]


def with_tltf(base, n_classes, train, test, head_epochs, fine_tune_epochs, **kwargs):
    model = tltf.build_model(base, n_classes)
    tltf.fine_tune(
        model,
        train,
        head_epochs=head_epochs,
        fine_tune_epochs=fine_tune_epochs,
        verbose=0,
        **kwargs,
    )
    return model.evaluate(*test, verbose=0)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10, help="labelled images per class")
    parser.add_argument("--test", type=int, default=40, help="test images per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='extra tltf settings as JSON, e.g. \'{"unfreeze": 4, "fine_tune_lr": 1e-4}\'',
    )
    args = parser.parse_args()
    demo = default_demo_base()
    path = demo.info["path"]
    size = demo.input_shape[0]
    head_epochs, fine_tune_epochs = 10, 10  # fine_tune's default budget
    variants = {"tltf defaults": {}}
    variants.update({f"tltf {v}": json.loads(v) for v in args.variant})
    scores: dict[str, list[float]] = {
        "keras.io recipe": [],
        **{v: [] for v in variants},
    }
    rows = []
    for task in args.tasks:
        n = datasets.num_classes(task)
        for seed in args.seeds:
            train = datasets.make_images(
                task, per_class=args.k, image_size=size, seed=100 + seed
            )
            test = datasets.make_images(
                task, per_class=args.test, image_size=size, seed=999
            )
            row = {"task": task, "seed": seed}
            keras.utils.set_random_seed(seed)
            start = time.perf_counter()
            row["keras.io recipe"] = recipe(
                _fresh_base(path), n, train, test, head_epochs, fine_tune_epochs
            )
            for name, kwargs in variants.items():
                keras.utils.set_random_seed(seed)
                row[name] = with_tltf(
                    _fresh_base(path),
                    n,
                    train,
                    test,
                    head_epochs,
                    fine_tune_epochs,
                    seed=seed,
                    **kwargs,
                )
            for name in scores:
                scores[name].append(row[name])
            rows.append(row)
            cells = "  ".join(f"{name}: {row[name]:.3f}" for name in scores)
            print(
                f"{task:14s} seed {seed}  {cells}  ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    print()
    for task in args.tasks:
        cells = "  ".join(
            f"{name}: {np.mean([r[name] for r in rows if r['task'] == task]):.3f}"
            for name in scores
        )
        print(f"mean {task:14s} {cells}")
    base_mean = np.mean(scores["keras.io recipe"])
    print(
        f"k={args.k}, {len(args.seeds)} seeds, {head_epochs}+{fine_tune_epochs} epochs, base {demo.name}"
    )
    print(
        "mean test accuracy, tltf defaults / keras.io recipe: "
        f"{np.mean(scores['tltf defaults']):.3f} / {base_mean:.3f} = "
        f"{np.mean(scores['tltf defaults']) / base_mean:.2f}x"
    )


if __name__ == "__main__":
    main()
