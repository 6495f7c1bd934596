"""Every Keras Applications family through `fine_tune`'s defaults: time against the recipe.

tltf's defaults were measured on VGG16, the demo base (MobileNetV3Small) and an
EfficientNetB0. This script runs them on the smallest member of every family
in tltf's registry, so that an architecture whose block map, multi-block head
or cached stage 1 is slow or breaks shows here: each family's `fine_tune` with
every default, and the keras.io recipe (10 epochs of the head, then 10 of the
whole base at 1e-5, as in `benchmarks/defaults.py`) on the same split, in one
process.

The weights are random (`weights=None`): ImageNet files cannot be downloaded
here. The timings are what this measures; the accuracies only show that both
paths train, not what transfer brings (random features favour tltf's ridge
head, which needs no trained base).

Data: scikit-learn's digits (`benchmarks/realdata.py`), k images per class for
training and `--test` per class for the test, at 64 px, or the base's smallest
input where that is larger (75 px for Inception and InceptionResNet, 71 for
Xception).

Usage:
    .venv/bin/python benchmarks/families.py [--bases mobilenet resnet50 ...] \
        [--k 10] [--seed 0] [--test 20]

Each row prints both wall times and test accuracies; the last line prints the
mean over the families of tltf's seconds over the recipe's.

`--splits` instead checks, for every family and every k, that stage 2's cached
split (`tltf.cache.FrozenSplit(model, k)`) computes what the model computes, or
is refused (full passes); the last line counts the cuts that split.

`--tops` instead builds each family with `include_top=True` and passes it to
`tltf.load_base` as a keras.Model: each row says where the base ends (the
classifier and the pooling before it cut off) and whether its preprocessing
and block map are the registry's; the last line counts the families whose
block map is the registry's, name for name.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

from tltf.bases.registry import get_spec

#: The smallest member of each family in tltf's registry.
FAMILIES = (
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "convnext_tiny",
    "densenet121",
    "inception_v3",
    "inception_resnet_v2",
    "nasnet_mobile",
    "resnet50",
    "resnet50_v2",
    "vgg16",
    "xception",
    "regnetx002",
    "regnety002",
)


def _resized(data, size: int):
    images, labels = data
    return keras.ops.convert_to_numpy(
        keras.ops.image.resize(images.astype("float32"), (size, size))
    ), labels


def check_tops(names) -> None:
    """Each family built with `include_top=True`, passed as a keras.Model: the
    layer its base ends at, and whether its preprocessing and block map are the
    registry's (no training)."""
    same = 0
    for name in names:
        spec = get_spec(name)
        size = max(64, spec.min_size)
        shape = (size, size, 3)
        full = spec.constructor(include_top=True, weights=None, input_shape=shape)
        base = tltf.load_base(full)
        registry = tltf.load_base(name, weights=None, input_shape=shape)
        blocks = base.block_map.names == registry.block_map.names
        same += blocks
        print(
            f"{name:20s} base ends at {base.model.layers[-1].name} "
            f"{tuple(base.model.output.shape[1:])}; preprocessing "
            f"{base.preprocessing!r} (registry {registry.preprocessing!r}); "
            f"{len(base.block_map.names)} blocks (registry "
            f"{len(registry.block_map.names)}), same names: {blocks}",
            flush=True,
        )
        keras.backend.clear_session()
    print(f"{same} of {len(names)} families: the registry's block map, name for name")


def check_splits(names) -> None:
    """Each family's `tltf.cache.FrozenSplit(model, k)` for every k: the
    largest difference between the split's output (frozen part, then
    trainable part) and the model's, or "-" where the split is refused and
    stage 2 runs full passes (no training)."""
    from tltf.cache import FrozenSplit

    rng = np.random.default_rng(0)
    cut = 0
    for name in names:
        size = max(64, get_spec(name).min_size)
        keras.utils.set_random_seed(0)
        model = tltf.build_model(name, 5, input_shape=(size, size, 3), weights=None)
        x = rng.uniform(0, 255, (3, size, size, 3)).astype("float32")
        expected = model.predict(x, verbose=0)
        cells, worst, n = [], 0.0, len(tltf.model_info(model).block_map)
        for k in range(1, n):
            try:
                split = FrozenSplit(model, k)
            except (ValueError, KeyError, IndexError, AttributeError):
                cells.append("-")
                continue
            features = split.features(x, 3)
            features = list(features) if isinstance(features, tuple) else features
            out = np.asarray(split.trainable(features, training=False))
            worst = max(worst, float(np.max(np.abs(out - expected))))
            cells.append("ok")
        cut += cells.count("ok")
        print(
            f"{name:20s} {cells.count('ok'):2d} of {n - 1:2d} cuts split, largest "
            f"difference {worst:.0e}; refused at k = "
            f"{[k for k, c in enumerate(cells, 1) if c == '-'] or 'none'}",
            flush=True,
        )
        keras.backend.clear_session()
    print(f"{cut} cuts split over {len(names)} families")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=list(FAMILIES))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", type=int, default=20, help="test images per class")
    parser.add_argument(
        "--tops",
        action="store_true",
        help="only check each family built with include_top=True (no training)",
    )
    parser.add_argument(
        "--splits",
        action="store_true",
        help="only check that each family's stage-2 splits compose to the model",
    )
    args = parser.parse_args()
    if args.splits:
        check_splits(args.bases)
        return
    if args.tops:
        check_tops(args.bases)
        return
    train, test = realdata.task_split("digits", args.k, args.seed, args.test)
    classes = int(train[1].max()) + 1
    rows = []
    for name in args.bases:
        size = max(64, get_spec(name).min_size)
        split = [_resized(d, size) for d in (train, test)] if size != 64 else None
        tr, te = split or (train, test)
        shape = (size, size, 3)
        keras.utils.set_random_seed(args.seed)
        start = time.perf_counter()
        model = tltf.build_model(name, classes, input_shape=shape, weights=None)
        history = tltf.fine_tune(model, tr, seed=args.seed, verbose=0)
        tltf_s = time.perf_counter() - start
        tltf_acc = realdata.accuracy(model, *te)
        keras.utils.set_random_seed(args.seed)
        start = time.perf_counter()
        recipe_acc = realdata.keras_io_recipe(
            name, classes, tr, te, shape, weights=None
        )
        recipe_s = time.perf_counter() - start
        rows.append((tltf_s, recipe_s))
        kept = history.kept
        print(
            f"{name:20s} {size:3d} px  tltf {tltf_s:6.1f}s (acc {tltf_acc:.3f}, "
            f"kept epoch {kept.epoch} of {len(history.history.get('stage', []))}, "
            f"stage {kept.stage})  recipe {recipe_s:6.1f}s (acc {recipe_acc:.3f})  "
            f"{tltf_s / recipe_s:.2f}x",
            flush=True,
        )
        keras.backend.clear_session()
    times = np.array(rows)
    ratios = times[:, 0] / times[:, 1]
    print(
        f"{len(rows)} families: tltf faster in {int(np.sum(ratios < 1))}; ratio from "
        f"{ratios.min():.2f}x to {ratios.max():.2f}x"
    )
    print(
        f"mean seconds, tltf defaults / keras.io recipe: {times[:, 0].mean():.1f} / "
        f"{times[:, 1].mean():.1f} = {times[:, 0].mean() / times[:, 1].mean():.2f}x "
        f"(mean of the per-family ratios {ratios.mean():.2f}x)"
    )


if __name__ == "__main__":
    main()
