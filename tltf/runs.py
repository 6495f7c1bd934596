"""Run folders: what `tltf train` and `tltf tune` write, and how they write it.

A run folder holds one run, written file by file with atomic writes
(`tltf._io`): a crash or a kill leaves every file either complete or absent,
and `summary.json` is written last, so a folder with a `summary.json` holds a
finished run.

    runs/NAME/
      config.yaml          the resolved config (feed it back with --config)
      history.csv          one row per epoch, with the stage column (rewritten
                           atomically after every epoch)
      tensorboard/         TensorBoard logs (`tensorboard --logdir runs/NAME`)
      best.keras           the best model by schedule.monitor
      last.keras           the model after the last finished epoch
      backup/              the BackupAndRestore state that --resume continues
                           from (removed when the run finishes)
      plots/history.png    learning curves, stage boundary marked
      plots/confusion.png  confusion matrix of best.keras on the validation data
      evaluation.json      per-class precision/recall/F1 and top-k accuracy
      summary.json         written last: what ran, how long, the results

An existing run folder is never touched unless asked: `resume=True` continues
it, `overwrite=True` replaces it, but only once the config is valid and the data
loaded; the old run is moved aside (`.NAME.old`) and deleted when the new run
finishes, or moved back if the new one fails.

Example:

>>> from tltf.config import TrainConfig
>>> from tltf.runs import train
>>> config = TrainConfig.from_dict({"model": {"base": "bases/tiny"},
...                                 "data": {"train": "photos/", "val_fraction": 0.2},
...                                 "schedule": {"head_epochs": 2, "fine_tune_epochs": 2}})
>>> summary = train(config, out="runs/first")
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras

from tltf._io import atomic_write_json, atomic_write_text
from tltf.bases.base import BASE_INFO_FILE
from tltf.bases.registry import get_spec, shipped_base_path
from tltf.config import TrainConfig, TuneConfig, dump_config, load_config_file
from tltf.errors import ConfigError, ModelError
from tltf.freezing import trainable_blocks
from tltf.model import build_model, load_model, model_info
from tltf.schedule import fine_tune

__all__ = [
    "CONFIG_FILE",
    "HISTORY_FILE",
    "SUMMARY_FILE",
    "HistoryCSV",
    "RunFolder",
    "class_names_of",
    "default_run_dir",
    "find_run",
    "plot_run_history",
    "read_history",
    "resolve_base",
    "set_class_names",
    "still_improving_hint",
    "train",
    "tune",
]

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "summary.json"
EVALUATION_FILE = "evaluation.json"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
PLOTS_DIR = "plots"


# -- the folder ----------------------------------------------------------------------
def default_run_dir(kind: str = "train", root: str | os.PathLike = "runs") -> Path:
    """A fresh `runs/<kind>-<YYYYmmdd-HHMMSS>` path (suffixed when taken)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(root) / f"{kind}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(root) / f"{kind}-{stamp}-{n}"
    return out


