"""Writes the tutorial notebooks in this folder, without outputs.

The notebooks are generated from the cell lists below, so that their source stays
reviewable as plain Python. Edit this file, then run:

    .venv/bin/python notebooks/_build.py

`tests/test_notebooks.py` executes every notebook on a Jupyter kernel and checks
that the committed files match this script and carry no outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

#: The cell that every notebook uses to get its base (see notebook 1 for why).
BASE_CELL = """\
from tltf.pretrain import default_demo_base

# The demo base ships with tltf; a base you pretrained into the store comes first.
base = default_demo_base(verbose=2)
SIZE = base.input_shape[0]  # 64 px
print(f"base: {base.name}, {SIZE} px, {len(base.block_map)} blocks, "
      f"{base.info['weights']}; source-task val accuracy {base.info['val_accuracy']}")"""

BASE_NOTE = """\
## The base

As in notebook 1: the demo base that ships with tltf, a MobileNetV3Small that tltf
pretrained from scratch on 16 procedural shape classes (`make demo-base` pretrains
it again, about 4 minutes on 2 cores)."""

SETUP = """\
%matplotlib inline
import tempfile
from pathlib import Path

import tltf  # import tltf first: it keeps TensorFlow's start-up logs quiet

import keras
import numpy as np

keras.utils.set_random_seed(0)
WORK = Path(tempfile.mkdtemp(prefix="tltf-notebook-"))  # all files this notebook writes
print("writing to", WORK)"""


# -- 01: quick start -------------------------------------------------------------
QUICK_START = [
    (
        "md",
        """\
# 1. Quick start: fine-tune a pretrained base in five calls

tltf turns the Keras transfer-learning recipe into a few calls:

1. `tltf.build_model(base, num_classes)`: a frozen pretrained *base* (any Keras
   Applications model, with its own preprocessing built in) plus a new *head*;
2. `tltf.fine_tune(model, train, val)`: stage 1 trains the head, stage 2 unfreezes
   the top blocks of the base and trains them at a low learning rate, both in one
   `model.fit`;
3. evaluate, plot, and `model.save("model.keras")`.

This notebook shows the usual ImageNet path first, then runs the same calls offline
on procedural images, in about a minute on 2 CPU cores.""",
    ),
    (
        "md",
        """\
## The ImageNet path (needs internet access)

With internet access, Keras downloads the ImageNet weights and tfds the data set.
This cell is switched off (`ONLINE = False`) so that the notebook runs offline;
set `ONLINE = True` to run it (a few minutes on a GPU, far longer on a CPU).""",
    ),
    (
        "code",
        """\
ONLINE = False  # True downloads EfficientNetB0's ImageNet weights and tf_flowers

