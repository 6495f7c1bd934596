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
                           from (removed after summary.json is written)
      plots/history.png    learning curves, stage boundary marked
      plots/confusion.png  confusion matrix of best.keras on the validation data
      evaluation.json      per-class precision/recall/F1 and top-k accuracy
      soup.keras           `tltf tune --soup N` only: the greedy soup of the
                           best N trials
      summary.json         written last: what ran, how long, the results
      .tltf-run            marks the folder as a tltf run
      .tltf-lock           while a process runs in it: its host and pid

An existing run folder is never touched unless asked: `resume=True` continues
it, `overwrite=True` replaces it, but only once the config is valid and the data
loaded; the old run is moved aside (`.NAME.old`) and deleted when the new run
finishes, or moved back if the new one fails. Only a tltf run is ever resumed
or replaced (never a user's folder), one process at a time (the lock), and a
failed run removes only what it made.

Example:

>>> from tltf.config import TrainConfig
>>> from tltf.runs import run_training
>>> config = TrainConfig.from_dict({"model": {"base": "bases/tiny"},
...                                 "data": {"train": "photos/", "val_fraction": 0.2},
...                                 "schedule": {"head_epochs": 2, "fine_tune_epochs": 2}})
>>> summary = run_training(config, out="runs/first")

Why about 1,250 lines: one run folder's life (create, lock, resume, replace,
commit, summary, history and plots) for both `run_training` and `run_tuning`;
splitting it would spread the folder's safety rules over several modules.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py  # a dependency of Keras
import keras

from tltf._io import (
    atomic_save_model,
    atomic_write_json,
    atomic_write_text,
    disk_full_message,
    is_disk_full,
    sweep_tmp_files,
)
from tltf._version import __version__
from tltf.bases.base import check_saved_base, is_model_file, read_base_record
from tltf.bases.registry import get_spec, shipped_base_path
from tltf.cache import MIN_FALL_NATS, is_cross_entropy
from tltf.checkpoint import ModelCheckpoint
from tltf.config import (
    TUNE_SEARCHED,
    TrainConfig,
    TuneConfig,
    dump_config,
    load_config_file,
)
from tltf.data import load_data
from tltf.errors import ConfigError, DataError, DiskFullError, ModelError, TltfError
from tltf.evaluation import evaluate
from tltf.freezing import resolve_unfreeze, trainable_blocks, unfreeze_kwargs
from tltf.info import set_class_names
from tltf.locks import LockFile
from tltf.model import build_model, load_model, model_info
from tltf.reports import base_label, plot_history
from tltf.resume import BACKUP_FILE
from tltf.saving import LEGACY_SUFFIXES
from tltf.schedule import fine_tune
from tltf.tuning import tune
from tltf.tuning.search import few_validation_note

__all__ = [
    "CONFIG_FILE",
    "HISTORY_FILE",
    "LOCK_FILE",
    "RUN_MARKER",
    "SUMMARY_FILE",
    "HistoryCSV",
    "RunFolder",
    "default_run_dir",
    "find_run",
    "is_run_folder",
    "lock_folder",
    "lock_holder",
    "plot_run_history",
    "read_history",
    "resolve_base",
    "still_improving",
    "still_improving_hint",
    "run_training",
    "run_tuning",
    "unlock_folder",
]

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "summary.json"
EVALUATION_FILE = "evaluation.json"
BEST_MODEL = "best.keras"
#: The greedy soup of a `tltf tune` run with `[tune] soup` set.
SOUP_MODEL = "soup.keras"
#: The best values of a `tltf tune` run trained again on every labelled image
#: (`[tune] refit`); its `fine_tune` keeps its backup in `BACKUP_DIR`.
REFIT_MODEL = "refit.keras"
LAST_MODEL = "last.keras"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
PLOTS_DIR = "plots"
TUNER_DIR = "tuner"
RUN_MARKER = ".tltf-run"  # written by RunFolder.begin: tltf made this folder
LOCK_FILE = ".tltf-lock"  # held while a process runs in the folder

