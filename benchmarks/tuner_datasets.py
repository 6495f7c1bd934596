"""A search on a `load_data` bundle: trials' stage 2 on cached frozen blocks
against full passes.

Until 2026-12-06 a trial's stage 2 computed the frozen blocks' output once for
array inputs only; a bundle from `load_data` (an image folder, TFDS) or a
`tf.data` input, the forms the README's tuning example uses, ran the whole base
forward on every stage-2 step. The baseline is the same `tltf.tune` call with
`FineTuneHyperModel._partial_cache` put back to "no split" in this process.
The sides alternate after one uncounted warm-up of each, each in a new project
folder.

The search: `tuner="grid"` over `unfreeze` in `--depths` (fixed head and
rates), `head_epochs=5`, `fine_tune_epochs=5`, on scikit-learn's digits at
64 px, `--k` images per class for training and 10 per class for validation,
as a bundle (`tltf.load_data((x, y), validation=...)`, batch 32). Base: VGG16
from Keras's ImageNet file in `--weights-dir` (see `benchmarks/realdata.py`;
random weights without it, which time the same), or the shipped demo base.

Usage:
    .venv/bin/python benchmarks/tuner_datasets.py [--base vgg16] [--k 10]
        [--depths 1 2] [--repeats 2] [--weights-dir W]

The last line prints the baseline's time over tltf's (medians of the search's
wall time) and the best validation accuracy of each side.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from tltf.tuning import FineTuneHyperModel, tune

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402
import stage2_cache  # noqa: E402


def baseline():
    """A trial's stage 2 as it was for bundles: full forward passes."""
    return stage2_cache.patched(
        FineTuneHyperModel, "_partial_cache", lambda self, *args: None
    )


def bundle(k: int, seed: int = 0):
    """`k` training and 10 validation digits per class, as a load_data bundle."""
    x, y = realdata.digits(64)
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(y == c))[: k + 10] for c in np.unique(y)]
    train = np.concatenate([r[:k] for r in rows])
    val = np.concatenate([r[k:] for r in rows])
    return tltf.load_data((x[train], y[train]), validation=(x[val], y[val]), seed=seed)


def search(
    base: str, weights_dir, data, folder, unfreeze, fine_tune_lr=1e-4
) -> tuple[float, float]:
    """Seconds of one grid search and its best validation accuracy: over
    `unfreeze` and `fine_tune_lr` (each a value or a list of them), the head
    fixed."""
    keras.utils.set_random_seed(0)
    kwargs = {"weights": None}
    if base == "demo":
        kwargs = {}
    elif weights_dir:
        kwargs = {"base_kwargs": {"weights_dir": weights_dir}}
    trials = len(unfreeze) if isinstance(unfreeze, list) else 1
    trials *= len(fine_tune_lr) if isinstance(fine_tune_lr, list) else 1
    start = time.perf_counter()
    result = tune(
        base,
        data,
        tuner="grid",
        max_trials=trials,
        search={
            "unfreeze": unfreeze,
            "head_units": 0,
            "head_dropout": 0.2,
            "fine_tune_lr": fine_tune_lr,
        },
        head_epochs=5,
        fine_tune_epochs=5,
        seed=0,
        directory=folder,
        verbose=0,
        input_shape=(64, 64, 3),
        **kwargs,
    )
    seconds = time.perf_counter() - start
    best = max(r["score"] for r in result.table if r["score"] is not None)
    return seconds, best


def alternate(run, baseline, repeats: int) -> tuple[dict, dict]:
    """`run(folder)` (seconds, best score) on each side, tltf then `baseline`
    (a context manager), after one uncounted warm-up of each, each in a new
    folder: the counted seconds and the last best score of each side."""
    times = {"tltf": [], "baseline": []}
    best = {}
    with tempfile.TemporaryDirectory() as root:
        for i in range(repeats + 1):  # the first of each side: warm-up
            for side in ("tltf", "baseline"):
                context = baseline() if side == "baseline" else contextlib.nullcontext()
                with context:
                    seconds, best[side] = run(f"{root}/{side}{i}")
                if i:
                    times[side].append(seconds)
                print(
                    f"{side:8s} run {i}: {seconds:6.1f}s, best val accuracy "
                    f"{best[side]:.3f}{' (warm-up)' if not i else ''}",
                    flush=True,
                )
    return times, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="vgg16")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    data = bundle(args.k)
    times, best = alternate(
        lambda folder: search(
            args.base, args.weights_dir, data, folder, list(args.depths)
        ),
        baseline,
        args.repeats,
    )
    medians = {side: statistics.median(v) for side, v in times.items()}
    print(
        f"{args.base}, {len(args.depths)} trials on a bundle: median search seconds, "
        f"full passes / frozen blocks once: {medians['baseline']:.1f} / "
        f"{medians['tltf']:.1f} = {medians['baseline'] / medians['tltf']:.2f}x "
        f"(best val accuracy {best['baseline']:.3f} / {best['tltf']:.3f})"
    )


if __name__ == "__main__":
    main()