class RunFolder:
    """One run folder, and the rules for an existing one.

    `RunFolder(...)` only checks (nothing is written): an existing, non-empty
    folder needs `resume=True` or `overwrite=True`. `begin()` creates the folder
    (moving an old run aside for `overwrite`); `commit()` ends a successful run
    (the old run is deleted); `abort()` ends a failed one (the old run is moved
    back; a fresh or resumed run keeps its partial files for `--resume`).

    Args:
        path: str, PathLike or None. The folder. Defaults to
            `runs/<kind>-<timestamp>`.
        kind: str. "train" or "tune", for the default name. Defaults to "train".
        resume: bool. Continue the run in an existing folder. Defaults to False.
        overwrite: bool. Replace an existing run. Defaults to False.

    Raises:
        ConfigError: the folder exists and neither flag is given, `resume` names
            no run, a finished run is resumed, or both flags are given.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        kind: str = "train",
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.path = default_run_dir(kind) if path is None else Path(path).expanduser()
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self._old: Path | None = None
        self._began = False
        if resume and overwrite:
            raise ConfigError(
                "Pass --resume (continue the run) or --overwrite (replace it), not "
                "both."
            )
        stale = self.old_path
        if stale.exists():
            raise ConfigError(
                f"An interrupted --overwrite left the previous run of "
                f"{str(self.path)!r} at {str(stale)!r}. Move it back (mv {stale} "
                f"{self.path}) or delete it, then run again."
            )
        exists = self.path.exists()
        if exists and not self.path.is_dir():
            raise ConfigError(
                f"--out {str(self.path)!r} is a file, not a run folder. Choose "
                "another --out."
            )
        nonempty = exists and any(self.path.iterdir())
        if resume:
            if not (self.path / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"Nothing to resume in {str(self.path)!r}: it has no "
                    f"{CONFIG_FILE}. Start the run without --resume."
                )
            if (self.path / SUMMARY_FILE).is_file():
                raise ConfigError(
                    f"The run in {str(self.path)!r} has finished (it has "
                    f"{SUMMARY_FILE}); there is nothing to resume. Use --overwrite "
                    "to run it again, or another --out."
                )
        elif nonempty and not overwrite:
            raise ConfigError(
                f"Run folder {str(self.path)!r} already exists. Pass --resume to "
                "continue it, --overwrite to replace it, or choose another --out."
            )

    @property
    def old_path(self) -> Path:
        """Where `overwrite` keeps the previous run until the new one finishes."""
        return self.path.with_name(f".{self.path.name}.old")

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def begin(self) -> None:
        """Creates the folder; with `overwrite`, moves the old run aside first."""
        if self.overwrite and self.path.exists() and any(self.path.iterdir()):
            os.replace(self.path, self.old_path)
            self._old = self.old_path
        self.path.mkdir(parents=True, exist_ok=True)
        self._began = True

    def commit(self) -> None:
        """Ends a finished run: deletes the run it replaced."""
        if self._old is not None:
            shutil.rmtree(self._old, ignore_errors=True)
            self._old = None

    def abort(self) -> str | None:
        """Ends a failed run; returns a note on what was kept, or None.

        A replaced run is moved back. A fresh run that finished no epoch is
        removed (nothing in it is worth resuming); otherwise the partial run stays.
        """
        if not self._began:
            return None
        if self._old is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._old, self.path)
            self._old = None
            return f"the previous run in {self.path} was restored"
        if self.resume or (self.path / HISTORY_FILE).is_file():
            return (
                f"the partial run is kept in {self.path}; continue it with --resume "
                "or replace it with --overwrite"
            )
        shutil.rmtree(self.path, ignore_errors=True)  # no epoch finished
        return None


def find_run(path: str | os.PathLike) -> Path | None:
    """The run folder a path belongs to (the folder, or a file in it), or None."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if (folder / CONFIG_FILE).is_file() or (folder / SUMMARY_FILE).is_file():
        return folder
    return None


# -- class names in the model ---------------------------------------------------------
def set_class_names(model: keras.Model, names: Sequence[str] | None) -> None:
    """Records class names in the model's tltf metadata (saved with it)."""
    if names is None:
        return
    info = model_info(model)
    layer = next(
        layer
        for layer in model.layers
        if getattr(layer, "metadata", None) is info.metadata
    )
    layer.metadata["class_names"] = [str(n) for n in names]


def class_names_of(model: keras.Model) -> list[str] | None:
    """The class names recorded by `set_class_names`, or None."""
    try:
        names = model_info(model).metadata.get("class_names")
    except Exception:  # not a tltf model
        return None
    return list(names) if names else None


