"""The head's dropout under a ridge-started stage 1.

The default head is a ridge-started linear layer; until the forty-third
session it sat behind Dropout(0.2), and now it has none. The ridge fit chooses
its L2 strength by leave-one-out on the features without dropout; with dropout
on, stage 1 trained the head under noise. On many images the strength it
chooses is small and the weights large, and dropout's noise on them is large:
on 4,800 procedural texture images, the first stage-1 epoch's training loss
at a learning rate of 1e-7 was 15.91 where the ridge start's was 0.58
(`--diagnose`). This benchmark runs the defaults twice
per split in one process, with the head's dropout at 0.2 (the old default)
and at 0.0 (the default), and prints both test accuracies. Which runs first
alternates from split to split.

Usage:
    .venv/bin/python benchmarks/head_dropout.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1] \
        [--test 30] [--val 0] [--variants 0.2 0.0] [--diagnose] [--verbose] \
        [--hidden 256] [--weights-dir DIR]

`--tasks` takes the real tasks of `benchmarks/realdata.py` and
"procedural:NAME" for tltf's procedural tasks (`tltf.datasets`). `--val N`
passes N images a class as `validation_data`: the guard then scores the
validation loss, and nothing is handed back to a closed-form refit. The last
line prints each variant's mean test accuracy and the ratio of 0.0 over 0.2.
`--diagnose` prints, per split and dropout, stage 1 alone against its ridge
start instead (`diagnose`). `--variants` adds the two fixes tried before
dropping the dropout (`VARIANTS`): "floor", a ridge start whose L2 is at least
the penalty Dropout(0.2) implies for a linear layer (Wager et al. 2013), and
"stage2", dropout off in stage 1 and on in stage 2.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import time

import keras
import numpy as np
import realdata

import tltf.probe
import tltf.schedule


@contextlib.contextmanager
def floored_l2(rate: float = 0.2):
    """Every ridge fit's L2 at least the penalty dropout at `rate` implies for a
    linear layer on these features, `rate / (1 - rate)` times their summed
    squares per column (averaged over the columns that are not all 0): the
    ridge grid keeps the strengths above it and the floor itself. Unweighted
    images only (`tltf.probe._ridge` scales weighted rows first)."""
    ridge, grid = tltf.probe._ridge, tltf.probe._L2_GRID

    def floored(z, targets, score, w=None):
        z64 = np.asarray(z, dtype=np.float64)
        squares = np.sum(z64**2, axis=0)
        floor = rate / (1 - rate) * float(squares[squares > 1e-12].mean())
        gram = z64.T @ z64 if len(z64) >= z64.shape[1] else z64 @ z64.T
        s2 = np.linalg.eigvalsh(gram)
        scale = float(s2[s2 > 1e-10 * max(s2.max(), 1e-300)].mean())
        tltf.probe._L2_GRID = np.unique(
            np.append(grid[grid * scale > floor], floor / scale)
        )
        try:
            return ridge(z, targets, score, w)
        finally:
            tltf.probe._L2_GRID = grid

    tltf.probe._ridge = floored
    try:
        yield
    finally:
        tltf.probe._ridge = ridge


@contextlib.contextmanager
def no_dropout_in_stage_one():
    """The head's dropout layers at rate 0 while stage 1 trains on the cached
    features, back at their rate for stage 2 (traced afterwards). Only the
    cached stage 1 (`_fit_stage_one`), the path of every run here."""
    fit = tltf.schedule._fit_stage_one

    def without(run, *args, **kwargs):
        layers = [
            la
            for la in run.model.layers
            if isinstance(la, keras.layers.Dropout) and la.name.startswith("head_")
        ]
        rates = [la.rate for la in layers]
        for layer in layers:
            layer.rate = 0.0
        try:
            return fit(run, *args, **kwargs)
        finally:
            for layer, rate in zip(layers, rates, strict=True):
                layer.rate = rate

    tltf.schedule._fit_stage_one = without
    try:
        yield
    finally:
        tltf.schedule._fit_stage_one = fit


#: name: (the head's dropout, the context it runs in, its label).
VARIANTS = {
    "0.2": (0.2, contextlib.nullcontext, "dropout 0.2"),
    "0.0": (0.0, contextlib.nullcontext, "dropout 0.0"),
    "floor": (0.2, floored_l2, "dropout 0.2, L2 floor"),
    "stage2": (0.2, no_dropout_in_stage_one, "dropout 0.2 in stage 2 only"),
}


def split(task: str, k: int, seed: int, test: int, val: int):
    """`(train, test, validation or None)`: k, `test` and `val` images a class.

    A task named "procedural:NAME" draws tltf's procedural `NAME` images (each
    split with its own seed); any other is `realdata.few_shot`'s split of a real
    task, its validation images taken from the images it leaves out.
    """
    if task.startswith("procedural:"):
        name = task.split(":", 1)[1]

        def draw(count, offset):
            return tltf.datasets.make_images(
                name, per_class=count, image_size=64, seed=seed + offset
            )

        return draw(k, 0), draw(test, 104729), draw(val, 7919) if val else None
    x, y = realdata.task_data(task, 64)
    train, rest = realdata.few_shot(x, y, k, seed, test + val)
    if not val:
        return train, rest, None
    held, tested = realdata.few_shot(*rest, val, seed, test)
    return train, tested, held


def fresh_model(base: str, weights_dir, seed: int, test, head: dict):
    """A new model on `base` with `head`, Keras seeded with `seed` first, for
    the classes of the `(images, labels)` test split."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    return tltf.build_model(
        realdata.benchmark_base(base, 64, weights_dir), classes, head=head
    )


