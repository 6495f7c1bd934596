"""Does `tltf.rank_bases` pick the base that fine-tuning would have picked?

For each real task (digits, letters rendered from fonts, texture patches; see
`benchmarks/realdata.py`) and seed, k labelled images per class train and 30
per class test. Five candidate bases:

- `vgg16`: the registry name, with the real VGG16 trunk of `realdata`
  (ImageNet-derived weights, offline);
- `vgg16@block4`: the same VGG16 cut after block4, saved with `save_base`
  (a saved-base folder);
- `demo`: the base shipped with tltf (MobileNetV3Small pretrained on shapes);
- `demo@expanded_conv_5`: the demo base cut in the middle, saved;
- `mnv3s-random`: MobileNetV3Small with random weights (a "user's own
  model" that transfers nothing), saved.

`rank_bases` scores all five on the training images alone (LogME, kNN
leave-one-out, ridge probe leave-one-out). Then each base is fine-tuned with
`tltf.fine_tune`'s defaults on the same training images and scored on the test
images: the ground truth the scores try to predict.

Reported: per task, each score's Kendall tau with the fine-tuned accuracy, the
accuracy lost by taking each score's top-ranked base instead of the best base,
and the time of ranking against fine-tuning every candidate. The last line is
the time ratio.

Usage:
    .venv/bin/python benchmarks/rank_bases.py --weights-dir /tmp/me/w \\
        [--tasks digits fonts textures] [--k 10] [--seeds 0 1] [--smoke]
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import realdata

from tltf.bases.cut import cut_base
from tltf.ranking import SCORES, kendall_tau

SIZE = 64
TEST_PER_CLASS = 30


def make_candidates(folder: Path, weights_dir, seed: int) -> dict:
    """`{name: candidate}`: registry and shipped names, and saved-base folders."""
    vgg = tltf.load_base("vgg16", input_shape=(SIZE, SIZE, 3), weights_dir=weights_dir)
    demo = tltf.load_base("demo")
    keras.utils.set_random_seed(seed)
    random = tltf.load_base(
        "mobilenet_v3_small", weights=None, input_shape=(SIZE, SIZE, 3)
    )
    saved = {
        "vgg16@block4": cut_base(vgg, "block4")[0],
        "demo@expanded_conv_5": cut_base(demo, "expanded_conv_5")[0],
        "mnv3s-random": random,
    }
    paths = {
        name: str(tltf.save_base(base, folder / name.replace("@", "_at_")))
        for name, base in saved.items()
    }
    return {"vgg16": "vgg16", "demo": "demo", **paths}


def _fine_tune(candidate, weights_dir, n_classes, train, test, seed):
    """Test accuracy of `fine_tune`'s defaults on a fresh copy of the base."""
    keras.utils.set_random_seed(seed)
    if candidate == "vgg16":
        base = realdata.benchmark_base("vgg16", SIZE, weights_dir)
    else:
        base = tltf.load_base(candidate)
    model = tltf.build_model(base, n_classes)
    tltf.fine_tune(model, train, seed=seed, verbose=0)
    scores = model.predict(test[0].astype("float32"), batch_size=64, verbose=0)
    return float(np.mean(scores.argmax(axis=1) == test[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="2 tasks, k=3: checks that it runs"
    )
    args = parser.parse_args()
    if args.smoke:
        args.tasks, args.k = args.tasks[:2], 3
    weights_dir = realdata.weights_folder(args.weights_dir)
    folder = Path(tempfile.mkdtemp(prefix="tltf_rank_"))
    runs = []  # one dict per (task, seed)
    for seed in args.seeds:
        candidates = make_candidates(folder / f"seed{seed}", weights_dir, seed)
        for task in args.tasks:
            x, y = realdata.task_data(task, SIZE)
            train, test = realdata.few_shot(x, y, args.k, seed, TEST_PER_CLASS)
            n_classes = int(y.max()) + 1
            ranked = tltf.rank_bases(
                candidates, train, weights_dir=weights_dir, verbose=0
            )
            print(f"\n== {task}, k={args.k}, seed {seed}", flush=True)
            print(ranked, flush=True)
            rows = {r["candidate"]: r for r in ranked.table}
            accuracy, seconds = {}, {}
            for name, candidate in candidates.items():
                start = time.perf_counter()
                accuracy[name] = _fine_tune(
                    candidate, weights_dir, n_classes, train, test, seed
                )
                seconds[name] = time.perf_counter() - start
                print(
                    f"  fine_tune {name:22s} test accuracy {accuracy[name]:.3f} "
                    f"({seconds[name]:.0f}s)",
                    flush=True,
                )
            runs.append(
                {
                    "task": task,
                    "seed": seed,
                    "rows": rows,
                    "accuracy": accuracy,
                    "fine_tune_s": sum(seconds.values()),
                    "rank_s": ranked.seconds,
                }
            )
            _report_run(runs[-1])
    _report(runs)


def _report_run(run) -> None:
    names = list(run["accuracy"])
    best = max(run["accuracy"].values())
    parts = []
    for score in SCORES:
        values = [run["rows"][n][score] for n in names]
        tau = kendall_tau(values, [run["accuracy"][n] for n in names])
        top = names[int(np.argmax(values))]
        run[score] = (tau, best - run["accuracy"][top], top)
        parts.append(
            f"{score}: tau {tau:+.2f}, picks {top} (loses "
            f"{100 * (best - run['accuracy'][top]):.1f} pts)"
        )
    print("  " + "; ".join(parts), flush=True)
    print(
        f"  ranking {run['rank_s']:.1f}s vs fine-tuning all {run['fine_tune_s']:.0f}s",
        flush=True,
    )


def _report(runs) -> None:
    print("\n| task | seed | " + " | ".join(f"{s} tau / loss" for s in SCORES) + " |")
    print("|---|---|" + "---|" * len(SCORES))
    for run in runs:
        cells = " | ".join(
            f"{run[s][0]:+.2f} / {100 * run[s][1]:.1f} pts ({run[s][2]})"
            for s in SCORES
        )
        print(f"| {run['task']} | {run['seed']} | {cells} |")
    means = {
        s: (
            float(np.nanmean([r[s][0] for r in runs])),
            float(np.mean([r[s][1] for r in runs])),
        )
        for s in SCORES
    }
    cells = " | ".join(
        f"{means[s][0]:+.2f} / {100 * means[s][1]:.1f} pts" for s in SCORES
    )
    print(f"| **mean** | | {cells} |")
    rank_s = sum(r["rank_s"] for r in runs)
    tune_s = sum(r["fine_tune_s"] for r in runs)
    print(
        f"ranking {rank_s:.0f}s vs fine-tuning every candidate {tune_s:.0f}s over "
        f"{len(runs)} task runs: {tune_s / rank_s:.1f}x less time"
    )


if __name__ == "__main__":
    main()
