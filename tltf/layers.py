"""Keras layers that tltf puts into models.

All of them are registered serializable layers, so that models built by tltf save
to `.keras` and load with `safe_mode=True` (no Lambda layers anywhere).
"""

from __future__ import annotations

import copy
from typing import Any

import keras
from keras import ops

from tltf.errors import ConfigError

#: Preprocessing modes of `keras.applications.*.preprocess_input`.
#: "tf": scale to [-1, 1]; "caffe": RGB->BGR and subtract the ImageNet mean;
#: "torch": scale to [0, 1] and normalise by the ImageNet mean and std;
#: "unit": scale to [0, 1] (x / 255), as a model trained on such inputs expects
#: (not a Keras Applications mode); "none": the base normalises inputs itself
#: (EfficientNet, ConvNeXt, ...).
PREPROCESSING_MODES = ("tf", "caffe", "torch", "unit", "none")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


#: ITU-R BT.601 luma weights: the gray value of an RGB pixel. They sum to 1, so a
#: gray image repeated to three channels turns back into itself.
LUMA = (0.299, 0.587, 0.114)


def rgb_into_gray(base_shape: tuple, image_shape: tuple) -> bool:
    """Whether RGB images (`image_shape`, (h, w, 3)) go into a base that takes
    one channel (`base_shape`): a `Preprocessing(grayscale=True)` then converts."""
    return (
        len(base_shape) == len(image_shape) == 3
        and base_shape[-1] == 1
        and image_shape[-1] == 3
    )


@keras.saving.register_keras_serializable(package="tltf")
class Preprocessing(keras.layers.Layer):
    """Applies a base's `preprocess_input` to raw RGB images in [0, 255].

    The layer also records tltf's metadata about the model it sits in (which base
    follows it, the base's block map, the task), so that tltf can find the base and
    its blocks in any model it built, also after a save and load.

    Args:
        mode: str. One of `PREPROCESSING_MODES`. Defaults to "none".
        metadata: dict or None. tltf's JSON-serializable model metadata. Defaults
            to None.
        grayscale: bool. Whether to turn the RGB images into one gray channel
            (`LUMA`) first, for a base that takes grayscale images. Defaults to
            False.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:

    >>> layer = Preprocessing("tf")
    >>> float(layer(np.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])
    1.0
    """

    def __init__(
        self,
        mode: str = "none",
        metadata: dict | None = None,
        grayscale: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.grayscale = bool(grayscale)
        if mode not in PREPROCESSING_MODES:
            raise ConfigError(
                f"Expected preprocessing mode in {PREPROCESSING_MODES}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.metadata = copy.deepcopy(metadata) if metadata else {}

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.grayscale:
            luma = ops.convert_to_tensor(LUMA, dtype=x.dtype)
            x = ops.sum(x * luma, axis=-1, keepdims=True)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        if self.grayscale:
            return (*input_shape[:-1], 1)
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode, "metadata": copy.deepcopy(self.metadata)})
        if self.grayscale:  # older files have no such key: RGB, as before
            config["grayscale"] = True
        return config


@keras.saving.register_keras_serializable(package="tltf")
class Standardization(keras.layers.Layer):
    """Standardises features: `(x - mean) * scale`, with statistics from data.

    The head puts it after the global pooling, so that the classifier sees features
    of unit scale whatever the base: BatchNorm-free bases such as VGG emit pooled
    activations in the hundreds, which a head trained with Adam at 1e-3 barely
    moves. `fine_tune` sets the statistics once, from the training features of the
    frozen base (`set_statistics`); until then the layer is the identity (except
    on the head's raw-pixel columns, which `build_head` mutes with a scale of 0:
    `tltf.heads.HeadConfig.pixels`). They are
    non-trainable weights, so they are saved in `.keras` files and backups, and a
    model that already has them keeps them.

    Args:
        epsilon: float. Added to the standard deviation. Defaults to 1e-3.
        **kwargs: Standard `keras.layers.Layer` arguments.

    Example:

    >>> layer = Standardization()
    >>> layer.set_statistics(np.array([[0.0, 10.0], [2.0, 30.0]]))
    >>> layer(np.array([[1.0, 20.0]])).numpy().round(3).tolist()
    [[0.0, 0.0]]
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        width = (int(input_shape[-1]),)
        self.mean = self.add_weight(
            shape=width, initializer="zeros", trainable=False, name="mean"
        )
        self.scale = self.add_weight(
            shape=width, initializer="ones", trainable=False, name="scale"
        )
        # How many examples the statistics come from: 0 while unset.
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )

    @property
    def is_set(self) -> bool:
        """Whether `set_statistics` has run (also in a saved and loaded model)."""
        return self.built and float(self.count.numpy()) > 0

    def set_statistics(self, features) -> None:
        """Sets the mean and scale from a 2-D array of features."""
        import numpy as np

        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if not self.built:
            self.build(x.shape)
        if not len(x):
            raise ConfigError("Standardization needs at least one feature vector.")
        mean, std = x.mean(axis=0), x.std(axis=0)
        self.mean.assign(mean.astype("float32"))
        self.scale.assign((1.0 / (std + self.epsilon)).astype("float32"))
        self.count.assign(float(len(x)))

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.cast(self.mean, self.compute_dtype)
        scale = ops.cast(self.scale, self.compute_dtype)
        return (x - mean) * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
