"""The head's dropout under a ridge-started stage 1.

The default head is a ridge-started linear layer behind Dropout(0.2). The ridge
fit chooses its L2 strength by leave-one-out on the features without dropout;
stage 1 then trains the head with dropout on. On many images the strength it
chooses is small and the weights large, and dropout's noise on them is large:
on 4,800 procedural texture images, the first stage-1 epoch's training loss
at a learning rate of 1e-7 was 15.91 where the ridge start's was 0.58
(`--diagnose`). This benchmark runs the defaults twice
per split in one process, with the head's dropout at 0.2 and at 0.0, and
prints both test accuracies. Which runs first alternates from split to split.

Usage:
    .venv/bin/python benchmarks/head_dropout.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1] \
        [--test 30] [--val 0] [--weights-dir DIR]

`--tasks` takes the real tasks of `benchmarks/realdata.py` and
"procedural:NAME" for tltf's procedural tasks (`tltf.datasets`). `--val N`
passes N images a class as `validation_data`: the guard then scores the
validation loss, and nothing is handed back to a closed-form refit. The last
line prints both mean test accuracies and their ratio (dropout 0.0 over 0.2).
`--diagnose` prints, per split and dropout, stage 1 alone against its ridge
start instead (`diagnose`).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

RATES = (0.2, 0.0)


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


def run(base: str, data, seed: int, weights_dir, rate: float):
    train, test, validation = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(
        realdata.benchmark_base(base, 64, weights_dir), classes, head={"dropout": rate}
    )
    started = time.perf_counter()
    tltf.fine_tune(model, train, validation, seed=seed, verbose=0)
    return realdata.accuracy(model, *test), time.perf_counter() - started


def diagnose(base: str, data, seed: int, weights_dir) -> str:
    """Stage 1 against its ridge start: the closed-form head's training loss,
    the first stage-1 epoch's loss at a rate too small to move the weights, and
    the test accuracy of stage 1 alone at the default rate, for each dropout."""
    (x, y), test, _ = data
    cells = []
    for rate in RATES:
        runs = {
            "closed form": {"head_steps": 0},
            "lr 1e-7": {"head_lr": 1e-7, "head_epochs": 1},
            "stage 1": {},
        }
        out = []
        for name, kwargs in runs.items():
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            classes = int(np.max(test[1])) + 1
            model = tltf.build_model(
                realdata.benchmark_base(base, 64, weights_dir),
                classes,
                head={"dropout": rate},
            )
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
        cells.append(f"dropout {rate}: " + ", ".join(out))
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
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores = {rate: [] for rate in RATES}
    i = 0
    for base in args.bases:
        for task in args.tasks:
            for k in args.k:
                for seed in args.seeds:
                    data = split(task, k, seed, args.test, args.val)
                    if args.diagnose:
                        line = diagnose(base, data, seed, weights_dir)
                        print(f"{base:6s} {task:9s} k={k:<3d} seed {seed}: {line}")
                        continue
                    order = RATES if i % 2 == 0 else RATES[::-1]
                    i += 1
                    row = {r: run(base, data, seed, weights_dir, r) for r in order}
                    for rate in RATES:
                        scores[rate].append(row[rate][0])
                    cells = "  ".join(
                        f"dropout {r}: test {row[r][0]:.3f} ({row[r][1]:.1f}s)"
                        for r in RATES
                    )
                    print(
                        f"{base:6s} {task:9s} k={k:<3d} seed {seed}: {cells}",
                        flush=True,
                    )
    if args.diagnose:
        return
    mean = {rate: float(np.mean(scores[rate])) for rate in RATES}
    print(
        f"mean test accuracy over {len(scores[RATES[0]])} runs: dropout 0.2 "
        f"{mean[0.2]:.4f}, dropout 0.0 {mean[0.0]:.4f}; 0.0 / 0.2 = "
        f"{mean[0.0] / mean[0.2]:.3f}x"
    )


if __name__ == "__main__":
    main()
