"""Stage 2 on the frozen blocks' output, computed once, against full passes.

`fine_tune`'s stage 2 trains the top blocks and the head; the blocks below are
frozen and deterministic, so after a cached stage 1 it computes their output
once (`tltf.cache.FrozenSplit(model, k)`, with the head's pooled features of
the frozen blocks and its raw-pixel group) and trains the rest on it. Until
2026-12-06 that held for the tuner's trials only: a default `fine_tune` head
reads every block and the raw pixels, which the split refused, so each stage-2
step ran the whole base forward. The baseline here is that: the same call, with
`tltf.schedule._stage_two_split` put back to "no split" in this process.

The data (`--task`): scikit-learn's digits (real, 8 px upscaled to 64 px),
another real task of `realdata.TASK_LOADERS` (faces, fonts, textures, ...), or
tltf's procedural `shapes_target` (near the demo base's source, where its
defaults fine-tune), `--k` images per class for training and the rest of the
task's images (of 1,797 digits, say), or 30 shapes per class, for the test;
the defaults of `fine_tune` (the held-out guard, `unfreeze="auto"`, ...).
Bases: `vgg16` (Keras's ImageNet file in `--weights-dir`, see
`benchmarks/realdata.py`; random weights without it, which time the same) and
the shipped demo base; any other registry name runs with random weights
(`convnext_tiny`, whose blocks end in a residual add: its stage 2 ran full
passes until 2026-12-06). The two sides alternate (tltf, baseline, ...) after
one uncounted warm-up run of each; each run builds its model anew. Both sides
train on the same batches, so their test accuracies should agree.

Usage:
    .venv/bin/python benchmarks/stage2_cache.py [--bases vgg16 demo] [--k 10]
        [--task digits|faces|...|shapes_target] [--repeats 2] [--weights-dir W]

The last line prints the baseline's time over tltf's, summed over the bases
(medians of `fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np

import tltf.schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402


@contextlib.contextmanager
def patched(owner, name: str, value):
    """`owner.name` set to `value` inside the block, restored after it."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def baseline():
    """Stage 2 as it was: full forward passes of the whole model."""
    return patched(tltf.schedule, "_stage_two_split", lambda run: None)


def sample(x, y, k: int, seed: int):
    """`k` training images per class and the rest as the test set."""
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)]
    )
    test = np.setdiff1d(np.arange(len(y)), train)
    return (x[train], y[train]), (x[test], y[test])


def load(task: str, k: int, seed: int):
    """(train, test) arrays of `task` at 64 px: a real task of
    `realdata.TASK_LOADERS`, or one of tltf's procedural ones."""
    if task in realdata.TASK_LOADERS:
        x, y = realdata.task_data(task, 64)
        return sample(x, y, k, seed)
    from tltf import datasets

    x, y = datasets.make_images(task, per_class=k + 30, image_size=64, seed=seed)
    return sample(x, y, k, seed)


def run(base: str, weights_dir, train, test) -> tuple[float, float, str]:
    """Seconds of one default `fine_tune`, its test accuracy, its stage-2 line."""
    keras.utils.set_random_seed(0)
    kwargs = {}
    if base == "vgg16" and weights_dir:
        kwargs = {"weights_dir": weights_dir}
    elif base != "demo":  # random weights: ImageNet files cannot be had here
        kwargs = {"weights": None}
    classes = int(np.max(train[1])) + 1
    model = tltf.build_model(base, classes, input_shape=(64, 64, 3), **kwargs)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        tltf.fine_tune(model, train, verbose=1)
    seconds = time.perf_counter() - start
    accuracy = tltf.evaluate(model, *test).accuracy
    line = next(
        (s for s in out.getvalue().splitlines() if s.startswith("tltf: stage 2")),
        "(no stage 2)",
    )
    return seconds, accuracy, line


def main(
    baseline=baseline,
    doc: str = __doc__,
    sides: str = "full passes / frozen blocks once",
    detail=lambda: "",
) -> None:
    """Runs the comparison: `baseline` (a context manager) against tltf as it
    is; `benchmarks/hand_back.py` passes its own, its docstring, the words
    for its two sides and `detail`, which adds to each run's line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--task", default="digits", choices=[*realdata.TASK_LOADERS, "shapes_target"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    train, test = load(args.task, args.k, args.seed)
    totals = {"tltf": 0.0, "baseline": 0.0}
    for base in args.bases:
        times = {"tltf": [], "baseline": []}
        for i in range(args.repeats + 1):  # the first of each side: warm-up
            for side in ("tltf", "baseline"):
                context = baseline() if side == "baseline" else contextlib.nullcontext()
                with context:
                    seconds, accuracy, line = run(base, args.weights_dir, train, test)
                if i:
                    times[side].append(seconds)
                print(
                    f"{base} {side:8s} run {i}: {seconds:6.1f}s, test accuracy "
                    f"{accuracy:.3f}{detail()}{' (warm-up)' if not i else ''}",
                    flush=True,
                )
                if i == 0:  # its start and its end, where it is long
                    long = len(line) > 300
                    shown = line[:150] + " ... " + line[-150:] if long else line
                    print(f"  {shown}", flush=True)
        medians = {side: statistics.median(v) for side, v in times.items()}
        for side, value in medians.items():
            totals[side] += value
        print(
            f"{base}: median fine_tune seconds, {sides}: "
            f"{medians['baseline']:.1f} / {medians['tltf']:.1f} = "
            f"{medians['baseline'] / medians['tltf']:.2f}x",
            flush=True,
        )
    print(
        f"fine_tune seconds (medians, summed over {', '.join(args.bases)}), "
        f"{sides}: {totals['baseline']:.1f} / "
        f"{totals['tltf']:.1f} = {totals['baseline'] / totals['tltf']:.2f}x"
    )


if __name__ == "__main__":
    main()
