"""Tuning what to unfreeze: a keras-tuner HyperModel with a shared stage 1.

`FineTuneHyperModel` is a `keras_tuner.HyperModel`: `build(hp)` builds a model with
`build_model`, `fit(hp, model, ...)` runs the two-stage schedule. Its search space
(`SearchSpace`) covers how many *blocks* of the base's block map to unfreeze, the
fine-tune learning rate, the head's dropout and width, and optionally the head
rate, the BatchNorm policy and the discriminative-LR decay.

Trials that differ only in stage-2 choices do not retrain the head: stage 1 is
trained once per distinct *head key* (everything that stage 1 depends on), its
weights are kept in the tuner's project folder (`HeadStore`, atomic writes and a
lock file, so that distributed workers can share it), and every such trial
starts stage 2 from them. `tune` wraps it all: any keras-tuner tuner, resume,
failed trials, keras-tuner's distributed mode, and a results table, plot and the
best model as `.keras`.

The package, one module per concern (each imports only those above it here):

* `space`: `SearchSpace` and its entry checks, `HP_NAMES`, and the
  hyperparameters and options that only change stage 2 (`STAGE2_HPS`,
  `STAGE2_OPTIONS`);
* `store`: `project_lock` (one search per project folder) and `HeadStore` (stage 1
  per head key);
* `hypermodel`: `FineTuneHyperModel`, its two stages, the per-trial record and
  `failure_reason`;
* `results`: `results_table`, `format_table`, `write_table`, `results` and
  `TuneResult`;
* `search`: `tune`, the tuners by name, the objective, failed trials and
  `serve_chief`.
"""

from __future__ import annotations

# Names without `as` are public (`__all__`); `X as X` keeps a name importable
# from `tltf.tuning`, where it was before the package.
from tltf.tuning.hypermodel import FineTuneHyperModel, failure_reason
from tltf.tuning.results import (
    TuneResult,
    format_table,
    results,
    results_table,
    write_table,
)
from tltf.tuning.search import serve_chief, tune
from tltf.tuning.space import SearchSpace
from tltf.tuning.store import HEADS_DIR as HEADS_DIR
from tltf.tuning.store import PROJECT_LOCK as PROJECT_LOCK
from tltf.tuning.store import HeadStore, project_lock

__all__ = [
    "FineTuneHyperModel",
    "HeadStore",
    "SearchSpace",
    "TuneResult",
    "failure_reason",
    "format_table",
    "project_lock",
    "results",
    "results_table",
    "serve_chief",
    "tune",
    "write_table",
]