if ONLINE:
    import tltf

    data = tltf.load_data("tfds:tf_flowers", split="train[:80%]",
                          validation="train[80%:]", image_size=224)
    model = tltf.build_model("efficientnet_b0", num_classes=data.num_classes)
    history = tltf.fine_tune(model, data)  # the defaults: see "Fine-tune" below
    model.save("flowers.keras")  # a plain keras.Model: no Lambda layers""",
    ),
    (
        "md",
        """\
## Offline: the same calls on a base tltf pretrained itself

tltf ships a MobileNetV3Small that it pretrained from scratch on `shapes_source`,
16 procedural shape classes (`make demo-base` reproduces it; `tltf.pretrain` does
the same for any architecture). We fine-tune it on `shapes_target`: 12 *other*
shapes that the base never saw. Whatever it gets right there comes from
transferred features.""",
    ),
    ("code", SETUP),
    ("code", BASE_CELL),
    (
        "md",
        """\
A base knows its **blocks**: the architecture's real units, bottom to top. tltf
freezes and unfreezes whole blocks, never half a residual unit.""",
    ),
    ("code", "print(base.block_map.names)"),
    (
        "md",
        """\
## Data

`tltf.datasets.make_images` generates labelled images: uint8 RGB arrays, the same
for the same seed. A few labelled images per class is the typical
transfer-learning setting; here 20 for training and 10 for validation, with a
separate test set.""",
    ),
    (
        "code",
        """\
task = "shapes_target"
class_names = tltf.datasets.class_names(task)
x_train, y_train = tltf.datasets.make_images(task, per_class=20, image_size=SIZE, seed=0)
x_val, y_val = tltf.datasets.make_images(task, per_class=10, image_size=SIZE, seed=1)
x_test, y_test = tltf.datasets.make_images(task, per_class=20, image_size=SIZE, seed=2)
print(x_train.shape, x_train.dtype, "classes:", class_names)""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
for label, ax in enumerate(axes.flat):
    ax.imshow(x_train[y_train == label][0])
    ax.set_title(class_names[label], fontsize=8)
    ax.axis("off")
plt.show()""",
    ),
    (
        "md",
        """\
## Build the model

`build_model` puts the base's preprocessing into the model (it takes raw RGB in
[0, 255]), freezes the base and adds a head (the blocks average-pooled and
standardised, softmax). `block_summary` shows what is trainable.""",
    ),
    (
        "code",
        """\
model = tltf.build_model(base, num_classes=len(class_names))
tltf.block_summary(model);""",
    ),
    (
        "md",
        """\
## Fine-tune, with the defaults

`fine_tune(model, train, val)` makes the choices the recipe leaves to you, and
prints one `tltf:` line for each:

- `unfreeze="auto"`: a linear probe of every block of the frozen base (one
  forward pass, leave-one-out on the training images) picks how many top blocks
  stage 2 unfreezes. Notebook 3 shows how to read the probe.
- `head_epochs="auto"`: stage 1 trains the head on the frozen base's features,
  computed once and cached, starting from the closed-form ridge classifier, until
  its training loss stops falling (at most `head_steps=2000` steps).
- `fine_tune_epochs="auto"`: stage 2 gets about 1,000 optimizer steps (2 to 10
  epochs), with BatchNorm statistics frozen.
- `keep_best=True`: the model ends with the best weights among the epochs of
  both stages (by validation loss), so stage 2 never makes it worse.

The rates are `head_lr=1e-3` and `fine_tune_lr="auto"`: 1e-4, or 3e-4 from
1,000 training images (15 a class), where `unfreeze="auto"` also trains every
block. Each choice also takes a number (`head_epochs=5`, `unfreeze=3`, ...),
and either rate takes `"find"`, which
runs the learning-rate finder first (notebook 3).""",
    ),
    (
        "code",
        """\
history = tltf.fine_tune(model, (x_train, y_train), (x_val, y_val), seed=0, verbose=2)
stages = history.history["stage"]
print(f"stage 1: {stages.count(1)} epochs, stage 2: {stages.count(2)} epochs")
print("the model holds", history.kept)""",
    ),
    (
        "md",
        """\
`history.kept` says which epoch's weights the model holds (`keep_best` kept
them), its stage, which blocks stage 2 had trained by then (none when the head
alone won) and why; `history.kept.blocks` is that tuple of block names.

The learning curves; the dotted line marks where stage 2 starts, and the green
line the kept epoch. tltf's plot
functions return the matplotlib figure (`fig = tltf.plot_history(history)`, then
`fig.savefig("history.png")`); the `;` at the end of the cell keeps Jupyter from
showing it a second time.""",
    ),
    ("code", "tltf.plot_history(history);"),
    (
        "md",
        """\
## Evaluate

`evaluate` scores the model on held-out data: accuracy, top-k accuracy,
per-class precision, recall and F1, and the confusion matrix (rows: true class).""",
    ),
    (
        "code",
        """\
report = tltf.evaluate(model, (x_test, y_test), class_names=class_names, top_k=3)
print(f"chance: {1 / len(class_names):.3f}")
report.print()""",
    ),
    ("code", "report.plot_confusion();"),
    (
        "md",
        """\
## Save and load

The model is a plain `keras.Model` made of standard and registered layers, so it
loads with Keras's `safe_mode=True` (which `tltf.load_model` always uses) and needs
no custom objects. `tltf.model_info` recovers what tltf knows about it.""",
    ),
    (
        "code",
        """\
path = WORK / "shapes.keras"
model.save(path)
loaded = tltf.load_model(path)
same = np.allclose(loaded.predict(x_test, verbose=0),
                   model.predict(x_test, verbose=0), atol=1e-5)
print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB; same predictions: {same}")
print(tltf.model_info(loaded).metadata["base"], tltf.model_info(loaded).task)""",
    ),
    (
        "md",
        """\
## Next

- [2. The schedule and Keras callbacks](02_schedule_and_callbacks.ipynb)
- [3. How many blocks to unfreeze](03_tuning_unfreeze_depth.ipynb)
- [4. Your own images, and TFLite](04_own_data_and_tflite.ipynb)""",
    ),
]