# What a run writes into its folder (`RunFolder.abort` removes only these).
_RUN_NAMES = (
    CONFIG_FILE,
    HISTORY_FILE,
    SUMMARY_FILE,
    EVALUATION_FILE,
    BEST_MODEL,
    SOUP_MODEL,
    REFIT_MODEL,
    LAST_MODEL,
    TENSORBOARD_DIR,
    BACKUP_DIR,
    PLOTS_DIR,
    TUNER_DIR,
    RUN_MARKER,
)


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
    folder needs `resume=True` or `overwrite=True`, and both need a folder that
    is a tltf run (`is_run_folder`): tltf never replaces or writes into a user's
    folder. `begin()` takes the folder: it creates it, locks it against a second
    process (`lock_folder`) and writes the `.tltf-run` marker (moving an old run
    aside for `overwrite`); `commit()` ends a successful run (the old run and the
    backup are deleted, the lock released); `abort()` ends a failed one (the old
    run is moved back; a fresh or resumed run keeps its partial files for
    `--resume`; only what this process made is ever removed).

    Args:
        path: str, PathLike or None. The folder (a symlink is followed). Defaults
            to `runs/<kind>-<timestamp>`.
        kind: str. "train" or "tune", for the default name. Defaults to "train".
        resume: bool. Continue the run in an existing folder. Defaults to False.
        overwrite: bool. Replace an existing run. Defaults to False.

    Raises:
        ConfigError: the folder is the current or root folder, it exists and
            neither flag is given, `resume` or `overwrite` names a folder that is
            not a tltf run, a finished run is resumed, both flags are given, or
            another process is running in the folder.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        kind: str = "train",
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.path = default_run_dir(kind) if path is None else _run_path(path)
        self.kind = kind
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self._old: Path | None = None
        self._began = False
        self._created = False
        if resume and overwrite:
            raise ConfigError(
                "Pass --resume (continue the run) or --overwrite (replace it), not "
                "both."
            )
        self._check(locked=False)

    def _check(self, locked: bool) -> None:
        """The rules for the folder as it is now (`locked`: this process holds it)."""
        stale = self.old_path
        if stale.exists() or stale.is_symlink():
            if (self.path / SUMMARY_FILE).is_file():
                raise ConfigError(
                    f"An interrupted --overwrite left the previous run of "
                    f"{str(self.path)!r} at {str(stale)!r}, after the new run had "
                    f"finished (it has {SUMMARY_FILE}). Delete the previous run "
                    f"(rm -r {stale}), then run again."
                )
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
        if exists and not locked:
            holder = lock_holder(self.path)
            if holder is not None:
                raise ConfigError(_in_use_message(self.path, holder))
        nonempty = exists and any(p.name != LOCK_FILE for p in self.path.iterdir())
        foreign = nonempty and not is_run_folder(self.path)
        if self.resume:
            if foreign:
                raise ConfigError(
                    f"Nothing to resume in {str(self.path)!r}: it is not a tltf run "
                    f"folder ({_NOT_A_RUN}). Start the run with another --out."
                )
            if not (self.path / CONFIG_FILE).is_file():
                why = f"it has no {CONFIG_FILE}" if exists else "it does not exist"
                raise ConfigError(
                    f"Nothing to resume in {str(self.path)!r}: {why}. Start the "
                    "run without --resume."
                )
            if (self.path / SUMMARY_FILE).is_file():
                raise ConfigError(
                    f"The run in {str(self.path)!r} has finished (it has "
                    f"{SUMMARY_FILE}); there is nothing to resume. Use --overwrite "
                    "to run it again, or another --out."
                )
        elif foreign:
            # Neither --resume nor --overwrite would take it: say so first.
            what = (
                f"--overwrite replaces only a tltf run, and {str(self.path)!r} is "
                f"not one ({_NOT_A_RUN}); nothing was changed"
                if self.overwrite
                else f"--out {str(self.path)!r} is a folder that is not a tltf run "
                f"({_NOT_A_RUN}); tltf never writes into it or replaces it"
            )
            raise ConfigError(
                f"{what}. Choose another --out: a new subfolder, e.g. --out runs/first."
            )
        elif nonempty and not self.overwrite:
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
        """Takes the folder: creates and locks it; with `overwrite`, moves the old
        run aside first; with `resume`, removes temporary files a kill left.

        Raises:
            ConfigError: another process took the folder since the checks, or the
                folder changed so that the checks no longer pass.
        """
        created = False
        with contextlib.suppress(FileExistsError):  # else the lock decides
            self.path.mkdir(parents=True)
            created = True
        lock_folder(self.path)
        try:
            self._check(locked=True)  # again: the folder may have changed since
        except BaseException:
            unlock_folder(self.path)
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise
        self._created = created
        self._began = True
        try:
            names = {p.name for p in self.path.iterdir()} - {LOCK_FILE}
            if self.overwrite and names:
                os.replace(self.path, self.old_path)  # with this process's lock
                self._old = self.old_path
                self.path.mkdir()
                self._created = True
                lock_folder(self.path)
            if self.resume:
                sweep_tmp_files(self.path)
            atomic_write_json(
                self.path / RUN_MARKER, {"kind": self.kind, "tltf_version": _version()}
            )
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        """Ends a finished run (after `summary.json`): deletes the run it replaced,
        the backup and temporary files a kill left, then releases the lock."""
        if self._old is not None:
            shutil.rmtree(self._old, ignore_errors=True)
            self._old = None
        shutil.rmtree(self.path / BACKUP_DIR, ignore_errors=True)
        sweep_tmp_files(self.path)
        unlock_folder(self.path)
        self._began = False

    def _has_progress(self) -> bool:
        """Whether the folder holds work worth resuming: an epoch or a tuner trial."""
        tuner = self.path / TUNER_DIR
        return (self.path / HISTORY_FILE).is_file() or (
            tuner.is_dir() and any(tuner.rglob("trial.json"))
        )

    def abort(self) -> str | None:
        """Ends a failed run; returns a note on what was kept, or None.

        A replaced run is moved back. A fresh run that finished no epoch and no
        tuner trial is removed (nothing in it is worth resuming); otherwise the
        partial run stays. Only what this process made is removed: a folder it did not
        create keeps everything but the files this run wrote into it.
        """
        if not self._began:
            return None
        self._began = False
        try:
            if self._old is not None:
                if not self._created:  # the new folder is not ours to delete
                    return f"the previous run is kept at {self._old}"
                shutil.rmtree(self.path, ignore_errors=True)
                os.replace(self._old, self.path)
                self._old = None
                return f"the previous run in {self.path} was restored"
            if self.resume or self._has_progress():
                return (
                    f"the partial run is kept in {self.path}; continue it with "
                    "--resume or replace it with --overwrite"
                )
            if self._created:
                shutil.rmtree(self.path, ignore_errors=True)  # no epoch finished
                return None
            for name in _RUN_NAMES:  # the folder was empty when this run took it
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            return None
        finally:
            unlock_folder(self.path)


