"""A search's results: the table of trials, the best model and the exports.

`results_table` has one row per trial (from keras-tuner's oracle and tltf's trial
records), `format_table` prints it and `write_table` writes it as CSV and JSON;
`results` collects a search into a `TuneResult` and writes the table, the plot and
the best model into the project folder.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from tltf._checks import check_positive_int
from tltf._io import atomic_save_model, atomic_write_json, atomic_write_text
from tltf.averaging import SoupResult, architecture_mismatch, soup
from tltf.errors import ConfigError, ModelError
from tltf.info import default_loss_and_metrics, model_info, record_class_names
from tltf.reports import plot_tuning
from tltf.tuning.hypermodel import TRIAL_RECORD, FineTuneHyperModel
from tltf.tuning.space import HP_NAMES

RESULTS_CSV = "tltf_results.csv"
RESULTS_JSON = "tltf_results.json"
RESULTS_PLOT = "tltf_tuning.png"
BEST_MODEL = "best_model.keras"


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns.

    Attributes:
        best_model: keras.Model or None. The best trial's model, restored from its
            best stage-2 epoch (None on a distributed worker).
        best_hyperparameters: keras_tuner.HyperParameters or None.
        table: list of dict. One row per trial (see `results_table`).
        objective: str. The objective's name.
        tuner: The keras-tuner tuner.
        paths: dict. Files written: "csv", "json", "plot", "model".
    """

    best_model: keras.Model | None
    best_hyperparameters: kt.HyperParameters | None
    table: list[dict]
    objective: str
    tuner: Any = None
    paths: dict = dataclasses.field(default_factory=dict)

    @property
    def best_values(self) -> dict:
        """The best trial's hyperparameter values."""
        return (
            dict(self.best_hyperparameters.values) if self.best_hyperparameters else {}
        )

    def summary(self) -> str:
        """The results table as text."""
        return format_table(self.table, self.objective)

    def soup(
        self,
        data,
        top: int = 5,
        *,
        metric: str = "auto",
        bn: str = "auto",
        bn_data=None,
        steps: int | None = None,
        batch_size: int = 32,
        verbose: int = 1,
    ) -> SoupResult:
        """A greedy soup of the best trials' models (Wortsman et al. 2022).

        Loads the models of the `top` best completed trials (by the search's
        objective) from their checkpoints, each at its best epoch, as
        `best_model` is; keeps those of the best trial's architecture (the same
        head and cut: trials that differ in the hidden width of the head cannot
        be averaged, and are listed in `left_out`); then runs
        `tltf.averaging.soup` on them: from the best on `data`, each next model
        is added to the uniform weight average only if the score on `data`
        does not drop.

        Args:
            data: Labelled held-out data to choose on, as `tltf.evaluate` takes
                it (e.g. the search's validation data).
            top: int. How many of the best trials to try. Defaults to 5.
            metric: str. "auto", "accuracy" or "loss" (see `soup`). Defaults
                to "auto".
            bn: str. "auto", "recalibrate" or "keep": the BatchNorm statistics
                of each average (see `soup`). Defaults to "auto".
            bn_data: Images for the BatchNorm recalibration. Defaults to None
                (`data`).
            steps: int or None. Batches of `bn_data` per recalibration.
                Defaults to None (all).
            batch_size: int. Defaults to 32.
            verbose: int. 0 is silent; 1 prints the soup's table. Defaults to 1.

        Returns:
            A `tltf.averaging.SoupResult`; its ingredients are named by trial id.

        Raises:
            ConfigError: no tuner (a distributed worker's result) or no
                completed trial.
            ModelError: a trial's checkpoint cannot be loaded.

        Example:

        >>> result = tltf.tune("demo", train, val, max_trials=8)
        >>> soup = result.soup(val, top=5)
        >>> soup.kept, soup.score
        """
        top = check_positive_int(top, "top")
        if self.tuner is None:
            raise ConfigError(
                "This TuneResult has no tuner (a distributed worker's result): soup "
                "the search on the chief, or call tltf.tuning.results(tuner)."
            )
        trials = [
            t
            for t in self.tuner.oracle.get_best_trials(len(self.tuner.oracle.trials))
            if t.status == "COMPLETED"
        ][:top]
        if not trials:
            raise ConfigError("The search has no completed trial to make a soup of.")
        models = []
        for trial in trials:
            try:
                models.append(self.tuner.load_model(trial))
            except (OSError, ValueError) as error:
                raise ModelError(
                    f"Could not load trial {trial.trial_id}'s checkpoint ({error}). "
                    "Soup on the machine that ran the search, or lower top."
                ) from None
        names = [str(t.trial_id) for t in trials]
        same = [architecture_mismatch(models[0], m) is None for m in models]
        result = soup(
            [m for m, s in zip(models, same, strict=True) if s],
            data,
            metric=metric,
            bn=bn,
            bn_data=bn_data,
            names=[n for n, s in zip(names, same, strict=True) if s],
            steps=steps,
            batch_size=batch_size,
            verbose=0,
        )
        result = dataclasses.replace(
            result, left_out=tuple(n for n, s in zip(names, same, strict=True) if not s)
        )
        _compile_for_evaluation(result.model)  # as best_model: evaluate works
        if verbose:
            print(result.summary())
        return result

    def refit(self, train, validation_data=None, **kwargs) -> keras.Model:
        """The best trial's configuration, fine-tuned once more on `train`.

        Trials are compared on fixed epochs (5 + 5 by default) and on the
        images that `validation_data` (or `validation_split`) held out, so
        `best_model` has trained on fewer images, for fewer steps, than one
        `fine_tune` run would. `refit` builds a fresh model with the best
        values and fine-tunes it on `train` (typically the search's training
        and validation images together) with `fine_tune`'s defaults for
        everything the search did not choose or you did not set: "auto"
        epochs and the stage-2 guard (`FineTuneHyperModel.refit`). On 20
        images per class (benchmarks/tune_small.py) `best_model` scored 5.7
        points below `fine_tune`'s defaults on average; the refit scored as
        they did in 5 of 6 runs, and 2.0 points below them on average.

        Args:
            train: Training data, as for `fine_tune`.
            validation_data: Validation data for the refit, or None (the
                stage-2 guard then holds out a slice of `train` and hands it
                back). Defaults to None.
            **kwargs: Any `fine_tune` argument, replacing the search's
                (`callbacks`, `verbose`, `backup_dir`, `fine_tune_epochs`...).

        Returns:
            The fine-tuned `keras.Model`.

        Raises:
            ConfigError: no tuner or no best trial (a distributed worker's
                result), or a tuner whose hypermodel is not a
                `FineTuneHyperModel`.

        Example:

        >>> result = tltf.tune("demo", (x, y), validation_split=0.25)
        >>> model = result.refit((x, y))     # all the labelled images
        """
        hypermodel = getattr(self.tuner, "hypermodel", None)
        if self.best_hyperparameters is None or hypermodel is None:
            raise ConfigError(
                "This TuneResult has no tuner or best trial (a distributed "
                "worker's result): refit on the chief, or call "
                "tltf.tuning.results(tuner)."
            )
        if not isinstance(hypermodel, FineTuneHyperModel):
            raise ConfigError(
                f"refit trains a FineTuneHyperModel's configuration; this tuner's "
                f"hypermodel is a {type(hypermodel).__name__}. Build its best "
                "model with tuner.hypermodel.build(result.best_hyperparameters) "
                "and fit it."
            )
        return hypermodel.refit(
            self.best_hyperparameters, train, validation_data, **kwargs
        )

    def __str__(self) -> str:
        return self.summary()


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def results_table(tuner, from_records_only: bool = False) -> list[dict]:
    """One row per trial: what was unfrozen, LRs, head, score, time, stage 1.

    Columns: trial, status, blocks (unfrozen), unfrozen (block span),
    trainable_params, head_lr, fine_tune_lr, bn, lr_decay, head_dropout,
    head_units, score (best objective over stage 2), best_epoch (1-based, stage 1
    included), epoch_s (median stage-2 seconds per epoch; the first epoch also
    traces the model), stage1 ("trained", "reused", "continued" or "none"),
    stage1_from (the trial that trained it), head_key, seconds, reason (failed
    trials), and your own hyperparameters as `hp:<name>`.

    Args:
        tuner: A keras-tuner tuner that ran `FineTuneHyperModel` trials.
        from_records_only: bool. Use only tltf's per-trial records (on a
            distributed worker, which has no oracle). Defaults to False.

    Returns:
        A list of dicts, sorted by trial id.
    """
    project = Path(tuner.project_dir)
    trials = {}
    if not from_records_only:
        trials = dict(tuner.oracle.trials)
    ids = set(trials)
    for path in project.glob(f"trial_*/{TRIAL_RECORD}"):
        ids.add(path.parent.name[len("trial_") :])
    known = set(HP_NAMES.values())
    rows = []
    for trial_id in sorted(ids):
        record = _read_record(project / f"trial_{trial_id}" / TRIAL_RECORD) or {}
        trial = trials.get(trial_id)
        values = (
            dict(trial.hyperparameters.values) if trial else record.get("values", {})
        )
        status = str(trial.status) if trial else record.get("status", "?")
        reason = record.get("reason")
        if status in ("FAILED", "INVALID") and not reason and trial is not None:
            lines = [ln for ln in (trial.message or "").strip().splitlines() if ln]
            reason = lines[-1] if lines else None
        stage1 = record.get("stage1") or {}
        epochs = record.get("epoch_seconds") or []
        score = (
            trial.score
            if trial is not None and trial.score is not None
            else (record.get("score"))
        )
        row = {
            "trial": trial_id,
            "status": status,
            "blocks": values.get(HP_NAMES["unfreeze"]),
            "unfrozen": record.get("unfrozen"),
            "trainable_params": record.get("trainable_params"),
            "head_lr": values.get(HP_NAMES["head_lr"]),
            "fine_tune_lr": values.get(HP_NAMES["fine_tune_lr"]),
            "bn": values.get(HP_NAMES["bn"]),
            "lr_decay": values.get(HP_NAMES["lr_decay"]),
            "head_dropout": values.get(HP_NAMES["head_dropout"]),
            "head_units": values.get(HP_NAMES["head_units"]),
            "score": None if score is None else float(score),
            "best_epoch": record.get("best_epoch"),
            "epoch_s": float(np.median(epochs)) if epochs else None,
            "stage1": stage1.get("mode"),
            "stage1_from": stage1.get("from"),
            "head_key": stage1.get("head_key"),
            "seconds": record.get("seconds"),
            "reason": reason,
        }
        for name, value in sorted(values.items()):
            if name not in known and not name.startswith("tuner/"):
                row[f"hp:{name}"] = value
        rows.append(row)
    return rows


