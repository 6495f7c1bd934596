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
    datasets,
    datasets_tfds,  # noqa: F401  (registers the tltf_shapes tfds builder)
)
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
from tltf.freezing import block_summary, freeze, trainable_blocks, unfreeze
from tltf.heads import HeadConfig
from tltf.model import build_model, load_model, model_info
from tltf.pretrain import (
    pretrain,  # the function; `from tltf.pretrain import ...` works too
)
from tltf.reports import plot_confusion_matrix, plot_history
from tltf.schedule import FineTuneSchedule, fine_tune, set_lr_multipliers

__version__ = "0.1.0"

__all__ = [
    "Base",
    "BlockMap",
    "DataBundle",
    "FineTuneSchedule",
    "HeadConfig",
    "TltfError",
    "block_summary",
    "build_model",
    "datasets",
    "fine_tune",
    "freeze",
    "infer_block_map",
    "list_bases",
    "load_base",
    "load_data",
    "load_model",
    "model_info",
    "plot_confusion_matrix",
    "plot_history",
    "pretrain",
    "save_base",
    "set_lr_multipliers",
    "trainable_blocks",
    "unfreeze",
]
