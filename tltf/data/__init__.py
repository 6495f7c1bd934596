"""The data layer: image datasets in, batched `tf.data` pipelines out.

`load_data` turns any common source into a `DataBundle` of batched, prefetched
`tf.data.Dataset`s of `(image, label)`, with float32 RGB images in [0, 255] of one
size (what a model from `build_model` takes) and checked labels:

* a TFDS dataset by name (`"tfds:tf_flowers"`, or `"tf_flowers"` when no path
  on disk resembles it);
* a folder with one subfolder per class (jpg, jpeg, png, bmp, gif);
* a `.npz` file with `x`/`y` (or `images`/`labels`) arrays;
* `(images, labels)` NumPy arrays;
* a `tf.data.Dataset` of `(image, label)`, batched or not.

Grayscale and RGBA images become RGB; every image is resized by one policy
("stretch", "crop" or "pad"); shuffling is seeded; unreadable files are skipped and
reported. Bad input raises `DataError` (bad data) or `ConfigError` (bad
arguments) before anything trains, with a message that names the problem and the fix.

The module also has Keras augmentation layers (`augmentation`), batch-level
`mixup` and `cutmix`, and balanced `class_weights`.

Example:

>>> data = tltf.data.load_data("photos/", image_size=224, validation_split=0.2)
>>> data.class_names, data.num_classes
(['cats', 'dogs'], 2)
>>> model = tltf.build_model("mobilenet_v2", data.num_classes,
...                          input_shape=data.input_shape)
>>> tltf.fine_tune(model, data.train, data.validation,
...                class_weight=tltf.data.class_weights(data))

The package, one module per concern (each imports only those above it here):

* `images`: reading and preparing one image (decode, RGB, resize, pixel checks);
* `bundle`: `DataBundle`, and the `Source` each reader hands the pipelines;
* `labels`: label checks and cleaning, counts, the validation split, the
  validation coverage warning, `dataset_labels` and `class_weights`;
* `pipeline`: a source as shuffled, batched, prefetched `tf.data` pipelines;
* `tfds`: TFDS sources (tensorflow_datasets is imported only when used);
* `sources`: arrays, `.npz` files, image folders and `tf.data` datasets;
* `load`: `load_data`;
* `augment`: `augmentation`, `mixup`, `cutmix` and `one_hot`;
* `inputs`: training inputs as batches, checked against a model (used by
  `fine_tune`, the LR finder, the probe and the tuner; not imported here).
"""

from __future__ import annotations

import sys
import types

# Names without `as` are public (`__all__`); `X as X` keeps a name importable
# from `tltf.data`, where it was before the package.
from tltf._checks import check_positive_int as check_positive_int
from tltf.data import sources
from tltf.data.augment import augmentation, cutmix, mixup, one_hot
from tltf.data.bundle import DataBundle
from tltf.data.images import RESIZE_POLICIES
from tltf.data.images import ImageOptions as ImageOptions
from tltf.data.images import check_pixel_values as check_pixel_values
from tltf.data.labels import TASKS, class_weights, dataset_labels
from tltf.data.load import load_data
from tltf.data.sources import IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "RESIZE_POLICIES",
    "TASKS",
    "DataBundle",
    "augmentation",
    "class_weights",
    "cutmix",
    "dataset_labels",
    "load_data",
    "mixup",
    "one_hot",
]


class _DataPackage(types.ModuleType):
    """`tltf.data.MAX_IMAGE_PIXELS` reads and sets the limit `sources` applies.

    The limit lives in `tltf.data.sources`, where the folder scan reads it; users
    set it here, where it is documented (`tltf.data.MAX_IMAGE_PIXELS = None`).
    """

    @property
    def MAX_IMAGE_PIXELS(self) -> int | None:
        return sources.MAX_IMAGE_PIXELS

    @MAX_IMAGE_PIXELS.setter
    def MAX_IMAGE_PIXELS(self, value: int | None) -> None:
        sources.MAX_IMAGE_PIXELS = value


sys.modules[__name__].__class__ = _DataPackage