def _run_path(path: str | os.PathLike) -> Path:
    """The folder of `--out`: a symlink followed; never the current or root folder.

    Raises:
        ConfigError: `path` is the root folder, the current folder or one above it.
    """
    given = Path(path).expanduser()
    if given.is_symlink():  # --overwrite moves the real folder aside, not the link
        given = given.resolve()
    full = given.resolve()
    cwd = Path.cwd().resolve()
    if given.name in ("", ".", "..") or full == cwd or full in cwd.parents:
        what = (
            "the root folder"
            if full.parent == full
            else "the current folder"
            if full == cwd
            else "a folder above the current one"
        )
        raise ConfigError(
            f"Expected --out to be a run folder of its own. Received: {str(path)!r}, "
            f"which is {what}. Choose a subfolder, e.g. --out runs/first."
        )
    return given


#: Why a folder is not a run, in `RunFolder`'s errors (`is_run_folder`).
_NOT_A_RUN = (
    f"it has no {RUN_MARKER}, and no {CONFIG_FILE} with {SUMMARY_FILE}, "
    f"{HISTORY_FILE} or a backup"
)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether a folder holds a tltf run (`RunFolder` replaces or resumes only these).

    A run has the `.tltf-run` marker that `RunFolder.begin` writes; a run written
    before markers has tltf's `config.yaml` beside a `summary.json`, a
    `history.csv`, a backup or a tuner project.

    Example:

    >>> is_run_folder("runs/flowers"), is_run_folder("Documents")
    (True, False)
    """
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    evidence = (
        SUMMARY_FILE,
        HISTORY_FILE,
        f"{BACKUP_DIR}/{BACKUP_FILE}",
        f"{TUNER_DIR}/oracle.json",
    )
    return (path / CONFIG_FILE).is_file() and any(
        (path / name).exists() for name in evidence
    )


def find_run(path: str | os.PathLike) -> Path | None:
    """The run folder a path belongs to (the folder, or a file in it), or None."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if (
        (folder / RUN_MARKER).is_file()
        or (folder / CONFIG_FILE).is_file()
        or (folder / SUMMARY_FILE).is_file()
    ):
        return folder
    return None


