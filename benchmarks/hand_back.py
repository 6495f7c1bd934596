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

Each run's line gives the hand-back's own seconds too. The last line prints
the baseline's time over tltf's, summed over the bases (medians of
`fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import sys
import time
from pathlib import Path

import tltf.schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402


def baseline():
    """The hand-back as it was: a pass of the whole model over every image."""
    return stage2_cache.patched(
        tltf.schedule, "_stage_two_features", lambda *args: None
    )


#: Seconds of the last run's hand-back (`tltf.schedule._hand_back`).
_last = {"seconds": 0.0}


def _timed(hand_back):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return hand_back(*args, **kwargs)
        finally:
            _last["seconds"] = time.perf_counter() - start

    return timed


def main() -> None:
    with stage2_cache.patched(
        tltf.schedule, "_hand_back", _timed(tltf.schedule._hand_back)
    ):
        stage2_cache.main(
            baseline,
            __doc__,
            "hand-back by a full pass / from stage 2's cache",
            lambda: f" (hand-back {_last['seconds']:.2f}s)",
        )


if __name__ == "__main__":
    main()
