"""The head builder: pooling, the raw-pixel group, hidden layers, dropout, the output."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import keras
import numpy as np

from tltf.errors import ConfigError, suggest
from tltf.layers import Standardization

TASKS = ("multiclass", "binary", "multilabel", "regression")
POOLINGS = ("avg", "max", "avgmax")
POOL_FROM = ("auto", "top")

#: A classification head reads its raw-pixel group (`HeadConfig.pixels`) where a
#: linear probe on the pixels alone scores at least this share of the best
#: block's leave-one-out accuracy (benchmarks/RESULTS.md, "The raw-pixel group").
PIXEL_GROUP_RATIO = 0.75

#: Channels that `pool_from="auto"` reads at most below the top block: every block
#: of a small base (VGG16: 960, MobileNetV2: 1,504), an even spread of a wide one.
AUTO_POOL_CHANNELS = 4096

#: The dropout rate `dropout="auto"` gives a head with hidden layers, before each
#: Dense: such a head starts from random weights, and on small real tasks 0.2
#: scored 2.0 to 2.9 points above none (benchmarks/RESULTS.md, "The head
#: without dropout by default"). A linear head gets none.
HIDDEN_DROPOUT = 0.2


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What goes on top of the base.

    Attributes:
        pooling: str. "avg", "max" or "avgmax" (both, concatenated). Ignored when
            the base already outputs vectors. Defaults to "avg".
        hidden_units: tuple of int. Sizes of optional hidden Dense layers.
            Defaults to ().
        activation: str. Activation of the hidden layers. Defaults to "relu".
        batchnorm: bool. BatchNormalization after each hidden Dense. Defaults to
            False.
        dropout: float or "auto". Dropout rate before each Dense (hidden and
            output). "auto": none for a linear head, `HIDDEN_DROPOUT` (0.2)
            for a head with hidden layers (`dropout_rate`). `fine_tune` starts
            a linear head from the ridge classifier, whose leave-one-out L2 is
            its regulariser, and dropout's noise on those weights undid that
            start on many images (on 4,800 texture images the first stage-1
            epoch's loss rose from 0.58 to 15.9; benchmarks/RESULTS.md, "The
            head's dropout"); hidden layers start from random weights.
            Defaults to "auto".
        logits: bool. For "multiclass" and "binary", output logits instead of
            probabilities. Defaults to False.
        standardize: bool. Standardise the pooled features (a `Standardization`
            layer named `head_standardize`, whose statistics `fine_tune` sets from
            the training features). Defaults to True.
        pool_from: str or tuple. Which blocks of the base the head reads: "top"
            (the base's output only, as in the keras.io recipe); "auto" (every
            block, each pooled, then concatenated: on a task far from the base's
            source the lower blocks often carry more than the top, see
            `tltf.probe_blocks`; a wide base reads an even spread of its blocks,
            `AUTO_POOL_CHANNELS` channels at most below the top block); or block
            names or indices (the top block is always added). Blocks that cannot
            be read (no single output tensor) are left out of "auto".
            Defaults to "auto".
        pixels: int. Side of a group of the raw input pixels, average-pooled to
            `pixels` x `pixels`, that the head reads beside the blocks (needs
            `standardize` and an image input). It starts muted: its columns of
            `head_standardize` are scaled by 0, so a model the user fits
            directly never reads it. The ridge start of a classification head
            (`fine_tune`) turns it on where a linear probe on it alone scores at
            least `PIXEL_GROUP_RATIO` of the best block's leave-one-out
            accuracy, and weighs it like a block: where the base adds little
            (scikit-learn's 8x8 digits on a base pretrained on shapes), the head
            then keeps what logistic regression on the pixels has. 0 leaves the
            group out. Defaults to 8.

    Example:

    >>> HeadConfig.from_dict({"pooling": "avgmax", "hidden_units": [256]})
    HeadConfig(pooling='avgmax', hidden_units=(256,), activation='relu', batchnorm=False, dropout='auto', logits=False, standardize=True, pool_from='auto', pixels=8)
    """

    pooling: str = "avg"
    hidden_units: tuple[int, ...] = ()
    activation: str = "relu"
    batchnorm: bool = False
    dropout: float | str = "auto"
    logits: bool = False
    standardize: bool = True
    pool_from: str | tuple[str | int, ...] = "auto"
    pixels: int = 8

    def __post_init__(self):
        object.__setattr__(
            self, "hidden_units", tuple(int(u) for u in self.hidden_units)
        )
        if isinstance(self.pool_from, list):
            object.__setattr__(self, "pool_from", tuple(self.pool_from))
        if isinstance(self.pool_from, str):
            if self.pool_from not in POOL_FROM:
                raise ConfigError(
                    f"Expected head pool_from in {POOL_FROM} or a list of blocks. "
                    f"Received: pool_from={self.pool_from!r}"
                    f"{suggest(self.pool_from, POOL_FROM)}"
                )
        elif not isinstance(self.pool_from, tuple) or not all(
            isinstance(b, (str, int)) and not isinstance(b, bool)
            for b in self.pool_from
        ):
            raise ConfigError(
                f"Expected head pool_from in {POOL_FROM} or a list of block names or "
                f"indices. Received: pool_from={self.pool_from!r}"
            )
        if (
            isinstance(self.pixels, bool)
            or not isinstance(self.pixels, int)
            or self.pixels < 0
        ):
            raise ConfigError(
                "Expected head pixels to be an int >= 0 (0 leaves the raw-pixel "
                f"group out). Received: pixels={self.pixels!r}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"Expected head pooling in {POOLINGS}. Received: pooling={self.pooling!r}"
            )
        if any(u <= 0 for u in self.hidden_units):
            raise ConfigError(
                "Expected positive hidden_units. "
                f"Received: hidden_units={self.hidden_units}"
            )
        if self.dropout != "auto" and not (
            isinstance(self.dropout, numbers.Real)
            and not isinstance(self.dropout, bool)
            and 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(
                'Expected head dropout in [0, 1), or "auto" (none for a linear '
                f"head, {HIDDEN_DROPOUT} with hidden layers). Received: "
                f"dropout={self.dropout!r}"
            )

    @property
    def dropout_rate(self) -> float:
        """The rate before each Dense: `dropout`, with "auto" resolved (0.0 for
        a linear head, `HIDDEN_DROPOUT` for one with hidden layers)."""
        if self.dropout == "auto":
            return HIDDEN_DROPOUT if self.hidden_units else 0.0
        return float(self.dropout)

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> HeadConfig:
        """Builds a config from a dict, rejecting unknown keys with suggestions."""
        config = dict(config or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in config if k not in fields]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"Unknown head option {key!r}.{suggest(key, fields)} "
                f"Valid options: {fields}"
            )
        return cls(**config)