# -- the lock ------------------------------------------------------------------------
def _lock(folder: str | os.PathLike) -> LockFile:
    # Another host's lock cannot be checked: it counts as held (stale_s=None).
    return LockFile(Path(folder) / LOCK_FILE, stale_s=None)


def lock_folder(folder: str | os.PathLike) -> Path:
    """Takes a run folder's lock for this process: the file `.tltf-lock` in it.

    The file is created exclusively (`O_EXCL`) and records the host and pid, so a
    second process cannot write into a folder a run is using. A lock left by a
    process that is gone (a dead pid on this host, or a reused pid of this
    process) is taken over at once (`tltf.locks.LockFile`). `unlock_folder`
    releases it.

    Args:
        folder: str or PathLike. An existing run folder.

    Returns:
        The lock file.

    Raises:
        ConfigError: another live process holds the lock.

    Example:

    >>> lock_folder("runs/first")
    PosixPath('runs/first/.tltf-lock')
    >>> unlock_folder("runs/first")
    """
    lock = _lock(folder)
    if not lock.acquire():
        holder = lock.owner() or {"host": "?", "pid": "?"}
        raise ConfigError(_in_use_message(Path(folder), holder))
    return lock.path


def unlock_folder(folder: str | os.PathLike) -> None:
    """Releases the lock `lock_folder` took (a lock of another process stays)."""
    _lock(folder).release()


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The live process that holds a run folder's lock (`host`, `pid`, `since`).

    Returns None when the folder is not locked, or its lock is stale: its pid is
    dead on this host. A lock of another host counts as live (tltf cannot tell).
    """
    lock = _lock(folder)
    if not lock.path.exists() or lock.is_stale():
        return None
    return lock.owner() or {"host": "?", "pid": "?", "since": "just now"}


def _in_use_message(folder: Path, holder: dict) -> str:
    lock = folder / LOCK_FILE
    since = f", since {holder['since']}" if holder.get("since") else ""
    return (
        f"Run folder {str(folder)!r} is in use by another tltf process (pid "
        f"{holder.get('pid')} on host {holder.get('host')!r}{since}). Wait for it "
        f"to finish, or choose another --out. If no such process is running, "
        f"delete {str(lock)!r}."
    )


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


def plot_run_history(
    history: dict[str, list],
    title: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    base: str | None = None,
    monitor: str | None | bool = None,
    mode: str = "auto",
    kept: int | None = None,
):
    """`tltf.plot_history` of a `read_history` dict (its epoch column dropped).

    Args:
        history: dict. A run's `history.csv`, as `read_history` reads it.
        title: str or None. The figure title. Defaults to the base's short name
            (`base_label`) and the two stages, when `base` is given.
        path: str or None. Also write the figure to this PNG file.
        base: str or None. The config's `model.base` (a name or a path).
        monitor: str, None or False. The metric that picked `best.keras`; its
            best epoch is marked. None with `kept`: a run without validation
            data, whose `best.keras` is the model `fine_tune` ended with.
            False marks none. Defaults to "val_loss" when logged, else none.
        mode: str. "min", "max" or "auto" for `monitor`. Defaults to "auto".
        kept: int or None. The epoch whose weights `fine_tune` kept
            (`history.kept.epoch`), marked when `monitor` is None.

    Returns:
        The matplotlib Figure.
    """
    if title is None and base is not None:
        title = f"{base_label(base)}: stage 1 head, stage 2 fine-tuning"
    logs = {k: v for k, v in history.items() if k != "epoch"}
    return plot_history(
        logs,
        title=title,
        path=path,
        monitor=monitor,
        mode=mode,
        best_label=BEST_MODEL,
        kept=kept,
    )


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


# -- training ----------------------------------------------------------------------------------
def saved_base_folder(base: str) -> Path | None:
    """Where a base with its own weights lives: a saved base's folder (a shipped
    name such as "demo", or a path), or a model's `.keras` file.

    Returns None for a registry name, after checking it.

    Raises:
        UnknownBaseError: an unknown name (with suggestions).
        ModelError: a path that is neither a folder nor a model file (`.keras`, `.h5`).
    """
    shipped = shipped_base_path(base)  # as load_base: shipped names come first
    if shipped is not None:
        return shipped
    path = Path(base).expanduser()
    if path.is_dir():
        check_saved_base(path)  # a run folder, say, fails here, with the fix
        return path
    if is_model_file(path):
        return path
    if os.sep in base or path.exists():
        what = (
            "is neither a folder nor a model file (.keras, .h5)"
            if path.exists()
            else "does not exist"
        )
        raise ModelError(
            f"Base {base!r} {what}. Pass a registry "
            "name (`tltf bases`), 'demo' (the base shipped with tltf), the folder "
            "of a saved base (tltf.save_base, tltf pretrain) or a model's .keras "
            "or Keras 2 .h5 file (a run's best.keras: its fine-tuned base)."
        )
    get_spec(base)  # an unknown name raises, with suggestions
    return None


def _model_file_config(path: Path) -> dict:
    """The model config stored in a `.keras` archive or a legacy HDF5 file."""
    if path.suffix.lower() in LEGACY_SUFFIXES:
        with h5py.File(path, "r") as stored:
            config = stored.attrs["model_config"]
        return json.loads(config.decode() if isinstance(config, bytes) else config)
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def default_image_size(base: str) -> tuple[int, int] | None:
    """The input size a base is built for: its registry size or saved size."""
    folder = saved_base_folder(base)
    if folder is None:
        spec = get_spec(base)
        return spec.default_size, spec.default_size
    try:
        if folder.is_file():  # a model file: its first input layer's shape
            layer = _model_file_config(folder)["config"]["layers"][0]["config"]
            shape = (layer.get("batch_shape") or layer["batch_input_shape"])[1:]
        else:
            shape = (read_base_record(folder) or {})["input_shape"]
        return int(shape[0]), int(shape[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
        return None


def resolve_base(config: TrainConfig) -> TrainConfig:
    """Checks `model.base`; a saved base records `weights: null` (it has its own).

    A config without a base is returned as it is (`TrainConfig.require` reports
    it when a run needs one).

    Raises:
        UnknownBaseError: an unknown registry name (with suggestions).
        ModelError: a base path that is neither a folder nor a model file.
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


