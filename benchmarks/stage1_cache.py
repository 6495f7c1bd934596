"""Stage 1 (head training on a frozen base): keras.io recipe vs tltf's feature cache.

Both run in this process on the same base, the same data and 10 head epochs:

- the recipe (keras.io "Transfer learning & fine-tuning"): the frozen base called
  with `training=False`, GlobalAveragePooling2D, Dropout(0.2), Dense; every epoch
  is a full forward pass through the base;
- tltf: `fine_tune(head_epochs=10, fine_tune_epochs=0, cache_features=True)`,
  which computes the base features once.

The base is tltf's offline demo base (pretrained on procedural shapes; `tltf demo`
or this script pretrains it on first use), rebuilt at 160 px, or any registry base
(`--base mobilenet_v2`, random weights offline); both models share the very same
base. The data is the procedural target task (classes never seen
in pretraining).

Usage:
    .venv/bin/python benchmarks/stage1_cache.py [--base demo|NAME] [--size 160]

The last line prints the speed ratio (recipe time / tltf time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from tltf import datasets
from tltf.pretrain import default_demo_base


def _base(name: str, size: int):
    """The demo base (pretrained on shapes) or a registry base, at `size`."""
    if name == "demo":
        demo = default_demo_base()
        base = tltf.load_base(demo.info["path"], input_shape=(size, size, 3))
        return base, f"tltf demo base ({demo.info['architecture']}) rebuilt at {size}px"
    # Offline, Applications bases have random weights; the comparison of speed,
    # and of the two heads trained on the same features, still holds.
    base = tltf.load_base(name, weights=None, input_shape=(size, size, 3))
    return base, f"{name} (random weights: ImageNet is offline) at {size}px"


def _recipe(base, num_classes: int) -> keras.Model:
    inputs = keras.Input(base.input_shape)
    x = tltf.layers.Preprocessing(base.preprocessing)(inputs)
    x = base.model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="demo", help='"demo" or a registry name')
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--train", type=int, default=3000, help="training images")
    parser.add_argument("--val", type=int, default=700, help="validation images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = "shapes_target"
    n_classes = len(datasets.class_names(task))
    x, y = datasets.make_images(
        task, n=args.train + args.val, image_size=args.size, seed=args.seed
    )
    x = x.astype("float32")
    train, val = (x[: args.train], y[: args.train]), (x[args.train :], y[args.train :])
    base, description = _base(args.base, args.size)
    base.model.trainable = False
    print(f"base: {description}; {args.train} train / {args.val} val images of {task}")

    def batches(data, shuffle):
        ds = tf.data.Dataset.from_tensor_slices(data)
        if shuffle:
            ds = ds.shuffle(len(data[0]), seed=args.seed)
        return ds.batch(32).prefetch(tf.data.AUTOTUNE)

    keras.utils.set_random_seed(args.seed)
    recipe = _recipe(base, n_classes)
    start = time.perf_counter()
    recipe.fit(
        batches(train, True),
        validation_data=batches(val, False),
        epochs=args.epochs,
        shuffle=False,  # the pipeline shuffles; silences Keras's warning
        verbose=2,
    )
    recipe_time = time.perf_counter() - start
    recipe_acc = recipe.evaluate(batches(val, False), verbose=0)[1]

    keras.utils.set_random_seed(args.seed)
    model = tltf.build_model(base, n_classes, head={"logits": True})
    start = time.perf_counter()
    tltf.fine_tune(
        model,
        train,
        val,
        head_epochs=args.epochs,
        fine_tune_epochs=0,
        cache_features=True,
        seed=args.seed,
        verbose=2,
    )
    tltf_time = time.perf_counter() - start
    tltf_acc = model.evaluate(batches(val, False), verbose=0)[1]

    print(f"recipe: {recipe_time:7.1f} s  val accuracy {recipe_acc:.3f}")
    print(f"tltf:   {tltf_time:7.1f} s  val accuracy {tltf_acc:.3f}")
    print(f"val accuracy difference: {100 * (tltf_acc - recipe_acc):+.1f} points")
    print(
        f"speed ratio (recipe / tltf, {args.epochs} head epochs): {recipe_time / tltf_time:.1f}x"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
