"""tltf's framework overhead: `fine_tune` vs a hand-written two-stage Keras `fit`.

Both sides train the identical model (`tltf.build_model("demo", ...)`: the shipped
demo base, MobileNetV3Small pretrained on procedural shapes, at 64 px, with tltf's
default head minus its `Standardization` layer), built fresh for every run from
the same seed, on the same procedural `shapes_target` images, batch 32, for the
same epochs:

- tltf: `fine_tune(model, (x, y), head_epochs=E, fine_tune_epochs=E,
  head_lr=1e-3, fine_tune_lr=1e-4, unfreeze=4, cache_features=False,
  head_init="random", keep_best=False, seed=...)`: fixed settings, nothing
  automatic. Off: the feature cache, the probe of `unfreeze="auto"`, the LR
  finder, the ridge start, the guard of `keep_best` and its scoring passes, and
  (by building the head with `standardize=False`) the inference pass that
  `prepare_head` runs to set the head's feature statistics. Left on, as they
  cannot be turned off: the argument and data checks (the whole label and pixel
  arrays are scanned once), tltf's own `tf.data` input pipeline (shuffled
  indices, rows gathered per batch), one `fit` for both stages driven by the
  `FineTuneSchedule` callback (it freezes the base and rebuilds the train function
  at epoch 1, installs a fresh Adam at stage 2 and checks every batch's loss for
  NaN) and the `StageProgbarLogger` callback.
- Keras by hand: compile with Adam(head_lr) with the base frozen, `fit(x, y,
  batch_size=32, epochs=E)`; then the same top blocks trainable with every
  BatchNorm layer frozen (inference mode, as `tltf.freezing`'s `bn="frozen"`),
  recompile with Adam(fine_tune_lr), `fit(..., epochs=2E, initial_epoch=E)`.

The two runs alternate in one process (tltf, keras, tltf, keras, ...) after one
uncounted warm-up run of each; only the training is timed (`fine_tune`, or the
two compiles and fits), with `time.perf_counter`. The script prints one row per
repeat and the medians.

Usage:
    .venv/bin/python benchmarks/overhead.py [--images 320] [--epochs 5] \
        [--repeats 3] [--unfreeze 4] [--breakdown]

The last line prints the overhead ratio: median tltf time / median Keras time.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import statistics
import time

import keras
import numpy as np

from tltf import datasets

TASK = "shapes_target"
HEAD = {"standardize": False}  # no statistics pass: the same model on both sides


def build(n_classes: int, seed: int) -> keras.Model:
    """A fresh model on the shipped demo base, from `seed`."""
    keras.utils.set_random_seed(seed)
    return tltf.build_model("demo", n_classes, head=HEAD)


def run_tltf(model, x, y, args, callbacks=()) -> tuple[float, dict]:
    """`fine_tune` with fixed settings; returns (seconds, last epoch's logs)."""
    start = time.perf_counter()
    history = tltf.fine_tune(
        model,
        (x, y),
        head_epochs=args.epochs,
        fine_tune_epochs=args.epochs,
        head_lr=args.head_lr,
        fine_tune_lr=args.fine_tune_lr,
        unfreeze=args.unfreeze,
        head_init="random",
        keep_best=False,
        cache_features=False,
        batch_size=32,
        seed=args.seed,
        verbose=args.verbose,
        callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - start
    return seconds, {k: v[-1] for k, v in history.history.items()}


def unfreeze_by_hand(model, blocks: int) -> None:
    """The top `blocks` blocks of the base trainable, every BatchNorm frozen."""
    info = tltf.model_info(model)  # only to know which layers form the top blocks
    chosen = list(info.block_map)[len(info.block_map) - blocks :]
    top = {name for block in chosen for name in block.layers}
    base = info.base
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name in top and not isinstance(
            layer, keras.layers.BatchNormalization
        )


def run_keras(model, x, y, args, callbacks=()) -> tuple[float, dict]:
    """The hand-written two-stage `fit`; returns (seconds, last epoch's logs)."""
    loss = keras.losses.SparseCategoricalCrossentropy()
    start = time.perf_counter()
    model.compile(keras.optimizers.Adam(args.head_lr), loss, metrics=["accuracy"])
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=args.epochs,
        verbose=args.verbose,
        callbacks=list(callbacks),
    )
    unfreeze_by_hand(model, args.unfreeze)
    model.compile(keras.optimizers.Adam(args.fine_tune_lr), loss, metrics=["accuracy"])
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=2 * args.epochs,
        initial_epoch=args.epochs,
        verbose=args.verbose,
        callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - start
    return seconds, {k: v[-1] for k, v in history.history.items()}


class _Clock(keras.callbacks.Callback):
    """Records when each epoch begins, ends its first batch, and ends."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([time.perf_counter(), None, None])

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.epochs[-1][1] = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[-1][2] = time.perf_counter()


def breakdown(runner, model, x, y, args) -> dict[str, float]:
    """One run with a clock callback and a count of `train_step` traces.

    The clock goes to `fine_tune` and to both `fit`s as a callback; the trace
    count wraps the model's `train_step`, which Keras calls once per trace of its
    training function.
    """
    clock, traces = _Clock(), [0]
    step = model.train_step

    def counted(data):
        traces[0] += 1
        return step(data)

    model.train_step = counted
    seconds, _ = runner(model, x, y, args, callbacks=[clock])
    e = args.epochs
    begin, first, end = (np.array([ep[i] for ep in clock.epochs]) for i in range(3))
    first_batch = first - begin
    rest = end - first  # the batches after the first, per epoch
    return {
        "total (s)": seconds,
        "outside the epochs: checks, pipelines, compiles, stage switches (s)": seconds
        - float(np.sum(end - begin)),
        "first batch of stage 1, with its traces (s)": first_batch[0],
        "first batch of stage 2, with its traces (s)": first_batch[e],
        "every other batch (s)": float(np.sum(rest) + np.sum(first_batch))
        - first_batch[0]
        - first_batch[e],
        "median epoch after its first batch, stage 1 (s)": np.median(rest[:e]),
        "median epoch after its first batch, stage 2 (s)": np.median(rest[e:]),
        "traces of train_step": traces[0],
    }


def trainable_names(model) -> list[str]:
    return sorted(v.path for v in model.trainable_variables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="training images")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each stage")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
    parser.add_argument("--unfreeze", type=int, default=4, help="top blocks, stage 2")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--fine-tune-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0, help="fit verbosity, both")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="then one instrumented run of each: where the time goes",
    )
    args = parser.parse_args()
    if args.epochs < 1 or args.images < 1 or args.repeats < 1:
        parser.error("--epochs, --images and --repeats must be at least 1")
    if not 0 <= args.unfreeze <= 13:
        parser.error("--unfreeze must be in [0, 13] (the demo base has 13 blocks)")

    n_classes = datasets.num_classes(TASK)
    size = tltf.load_base("demo").input_shape[0]
    x, y = datasets.make_images(TASK, n=args.images, image_size=size, seed=args.seed)
    x = x.astype("float32")
    print(
        f"demo base at {size} px, {args.images} {TASK} images ({n_classes} classes), "
        f"batch 32, {args.epochs} + {args.epochs} epochs, top {args.unfreeze} blocks "
        f"unfrozen (BN frozen), Adam {args.head_lr:g} then {args.fine_tune_lr:g}",
        flush=True,
    )
    runners = {"tltf": run_tltf, "keras": run_keras}
    times: dict[str, list[float]] = {name: [] for name in runners}
    print(
        f"{'run':8s}  {'tltf (s)':>8s}  {'keras (s)':>9s}  {'tltf/keras':>10s}  "
        "final loss (tltf, keras)"
    )
    for repeat in range(args.repeats + 1):
        seconds, loss = {}, {}
        for name, runner in runners.items():
            model = build(n_classes, args.seed)
            seconds[name], logs = runner(model, x, y, args)
            loss[name] = logs["loss"]
            if repeat == 0:
                trainable = trainable_names(model)
                if name == "tltf":
                    tltf_trainable = trainable
                elif trainable != tltf_trainable:
                    raise SystemExit(
                        "stage 2 trains different variables: "
                        f"tltf {len(tltf_trainable)}, keras {len(trainable)}"
                    )
            else:
                times[name].append(seconds[name])
        label = "warm-up" if repeat == 0 else str(repeat)
        print(
            f"{label:8s}  {seconds['tltf']:8.2f}  {seconds['keras']:9.2f}  "
            f"{seconds['tltf'] / seconds['keras']:10.3f}  "
            f"{loss['tltf']:.3f}, {loss['keras']:.3f}",
            flush=True,
        )
    ours = statistics.median(times["tltf"])
    theirs = statistics.median(times["keras"])
    print(f"{'median':8s}  {ours:8.2f}  {theirs:9.2f}  {ours / theirs:10.3f}")
    print(
        f"(warm-up not counted; stage 2 trains the same {len(tltf_trainable)} "
        "variables on both sides)"
    )

    if args.breakdown:
        rows = {}
        for name, runner in runners.items():
            rows[name] = breakdown(runner, build(n_classes, args.seed), x, y, args)
        print("\nwhere the time goes (one more run of each, instrumented):")
        width = max(len(k) for k in rows["tltf"])
        print(f"{'':{width}s}  {'tltf':>7s}  {'keras':>7s}")
        for key in rows["tltf"]:
            cells = (
                f"{v:7d}" if isinstance(v, int) else f"{v:7.2f}"
                for v in (rows["tltf"][key], rows["keras"][key])
            )
            print(f"{key:{width}s}  " + "  ".join(cells))

    ratio = ours / theirs
    print(
        "overhead of fine_tune over a hand-written two-stage fit: "
        f"{ours:.2f}s / {theirs:.2f}s = {ratio:.3f}x ({100 * (ratio - 1):+.1f}%)"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
