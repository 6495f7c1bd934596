"""A Keras Applications model passed as an object, against its registry name.

The keras.io recipe makes its base as an object:
`keras.applications.VGG16(include_top=False, weights=...)`. Since 2026-12-05
`load_base` recognises such a model and gives it what the registry name
`"vgg16"` gets: the registry's block map and the family's preprocessing
(caffe for VGG16) inside the model. Before, it got an inferred block map and no
preprocessing. This script runs `fine_tune` with every default three ways on
each split, in one process:

- "registry": `build_model("vgg16", ...)`, the real VGG16 weights from
  `benchmarks/realdata.py`'s offline folder;
- "object": `build_model(keras.applications.VGG16(include_top=False,
  weights=<that file>), ...)`, as now;
- "object, no preprocessing": the same object with `preprocessing="none"`, as
  before (VGG16's inferred block map is the registry's: block1 to block5).

`--base FOLDER` takes a base that `tltf.pretrain` saved instead of VGG16 (for
example `tltf.pretrain("mobilenet_v2", save_to=FOLDER)`, whose weights expect
the "tf" preprocessing, inputs in [-1, 1]): "registry" is then that folder and
"object" the Keras model in its `base.keras`.

Usage:
    .venv/bin/python benchmarks/applications_object.py [--tasks textures fonts mnist] \
        [--k 10] [--seeds 0] [--test 20] [--weights-dir DIR] [--base vgg16|FOLDER]

The last line prints the mean test accuracy of "object" over "object, no
preprocessing".
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
from pathlib import Path

import keras
import numpy as np
import realdata

NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _accuracy(how: str, name: str, weights_dir, train, test, seed: int) -> float:
    keras.utils.set_random_seed(seed)
    if how == "registry":
        base, kwargs = realdata.benchmark_base(name, 64, weights_dir), {}
    else:
        if name == "vgg16":
            base = keras.applications.VGG16(
                include_top=False,
                weights=str(Path(weights_dir) / NOTOP),
                input_shape=(64, 64, 3),
            )
        else:  # a saved base folder: its Keras model, as a user would pass it
            base = keras.saving.load_model(Path(name) / "base.keras", safe_mode=True)
        kwargs = {"preprocessing": "none"} if how == "before" else {}
    classes = int(max(train[1].max(), test[1].max())) + 1
    model = tltf.build_model(base, classes, **kwargs)
    tltf.fine_tune(model, train, seed=seed, verbose=0)
    return realdata.accuracy(model, *test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["textures", "fonts", "mnist"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test", type=int, default=20, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--base",
        default="vgg16",
        help='"vgg16" (real weights) or the folder of a base tltf.pretrain saved',
    )
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, [args.base])
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            train, test = realdata.task_split(task, args.k, seed, args.test)
            row = [
                _accuracy(how, args.base, weights_dir, train, test, seed)
                for how in ("registry", "object", "before")
            ]
            rows.append(row)
            print(
                f"{task:8s} k={args.k} seed {seed}  registry {row[0]:.3f}  "
                f"object {row[1]:.3f}  object, no preprocessing {row[2]:.3f}",
                flush=True,
            )
    table = np.array(rows)
    same = int(np.sum(table[:, 0] == table[:, 1]))
    print(f"object equals registry in {same} of {len(rows)} splits")
    now, before = table[:, 1].mean(), table[:, 2].mean()
    print(
        f"mean test accuracy, object / object without preprocessing: {now:.4f} / "
        f"{before:.4f} = {now / before:.3f}x"
    )


if __name__ == "__main__":
    main()
