"""Tests for tltf.datasets: procedural labelled image datasets."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from tltf import datasets
from tltf.datasets import (
    SOURCE_TASK,
    TARGET_TASK,
    TASKS,
    class_names,
    make_dataset,
    make_images,
    num_classes,
    task_classes,
)


def test_tasks_and_class_names() -> None:
    assert {SOURCE_TASK, TARGET_TASK} <= set(TASKS)
    for task in TASKS:
        names = class_names(task)
        assert len(names) == num_classes(task) >= 2
        assert len(set(names)) == len(names), f"duplicate class in {task}"
        assert all(isinstance(n, str) and n for n in names)
    assert num_classes(SOURCE_TASK) >= 12
    assert num_classes(TARGET_TASK) >= 8
    # class_names returns a copy.
    class_names(SOURCE_TASK).append("bogus")
    assert "bogus" not in class_names(SOURCE_TASK)
    assert task_classes() == {t: class_names(t) for t in TASKS}


def test_class_names_are_disjoint_across_tasks() -> None:
    assert not set(class_names(SOURCE_TASK)) & set(class_names(TARGET_TASK))
    for a, b in itertools.combinations(TASKS, 2):
        shared = set(class_names(a)) & set(class_names(b))
        assert not shared, f"{a} and {b} share {shared}"


# Tests loop over tasks instead of parametrising: the shared conftest clears the
# Keras session after every test, which costs a few hundred ms each.


def test_same_seed_gives_identical_bytes() -> None:
    for task in TASKS:
        x1, y1 = make_images(task, n=40, image_size=32, seed=7)
        x2, y2 = make_images(task, n=40, image_size=32, seed=7)
        assert x1.tobytes() == x2.tobytes(), task
        np.testing.assert_array_equal(y1, y2)


def test_different_seeds_differ() -> None:
    for task in TASKS:
        x1, y1 = make_images(task, per_class=3, image_size=32, seed=0)
        x2, y2 = make_images(task, per_class=3, image_size=32, seed=1)
        assert not np.array_equal(x1, x2), task
        assert not np.array_equal(y1, y2), task


def test_tasks_differ_for_same_seed() -> None:
    a, _ = make_images(SOURCE_TASK, n=12, image_size=32, seed=0)
    b, _ = make_images(TARGET_TASK, n=12, image_size=32, seed=0)
    assert not np.array_equal(a, b)


def test_shapes_and_dtypes() -> None:
    for task, size in itertools.product(TASKS, [16, 37, (24, 40)]):
        x, y = make_images(task, n=20, image_size=size, seed=3)
        h, w = (size, size) if isinstance(size, int) else size
        assert x.shape == (20, h, w, 3) and x.dtype == np.uint8
        assert y.shape == (20,) and y.dtype == np.int32
        assert y.min() >= 0 and y.max() < num_classes(task)


def test_images_have_content() -> None:
    for task in TASKS:
        x, _ = make_images(task, per_class=2, image_size=48, seed=5)
        flat = x.reshape(len(x), -1).astype(np.float32)
        assert (flat.std(axis=1) > 4.0).all(), f"{task}: an image is (nearly) flat"
        assert x.min() < 40 and x.max() > 215, f"{task}: colours should span the range"
        assert len({img.tobytes() for img in x}) == len(x), f"{task}: duplicate images"


def test_per_class_is_balanced_and_shuffled() -> None:
    _, y = make_images(SOURCE_TASK, per_class=5, image_size=16)
    np.testing.assert_array_equal(np.bincount(y, minlength=num_classes(SOURCE_TASK)), 5)
    assert not np.all(np.diff(y) >= 0), "labels should be shuffled"


def test_n_is_balanced() -> None:
    for n in (1, 7, 16, 50):
        _, y = make_images(SOURCE_TASK, n=n, image_size=16)
        counts = np.bincount(y, minlength=num_classes(SOURCE_TASK))
        assert counts.sum() == n
        assert counts.max() - counts.min() <= 1


def test_scene_layout_does_not_depend_on_image_size() -> None:
    small, y_small = make_images(TARGET_TASK, n=24, image_size=32, seed=2)
    big, y_big = make_images(TARGET_TASK, n=24, image_size=64, seed=2)
    np.testing.assert_array_equal(y_small, y_big)
    # Downsampled big images look like the small ones (same scenes; only noise
    # and anti-aliasing differ).
    down = big.reshape(24, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    err = np.abs(down - small.astype(np.float64)).mean()
    assert err < 12.0, err


def test_chunking_does_not_change_output() -> None:
    ref, y_ref = datasets._generate(SOURCE_TASK, 48, None, 32, 11)
    tiny, y_tiny = datasets._generate(SOURCE_TASK, 48, None, 32, 11, chunk_pixels=1)
    np.testing.assert_array_equal(y_ref, y_tiny)
    diff = np.abs(ref.astype(np.int16) - tiny.astype(np.int16))
    assert diff.max() <= 1  # identical up to float rounding of vectorised maths


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_make_dataset_batches_and_spec(dtype: str) -> None:
    import tensorflow as tf

    ds = make_dataset(
        TARGET_TASK, n=50, image_size=24, seed=4, batch_size=16, dtype=dtype
    )
    x_spec, y_spec = ds.element_spec
    assert x_spec.shape.as_list() == [None, 24, 24, 3]
    assert x_spec.dtype == tf.as_dtype(dtype)
    assert y_spec.shape.as_list() == [None] and y_spec.dtype == tf.int32
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    x_np, y_np = make_images(TARGET_TASK, n=50, image_size=24, seed=4)
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in batches]), x_np.astype(dtype)
    )
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y_np)
    if dtype == "float32":
        assert batches[0][0].max() > 1.0  # values stay in 0..255


def test_make_dataset_drop_remainder_and_shuffle() -> None:
    ds = make_dataset(
        "counting",
        per_class=3,
        image_size=16,
        batch_size=4,
        drop_remainder=True,
        shuffle=True,
    )
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 3]
    labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
    assert len(labels) == 16  # 18 examples, last partial batch dropped


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="shapes_source"):
        make_images("shapes_sourse", n=4)
    with pytest.raises(ValueError, match="Unknown task"):
        class_names("mnist")
    with pytest.raises(ValueError, match="Unknown task"):
        num_classes(3)  # type: ignore[arg-type]


BAD_ARGUMENTS = [
    ({"n": 4, "image_size": 8}, "image_size"),
    ({"n": 4, "image_size": 15}, "image_size"),
    ({"n": 4, "image_size": (32, 10)}, "image_size"),
    ({"n": 4, "image_size": 32.0}, "image_size"),
    ({"n": 4, "image_size": (32, 32, 3)}, "image_size"),
    ({}, "exactly one"),
    ({"n": 4, "per_class": 2}, "exactly one"),
    ({"n": 0}, "n must be"),
    ({"n": -3}, "n must be"),
    ({"n": 2.5}, "n must be"),
    ({"n": True}, "n must be"),
    ({"per_class": 0}, "per_class must be"),
    ({"n": 4, "seed": -1}, "seed"),
    ({"n": 4, "seed": 1.5}, "seed"),
]


def test_bad_arguments_raise_value_error() -> None:
    for kwargs, match in BAD_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            make_images(SOURCE_TASK, **kwargs)


def test_make_dataset_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(SOURCE_TASK, n=4, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        make_dataset(SOURCE_TASK, n=4, dtype="float16")
    with pytest.raises(ValueError, match="Unknown task"):
        make_dataset("shapes", n=4)


def test_docstring_examples() -> None:
    result = doctest.testmod(datasets, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
