"""TFLite flavours against Keras: size, agreement, accuracy, latency.

A real transfer model: tltf's offline demo base (MobileNetV3Small pretrained on
procedural shapes; `tltf demo` or this script pretrains it on first use) at 64 px,
with a head fine-tuned on the procedural target task (12 classes the base never
saw). It is exported as float32, float16, dynamic-range and full-int8 TFLite
(calibrated on 100 training images) and each file is compared with the Keras
model on held-out test images.

Usage:
    .venv/bin/python benchmarks/export_flavours.py [--train 1200] [--test 600]

Prints a markdown table: file size, conversion time, max and mean |TFLite -
Keras| over the class probabilities, top-1 agreement with Keras, test accuracy,
and milliseconds per image (batch 32, the interpreter's default threads).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from tltf import datasets
from tltf.export import export_model, tflite_predict
from tltf.pretrain import default_demo_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200, help="training images")
    parser.add_argument("--test", type=int, default=600, help="test images")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = "shapes_target"
    n_classes = len(datasets.class_names(task))
    x, y = datasets.make_images(
        task, n=args.train + args.test, image_size=args.size, seed=args.seed
    )
    x = x.astype("float32")
    train = (x[: args.train], y[: args.train])
    x_test, y_test = x[args.train :], y[args.train :]
    demo = default_demo_base()
    base = tltf.load_base(demo.info["path"], input_shape=(args.size, args.size, 3))
    keras.utils.set_random_seed(args.seed)
    model = tltf.build_model(base, n_classes)
    tltf.fine_tune(
        model, train, head_epochs=8, fine_tune_epochs=4, unfreeze=3, verbose=0
    )
    model.predict(x_test[:32], batch_size=32, verbose=0)  # Warm-up (tracing).
    start = time.perf_counter()
    expected = model.predict(x_test, batch_size=32, verbose=0)
    keras_ms = 1000 * (time.perf_counter() - start) / len(x_test)
    keras_acc = float((expected.argmax(1) == y_test).mean())
    print(
        f"model: {demo.info['architecture']} demo base at {args.size}px, "
        f"{model.count_params():,} params; {args.train} train / {args.test} test "
        f"images of {task}; Keras test accuracy {keras_acc:.3f} "
        f"({keras_ms:.2f} ms/image in Keras, batch 32)"
    )
    print()
    print(
        "| flavour | size (KB) | convert (s) | max abs diff | mean abs diff | "
        "top-1 agreement | test accuracy | ms/image |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for flavour in ("float32", "float16", "dynamic", "int8"):
            path = Path(folder) / f"{flavour}.tflite"
            start = time.perf_counter()
            export_model(
                model,
                path,
                quantize=None if flavour == "float32" else flavour,
                representative_data=train[0] if flavour == "int8" else None,
            )
            convert_s = time.perf_counter() - start
            start = time.perf_counter()
            got = tflite_predict(path, x_test, batch_size=32)
            ms = 1000 * (time.perf_counter() - start) / len(x_test)
            diff = np.abs(got - expected)
            agree = float((got.argmax(1) == expected.argmax(1)).mean())
            acc = float((got.argmax(1) == y_test).mean())
            print(
                f"| {flavour} | {path.stat().st_size / 1024:,.0f} | {convert_s:.1f} | "
                f"{diff.max():.1e} | {diff.mean():.1e} | {agree:.3f} | {acc:.3f} | "
                f"{ms:.2f} |"
            )


if __name__ == "__main__":
    main()
