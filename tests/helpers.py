"""Shared test helpers: tiny models and data, snapshots, callbacks, error checks.

Tests import them one way, `from tests.helpers import ...`; so do the job scripts
that tests run as processes (`python -m tests.resume_job ...`, from the repository
root). `conftest.py` keeps only pytest hooks and fixtures.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tltf  # noqa: E402,I001  (first: imports TensorFlow quietly)

import ast  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import socket  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tltf.regularizers import head_l2  # noqa: E402

#: The repository root: job scripts run from it, with it on PYTHONPATH.
ROOT = Path(__file__).resolve().parents[1]


# -- tiny models ------------------------------------------------------------------
def make_tiny_base(
    input_shape=(16, 16, 3), widths=(8, 8, 16, 16), name="tiny", batchnorm=True
):
    """A small conv net with named blocks `block1..blockN` (conv, BN, relu each;
    without BN if not `batchnorm`, as VGG's blocks)."""
    inputs = keras.Input(input_shape, name="tiny_input")
    x = inputs
    for i, width in enumerate(widths, start=1):
        stride = 1 if i == 1 else 2
        x = keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", name=f"block{i}_conv"
        )(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name=name)


#: `make_data`'s classes are a bright colour channel, which the raw pixels show
#: at a glance: a head that reads them (`HeadConfig.pixels`) classifies every
#: image from its ridge start, and a stage 2 has nothing left to do. Tests of
#: stage 2's mechanics build their head without the pixel group.
NO_PIXELS = {"pixels": 0}


def make_tiny_model(num_classes=3, base=None, **kwargs):
    """`tltf.build_model` on `base` (default: a new tiny base); kwargs go to it."""
    base = make_tiny_base() if base is None else base
    return tltf.build_model(base, num_classes, **kwargs)


def make_plain_model():
    """A plain Keras model (4 inputs, Dense(2)) that tltf did not build."""
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def make_lambda_model(fn=lambda t: t * 2):
    """A Keras model with one Lambda layer running `fn`: unsafe to load."""
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Lambda(fn)(inputs))


# -- data -------------------------------------------------------------------------
def make_data(n=64, size=16, classes=3, seed=0):
    """Images whose class sets the mean brightness of one channel: learnable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 120, size=(n, size, size, 3)).astype("float32")
    x[np.arange(n), :, :, y % 3] += 100.0
    return x, y.astype("int32")


@contextlib.contextmanager
def mock_tf_flowers(data_dir: Path, num_examples: int):
    """tf_flowers mocked offline (`tfds.testing.mock_data`), with metadata of a
    20-example train split; every split read yields `num_examples` random
    examples. Yields the `tensorflow_datasets` module."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    info = tfds.builder("tf_flowers", data_dir=str(data_dir)).info
    template = naming.ShardedFileTemplate(
        data_dir=info.data_dir,
        dataset_name="tf_flowers",
        split="train",
        filetype_suffix="tfrecord",
    )
    info.set_splits(
        splits_lib.SplitDict(
            [splits_lib.SplitInfo("train", [20], 0, filename_template=template)]
        )
    )
    tf.io.gfile.makedirs(info.data_dir)
    info.write_to_directory(info.data_dir)
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(
        num_examples=num_examples, policy=policy, data_dir=str(data_dir)
    ):
        yield tfds


#: The classes of `make_image_folder`, in the order tltf sorts them.
IMAGE_CLASSES = ("blue", "green", "red")


def make_image_folder(root: Path, per_class=8, formats=("jpg", "png")) -> None:
    """Class folders of 20-px images, one bright channel per class.

    Files are `{class index}_{i}.{format}`, the formats taken in turn.
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(IMAGE_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(0, 90, (20, 20, 3)).astype(np.uint8)
            x[..., 2 - c] += 150  # red: channel 0, green: 1, blue: 2
            Image.fromarray(x).save(folder / f"{c}_{i}.{formats[i % len(formats)]}")


#: A `tltf train` config for a saved base and a `make_image_folder` folder
#: (fill in `base` and `images` with str.format).
TRAIN_CONFIG = """\
# A tltf train config (YAML); flags on the command line override it.
model:
  base: {base}
  head: {{dropout: 0.1}}
  cut: null      # the whole base (train's default is auto: the probe's cut)
data:
  train: {images}
  val_fraction: 0.25
  image_size: 16
  batch_size: 8
schedule:
  head_epochs: 2
  fine_tune_epochs: 1
  head_lr: 1e-2
  unfreeze: 2
"""


# -- snapshots --------------------------------------------------------------------
def weights_snapshot(layer) -> dict[str, np.ndarray]:
    """Copies of a layer's (or model's) weights, by variable path."""
    return {w.path: np.array(w.numpy(), copy=True) for w in layer.weights}


def changed_keys(before: dict, after: dict) -> set[str]:
    """The variable paths whose values differ between two `weights_snapshot`s."""
    return {k for k in before if not np.array_equal(before[k], after[k])}


def block_variables(info, block: str, snapshot: dict) -> set[str]:
    """The paths in a base's `weights_snapshot` that belong to one block."""
    layers = info.block_map[info.block_map.position(block)].layers
    return {k for k in snapshot if k.split("/")[-2] in layers}


