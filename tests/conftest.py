"""Shared fixtures: tiny bases and data, and a fixed seed for every test."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tltf  # noqa: E402,F401,I001  (first: imports TensorFlow quietly)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: The modules with the longest tests, longest first. They are collected first, so
#: that pytest-xdist's load scheduling starts them on both workers at once and the
#: short tests fill the end, instead of one long test running alone at the end.
RUN_FIRST = (
    "test_notebooks.py",
    "test_resume.py",
    "test_readme_walkthrough.py",
    "test_tuning.py",
    "test_cli_e2e.py",
    "test_distribute.py",
    "test_cli_resume.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


def make_tiny_base(input_shape=(16, 16, 3), widths=(8, 8, 16, 16), name="tiny"):
    """A small conv net with named blocks `block1..blockN` (conv, BN, relu each)."""
    inputs = keras.Input(input_shape, name="tiny_input")
    x = inputs
    for i, width in enumerate(widths, start=1):
        stride = 1 if i == 1 else 2
        x = keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", name=f"block{i}_conv"
        )(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture
def tiny_base():
    return make_tiny_base()


def make_data(n=64, size=16, classes=3, seed=0):
    """Images whose class sets the mean brightness of one channel: learnable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 120, size=(n, size, size, 3)).astype("float32")
    x[np.arange(n), :, :, y % 3] += 100.0
    return x, y.astype("int32")


@pytest.fixture
def data():
    return make_data()


class PoisonAt(keras.callbacks.Callback):
    """Sets the head weights to NaN at the start of one epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.get_layer("head_output").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))
