"""The transfer-learning demo: a pretrained base against training from scratch.

`run_demo` takes the demo base (pretrained on the procedural `shapes_source` task,
see `tltf.pretrain.default_demo_base`) and, for each k, fine-tunes it on only k
labelled images per class of `shapes_target`, a task whose 12 classes share no
label with the source. The same architecture, trained from scratch on the same
images for the same number of epochs, is the baseline. All models are scored on
one fixed held-out test set.

The test set is also passed as `validation_data` (evaluated every few epochs), so
that the learning curves show test accuracy. No decision depends on it: epochs and
learning rates are fixed in advance and the stage-2 guard (`keep_best`) is off, so
the reported accuracies are unbiased.

Fairness of the scratch baseline: it is `tltf.build_model(<architecture>,
weights=None)` with the base's constructor arguments and input size, with every
block unfrozen and BatchNorm training (`fine_tune(head_epochs=0, unfreeze="all",
bn="train")`), for the same total epochs, batch size and training images as the
transfer run, with the same augmentation (`DemoSettings.augment`), at the
learning rate usual from scratch (Adam, 1e-3). Its BatchNorm momentum is set to
the base's pretraining momentum (0.9): with Keras's 0.99, the moving statistics
would lag the few dozen steps of a few-shot run and score the model at chance for
reasons that have nothing to do with transfer. (Checked without augmentation: at
k=20 the scratch model scores 0.975 on its own training images in inference mode,
so its low test accuracy is overfitting, not a BatchNorm artefact.)

The batch size is 12, the number of classes, so every batch is full for every k
(a ragged last batch would cost TensorFlow one more trace per stage).

The run folder (by default `./runs/demo-<timestamp>`) is built in a temporary
folder next to it and moved into place in one step. It holds:

- `summary.json`: the results (schema below).
- `curves/k<k>_transfer.png`, `curves/k<k>_scratch.png`: one learning-curve plot
  per training run (loss, and train/test accuracy per epoch); transfer plots mark
  the stage boundary.
- `accuracy_vs_k.png`: test accuracy against k for the three models.
- `confusion_k<k>.png`: the confusion matrix of the fine-tuned model at k=10 (or
  the k closest to 10) on the test set.

`summary.json` schema (version 1):

- `schema` (int): 1.
- `tltf_version` (str), `created` (str, ISO 8601 UTC), `quick` (bool),
  `seed` (int).
- `task` (str): "shapes_target"; `class_names` (list of str).
- `image_size` (int): the images' height and width.
- `test_per_class` (int), `test_images` (int): the held-out test set.
- `k_values` (list of int): labelled training images per class.
- `epochs` (dict): `head` and `fine_tune` (transfer stages), `scratch` (their
  sum), `eval_every` (epochs between test evaluations, so that they fall on the
  stage boundary and the last epoch).
- `settings` (dict): `batch_size`, `head_lr`, `fine_tune_lr`, `unfreeze`, `bn`,
  `scratch_lr`, `augment`, `scratch_bn_momentum`.
- `base` (dict): the base's `info` (architecture, source task, images, epochs,
  source accuracies, path, ...).
- `results` (list of dict), one per k, in order:
  - `k` (int), `train_images` (int);
  - `transfer_head_only`, `transfer_fine_tuned`, `scratch` (float): test accuracy
    after stage 1, after stage 2, and of the scratch model;
  - `seconds` (dict): `transfer`, `scratch` wall times of the training runs;
  - `history` (dict): `transfer` and `scratch`, each a dict of per-epoch
    training lists `loss` and `accuracy` (and `stage`, 1 or 2, for transfer),
    and the test-set lists `test_loss` and `test_accuracy`, measured after the
    (1-based) epochs listed in `test_epochs`: every `eval_every` epochs;
  - `curves` (dict): `transfer`, `scratch`: plot paths relative to the folder.
- `confusion` (dict): `k` (int), `labels` (list of str), `matrix` (list of
  lists of int; rows are true classes, columns predictions), `file` (str).
- `files` (dict): `accuracy_vs_k`, `confusion` (paths relative to the folder).
- `wall_seconds` (dict): `base` (getting the base), `total`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tltf import datasets
from tltf._io import atomic_dir
from tltf._version import __version__
from tltf.bases.base import Base, load_saved_base
from tltf.errors import ConfigError, ModelError
from tltf.model import build_model, model_info
from tltf.pretrain import default_demo_base, set_bn_momentum
from tltf.reports import plot_confusion_counts
from tltf.schedule import fine_tune
from tltf.settings import check_epochs

#: Version of the `summary.json` schema.
SUMMARY_SCHEMA = 1

#: Offset between the training seed and the test-set seed.
_TEST_SEED_OFFSET = 104729

#: Batch size of test-set evaluations.
_EVAL_BATCH = 120


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's training recipe.

    Attributes:
        head_epochs: int. Stage-1 epochs (head only).
        fine_tune_epochs: int. Stage-2 epochs.
        test_per_class: int. Test images per class.
        batch_size: int. Batch size (training; tests use 120).
        head_lr: float. Stage-1 learning rate (Adam).
        fine_tune_lr: float. Stage-2 learning rate.
        unfreeze: int or str. Blocks unfrozen in stage 2.
        bn: str. BatchNorm policy of stage 2.
        scratch_lr: float. Learning rate of the scratch baseline.
        augment: bool. Random flips, rotations, zooms, shifts and contrast
            (`tltf.data.augmentation()`) on the training images of every run,
            transfer and scratch alike. Defaults to True.
    """

    head_epochs: int = 8
    fine_tune_epochs: int = 12
    test_per_class: int = 40
    batch_size: int = 12
    head_lr: float = 3e-3
    fine_tune_lr: float = 1e-4
    unfreeze: int | str = 4
    bn: str = "frozen"
    scratch_lr: float = 1e-3
    augment: bool = True

    @property
    def eval_every(self) -> int:
        """Epochs between test evaluations; they hit the stage boundary and the end."""
        return math.gcd(self.head_epochs, self.fine_tune_epochs) or 1