# -- history -------------------------------------------------------------------------------
def read_history(path: str | os.PathLike) -> dict[str, list]:
    """Reads a run's `history.csv` into a History-like dict of columns.

    `epoch` is 1-based; empty cells (a metric missing in an epoch) become NaN.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(
                int(value) if key in ("epoch", "stage") and value else _float(value)
            )
    return columns


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class HistoryCSV(keras.callbacks.Callback):
    """Writes `history.csv` after every epoch, atomically, with the stage column.

    Unlike `keras.callbacks.CSVLogger` the file is rewritten whole through a
    temporary file, so a kill never leaves a half-written row; rows are keyed by
    epoch, so a resumed run replaces the epochs it repeats and keeps the others.

    Args:
        path: str or PathLike. The CSV file.
        append: bool. Keep the rows already in the file (for a resumed run).
            Defaults to False.

    Example:

    >>> tltf.fine_tune(model, data, callbacks=[HistoryCSV("run/history.csv")])
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict[str, Any]] = {}
        if append:
            old = read_history(self.path)
            for i, epoch in enumerate(old.get("epoch", [])):
                self.rows[int(epoch)] = {k: v[i] for k, v in old.items()}

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                continue
        if "stage" in row:
            row["stage"] = int(row["stage"])
        # Later epochs of an earlier attempt are stale once this epoch is redone.
        self.rows = {e: r for e, r in self.rows.items() if e < epoch + 1}
        self.rows[epoch + 1] = row
        self.write()

    def write(self) -> None:
        """Writes every row to the file (atomically)."""
        keys: list[str] = []
        for row in self.rows.values():
            keys += [k for k in row if k not in keys]
        first = [k for k in ("epoch", "stage") if k in keys]
        rest = [k for k in keys if k not in first]
        train = sorted(k for k in rest if not k.startswith("val_"))
        train.sort(key=lambda k: (k != "loss", k == "learning_rate"))
        val = [f"val_{k}" for k in train if f"val_{k}" in rest]
        val += sorted(k for k in rest if k.startswith("val_") and k not in val)
        columns = first + train + val
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for epoch in sorted(self.rows):
            row = self.rows[epoch]
            writer.writerow(
                {
                    k: ("" if k not in row or _isnan(row[k]) else _cell(row[k]))
                    for k in columns
                }
            )
        atomic_write_text(self.path, buffer.getvalue())


def plot_run_history(history: dict[str, list], title=None, path=None):
    """`tltf.plot_history` of a `read_history` dict (its epoch column dropped)."""
    from tltf.reports import plot_history

    logs = {k: v for k, v in history.items() if k != "epoch"}
    return plot_history(logs, title=title, path=path)


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


# -- training ----------------------------------------------------------------------------------
def saved_base_folder(base: str) -> Path | None:
    """The folder of a saved base (a shipped name such as "demo", or a path).

    Returns None for a registry name, after checking it.

    Raises:
        UnknownBaseError: an unknown name (with suggestions).
        ModelError: a path that is not a folder.
    """
    shipped = shipped_base_path(base)  # as load_base: shipped names come first
    if shipped is not None:
        return shipped
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if os.sep in base or path.exists():
        raise ModelError(
            f"Base {base!r} is not a folder. Pass a registry name (`tltf bases`), "
            "'demo' (the base shipped with tltf) or the folder of a saved base "
            "(tltf.save_base, tltf.pretrain)."
        )
    get_spec(base)  # an unknown name raises, with suggestions
    return None