def output_units(task: str, num_classes: int | None) -> int:
    """The number of output units for a task, validating `num_classes`."""
    if task not in TASKS:
        raise ConfigError(
            f"Unknown task {task!r}.{suggest(task, TASKS)} Tasks: {TASKS}"
        )
    if task == "binary":
        if num_classes not in (None, 1, 2):
            raise ConfigError(
                "A binary task has one sigmoid output; expected num_classes in "
                f"(None, 1, 2). Received: num_classes={num_classes}"
            )
        return 1
    if task == "regression":
        n = 1 if num_classes is None else num_classes
    else:
        n = num_classes
    minimum = 2 if task == "multiclass" else 1
    if not isinstance(n, int) or isinstance(n, bool) or n < minimum:
        raise ConfigError(
            f"Expected num_classes to be an integer >= {minimum} for task={task!r}. "
            f"Received: num_classes={num_classes!r}"
        )
    return n


def output_activation(task: str, logits: bool) -> str:
    """The output activation: softmax, sigmoid or linear."""
    if task == "regression" or logits:
        return "linear"
    return "softmax" if task == "multiclass" else "sigmoid"


def pool_positions(num_blocks: int, pool_from, resolve=None, widths=None) -> list[int]:
    """The 0-based blocks a head reads, bottom to top (the top block included).

    Args:
        num_blocks: int. Blocks in the base's block map.
        pool_from: `HeadConfig.pool_from`.
        resolve: callable or None. Turns a block name or index into a position
            (`tltf.bases.cut.resolve_block`); needed for explicit blocks.
        widths: list or None. For "auto": each block's output channels, None for
            a block that cannot be read. Defaults to None (every block readable,
            one channel each).

    Example:

    >>> pool_positions(5, "auto")
    [0, 1, 2, 3, 4]
    >>> pool_positions(5, "auto", widths=[64, 128, 2048, 4096, 512])
    [0, 1, 2, 4]
    """
    top = num_blocks - 1
    if pool_from == "top":
        return [top]
    if pool_from != "auto":
        return sorted({resolve(b) for b in pool_from} | {top})
    widths = list(widths) if widths is not None else [1] * num_blocks
    chosen, used = {top}, 0
    for position in _spread(top):
        width = widths[position]
        if width is not None and used + width <= AUTO_POOL_CHANNELS:
            chosen.add(position)
            used += width
    return sorted(chosen)


def _spread(count: int) -> list[int]:
    """0 .. count - 1 in the order 1/2, 1/4, 3/4, 1/8, 3/8, ... of the range."""
    order, seen, parts = [], set(), 2
    while len(order) < count:
        for i in range(1, parts, 2):
            position = min(count - 1, int(i * count / parts))
            if position not in seen:
                seen.add(position)
                order.append(position)
        parts *= 2
        if parts > 4 * count:
            order.extend(p for p in range(count) if p not in seen)
            break
    return order


def _pool(x, pooling: str, suffix: str):
    if len(x.shape) != 4:
        return (
            x
            if len(x.shape) == 2
            else keras.layers.Flatten(name=f"head_flatten{suffix}")(x)
        )
    if pooling == "avgmax":
        avg = keras.layers.GlobalAveragePooling2D(name=f"head_avg_pool{suffix}")(x)
        top = keras.layers.GlobalMaxPooling2D(name=f"head_max_pool{suffix}")(x)
        return [avg, top]
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"head_pool{suffix}")(x)
    return keras.layers.GlobalAveragePooling2D(name=f"head_pool{suffix}")(x)