# -- 02: schedule and callbacks --------------------------------------------------
SCHEDULE = [
    (
        "md",
        """\
# 2. The fine-tuning schedule with Keras callbacks

`tltf.fine_tune` runs both stages in **one** `model.fit`: the switch from stage 1
(head only) to stage 2 (top blocks unfrozen, a fresh optimizer at a low rate) is
made by a Keras callback, `tltf.FineTuneSchedule`. So your callbacks see one run:
epochs 1..N, one `on_train_begin`, and a `stage` entry in each epoch's logs.

This notebook uses EarlyStopping, ModelCheckpoint, TensorBoard, CSVLogger and a
callback of its own with `fine_tune`, then puts `FineTuneSchedule` into a plain
`model.fit`. About a minute on 2 CPU cores.""",
    ),
    ("code", SETUP),
    ("md", BASE_NOTE),
    ("code", BASE_CELL),
    (
        "code",
        """\
task = "shapes_target"
x_train, y_train = tltf.datasets.make_images(task, per_class=20, image_size=SIZE, seed=0)
x_val, y_val = tltf.datasets.make_images(task, per_class=10, image_size=SIZE, seed=1)
num_classes = tltf.datasets.num_classes(task)""",
    ),
    (
        "md",
        """\
## A callback of our own

It prints the epoch number and the stage at the end of each epoch. Epoch numbers
run on across the stage change, and `on_train_begin` is called once.""",
    ),
    (
        "code",
        """\
class StagePrinter(keras.callbacks.Callback):
    \"\"\"Prints the epoch number and the stage from each epoch's logs.\"\"\"

    def on_train_begin(self, logs=None):
        print("StagePrinter: on_train_begin")

    def on_epoch_end(self, epoch, logs=None):
        print(f"StagePrinter: epoch {epoch + 1} ended in stage {logs['stage']:.0f}, "
              f"val_accuracy {logs['val_accuracy']:.3f}")""",
    ),
    (
        "md",
        """\
## `fine_tune` with Keras callbacks

- **EarlyStopping** watches stage 2 only: with the default `head_epochs="auto"`,
  stage 1 ends when the head's loss has converged, so the epoch where stage 2
  starts is not known in advance, and a patience counted from epoch 1 would run
  out in stage 1 and end the run before the base is fine-tuned. `fine_tune`
  starts an EarlyStopping left at `start_from_epoch=0` at stage 2's first epoch
  (a `tltf:` line says so when `verbose` is on) and sets it back afterwards; give `head_epochs` a
  number and `start_from_epoch` yourself to choose otherwise.
  `restore_best_weights=True` keeps the best epoch's weights. Everything here
  keeps `fine_tune`'s defaults (the rates, `unfreeze="auto"`, stage-2 epochs
  from a step budget, `keep_best`).
- **ModelCheckpoint** writes the best model so far as `.keras`. tltf's
  `tltf.checkpoint.ModelCheckpoint` takes the same arguments as Keras's and writes
  atomically: a crash mid-save never leaves a truncated file in place of the last
  good one.
- **TensorBoard** writes the logs of both stages in one run.
- **CSVLogger** writes one row per epoch, with the `stage` column.""",
    ),
    (
        "code",
        """\
callbacks = [
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                  restore_best_weights=True),
    tltf.checkpoint.ModelCheckpoint(WORK / "best.keras", monitor="val_accuracy",
                                    save_best_only=True),
    keras.callbacks.TensorBoard(log_dir=WORK / "logs"),
    keras.callbacks.CSVLogger(WORK / "history.csv"),
    StagePrinter(),
]
model = tltf.build_model(base, num_classes)
history = tltf.fine_tune(
    model, (x_train, y_train), (x_val, y_val), callbacks=callbacks, seed=0, verbose=0,
)""",
    ),
    (
        "md",
        """\
What the callbacks left behind: the history's `stage` entry, the CSV log, the best
checkpoint (a full model that loads with `tltf.load_model`) and the TensorBoard
event files.""",
    ),
    (
        "code",
        """\
print("stage:", history.history["stage"])
print((WORK / "history.csv").read_text().splitlines()[0])
best = tltf.load_model(WORK / "best.keras")
print("best.keras val accuracy:", best.evaluate(x_val, y_val, verbose=0)[1])
print("TensorBoard runs:", sorted(p.name for p in (WORK / "logs").iterdir()))""",
    ),
    (
        "md",
        """\
To browse the logs: `tensorboard --logdir <WORK>/logs` in a shell, or in Jupyter
`%load_ext tensorboard` then `%tensorboard --logdir <WORK>/logs`.

For long runs, `fine_tune(..., backup_dir="backup/")` also makes the run
resumable: after a crash, the same call continues from the last finished epoch,
in the right stage.

The learning curves, with the stage boundary:""",
    ),
    ("code", "tltf.plot_history(history);"),
    (
        "md",
        """\
## `FineTuneSchedule` in a plain `model.fit`

If you write your own training call, compile the model as usual (the stage-1
optimizer, here at `fine_tune`'s default head rate, 1e-3) and add the schedule to
the callbacks: `unfreeze_at_epoch` is the first epoch (0-based) of stage 2, and
stage 2 runs at `fine_tune_lr` (default 1e-4). A plain `fit` has no probe, so give
the depth yourself: `tltf.probe_blocks(...).unfreeze` (notebook 3) is a good
number. With `gradual_every=2` it unfreezes the top block first and one more
block every 2 epochs; it prints a line at each change.

A plain `fit` runs the full model every epoch; `fine_tune` would cache the
frozen base's features during stage 1, which is faster. Everything else is the
same: `history.history["stage"]` and the plot work identically.""",
    ),
    (
        "code",
        """\
model = tltf.build_model(base, num_classes)
model.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
schedule = tltf.FineTuneSchedule(unfreeze_at_epoch=4, unfreeze=3, gradual_every=2)
history = model.fit(x_train, y_train, batch_size=32, epochs=9,
                    validation_data=(x_val, y_val),
                    callbacks=[schedule, StagePrinter()], verbose=0)
print("stage:", history.history["stage"])
print("unfrozen at the end:", schedule.unfrozen)""",
    ),
    ("code", "tltf.plot_history(history);"),
]


