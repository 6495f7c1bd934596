"""A first epoch traced once: fine_tune's first-epoch seconds with and without it.

Keras 3's TensorFlow trainer creates the compiled metrics' variables, and an
unbuilt optimizer's, inside the first traced training step (unless the model
was made under a distribution strategy); TensorFlow then traces the whole step
a second time. tltf builds both before `fit` (`tltf.cache.build_metrics` and
`build_optimizer`). This benchmark runs the same `fine_tune` calls with those
two builds ("tltf", what fine_tune does) and without them ("Keras": as before
them, the optimizer is left unbuilt and metrics are built only from label
arrays, for callbacks; Keras builds the rest in the trace), alternating
which runs first, in one process. It counts the train-step traces (Keras's
`train_step` called while tracing) and times the call.

Runs, each on the shipped demo base (MobileNetV3Small, 64 px) and a MobileNetV2
(alpha 0.35, random weights, 96 px), 10 images per class of `shapes_target`:
- "stage 2 only": `head_epochs=0, unfreeze=2, fine_tune_epochs=1` (the shape of
  notebook 5's block-range runs and the demo's scratch run);
- "uncached": `cache_features=False, head_epochs=1, unfreeze=2,
  fine_tune_epochs=1` (stage 1 through the base, as with augmentation);
- "defaults": `fine_tune` with its defaults (stage 1 on cached features).

Usage:
    .venv/bin/python benchmarks/first_epoch.py [--repeats 2]

The last line prints the mean seconds without the builds over the mean with them.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import importlib
import time

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

RUNS = {
    "stage 2 only": dict(head_epochs=0, unfreeze=2, fine_tune_epochs=1),
    "uncached": dict(
        cache_features=False, head_epochs=1, unfreeze=2, fine_tune_epochs=1
    ),
    "defaults": {},
}

#: Where fine_tune calls the two builds.
MODULES = ("tltf.cache", "tltf.schedule")

#: What the "Keras" arm does instead: no optimizer build, and metrics built
#: only from label arrays (for callbacks, as before), never from a dataset.
_BEFORE = {
    "build_optimizer": lambda build: lambda model: None,
    "build_metrics": lambda build: (
        lambda model, labels: (
            None if isinstance(labels, tf.data.Dataset) else build(model, labels)
        )
    ),
}

#: Train-step traces: Keras's `train_step` runs in Python only while tracing.
TRACES = [0]
_train_step = tf_trainer.TensorFlowTrainer.train_step


def _counting_train_step(self, data):
    TRACES[0] += 1
    return _train_step(self, data)


tf_trainer.TensorFlowTrainer.train_step = _counting_train_step


def _base(name: str):
    if name == "demo":
        return tltf.load_base("demo")
    keras.utils.set_random_seed(0)
    return tltf.load_base(
        "mobilenet_v2", weights=None, input_shape=(96, 96, 3), alpha=0.35
    )


def run(base_name: str, settings: dict, traced_once: bool) -> tuple[float, int]:
    """Seconds of one `fine_tune` call and its train-step traces."""
    patched = {}
    if not traced_once:
        for module in map(importlib.import_module, MODULES):
            for name, stand_in in _BEFORE.items():
                if hasattr(module, name):
                    patched[module, name] = getattr(module, name)
                    setattr(module, name, stand_in(getattr(module, name)))
    try:
        base = _base(base_name)
        size = base.input_shape[0]
        x, y = tltf.datasets.make_images(
            "shapes_target", per_class=10, image_size=size, seed=0
        )
        keras.utils.set_random_seed(0)
        model = tltf.build_model(base, int(np.max(y)) + 1)
        TRACES[0] = 0
        start = time.perf_counter()
        tltf.fine_tune(model, (x, y), seed=0, verbose=0, **settings)
        return time.perf_counter() - start, TRACES[0]
    finally:
        for (module, name), function in patched.items():
            setattr(module, name, function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bases", nargs="+", default=["demo", "mobilenet_v2"])
    args = parser.parse_args()
    run("demo", RUNS["stage 2 only"], True)  # warm-up: imports, first graphs
    totals = {True: [], False: []}
    print(f"{'base':14s} {'run':14s} {'arm':6s} {'seconds':>8s} {'traces':>7s}")
    for base_name in args.bases:
        for label, settings in RUNS.items():
            for repeat in range(args.repeats):
                order = (True, False) if repeat % 2 == 0 else (False, True)
                for traced_once in order:
                    seconds, traces = run(base_name, settings, traced_once)
                    totals[traced_once].append(seconds)
                    arm = "tltf" if traced_once else "Keras"
                    print(
                        f"{base_name:14s} {label:14s} {arm:6s} {seconds:8.2f} "
                        f"{traces:7d}",
                        flush=True,
                    )
    tltf_mean, keras_mean = np.mean(totals[True]), np.mean(totals[False])
    print(
        f"mean seconds: Keras's build in the trace {keras_mean:.2f}, tltf's before "
        f"fit {tltf_mean:.2f}; ratio {keras_mean / tltf_mean:.2f}x"
    )


if __name__ == "__main__":
    main()
