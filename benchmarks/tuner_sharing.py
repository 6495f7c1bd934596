"""Searching what to unfreeze: a naive keras-tuner HyperModel vs `tltf.tune`.

Both run in this process, search the same 4 unfreeze depths with keras-tuner's
GridSearch on the same base and data, with the same epochs (the keras.io
recipe's 2:1 ratio of head to fine-tune epochs), learning rates, batch size and
BatchNorm handling, and score a trial by its best val accuracy over the
fine-tune epochs:

- naive: a `keras_tuner.HyperModel` written the way the keras.io transfer
  learning guide reads: `build` loads the pretrained base and adds a head
  (base called with `training=False`); `fit` trains the head, unfreezes the top
  k blocks, recompiles at the low rate and fine-tunes. Every trial trains its
  own head, with a full forward pass through the base every head epoch;
- tltf: `tltf.tune(..., tuner="grid")`, which trains the head once (stage 1 on
  cached base features), keeps it in the project folder, and starts every
  trial's stage 2 from it (`bn="affine"` is the guide's BatchNorm handling:
  statistics frozen, gamma/beta trained in the unfrozen blocks).

The base is tltf's offline demo base (MobileNetV3Small pretrained on procedural
shapes; `tltf demo` or this script pretrains it on first use, about 4 minutes),
at its 64 px; the data is the procedural target task (12 classes it never saw).

Usage:
    .venv/bin/python benchmarks/tuner_sharing.py [--train 1200] [--val 600]
        [--head-epochs 10] [--fine-tune-epochs 5] [--depths 0 3 6 13]

The last line prints the speed ratio (naive time / tltf time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import tempfile
import time

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tltf import datasets
from tltf.pretrain import default_demo_base
from tltf.tuning import tune


class NaiveHyperModel(kt.HyperModel):
    """Builds and trains head and fine-tune in every trial (keras.io recipe)."""

    def __init__(
        self,
        base_path,
        depths,
        num_classes,
        head_epochs,
        fine_tune_epochs,
        fine_tune_lr,
        seed,
    ):
        super().__init__()
        self.base_path, self.depths, self.num_classes = base_path, depths, num_classes
        self.head_epochs, self.fine_tune_epochs = head_epochs, fine_tune_epochs
        self.fine_tune_lr, self.seed = fine_tune_lr, seed

    def build(self, hp):
        hp.Choice("unfreeze_blocks", self.depths)
        keras.utils.set_random_seed(self.seed)
        base = tltf.load_base(self.base_path)  # the pretrained base, loaded anew
        base.model.trainable = False
        inputs = keras.Input(base.input_shape)
        x = tltf.layers.Preprocessing(base.preprocessing)(inputs)
        x = base.model(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.block_map = base.block_map  # which layers make the top k blocks
        model.base_name = base.model.name
        model.compile(
            keras.optimizers.Adam(1e-3),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def fit(self, hp, model, train, validation_data, callbacks=None, **kwargs):
        def batches(data, shuffle):
            ds = tf.data.Dataset.from_tensor_slices(data)
            if shuffle:
                ds = ds.shuffle(len(data[0]), seed=self.seed)
            return ds.batch(32).prefetch(tf.data.AUTOTUNE)

        train_ds, val_ds = batches(train, True), batches(validation_data, False)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=self.head_epochs,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )
        k = hp.get("unfreeze_blocks")
        top = model.block_map.names[len(model.block_map) - k :] if k else []
        names = {
            n for b in top for n in model.block_map[model.block_map.position(b)].layers
        }
        base = model.get_layer(model.base_name)
        base.trainable = True
        for layer in base.layers:
            layer.trainable = layer.name in names
        model.compile(
            keras.optimizers.Adam(self.fine_tune_lr),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=self.head_epochs + self.fine_tune_epochs,
            initial_epoch=self.head_epochs,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )


def _scores(tuner) -> dict[int, float]:
    return {
        t.hyperparameters.get("unfreeze_blocks"): t.score
        for t in tuner.oracle.trials.values()
        if t.score is not None
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200, help="training images")
    parser.add_argument("--val", type=int, default=600, help="validation images")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--fine-tune-lr", type=float, default=1e-4)
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 3, 6, 13])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    demo = default_demo_base()
    path = demo.info["path"]
    task = "shapes_target"
    n_classes = len(datasets.class_names(task))
    x, y = datasets.make_images(
        task, n=args.train + args.val, image_size=demo.input_shape[0], seed=args.seed
    )
    x = x.astype("float32")
    train, val = (x[: args.train], y[: args.train]), (x[args.train :], y[args.train :])
    epochs = f"{args.head_epochs}+{args.fine_tune_epochs}"
    print(
        f"base: tltf demo base ({demo.info.get('architecture', demo.name)}, "
        f"{len(demo.block_map)} blocks) at {demo.input_shape[0]}px; {args.train} train"
        f" / {args.val} val images of {task}; depths {args.depths}; epochs {epochs}; "
        f"fine-tune lr {args.fine_tune_lr:g}"
    )
    folder = tempfile.mkdtemp(prefix="tltf-tuner-sharing-")

    naive = kt.GridSearch(
        NaiveHyperModel(
            path,
            args.depths,
            n_classes,
            args.head_epochs,
            args.fine_tune_epochs,
            args.fine_tune_lr,
            args.seed,
        ),
        objective="val_accuracy",
        max_trials=len(args.depths),
        directory=folder,
        project_name="naive",
        overwrite=True,
    )
    start, cpu = time.perf_counter(), time.process_time()
    naive.search(train, validation_data=val, verbose=0)
    naive_time = time.perf_counter() - start
    naive_cpu = time.process_time() - cpu
    naive_scores = _scores(naive)

    start, cpu = time.perf_counter(), time.process_time()
    result = tune(
        path,
        train,
        val,
        num_classes=n_classes,
        search={
            "unfreeze": list(args.depths),
            "fine_tune_lr": args.fine_tune_lr,
            "head_dropout": 0.2,
            "head_units": 0,
            "bn": "affine",
        },
        tuner="grid",
        max_trials=len(args.depths),
        head_epochs=args.head_epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        directory=folder,
        project_name="tltf",
        overwrite=True,
        seed=args.seed,
        export=False,
        verbose=0,
    )
    tltf_time = time.perf_counter() - start
    tltf_cpu = time.process_time() - cpu
    tltf_scores = {r["blocks"]: r["score"] for r in result.table}
    trained = sum(r["stage1"] == "trained" for r in result.table)

    print("depth  naive val_acc  tltf val_acc")
    for depth in args.depths:
        print(
            f"{depth:5d}  {naive_scores.get(depth, float('nan')):13.3f}  "
            f"{tltf_scores.get(depth, float('nan')):12.3f}"
        )
    for name, seconds, cpu_s, scores, extra in (
        ("naive", naive_time, naive_cpu, naive_scores, "head trained in every trial"),
        ("tltf ", tltf_time, tltf_cpu, tltf_scores, f"head trained {trained}x, shared"),
    ):
        depth = max(scores, key=scores.get)
        print(
            f"{name}: {seconds:7.1f} s wall ({cpu_s:7.1f} s CPU)  best depth {depth:2d}"
            f"  best val accuracy {scores[depth]:.3f}  ({extra})"
        )
    print(f"CPU-time ratio (naive / tltf): {naive_cpu / tltf_cpu:.1f}x")
    print(
        f"speed ratio (naive / tltf, {len(args.depths)} depths, {epochs} epochs): "
        f"{naive_time / tltf_time:.1f}x"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