# -- 03: tuning the unfreeze depth -----------------------------------------------
TUNING = [
    (
        "md",
        """\
# 3. What to unfreeze, where to cut, which rate: reading the probe

Unfreezing too little leaves the base's top features tuned to the old task;
unfreezing too much, on little data, overfits and costs time. `fine_tune`'s
default, `unfreeze="auto"`, asks a linear probe (notebook 1). This notebook opens
that decision up:

1. `probe_blocks`: a linear probe on every block of the frozen base, from one
   forward pass, in seconds. How to read its table, its plot and its advice.
2. `cut=`: when the top blocks of the base hurt, build the model on a lower
   block.
3. `find`: the learning-rate finder, an option when the default rates do not
   suit your data.
4. `tune`: a keras-tuner search over the number of unfrozen blocks (and learning
   rates, head options...). Trials that differ only in stage 2 share one trained
   stage 1. It writes a results table, a depth-vs-metric plot and the best model.

About a minute on 2 CPU cores.""",
    ),
    ("code", SETUP),
    ("md", BASE_NOTE),
    ("code", BASE_CELL),
    (
        "code",
        """\
task = "shapes_target"
x_train, y_train = tltf.datasets.make_images(task, per_class=20, image_size=SIZE, seed=0)
x_val, y_val = tltf.datasets.make_images(task, per_class=10, image_size=SIZE, seed=1)
num_classes = tltf.datasets.num_classes(task)""",
    ),
    (
        "md",
        """\
## Probe every block

This is the probe that `fine_tune(..., unfreeze="auto")` runs: a linear
(ridge) classifier on each block's average-pooled features, scored by exact
leave-one-out on the training images. It prints its table and its advice.""",
    ),
    (
        "code",
        """\
probe = tltf.probe_blocks(base, (x_train, y_train))""",
    ),
    (
        "md",
        """\
## How to read it

- **One row per block**, bottom to top: `loo_acc` is the accuracy of a linear
  classifier on that block's features, by leave-one-out (with `val` data it is
  `val_acc`, scored on `val`). It measures how much of the task a block's
  features already solve, with no training of the base.
- **The `pixels` row** is the same classifier on the raw pixels: the
  no-transfer baseline. If no block beats it (`probe.base_helps` is False), the
  base does not help this task and tltf says so.
- **The tolerance**: differences up to `probe.tolerance` (the larger of 0.01 and
  the standard error of the best accuracy) are ties. With 240 images, a few
  points are noise.
- **The advice, `cut`**: if the top block is worse than the best block by more
  than the tolerance, the blocks above the best one destroy what this task
  needs: build on the best block (`build_model(..., cut=block)`). Otherwise
  `cut=None`: keep the whole base.
- **The advice, `unfreeze`**: accuracy reaches the peak (within the tolerance)
  at some block; the blocks above it, up to the top, add nothing a linear
  classifier can read, so those are the ones to adapt in stage 2 (at least 1).
  A curve still rising at the top means the top features transfer as they are:
  unfreeze 1.""",
    ),
    (
        "code",
        """\
print(f"best block: {probe.best['block']} ({probe.best['val_accuracy']:.3f}), "
      f"raw pixels: {probe.pixels['val_accuracy']:.3f}, "
      f"tolerance: {probe.tolerance:.3f}, the base helps: {probe.base_helps}")
print("advice:", probe.build_kwargs())""",
    ),
    (
        "md",
        """\
The plot shows the same: accuracy by depth (the line), the raw-pixel baseline
(dash-dot), the recommended cut (a vertical line, when there is one) and the
blocks to unfreeze (shaded).""",
    ),
    ("code", "probe.plot();"),
    (
        "md",
        """\
## `cut=`: build on a lower block

On `shapes_target` the top block is the best one: the base's features fit the
task all the way up, so the probe keeps the whole base. A task far from the
base's source is different. `textures` (8 texture classes; the base was
pretrained on shapes) peaks in the middle of the base, and its top blocks lose
accuracy: the probe advises a cut.

`build_model(..., cut="auto", data=train)` runs the probe and cuts where it
says, in one line; `cut="block_name"` (or a block index) cuts by hand. The cut
base is a smaller model with a shorter block map, and everything else (unfreeze
counts, `fine_tune`, saving) works on it as on the whole base.""",
    ),
    (
        "code",
        """\
x_tex, y_tex = tltf.datasets.make_images("textures", per_class=20, image_size=SIZE, seed=0)
texture_model = tltf.build_model(base, num_classes=tltf.datasets.num_classes("textures"),
                                 cut="auto", data=(x_tex, y_tex))
print("blocks of the cut base:", tltf.model_info(texture_model).block_map.names)""",
    ),
    (
        "md",
        """\
## Learning rates: the defaults, or `find`

The defaults, `head_lr=1e-3` and `fine_tune_lr="auto"` (1e-4; 3e-4 from 1,000
training images, 15 a class), suit most tasks. When
training is unstable or barely moves, `find_lr` sweeps the rate exponentially,
one batch per step, and suggests a tenth of the rate where the smoothed loss is
lowest. It puts the model back exactly as it was: run it on a model before
training it. `fine_tune(model, train, val, head_lr="find", fine_tune_lr="find")`
runs it inside `fine_tune` (for stage 2, when stage 2 starts) and reports each
rate in one line.""",
    ),
    (
        "code",
        """\
model = tltf.build_model(base, num_classes)
lr = tltf.find_lr(model, (x_train, y_train), stage="head", seed=0)
lr.plot();""",
    ),
    (
        "md",
        """\
## Tune the number of unfrozen blocks

A grid over a few depths, including the probe's recommendation, with the other
choices fixed at `fine_tune`'s and `build_model`'s defaults (rates 1e-3 and
1e-4, no dropout, no hidden layer). 0 blocks means the head only. All trials
share the same head settings, so stage 1 trains once and the other trials reuse
it (column `stage 1`). Each trial's score is its best `val_accuracy` over stage
2; to keep the notebook short, each trial runs 3 stage-2 epochs (`tune`'s
default is 5).

The project folder keeps every trial: run the cell again and finished trials are
not repeated (`overwrite=True` starts over).""",
    ),
    (
        "code",
        """\
depths = sorted({0, probe.unfreeze, 6})
result = tltf.tune(
    base, (x_train, y_train), (x_val, y_val), num_classes=num_classes,
    search={"unfreeze": depths, "fine_tune_lr": 1e-4, "head_lr": 1e-3,
            "head_dropout": 0.0, "head_units": 0},
    tuner="grid", max_trials=len(depths),
    head_epochs=5, fine_tune_epochs=3,
    directory=WORK, project_name="unfreeze_depth", seed=0, verbose=0,
)
print(result.summary())""",
    ),
    (
        "md",
        """\
The depth-vs-metric plot: the best validation accuracy per depth (line), every
trial (dots), and the mean seconds per stage-2 epoch (dashed): the price of each
depth. `tune` also wrote it, with the table as CSV and JSON and the best model,
into the project folder.""",
    ),
    (
        "code",
        """\
print({key: Path(path).name for key, path in result.paths.items()})
tltf.plot_tuning(result.table, result.objective);""",
    ),
    (
        "code",
        """\
best = result.best_model  # restored from its best stage-2 epoch
accuracy = tltf.evaluate(best, (x_val, y_val)).accuracy
print(f"best: {result.best_values['unfreeze_blocks']} blocks, val accuracy {accuracy:.3f}")""",
    ),
    (
        "md",
        """\
To search more (learning rates, head width and dropout, BatchNorm policy), widen
`search`, e.g. `{"unfreeze": (0, 8), "fine_tune_lr": (1e-5, 1e-3)}` with
`tuner="bayesian"`. With a small validation set, differences of a few points are
noise: the probe's standard-error tolerance is a good guide, and `tune` prints a
note when its validation set is too small to tell the trials apart (with
`verbose=1`). The best model trained on the training images alone, for the
trials' fixed epochs: `result.refit((x_all, y_all))` trains the best values once
more on every labelled image with `fine_tune`'s defaults (from the shell:
`tltf tune --refit`, which writes `refit.keras`). On 20 images per class of
three real tasks, `fine_tune`'s defaults scored 0.843 on average, the refit
0.823 and the search's own best model 0.787 (docs/tuning.md).""",
    ),
]