_COLUMNS = [
    ("trial", "trial", "{}"),
    ("status", "status", "{}"),
    ("blocks", "blocks", "{}"),
    ("trainable_params", "trainable", "{:,}"),
    ("head_lr", "head_lr", "{:.0e}"),
    ("fine_tune_lr", "ft_lr", "{:.1e}"),
    ("bn", "bn", "{}"),
    ("lr_decay", "decay", "{:g}"),
    ("head_dropout", "drop", "{:g}"),
    ("head_units", "units", "{}"),
    ("score", "score", "{:.4f}"),
    ("epoch_s", "s/epoch", "{:.2f}"),
    ("stage1", "stage 1", "{}"),
    ("stage1_from", "from", "{}"),
]


def format_table(rows: list[dict], objective: str = "score") -> str:
    """The results table as aligned text (failed trials get their reason)."""
    header = [title if key != "score" else objective for key, title, _ in _COLUMNS]
    lines = []
    for row in rows:
        cells = []
        for key, _, fmt in _COLUMNS:
            value = row.get(key)
            try:
                cells.append("-" if value is None else fmt.format(value))
            except (TypeError, ValueError):
                cells.append(str(value))
        lines.append(cells)
    widths = [
        max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]
    out = io.StringIO()
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "\n")
    for row, cells in zip(rows, lines, strict=True):
        out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        if row.get("reason"):
            # The first sentence; the CSV and JSON keep the whole reason.
            out.write(f"  <- {row['reason'].split('. ')[0][:160]}")
        out.write("\n")
    return out.getvalue().rstrip("\n")