def default_image_size(base: str) -> tuple[int, int] | None:
    """The input size a base is built for: its registry size or saved size."""
    folder = saved_base_folder(base)
    if folder is None:
        spec = get_spec(base)
        return spec.default_size, spec.default_size
    try:
        shape = json.loads((folder / BASE_INFO_FILE).read_text())["input_shape"]
        return int(shape[0]), int(shape[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def resolve_base(config: TrainConfig) -> TrainConfig:
    """Checks `model.base`; a saved base records `weights: null` (it has its own).

    A config without a base is returned as it is (`TrainConfig.require` reports
    it when a run needs one).

    Raises:
        UnknownBaseError: an unknown registry name (with suggestions).
        ModelError: a base path that is not a folder.
        ConfigError: a weights file given for a saved base, which ignores it.
    """
    m = config.model
    if not m.base or saved_base_folder(m.base) is None or m.weights is None:
        return config
    if m.weights != "imagenet":
        raise ConfigError(
            f"model.weights={m.weights!r} applies to registry bases, but base "
            f"{m.base!r} is a saved base with its own weights. Drop model.weights "
            "(--weights)."
        )
    return dataclasses.replace(config, model=dataclasses.replace(m, weights=None))


def resolve_image_size(config: TrainConfig) -> tuple[int, int]:
    """`data.image_size`, else `model.input_shape`, else the base's own size."""
    size = config.data.size
    shape = config.model.input_shape
    if size is not None and shape is not None and tuple(shape[:2]) != size:
        raise ConfigError(
            f"data.image_size {list(size)} and model.input_shape {list(shape)} "
            "disagree. Give one of them."
        )
    if size is None and shape is not None:
        size = (int(shape[0]), int(shape[1]))
    if size is None:
        size = default_image_size(config.model.base)
    if size is None:
        raise ConfigError(
            f"Cannot tell the input size of base {config.model.base!r}. Set "
            "data.image_size (--image-size)."
        )
    return size


def load_run_data(config: TrainConfig, image_size: tuple[int, int]):
    """`tltf.data.load_data` for a config's `[data]` section."""
    from tltf.data import load_data

    kwargs = config.data.load_data_kwargs()
    source = kwargs.pop("source")
    return load_data(
        source,
        image_size=image_size,
        task=config.model.task,
        num_classes=config.model.num_classes,
        **kwargs,
    )


def build_run_model(config: TrainConfig, data, image_size: tuple[int, int]):
    """`tltf.build_model` for a config's `[model]` section and the loaded data."""
    m = config.model
    num_classes = m.num_classes or data.num_classes
    if m.task == "binary":
        num_classes = None
    model = build_model(
        m.base,
        num_classes,
        input_shape=(*image_size, 3),
        weights=m.weights,
        weights_dir=m.weights_dir,
        head=m.head,
        task=m.task,
        cut=m.cut,
        # cut="auto" probes the blocks on the run's training data.
        **({"data": data} if m.cut == "auto" else {}),
    )
    if m.cut == "auto":
        _check_unfreeze_below_cut(config, model)
    set_class_names(model, data.class_names)
    return model


def _check_unfreeze_below_cut(config: TrainConfig, model: keras.Model) -> None:
    """A fixed `unfreeze` count must fit the blocks that `cut="auto"` kept."""
    unfreeze = config.schedule.unfreeze
    if isinstance(unfreeze, dict):
        unfreeze = unfreeze.get("blocks")
    info = model_info(model)
    kept = len(info.block_map)
    if not isinstance(unfreeze, int) or unfreeze <= kept:
        return
    cut = info.metadata.get("cut", {}).get("block")
    raise ConfigError(
        f"schedule.unfreeze={unfreeze} top blocks, but model.cut='auto' cut the base "
        f"at {cut!r}, which keeps {kept} block(s). Set --unfreeze auto (or at most "
        f"{kept}), or keep the whole base with --cut none (model.cut: null)."
    )


def _monitor(config: TrainConfig, has_validation: bool) -> tuple[str, str]:
    monitor = config.schedule.monitor
    if monitor.startswith("val_") and not has_validation:
        print(
            f"tltf: note: no validation data, so best.keras is picked by "
            f"{monitor.removeprefix('val_')!r} instead of {monitor!r}."
        )
        monitor = monitor.removeprefix("val_")
    mode = config.schedule.mode
    if mode == "auto":
        mode = "min" if "loss" in monitor or "error" in monitor else "max"
    return monitor, mode


def _best_so_far(history: dict[str, list], monitor: str, mode: str):
    values = [v for v in history.get(monitor, []) if not math.isnan(v)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def train(
    config: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose="auto",
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Trains a model from a config and writes a run folder.

    The config is checked and the data loaded before anything is written; then
    the run folder gets the resolved config, and `fine_tune` runs with callbacks
    that write `history.csv`, TensorBoard logs, `best.keras` and `last.keras`
    (all atomically). At the end the best model is evaluated on the validation
    data, the plots are drawn, and `summary.json` is written last.

    Args:
        config: TrainConfig. The run's configuration. With `resume=True` it is
            ignored and may be None: the run folder's `config.yaml` is used.
        out: str, PathLike or None. The run folder. Defaults to
            `runs/train-<timestamp>`.
        resume: bool. Continue the run in `out` from its last finished epoch.
            Defaults to False.
        overwrite: bool. Replace an existing run in `out`. Defaults to False.
        verbose: Keras `fit` verbosity ("auto", 0, 1 or 2). Defaults to "auto".
        command: list of str or None. The command line, recorded in the summary.

    Returns:
        The summary (also written to `summary.json`).

    Raises:
        ConfigError: a bad config, or an existing run folder without `resume`
            or `overwrite`.
        DataError, ModelError, WeightsError, TrainingError: as `build_model`,
            `load_data` and `fine_tune` raise them.

    Example:

    >>> summary = train(TrainConfig.from_dict(load_config_file("train.yaml")),
    ...                 out="runs/flowers")
    >>> summary["best"]
    {'monitor': 'val_loss', 'mode': 'min', 'value': 0.31, 'epoch': 14}
    """
    run = RunFolder(out, kind="train", resume=resume, overwrite=overwrite)
    if resume:
        config = TrainConfig.from_dict(load_config_file(run / CONFIG_FILE))
    config = resolve_base(config.require())
    started = time.time()
    image_size = resolve_image_size(config)
    data = load_run_data(config, image_size)
    model = build_run_model(config, data, image_size)
    return _complete(
        run,
        lambda: _train_in(run, config, data, model, image_size, verbose, started),
        command,
    )


def _complete(run: RunFolder, work, command) -> dict:
    """Runs `work` in the run folder; writes `summary.json` last, then commits.

    On any failure (or an interrupt) the folder is rolled back by
    `RunFolder.abort` and the error propagates.
    """
    run.begin()
    try:
        summary = work()
        summary["command"] = list(command) if command is not None else None
        atomic_write_json(run / SUMMARY_FILE, summary)
    except BaseException:
        note = run.abort()
        if note:
            print(f"tltf: {note}.", file=sys.stderr)
        raise
    run.commit()
    summary["out_dir"] = str(run.path)
    return summary


def _callbacks(run: RunFolder, config, monitor, mode, history_so_far):
    from tltf.checkpoint import ModelCheckpoint

    best = _best_so_far(history_so_far, monitor, mode)
    best_checkpoint = ModelCheckpoint(
        run / BEST_MODEL, monitor=monitor, mode=mode, save_best_only=True
    )
    if best is not None and hasattr(best_checkpoint, "best"):
        best_checkpoint.best = best  # a resumed run keeps its best model
    return [
        HistoryCSV(run / HISTORY_FILE, append=run.resume),
        keras.callbacks.TensorBoard(
            log_dir=str(run / TENSORBOARD_DIR), write_graph=False, profile_batch=0
        ),
        best_checkpoint,
        ModelCheckpoint(run / LAST_MODEL, monitor=monitor, save_best_only=False),
    ]


def _train_in(run, config, data, model, image_size, verbose, started) -> dict:
    dump_config(config, run / CONFIG_FILE)
    history_so_far = read_history(run / HISTORY_FILE) if run.resume else {}
    has_val = data.validation is not None
    monitor, mode = _monitor(config, has_val)
    callbacks = _callbacks(run, config, monitor, mode, history_so_far)
    kwargs = config.schedule.fine_tune_kwargs()
    fine_tune(
        model,
        data,
        None,
        augment=True if config.data.augment else None,
        seed=config.data.seed,
        callbacks=callbacks,
        backup_dir=run / BACKUP_DIR,
        verbose=verbose,
        **kwargs,
    )
    history = read_history(run / HISTORY_FILE)
    if not (run / BEST_MODEL).is_file():
        raise ModelError(
            f"No best model was saved: the monitored metric {monitor!r} is not among "
            f"the logged metrics {sorted(k for k in history if k != 'epoch')}. Set "
            "schedule.monitor to one of them."
        )
    best_model = load_model(run / BEST_MODEL)
    files = {
        "config": CONFIG_FILE,
        "history": HISTORY_FILE,
        "tensorboard": TENSORBOARD_DIR,
        "best_model": BEST_MODEL,
        "last_model": LAST_MODEL,
    }
    plot_run_history(
        history,
        title=f"{config.model.base}: stage 1 head, stage 2 fine-tuning",
        path=run / PLOTS_DIR / "history.png",
    )
    files["history_plot"] = f"{PLOTS_DIR}/history.png"
    evaluation = None
    if has_val and config.model.task in ("multiclass", "binary"):
        evaluation = _evaluate(best_model, data, run)
        files["evaluation"] = EVALUATION_FILE
        files["confusion_plot"] = f"{PLOTS_DIR}/confusion.png"
    shutil.rmtree(run / BACKUP_DIR, ignore_errors=True)
    best = _best_so_far(history, monitor, mode)
    values = history.get(monitor, [])
    best_epoch = history["epoch"][values.index(best)] if best is not None else None
    last = {k: v[-1] for k, v in history.items() if k not in ("epoch",) and v}
    epochs = history.get("epoch", [])
    stages = history.get("stage", [])
    return {
        "status": "finished",
        "kind": "train",
        "tltf_version": _version(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 1),
        "resumed": run.resume,
        "base": config.model.base,
        "task": config.model.task,
        "image_size": list(image_size),
        "class_names": data.class_names,
        "num_classes": data.num_classes,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "epochs": {
            "requested": {
                "head": config.schedule.head_epochs,
                "fine_tune": config.schedule.fine_tune_epochs,
            },
            "head": stages.count(1) if stages else None,
            "fine_tune": stages.count(2) if stages else None,
            "run": len(epochs),
        },
        "cut": {
            "requested": config.model.cut,
            "resolved": _metadata(model).get("cut"),
        },
        "unfreeze": _resolved_unfreeze(config, model),
        "best": {"monitor": monitor, "mode": mode, "value": best, "epoch": best_epoch},
        "still_improving": best_epoch is not None and best_epoch == epochs[-1],
        "last": last,
        "evaluation": evaluation,
        "files": files,
    }


def _metadata(model: keras.Model) -> dict:
    """The model's tltf metadata, or {} for a model tltf did not build."""
    try:
        return dict(model_info(model).metadata)
    except Exception:  # not a tltf model
        return {}


def _resolved_unfreeze(config: TrainConfig, model: keras.Model) -> dict:
    """What stage 2 unfroze: the request, and the base blocks trainable at the end.

    A `resolved` entry the model's metadata holds (`metadata["unfreeze"]`) is
    kept too.
    """
    out = {"requested": config.schedule.fine_tune_kwargs()["unfreeze"]}
    try:
        info = model_info(model)
        out.update(blocks=len(trainable_blocks(model)), of=len(info.block_map))
    except Exception:  # not a tltf model: nothing more to tell
        return out
    if "unfreeze" in info.metadata:
        out["resolved"] = info.metadata["unfreeze"]
    return out


def still_improving_hint(summary: dict) -> str | None:
    """One line for a run whose best epoch is its last, with what to try; or None.

    Example:

    >>> still_improving_hint(summary)
    'the best epoch is the last one (val_loss still improving): train longer, e.g. --fine-tune-epochs 20 (this run had 10)'
    """
    if not summary.get("still_improving"):
        return None
    epochs = summary.get("epochs", {})
    stage, flag = ("fine_tune", "--fine-tune-epochs")
    if not epochs.get("fine_tune"):  # stage 2 did not run: stage 1 is improving
        stage, flag = ("head", "--head-epochs")
    ran = epochs.get(stage) or epochs.get("run") or 1
    return (
        f"the best epoch is the last one ({summary['best']['monitor']} still "
        f"improving): train longer, e.g. {flag} {2 * ran} (this run had {ran})"
    )


def _evaluate(model, data, run) -> dict:
    from tltf.evaluation import evaluate

    report = evaluate(model, data, class_names=data.class_names)
    report.to_json(run / EVALUATION_FILE)
    report.plot_confusion(run / PLOTS_DIR / "confusion.png")
    return _headline(report.to_dict())


def _headline(report: dict) -> dict:
    """The few numbers of an evaluation report that belong in a summary."""
    keep = {
        key: value
        for key, value in report.items()
        if isinstance(value, (int, float, str)) or value is None
    }
    keep["metrics"] = dict(report.get("metrics", {}))
    return keep


def _version() -> str:
    from tltf import __version__

    return __version__


# -- tuning ------------------------------------------------------------------------------------
TUNER_DIR = "tuner"


def tune(
    config,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose="auto",
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Runs `tltf.tuning.tune` from a config and writes a run folder.

    The `[tune]` section picks the tuner, the number of trials, the objective and
    the search-space overrides (`tltf.tuning.SearchSpace` entries); the
    `[schedule]` section gives the epochs of every trial ("auto" keeps the
    tuner's defaults), the optimizer, `label_smoothing`, `class_weight` and
    `gradual_every` (what to unfreeze and the learning rates are searched). The
    folder gets `config.yaml`, the tuner's
    project (`tuner/`, with the trials table `tltf_results.csv`/`.json` and the
    depth-vs-metric plot `tltf_tuning.png`), `best.keras`, `evaluation.json`
    and `plots/confusion.png` for the best model, and `summary.json` last.
    `resume=True` continues an interrupted search (finished trials are kept).

    Args:
        config: TuneConfig. Ignored (may be None) with `resume=True`.
        out: str, PathLike or None. The run folder. Defaults to
            `runs/tune-<timestamp>`.
        resume: bool. Continue the search in `out`. Defaults to False.
        overwrite: bool. Replace an existing run in `out`. Defaults to False.
        verbose: "auto", 0, 1 or 2. Defaults to "auto".
        command: list of str or None. The command line, for the summary.

    Returns:
        The summary (also written to `summary.json`).

    Example:

    >>> from tltf.config import TuneConfig, load_config_file
    >>> summary = tune(TuneConfig.from_dict(load_config_file("tune.yaml")),
    ...                out="runs/tune-flowers")
    >>> summary["best"]["hyperparameters"]["unfreeze_blocks"]
    4
    """
    run = RunFolder(out, kind="tune", resume=resume, overwrite=overwrite)
    if resume:
        config = TuneConfig.from_dict(load_config_file(run / CONFIG_FILE))
    config = resolve_base(config.require())
    if config.model.cut is not None:
        raise ConfigError(
            "model.cut is not supported by `tltf tune` (the tuner builds whole "
            "bases). Remove it, or train the cut model with `tltf train`."
        )
    started = time.time()
    image_size = resolve_image_size(config)
    data = load_run_data(config, image_size)
    if data.validation is None:
        raise ConfigError(
            "Tuning compares trials on validation data: set data.val, data.val_split "
            "or data.val_fraction (--val, --val-split, --val-fraction)."
        )
    return _complete(
        run, lambda: _tune_in(run, config, data, image_size, verbose, started), command
    )


def _tune_in(run, config, data, image_size, verbose, started) -> dict:
    from tltf._io import atomic_save_model
    from tltf.tuning import tune as run_tuner

    dump_config(config, run / CONFIG_FILE)
    m, s, t = config.model, config.schedule, config.tune
    extra = {
        "label_smoothing": s.label_smoothing,
        "class_weight": s.fine_tune_kwargs()["class_weight"],
        "gradual_every": s.gradual_every,
    }
    if m.weights_dir:
        extra["base_kwargs"] = {"weights_dir": m.weights_dir}
    result = run_tuner(
        m.base,
        data,
        None,
        num_classes=None if m.task == "binary" else (m.num_classes or data.num_classes),
        task=m.task,
        input_shape=(*image_size, 3),
        weights=m.weights,
        search=dict(t.search_space),
        tuner=t.tuner,
        max_trials=t.max_trials,
        objective=t.objective or "auto",
        directory=run.path,
        project_name=TUNER_DIR,
        overwrite=False,  # the run folder decides; resume continues the search
        **_tune_epochs(s),
        optimizer=s.optimizer,
        head=m.head,
        seed=config.data.seed,
        augment=True if config.data.augment else None,
        verbose=0 if verbose == 0 else 1,
        **extra,
    )
    files = {"config": CONFIG_FILE, "tuner": TUNER_DIR}
    for key, path in result.paths.items():
        files[f"tuning_{key}"] = os.path.relpath(path, run.path)
    evaluation = None
    if result.best_model is not None:
        set_class_names(result.best_model, data.class_names)
        atomic_save_model(result.best_model, run / BEST_MODEL)
        files["best_model"] = BEST_MODEL
        if m.task in ("multiclass", "binary"):
            evaluation = _evaluate(result.best_model, data, run)
            files["evaluation"] = EVALUATION_FILE
            files["confusion_plot"] = f"{PLOTS_DIR}/confusion.png"
    return {
        "status": "finished",
        "kind": "tune",
        "tltf_version": _version(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 1),
        "resumed": run.resume,
        "base": m.base,
        "task": m.task,
        "image_size": list(image_size),
        "class_names": data.class_names,
        "num_classes": data.num_classes,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "tuner": t.tuner,
        "objective": result.objective,
        "trials": {
            "total": len(result.table),
            "completed": sum(r.get("status") == "COMPLETED" for r in result.table),
        },
        "best": {"hyperparameters": _jsonable(result.best_values)},
        "table": [_jsonable(r) for r in result.table],
        "evaluation": evaluation,
        "files": files,
    }


def _tune_epochs(schedule) -> dict[str, int]:
    """The epochs of every trial; "auto" leaves the tuner's own default."""
    return {
        key: value
        for key, value in (
            ("head_epochs", schedule.head_epochs),
            ("fine_tune_epochs", schedule.fine_tune_epochs),
        )
        if value != "auto"
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
