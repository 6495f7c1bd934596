"""Typed errors raised by tltf.

Every error tltf raises on bad input derives from `TltfError`, so callers (the CLI,
the tuner) can tell a bad configuration from a failure deep inside TensorFlow. Each
message says what was expected, what was received, and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TltfError(Exception):
    """Base class of every error tltf raises on purpose."""


class ConfigError(TltfError, ValueError):
    """An argument or configuration value is invalid."""


class UnknownBaseError(ConfigError, KeyError):
    """A base name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0])


class InputShapeError(ConfigError):
    """An input shape does not suit the chosen base."""


class BlockMapError(ConfigError):
    """A block map does not describe its model (coverage or order)."""


class WeightsError(TltfError):
    """Weights could not be found, downloaded or loaded."""


class ModelError(TltfError, ValueError):
    """A model lacks what tltf needs, or a model file cannot be loaded."""


class DataError(TltfError, ValueError):
    """Training data is empty or inconsistent with the model."""


class LabelRangeError(DataError):
    """Class-index labels outside `[0, num_classes)`, or one-hot rows of another
    width than `num_classes`.

    `num_classes`, `low` and `high` (the labels' smallest and largest value) and
    `columns` (the one-hot rows' width, None for class indices) let a caller that
    knows more, such as `tltf.evaluate` (whose model fixes the classes), say it
    in its own words.
    """

    def __init__(
        self,
        message: str,
        num_classes: int,
        low: float,
        high: float,
        columns: int | None = None,
    ):
        super().__init__(message)
        self.num_classes, self.low, self.high = num_classes, low, high
        self.columns = columns


class LeaveOneOutError(DataError):
    """Leave-one-out cannot score: every class has one training example."""


class TrainingError(TltfError, RuntimeError):
    """Training diverged (a NaN or infinite loss)."""


class DiskFullError(TltfError, OSError):
    """A file could not be written: the disk (or the user's quota) is full."""


def did_you_mean(matches: Iterable[str]) -> str:
    """Returns " Did you mean 'a' or 'b'?" for `matches`, or an empty string."""
    matches = list(matches)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Returns a "Did you mean ...?" hint for `name`, or an empty string."""
    return did_you_mean(
        difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    )
