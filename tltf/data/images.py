"""Reading and preparing one image: decode, convert to RGB, resize, check pixels.

The data layer (`tltf.data`) and prediction on files (`tltf.evaluation`) both
read images through here, so a file predicts exactly as it trained.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tltf.errors import DataError
from tltf.layers import LUMA

#: How images are brought to `image_size`.
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "crop", "pad")


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    size: tuple[int, int]
    batch_size: int
    resize: str
    seed: int | None
    shuffle: bool
    cache: bool
    task: str


# -- images --------------------------------------------------------------------------
def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Gray (H, W), (H, W, 1) and RGBA (H, W, 4) images become (H, W, 3)."""
    if image.shape.rank == 2:
        image = image[..., tf.newaxis]
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels == 4:
        return image[..., :3]
    # Unknown channel count (a dataset without static shapes): decide at run time.
    channels = tf.shape(image)[-1]
    check = tf.debugging.Assert(
        tf.reduce_any(tf.equal(channels, [1, 3, 4])),
        ["tltf: expected images with 1, 3 or 4 channels; got", channels],
    )
    with tf.control_dependencies([check]):
        index = tf.where(channels == 1, tf.zeros(3, tf.int32), tf.range(3))
    return tf.ensure_shape(tf.gather(image, index, axis=-1), [None, None, 3])


def to_gray(images: tf.Tensor) -> tf.Tensor:
    """RGB images (..., 3) as one gray channel (..., 1), float32: the conversion
    of a grayscale `tltf.layers.Preprocessing`, for models whose input takes
    one channel."""
    luma = tf.constant(LUMA, tf.float32)
    return tf.reduce_sum(tf.cast(images, tf.float32) * luma, axis=-1, keepdims=True)


def _central_crop_to_aspect(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    crop_h = tf.minimum(h, tf.round(w * height / width))
    crop_w = tf.minimum(w, tf.round(h * width / height))
    crop_h = tf.cast(tf.maximum(crop_h, 1.0), tf.int32)
    crop_w = tf.cast(tf.maximum(crop_w, 1.0), tf.int32)
    top = (shape[0] - crop_h) // 2
    left = (shape[1] - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def _resize(image: tf.Tensor, size: tuple[int, int], policy: str) -> tf.Tensor:
    """Resizes one (H, W, 3) image to `size` by `policy`; returns float32."""
    image = tf.cast(image, tf.float32)
    height, width = size
    if policy == "crop":
        image = _central_crop_to_aspect(image, height, width)
    if policy == "pad":
        image = tf.image.resize_with_pad(image, height, width)
    else:
        image = tf.image.resize(image, size)
    return tf.ensure_shape(image, [height, width, 3])


def prepare_image(image: tf.Tensor, opts: ImageOptions, uint8: bool) -> tf.Tensor:
    image = _resize(to_rgb(image), opts.size, opts.resize)
    if uint8:  # Stored (and cached) as uint8, whether cached or not.
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


def image_shape_error(shape, what: str) -> DataError:
    return DataError(
        f"Expected {what} images with 1, 3 or 4 channels (gray, RGB or RGBA), of "
        f"shape (N, height, width, channels). Received images of shape {shape}. "
        "Convert them to RGB, e.g. with np.repeat(x, 3, axis=-1) for one channel."
    )


def check_pixel_values(images, what: str, scope: str = "") -> None:
    """Checks that images hold raw pixels in [0, 255], as tltf models expect.

    NaN or infinite values and values above 255 (e.g. 16-bit images) raise a
    `DataError`: a model cannot learn from them. Images that look already
    preprocessed ([0, 1], [-1, 1] or otherwise negative) are usable but are
    probably a mistake (the base's preprocessing is part of the model): one
    line says so, with the fix.

    Args:
        images: array of shape (N, height, width, channels). Read in chunks, so
            a large array is not copied.
        what: str. The name of the images in messages, e.g. "train".
        scope: str. Words after "images" saying which images were checked, e.g.
            " (the first 64)". Defaults to "".
    """
    images = np.asarray(images)
    if not (np.issubdtype(images.dtype, np.number) and images.size):
        return
    low, high, bad, first = math.inf, -math.inf, 0, None
    for start in range(0, len(images), 256):
        chunk = images[start : start + 256]
        if np.issubdtype(images.dtype, np.floating):
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                bad += int((~finite).sum())
                first = start + int(np.argmin(finite)) if first is None else first
                continue
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if bad:
        raise DataError(
            f"{what} has {bad} image{'s' if bad > 1 else ''}{scope} with NaN or "
            f"infinite pixel values (first at index {first}). Expected finite raw "
            "pixels in [0, 255]. Drop or repair those images (e.g. np.nan_to_num), "
            "or fix the step that made them."
        )
    if high > 255:
        raise DataError(
            f"Expected {what} pixel values in [0, 255] (tltf models take raw 8-bit "
            "pixels and preprocess them inside the model). Received values up to "
            f"{high:g} (dtype {images.dtype}){scope}. Scale them to [0, 255], e.g. "
            "x * (255 / 65535) for 16-bit images, or np.clip(x, 0, 255) if only a "
            "few values overshoot."
        )
    if low < 0:
        hint = (
            "in [-1, 1]; tltf models expect raw pixels in [0, 255] (already "
            "preprocessed? the base's preprocessing is part of the model). Use "
            "(x + 1) * 127.5."
            if low >= -1 and high <= 1
            else f"negative (min {low:g}, max {high:g}); tltf models expect raw "
            "pixels in [0, 255] (already normalised? the base's preprocessing is "
            "part of the model). Undo the normalisation first."
        )
        print(f"tltf: note: {what} images{scope} are {hint}")
    elif np.issubdtype(images.dtype, np.floating) and 0 < high <= 1:
        print(
            f"tltf: note: {what} images{scope} are in [0, 1]; tltf models expect raw "
            "pixels in [0, 255]. Multiply them by 255."
        )


def decode_bytes(contents: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def decode_file(path: tf.Tensor) -> tf.Tensor:
    return decode_bytes(tf.io.read_file(path))
