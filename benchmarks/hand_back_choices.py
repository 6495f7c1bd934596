"""The run's own loss choices in the model `fine_tune` returns: the hand-back.

Without validation data, `fine_tune` ends by refitting the linear head in
closed form on every training image (the guard's held-out slice handed back).
Since 2026-12-05, where the run chose how the head trains (its own `loss=`, a
`label_smoothing`, an explicit `head_l2`) the refit head then trains on with
that choice, as stage 1 did. Before, the closed-form fit replaced it, and the
returned model was the one the defaults return.

Columns, on the same split (k training images per class, `--test` test images
per class, 64 px), for each choice: "now", and "before" (the same run with
`tltf.schedule._HeadRetrain.for_run` patched to return None: the closed-form
refit alone). Each cell is the test accuracy and the test cross-entropy (NLL,
unsmoothed), so the cost or gain of the choice shows in both. "defaults" is
the run with no choice. Real data and weights as in `benchmarks/realdata.py`.

Usage:
    .venv/bin/python benchmarks/hand_back_choices.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 10] [--seeds 0 1] [--weights-dir W]

The last line prints the mean test accuracy of "now" over "before", over
every choice and split.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time
from unittest import mock

import keras
import numpy as np
import realdata

import tltf.schedule

CHOICES = {
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "focal loss": {"loss": "categorical_focal_crossentropy"},
    "head_l2=1e-3": {"head_l2": 1e-3},
}


def _run(base_name, weights_dir, train, test, seed, settings, before):
    keras.utils.set_random_seed(seed)
    classes = int(test[1].max()) + 1
    model = tltf.build_model(
        realdata.benchmark_base(base_name, 64, weights_dir), classes
    )
    x, y = train
    if "loss" in settings:  # a categorical loss: one-hot labels
        y = keras.utils.to_categorical(y, classes)
    retrain = (lambda *_: None) if before else tltf.schedule._HeadRetrain.for_run
    with mock.patch.object(tltf.schedule._HeadRetrain, "for_run", retrain):
        tltf.fine_tune(model, (x, y), seed=seed, verbose=0, **settings)
    p = model.predict(test[0].astype("float32"), batch_size=64, verbose=0)
    accuracy = float(np.mean(p.argmax(axis=1) == test[1]))
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), test[1]], 1e-12, 1))))
    return accuracy, nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--choices", nargs="+", default=list(CHOICES))
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir)
    rows = []
    for task in args.tasks:
        for base_name in args.bases:
            for seed in args.seeds:
                train, test = realdata.task_split(task, args.k, seed, args.test)
                start = time.perf_counter()
                row = {
                    "defaults": _run(
                        base_name, weights_dir, train, test, seed, {}, False
                    )
                }
                for choice in args.choices:
                    for before in (False, True):
                        name = f"{choice} {'before' if before else 'now'}"
                        row[name] = _run(
                            base_name,
                            weights_dir,
                            train,
                            test,
                            seed,
                            CHOICES[choice],
                            before,
                        )
                rows.append(row)
                cells = "  ".join(
                    f"{c}: {a:.3f} ({n:.3f})" for c, (a, n) in row.items()
                )
                print(
                    f"{task:8s} {base_name:6s} seed {seed}  {cells}  "
                    f"({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
    print()
    for column in rows[0]:
        accuracy = np.mean([r[column][0] for r in rows])
        nll = np.mean([r[column][1] for r in rows])
        print(f"{column}: mean accuracy {accuracy:.3f}, mean test NLL {nll:.3f}")
    now = np.mean([r[c][0] for r in rows for c in r if c.endswith(" now")])
    before = np.mean([r[c][0] for r in rows for c in r if c.endswith(" before")])
    print(
        f"{len(rows)} splits x {len(args.choices)} choices; mean test accuracy, "
        f"now / before: {now:.3f} / {before:.3f} = {now / before:.3f}x"
    )


if __name__ == "__main__":
    main()
