"""Tests of the data layer: every source, resize policies, checks and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import IMAGE_CLASSES, make_image_folder, mock_tf_flowers
from tltf import data as tdata
from tltf.errors import ConfigError, DataError

# -- helpers ---------------------------------------------------------------------------


def _all(ds):
    """Concatenated (images, labels) of a batched dataset."""
    xs, ys = zip(*ds.as_numpy_iterator(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """cats: jpg, gray png, bmp, corrupt jpg; dogs: RGBA png, gif, jpg, a .txt."""
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    images = {
        "cats/a.jpg": Image.fromarray(_rgb(10, 12, 1)),
        "cats/b.png": Image.fromarray(_rgb(8, 8, 2)[..., 0], mode="L"),
        "cats/c.bmp": Image.fromarray(_rgb(8, 8, 3)),
        "dogs/d.png": Image.fromarray(
            np.dstack([_rgb(8, 8, 4), np.full((8, 8), 7, np.uint8)]), mode="RGBA"
        ),
        "dogs/e.gif": Image.fromarray(_rgb(8, 8, 5)).convert("P"),
        "dogs/f.jpg": Image.fromarray(_rgb(12, 9, 6)),
    }
    for name, image in images.items():
        image.save(root / name)
    (root / "cats" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    return root


@pytest.fixture
def tfds_mock(tmp_path):
    """tf_flowers mocked offline: metadata with a 20-example train split."""
    with mock_tf_flowers(tmp_path / "tfds", num_examples=10) as tfds:
        yield tfds


# -- TFDS --------------------------------------------------------------------------------


@pytest.mark.slow
def test_tfds_by_name_with_split_strings(tfds_mock, monkeypatch):
    splits = []
    real_load = tfds_mock.load

    def spy(name, split, **kwargs):
        splits.append((name, split))
        return real_load(name, split=split, **kwargs)

    monkeypatch.setattr(tfds_mock, "load", spy)
    data = tdata.load_data(
        "tfds:tf_flowers",
        image_size=8,
        batch_size=4,
        split="train[:80%]",
        validation="train[80%:]",
    )
    assert splits == [("tf_flowers", "train[:80%]"), ("tf_flowers", "train[80%:]")]
    assert data.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
    assert data.num_classes == 5
    images, labels = next(iter(data.train))
    assert images.shape == (4, 8, 8, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    x, y = _all(data.train)
    assert len(x) == data.num_train == 10  # the mock yields 10 per split
    assert x.min() >= 0 and x.max() <= 255 and set(y) <= set(range(5))
    assert data.counts.sum() == 10 and len(data.counts) == 5
    assert len(_all(data.validation)[0]) == data.num_validation == 10

    splits.clear()
    data = tdata.load_data("tf_flowers", image_size=(8, 6), validation_split=0.25)
    assert splits == [("tf_flowers", "train[:75%]"), ("tf_flowers", "train[75%:]")]
    assert next(iter(data.validation))[0].shape[1:] == (8, 6, 3)


def test_tfds_errors(tfds_mock):
    with pytest.raises(
        DataError, match="No TFDS dataset named 'tf_flowerz'.*tf_flowers"
    ):
        tdata.load_data("tfds:tf_flowerz", image_size=8)
    with pytest.raises(ConfigError, match="validation='train\\[85%:\\]'"):
        tdata.load_data("tfds:tf_flowers", image_size=8, validation_split=0.125)
    # Worded for the Python API and the command line alike (no "num_classes=None").
    with pytest.raises(
        ConfigError, match="5 classes, but num_classes=3. Leave num_classes unset.*to 5"
    ):
        tdata.load_data("tfds:tf_flowers", image_size=8, num_classes=3)


# -- image folder ------------------------------------------------------------------------


def test_a_folder_with_other_than_num_classes_subfolders_names_both_numbers(folder):
    with pytest.raises(ConfigError) as error:
        tdata.load_data(str(folder), image_size=8, num_classes=5)
    message = str(error.value)
    assert "2 class subfolders ['cats', 'dogs'], but num_classes=5" in message
    # Worded for the Python API and the command line alike.
    assert "Leave num_classes unset" in message and "set it to 2" in message
    assert "num_classes=None" not in message


def test_folder_reads_formats_and_skips_bad_files(folder, capsys):
    data = tdata.load_data(folder, image_size=8, batch_size=2, shuffle=False)
    out = capsys.readouterr().out
    assert "tltf: skipped 2 unreadable files: cats/bad.jpg, dogs/notes.txt" in out
    assert [p.rsplit("/", 1)[-1] for p in data.skipped] == ["bad.jpg", "notes.txt"]
    assert data.class_names == ["cats", "dogs"] and data.num_classes == 2
    assert data.counts.tolist() == [3, 3] and data.num_train == 6
    x, y = _all(data.train)
    assert x.shape == (6, 8, 8, 3) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]  # sorted: a.jpg b.png c.bmp d e f
    gray = np.asarray(Image.open(folder / "cats/b.png"))
    np.testing.assert_array_equal(x[1], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(x[2], np.asarray(Image.open(folder / "cats/c.bmp")))
    rgba = np.asarray(Image.open(folder / "dogs/d.png"))
    np.testing.assert_array_equal(x[3], rgba[..., :3])  # alpha dropped
    gif = np.asarray(Image.open(folder / "dogs/e.gif").convert("RGB"))
    np.testing.assert_array_equal(x[4], gif)


def test_folder_strict_raises_naming_files(folder):
    with pytest.raises(DataError, match="cats/bad.jpg, dogs/notes.txt.*strict=False"):
        tdata.load_data(folder, image_size=8, strict=True)


@pytest.mark.slow
def test_folder_validation_split_is_seeded_and_stratified(tmp_path):
    for k, c in enumerate(("a", "b")):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(_rgb(8, 8, 10 * k + i)).save(tmp_path / c / f"{i}.png")

    def split(seed):
        data = tdata.load_data(tmp_path, image_size=8, validation_split=0.4, seed=seed)
        x_val, y_val = _all(data.validation)
        return data, x_val, y_val

    data, x1, y1 = split(0)
    _, x2, y2 = split(0)
    _, x3, _ = split(1)
    np.testing.assert_array_equal(x1, x2)
    assert sorted(y1.tolist()) == [0, 0, 1, 1]  # 2 of 5 per class
    assert data.counts.tolist() == [3, 3] and data.num_validation == 4
    assert not np.array_equal(x1, x3)
    # Train and validation are disjoint.
    x_train, _ = _all(data.train)
    keys = {v.tobytes() for v in x_train}
    assert not keys & {v.tobytes() for v in x1}


@pytest.mark.slow
def test_folder_validation_folder(folder, tmp_path):
    val = tmp_path / "val"
    (val / "dogs").mkdir(parents=True)
    Image.fromarray(_rgb(8, 8, 9)).save(val / "dogs" / "z.png")
    data = tdata.load_data(folder, image_size=8, validation=val)
    assert _all(data.validation)[1].tolist() == [1]  # mapped by training names
    (val / "birds").mkdir()
    with pytest.raises(DataError, match=r"\['birds'\].*not among the training"):
        tdata.load_data(folder, image_size=8, validation=val)


def test_folder_class_names_label_subfolders_by_name(folder, tmp_path):
    """class_names= labels a folder by name: a test folder with some classes."""
    test = tmp_path / "test"
    (test / "dogs").mkdir(parents=True)
    Image.fromarray(_rgb(8, 8, 9)).save(test / "dogs" / "z.png")
    data = tdata.load_data(test, image_size=8, class_names=["ants", "cats", "dogs"])
    assert data.class_names == ["ants", "cats", "dogs"] and data.num_classes == 3
    assert _all(data.train)[1].tolist() == [2]  # "dogs" is class 2, not 0
    with pytest.raises(DataError, match=r"\['dogs'\].*not among the classes"):
        tdata.load_data(test, image_size=8, class_names=["ants", "cats"])


def test_class_names_name_arrays_and_must_match_a_sources_own(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    data = tdata.load_data((x, np.array([0, 1, 0, 1])), class_names=["a", "b", "c"])
    assert data.class_names == ["a", "b", "c"] and data.num_classes == 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]), class_names=np.array(["a", "b"]))
    assert tdata.load_data(path, image_size=8, class_names=["a", "b"]).num_classes
    with pytest.raises(DataError, match=r"classes \['a', 'b'\].*would not line up"):
        tdata.load_data(path, image_size=8, class_names=["b", "a"])
    for bad, message in (
        ("ab", "list of str"),
        (["a", "a"], "twice"),
        (["a", ""], "non-empty"),
    ):
        with pytest.raises(ConfigError, match=message):
            tdata.load_data((x, np.array([0, 1, 0, 1])), class_names=bad)
    with pytest.raises(ConfigError, match="2 names but num_classes=3"):
        tdata.load_data(
            (x, np.array([0, 1, 0, 1])), class_names=["a", "b"], num_classes=3
        )


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "is empty"),
        ({"loose.png": True}, "no class subfolders.*own subfolder"),
        ({"cats/readme.txt": False}, "no readable images"),
    ],
)
def test_bad_folders(tmp_path, layout, message, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for name, is_image in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if is_image:
            Image.fromarray(_rgb(8, 8, 0)).save(root / name)
        else:
            (root / name).write_text("x")
    with pytest.raises(DataError, match=message):
        tdata.load_data(root, image_size=8)


# -- npz, numpy, tf.data ----------------------------------------------------------------


def test_npz(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=x,
        y=np.array([0, 1, 2, 0, 1, 2]),
        x_val=x[:2],
        y_val=np.array([2, 1]),
        class_names=np.array(["r", "g", "b"]),
    )
    data = tdata.load_data(path, image_size=8)
    assert data.class_names == ["r", "g", "b"] and data.num_classes == 3
    assert _all(data.validation)[1].tolist() == [2, 1]
    np.savez(tmp_path / "e.npz", images=x, labels=np.arange(6) % 2)
    assert tdata.load_data(tmp_path / "e.npz", image_size=8).num_classes == 2
    np.savez(tmp_path / "f.npz", pixels=x)
    with pytest.raises(DataError, match=r"'x' and 'y'.*Found: \['pixels'\]"):
        tdata.load_data(tmp_path / "f.npz", image_size=8)


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 8, 8, 1), (4, 8, 8, 3), (4, 8, 8, 4)])
def test_arrays_channels_become_rgb(shape):
    x = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
    data = tdata.load_data((x, np.arange(4) % 2), image_size=(6, 5), shuffle=False)
    images, labels = _all(data.train)
    assert images.shape == (4, 6, 5, 3) and labels.tolist() == [0, 1, 0, 1]
    if len(shape) == 3 or shape[-1] == 1:
        np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_a_keras_image_dataset_brings_its_class_names(tmp_path):
    """keras.utils.image_dataset_from_directory names its classes on the dataset
    (`ds.class_names`): load_data keeps them, so a report says "red", not "2".
    Names that do not fit the labels, or a dataset mapped since (which drops the
    attribute), give none."""
    import keras

    make_image_folder(tmp_path / "images", per_class=2)
    ds = keras.utils.image_dataset_from_directory(
        tmp_path / "images", image_size=(20, 20), shuffle=False, verbose=False
    )
    assert tdata.load_data(ds).class_names == list(IMAGE_CLASSES)
    assert tdata.load_data(ds.map(lambda x, y: (x, y))).class_names is None
    ds.class_names = ["one name"]
    assert tdata.load_data(ds).class_names is None


def test_arrays_and_fixed_size_datasets_keep_their_own_size(folder, tmp_path):
    """image_size=None is the images' own size for arrays, a .npz file (read from
    its header) and a dataset whose images have a fixed size; sources whose sizes
    are only known once read (an image folder, images of several sizes) name
    image_size and how to give it."""
    x = np.random.default_rng(0).integers(0, 256, (12, 8, 6, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "named.npz", images=x, labels=y)
    for source in (
        (x, y),
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(5),
        tmp_path / "xy.npz",
        str(tmp_path / "named.npz"),
    ):
        data = tdata.load_data(source, validation_split=0.25, shuffle=False)
        assert data.image_size == (8, 6)
        assert data.num_train == 9 and data.num_validation == 3
    ragged = ([x[0], x[1], x[2][:4]], y[:3])
    (tmp_path / "notes.npz").write_text("not a zip")
    for source in (folder, ragged, tmp_path / "notes.npz"):
        with pytest.raises(ConfigError, match=r"needs image_size .*input_shape\[1:3\]"):
            tdata.load_data(source)


@pytest.mark.slow
def test_tf_data_inputs_batched_unbatched_and_one_hot():
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    for ds in (
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
        tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 3))).batch(3),
    ):
        data = tdata.load_data(ds, image_size=8, batch_size=5, shuffle=False)
        images, labels = _all(data.train)
        np.testing.assert_array_equal(images, x.astype("float32"))
        assert labels.tolist() == y.tolist() and data.counts.tolist() == [4, 3, 3]
    assert tdata.dataset_labels(data.train).tolist() == y.tolist()

    data = tdata.load_data(
        tf.data.Dataset.from_tensor_slices((x, y)), image_size=8, validation_split=0.3
    )
    (xt, yt), (xv, yv) = _all(data.train), _all(data.validation)
    assert len(xt) == data.num_train == 7 and len(xv) == data.num_validation == 3
    assert np.bincount(yt, minlength=3).tolist() == data.counts.tolist()
    assert sorted(yv.tolist()) == [0, 1, 2]
    assert sorted(np.concatenate([xt, xv])[:, 0, 0, 0].tolist()) == sorted(
        x[:, 0, 0, 0].astype("float32").tolist()
    )


def test_tf_data_unknown_channels_checked_up_front():
    def dataset(channels):
        def gen():
            for c in channels:
                yield np.full((6, 7, c), 50 * c, np.uint8), 0

        spec = (
            tf.TensorSpec((None, None, None), tf.uint8),
            tf.TensorSpec((), tf.int32),
        )
        return tf.data.Dataset.from_generator(gen, output_signature=spec)

    data = tdata.load_data(dataset([1, 4, 3]), image_size=6, shuffle=False)
    images, _ = _all(data.train)
    assert images.shape == (3, 6, 6, 3)
    assert images[:, 0, 0].tolist() == [[50] * 3, [200] * 3, [150] * 3]
    with pytest.raises(DataError, match=r"Received images with \[2\] channels"):
        tdata.load_data(dataset([3, 2]), image_size=6)


# -- resize policies ------------------------------------------------------------------


def test_resize_policies():
    wide = np.tile(np.arange(16, dtype="float32") * 10, (8, 1))  # column index * 10
    wide = np.repeat(wide[None, ..., None], 3, axis=-1)  # (1, 8, 16, 3)

    def one(policy, size):
        data = tdata.load_data((wide, [0]), image_size=size, resize=policy)
        return _all(data.train)[0][0, ..., 0]

    assert one("stretch", (8, 8)).shape == (8, 8)
    np.testing.assert_allclose(one("crop", 8)[0], np.arange(4, 12) * 10)  # center
    padded = one("pad", 16)
    assert padded.shape == (16, 16)
    assert np.all(padded[:4] == 0) and np.all(padded[12:] == 0)  # black borders
    np.testing.assert_allclose(padded[4:12], wide[0, ..., 0])  # aspect kept


# -- labels --------------------------------------------------------------------------------


def test_label_checks():
    x = np.zeros((4, 8, 8, 3), "float32")
    with pytest.raises(DataError, match=r"labels in \[0, 3\).*num_classes=6"):
        tdata.load_data((x, [0, 1, 5, 2]), image_size=8, num_classes=3)
    with pytest.raises(DataError, match=r"labels in \[0, 2\)"):
        tdata.load_data((x, [0, 1, -1, 1]), image_size=8, num_classes=2)
    with pytest.raises(DataError, match=r"shape \(N, num_classes\).*task='multiclass'"):
        tdata.load_data((x, [0, 1, 1, 0]), image_size=8, task="multilabel")
    multi = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    with pytest.raises(DataError, match=r"shape \(N, 4\)"):
        tdata.load_data((x, multi), image_size=8, task="multilabel", num_classes=4)
    with pytest.raises(DataError, match="0 or 1"):
        tdata.load_data((x, multi * 2), image_size=8, task="multilabel")
    data = tdata.load_data((x, multi), image_size=8, task="multilabel")
    assert data.num_classes == 3 and data.counts.tolist() == [2, 2, 2]
    assert _all(data.train)[1].shape == (4, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, [0, 1, 9, 2]))
    with pytest.raises(DataError, match=r"labels in \[0, 3\)"):
        tdata.load_data(ds, image_size=8, num_classes=3)


def test_class_weights(folder):
    weights = tdata.class_weights(np.array([0, 0, 0, 1]))
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 4 / (2 * 1)})
    assert tdata.class_weights(counts=[3, 1]) == weights
    assert tdata.class_weights(np.eye(2)[[0, 0, 0, 1]]) == weights
    data = tdata.load_data(folder, image_size=8)
    assert tdata.class_weights(data) == {0: 1.0, 1: 1.0}
    with pytest.raises(DataError, match=r"Class 1 \(.b.\) has no examples"):
        tdata.class_weights([0, 2, 2], 3, class_names=["a", "b", "c"])


# -- augmentation, mixup, cutmix ----------------------------------------------------------


def test_augmentation_only_in_training():
    layer = tdata.augmentation(seed=1)
    x = tf.constant(
        np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)), tf.float32
    )
    np.testing.assert_array_equal(layer(x, training=False), x)
    assert np.abs(layer(x, training=True) - x).max() > 1
    empty = tdata.augmentation(flip=None, rotation=0, zoom=0, translation=0, contrast=0)
    np.testing.assert_array_equal(empty(x, training=True), x)
    with pytest.raises(ConfigError, match="flip"):
        tdata.augmentation(flip="sideways")


def _constant_batch():
    values = np.array([10.0, 20.0, 30.0, 40.0], "float32")  # one per class
    x = np.broadcast_to(values[:, None, None, None], (4, 16, 16, 3)).copy()
    return tf.data.Dataset.from_tensor_slices((x, np.arange(4))).batch(4), values


@pytest.mark.parametrize("fn", [tdata.mixup, tdata.cutmix])
def test_mixup_and_cutmix_labels_match_images(fn):
    ds, values = _constant_batch()
    x, y = next(iter(fn(ds, alpha=1.0, num_classes=4, seed=0)))
    x, y = x.numpy(), y.numpy()
    assert y.shape == (4, 4)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    # The label weights are the share of each example in the image.
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), y @ values, rtol=1e-4)
    with pytest.raises(DataError, match="batched"):
        fn(ds.unbatch(), num_classes=4)
    np.testing.assert_array_equal(
        next(iter(tdata.one_hot(ds, 4)))[1], np.eye(4, dtype="float32")
    )
    with pytest.raises(ConfigError, match="num_classes"):
        fn(ds)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, kwargs, error, message",
    [
        ((np.zeros((0, 8, 8, 3)), []), {}, DataError, "empty"),
        ((np.zeros((3, 8, 8, 2)), [0, 1, 0]), {}, DataError, "1, 3 or 4 channels"),
        ((np.zeros((3, 8, 8, 3)), [0, 1]), {}, DataError, "3 images but 2 labels"),
        ("no/such/folder", {}, DataError, "No such folder 'no/such/folder'"),
        ((np.zeros((3, 8, 8, 3)), [0, 1, 0]), {"resize": "fit"}, ConfigError, "resize"),
        (
            (np.zeros((3, 8, 8, 3)), [0, 1, 0]),
            {"validation_split": 1.0},
            ConfigError,
            r"between 0 and 1",
        ),
        (
            (np.zeros((3, 8, 8, 3)), [0, 1, 0]),
            {"validation_split": 0},
            ConfigError,
            r"between 0 and 1",
        ),
        (
            (np.zeros((3, 8, 8, 3)), [0, 1, 0]),
            {"image_size": (8,)},
            ConfigError,
            "image_size",
        ),
        (np.zeros((3, 8, 8, 3)), {}, DataError, r"\(images, labels\)"),
        (
            tf.data.Dataset.from_tensor_slices(
                {"image": np.zeros((2, 8, 8, 3)), "label": [0, 1]}
            ),
            {},
            DataError,
            r"ds.map\(lambda d: \(d\['image'\], d\['label'\]\)\)",
        ),
        (
            tf.data.Dataset.from_tensor_slices((np.zeros((0, 8, 8, 3)), np.zeros(0))),
            {},
            DataError,
            "empty",
        ),
        (
            tf.data.Dataset.from_tensor_slices(
                (np.zeros((2, 8, 8, 3)), [0, 1])
            ).repeat(),
            {},
            DataError,
            "repeats forever",
        ),
    ],
)
def test_bad_input_is_clear(source, kwargs, error, message):
    kwargs = {"image_size": 8, **kwargs}
    with pytest.raises(error, match=message):
        tdata.load_data(source, **kwargs)


def test_bad_file_sources(tmp_path):
    text = tmp_path / "labels.csv"
    text.write_text("a,b")
    with pytest.raises(DataError, match="folder of class subfolders, a .npz"):
        tdata.load_data(text, image_size=8)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"junk")
    with pytest.raises(DataError, match="not a .npz archive.*np.savez"):
        tdata.load_data(broken, image_size=8)
    np.savez(
        tmp_path / "objects.npz",
        x=np.zeros((2, 8, 8, 3)),
        y=[0, 1],
        class_names=np.array([{"a": 1}, "b"], dtype=object),
    )
    with pytest.raises(DataError, match="Python objects.*str array"):
        tdata.load_data(tmp_path / "objects.npz", image_size=8)