# -- 04: your own images and TFLite ----------------------------------------------
OWN_DATA = [
    (
        "md",
        """\
# 4. Your own images, and export to TFLite

Your data as an image folder, one subfolder per class:

```
my_images/
  arc/0.png  arc/1.jpg ...
  lens/0.png ...
```

`tltf.load_data` reads it (jpg, png, bmp, gif; grayscale and RGBA become RGB;
unreadable files are skipped and listed), splits off a stratified, seeded
validation set and resizes every image for the model. After fine-tuning, the
model is exported to TFLite, in float32 and fully quantized int8, and the
TFLite predictions are compared with Keras's.

About a minute on 2 CPU cores.""",
    ),
    ("code", SETUP),
    ("md", BASE_NOTE),
    ("code", BASE_CELL),
    (
        "md",
        """\
## Make an image folder

We write procedural images as PNG and JPEG files, plus one broken file, to stand
in for your photos. A separate folder holds test images.""",
    ),
    (
        "code",
        """\
from PIL import Image


def write_folder(root, images, labels, names):
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


names = tltf.datasets.class_names("shapes_target")
x, y = tltf.datasets.make_images("shapes_target", per_class=20, image_size=SIZE, seed=0)
photos = write_folder(WORK / "my_images", x, y, names)
(photos / "arc" / "broken.jpg").write_bytes(b"not really a jpeg")
x, y = tltf.datasets.make_images("shapes_target", per_class=10, image_size=SIZE, seed=2)
test_photos = write_folder(WORK / "my_test_images", x, y, names)
print(sorted(p.name for p in photos.iterdir()))""",
    ),
    (
        "md",
        """\
## Load it

`validation_split=0.2` holds out 20% of each class. Images come out as float32
RGB in [0, 255]: the model does its own preprocessing.""",
    ),
    (
        "code",
        """\
data = tltf.load_data(photos, image_size=SIZE, validation_split=0.2, seed=0)
print(f"{data.num_train} training and {data.num_validation} validation images, "
      f"{data.num_classes} classes, input shape {data.input_shape}")
print("skipped:", data.skipped)""",
    ),
    (
        "md",
        """\
## Fine-tune and evaluate

`fine_tune` takes the bundle directly (its validation split is used), here with
its defaults (notebook 1 says what they choose). `evaluate` reads the test folder
the same way `load_data` does.""",
    ),
    (
        "code",
        """\
model = tltf.build_model(base, data.num_classes, input_shape=data.input_shape)
history = tltf.fine_tune(model, data, seed=0, verbose=0)
report = tltf.evaluate(model, test_photos, top_k=3)
report.print()""",
    ),
    ("code", "report.plot_confusion();"),
    (
        "md",
        """\
`predict` gives the top-k labels of new images (files, a folder or an array);
`tltf.write_predictions(rows, "predictions.csv")` saves them.""",
    ),
    (
        "code",
        """\
files = sorted((test_photos / "lens").iterdir())[:3]
for row in tltf.predict(model, files, class_names=data.class_names, top_k=2):
    print(Path(row["file"]).name, row["labels"], row["scores"])""",
    ),
    (
        "md",
        """\
## Export to TFLite

`export_model` writes `.keras`, a SavedModel folder, or TFLite (`.tflite`) in four
flavours: float32, `quantize="float16"`, `"dynamic"` (int8 weights) and `"int8"`
(weights and activations in int8, calibrated on `representative_data`). Every
flavour keeps float32 input and output, so it takes the same raw pixels as the
Keras model. `tflite_predict` runs a `.tflite` file with the LiteRT interpreter.""",
    ),
    (
        "code",
        """\
float32_path = tltf.export_model(model, WORK / "model.tflite")
int8_path = tltf.export_model(model, WORK / "model_int8.tflite", quantize="int8",
                         representative_data=data)
for path in (float32_path, int8_path):
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")""",
    ),
    (
        "md",
        """\
## Compare TFLite with Keras

float32 should match Keras to rounding error; int8 approximates the
probabilities, so we compare its top-1 class with Keras's.""",
    ),
    (
        "code",
        """\
images = tltf.datasets.make_images("shapes_target", per_class=5, image_size=SIZE, seed=3)[0]
images = images.astype("float32")
keras_probs = model.predict(images, verbose=0)
float32_probs = tltf.tflite_predict(float32_path, images)
int8_probs = tltf.tflite_predict(int8_path, images)
top1 = keras_probs.argmax(axis=1)
print(f"float32: max |difference| {np.abs(float32_probs - keras_probs).max():.2e}, "
      f"top-1 agreement {np.mean(float32_probs.argmax(axis=1) == top1):.3f}")
print(f"int8:    max |difference| {np.abs(int8_probs - keras_probs).max():.2e}, "
      f"top-1 agreement {np.mean(int8_probs.argmax(axis=1) == top1):.3f}")""",
    ),
    (
        "md",
        """\
With real data, compare on your own validation images, and keep the float32 or
float16 model if int8's agreement is too low. The command line does the same:
`tltf export model.keras --quantize int8 --representative my_images/ --output model_int8.tflite`
(see `tltf export --help`).""",
    ),
]


