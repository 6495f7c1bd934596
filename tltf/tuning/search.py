"""`tune`: a keras-tuner search of a `FineTuneHyperModel`, end to end.

The tuners by name (`TUNERS`), the objective ("auto", and a check that the trials
log it), one search per project folder (`project_lock`), resume and overwrite,
failed trials (recorded; a `TrainingError` when none completes or too many fail in
a row), and the chief of keras-tuner's distributed mode (`serve_chief`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np
import tensorflow as tf

from tltf._checks import callback_list, check_keywords, named_arguments
from tltf.data import DataBundle
from tltf.errors import ConfigError, TrainingError, suggest
from tltf.probe import count_rows
from tltf.settings import FIELDS, FIT_ARGUMENTS
from tltf.tuning.hypermodel import (
    HYPERMODEL_OPTIONS,
    FineTuneHyperModel,
    split_data_args,
)
from tltf.tuning.results import (
    RESULTS_CSV,
    TuneResult,
    objective_name,
    results,
    results_table,
    write_table,
)
from tltf.tuning.space import SearchSpace
from tltf.tuning.store import PROJECT_LOCK, check_project_folder, project_lock

#: The search's own options, taken through `tune`'s `**kwargs`, with their
#: defaults (`seed` also goes to the hypermodel).
SEARCH_OPTIONS: dict[str, Any] = {
    "seed": None,
    "max_consecutive_failed_trials": 3,
    "hyperparameters": None,
    "tuner_kwargs": None,
    "export": True,
}
#: Every keyword `tune` passes on to the `FineTuneHyperModel` it builds.
HYPERMODEL_ARGUMENTS = (
    *named_arguments(FineTuneHyperModel.__init__),
    *HYPERMODEL_OPTIONS,
    *FIELDS,
    *FIT_ARGUMENTS,
)
#: The defaults of the model arguments that `tune` took by name before, when a
#: `FineTuneHyperModel` passed as `base` ignored them.
_FORMER_DEFAULTS = {
    "num_classes": None,
    "task": "multiclass",
    "input_shape": None,
    "weights": "imagenet",
    "head_epochs": 5,
    "fine_tune_epochs": 5,
    "optimizer": "adam",
    "share_stage1": True,
}

TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
    "grid": kt.GridSearch,
}


def tune(
    base,
    train,
    validation_data=None,
    *,
    search: SearchSpace | dict | None = None,
    tuner="bayesian",
    max_trials: int = 10,
    objective="auto",
    directory="tltf_tuning",
    project_name: str = "tune",
    overwrite: bool = False,
    callbacks: list | None = None,
    verbose=1,
    validation_split: float | None = None,
    **kwargs,
) -> TuneResult:
    """Searches what to unfreeze (and how) with keras-tuner, sharing stage 1.

    Builds a `FineTuneHyperModel`, runs a keras-tuner search, and writes into
    the project folder (`directory/project_name`) a results table
    (`tltf_results.csv` and `.json`, printed too), a plot of the val metric
    against unfrozen blocks with time per epoch (`tltf_tuning.png`) and the
    best model (`best_model.keras`), all atomically.

    With `overwrite=False` (the default) an existing project is resumed:
    finished trials are not run again, an interrupted one is re-run, and a
    larger `max_trials` adds trials. A trial that fails (NaN loss, out of
    memory, a bad combination) is recorded as FAILED with its reason; the search
    goes on (it stops after `max_consecutive_failed_trials` failures in a row).
    If no trial completes, `tune` raises a TrainingError with the first reason.

    One search at a time per project folder: a second process on the same
    project raises a ConfigError (see `project_lock`), unless they run in
    keras-tuner's chief/worker mode.

    Distributed: run the same script on every machine with
    `KERASTUNER_TUNER_ID` ("chief" on one, "tuner0", "tuner1"... elsewhere),
    `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set, and a project folder
    on a shared file system. The chief serves trials and writes the results;
    workers run trials and share stage 1 through the folder.

    Args:
        base: A registry name, saved base folder, `keras.Model` or `Base`; or a
            `FineTuneHyperModel` (then the model and settings keywords below
            must be left out, or at their defaults); or None when `tuner` is a
            keras-tuner instance.
        train: Training data, as for `fine_tune` (arrays, tf.data, DataBundle).
        validation_data: Validation data. Required (or a DataBundle with one,
            or `validation_split`).
        search: SearchSpace or dict. See `SearchSpace`. Defaults to its defaults.
        tuner: "bayesian", "random", "hyperband", "grid" or a `kt.Tuner`.
            Defaults to "bayesian".
        max_trials: int. Trials at most (Hyperband: a cap on its brackets).
            Defaults to 10.
        objective: str or kt.Objective. "auto": "val_accuracy" for
            classification, "val_loss" for regression. Defaults to "auto".
        directory: str. Parent folder of the project. Defaults to "tltf_tuning".
        project_name: str. Defaults to "tune".
        overwrite: bool. Start over instead of resuming. Defaults to False.
        callbacks: A Keras callback, a list of them, or None. For every trial's
            stage 2 (deep-copied per trial, as keras-tuner does).
        verbose: int. 0 is silent. Defaults to 1.
        validation_split: float or None. With `(images, labels)` arrays and no
            `validation_data`: this fraction of them is the validation data of
            every trial, as `fine_tune(..., validation_split=)` splits (seeded
            by `seed`, or 0; stratified by class). Defaults to None.
        **kwargs: Any other name is a ConfigError naming the closest argument,
            raised before anything is built or written. The search's options:

            - seed: int or None. Seeds trials and the oracle. Defaults to None.
            - max_consecutive_failed_trials: int. Defaults to 3.
            - hyperparameters: kt.HyperParameters or None. Entries registered
              here override the search space (keras-tuner's own mechanism).
            - tuner_kwargs: dict or None. Extra arguments of the tuner class.
            - export: bool. Write the table, plot and best model. Defaults to
              True.

            The model (the `FineTuneHyperModel` arguments):

            - num_classes: int or None. Inferred from a DataBundle or array
              labels.
            - task: str. See `build_model`. Defaults to "multiclass".
            - input_shape: tuple or None. See `build_model`.
            - weights: See `build_model`. Defaults to "imagenet".
            - head, stage2_hps, build_hook, fit_hook, base_kwargs,
              share_stage1 (bool: train stage 1 once per head key; defaults to
              True), head_store, name: see `FineTuneHyperModel`.

            What every trial trains: `settings` (a `tltf.FineTuneSettings`)
            and its fields as keywords, as for `FineTuneHyperModel`, e.g.:

            - head_epochs: int. Stage-1 epochs. Defaults to 5. Fixed numbers,
              not `fine_tune`'s "auto", so that trials are compared on the same
              epochs (see `FineTuneHyperModel`).
            - fine_tune_epochs: int. Stage-2 epochs (Hyperband's max_epochs).
              Defaults to 5.
            - optimizer: str or Optimizer. Defaults to "adam".
            - `batch_size`, `cache_features`, `label_smoothing`, `augment`,
              and the other fine_tune settings and `model.fit` arguments.

    Returns:
        A `TuneResult`: best model, best hyperparameters, the table.

    Raises:
        ConfigError: A bad argument, an objective that the trials do not log, or
            another process searching the same project.
        TrainingError: No trial completed.

    Example:

    >>> result = tltf.tune("efficientnet_b0", train_ds, val_ds, num_classes=5,
    ...                    tuner="random", max_trials=12,
    ...                    search={"fine_tune_lr": [1e-5, 1e-4]})
    >>> result.best_values["unfreeze_blocks"]
    >>> result.best_model.save("best.keras")
    """
    from keras_tuner.src.distribute import utils as dist_utils

    # Fail before any tuner or folder exists. A split is made here, once.
    callbacks = callback_list(callbacks)
    given = tuner.hypermodel if isinstance(tuner, kt.Tuner) else base
    own = isinstance(given, FineTuneHyperModel)
    train, validation_data = split_data_args(
        (train,),
        {
            "validation_data": validation_data,
            **(
                {}
                if validation_split is None
                else {"validation_split": validation_split}
            ),
        },
        "tltf.tune",
        task=given.task if own else kwargs.get("task", "multiclass"),
        seed=given.seed if own else kwargs.get("seed"),
    )
    check_keywords(
        kwargs,
        (*named_arguments(tune), *SEARCH_OPTIONS, *HYPERMODEL_ARGUMENTS),
        "tune",
        f"Its other keywords are {', '.join(SEARCH_OPTIONS)}, the arguments of "
        "tltf.FineTuneHyperModel, the fields of tltf.FineTuneSettings and the "
        f"model.fit arguments {', '.join(FIT_ARGUMENTS)}.",
    )
    options = {k: kwargs.pop(k, v) for k, v in SEARCH_OPTIONS.items()}
    hypermodel, kt_tuner = None, None
    if isinstance(tuner, kt.Tuner):
        kt_tuner = tuner
        if base is not None and base is not tuner.hypermodel:
            raise ConfigError(
                "Pass base=None when tuner is a keras-tuner instance: its hypermodel "
                f"is used. Received: base={base!r}"
            )
        hypermodel = tuner.hypermodel
    elif isinstance(base, FineTuneHyperModel):
        hypermodel = base
    if hypermodel is None:
        if options["seed"] is not None:
            kwargs["seed"] = options["seed"]
        num_classes = kwargs.pop("num_classes", None)
        if num_classes is None:
            num_classes = _infer_num_classes(train, kwargs.get("task", "multiclass"))
        hypermodel = FineTuneHyperModel(base, num_classes, search=search, **kwargs)
        options["seed"] = hypermodel.seed
    else:
        # Left at their defaults, these were ignored before they were keywords.
        given = sorted(
            k
            for k, v in kwargs.items()
            if type(v) is not type(_FORMER_DEFAULTS.get(k, ...))
            or v != _FORMER_DEFAULTS[k]
        )
        if given or search is not None:
            raise ConfigError(
                "Model and search arguments go to the FineTuneHyperModel you "
                f"passed; tune() received {given + (['search'] if search else [])}."
            )
    objective = _objective(objective, hypermodel.task)
    distributed = dist_utils.has_chief_oracle()
    if kt_tuner is None:
        _check_objective(objective, hypermodel)
        project = (  # chief and workers share one: the chief's
            Path(directory) / project_name
            if distributed
            else check_project_folder(directory, project_name)
        )
    else:
        _check_objective(kt_tuner.oracle.objective, hypermodel)
        project = Path(kt_tuner.project_dir)
    fit_kwargs = {"callbacks": callbacks, "verbose": verbose}
    if validation_data is not None:
        fit_kwargs["validation_data"] = validation_data
    # One search per project folder; chief and workers share theirs.
    with contextlib.nullcontext() if distributed else project_lock(project):
        if kt_tuner is None:
            if overwrite and not distributed:
                _clear_project(project)  # keras-tuner's overwrite deletes the lock
            kt_tuner = _make_tuner(
                tuner,
                hypermodel,
                objective=objective,
                max_trials=max_trials,
                directory=directory,
                project_name=project_name,
                # Only the chief may clear a distributed project.
                overwrite=overwrite and dist_utils.is_chief_oracle(),
                seed=options["seed"],
                max_consecutive_failed_trials=options["max_consecutive_failed_trials"],
                hyperparameters=options["hyperparameters"],
                fine_tune_epochs=hypermodel.fine_tune_epochs,
                tuner_kwargs=options["tuner_kwargs"] or {},
            )
        return _search(kt_tuner, train, fit_kwargs, options["export"], verbose)


def _search(kt_tuner, train, fit_kwargs, export, verbose) -> TuneResult:
    """Runs a search (or serves it, on the chief) and collects the results."""
    from keras_tuner.src.distribute import utils as dist_utils

    if dist_utils.is_chief_oracle():
        kt_tuner.oracle.verbose = verbose
        kt_tuner.save()
        serve_chief(kt_tuner.oracle)
    else:
        from keras_tuner.src import config as kt_config

        # keras-tuner prints each failed trial's traceback; the table has the
        # reason and trial.json the traceback (verbose=2 prints them too).
        debug, kt_config.DEBUG = kt_config.DEBUG, verbose == 2
        try:
            kt_tuner.search(train, **fit_kwargs)
        except RuntimeError as error:
            if "consecutive failures" not in str(error):
                raise
            _stop_after_failures(kt_tuner, error, export)
        finally:
            kt_config.DEBUG = debug
        if dist_utils.has_chief_oracle():
            # A worker: the chief gathers and exports the results.
            table = results_table(kt_tuner, from_records_only=True)
            return TuneResult(None, None, table, objective_name(kt_tuner), kt_tuner)
    result = results(kt_tuner, export=export, verbose=verbose)
    _raise_if_all_failed(result.table, kt_tuner.project_dir, export)
    if verbose:
        note = few_validation_note(result, train, fit_kwargs.get("validation_data"))
        if note:
            print(note)
    return result


#: `tune` notes a best validation accuracy whose 95% interval is this wide or
#: wider (each side): on about 250 images or fewer at an accuracy near 0.8.
NOISY_ACCURACY = 0.05


def few_validation_note(result: TuneResult, train, validation) -> str | None:
    """One line when the trials were compared on too few validation images to
    tell their accuracies apart, or None.

    The best trial's validation accuracy `p` on `m` images is a binomial
    proportion: its 95% interval (Wilson's, which stays wide at p = 1) is
    `z / (1 + z^2 / m) * sqrt(p (1 - p) / m + z^2 / (4 m^2))` on each side,
    z = 1.96. The line is printed from `NOISY_ACCURACY` up.

    The images are counted in arrays, in a `DataBundle`'s split, and in a
    batched `tf.data.Dataset` of known, finite length (one pass of its input
    pipeline, fewer images than one epoch of one trial read); a dataset of
    unknown length may be endless, and gets no line.
    """
    if result.objective != "val_accuracy":
        return None
    scores = [r["score"] for r in result.table if r.get("score") is not None]
    if not scores:
        return None
    if isinstance(validation, (tuple, list)) and len(validation) >= 2:
        count = len(validation[1])
    elif isinstance(train, DataBundle) and (
        validation is None or validation is train.validation
    ):
        count = train.num_validation
    elif isinstance(validation, tf.data.Dataset) and validation.cardinality() > 0:
        count = count_rows(validation)
    else:
        count = None
    if not count:
        return None
    best = max(scores)
    z = 1.96
    half = (
        z
        / (1 + z * z / count)
        * math.sqrt(best * (1 - best) / count + z * z / (4 * count * count))
    )
    if half < NOISY_ACCURACY:
        return None
    return (
        f"tltf: note: the trials were compared on {count} validation images, where "
        f"the best val_accuracy ({best:.3f}) is uncertain by about +-{half:.3f} "
        "(95%): trials closer than that may differ by chance. With this few, "
        "train with fine_tune's defaults on every image (tltf train), or the best "
        "values with result.refit(all the labelled images): "
        "on 20 images per "
        "class the search's best model scored 5.7 points below the defaults "
        "(benchmarks/tune_small.py)."
    )


def _clear_project(project: Path) -> None:
    """Empties a project folder (overwrite=True), keeping its lock."""
    for child in project.iterdir():
        if child.name == PROJECT_LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _raise_if_all_failed(table: list[dict], project, export: bool) -> None:
    """Raises a TrainingError when trials ran and none of them completed."""
    failed = [r for r in table if r["status"] in ("FAILED", "INVALID")]
    if not failed or any(r["status"] == "COMPLETED" for r in table):
        return
    first = failed[0]
    where = RESULTS_CSV if export else "trial_*/trial.json"
    raise TrainingError(
        f"Expected at least one trial to complete. Received: {len(failed)} of "
        f"{len(table)} trials failed, so there is no best model. Trial "
        f"{first['trial']} failed with: {first.get('reason') or 'an unknown error'}"
        f". Every trial's reason is in {project} ({where}). Fix the cause, then "
        "run tune() again with overwrite=True (a resumed search does not re-run "
        "failed trials)."
    ) from None


def _stop_after_failures(tuner, error, export) -> None:
    """Saves the table, then raises a TrainingError naming the last reasons."""
    table = results_table(tuner)
    if export:
        write_table(table, tuner.project_dir)
    failed = [r for r in table if r["status"] == "FAILED"]
    # First sentences, so that the same cause at different rates reads once.
    reasons = sorted({r["reason"].split(" at ")[0] for r in failed if r.get("reason")})
    raise TrainingError(
        f"The search stopped: {tuner.oracle.max_consecutive_failed_trials} trials "
        f"in a row failed. Reasons: {'; '.join(reasons) or str(error)}. The "
        f"table is in {tuner.project_dir}. Fix the cause (or narrow the search "
        "space), then run tune() again with overwrite=False to continue; raise "
        "max_consecutive_failed_trials to tolerate more failures."
    ) from None


def _infer_num_classes(train, task):
    if isinstance(train, DataBundle):
        return train.num_classes
    if task in ("binary", "regression"):
        return None
    if isinstance(train, (tuple, list)) and len(train) in (2, 3):
        y = np.asarray(train[1])
        if task == "multilabel" or (y.ndim == 2 and y.shape[1] > 1):
            return int(y.shape[1])
        return int(y.max()) + 1
    raise ConfigError("Pass num_classes: it cannot be inferred from a tf.data.Dataset.")


def _objective(objective, task):
    if isinstance(objective, str) and objective == "auto":
        return "val_loss" if task == "regression" else "val_accuracy"
    return objective


def _objective_names(objective) -> list:
    """The metric names an objective reads: a str, a kt.Objective or a list."""
    if isinstance(objective, (list, tuple)):
        return [name for o in objective for name in _objective_names(o)]
    inner = getattr(objective, "objectives", None)  # kt's MultiObjective
    if inner is not None:
        return _objective_names(list(inner))
    if isinstance(objective, kt.Objective):
        return [objective.name]
    return [objective]


def _check_objective(objective, hypermodel) -> None:
    """Rejects an objective that no trial logs, before any trial runs."""
    known = hypermodel.logged_metrics()
    if known is None:
        return
    for name in _objective_names(objective):
        if name not in known:
            raise ConfigError(
                f"Expected objective to be a metric that the trials log: "
                f"{sorted(known)}. Received: objective={name!r}."
                f"{suggest(str(name), known, n=1)} Pass one of these names (or a "
                "keras_tuner.Objective on one)."
            )


def _make_tuner(
    kind,
    hypermodel,
    *,
    objective,
    max_trials,
    directory,
    project_name,
    overwrite,
    seed,
    max_consecutive_failed_trials,
    hyperparameters,
    fine_tune_epochs,
    tuner_kwargs,
):
    if not isinstance(kind, str) or kind not in TUNERS:
        raise ConfigError(
            f"Unknown tuner {kind!r}.{suggest(str(kind), TUNERS)} Use one of "
            f"{sorted(TUNERS)} or a keras_tuner.Tuner instance."
        )
    if (
        isinstance(max_trials, bool)
        or not isinstance(max_trials, int)
        or max_trials < 1
    ):
        raise ConfigError(f"Expected max_trials >= 1. Received: {max_trials!r}")
    args = dict(
        hypermodel=hypermodel,
        objective=objective,
        directory=str(directory),
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
        hyperparameters=hyperparameters,
    )
    if kind == "hyperband":
        args.update(max_epochs=fine_tune_epochs, hyperband_iterations=1)
    else:
        args["max_trials"] = max_trials
    args.update(tuner_kwargs)
    try:
        tuner = TUNERS[kind](**args)
    except ImportError as error:
        raise ConfigError(
            f"tuner={kind!r} needs a package that is missing ({error}). Install "
            "keras-tuner's extra with `pip install 'keras-tuner[bayesian]'` (scipy "
            "and scikit-learn), or use tuner='random'."
        ) from None
    if kind == "hyperband":
        tuner.oracle.max_trials = max_trials  # the base oracle stops there
    return tuner


def serve_chief(oracle, poll_s: float = 0.2) -> None:
    """Serves a keras-tuner oracle to workers until the search is over.

    keras-tuner's own chief loop checks for the end only every 20 seconds once
    the first worker is done; this one uses keras-tuner's gRPC servicer and
    stops as soon as no trial runs and every worker has been told to stop.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = (
        f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise ConfigError(
            f"The chief could not listen on {address}. Set KERASTUNER_ORACLE_IP to "
            "an address of this machine and KERASTUNER_ORACLE_PORT to a free port."
        )
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)
