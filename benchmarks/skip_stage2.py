"""Stage 2 skipped where the guard could not keep it: the time saved, the same model.

Without validation data, a classifier's guard holds a slice of the training
images out and keeps a stage-2 epoch only if it is more accurate there than
stage 1. When stage 1 already classifies the whole slice, no stage-2 epoch can
be kept, and `fine_tune` ends the run after stage 1
(`KeepBest._end_if_nothing_to_gain`). This benchmark runs the defaults twice
per split in one process: as they are ("skips"), and with that check switched
off ("always runs": stage 2 trains and the guard restores stage 1). Which of
the two runs first alternates from split to split, after one untimed run. It reports the seconds of
each `fine_tune` call, whether the final weights are bitwise the same, and the
test accuracy of each.

Tasks: those of `small_slices.py` (faces, two and three classes of the real
tasks: slices of 2 to 6 images) and the multi-class real tasks (digits,
letters, textures: slices of 10 to 52 images).

Usage:
    .venv/bin/python benchmarks/skip_stage2.py [--bases demo vgg16] [--k 5 10] \
        [--seeds 0 1] [--tasks faces digits:0,1 ... digits fonts textures] \
        [--weights-dir DIR]

The last line prints the mean seconds of `fine_tune` that skips over the one
that always runs stage 2.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata
import small_slices

from tltf.guard import KeepBest, holdout_rows

TASKS = [*small_slices.TASKS, "digits", "fonts", "textures"]
VARIANTS = ("skips", "always runs")


def run(base: str, train, seed: int, weights_dir, variant: str):
    """One default `fine_tune`: the model, its stages and its seconds."""
    keras.backend.clear_session()  # with gc.collect(): outside the timing
    model = small_slices.seeded_model(base, train[1], seed, weights_dir)
    check = KeepBest._end_if_nothing_to_gain
    if variant == "always runs":
        KeepBest._end_if_nothing_to_gain = lambda self: None
    try:
        started = time.perf_counter()
        history = tltf.fine_tune(model, train, seed=seed, verbose=0)
        seconds = time.perf_counter() - started
    finally:
        KeepBest._end_if_nothing_to_gain = check
    return model, history.history["stage"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--test", type=int, default=60, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    # A first, untimed run: the process's one-off costs go to neither variant.
    x, y = small_slices.task(args.tasks[0])
    run(args.bases[0], realdata.few_shot(x, y, 5, 0)[0], 0, weights_dir, "skips")
    for spec in args.tasks:
        x, y = small_slices.task(spec)
        kind = small_slices.task_kind(y)
        for base in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, args.test)
                    order = VARIANTS if len(rows) % 2 == 0 else VARIANTS[::-1]
                    result = {v: run(base, train, seed, weights_dir, v) for v in order}
                    (skips, stages, fast), (full, _, slow) = (
                        result[v] for v in VARIANTS
                    )
                    same = all(
                        np.array_equal(a.numpy(), b.numpy())
                        for a, b in zip(skips.variables, full.variables, strict=True)
                    )
                    accuracy = [realdata.accuracy(m, *test) for m in (skips, full)]
                    held = len(holdout_rows(train[1], seed, kind)[1])
                    skipped = 2 not in stages
                    rows.append((skipped, fast, slow, same))
                    print(
                        f"{spec:15s} {base:6s} k={k:<3d} seed {seed}  slice {held:2d}  "
                        f"stage 2 {'skipped' if skipped else 'ran    '}  "
                        f"seconds {fast:5.1f} / {slow:5.1f}  same weights {same}  "
                        f"test {accuracy[0]:.3f} / {accuracy[1]:.3f}",
                        flush=True,
                    )
    skipped = [r for r in rows if r[0]]
    fast, slow = (float(np.mean([r[i] for r in rows])) for i in (1, 2))
    print(
        f"{len(rows)} runs; stage 2 skipped in {len(skipped)}; same weights in "
        f"{sum(r[3] for r in rows)}; where skipped, mean seconds "
        f"{np.mean([r[1] for r in skipped]) if skipped else float('nan'):.1f} / "
        f"{np.mean([r[2] for r in skipped]) if skipped else float('nan'):.1f}"
    )
    print(
        f"mean seconds of fine_tune, {VARIANTS[0]} / {VARIANTS[1]}: "
        f"{fast:.1f} / {slow:.1f} = {fast / slow:.3f}x"
    )


if __name__ == "__main__":
    main()