# -- 05: choosing the base and the blocks; interpolation and soups ---------------
CHOOSING = [
    (
        "md",
        """\
# 5. Which base, which blocks, and how far from the pretrained weights

Three questions around `fine_tune`, each answered by one tool:

1. **Which base?** `tltf.rank_bases` scores candidate bases for your data from
   one frozen forward pass each, in seconds per base, before training any.
2. **Which blocks?** `fine_tune(..., unfreeze={"range": [first, last]})` trains
   any contiguous blocks of the base, the bottom ones too, not only the top.
3. **How far from the pretrained weights?** `tltf.interpolate` mixes the
   weights of the stage-1 model (the head trained on the frozen base) with those
   of a fine-tuned model (WiSE-FT); `fine_tune(..., wise="auto")` picks the mix
   on validation data; `tltf.soup` averages fine-tuned models, keeping each only
   if it helps (a greedy soup).

The task here is small (10 training images per class), so the effects below are
small: a few test images either way, within the noise of a 240-image test set.
The notebook shows how to call each tool and how to read what it prints; what
each did on real data is in [docs/ranking.md](../docs/ranking.md),
[docs/robust.md](../docs/robust.md), [docs/averaging.md](../docs/averaging.md)
and `benchmarks/RESULTS.md`. A little over a minute on 2 CPU cores.""",
    ),
    ("code", SETUP),
    (
        "md",
        """\
## The base and the task

The base is the demo base that ships with tltf (notebook 1): a MobileNetV3Small
pretrained from scratch on 16 procedural shapes. Every model below is built
with `tltf.build_model("demo", ...)`, which loads a fresh copy of it, so that
no run starts from weights that an earlier run trained (a model built from a
loaded `Base` object trains that object's weights).

The task is `shapes_target`, 12 shapes the base never saw, with every image
**inverted** (`255 - x`): the same shapes and labels, in pixels unlike the
base's training images. That is an *input-level shift*, the case that section
2 is about. A second, noisy copy of the test images (Gaussian noise, sigma 48 of
255) is a further shift that no model sees in training; section 3 uses it.""",
    ),
    (
        "code",
        """\
import matplotlib.pyplot as plt

base = tltf.load_base("demo")
SIZE = base.input_shape[0]  # 64 px
print(f"base: {base.name}, {base.info['weights']}, {len(base.block_map)} blocks:")
print(base.block_map.names)

task = "shapes_target"
num_classes = tltf.datasets.num_classes(task)
x_train, y_train = tltf.datasets.make_images(task, per_class=10, image_size=SIZE, seed=0)
x_val, y_val = tltf.datasets.make_images(task, per_class=10, image_size=SIZE, seed=1)
x_test, y_test = tltf.datasets.make_images(task, per_class=20, image_size=SIZE, seed=2)
x_train, x_val, x_test = (255 - x for x in (x_train, x_val, x_test))  # inverted
rng = np.random.default_rng(0)
x_noisy = np.clip(x_test + rng.normal(0, 48, x_test.shape), 0, 255).astype("uint8")
print(f"{len(x_train)} training, {len(x_val)} validation, {len(x_test)} test images")

fig, axes = plt.subplots(3, 6, figsize=(9, 4.8))
for label, column in enumerate(axes.T):
    image = x_test[y_test == label][0]
    for ax, shown in zip(column, (255 - image, image, x_noisy[y_test == label][0])):
        ax.imshow(shown)
        ax.axis("off")
for ax, title in zip(axes[:, 0], ("original", "inverted: the task", "noisy test copy")):
    ax.set_title(title, fontsize=8, loc="left")
plt.show()""",
    ),
    (
        "md",
        """\
## 1. Rank the candidate bases before training

Three candidates, of the three kinds `rank_bases` takes:

- `"demo"`: a name (registry names such as `"vgg16"` work the same way);
- the demo base **cut** after its middle block, `expanded_conv_5`, and saved
  with `save_base`: a saved base is a folder, and its path is a candidate;
- a MobileNetV3Small with **random weights**, as a `Base` object: it transfers
  nothing, so it marks the bottom of the scale.

`rank_bases` runs each candidate once over the training images, frozen, and
scores its pooled features three ways: LogME (the evidence of a Bayesian linear
model of the labels on the features), the leave-one-out accuracy of a
5-nearest-neighbour classifier, and the leave-one-out accuracy of tltf's ridge
probe. Nothing is trained. It prints a line per candidate, then the table.""",
    ),
    (
        "code",
        """\
from tltf.bases.cut import cut_base

half, _ = cut_base(base, "expanded_conv_5")  # the blocks up to expanded_conv_5
half_path = tltf.save_base(half, WORK / "demo_half")
keras.utils.set_random_seed(0)
random_base = tltf.load_base("mobilenet_v3_small", weights=None, input_shape=(SIZE, SIZE, 3))

candidates = {"demo": "demo", "demo, cut": half_path, "random weights": random_base}
ranking = tltf.rank_bases(candidates, (x_train, y_train))""",
    ),
    (
        "md",
        """\
**How to read it.** The table is ordered by LogME (the `*` column; `score=`
changes it), and each score's rank is in parentheses. `block` is the block the
ridge score comes from, `features` the width of the pooled features, `seconds`
the time to load, run and score the candidate. The last line gives Kendall's
tau between each pair of scores over the candidates: +1 when two scores put
the bases in the same order. Published comparisons find that such scores often
disagree; where they do, treat the ranking as a prompt to check, not a verdict.

The plot shows the same: one panel per score, and the time per base.""",
    ),
    ("code", "ranking.plot();"),
    (
        "md",
        """\
The scores estimate what fine-tuning will reach; they do not measure it. On 3
real tasks with 5 bases (docs/ranking.md), the base ranked first by LogME or by
the ridge probe was within 0.05 points of the best fine-tuned base on average,
and ranking all 5 took 11.6 times less time than fine-tuning all 5; the kNN
score picked a weak base on one task. On the command line:
`tltf rank --data photos/ --bases demo vgg16 --plot rank.png`.""",
    ),
    (
        "md",
        """\
## 2. Any blocks, not only the top

Lee et al. 2023 ("surgical fine-tuning") found that an input-level shift is
best served by tuning the *first* blocks of the base, and a change of labels by
tuning the last ones. `unfreeze={"range": [first, last]}` trains any contiguous
blocks: both ends included, block names or positions from the bottom
(negative ones count from the top).

Stage 1 runs once: `fine_tune(..., fine_tune_epochs=0)` trains the head on the
frozen base and stops. Then three copies of that model go through stage 2
alone (`head_epochs=0`), and differ only in the blocks they train: the bottom
two (`{"range": [0, 1]}`: `stem` and `expanded_conv`), two in the middle (a
range by block names) and the top two (`unfreeze=2`, what the defaults would
train). Each runs 3 epochs at 1e-3, ten times the default rate, so that
the weights move visibly in so few steps, and with `keep_best=False`, so that
each ends with its fine-tuned weights: by default the guard would keep stage 1's
weights wherever stage 2 does not lower the validation loss. Section 3 uses
these models again.""",
    ),
    (
        "code",
        """\
def test_accuracy(model):
    \"\"\"Accuracy on the test images and on their noisy copy.\"\"\"
    images = np.concatenate([x_test, x_noisy]).astype("float32")
    right = model.predict(images, verbose=0).argmax(axis=1) == np.tile(y_test, 2)
    return right[: len(x_test)].mean(), right[len(x_test) :].mean()


keras.utils.set_random_seed(0)
stage1 = tltf.build_model("demo", num_classes)
tltf.fine_tune(stage1, (x_train, y_train), (x_val, y_val), fine_tune_epochs=0,
               seed=0, verbose=0)

fine_tuned = {}
ranges = {
    "bottom two": {"range": [0, 1]},
    "middle two": {"range": ["expanded_conv_4", "expanded_conv_5"]},
    "top two": 2,
}
for name, unfreeze in ranges.items():
    print(f"--- {name}")
    model = tltf.interpolate(stage1, stage1, 0.0)  # an exact copy (section 3)
    tltf.fine_tune(model, (x_train, y_train), (x_val, y_val), head_epochs=0,
                   unfreeze=unfreeze, fine_tune_lr=1e-3, fine_tune_epochs=3,
                   keep_best=False, seed=0, verbose=2)
    fine_tuned[name] = model

for name, model in {"stage 1": stage1, **fine_tuned}.items():
    test, noisy = test_accuracy(model)
    print(f"{name:10s} test accuracy {test:.3f}, noisy test {noisy:.3f}")""",
    ),
    (
        "md",
        """\
The `tltf: stage 2` lines name the blocks each run trained. `block_summary`
shows which blocks the bottom-range run left trainable, and a comparison with
`base` (loaded, never trained) shows which blocks' weights changed: only the
two in the range; the others are equal bit for bit.""",
    ),
    (
        "code",
        """\
tltf.block_summary(fine_tuned["bottom two"])
tuned_base = tltf.model_info(fine_tuned["bottom two"]).base


def changed(layer):
    before = base.model.get_layer(layer).get_weights()
    after = tuned_base.get_layer(layer).get_weights()
    return any(not np.array_equal(b, a) for b, a in zip(before, after))


print("blocks whose weights changed:",
      [block.name for block in base.block_map if any(map(changed, block.layers))])""",
    ),
    (
        "md",
        """\
On this task the three ranges and stage 1 end within a few points of each
other (one test image is 0.4 points), and which comes first changes from run to
run. In `benchmarks/surgical.py` (inverted, noisy and blurred copies of the
shapes and of real digits, 12 runs), every choice of blocks ended within half a
point of the others on average, the bottom blocks included: a range is an
option to try when your images differ from the base's, not a better default.
Two more ways to choose blocks:

- `fine_tune(model, train, val, unfreeze="all", lr_policy="auto_rgn")`
  (Auto-RGN) trains every block and, at every step, scales each block's rate by
  its relative gradient norm `||grad|| / ||w||`: the blocks the task pulls on
  hardest train fastest, with no range to choose.
- `SearchSpace.unfreeze_offset` lets `tltf.tune` search *where* the unfrozen
  blocks sit, not only how many: `search={"unfreeze": [1, 2],
  "unfreeze_offset": (0, 6)}` tries every one- and two-block range in the top
  eight blocks.""",
    ),
    (
        "md",
        """\
## 3. Interpolation and soups

### `interpolate`: the line from stage 1 to the fine-tuned model

`tltf.interpolate(stage1, tuned, alpha)` is a new model whose every weight is
`(1 - alpha) * stage1 + alpha * tuned`; alpha 0 and 1 give back the two ends
exactly (so `interpolate(stage1, stage1, 0.0)` above made exact copies).
`into=` reuses one model for every alpha. The fine-tuned end here is the
top-two run, the one that trains what the defaults would; every point is scored
on the test images and on their noisy copy.""",
    ),
    (
        "code",
        """\
alphas = [0, 0.25, 0.5, 0.75, 1]
curve, mixed = [], None
for alpha in alphas:
    mixed = tltf.interpolate(stage1, fine_tuned["top two"], alpha, into=mixed)
    curve.append(test_accuracy(mixed))
curve = np.array(curve)

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(alphas, curve[:, 0], "o-", label="test images")
ax.plot(alphas, curve[:, 1], "s--", label="noisy test images")
ax.set_xlabel("alpha (0: stage 1, 1: fine-tuned)")
ax.set_ylabel("accuracy")
ax.set_xticks(alphas)
ax.legend()
ax.set_title("WiSE-FT: interpolating the weights")
plt.show()""",
    ),
    (
        "md",
        """\
**How to read it.** WiSE-FT (Wortsman et al. 2022) found, with large pretrained
models, that points between the two ends can beat both on shifted data: the mix
keeps some of the pretrained features' robustness and some of the fine-tuned
model's fit. Where fine-tuning helps, the clean curve rises towards alpha 1;
where it overfits, it falls, and the interpolation gives back what fine-tuning
lost, a step at a time. Here the two ends are a few points apart (one test
image is 0.4 points), so the shape of the curve is mostly noise. On 3 real tasks
(`benchmarks/soups.py`), the mix at alpha 0.5 kept about a point more than plain
fine-tuning on corrupted images, at about half a point on clean ones, with all
of the gain on one task.

### `fine_tune(..., wise="auto")`: pick the mix on validation data

`wise="auto"` does this inside one `fine_tune` call: it keeps stage 1's weights
when stage 2 begins, tries alpha 0, 0.25, 0.5, 0.75 and 1 at the end, and keeps
the best on the validation data (by its loss; larger alphas win ties). One
`tltf: wise:` line reports the alpha and every score (the loss negated, so
higher is better). In your own code it is one call on a new model,
`fine_tune(model, train, val, wise="auto")`; here it reuses stage 1 and the
top-two settings. It is a run of its own, so its fine-tuned end, and its
scores, may differ a little from the curve above. Alpha 0 means that the
validation data preferred stage 1's weights.""",
    ),
    (
        "code",
        """\
wise = tltf.interpolate(stage1, stage1, 0.0)  # a copy of stage 1
tltf.fine_tune(wise, (x_train, y_train), (x_val, y_val), head_epochs=0, wise="auto",
               unfreeze=2, fine_tune_lr=1e-3, fine_tune_epochs=3, keep_best=False,
               seed=0, verbose=2)
test, noisy = test_accuracy(wise)
print(f"wise='auto': test accuracy {test:.3f}, noisy test {noisy:.3f}")""",
    ),
    (
        "md",
        """\
### A greedy soup

`tltf.soup(models, val)` follows Wortsman et al. 2022 ("Model soups"): it scores
every model on the validation data, starts from the best, and adds each next
one to a uniform average of the weights only if the average's validation score
does not drop. The ingredients must share an architecture and, to average well,
a starting point: here the three fine-tuned copies of `stage1`, which trained
different blocks. The soup is never worse than its best ingredient *on the data
used to choose it*; on other data it can be, so it is scored on the test images
too. `TuneResult.soup(val)` does the same with the best trials of a `tltf.tune`
search (trials that share a head share stage 1).""",
    ),
    (
        "code",
        """\
soup = tltf.soup(list(fine_tuned.values()), (x_val, y_val), names=list(fine_tuned))
test, noisy = test_accuracy(soup.model)
print(f"soup of {' + '.join(soup.kept)}: test accuracy {test:.3f}, noisy test {noisy:.3f}")""",
    ),
    (
        "md",
        """\
The table lists each ingredient's own validation accuracy, the soup's with it,
and whether it was kept; `soup.kept`, `soup.scores` and `soup.tried` hold the
same, and `soup.model` is a plain model that saves to `.keras`. When adding an
ingredient would lower the validation score, the soup is the best ingredient
alone. On 3 real tasks (`benchmarks/soups.py`), the soup of a 5-trial search
beat the search's best trial by under a point on clean test images and by about
2 points on corrupted ones.

## What this notebook showed, and what it did not

- `rank_bases` ordered three bases in seconds, without training any; on real
  data its LogME and ridge scores picked the best base (docs/ranking.md).
- A range unfreeze trains exactly the blocks in the range, the bottom ones too.
  Here and in the benchmark, which blocks trained changed the accuracy by a few
  points at most, and the bottom blocks were not reliably better than the top
  ones: it is an option, not a default.
- Interpolation, `wise="auto"` and soups cost little once the models exist.
  On this small task their effects are a few test images either way; on real
  tasks their gains on shifted images were about a point or two, on some tasks
  and not others, and none of them became a default.""",
    ),
]

NOTEBOOKS = {
    "01_quick_start.ipynb": QUICK_START,
    "02_schedule_and_callbacks.ipynb": SCHEDULE,
    "03_tuning_unfreeze_depth.ipynb": TUNING,
    "04_own_data_and_tflite.ipynb": OWN_DATA,
    "05_choosing_base_and_blocks.ipynb": CHOOSING,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook without outputs; cell ids are stable, so rebuilding is a no-op."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        make = (
            nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        )
        notebook.cells.append(make(source, id=f"nb{stem}-{i:02d}"))
    nbformat.validate(notebook)
    return notebook


def render(name: str) -> str:
    """The file text of a notebook, as committed."""
    return nbformat.writes(build(name, NOTEBOOKS[name])) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
            print("wrote", path)
    if check and stale:
        print("out of date (run notebooks/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