def variable_values(variables) -> list[np.ndarray]:
    """Copies of the variables' values, in order."""
    return [np.array(v.numpy(), copy=True) for v in variables]


def folder_snapshot(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- callbacks --------------------------------------------------------------------
class Recorder(keras.callbacks.Callback):
    """Records what a user callback sees: epochs, trainable blocks, stages."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends, self.train_begins = [], [], 0
        self.trainable = []

    def on_train_begin(self, logs=None):
        self.train_begins += 1

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(epoch)
        self.trainable.append(tltf.trainable_blocks(self.model))

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append((epoch, (logs or {}).get("stage")))


class PoisonAt(keras.callbacks.Callback):
    """Sets the head weights to NaN at the start of one epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.get_layer("head_output").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


class PenaltySeen(keras.callbacks.Callback):
    """Records the head's L2 strength (`head_l2`, None: no penalty) each epoch."""

    def __init__(self):
        super().__init__()
        self.strengths = []

    def on_epoch_begin(self, epoch, logs=None):
        self.strengths.append(head_l2(self.model))


class CrashAt(keras.callbacks.Callback):
    """Raises RuntimeError("simulated crash") at the start of one epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


class BatchesPerEpoch(keras.callbacks.Callback):
    """Counts the batches of every epoch (`batches`, one count an epoch)."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.batches[-1] += 1


# -- errors -----------------------------------------------------------------------
def raises(error_type, fn, *args, **kwargs) -> BaseException:
    """The error that `fn(*args, **kwargs)` raises; fails unless it is error_type."""
    with pytest.raises(error_type) as info:
        fn(*args, **kwargs)
    return info.value


def check_error(error: BaseException, error_type, *words: str) -> None:
    """The error's type, its message's words, and where it was raised."""
    assert isinstance(error, error_type), repr(error)
    assert isinstance(error, tltf.TltfError)
    message = str(error)
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    # Raised by tltf itself, with any TensorFlow/Keras error chained out of view.
    frames = traceback.extract_tb(error.__traceback__)
    assert "/tltf/" in frames[-1].filename.replace("\\", "/"), frames[-1]
    if error.__context__ is not None:
        assert (
            error.__suppress_context__
            or error.__cause__ is None
            or (isinstance(error.__cause__, tltf.TltfError))
        ), repr(error.__cause__)


def cli_error(argv, capsys) -> str:
    """`tltf.cli.main(argv)`'s stderr; fails unless it exits 2 without a traceback."""
    from tltf.cli import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tltf: error: ") and "Traceback" not in err
    return err


# -- processes --------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def count_traces(patch) -> dict:
    """Counts `keras.Model.train_step`, `test_step` and `predict_step` calls from
    now on, under `patch` (a pytest MonkeyPatch): Keras calls them in Python only
    while it traces its training, evaluation and prediction functions. Returns
    the live counts, `{"train": n, "test": n, "predict": n}`."""
    counts = {"train": 0, "test": 0, "predict": 0}
    for kind in counts:
        step = getattr(keras.Model, f"{kind}_step")

        def counting(self, data, step=step, kind=kind):
            counts[kind] += 1
            return step(self, data)

        patch.setattr(keras.Model, f"{kind}_step", counting)
    return counts


# -- the suite's scheduling (tests/conftest.py) ------------------------------------
@functools.cache
def module_fixture_users(path: str) -> frozenset[str]:
    """The tests in the module at `path` (relative to the root) that request,
    themselves or through its other fixtures, a module-scoped fixture of it."""
    try:
        tree = ast.parse((ROOT / path).read_text())
    except (OSError, SyntaxError):
        return frozenset()
    functions = [f for f in tree.body if isinstance(f, ast.FunctionDef)]

    def module_scoped(function):
        return any(
            isinstance(call, ast.Call)
            and any(
                k.arg == "scope" and getattr(k.value, "value", None) == "module"
                for k in call.keywords
            )
            for call in function.decorator_list
        )

    shared = {f.name for f in functions if module_scoped(f)}
    fixtures = {f.name: f for f in functions if not f.name.startswith("test")}
    while True:  # fixtures that request a shared one share it too
        more = {
            name
            for name, f in fixtures.items()
            if {a.arg for a in f.args.args} & shared
        }
        if more <= shared:
            break
        shared |= more
    return frozenset(
        f.name
        for f in functions
        if f.name.startswith("test") and {a.arg for a in f.args.args} & shared
    )


def count_probe_reads(monkeypatch) -> list:
    """The batch sizes that `tltf.probe_blocks`' forward pass reads, appended as
    it reads them (its `inference_function` wrapped)."""
    seen = []
    real = tltf.probe.inference_function

    def counting(model):
        run = real(model)

        def counted(images):
            seen.append(int(images.shape[0]))
            return run(images)

        counted.input_signature = run.input_signature
        return counted

    monkeypatch.setattr(tltf.probe, "inference_function", counting)
    return seen
