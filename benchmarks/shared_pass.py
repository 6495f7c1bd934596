"""Stage 1 reading its features from stage 2's pass, against a pass of its own.

Where stage 2 runs on the frozen blocks' output (`benchmarks/stage2_cache.py`),
`fine_tune` now computes that output before stage 1, and stage 1's head
features come from it through the top blocks alone
(`tltf.schedule._shared_pass`): the bottom blocks run once over the training
images for both stages. The baseline is the same call with that put back to a
stage 1 that runs the whole base over the images and a stage 2 that runs the
bottom blocks again, in the same process (`_shared_pass` returning None). The
two sides alternate after one uncounted warm-up each; each run builds its
model anew; the data, bases and defaults are those of
`benchmarks/stage2_cache.py`. Both sides train on the same batches, so their
test accuracies should agree (to float rounding: the features come through
another graph).

Usage:
    .venv/bin/python benchmarks/shared_pass.py [--bases vgg16 demo] [--k 10]
        [--task digits|faces|...|shapes_target] [--repeats 2] [--weights-dir W]

Each run's line gives its number of passes over images (`FeatureCache`s built:
the training rows, the guard's held-out slice, and any validation data) and
the seconds spent in them (with, for tltf, stage 1's top-block pass). The
last line prints the baseline's time over tltf's, summed over the bases
(medians of `fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import sys
import time
from pathlib import Path

import tltf.cache
import tltf.schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402


def baseline():
    """Stage 1 as it was: a pass of the whole base of its own."""
    return stage2_cache.patched(tltf.schedule, "_shared_pass", lambda *args: None)


#: `FeatureCache`s built since the last run's line, and the seconds spent in
#: them and in stage 1's top-block pass over a shared cache.
_passes = {"count": 0, "seconds": 0.0}


def _timed(function, counts: bool):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _passes["seconds"] += time.perf_counter() - start
            _passes["count"] += counts

    return timed


def _detail() -> str:
    count, seconds = _passes["count"], _passes["seconds"]
    _passes.update(count=0, seconds=0.0)
    return f" ({count} passes, {seconds:.1f}s in them)"


def main() -> None:
    with (
        stage2_cache.patched(
            tltf.cache.FeatureCache,
            "__init__",
            _timed(tltf.cache.FeatureCache.__init__, counts=True),
        ),
        stage2_cache.patched(
            tltf.schedule._FrozenPass,
            "head_caches",
            _timed(tltf.schedule._FrozenPass.head_caches, counts=False),
        ),
    ):
        stage2_cache.main(
            baseline,
            __doc__,
            "a stage-1 pass of its own / stage 2's pass shared",
            _detail,
        )


if __name__ == "__main__":
    main()
