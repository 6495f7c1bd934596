"""The stage-2 guard: fine-tuning never ends worse than its own stage 1.

Fine-tuning a pretrained base on a few images can make the model worse than the
head alone ("fine-tuning made it worse"): the rate is too high for the data, or
the top blocks drift. `fine_tune(keep_best=True)` (the default) therefore scores
the model at the end of stage 1 and after every stage-2 epoch, keeps the weights
of the best one and restores them when the run ends.

The score:

- with validation data, the validation loss (lower is better), after every
  epoch of both stages: a head that starts overfitting in stage 1 is caught
  too, and the run ends with the weights of its best epoch;
- without it (`keep_best=True` or "holdout"), for a model trained on
  `(images, labels)` arrays, a `load_data` bundle or a `tf.data.Dataset`: its
  score on a slice of the training images that neither stage trains on. A
  dataset, or a TFDS bundle, whose labels are not known without a pass is
  read into memory for that, up to `HOLDOUT_READ_BYTES` and only if it gives
  the same images every pass (a random augmentation in the pipeline would be
  frozen into one draw). The slice: 20%, at most 1,000 images
  (`holdout_rows`). A classifier (2 or
  more images per class) holds out a stratified slice, at least 1 image per
  class, and is scored by its accuracy there (each image counted by its
  sample weight, where the data has them): a stage-2 epoch replaces the
  best so far only with a higher accuracy (ties keep the earlier epoch, and
  stage 1 over stage 2), so when stage 1 already classifies the whole slice
  correctly the run ends after stage 1 (`stop_training`, as EarlyStopping
  does: no stage-2 epoch could be kept); a regression model by its mean squared error (a random
  slice, from 10 training images up); a multi-label model, with
  `keep_best="holdout"` only (measured: on few images the slice costs it more
  than the guard saves), by its label accuracy, then its cross-entropy.
  `fine_tune` then hands the
  slice back: the linear head is refit in closed form on every training
  image, with the base the guard kept. On few images this is the only
  criterion here that sees what fine-tuning does to images it has not trained
  on (benchmarks/RESULTS.md, "The held-out guard");
- otherwise (`keep_best="features"`), the leave-one-out accuracy of a ridge
  probe on the model's pooled features of the training images (one inference
  pass per epoch, no image held out; see `tltf.probe.ridge_probe`), or for
  regression and multi-label the leave-one-out R² of ridge regression on them
  (`tltf.probe.ridge_r2_probe`); each image counted by its sample weight,
  where the data has them. Ties go to the later
  epoch. This measures whether stage 2 kept the features as separable as stage 1
  left them; it catches features that fine-tuning damaged, not a model that
  memorised the training set, which only held-out data can show;
- otherwise (no training features to read) there is no score, and the last
  epoch is kept.

With `fine_tune_patience` (`patience` here), stage 2 ends once that many
stage-2 epochs in a row were not kept, as Keras's `EarlyStopping` with
`restore_best_weights=True` would; the run still ends with the best weights.

With `backup_dir`, the best weights are written there too (`tltf-best.npz`,
atomically, before the epoch's checkpoint), so that a resumed run keeps the same
choice as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import keras
import numpy as np

from tltf._io import atomic_path
from tltf.cache import FeatureCache, feature_extractor
from tltf.distribute import is_chief
from tltf.heads import without_muted_pixels
from tltf.probe import ridge_probe, ridge_r2_probe, scorable, sigmoid

#: The best weights inside a backup folder.
BEST_FILE = "tltf-best.npz"

#: The held-out slice: this share of each class, at least one image per class,
#: at most this many images in all.
HOLDOUT_FRACTION, HOLDOUT_MOST = 0.2, 1000


def class_ids(labels: np.ndarray) -> np.ndarray:
    """Class indices of labels given as indices, one-hot rows or 0/1 floats."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1).astype(np.int64)
    return np.rint(labels.reshape(len(labels), -1)[:, 0]).astype(np.int64)


#: Tasks whose held-out slice is stratified by class (others: a random slice).
CLASSIFIERS = ("multiclass", "binary")
#: A random slice (regression, multi-label) needs this many rows in all.
HOLDOUT_MIN_ROWS = 10
#: A `tf.data.Dataset` is read into memory, so that a slice can be held out of
#: it, when its images and labels take at most this many bytes (1 GiB: 1,783
#: images at 224 x 224 px in float32). Set it to 0 to never read one.
HOLDOUT_READ_BYTES = 2**30


