"""The guard's hand-back from the frozen blocks' cached output, against a full pass.

Without validation data, `fine_tune` ends by handing its held-out slice back:
the head is refit on every training image's features. Since 2026-12-06, after
stage 2 on cached frozen blocks (`benchmarks/stage2_cache.py`), those features
come from the frozen blocks' cached output through the top blocks alone
(`tltf.schedule._frozen_output_features`); since 2026-12-07 also where the
guard ended the run after stage 1 (stage 1 classified its whole slice), from
the output of the pass before stage 1. The baseline is the same call with
that put back to a pass of the whole model over every training image, in the
same process (`_frozen_output_features` returning None). The two sides alternate
after one uncounted warm-up each; each run builds its model anew; the data,
bases and defaults are those of `benchmarks/stage2_cache.py`. Both sides
train on the same batches, so their test accuracies should agree.

Usage:
    .venv/bin/python benchmarks/hand_back.py [--bases vgg16 demo] [--k 10]
        [--task digits|faces|...|shapes_target] [--repeats 2] [--weights-dir W]

Each run's line gives the hand-back's own seconds too, and says where the
guard ended the run after stage 1. The last line prints
the baseline's time over tltf's, summed over the bases (medians of
`fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import sys
import time
from pathlib import Path

import tltf.schedule
from tltf.guard import KeepBest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402


def baseline():
    """The hand-back as it was: a pass of the whole model over every image."""
    return stage2_cache.patched(
        tltf.schedule, "_frozen_output_features", lambda *args: None
    )


#: Seconds of the last run's hand-back (`tltf.schedule._hand_back`), and the
#: last run's guard.
_last = {"seconds": 0.0, "guard": None}
_guard_init = KeepBest.__init__


def _kept_guard(guard, *args, **kwargs):
    _guard_init(guard, *args, **kwargs)
    _last["guard"] = guard


def _detail() -> str:
    guard = _last["guard"]
    ended = guard is not None and guard.ended_after_stage_one
    return f" (hand-back {_last['seconds']:.2f}s{'; ended after stage 1' * ended})"


def _timed(hand_back):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return hand_back(*args, **kwargs)
        finally:
            _last["seconds"] = time.perf_counter() - start

    return timed


def main() -> None:
    with (
        stage2_cache.patched(
            tltf.schedule, "_hand_back", _timed(tltf.schedule._hand_back)
        ),
        stage2_cache.patched(KeepBest, "__init__", _kept_guard),
    ):
        stage2_cache.main(
            baseline,
            __doc__,
            "hand-back by a full pass / from the frozen output",
            _detail,
        )


if __name__ == "__main__":
    main()
