"""Atomic writes: tltf.checkpoint.ModelCheckpoint, save_base and save_figure."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure

import tltf
from tests.helpers import make_tiny_base, make_tiny_model
from tltf.checkpoint import ModelCheckpoint
from tltf.errors import ConfigError
from tltf.reports import save_figure


def _interrupted(self, path, *args, **kwargs):
    """Stands in for a save killed halfway: half a file, then an error."""
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 half a file")
    raise OSError("killed mid-save")


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["best.keras", "best.weights.h5"])
def test_best_only_saves_on_improvement_and_a_failed_save_keeps_the_last(
    tmp_path, monkeypatch, name
):
    model = make_tiny_model()
    path = tmp_path / name
    checkpoint = ModelCheckpoint(
        path, monitor="val_accuracy", mode="max", save_best_only=True
    )
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    first = path.read_bytes()
    kernel = model.get_layer("head_output").kernel
    kernel.assign(kernel.numpy() + 1.0)
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.4})  # worse: not saved
    assert path.read_bytes() == first
    method = "save_weights" if name.endswith(".weights.h5") else "save"
    monkeypatch.setattr(keras.Model, method, _interrupted)
    with pytest.raises(OSError, match="killed mid-save"):
        checkpoint.on_epoch_end(2, {"val_accuracy": 0.9})
    monkeypatch.undo()
    # Keras's own callback would have left the half file at `path`.
    assert path.read_bytes() == first
    assert _files(tmp_path) == [name]  # no temporary file left
    checkpoint.on_epoch_end(3, {"val_accuracy": 0.95})
    assert path.read_bytes() != first
    fresh = make_tiny_model()
    if method == "save":
        loaded = keras.saving.load_model(path, safe_mode=True)
        weights = loaded.get_layer("head_output").kernel.numpy()
    else:
        fresh.load_weights(path)
        weights = fresh.get_layer("head_output").kernel.numpy()
    np.testing.assert_array_equal(weights, kernel.numpy())


@pytest.mark.slow
def test_mode_min_and_epoch_names_in_a_fit(tmp_path):
    model = make_tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.zeros((8, 16, 16, 3), "float32")
    y = np.zeros(8, "int32")
    every = ModelCheckpoint(tmp_path / "m-{epoch:02d}.weights.h5", monitor="loss")
    best = ModelCheckpoint(
        tmp_path / "best.keras", monitor="loss", mode="min", save_best_only=True
    )
    model.fit(x, y, epochs=2, verbose=0, callbacks=[every, best])
    assert _files(tmp_path) == ["best.keras", "m-01.weights.h5", "m-02.weights.h5"]
    assert best.best == pytest.approx(min(model.history.history["loss"]))


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"ending in '\.keras'.*model\.h5"):
        ModelCheckpoint(tmp_path / "model.h5")
    with pytest.raises(ConfigError, match="Expected mode in"):
        ModelCheckpoint(tmp_path / "m.keras", mode="biggest")


def test_interrupted_save_base_keeps_the_previous_base(tmp_path, monkeypatch):
    base = tltf.load_base(make_tiny_base(), block_map=None)
    tltf.save_base(base, tmp_path / "b", info={"run": 1})
    monkeypatch.setattr(keras.Model, "save", _interrupted)
    with pytest.raises(OSError, match="killed mid-save"):
        tltf.save_base(base, tmp_path / "b", info={"run": 2})
    monkeypatch.undo()
    assert tltf.load_base(tmp_path / "b").info["run"] == 1
    assert _files(tmp_path) == ["b"]


def test_interrupted_save_figure_keeps_the_previous_png(tmp_path, monkeypatch):
    figure = Figure()
    figure.add_subplot().plot([0, 1])
    path = save_figure(figure, tmp_path / "curves.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    monkeypatch.setattr(Figure, "savefig", _interrupted)
    with pytest.raises(OSError, match="killed mid-save"):
        save_figure(figure, path)
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["curves.png"]
