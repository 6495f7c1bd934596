"""The guard scoring stage 1's end through the top blocks, against the whole model.

Without validation data, `fine_tune`'s guard (`keep_best`) holds a slice of the
training images out and scores the model on it: at the end of stage 1, then
after every stage-2 epoch. Where stage 2 runs on the frozen blocks' output
(`benchmarks/stage2_cache.py`), the stage-2 scores came through the top blocks
on the slice's frozen output, but the score of stage 1's end ran the whole
model over the slice (`model.predict`: a trace of the whole model, and a pass
of the whole base over the slice). Now the slice's frozen output is computed in
the pass before stage 1 (`tltf.schedule._frozen_pass`), and stage 1's end is
scored through the top blocks too (`_score_held_out_through`). The baseline is
the same call with the guard made to score stage 1's end with `model.predict`
again, in the same process. The sides alternate after one uncounted warm-up
each; data, bases and defaults are those of `benchmarks/stage2_cache.py`. Both
sides train the same weights, so their test accuracies agree.

Usage:
    .venv/bin/python benchmarks/held_out_score.py [--bases vgg16 demo] [--k 10]
        [--task digits|faces|...|shapes_target] [--repeats 2] [--weights-dir W]

Each run's line gives the seconds the guard spent scoring its slice and how
many of its scores ran the whole model. The last line prints the baseline's
time over tltf's, summed over the bases (medians of `fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import sys
import time
from pathlib import Path

from tltf.guard import KeepBest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402

_end_of_stage_one = KeepBest._end_if_nothing_to_gain


def _through_the_whole_model(guard):
    """Stage 1's end scored as before: `model.predict` over the slice."""
    through, guard.holdout_predict = guard.holdout_predict, None
    try:
        _end_of_stage_one(guard)
    finally:
        guard.holdout_predict = through


def baseline():
    return stage2_cache.patched(
        KeepBest, "_end_if_nothing_to_gain", _through_the_whole_model
    )


#: The guard's scoring since the last run's line: seconds, and scores made
#: with the whole model.
_scores = {"seconds": 0.0, "whole": 0}
_holdout_score = KeepBest.holdout_score


def _timed_score(guard):
    start, whole = time.perf_counter(), guard.holdout_predict is None
    try:
        return _holdout_score(guard)
    finally:
        _scores["seconds"] += time.perf_counter() - start
        _scores["whole"] += whole


def _detail() -> str:
    seconds, whole = _scores["seconds"], _scores["whole"]
    _scores.update(seconds=0.0, whole=0)
    return f" (scoring {seconds:.1f}s, {whole} through the whole model)"


def main() -> None:
    with stage2_cache.patched(KeepBest, "holdout_score", _timed_score):
        stage2_cache.main(
            baseline,
            __doc__,
            "stage 1's end through the whole model / the top blocks",
            _detail,
        )


if __name__ == "__main__":
    main()