def seed_run(config: TrainConfig) -> None:
    """Seeds everything random in a run from `data.seed` (None: nothing).

    One seed fixes the split, the shuffling, the head's initial weights, dropout
    and augmentation (`keras.utils.set_random_seed`), so the same config gives
    the same weights on the same machine, TensorFlow version and thread count.
    It does not make runs bit-equal across machines or with GPU kernels that are
    not deterministic.
    """
    if config.data.seed is not None:
        keras.utils.set_random_seed(config.data.seed)


def load_run_data(config: TrainConfig, image_size: tuple[int, int]):
    """`tltf.data.load_data` for a config's `[data]` section."""

    kwargs = config.data.load_data_kwargs()
    source = kwargs.pop("source")
    return load_data(
        source,
        image_size=image_size,
        task=config.model.task,
        num_classes=config.model.num_classes,
        **kwargs,
    )


def _run_classes(config: TrainConfig, data) -> int:
    """The run's class count: the config's, else the training data's (2 or more).

    Raises:
        DataError: multi-class training data of one class, named.
    """
    num_classes = config.model.num_classes or data.num_classes
    if config.model.task == "multiclass" and num_classes == 1:
        names = f" ({', '.join(data.class_names)})" if data.class_names else ""
        raise DataError(
            f"The training data {config.data.train!r} has one class{names}; a "
            "classifier needs at least 2. Give a folder with one subfolder per "
            "class (or labels of 2 classes or more)."
        )
    return num_classes


def build_run_model(config: TrainConfig, data, image_size: tuple[int, int]):
    """`tltf.build_model` for a config's `[model]` section and the loaded data."""
    m = config.model
    num_classes = _run_classes(config, data)
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
        **({"preprocessing": m.preprocessing} if m.preprocessing else {}),
    )
    if m.cut == "auto":
        _check_unfreeze_below_cut(config, model)
    unfreeze = config.schedule.unfreeze
    if unfreeze != "auto":  # a bad range or count fails before the run's notes
        info = model_info(model)
        resolve_unfreeze(info.block_map, info.base, **unfreeze_kwargs(unfreeze))
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
    cut = (info.metadata.get("cut") or {}).get("block")
    if cut is None:  # the probe kept the whole base: no cut to undo
        raise ConfigError(
            f"schedule.unfreeze={unfreeze} top blocks, but the base has {kept} "
            f"(model.cut='auto' kept all of them). Set --unfreeze auto, or at "
            f"most {kept}."
        )
    raise ConfigError(
        f"schedule.unfreeze={unfreeze} top blocks, but model.cut='auto' cut the base "
        f"at {cut!r}, which keeps {kept} block(s). Set --unfreeze auto (or at most "
        f"{kept}), or keep the whole base with --cut none (model.cut: null)."
    )