#: The full demo's recipe.
DEMO_SETTINGS = DemoSettings()

#: A tiny recipe for tests (`quick=True`).
QUICK_SETTINGS = DemoSettings(head_epochs=1, fine_tune_epochs=1, test_per_class=3)


def _check_k_values(k_values) -> list[int]:
    try:
        values = list(k_values)
    except TypeError:
        values = None
    if not values or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
        for k in values
    ):
        raise ConfigError(
            "Expected k_values to be a non-empty list of integers >= 1 (labelled "
            f"images per class), e.g. (5, 10, 20). Received: k_values={k_values!r}"
        )
    return sorted({int(k) for k in values})


def _default_out_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"demo-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"demo-{stamp}-{n}"
    return out


def _check_out_dir(out_dir) -> Path:
    out = _default_out_dir() if out_dir is None else Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"Run folder {str(out)!r} already exists and is not empty. Choose "
            "another out_dir (--out), or delete that folder."
        )
    return out


def _fresh_base(base: Base) -> Base:
    """A new copy of a saved base, so that no run trains another run's weights."""
    path = base.info.get("path")
    if not path:
        raise ModelError(
            f"The demo needs a base saved to disk (by tltf.pretrain); base "
            f"{base.name!r} has no path."
        )
    return load_saved_base(path)


def _history(history: keras.callbacks.History, eval_every: int) -> dict[str, list]:
    """A run's per-epoch history; test metrics exist every `eval_every` epochs."""
    logs = history.history
    epochs = len(logs["loss"])
    out: dict[str, list] = {
        "loss": [round(float(v), 4) for v in logs["loss"]],
        "accuracy": [round(float(v), 4) for v in logs["accuracy"]],
        "test_epochs": [e for e in range(1, epochs + 1) if e % eval_every == 0],
        "test_loss": [round(float(v), 4) for v in logs.get("val_loss", [])],
        "test_accuracy": [round(float(v), 4) for v in logs.get("val_accuracy", [])],
    }
    if "stage" in logs:
        out["stage"] = [int(v) for v in logs["stage"]]
    return out


def _quietly(verbose: int):
    if verbose >= 2:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


def _fit(model, data, test, settings: DemoSettings, seed: int, verbose: int, **kwargs):
    """Runs `tltf.fine_tune`; returns the history dict and the wall time."""
    import tensorflow as tf

    test_ds = tf.data.Dataset.from_tensor_slices(test).batch(_EVAL_BATCH)
    start = time.perf_counter()
    with _quietly(verbose):
        history = fine_tune(
            model,
            data,
            test_ds,
            batch_size=settings.batch_size,
            seed=seed,
            verbose=0,
            validation_freq=settings.eval_every,
            augment=settings.augment or None,
            **kwargs,
        )
    return _history(history, settings.eval_every), time.perf_counter() - start


