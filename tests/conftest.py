"""Pytest hooks and fixtures only (shared helpers live in tests/helpers.py)."""

from __future__ import annotations

import gc
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tests.tf_settings  # noqa: E402,F401,I001  (first: TensorFlow, lean and quiet)

import keras  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import make_data, make_tiny_base, module_fixture_users  # noqa: E402

#: The modules with the longest tests, longest first. They are collected first and
#: each worker takes one test at a time (`pytest_xdist_make_scheduler` below), so
#: that the long tests spread over both workers and the short tests fill the end.
#: xdist's default chunks would hand the first 104 tests (nearly all of these
#: modules) to one worker, which then ran alone for the last 3 minutes of the suite.
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


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n` (xdist's `load`), the tests that share a module-scoped
    fixture go to one worker together, so that the fixture runs once; every
    other test is handed out alone, to whichever worker is nearly idle.

    xdist's own `load` computed the fixtures on both workers (`tltf train` in
    test_cli_e2e: 12.0 and 10.9 s; a pretraining in test_pretrain: 6.9 and
    6.3 s), and `--dist loadgroup` ignores `xdist_group` marks under pytest 9.2
    (pytest-dev/pytest-xdist#1386).
    """
    if config.getvalue("dist") != "load":
        return None
    try:  # the scheduler `--dist loadscope` runs; xdist's own `load` without it
        from xdist.scheduler import LoadScopeScheduling
    except ImportError:
        return None

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path, _, name = nodeid.partition("::")
            test = name.split("[")[0].split("::")[-1]
            return path if test in module_fixture_users(path) else nodeid

    return SharedFixtureScheduling(config, log)


def pytest_collection_finish(session):
    # TensorFlow, Keras and the test modules are imported by now: about 400,000
    # objects the collector tracks, which live until the end. Frozen, they are no
    # longer walked in each full collection (0.3 to 0.8 s apiece in a worker).
    gc.collect()
    gc.freeze()


#: Every this many tests, what outlives a full collection is frozen as well. Traced
#: graphs outlive the models that made them (a plain Keras compile-and-fit loop
#: keeps 22 `FuncGraph`s per model here), so the objects the collector walks grew
#: to ~800,000 per worker and each automatic full collection took 0.5 to 0.8 s:
#: 66 s of the workers' time in one suite, 24 s with this (benchmarks/RESULTS.md,
#: "Test suite"). Peak memory per worker stayed at 1.6 to 1.9 GB.
FREEZE_EVERY = 10
_finished = itertools.count(1)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    # Without a gc.collect() per test (~0.3 s each, most of a quick test's time);
    # Python's own collector still frees old models.
    keras.backend.clear_session(free_memory=False)
    if next(_finished) % FREEZE_EVERY == 0:
        gc.collect()
        gc.freeze()


@pytest.fixture
def tiny_base():
    return make_tiny_base()


@pytest.fixture
def data():
    return make_data()