def holdout_rows(
    labels: np.ndarray, seed: int | None, task: str = "multiclass"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Splits the training rows into the rows trained on and a held-out slice.

    For a classifier the slice is stratified: `HOLDOUT_FRACTION` of each class
    (rounded, at least one image), scaled down to at most `HOLDOUT_MOST` images
    in all (never below one per class, so more classes than that hold one
    each). For a regression or multi-label task it is `HOLDOUT_FRACTION` of the
    rows drawn at random (at most `HOLDOUT_MOST`). It depends on the labels,
    `seed` and `task` only, so a resumed run holds out the same images.

    Returns:
        `(trained_rows, slice_rows)`, both sorted, or None when some class has
        fewer than 2 images (or there is only one class); for other tasks, when
        there are fewer than `HOLDOUT_MIN_ROWS` rows.
    """
    if not len(labels):
        return None
    rng = np.random.default_rng([0 if seed is None else int(seed), 7919])
    if task not in CLASSIFIERS:
        if len(labels) < HOLDOUT_MIN_ROWS:
            return None
        take = min(HOLDOUT_MOST, max(2, round(HOLDOUT_FRACTION * len(labels))))
        held = rng.choice(len(labels), take, replace=False)
    else:
        y = class_ids(labels)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2 or counts.min() < 2:
            return None
        take = np.maximum(1, np.rint(HOLDOUT_FRACTION * counts)).astype(np.int64)
        if take.sum() > HOLDOUT_MOST:
            take = np.maximum(1, (take * HOLDOUT_MOST) // take.sum())
        held = np.concatenate(
            [
                rng.choice(np.flatnonzero(y == c), m, replace=False)
                for c, m in zip(classes, take, strict=True)
            ]
        )
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclasses.dataclass(frozen=True)
class Kept:
    """What the model `fine_tune` returns holds: which epoch's weights, and why.

    `fine_tune` sets it on the History it returns, as `history.kept`, and
    `tltf.plot_history` marks its epoch.

    Attributes:
        epoch: int. The 1-based epoch whose weights the model holds, numbered
            as the History numbers its epochs (0: no epoch ran, the head
            stage 1 started from).
        stage: int. That epoch's stage: 1 (the base frozen) or 2.
        blocks: tuple of str. The base's blocks, bottom to top, that stage 2
            had trained by that epoch; empty when the model holds stage 1's
            weights.
        note: str. Why, in words: keep_best's choice, the hand-back of its
            held-out slice, WiSE-FT's mix.
    """

    epoch: int
    stage: int
    blocks: tuple[str, ...]
    note: str

    def __str__(self) -> str:
        trained = (
            f"blocks {', '.join(self.blocks)} fine-tuned"
            if self.blocks
            else "base frozen"
        )
        return f"epoch {self.epoch} (stage {self.stage}, {trained}): {self.note}"


class KeepBest(keras.callbacks.Callback):
    """Keeps the best of stage 1's end and every stage-2 epoch; restores it at the end.

    With validation data the candidates are every epoch of both stages, scored
    by `val_loss`: the run ends with the weights of its best epoch.

    Args:
        schedule: FineTuneSchedule. The run's schedule (for the stage of an epoch).
        validation: tf.data.Dataset, bool or None. The fit's validation data, or
            whether it has any: the score is then `val_loss`. With the dataset,
            a stage 1 that ran no epochs (a closed-form head) is scored by one
            evaluation of it when stage 2 starts.
        train_features: tf.data.Dataset or None. Unshuffled training batches of
            `(image, label)`, for the leave-one-out score. Defaults to None.
        task: str. The model's task. Defaults to "multiclass".
        backup_dir: str, PathLike or None. Where to keep the best weights of a
            resumable run. Defaults to None.
        holdout: tuple or None. `(batches, class_ids, logits[, weights])`:
            the held-out slice as unshuffled `(image, label)` batches, its class
            indices (or targets), whether the model outputs logits, and its
            sample weights (None or absent: every image counts alike). Scores
            the model by its accuracy on the slice, each image weighed by its
            sample weight as Keras weighs its metrics; a later epoch must be
            more accurate to be kept. Defaults to None.
        verbose: bool. Print one line saying what was kept and why. Defaults to
            True.
        patience: int or None. Stop the run (`stop_training`) once this many
            stage-2 epochs in a row were not kept, counted from stage 1's end
            or the last epoch kept, whichever is later. Defaults to None: every
            epoch runs.
        validation_freq: int or list. The fit's `validation_freq`: which
            epochs of a resumed run's history have validation logs. Defaults
            to 1.
    """

    def __init__(
        self,
        schedule,
        validation: bool,
        train_features=None,
        task: str = "multiclass",
        backup_dir=None,
        holdout=None,
        verbose: bool = True,
        patience: int | None = None,
        validation_freq=1,
    ):
        super().__init__()
        self.schedule = schedule
        self.validation = validation is not None and validation is not False
        self.validation_data = None if isinstance(validation, bool) else validation
        self.train_features = train_features
        self.holdout = holdout
        #: Set while the slice's frozen-block output is cached (see
        #: `schedule._score_held_out_through`: from stage 1 where it shares
        #: stage 2's pass, and through stage 2): the model's outputs on the
        #: slice, in order, through the top part alone. None: `model.predict`.
        self.holdout_predict = None
        self.task = task
        self.path = Path(backup_dir).expanduser() / BEST_FILE if backup_dir else None
        self.verbose = verbose
        self.patience = patience
        self.validation_freq = validation_freq
        #: The 0-based epoch after which `patience` stopped the run, or None.
        self.stopped_epoch: int | None = None
        self._scored_epochs: list[int] = []  # the stage-2 epochs scored
        self.best_score: tuple | None = None
        self.best_epoch: int | None = None  # -1: the end of stage 1
        self.best_weights: list[np.ndarray] | None = None
        self.last_epoch: int | None = None
        self.last_score: tuple | None = None
        self._stage_one_logs: dict | None = None
        self._extract = None
        #: Whether the run ended after stage 1: stage 2 could not have been kept.
        self.ended_after_stage_one = False
        self._restored_saved = False
        #: Whether every class has one training image, so that leave-one-out
        #: could not score an epoch (the run then ends at its last epoch).
        self.unscorable = False

    @property
    def criterion(self) -> str | None:
        """What the score is, in words; None when there is none."""
        if self.validation:
            return "val_loss"
        if self.holdout is not None:
            what = {"regression": "mean squared error", "multilabel": "label accuracy"}
            return (
                f"{what.get(self.task, 'accuracy')} on {len(self.holdout[1]):,} "
                "held-out training images"
            )
        if self.train_features is not None:
            what = "accuracy" if self.task in CLASSIFIERS else "R²"
            return f"leave-one-out {what} of the features"
        return None

    @property
    def _lower_is_better(self) -> bool:
        """Whether the score is a negated loss (shown without its sign)."""
        return self.validation or (
            self.holdout is not None and self.task == "regression"
        )

    # -- scores ------------------------------------------------------------------
    def _score(self, logs) -> tuple | None:
        if self.validation:
            value = (logs or {}).get("val_loss")
            if value is None or not math.isfinite(float(value)):
                return (-math.inf,)
            return (-float(value),)
        if self.criterion is None:
            return None
        if self.holdout is not None:
            return self.holdout_score()
        return self._loo_score()

    def holdout_score(self) -> tuple:
        """The model's score on the held-out slice (higher is better).

        A classifier: `(accuracy, mean log-likelihood)`; multi-label: `(label
        accuracy, mean log-likelihood per label)`; regression: `(-mean squared
        error,)`. Each image counts by its sample weight, where the slice has
        them.
        """
        batches, y, logits, *weights = self.holdout
        w = weights[0] if weights else None
        raw = (
            self.holdout_predict()
            if self.holdout_predict is not None
            else self.model.predict(batches, verbose=0)
        )
        scores = np.asarray(raw, dtype=np.float64).reshape(len(y), -1)
        if not np.all(np.isfinite(scores)):
            return (-math.inf, -math.inf)

        def mean(values):  # over the images; per label first for multi-label
            values = values.reshape(len(y), -1).mean(axis=1)
            return float(np.average(values, weights=w))

        if self.task == "regression":
            error = mean((scores - np.reshape(y, scores.shape)) ** 2)
            return (round(-error, 9),)
        if self.task == "multilabel":
            t = np.reshape(y, scores.shape) > 0.5
            p = sigmoid(scores) if logits else scores
            p = np.clip(p, 1e-12, 1 - 1e-12)
            accuracy = mean((p > 0.5) == t)
            likelihood = mean(np.where(t, np.log(p), np.log(1 - p)))
            return (round(accuracy, 9), round(likelihood, 9))
        if scores.shape[1] == 1:  # binary: one sigmoid output
            p1 = sigmoid(scores[:, 0]) if logits else scores[:, 0]
            probs = np.stack([1 - p1, p1], axis=1)
        elif logits:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        else:
            probs = scores
        accuracy = mean(probs.argmax(axis=1) == y)
        picked = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
        return (round(accuracy, 9), round(mean(np.log(picked)), 9))

    def _loo_score(self) -> tuple | None:
        if self.unscorable:
            return None
        if self._extract is None:
            self._extract = feature_extractor(self.model)
        cache = FeatureCache(self.model, self.train_features, extractor=self._extract)
        x = np.asarray(cache.features).reshape(cache.count, -1)
        x = without_muted_pixels(self.model, x)
        y = cache.others[0]
        w = cache.others[1] if len(cache.others) > 1 else None  # sample weights
        cache.close()
        if not np.all(np.isfinite(x)):
            return (-math.inf, -math.inf)
        if w is not None:
            w = np.asarray(w, dtype=np.float64).reshape(len(y), -1)[:, 0]
            w = w if w.sum() > 0 else None
        if self.task not in CLASSIFIERS:
            fit_r2, loo_r2, _ = ridge_r2_probe(x, y, x, y, w, w)
            return (round(loo_r2, 9), round(fit_r2, 9))
        y = class_ids(y)
        if not scorable(y).any():
            self.unscorable = True
            return None
        classes = int(max(2, y.max() + 1))
        fit_acc, loo_acc, _ = ridge_probe(x, y, x, y, classes, w, w)
        return (round(loo_acc, 9), round(fit_acc, 9))

    # -- Keras hooks ---------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        if self.best_score is not None or self.schedule.plan(epoch)[0] != 2:
            return
        # The weights now are those stage 1 ended with: the first candidate
        # (unless `_end_if_nothing_to_gain` scored them already).
        logs = self._stage_one_logs
        if self.validation and logs is None:
            if self.validation_data is None:
                return  # stage 1 did not run here (and no stored best)
            # Stage 1 ran no epochs (a closed-form head): evaluate it once. The
            # metrics are shared with training, so they are reset afterwards.
            result = self.model.evaluate(
                self.validation_data, verbose=0, return_dict=True
            )
            self.model.reset_metrics()
            logs = {"val_loss": result["loss"]}
        score = self._score(logs)
        if score is not None:
            self._keep(score, -1)

    def on_epoch_end(self, epoch, logs=None):
        stage = (logs or {}).get("stage") or self.schedule.plan(epoch)[0]
        if int(stage) == 1:
            self._stage_one_logs = dict(logs or {})
            # With validation data every stage-1 epoch is a candidate too: on a
            # few images the head's validation loss can turn up before stage 1
            # stops, and the run's best epoch may be one of them.
            if not self.validation:
                if epoch + 1 == self.schedule.unfreeze_at_epoch:
                    self._end_if_nothing_to_gain()
                return
            score = self._score(logs)
        else:
            score = self._score(logs)
            self.last_epoch, self.last_score = epoch, score
        if score is not None and self._improves(score):
            self._keep(score, epoch)
        if int(stage) == 2 and score is not None and self._scored(logs):
            self._scored_epochs.append(epoch)
            self._stop_if_out_of_patience(epoch)

    def _scored(self, logs) -> bool:
        """Whether the epoch had a score of its own: with validation data, one
        that validated (`validation_freq` can skip epochs, which then do not
        count toward `patience`, as in Keras's EarlyStopping)."""
        return not self.validation or (logs or {}).get("val_loss") is not None

    def _stop_if_out_of_patience(self, epoch: int) -> None:
        """Ends the run once `patience` stage-2 epochs in a row were not kept.

        The count starts at stage 1's end (the first candidate) or at the last
        epoch kept, whichever is later: with validation data the best epoch may
        be one of stage 1's, and stage 2 still gets its `patience` epochs. The
        run's last epoch is not a stop (it ends there anyway).
        """
        if not self.patience or self.best_epoch is None:
            return
        since = max(self.best_epoch, self.schedule.unfreeze_at_epoch - 1)
        waited = sum(1 for e in self._scored_epochs if e > since)
        last = self.params.get("epochs") if self.params else None
        if waited >= self.patience and (last is None or epoch + 1 < last):
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def _end_if_nothing_to_gain(self) -> None:
        """At the end of stage 1: scores it on the slice (the first candidate),
        and ends the run there when no stage-2 epoch could be kept.

        On a classifier's held-out slice a stage-2 epoch replaces stage 1 only
        with a higher accuracy, so when stage 1 already classifies every image
        of the slice correctly, stage 2 could only be trained and thrown away.
        The run then stops (`stop_training`, as EarlyStopping does) with stage
        1's weights kept; the model `fine_tune` returns is the same.
        """
        if self.holdout is None or self.task not in CLASSIFIERS:
            return
        score = self.holdout_score()
        self._keep(score, -1)  # stage 1's end: the first candidate
        if score[0] >= 1.0:
            self.model.stop_training = True
            self.ended_after_stage_one = True

    @property
    def kept_epoch(self) -> int | None:
        """The 1-based epoch whose weights the run ends with; None when unscored.

        Stage 1's end counts as its last epoch (0 when stage 1 ran no epochs: a
        closed-form head).
        """
        if not self._decided:
            return None
        if self.best_epoch == -1:
            return self.schedule.unfreeze_at_epoch
        return self.best_epoch + 1

    @property
    def _decided(self) -> bool:
        """Whether the guard chose the weights the run ends with.

        It did once a stage-2 epoch was scored, when it ended the run after stage
        1, or when it restored a finished run's best weights; not when stage 2
        never started (the run was stopped in stage 1).
        """
        if self.best_score is None or self.best_epoch is None:
            return False
        return (
            self.last_epoch is not None
            or self.ended_after_stage_one
            or self._restored_saved
        )

    def describe(self) -> str | None:
        """What the run ends with and why, in one line (without the `tltf:` prefix)."""
        note = self._describe_kept()
        if note is None or self.stopped_epoch is None:
            return note
        return (
            f"{note} Stage 2 stopped after epoch {self.stopped_epoch + 1}: "
            f"{self.patience} epoch{'s' if self.patience != 1 else ''} in a row "
            "without a better score "
            f"(fine_tune_patience={self.patience})."
        )

    def _describe_kept(self) -> str | None:
        if self.ended_after_stage_one:
            weights = self.holdout[3] if len(self.holdout) > 3 else None
            images = f"all {len(self.holdout[1]):,} held-out training images"
            if weights is not None and not np.all(weights > 0):
                # Images of weight 0 do not count: they may be wrong.
                images = (
                    f"all {int(np.sum(weights > 0)):,} held-out training images of "
                    "a sample weight above 0"
                )
            return (
                f"stage 1 classifies {images} correctly, and a stage-2 epoch is "
                "kept only if it is more accurate there: stage 2 was skipped "
                "(keep_best=False, or validation data, runs it)."
            )
        if self.unscorable:
            return (
                "every class has one training image, so leave-one-out could not "
                "score stage 2's epochs: the run ends at its last epoch. "
                "validation_data, or 2 or more images of some class, lets it choose."
            )
        if not self._decided:
            return None
        name, best = self.criterion, _show(self.best_score, self._lower_is_better)
        if self.last_epoch is None:  # a finished run, resumed (`restore_saved`)
            return f"the weights of epoch {self.kept_epoch}: best {name} ({best})."
        if self.best_epoch == self.last_epoch:
            return f"kept the last epoch ({self.last_epoch + 1}): best {name} ({best})."
        stage_two = self.schedule.unfreeze_at_epoch
        if self.best_epoch in (-1, stage_two - 1):
            where = "the end of stage 1 (fine-tuning did not improve on it)"
        elif self.best_epoch < stage_two:
            where = (
                f"epoch {self.best_epoch + 1}, in stage 1 (the validation loss "
                "rose after it, and fine-tuning did not bring it lower)"
            )
        else:
            where = f"epoch {self.best_epoch + 1}"
        return (
            f"restored the weights of {where}: {name} {best} against "
            f"{_show(self.last_score, self._lower_is_better)} at the last epoch "
            f"({self.last_epoch + 1})."
        )

    def on_train_end(self, logs=None):
        note = self.describe()
        if note is not None and self.verbose:
            print(f"tltf: keep_best: {note}")
        restore = self.last_epoch is not None and self.best_score is not None
        if restore and self.best_epoch != self.last_epoch:
            self._restore(self.model)

    def _improves(self, score: tuple) -> bool:
        """Whether `score` replaces the best so far.

        Ties go to the later epoch, except on a classifier's held-out slice:
        there a later epoch replaces the best only with a higher accuracy.
        Stage 2 rarely changes a small slice's accuracy, and the slice's
        cross-entropy, which used to break the tie, favoured the later epochs
        of a head fitting a few images ever more closely. On real tasks of 2
        to 26 classes, ties to the earlier epoch were better on both bases
        measured (benchmarks/RESULTS.md, "Ties on the held-out slice").
        """
        if self.best_score is None:
            return True
        if self.holdout is not None and self.task in CLASSIFIERS:
            return score[0] > self.best_score[0]
        return score >= self.best_score

    # -- keeping and restoring -------------------------------------------------------
    def _keep(self, score: tuple, epoch: int) -> None:
        self.best_score, self.best_epoch = score, epoch
        self.best_weights = [
            np.array(v.numpy(), copy=True) for v in self.model.variables
        ]
        if self.path is not None:
            if not is_chief():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {f"w{i}": w for i, w in enumerate(self.best_weights)}
            state = json.dumps({"score": list(score), "epoch": epoch})
            arrays["state"] = np.frombuffer(state.encode("utf-8"), dtype=np.uint8)
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def _restore(self, model: keras.Model) -> None:
        for variable, value in zip(model.variables, self.best_weights, strict=True):
            variable.assign(value)

    def load(self) -> bool:
        """Reads the best weights a resumable run stored; False when there are none."""
        if self.path is None or not self.path.exists():
            return False
        with np.load(self.path, allow_pickle=False) as data:
            state = json.loads(bytes(data["state"]).decode("utf-8"))
            count = sum(1 for k in data.files if k.startswith("w"))
            self.best_weights = [data[f"w{i}"] for i in range(count)]
        self.best_score = tuple(state["score"])
        self.best_epoch = int(state["epoch"])
        return True

    def resume_from(self, history: dict) -> None:
        """Picks up where a resumed run left off: its stored best and stage 1."""
        self.load()
        stages = list(history.get("stage", []))
        logs = self._epoch_logs(history, len(stages))
        self._scored_epochs = [
            epoch
            for epoch, stage in enumerate(stages)
            if int(stage) == 2 and self._scored(logs[epoch])
        ]
        last = max((i for i, s in enumerate(stages) if int(s) == 1), default=None)
        if last is not None:
            self._stage_one_logs = logs[last]

    def _epoch_logs(self, history: dict, epochs: int) -> list[dict]:
        """A stored history as each epoch's logs.

        Keras logs the `val_` metrics only on the epochs that validated
        (`validation_freq`), so with it those lists are shorter than the
        others: they are laid on the epochs Keras's rule picks.
        """
        freq = self.validation_freq
        validated = [
            e
            for e in range(epochs)
            if ((e + 1) in freq if isinstance(freq, list) else (e + 1) % freq == 0)
        ]
        logs: list[dict] = [{} for _ in range(epochs)]
        for key, values in history.items():
            if len(values) == epochs:
                rows = range(epochs)
            elif len(values) == len(validated):
                rows = validated
            else:
                continue  # not one value per epoch, nor per validation
            for epoch, value in zip(rows, values, strict=True):
                logs[epoch][key] = value
        return logs

    def restore_saved(self, model: keras.Model) -> None:
        """For a finished resumable run: puts back the best weights it kept."""
        if self.best_weights is not None:
            self._restore(model)
            self._restored_saved = True


def _show(score: tuple | None, negated: bool) -> str:
    if score is None:
        return "n/a"
    return f"{-score[0]:.4g}" if negated else f"{score[0]:.3f}"


__all__ = [
    "BEST_FILE",
    "CLASSIFIERS",
    "HOLDOUT_FRACTION",
    "HOLDOUT_MIN_ROWS",
    "HOLDOUT_MOST",
    "KeepBest",
    "Kept",
    "class_ids",
    "holdout_rows",
]
