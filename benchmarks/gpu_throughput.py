"""Fine-tuning throughput (images/s): fp32 vs mixed precision vs mixed + XLA.

For MobileNetV2 and EfficientNetB0 at 224 px, this runs tltf's stage 2 (the whole
base trainable, BatchNorm frozen, Adam) through `tltf.fine_tune` exactly as a user
would, in three modes:

- fp32: `build_model(...)`, `fine_tune(..., jit_compile=False)` (on Ampere and
  newer GPUs TensorFlow runs float32 matmuls and convolutions as TF32);
- mixed: `build_model(..., mixed_precision=True)` ("mixed_float16" on a GPU,
  "mixed_bfloat16" on a CPU; Keras adds loss scaling for float16);
- mixed+xla: the same with `fine_tune(..., jit_compile=True)`.

Weights are random (`weights=None`: throughput does not depend on them) and the
data is one synthetic batch in memory, repeated, so the input pipeline costs
nothing. Each run does `--warmup` steps (tracing, XLA compilation) and then times
up to `--steps` steps or `--seconds` seconds, whichever comes first, syncing with
the device at both ends. A run is skipped
when it might end after `--budget` seconds (each is assumed to need `--seconds`
plus 25 s, or plus 60 s with XLA), so the script fits a fixed device-time budget
(280 s of runs by default: inside 5 minutes with start-up).

Usage:
    .venv/bin/python benchmarks/gpu_throughput.py              # on a GPU
    .venv/bin/python benchmarks/gpu_throughput.py --smoke      # tiny, on CPU

It prints one table row per run, and as its last line the speed ratio of the
best mode over fp32 for each model.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from tltf._io import atomic_write_json

MODELS = ("mobilenet_v2", "efficientnet_b0")
MODES = ("fp32", "mixed", "mixed+xla")


class Timer(keras.callbacks.Callback):
    """Times steps after a warm-up, and stops after a step or time limit."""

    def __init__(self, warmup: int, steps: int, seconds: float):
        super().__init__()
        self.warmup, self.steps, self.seconds = warmup, steps, seconds
        self.start = self.t0 = self.t1 = None
        self.timed = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            _sync(logs)
            self.t0 = time.perf_counter()
            return
        if self.t0 is None:
            return
        self.timed = batch + 1 - self.warmup
        if self.timed >= self.steps or time.perf_counter() - self.t0 >= self.seconds:
            _sync(logs)
            self.t1 = time.perf_counter()
            self.model.stop_training = True


def _sync(logs) -> None:
    """Waits for the device: reading the loss needs the step to have finished."""
    loss = (logs or {}).get("loss")
    if loss is not None:
        float(loss)


def run(name: str, mode: str, args) -> dict:
    """One model in one mode: build, fine-tune all blocks, measure images/s."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    size = args.size
    model = tltf.build_model(
        name,
        num_classes=10,
        weights=None,
        input_shape=(size, size, 3),
        mixed_precision=mode != "fp32",
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    timer = Timer(args.warmup, args.steps, args.seconds)
    tltf.fine_tune(
        model,
        data,
        head_epochs=0,
        fine_tune_epochs=1,
        unfreeze="all",
        fine_tune_lr=1e-5,
        steps_per_epoch=args.warmup + args.steps,
        jit_compile=mode == "mixed+xla",
        callbacks=[timer],
        verbose=0,
    )
    if timer.t1 is None:  # ran out of steps before the last check
        timer.t1 = time.perf_counter()
    seconds = timer.t1 - timer.t0
    return {
        "model": name,
        "mode": mode,
        "policy": model.dtype_policy.name,
        "jit_compile": bool(model.jit_compile),
        "batch": args.batch,
        "size": size,
        "steps": timer.timed,
        "images_per_s": timer.timed * args.batch / seconds,
        "step_ms": 1000 * seconds / max(timer.timed, 1),
        "warmup_s": timer.t0 - timer.start,
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    }


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({platform.processor() or platform.machine()})"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{len(gpus)} x {details.get('device_name', 'GPU')}"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--budget", type=float, default=280.0)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and steps (CPU check)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.warmup, args.steps, args.seconds = 32, 4, 2, 2, 5
        args.budget = float("inf")
    device = _device()
    print(
        f"tltf fine-tuning throughput on {device}; TF {tf.__version__}, Keras "
        f"{keras.__version__}; {args.size} px, batch {args.batch}, all blocks "
        "trainable, BN frozen, Adam"
    )
    header = (
        f"{'model':<16}{'mode':<11}{'policy':<16}{'images/s':>10}{'ms/step':>9}"
        f"{'warmup s':>10}{'steps':>7}"
    )
    print(header)
    print("-" * len(header))
    rows, start = [], time.perf_counter()
    for name in args.models:
        for mode in args.modes:
            # Worst-case time of one run (build, tracing, XLA compilation, timing).
            expected = args.seconds + (60 if mode == "mixed+xla" else 25)
            if time.perf_counter() - start + expected > args.budget:
                print(
                    f"{name:<16}{mode:<11}skipped: it might overrun the "
                    f"{args.budget:.0f}s budget"
                )
                continue
            row = run(name, mode, args)
            rows.append(row)
            print(
                f"{name:<16}{mode:<11}{row['policy']:<16}{row['images_per_s']:>10.1f}"
                f"{row['step_ms']:>9.1f}{row['warmup_s']:>10.1f}{row['steps']:>7}",
                flush=True,
            )
    if args.json:
        atomic_write_json(args.json, {"device": device, "rows": rows})
    ratios = []
    for name in args.models:
        mine = {r["mode"]: r["images_per_s"] for r in rows if r["model"] == name}
        if "fp32" in mine and len(mine) > 1:
            best = max(mine, key=mine.get)
            ratios.append(f"{name} {mine[best] / mine['fp32']:.2f}x ({best})")
    print("best mode / fp32 speed: " + ("; ".join(ratios) or "n/a"))
    return rows


if __name__ == "__main__":
    main()
