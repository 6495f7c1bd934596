"""Pytest hooks and fixtures only (shared helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tltf  # noqa: E402,F401,I001  (first: imports TensorFlow quietly)

import keras  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import make_data, make_tiny_base  # noqa: E402

#: The modules with the longest tests, longest first. They are collected first, so
#: that pytest-xdist's load scheduling starts them on both workers at once and the
#: short tests fill the end, instead of one long test running alone at the end.
RUN_FIRST = (
    "test_notebooks.py",
    "test_resume.py",
    "test_readme_walkthrough.py",
    "test_tuning.py",
    "test_soups.py",
    "test_demo.py",
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
    # Without a gc.collect() per test (~0.3 s each, most of a quick test's time);
    # Python's own collector still frees old models.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def tiny_base():
    return make_tiny_base()


@pytest.fixture
def data():
    return make_data()
