"""What tltf knows about a model it built: `ModelInfo`, `model_info`, `model_base`.

It also records the class names a model was trained on (`set_class_names`), so
that `predict` and `evaluate` name the classes and line up a test folder's
subfolders with them, in the session that trained it and after `.keras` loads.

The metadata lives in the model's `Preprocessing` layer, so this reads a freshly
built model and one loaded from `.keras` alike. It sits low in the package:
freezing, caching, the LR finder and the schedule all read a model through it.
"""

from __future__ import annotations

import dataclasses

import keras

from tltf.bases.base import Base
from tltf.bases.blockmaps import BlockMap
from tltf.errors import DataError, ModelError
from tltf.layers import Preprocessing


def model_base(model: keras.Model) -> Base:
    """The base of a model built by `build_model`, as a `Base` (for the probe)."""
    info = model_info(model)
    pre = next(
        layer
        for layer in model.layers
        if isinstance(layer, Preprocessing) and "base_layer" in layer.metadata
    )
    return Base(
        model=info.base,
        name=info.metadata["base"],
        block_map=info.block_map,
        preprocessing=pre.mode,
    )


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What tltf knows about a model it built.

    Attributes:
        base: keras.Model. The base, a layer of the model. It has one output per
            block the head reads (`HeadConfig.pool_from`), the top block's last.
        block_map: BlockMap. The base's blocks, bottom to top.
        head_layers: tuple of keras layers. The layers after the base.
        metadata: dict. The raw metadata (base name, task, head config, and the
            class names once `fine_tune` or `set_class_names` recorded them).
    """

    base: keras.Model
    block_map: BlockMap
    head_layers: tuple
    metadata: dict

    @property
    def task(self) -> str:
        """The model's task, e.g. "multiclass"."""
        return self.metadata["task"]

    @property
    def logits(self) -> bool:
        """Whether the model outputs logits."""
        return bool(self.metadata.get("head", {}).get("logits", False))

    @property
    def class_names(self) -> list[str] | None:
        """The class names the model was trained on, in label order, or None.

        `fine_tune` records them from data with names (an image folder, a
        `DataBundle`, a `.npz` file's `class_names`, a dataset from
        `keras.utils.image_dataset_from_directory`); they are saved with the
        model.
        """
        names = self.metadata.get("class_names")
        return [str(n) for n in names] if names else None


def model_info(model: keras.Model) -> ModelInfo:
    """Finds the base, its block map and the head in a model built by tltf.

    Works on a freshly built model and on one loaded from `.keras`.

    Raises:
        ModelError: when the model was not built by `tltf.build_model`.
    """
    if not isinstance(model, keras.Model):
        raise ModelError(f"Expected a keras.Model. Received: {type(model).__name__}")
    pre = next(
        (
            layer
            for layer in model.layers
            if isinstance(layer, Preprocessing) and "base_layer" in layer.metadata
        ),
        None,
    )
    if pre is None:
        raise ModelError(
            f"Model {model.name!r} was not built by tltf.build_model: it has no tltf "
            "preprocessing layer. Build it with `tltf.build_model(base, ...)`; to "
            "fine-tune an arbitrary model, pass it as the base."
        )
    meta = pre.metadata
    try:
        base = model.get_layer(meta["base_layer"])
    except ValueError:
        raise ModelError(
            f"Model {model.name!r} lost its base layer {meta['base_layer']!r}."
        ) from None
    head = tuple(
        layer
        for layer in model.layers
        if layer is not base
        and layer is not pre
        and not isinstance(layer, keras.layers.InputLayer)
    )
    return ModelInfo(base, BlockMap.from_config(meta["blocks"]), head, meta)


# -- class names ---------------------------------------------------------------
def set_class_names(model: keras.Model, names) -> None:
    """Records class names in the model's tltf metadata (saved with it).

    None records nothing.
    """
    if names is None:
        return
    model_info(model).metadata["class_names"] = [str(n) for n in names]


def record_class_names(model: keras.Model, names) -> None:
    """Records the training data's class names, when there is one per output.

    `fine_tune` calls it with its data's names: a DataBundle's, or a dataset's
    that carries them (Keras's `image_dataset_from_directory`). None, and names
    that do not fit the outputs (or a regression), record nothing.

    Raises:
        DataError: The model already records other names. Its outputs mean
            those classes, and the new labels would not line up.
    """
    info = model_info(model)
    if not names or info.task == "regression":
        return
    names = [str(n) for n in names]
    outputs = 2 if info.task == "binary" else info.metadata["num_outputs"]
    if len(names) != outputs:
        return
    if info.class_names is not None and info.class_names != names:
        raise DataError(
            f"The model was trained on the classes {info.class_names}, but the "
            f"training data has the classes {names}, so the labels would not line "
            "up. Give the data the model's classes in the same order "
            "(load_data(..., class_names=tltf.model_info(model).class_names)), or "
            "build a new model for the new classes."
        )
    info.metadata["class_names"] = names


def class_names_of(model: keras.Model) -> list[str] | None:
    """The class names recorded in a model, or None (also for a model not tltf's)."""
    try:
        return model_info(model).class_names
    except ModelError:
        return None


# -- fine_tune -----------------------------------------------------------------
def default_loss_and_metrics(
    info: ModelInfo, one_hot: bool = False, label_smoothing: float = 0.0
):
    """The loss and metrics tltf uses for a model's task."""
    task, logits = info.task, info.logits
    if task == "multiclass":
        if one_hot:
            loss = keras.losses.CategoricalCrossentropy(
                from_logits=logits, label_smoothing=label_smoothing
            )
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
        return loss, ["accuracy"]
    if task in ("binary", "multilabel"):
        loss = keras.losses.BinaryCrossentropy(
            from_logits=logits, label_smoothing=label_smoothing
        )
        threshold = 0.0 if logits else 0.5
        return loss, [
            keras.metrics.BinaryAccuracy(threshold=threshold, name="accuracy")
        ]
    return keras.losses.MeanSquaredError(), [
        keras.metrics.MeanAbsoluteError(name="mae")
    ]
