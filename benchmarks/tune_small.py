"""Does `tltf.tune` beat `fine_tune`'s defaults on few labelled images?

For each real task (sklearn's digits, letters rendered from matplotlib's fonts,
texture patches; `benchmarks/realdata.py`) and seed, k labelled images per class
and 30 per class of test images. Both workflows get the same k labelled images:

- **defaults**: `tltf.build_model(base, n)` and `tltf.fine_tune(model, train)`
  with every default (a converged stage 1 from the ridge start, the depth from
  the probe, the stage-2 guard on a held-out slice that is handed back);
- **tune**: `tltf.tune(base, train, validation_split=0.25, max_trials=T)`, the
  default search (`SearchSpace()`: every depth, fine-tune rate 1e-6..1e-3,
  dropout 0.0 / 0.2, head units 0 / 256) and the tuner's own epochs; its
  `best_model` is scored;
- **tune, then refit**: the best trial's searched values (depth, fine-tune
  rate, head dropout and units) on a fresh model, fine-tuned with `fine_tune`'s
  defaults otherwise on all k images (the search's training and validation
  images together), as keras-tuner's guides retrain the best model on all data.

Reported: the test accuracy of each, the tuned best hyperparameters, and the
wall time. The last line is the mean test-accuracy difference (tune minus
defaults) and the time ratio.

Usage:
    .venv/bin/python benchmarks/tune_small.py [--base demo|vgg16] \\
        [--weights-dir DIR] [--tasks digits fonts textures] [--k 20] \\
        [--seeds 0 1] [--trials 8]
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import tempfile
import time

import keras
import numpy as np
import realdata

from tltf.tuning.space import unfreeze_spec

SIZE = 64


def refit(base_name, weights_dir, values: dict, train, test, seed: int) -> float:
    """Test accuracy of the best values, fine-tuned on all of `train`."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    base = realdata.benchmark_base(base_name, SIZE, weights_dir)
    units = int(values["head_units"])
    head = {"dropout": float(values["head_dropout"])}
    head["hidden_units"] = [units] if units else []
    model = tltf.build_model(base, int(train[1].max()) + 1, head=head)
    blocks = len(tltf.model_info(model).block_map)
    unfreeze = unfreeze_spec({"unfreeze": values["unfreeze_blocks"]}, blocks)
    tltf.fine_tune(
        model,
        train,
        unfreeze=unfreeze,
        fine_tune_lr=float(values["fine_tune_lr"]),
        seed=seed,
        verbose=0,
    )
    return realdata.accuracy(model, *test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="demo")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--search", default=None, help="a SearchSpace as JSON")
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, bases=(args.base,))
    search = None
    if args.search:
        import json

        search = json.loads(args.search)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            train, test = realdata.task_split(task, args.k, seed, size=SIZE)
            classes = int(train[1].max()) + 1
            keras.backend.clear_session()
            start = time.perf_counter()
            defaults = realdata.fine_tune_accuracy(
                args.base, weights_dir, train, [test], seed, {}, SIZE
            )[0]
            default_s = time.perf_counter() - start
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            start = time.perf_counter()
            result = tltf.tune(
                realdata.benchmark_base(args.base, SIZE, weights_dir),
                train,
                validation_split=0.25,
                num_classes=classes,
                max_trials=args.trials,
                search=search,
                seed=seed,
                directory=tempfile.mkdtemp(prefix="tltf_tune_small_"),
                verbose=0,
            )
            tune_s = time.perf_counter() - start
            tuned = realdata.accuracy(result.best_model, *test)
            refitted = refit(
                args.base, weights_dir, result.best_values, train, test, seed
            )
            rows.append((task, seed, defaults, tuned, default_s, tune_s, refitted))
            best = {
                k: (round(v, 7) if isinstance(v, float) else v)
                for k, v in result.best_values.items()
            }
            print(
                f"{task} seed {seed}: defaults {defaults:.3f} ({default_s:.0f}s), "
                f"tune {tuned:.3f} ({tune_s:.0f}s, best {best}), refit {refitted:.3f}",
                flush=True,
            )
    print("\n| task | seed | defaults | tune | tune, then refit |")
    print("|---|---|---|---|---|")
    for task, seed, d, t, _, _, r in rows:
        print(f"| {task} | {seed} | {d:.3f} | {t:.3f} | {r:.3f} |")
    means = [float(np.mean([r[i] for r in rows])) for i in (2, 3, 6)]
    print("| **mean** | | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    diff = float(np.mean([r[3] - r[2] for r in rows]))
    wins = sum(r[3] > r[2] for r in rows)
    ties = sum(r[3] == r[2] for r in rows)
    ratio = sum(r[5] for r in rows) / sum(r[4] for r in rows)
    print(
        f"tune minus defaults: {100 * diff:+.1f} points on average "
        f"({wins} higher, {ties} same, {len(rows) - wins - ties} lower), "
        f"at {ratio:.1f}x the time"
    )


if __name__ == "__main__":
    main()