def write_table(rows: list[dict], directory) -> tuple[Path, Path]:
    """Writes the table as CSV and JSON (atomically) into `directory`."""
    directory = Path(directory)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
    csv_path = atomic_write_text(directory / RESULTS_CSV, buffer.getvalue())
    json_path = atomic_write_json(directory / RESULTS_JSON, rows)
    return csv_path, json_path


def objective_name(tuner) -> str:
    return getattr(tuner.oracle.objective, "name", "score")


def _compile_for_evaluation(model: keras.Model) -> None:
    """Compiles a restored best model with its task's loss and metrics.

    keras-tuner rebuilds it uncompiled; compiled, `evaluate` works at once. The
    loss takes integer class labels (recompile for one-hot labels). The
    optimizer is built too, so that a `.keras` file saved from the model loads
    without Keras's "Skipping variable loading for optimizer" warning.
    """
    loss, metrics = default_loss_and_metrics(model_info(model))
    model.compile(optimizer="adam", loss=loss, metrics=metrics)
    model.optimizer.build(model.trainable_variables)


def results(tuner, export: bool = True, verbose=1) -> TuneResult:
    """Collects a finished (or resumed) search: table, best model, exports.

    Use it after your own `tuner.search(...)` with a `FineTuneHyperModel`.

    Args:
        tuner: The keras-tuner tuner.
        export: bool. Write CSV, JSON, plot and `best_model.keras` into the
            project folder. Defaults to True.
        verbose: int. Print the table. Defaults to 1.

    Returns:
        A `TuneResult`.
    """

    objective = objective_name(tuner)
    table = results_table(tuner)
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best_model = best_hp = None
    if completed:
        best_trial = tuner.oracle.get_best_trials(1)[0]
        best_hp = best_trial.hyperparameters
        try:
            best_model = tuner.load_model(best_trial)
            _compile_for_evaluation(best_model)
            # keras-tuner rebuilds the model from a checkpoint of its weights:
            # the class names of the data the trials trained on name its
            # classes again (see `fine_tune`).
            with contextlib.suppress(ModelError):  # a build_hook's own model
                record_class_names(
                    best_model, getattr(tuner.hypermodel, "class_names", None)
                )
        except (OSError, ValueError) as error:
            # E.g. a worker's checkpoint on a disk the chief cannot see.
            print(
                f"tltf: could not load the best trial's checkpoint ({error}); "
                "best_model is None. Rebuild it from best_hyperparameters."
            )
    paths = {}
    project = Path(tuner.project_dir)
    if export:
        paths["csv"], paths["json"] = write_table(table, project)
        if any(r["score"] is not None for r in table):
            plot_tuning(table, objective, path=project / RESULTS_PLOT)
            paths["plot"] = project / RESULTS_PLOT
        if best_model is not None:
            paths["model"] = atomic_save_model(best_model, project / BEST_MODEL)
    if verbose:
        print(format_table(table, objective))
        shared = sum(r["stage1"] == "reused" for r in table)
        print(
            f"tltf: {len(completed)} of {len(table)} trials completed; {shared} reused "
            f"a stage 1. Results in {project}."
        )
    return TuneResult(best_model, best_hp, table, objective, tuner, paths)