def _monitor(config: TrainConfig, has_validation: bool) -> tuple[str | None, str]:
    """The metric that picks `best.keras`, and its mode.

    None when a validation metric is asked for and there is no validation data:
    `best.keras` is then the model `fine_tune` ends with. That is what
    `keep_best` kept, judged on a held-out slice of the training images and
    refit on all of them. An epoch picked by the training loss would be the
    most overfit one, often a stage-2 epoch the guard refused.
    """
    monitor = config.schedule.monitor
    if monitor.startswith("val_") and not has_validation:
        kept = (
            "its last epoch (keep_best is off)"
            if config.schedule.keep_best is False
            else "the weights keep_best kept"
        )
        print(
            f"tltf: note: no validation data, so best.keras is the model fine_tune "
            f"ends with ({kept}), not an epoch picked by {monitor!r}. Pass --val or "
            "--val-fraction 0.2 to pick it by validation."
        )
        return None, config.schedule.mode
    mode = config.schedule.mode
    if mode == "auto":
        mode = "min" if "loss" in monitor or "error" in monitor else "max"
    return monitor, mode


#: How much a run's last epoch must improve on the best epoch before it, as a
#: fraction of that best value, for the run to count as "still improving"
#: (stage 1 counts as converged by the same 1%: `tltf.cache.converged`).
#: A cross-entropy must also fall by `tltf.cache.MIN_FALL_NATS`: a validation loss
#: of 3e-7 that falls to 2.5e-7 is not a reason to train longer.
IMPROVING_FRACTION = 0.01


def still_improving(values: Sequence[float], mode: str, min_fall: float = 0.0) -> bool:
    """Whether the last of a monitored metric's `values` (one per epoch) is its best
    by a margin that matters.

    The last value must beat the best before it by more than `IMPROVING_FRACTION`
    of that best, and by more than `min_fall`. A tie, or a NaN last value, is not
    improving; a single epoch is.

    Example:

    >>> still_improving([0.9, 0.5, 0.4], "min")
    True
    >>> still_improving([0.9, 0.5, 0.499], "min")
    False
    >>> still_improving([3e-7, 2.5e-7], "min", min_fall=1e-3)
    False
    """
    values = [float(v) for v in values]
    if not values or math.isnan(values[-1]):
        return False
    *before, last = values
    before = [v for v in before if not math.isnan(v)]
    if not before:
        return True
    best = min(before) if mode == "min" else max(before)
    gain = best - last if mode == "min" else last - best
    return gain > max(abs(best) * IMPROVING_FRACTION, min_fall)