def _train_transfer(base, data, test, settings, seed, verbose):
    keras.utils.set_random_seed(seed)
    classes = datasets.num_classes(datasets.TARGET_TASK)
    model = build_model(_fresh_base(base), classes)
    history, seconds = _fit(
        model,
        data,
        test,
        settings,
        seed,
        verbose,
        head_epochs=settings.head_epochs,
        fine_tune_epochs=settings.fine_tune_epochs,
        head_lr=settings.head_lr,
        fine_tune_lr=settings.fine_tune_lr,
        unfreeze=settings.unfreeze,
        bn=settings.bn,
        # The test set is the validation data here (for the curves): the stage-2
        # guard must not pick epochs on it.
        keep_best=False,
    )
    return model, history, seconds


def _train_scratch(base, data, test, settings, seed, verbose):
    info = base.info
    keras.utils.set_random_seed(seed)
    model = build_model(
        info["architecture"],
        datasets.num_classes(datasets.TARGET_TASK),
        weights=None,
        input_shape=base.input_shape,
        **info.get("constructor_kwargs", {}),
    )
    set_bn_momentum(model_info(model).base, float(info.get("bn_momentum", 0.9)))
    history, seconds = _fit(
        model,
        data,
        test,
        settings,
        seed,
        verbose,
        head_epochs=0,
        fine_tune_epochs=settings.head_epochs + settings.fine_tune_epochs,
        fine_tune_lr=settings.scratch_lr,
        unfreeze="all",
        bn="train",
        keep_best=False,
    )
    return model, history, seconds


def _accuracy_at(history: dict, epoch: int) -> float | None:
    """Test accuracy after `epoch` epochs (1-based); None when not evaluated."""
    if epoch not in history["test_epochs"]:
        return None
    return history["test_accuracy"][history["test_epochs"].index(epoch)]


def _confusion(model, images, labels, classes: int) -> np.ndarray:
    predictions = np.argmax(model.predict(images, batch_size=64, verbose=0), axis=-1)
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


# -- plots ----------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global backend change

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, ncols)


