"""WiSE-FT in `fine_tune`: the fine-tuned weights mixed with stage 1's.

WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models") ends
fine-tuning at `(1 - alpha) * stage1 + alpha * fine_tuned`, every weight mixed
linearly: the converged linear probe on the pretrained base at one end, the
fine-tuned model at the other. The paper finds the mix more robust to shifted
inputs than either end, at no loss on the original distribution.

`fine_tune(..., wise=alpha)` applies it when training ends (after the stage-2
guard has put back the weights it kept, and before the held-out slice is
handed back, so that the refit head reads the mixed base); `wise="auto"` tries
alpha in `ALPHAS` and keeps the best on the validation data (its loss) or the
guard's held-out slice (accuracy, then log-likelihood), larger alphas winning
ties. Stage 1's weights are kept in memory when stage 2 starts and, with
`backup_dir`, written there (`tltf-stage1.npz`), so that a resumed run mixes
the same two ends. With `bn="train"`, the BatchNorm statistics of each mix are
re-estimated on the training images (`tltf.recalibrate_bn`), as the paper
does; under the other policies stage 2 never changes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tltf._io import atomic_path
from tltf.averaging import mix_weights
from tltf.distribute import is_chief

#: Stage 1's weights inside a backup folder.
STAGE1_FILE = "tltf-stage1.npz"
#: The mixes `wise="auto"` tries.
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


class StageOneWeights(keras.callbacks.Callback):
    """Keeps the weights stage 1 ended with, when stage 2 begins.

    Args:
        schedule: FineTuneSchedule. Says which epochs are stage 2.
        backup_dir: str, PathLike or None. Where a resumable run keeps them.
    """

    def __init__(self, schedule, backup_dir=None):
        super().__init__()
        self.schedule = schedule
        self.path = None if backup_dir is None else Path(backup_dir) / STAGE1_FILE
        self.weights: list[np.ndarray] | None = None

    def load(self) -> bool:
        """Reads the weights a resumable run stored; False when there are none."""
        if self.path is None or not self.path.exists():
            return False
        with np.load(self.path, allow_pickle=False) as data:
            self.weights = [data[f"w{i}"] for i in range(len(data.files))]
        return True

    def on_epoch_begin(self, epoch, logs=None):
        if self.weights is not None or self.schedule.plan(epoch)[0] != 2:
            return
        self.weights = [np.array(v.numpy(), copy=True) for v in self.model.weights]
        if self.path is not None and is_chief():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)


def apply_wise(
    model: keras.Model,
    stage_one: list[np.ndarray],
    alpha,
    score: Callable[[], tuple] | None = None,
    recalibrate: Callable[[], None] | None = None,
    verbose: bool = True,
) -> tuple[float, dict]:
    """Mixes `model`'s weights with stage 1's, in place.

    Args:
        model: keras.Model. The fine-tuned model.
        stage_one: list of arrays. Its weights when stage 2 began.
        alpha: float or "auto". The fine-tuned weights' share.
        score: callable or None. The model's score, higher is better (needed
            for "auto").
        recalibrate: callable or None. Re-estimates BN statistics after a mix.
        verbose: bool. Print one line. Defaults to True.

    Returns:
        `(alpha, scores)`: the alpha applied and, for "auto", each one's score.
    """
    final = [np.array(v.numpy(), copy=True) for v in model.weights]

    def mix(a: float) -> None:
        mix_weights([stage_one, final], (1.0 - a, a), model)
        if recalibrate is not None and a not in (0.0, 1.0):
            recalibrate()

    scores: dict = {}
    if alpha == "auto":
        for a in ALPHAS:
            mix(a)
            scores[a] = score()
        alpha = max(ALPHAS, key=lambda a: (scores[a], a))
    mix(alpha)
    if verbose:
        tried = (
            " (" + ", ".join(f"{a:g}: {_show(s)}" for a, s in scores.items()) + ")"
            if scores
            else ""
        )
        print(
            f"tltf: wise: the weights are {1 - alpha:g} x stage 1's + {alpha:g} x "
            f"the fine-tuned ones (WiSE-FT){tried}."
        )
    return alpha, scores


def _show(score: tuple) -> str:
    return "/".join(f"{s:.3f}" for s in score)


__all__ = ["ALPHAS", "STAGE1_FILE", "StageOneWeights", "apply_wise"]
