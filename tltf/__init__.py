"""tltf: transfer learning for Keras and TensorFlow.

Every Keras Applications model as a frozen base with its own preprocessing and a
map of its real blocks; a head builder; a two-stage, block-aware fine-tuning
schedule (as `fine_tune` or as the `FineTuneSchedule` callback).

Example:

>>> import tltf
>>> model = tltf.build_model("efficientnet_b0", num_classes=5)
>>> history = tltf.fine_tune(model, train_ds, val_ds, unfreeze=3)
"""

from tltf import (
    _quiet,  # noqa: F401  (must run before TensorFlow is imported)
    checkpoint,  # atomic ModelCheckpoint
    datasets,
    distribute,  # strategies; the Keras multi-worker fixes
)
from tltf._version import __version__ as __version__
from tltf.averaging import SoupResult, interpolate, recalibrate_bn, soup
from tltf.bases import (
    Base,
    BlockMap,
    infer_block_map,
    list_bases,
    load_base,
    save_base,
)
from tltf.data import DataBundle, load_data
from tltf.errors import TltfError
from tltf.evaluation import EvaluationReport, evaluate, predict, write_predictions
from tltf.export import export_model, tflite_predict
from tltf.freezing import block_summary, freeze, trainable_blocks, unfreeze
from tltf.heads import HeadConfig
from tltf.lr_finder import LRFinderResult, find_lr
from tltf.model import build_model, load_model, model_info
from tltf.optimizers import set_lr_multipliers
from tltf.pretrain import (
    pretrain,  # the function; `from tltf.pretrain import ...` works too
)
from tltf.probe import ProbeResult, probe_blocks
from tltf.ranking import RankResult, rank_bases
from tltf.reports import plot_confusion_matrix, plot_history, plot_tuning
from tltf.schedule import FineTuneSchedule, fine_tune
from tltf.settings import FineTuneSettings
from tltf.tuning import FineTuneHyperModel, SearchSpace, TuneResult, tune

__all__ = [
    "Base",
    "BlockMap",
    "DataBundle",
    "EvaluationReport",
    "FineTuneHyperModel",
    "FineTuneSchedule",
    "FineTuneSettings",
    "HeadConfig",
    "LRFinderResult",
    "ProbeResult",
    "RankResult",
    "SearchSpace",
    "SoupResult",
    "TltfError",
    "TuneResult",
    "block_summary",
    "build_model",
    "checkpoint",
    "datasets",
    "distribute",
    "evaluate",
    "export_model",
    "find_lr",
    "fine_tune",
    "freeze",
    "infer_block_map",
    "interpolate",
    "list_bases",
    "load_base",
    "load_data",
    "load_model",
    "model_info",
    "plot_confusion_matrix",
    "plot_history",
    "plot_tuning",
    "predict",
    "pretrain",
    "probe_blocks",
    "rank_bases",
    "recalibrate_bn",
    "save_base",
    "set_lr_multipliers",
    "soup",
    "tflite_predict",
    "trainable_blocks",
    "tune",
    "unfreeze",
    "write_predictions",
]