def _plot_curves(path: Path, history: dict, title: str, boundary: int | None):
    from matplotlib.ticker import MaxNLocator

    figure, (loss_ax, acc_ax) = _figure(9, 3.4, ncols=2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    loss_ax.plot(epochs, history["loss"], label="train")
    acc_ax.plot(epochs, history["accuracy"], label="train")
    if history["test_epochs"]:
        test_epochs = history["test_epochs"]
        loss_ax.plot(test_epochs, history["test_loss"], marker="o", label="test")
        acc_ax.plot(test_epochs, history["test_accuracy"], marker="o", label="test")
    for ax, label in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        if boundary:
            ax.axvline(boundary + 0.5, color="gray", linestyle="--", linewidth=1)
            ax.text(
                boundary + 0.5,
                0.98,
                " fine-tuning \u2192",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="gray",
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0, 1.02)
    # One legend for both panels, outside them: it never covers a curve.
    figure.legend(*acc_ax.get_legend_handles_labels(), loc="outside right upper")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return figure


def _plot_accuracy_vs_k(path: Path, results: list[dict], chance: float) -> None:
    figure, ax = _figure(5.5, 4)
    ks = [r["k"] for r in results]
    for key, label, marker in (
        ("transfer_fine_tuned", "transfer (fine-tuned)", "o"),
        ("transfer_head_only", "transfer (head only)", "s"),
        ("scratch", "from scratch", "^"),
    ):
        values = [math.nan if r[key] is None else r[key] for r in results]
        ax.plot(ks, values, marker=marker, label=label)
    ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images per class (k)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("shapes_target: transfer vs. training from scratch")
    figure.savefig(path, dpi=100)


def _plot_confusion(path: Path, matrix: np.ndarray, names: list[str], title: str):
    return plot_confusion_counts(
        matrix, names, title, path, data="test", figsize=(7, 6.2)
    )


# -- the demo -------------------------------------------------------------------
#: The accuracies of a result, in table order.
ACCURACY_KEYS = ("transfer_head_only", "transfer_fine_tuned", "scratch")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(results: list[dict]) -> str:
    """The demo's accuracy table as text: one row per k.

    Args:
        results: list of dict. The `results` of a demo summary.

    Returns:
        The table, with a header line.
    """
    header = ("k", "transfer (head only)", "transfer (fine-tuned)", "scratch")
    rows = [(str(r["k"]), *(_cell(r[key]) for key in ACCURACY_KEYS)) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(
    k_values: Sequence[int] = (5, 10, 20),
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    head_epochs: int | None = None,
    fine_tune_epochs: int | None = None,
    quick: bool = False,
    verbose: int = 1,
    augment: bool = True,
) -> dict[str, Any]:
    """Runs the transfer-vs-scratch demo and writes a run folder.

    For each k, three test accuracies on `shapes_target`, from k labelled images
    per class: the pretrained demo base with a new head (stage 1, base frozen),
    the same model after fine-tuning (stage 2), and the same architecture trained
    from scratch for the same number of epochs, all on augmented images (by
    default). The full demo took about 3.5 minutes on 2 CPU cores with the base
    tltf ships (without it, the first run also pretrains the base: about 4
    minutes, see `tltf.pretrain.default_demo_base`).

    Args:
        k_values: sequence of int. Labelled training images per class. Defaults
            to (5, 10, 20).
        seed: int. Seed of the training images, the test set and the weights.
            Defaults to 0.
        out_dir: str, PathLike or None. The run folder to create; it must not
            exist, or be empty. Defaults to `./runs/demo-<timestamp>`.
        head_epochs: int or None. Stage-1 epochs. Defaults to 8 (1 if quick).
        fine_tune_epochs: int or None. Stage-2 epochs (the top 4 blocks and the
            head, BatchNorm frozen). Defaults to 12 (1 if quick).
        quick: bool. Tiny sizes and a tiny base, for tests; the accuracies mean
            nothing. Defaults to False.
        verbose: int. 0 is silent; 1 prints progress (with Keras progress bars
            if the base must be pretrained) and the table; 2 also the schedule's
            stage lines. Defaults to 1.
        augment: bool. Random flips, rotations, zooms, shifts and contrast on
            the training images of every run, transfer and scratch alike
            (`tltf.data.augmentation()`). Defaults to True.

    Returns:
        The summary (the content of `summary.json`, see the module docstring),
        with `out_dir` added: the run folder's path.

    Raises:
        ConfigError: for invalid k values or epochs, or an existing non-empty
            `out_dir`.

    Example:

    >>> from tltf.demo import run_demo
    >>> summary = run_demo(k_values=(5, 20))
    >>> summary["results"][0]["transfer_fine_tuned"] > summary["results"][0]["scratch"]
    True
    """
    start = time.perf_counter()
    ks = _check_k_values(k_values)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(
            f"Expected seed to be an integer >= 0. Received: seed={seed!r}"
        )
    seed = int(seed)
    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    if head_epochs is not None:
        settings = dataclasses.replace(
            settings, head_epochs=check_epochs(head_epochs, "head_epochs")
        )
    if fine_tune_epochs is not None:
        settings = dataclasses.replace(
            settings,
            fine_tune_epochs=check_epochs(fine_tune_epochs, "fine_tune_epochs"),
        )
    if not isinstance(augment, bool):
        raise ConfigError(
            f"Expected augment to be True or False. Received: augment={augment!r}"
        )
    settings = dataclasses.replace(settings, augment=augment)
    if settings.head_epochs + settings.fine_tune_epochs == 0:
        raise ConfigError(
            "Nothing to train: head_epochs and fine_tune_epochs are both 0."
        )
    out = _check_out_dir(out_dir)

    base = default_demo_base(verbose=1 if verbose else 0, quick=quick)
    if "architecture" not in base.info:
        raise ModelError(
            f"Base {base.info.get('path')!r} was not made by tltf.pretrain (its info "
            "has no architecture). Delete it so that the demo pretrains it again."
        )
    base_seconds = time.perf_counter() - start
    size = int(base.input_shape[0])
    task = datasets.TARGET_TASK
    names = datasets.class_names(task)
    test = datasets.make_images(
        task,
        per_class=settings.test_per_class,
        image_size=size,
        seed=seed + _TEST_SEED_OFFSET,
    )
    if verbose:
        print(
            f"tltf demo: base {base.info['architecture']} pretrained on "
            f"{base.info.get('task')} (val accuracy {base.info.get('val_accuracy')}); "
            f"target {task}: {len(names)} classes, k in {ks}, {len(test[1])} test "
            f"images, {size} px; {settings.head_epochs}+{settings.fine_tune_epochs} "
            f"epochs{', augmented' if settings.augment else ''}."
        )

    results, confusion = [], None
    confusion_k = min(ks, key=lambda k: (abs(k - 10), k))
    for k in ks:
        data = datasets.make_images(task, per_class=k, image_size=size, seed=seed)
        model, transfer, transfer_s = _train_transfer(
            base, data, test, settings, seed, verbose
        )
        if k == confusion_k:
            confusion = _confusion(model, *test, len(names))
        del model
        _, scratch, scratch_s = _train_scratch(
            base, data, test, settings, seed, verbose
        )
        total = settings.head_epochs + settings.fine_tune_epochs
        result = {
            "k": k,
            "train_images": len(data[1]),
            "transfer_head_only": _accuracy_at(transfer, settings.head_epochs),
            "transfer_fine_tuned": _accuracy_at(transfer, total),
            "scratch": _accuracy_at(scratch, total),
            "seconds": {
                "transfer": round(transfer_s, 1),
                "scratch": round(scratch_s, 1),
            },
            "history": {"transfer": transfer, "scratch": scratch},
            "curves": {
                "transfer": f"curves/k{k}_transfer.png",
                "scratch": f"curves/k{k}_scratch.png",
            },
        }
        results.append(result)
        if verbose:
            head, tuned, scratch_acc = (_cell(result[key]) for key in ACCURACY_KEYS)
            print(
                f"tltf demo: k={k}: transfer {head} (head only), {tuned} (fine-tuned) "
                f"in {transfer_s:.0f} s; scratch {scratch_acc} in {scratch_s:.0f} s."
            )

    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "tltf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(quick),
        "seed": seed,
        "task": task,
        "class_names": names,
        "image_size": size,
        "test_per_class": settings.test_per_class,
        "test_images": int(len(test[1])),
        "k_values": ks,
        "epochs": {
            "head": settings.head_epochs,
            "fine_tune": settings.fine_tune_epochs,
            "scratch": settings.head_epochs + settings.fine_tune_epochs,
            "eval_every": settings.eval_every,
        },
        "settings": {
            "batch_size": settings.batch_size,
            "head_lr": settings.head_lr,
            "fine_tune_lr": settings.fine_tune_lr,
            "unfreeze": settings.unfreeze,
            "bn": settings.bn,
            "scratch_lr": settings.scratch_lr,
            "augment": settings.augment,
            "scratch_bn_momentum": float(base.info.get("bn_momentum", 0.9)),
        },
        "base": base.info,
        "results": results,
        "confusion": {
            "k": confusion_k,
            "labels": names,
            "matrix": confusion.tolist(),
            "file": f"confusion_k{confusion_k}.png",
        },
        "files": {
            "accuracy_vs_k": "accuracy_vs_k.png",
            "confusion": f"confusion_k{confusion_k}.png",
        },
        "wall_seconds": {"base": round(base_seconds, 1), "total": None},
    }
    out = _write_run(out, summary, start)
    if verbose:
        print()
        print(format_table(results))
        print(
            f"\ntltf demo: done in {summary['wall_seconds']['total']:.0f} s; "
            f"wrote {out}"
        )
    return {**summary, "out_dir": str(out)}


def _write_run(out: Path, summary: dict, start: float) -> Path:
    """Writes the run folder in a temporary folder, then moves it into place.

    It never replaces what appeared at `out` during the run (only an empty folder).
    """
    with atomic_dir(out, what="demo run folder") as tmp:
        (tmp / "curves").mkdir()
        boundary = summary["epochs"]["head"]
        for r in summary["results"]:
            _plot_curves(
                tmp / r["curves"]["transfer"],
                r["history"]["transfer"],
                f"k={r['k']}: transfer (stage 1: head only, stage 2: fine-tuning)",
                boundary,
            )
            _plot_curves(
                tmp / r["curves"]["scratch"],
                r["history"]["scratch"],
                f"k={r['k']}: from scratch",
                None,
            )
        chance = 1 / len(summary["class_names"])
        _plot_accuracy_vs_k(
            tmp / summary["files"]["accuracy_vs_k"], summary["results"], chance
        )
        conf = summary["confusion"]
        _plot_confusion(
            tmp / conf["file"],
            np.asarray(conf["matrix"]),
            conf["labels"],
            f"Fine-tuned transfer model, k={conf['k']}",
        )
        summary["wall_seconds"]["total"] = round(time.perf_counter() - start, 1)
        (tmp / "summary.json").write_text(
            json.dumps(summary, indent=2, default=_json_default)
        )
    return out


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