def run(
    base: str, data, seed: int, weights_dir, variant: str, verbose: int = 0, hidden=()
):
    train, test, validation = data
    rate, context, _ = VARIANTS[variant]
    head = {"dropout": rate, "hidden_units": hidden}
    model = fresh_model(base, weights_dir, seed, test, head)
    started = time.perf_counter()
    with context():
        tltf.fine_tune(model, train, validation, seed=seed, verbose=verbose)
    return realdata.accuracy(model, *test), time.perf_counter() - started


def diagnose(base: str, data, seed: int, weights_dir, variants) -> str:
    """Stage 1 against its ridge start: the closed-form head's training loss,
    the first stage-1 epoch's loss at a rate too small to move the weights, and
    the test accuracy of stage 1 alone at the default rate, for each variant."""
    (x, y), test, _ = data
    cells = []
    for variant in variants:
        rate, context, label = VARIANTS[variant]
        runs = {
            "closed form": {"head_steps": 0},
            "lr 1e-7": {"head_lr": 1e-7, "head_epochs": 1},
            "stage 1": {},
        }
        out = []
        for name, kwargs in runs.items():
            model = fresh_model(base, weights_dir, seed, test, {"dropout": rate})
            with context():
                history = tltf.fine_tune(
                    model,
                    (x, y),
                    fine_tune_epochs=0,
                    keep_best=False,
                    seed=seed,
                    verbose=0,
                    **kwargs,
                )
            if name == "closed form":
                p = model.predict(x, verbose=0)
                ce = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
                out.append(f"closed-form training loss {ce:.2f}")
            elif name == "lr 1e-7":
                out.append(f"epoch-1 loss at lr 1e-7 {history.history['loss'][0]:.2f}")
            else:
                out.append(f"stage 1 test {realdata.accuracy(model, *test):.3f}")
        cells.append(f"{label}: " + ", ".join(out))
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", nargs="+", type=int, default=[10])
    parser.add_argument("--test", type=int, default=30, help="test images per class")
    parser.add_argument(
        "--val",
        type=int,
        default=0,
        help="validation images per class passed as validation_data (0: none)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="instead: stage 1 alone against the closed-form head (`diagnose`)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["0.2", "0.0"],
        help="what to compare (`VARIANTS`); the last line's ratio is 0.0 over 0.2 "
        "where both run, else the last over the first",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print fine_tune's lines (verbose=2): what the guard kept, and why",
    )
    parser.add_argument(
        "--hidden",
        nargs="*",
        type=int,
        default=[],
        help="the head's hidden layers (`hidden_units`), which start from random "
        "weights: no ridge start, no closed-form hand-back (default: none)",
    )
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    variants = args.variants
    scores = {variant: [] for variant in variants}
    i = 0
    for base in args.bases:
        for task in args.tasks:
            for k in args.k:
                for seed in args.seeds:
                    data = split(task, k, seed, args.test, args.val)
                    if args.diagnose:
                        line = diagnose(base, data, seed, weights_dir, variants)
                        print(f"{base:6s} {task:9s} k={k:<3d} seed {seed}: {line}")
                        continue
                    order = variants if i % 2 == 0 else variants[::-1]
                    i += 1
                    row = {
                        v: run(
                            base,
                            data,
                            seed,
                            weights_dir,
                            v,
                            2 * args.verbose,
                            tuple(args.hidden),
                        )
                        for v in order
                    }
                    for variant in variants:
                        scores[variant].append(row[variant][0])
                    cells = "  ".join(
                        f"{VARIANTS[v][2]}: test {row[v][0]:.3f} ({row[v][1]:.1f}s)"
                        for v in variants
                    )
                    print(
                        f"{base:6s} {task:9s} k={k:<3d} seed {seed}: {cells}",
                        flush=True,
                    )
    if args.diagnose:
        return
    mean = {v: float(np.mean(scores[v])) for v in variants}
    top, bottom = (
        ("0.0", "0.2")
        if {"0.0", "0.2"} <= set(variants)
        else (
            variants[-1],
            variants[0],
        )
    )
    means = ", ".join(f"{VARIANTS[v][2]} {mean[v]:.4f}" for v in variants)
    print(
        f"mean test accuracy over {len(scores[variants[0]])} runs: {means}; "
        f"{top} / {bottom} = {mean[top] / mean[bottom]:.3f}x"
    )


if __name__ == "__main__":
    main()
