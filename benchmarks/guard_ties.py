"""How the held-out guard breaks ties: every candidate it saw, scored on the test set.

Without validation data, `fine_tune`'s guard scores stage 1's end and every
stage-2 epoch on a held-out slice of the training images, keeps one, and
hands the slice back (the head is refit in closed form on every training
image). On a slice of a few images the candidates often tie in accuracy. This
benchmark runs the defaults once per split, records each candidate's weights
and its score on the slice, and afterwards refits the head on each candidate
(as the hand-back does) and scores the test images. It then replays two rules
on the same candidates:

- "ties to the later": the rule before commit "guard: ties keep the earlier
  epoch": the highest `(accuracy, mean log-likelihood)` on the slice, ties
  going to the later epoch (in effect the cross-entropy decides ties in
  accuracy);
- "ties to the earlier": the rule now: a later epoch replaces the best only
  with a higher accuracy on the slice;
- "2 more right" (tried, 2026-12-05): a stage-2 epoch replaces stage 1 only
  with at least 2 more slice images right; one image of a slice of 16 is no
  evidence that fine-tuning helped.

It checks that the model `fine_tune` returned scores what the rule now picks,
and runs tltf's linear probe (`fine_tune_epochs=0`) on the same split.

Tasks: those of `small_slices.py` (faces, two and three classes of the real
tasks: slices of 2 to 6 images) and the multi-class real tasks (digits,
letters, textures: slices of 10 to 52 images).

Usage:
    .venv/bin/python benchmarks/guard_ties.py [--bases demo vgg16] [--k 5 10] \
        [--seeds 0 1 2] [--tasks faces digits:0,1 ... digits fonts textures] \
        [--weights-dir DIR]

The last line prints the mean test accuracy of the rule now over the rule before.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import numpy as np
import realdata
import small_slices
import tensorflow as tf

from tltf.guard import KeepBest, holdout_rows
from tltf.schedule import refit_head

TASKS = [*small_slices.TASKS, "digits", "fonts", "textures", "photos"]


def later_on_ties(scores: list[tuple]) -> int:
    """The candidate the rule before picked: the best score, ties to the later."""
    best = 0
    for i, score in enumerate(scores):
        if score >= scores[best]:
            best = i
    return best


def earlier_on_ties(scores: list[tuple]) -> int:
    """The candidate the rule now picks: a later one must be more accurate."""
    best = 0
    for i, score in enumerate(scores):
        if score[0] > scores[best][0]:
            best = i
    return best


def margin_over_stage_one(scores: list[tuple], held: int, images: int = 2) -> int:
    """Tried: a stage-2 epoch replaces stage 1 only with `images` more of the
    `held` slice images right (then, as now, a later one must be more accurate)."""
    best = 0
    for i, score in enumerate(scores):
        need = (images if best == 0 else 1) / held
        if score[0] >= scores[best][0] + need - 1e-9:
            best = i
    return best


class Candidates:
    """Records the weights of every candidate the guard scores on its slice."""

    def __init__(self):
        self.scores, self.weights = [], []
        self._score = KeepBest.holdout_score

    def __enter__(self):
        recorder = self

        def holdout_score(guard):
            score = recorder._score(guard)
            recorder.scores.append(score)
            recorder.weights.append([v.numpy().copy() for v in guard.model.variables])
            return score

        KeepBest.holdout_score = holdout_score
        return self

    def __exit__(self, *exc):
        KeepBest.holdout_score = self._score


def run(base, spec, x, y, k, seed, weights_dir, test_per_class) -> dict:
    """One split: the test accuracy of each rule's candidate and of the probe."""
    kind = small_slices.task_kind(y)
    train, test = realdata.few_shot(x, y, k, seed, test_per_class)
    tuned = small_slices.seeded_model(base, y, seed, weights_dir)
    with Candidates() as seen:
        tltf.fine_tune(tuned, train, seed=seed, verbose=0)
    final = realdata.accuracy(tuned, *test)
    everything = tf.data.Dataset.from_tensor_slices(train).batch(32)
    tests = []
    for weights in seen.weights:
        for variable, value in zip(tuned.variables, weights, strict=True):
            variable.assign(value)
        refit_head(tuned, everything)  # what the hand-back does
        tests.append(realdata.accuracy(tuned, *test))
    now = earlier_on_ties(seen.scores)
    if abs(tests[now] - final) > 1e-9:
        raise RuntimeError(
            f"fine_tune kept a model scoring {final:.4f}; the rule now picks "
            f"candidate {now}, scoring {tests[now]:.4f}"
        )
    probe = small_slices.seeded_model(base, y, seed, weights_dir)
    tltf.fine_tune(probe, train, seed=seed, verbose=0, fine_tune_epochs=0)
    held = len(holdout_rows(train[1], seed, kind)[1])
    return {
        "slice": held,
        "ties": sum(s[0] == seen.scores[0][0] for s in seen.scores[1:]),
        "candidates": len(tests),
        "ties to the later": tests[later_on_ties(seen.scores)],
        "ties to the earlier": final,
        "2 more right": tests[margin_over_stage_one(seen.scores, held)],
        "linear probe": realdata.accuracy(probe, *test),
    }


COLUMNS = ["ties to the later", "ties to the earlier", "2 more right", "linear probe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for spec in args.tasks:
        x, y = small_slices.task(spec)
        # 60 test images per class on the tasks of 2 and 3 classes (as
        # small_slices.py), 30 on the others (as defaults.py --real).
        test_per_class = 60 if y.max() < 3 else 30
        for base in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    started = time.perf_counter()
                    row = run(base, spec, x, y, k, seed, weights_dir, test_per_class)
                    rows.append(row)
                    cells = "  ".join(f"{c}: {row[c]:.3f}" for c in COLUMNS)
                    print(
                        f"{spec:15s} {base:6s} k={k:<3d} seed {seed}  slice "
                        f"{row['slice']:2d}  stage-2 epochs tied with stage 1: "
                        f"{row['ties']}/{row['candidates'] - 1}  {cells}  "
                        f"({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
    for name, part in (
        ("slices of 2 to 6", [r for r in rows if r["slice"] <= 6]),
        ("larger slices", [r for r in rows if r["slice"] > 6]),
        ("all", rows),
    ):
        if part:
            means = ", ".join(
                f"{c} {np.mean([r[c] for r in part]):.4f}" for c in COLUMNS
            )
            print(f"{name}: {len(part)} runs; means: {means}")
    before = float(np.mean([r["ties to the later"] for r in rows]))
    now = float(np.mean([r["ties to the earlier"] for r in rows]))
    print(
        f"mean test accuracy, ties to the earlier / ties to the later: "
        f"{now:.4f} / {before:.4f} = {now / before:.4f}x"
    )


if __name__ == "__main__":
    main()
