"""The two records of the data layer: `DataBundle`, what `load_data` returns, and
`Source`, what each reader (arrays, `.npz`, folder, `tf.data`, TFDS) hands the
pipelines.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from tltf.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class DataBundle:
    """The datasets and facts `load_data` returns.

    Attributes:
        train: tf.data.Dataset. Shuffled (when asked), batched and prefetched
            `(image, label)` batches; images are float32 RGB in [0, 255] of shape
            `(batch, height, width, 3)`.
        validation: tf.data.Dataset or None. Same form, never shuffled.
        class_names: list of str, or None when the source has no names.
        num_classes: int. Classes (outputs for "regression").
        skipped: list of str. Files of an image folder that could not be read.
        task: str. The task the labels were checked for.
        image_size: tuple. `(height, width)` of every image.
        num_train: int or None. Training examples (None when unknown).
        num_validation: int or None. Validation examples.
        unshuffled: tf.data.Dataset or None. `train`'s batches in a fixed order,
            for passes that must not advance `train`'s reshuffling (the stage-1
            feature pass, the probe, the stage-2 guard): a resumed run skips
            those passes, so they must not change the orders later epochs read.
        labels: np.ndarray or None. The training labels in `unshuffled`'s
            order, when they are known without a pass (image folders, `.npz`
            files and arrays; None for TFDS).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: list[str] | None
    num_classes: int
    skipped: list[str] = dataclasses.field(default_factory=list)
    task: str = "multiclass"
    image_size: tuple[int, int] = (0, 0)
    num_train: int | None = None
    num_validation: int | None = None
    unshuffled: tf.data.Dataset | None = dataclasses.field(default=None, repr=False)
    _counts: np.ndarray | Callable[[], np.ndarray] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    labels: np.ndarray | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    # rows -> (train, unshuffled, counts) of those training rows (see `subset`).
    _rows: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

    def subset(self, rows) -> DataBundle:
        """The same bundle with some of its training rows only.

        `rows` index `labels` (the order of `unshuffled`). The pipelines are built
        again for those rows, with the same shuffling, caching and batching;
        `validation` is kept. `fine_tune`'s stage-2 guard uses it to hold a
        slice of the training images out (see `tltf.guard`).

        Raises:
            DataError: when the bundle cannot select rows (`labels` is None).
        """
        if self._rows is None or self.labels is None:
            raise DataError(
                "This DataBundle cannot select training rows (its labels are not "
                "known without a pass, as for TFDS)."
            )
        rows = np.asarray(rows, dtype=np.int64)
        train, unshuffled, counts = self._rows(rows)
        return dataclasses.replace(
            self,
            train=train,
            unshuffled=unshuffled,
            labels=self.labels[rows],
            num_train=len(rows),
            _counts=counts,
        )

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """Examples per class in `train` (positives per class for "multilabel").

        Computed when first read for TFDS sources (one pass over the labels,
        without decoding images); empty for "regression".
        """
        counts = self._counts() if callable(self._counts) else self._counts
        return np.asarray(counts if counts is not None else [], dtype=np.int64)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(height, width, 3)`: the `input_shape` for `build_model`."""
        return (*self.image_size, 3)


@dataclasses.dataclass
class Source:
    """An unbatched source of (raw image, label) whose labels are known up front.

    `make(indices)` gives the dataset of the selected examples (all when None);
    `prepare` maps one raw element to (image, clean label).
    """

    make: Callable[[np.ndarray | None], tf.data.Dataset]
    prepare: Callable[[Any, Any], tuple[tf.Tensor, tf.Tensor]]
    labels: np.ndarray | None
    num_classes: int
    class_names: list[str] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)
    uint8: bool = True
    bytes_per_raw: int = 0  # 0: small (file paths); shuffled with a full buffer.
    size: int | None = None