def pixel_group(images, side: int):
    """Raw input pixels average-pooled to at most `side` x `side`, flattened.

    Standard Keras layers only (`head_pixels_scale`, `head_pixels_pool`,
    `head_pixels`), so a model with the group saves and loads with
    `safe_mode=True`. The pixels are scaled from [0, 255] to [0, 1], within the
    range of the blocks' activations, so that an int8 export quantises the
    concatenated features as finely as without them. Padding "same" leaves the
    padded border out of each average, so any input size works.
    """
    height, width = images.shape[1], images.shape[2]
    pool = (max(1, -(-height // side)), max(1, -(-width // side)))
    x = keras.layers.Rescaling(1 / 255, name="head_pixels_scale")(images)
    x = keras.layers.AveragePooling2D(pool, padding="same", name="head_pixels_pool")(x)
    return keras.layers.Flatten(name="head_pixels")(x)


def pixel_columns(model: keras.Model) -> slice | None:
    """The raw-pixel group's columns among the head's features, or None.

    The group is the last input of `head_pool` (`build_head`), so its columns
    are the last ones of the features the head standardises.
    """
    names = {layer.name for layer in model.layers}
    if "head_pixels" not in names or "head_pool" not in names:
        return None
    width = int(model.get_layer("head_pixels").output.shape[-1])
    total = int(model.get_layer("head_pool").output.shape[-1])
    return slice(total - width, total)


def without_muted_pixels(model: keras.Model, features):
    """Rows of the head's features without the raw-pixel columns while muted.

    What the head reads: a guard or probe that scores the features the way the
    head sees them leaves out pixels the ridge start did not turn on.
    """
    columns = pixel_columns(model)
    if columns is None:
        return features
    scale = model.get_layer("head_standardize").scale.numpy()[columns]
    if np.any(scale):
        return features
    return np.delete(features, np.arange(columns.start, columns.stop), axis=1)


def set_pixel_scale(layer: Standardization, width: int, scale) -> None:
    """Sets the scale of the last `width` columns of `layer` (0 mutes them)."""
    values = layer.scale.numpy().copy()
    values[len(values) - width :] = scale
    layer.scale.assign(values)


def _reads_pixels(config: HeadConfig, images) -> bool:
    """Whether a head of `config` on these model inputs gets a raw-pixel group."""
    return bool(
        config.pixels
        and config.standardize
        and images is not None
        and len(images.shape) == 4
        and images.shape[1] is not None
        and images.shape[2] is not None
    )


def build_head(features, task: str, units: int, config: HeadConfig, images=None):
    """Adds the head's layers to a symbolic feature tensor (or several).

    Every layer is a standard Keras layer named `head_*`; the output layer computes
    in float32 even under a mixed-precision policy. Several feature maps (the
    blocks of `pool_from`) are each pooled, then concatenated as `head_pool`,
    the raw-pixel group last (`HeadConfig.pixels`).

    Args:
        features: KerasTensor or list of them. The base output(s), rank 4 (a
            feature map) or rank 2.
        task: str. One of `TASKS`.
        units: int. Output units (see `output_units`).
        config: HeadConfig. The head's layout.
        images: KerasTensor or None. The model's raw image input, for the
            raw-pixel group. Defaults to None (no group).

    Returns:
        The output KerasTensor.
    """
    maps = list(features) if isinstance(features, (list, tuple)) else [features]
    pixels = (
        [pixel_group(images, config.pixels)] if _reads_pixels(config, images) else []
    )
    if len(maps) == 1 and not pixels:
        x = maps[0]
        if len(x.shape) == 4:
            x = _pool(x, config.pooling, "")
            if isinstance(x, list):
                x = keras.layers.Concatenate(name="head_pool")(x)
        elif len(x.shape) != 2:
            x = keras.layers.Flatten(name="head_flatten")(x)
    else:
        pooled = []
        for i, tensor in enumerate(maps):
            out = _pool(tensor, config.pooling, f"_{i}")
            pooled.extend(out if isinstance(out, list) else [out])
        x = keras.layers.Concatenate(name="head_pool")(pooled + pixels)
    if config.standardize:
        layer = Standardization(name="head_standardize")
        x = layer(x)
        if pixels:
            set_pixel_scale(layer, int(pixels[0].shape[-1]), 0.0)
    for i, width in enumerate(config.hidden_units, start=1):
        if config.dropout_rate:
            x = keras.layers.Dropout(config.dropout_rate, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(
            width, use_bias=not config.batchnorm, name=f"head_dense_{i}"
        )(x)
        if config.batchnorm:
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
        x = keras.layers.Activation(config.activation, name=f"head_act_{i}")(x)
    if config.dropout_rate:
        x = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(x)
    return keras.layers.Dense(
        units,
        activation=output_activation(task, config.logits),
        dtype="float32",
        name="head_output",
    )(x)