def _best_so_far(history: dict[str, list], monitor: str, mode: str):
    values = [v for v in history.get(monitor, []) if not math.isnan(v)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def run_training(
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
    seed_run(config)
    data = load_run_data(config, image_size)
    model = build_run_model(config, data, image_size)
    return _complete(
        run,
        lambda: _train_in(run, config, data, model, image_size, verbose, started),
        command,
    )


def _complete(run: RunFolder, work, command) -> dict:
    """Runs `work` in the run folder; writes `summary.json` last, then commits.

    The order makes every kill point resume to the finished state: the backup
    that `--resume` continues from is removed only by `RunFolder.commit`, after
    `summary.json` (a resumed run whose training finished restores its final
    epoch and trains nothing). On any failure (or an interrupt) the folder is
    rolled back by `RunFolder.abort` and the error propagates; a full disk that
    TensorFlow or Keras reports in its own words becomes a `DiskFullError`.
    """
    run.begin()
    try:
        summary = work()
        summary["command"] = list(command) if command is not None else None
        atomic_write_json(run / SUMMARY_FILE, summary)
    except BaseException as error:
        note = run.abort()
        if note:
            print(f"tltf: {note}.", file=sys.stderr)
        if not isinstance(error, TltfError) and is_disk_full(error):
            raise DiskFullError(disk_full_message(run.path)) from None
        raise
    run.commit()
    summary["out_dir"] = str(run.path)
    return summary


def _callbacks(run: RunFolder, config, monitor, mode, history_so_far):
    callbacks = [
        HistoryCSV(run / HISTORY_FILE, append=run.resume),
        keras.callbacks.TensorBoard(
            log_dir=str(run / TENSORBOARD_DIR), write_graph=False, profile_batch=0
        ),
        ModelCheckpoint(run / LAST_MODEL, monitor="loss", save_best_only=False),
    ]
    if monitor is None:  # best.keras is written when fine_tune returns
        return callbacks
    best = _best_so_far(history_so_far, monitor, mode)
    best_checkpoint = ModelCheckpoint(
        run / BEST_MODEL, monitor=monitor, mode=mode, save_best_only=True
    )
    if best is not None and hasattr(best_checkpoint, "best"):
        best_checkpoint.best = best  # a resumed run keeps its best model
    return [*callbacks, best_checkpoint]


def _train_in(run, config, data, model, image_size, verbose, started) -> dict:
    dump_config(config, run / CONFIG_FILE)
    history_so_far = read_history(run / HISTORY_FILE) if run.resume else {}
    has_val = data.validation is not None
    monitor, mode = _monitor(config, has_val)
    callbacks = _callbacks(run, config, monitor, mode, history_so_far)
    settings = config.schedule.settings(
        augment=True if config.data.augment else None, seed=config.data.seed
    )
    kept = fine_tune(
        model,
        data,
        None,
        settings,
        callbacks=callbacks,
        backup_dir=run / BACKUP_DIR,
        verbose=verbose,
    ).kept
    if monitor is None or config.schedule.wise is not None:
        # The model fine_tune ends with is no epoch's: keep_best's pick with
        # the head refit on every image, or WiSE-FT's mix with stage 1.
        atomic_save_model(model, run / BEST_MODEL)
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
        base=config.model.base,
        path=run / PLOTS_DIR / "history.png",
        monitor=monitor,
        mode=mode,
        kept=kept.epoch if monitor is None else None,
    )
    files["history_plot"] = f"{PLOTS_DIR}/history.png"
    evaluation = None
    if has_val and config.model.task in ("multiclass", "binary"):
        evaluation = _evaluate(best_model, data, run)
        files["evaluation"] = EVALUATION_FILE
        files["confusion_plot"] = f"{PLOTS_DIR}/confusion.png"
    best = _best_so_far(history, monitor, mode) if monitor is not None else None
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
        "wise": config.schedule.wise,
        "best": {
            "monitor": monitor,
            "mode": mode if monitor is not None else None,
            "value": best,
            "epoch": best_epoch,
        },
        "kept": {
            "epoch": kept.epoch,
            "stage": kept.stage,
            "blocks": list(kept.blocks),
            "note": kept.note,
        },
        "still_improving": monitor is not None
        and still_improving(
            values,
            mode,
            MIN_FALL_NATS
            if "loss" in monitor and is_cross_entropy(getattr(model, "loss", None))
            else 0.0,
        ),
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
    report = evaluate(model, data, class_names=data.class_names)
    report.to_json(run / EVALUATION_FILE)
    report.plot_confusion(
        run / PLOTS_DIR / "confusion.png",
        title=f"Confusion matrix of {BEST_MODEL}",
        data="validation",
    )
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
    return __version__


# -- tuning ------------------------------------------------------------------------------------


def run_tuning(
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
    tuner's defaults), and every other key set away from its default reaches
    each trial's `fine_tune` (`head_l2`, `regularize`, `keep_best: true`,
    `fine_tune_patience`, ...); what to unfreeze, the learning rates, `bn`
    and `lr_decay` are searched, and `TuneConfig` refuses them there. The
    folder gets `config.yaml`, the tuner's
    project (`tuner/`, with the trials table `tltf_results.csv`/`.json` and the
    depth-vs-metric plot `tltf_tuning.png`), `best.keras`, `evaluation.json`
    and `plots/confusion.png` for the best model, with `[tune] soup` set to N a
    greedy soup of the best N trials chosen on the validation data
    (`soup.keras`; its choice is in the summary's "soup"), and `summary.json`
    last.
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
    >>> summary = run_tuning(TuneConfig.from_dict(load_config_file("tune.yaml")),
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
    seed_run(config)
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
    dump_config(config, run / CONFIG_FILE)
    m, s, t = config.model, config.schedule, config.tune
    extra = {
        "label_smoothing": s.label_smoothing,
        "class_weight": s.fine_tune_kwargs()["class_weight"],
        "gradual_every": s.gradual_every,
        **_trial_schedule(s),
    }
    if s.loss != "auto":
        extra["loss"] = s.loss
    base_kwargs = {"weights_dir": m.weights_dir, "preprocessing": m.preprocessing}
    base_kwargs = {k: v for k, v in base_kwargs.items() if v}
    if base_kwargs:
        extra["base_kwargs"] = base_kwargs
    result = tune(
        m.base,
        data,
        None,
        num_classes=None if m.task == "binary" else _run_classes(config, data),
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
    # Where tune printed its note: not on a distributed search's workers, which
    # return no best model.
    asked = not t.refit and verbose != 0 and result.best_model is not None
    hint = _refit_hint(result, data) if asked else None
    if hint:
        print(hint)
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
    soup = None
    if t.soup and result.best_model is not None:
        made = result.soup(data, top=t.soup, verbose=0 if verbose == 0 else 1)
        set_class_names(made.model, data.class_names)
        atomic_save_model(made.model, run / SOUP_MODEL)
        files["soup_model"] = SOUP_MODEL
        soup = {
            "kept": list(made.kept),
            "left_out": list(made.left_out),
            "metric": made.metric,
            "score": made.score,
            "scores": _jsonable(made.scores),
            "recalibrated": made.recalibrated,
        }
    refit = None
    if t.refit and result.best_model is not None:
        refit = _refit(run, result, data, verbose)
        files["refit_model"] = REFIT_MODEL
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
        "soup": soup,
        "refit": refit,
        "files": files,
    }


def _refit_hint(result, data) -> str | None:
    """The command line's follow-up to `tune`'s note that the trials were
    compared on too few validation images (`few_validation_note`), which names
    `result.refit`: the flag that does it here. None without that note; a run
    with `[tune] refit` is not asked."""
    if few_validation_note(result, data, None) is None:
        return None
    return (
        "tltf: note: tltf tune --refit ([tune] refit = true) trains the best "
        "values again on the training and validation images together, and "
        f"writes {REFIT_MODEL}."
    )


def _refit(run, result, data, verbose) -> dict:
    """`[tune] refit`: the best values trained once more, with `fine_tune`'s
    "auto" epochs and stage-2 guard, on the training and validation images
    together (`TuneResult.refit`), saved as `refit.keras`.

    The validation batches follow the (reshuffled) training batches; the
    stage-2 guard reads an input that fits in memory for its held-out slice,
    and then trains on its rows in a fresh order each epoch.

    No labelled image is left to evaluate it. Its `fine_tune` keeps a backup in
    the run's `backup/`, so that `--resume` continues a killed refit from its
    last epoch; the finished run deletes it.
    """
    every = data.train.concatenate(data.validation)
    counts = (data.num_train, data.num_validation)
    images = sum(counts) if None not in counts else None
    started = time.time()
    model = result.refit(
        every, backup_dir=run / BACKUP_DIR, verbose=0 if verbose == 0 else 1
    )
    set_class_names(model, data.class_names)
    atomic_save_model(model, run / REFIT_MODEL)
    return {
        "model": REFIT_MODEL,
        "images": images,
        "wall_seconds": round(time.time() - started, 1),
    }


def _trial_schedule(schedule) -> dict[str, Any]:
    """The `[schedule]` keys set away from `TuneConfig`'s defaults that every
    trial's `fine_tune` takes as they are (`TuneConfig` refuses those the
    search space sets)."""
    kwargs = schedule.fine_tune_kwargs()
    defaults = TuneConfig().schedule.fine_tune_kwargs()
    skip = {
        *TUNE_SEARCHED,
        "head_epochs",
        "fine_tune_epochs",
        "optimizer",
        "label_smoothing",
        "class_weight",
        "gradual_every",
        "loss",
    }
    return {
        key: value
        for key, value in kwargs.items()
        if key not in skip and value != defaults[key]
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
