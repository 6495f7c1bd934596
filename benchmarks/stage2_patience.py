"""Stage 2 ended by patience: a guard that stops once it has kept nothing for P epochs.

Without validation data, a classifier's guard (`keep_best`) scores a held-out
slice of the training images at the end of stage 1 and after every stage-2
epoch, and keeps a stage-2 epoch only if it is more accurate there than every
earlier candidate. Stage 2 runs all its epochs, and the guard restores the best
at the end. This benchmark asks whether stage 2 could stop early, as Keras's
`EarlyStopping(patience=P, restore_best_weights=True)` would: once P stage-2
epochs in a row were not kept (`fine_tune_patience=P`, opt-in). It runs the
defaults twice per split in one process: as they are ("all epochs") and with
`fine_tune_patience=P` ("patience P"). Which runs first alternates from
split to split, after one untimed run. Each line gives both runs' seconds and
test accuracies, the stage-2 epoch each kept (0: stage 1's end), and the slice
accuracy after each stage-2 epoch of the full run.

Usage:
    .venv/bin/python benchmarks/stage2_patience.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1] \
        [--patience 3] [--weights-dir DIR]

The last line prints the mean seconds of `fine_tune` with patience over those
of all epochs, and the two mean test accuracies.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

from tltf.guard import KeepBest

VARIANTS = ("all epochs", "patience")


def run(base: str, train, test, seed: int, weights_dir, patience: int | None):
    """One default `fine_tune`: its seconds, test accuracy, the stage-2 epoch it
    kept (0: stage 1's end) and the slice accuracy after each stage-2 epoch."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(realdata.benchmark_base(base, 64, weights_dir), classes)
    scores, end = [], KeepBest.on_epoch_end

    def on_epoch_end(guard, epoch, logs=None):  # records the slice's accuracy
        end(guard, epoch, logs)
        if guard.last_epoch == epoch and guard.last_score is not None:
            scores.append(guard.last_score[0])  # a stage-2 epoch

    KeepBest.on_epoch_end = on_epoch_end
    try:
        started = time.perf_counter()
        history = tltf.fine_tune(
            model, train, seed=seed, verbose=0, fine_tune_patience=patience
        )
        seconds = time.perf_counter() - started
    finally:
        KeepBest.on_epoch_end = end
    stages = history.history["stage"]
    kept = max(history.kept.epoch - stages.count(1), 0) if history.kept else 0
    return seconds, realdata.accuracy(model, *test), kept, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    train, test = realdata.task_split(args.tasks[0], 5, 0)
    run(args.bases[0], train, test, 0, weights_dir, None)  # untimed: one-off costs
    rows = []
    for base in args.bases:
        for task in args.tasks:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.task_split(task, k, seed)
                    order = VARIANTS if len(rows) % 2 == 0 else VARIANTS[::-1]
                    result = {
                        v: run(
                            base,
                            train,
                            test,
                            seed,
                            weights_dir,
                            args.patience if v == "patience" else None,
                        )
                        for v in order
                    }
                    full, short = result["all epochs"], result["patience"]
                    rows.append((full, short))
                    print(
                        f"{base:6s} {task:9s} k={k:<3d} seed {seed}  seconds "
                        f"{full[0]:5.1f} / {short[0]:5.1f}  test {full[1]:.3f} / "
                        f"{short[1]:.3f}  kept stage-2 epoch {full[2]} / {short[2]}"
                        f"  slice {' '.join(f'{s:.3f}' for s in full[3])}",
                        flush=True,
                    )
    full, short = (np.array([r[i][:2] for r in rows]) for i in (0, 1))
    changed = sum(r[0][2] != r[1][2] for r in rows)
    print(
        f"{len(rows)} runs; the kept epoch changed in {changed}; mean test "
        f"accuracy, all epochs / patience {args.patience}: {full[:, 1].mean():.3f} / "
        f"{short[:, 1].mean():.3f}"
    )
    print(
        f"mean seconds of fine_tune, patience {args.patience} / all epochs: "
        f"{short[:, 0].mean():.1f} / {full[:, 0].mean():.1f} = "
        f"{short[:, 0].mean() / full[:, 0].mean():.3f}x"
    )


if __name__ == "__main__":
    main()
