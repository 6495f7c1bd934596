"""The guard's hand-back from stage 2's cached frozen blocks, against a full pass.

Without validation data, `fine_tune` ends by handing its held-out slice back:
the head is refit on every training image's features. Since 2026-12-06, after
stage 2 on cached frozen blocks (`benchmarks/stage2_cache.py`), those features
come from the frozen blocks' cached output through the top blocks alone
(`tltf.schedule._stage_two_features`). The baseline is the same call with
that put back to a pass of the whole model over every training image, in the
same process (`_stage_two_features` returning None). The two sides alternate
after one uncounted warm-up each; each run builds its model anew; the data,
bases and defaults are those of `benchmarks/stage2_cache.py`. Both sides
train on the same batches, so their test accuracies should agree.

Usage:
    .venv/bin/python benchmarks/hand_back.py [--bases vgg16 demo] [--k 10]
        [--task digits|shapes_target] [--repeats 2] [--weights-dir W]

The last line prints the baseline's time over tltf's, summed over the bases
(medians of `fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import tltf.schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402


@contextlib.contextmanager
def baseline():
    """The hand-back as it was: a pass of the whole model over every image."""
    saved = tltf.schedule._stage_two_features
    tltf.schedule._stage_two_features = lambda *args: None
    try:
        yield
    finally:
        tltf.schedule._stage_two_features = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--task", default="digits", choices=["digits", "shapes_target"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    train, test = stage2_cache.load(args.task, args.k, args.seed)
    totals = {"tltf": 0.0, "baseline": 0.0}
    for base in args.bases:
        times = {"tltf": [], "baseline": []}
        for i in range(args.repeats + 1):  # the first of each side: warm-up
            for side in ("tltf", "baseline"):
                context = baseline() if side == "baseline" else contextlib.nullcontext()
                with context:
                    seconds, accuracy, line = stage2_cache.run(
                        base, args.weights_dir, train, test
                    )
                if i:
                    times[side].append(seconds)
                print(
                    f"{base} {side:8s} run {i}: {seconds:6.1f}s, test accuracy "
                    f"{accuracy:.3f}{' (warm-up)' if not i else ''}",
                    flush=True,
                )
        medians = {side: statistics.median(v) for side, v in times.items()}
        for side, value in medians.items():
            totals[side] += value
        print(
            f"{base}: median fine_tune seconds, hand-back by a full pass / from "
            f"stage 2's cache: {medians['baseline']:.1f} / {medians['tltf']:.1f} = "
            f"{medians['baseline'] / medians['tltf']:.2f}x",
            flush=True,
        )
    print(
        f"fine_tune seconds (medians, summed over {', '.join(args.bases)}), "
        f"hand-back by a full pass / from stage 2's cache: "
        f"{totals['baseline']:.1f} / {totals['tltf']:.1f} = "
        f"{totals['baseline'] / totals['tltf']:.2f}x"
    )


if __name__ == "__main__":
    main()
