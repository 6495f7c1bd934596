"""`tltf train` through the CLI path (an image folder bundle, the stage-1 feature
cache): a run SIGKILLed in stage 2 and resumed with `--resume` ends bit-equal to
the uninterrupted run.

The killed run is a fresh process that builds its model and head from scratch,
so its equality also checks that one seed (`data.seed`) repeats a run: without
`keras.utils.set_random_seed`, its head starts from other weights.
"""

from __future__ import annotations

import csv
import os
import sys
import zipfile
from pathlib import Path

import h5py
import pytest

import tltf
from tests import processes
from tests.helpers import ROOT, make_image_folder, make_tiny_base
from tltf.cli import main

CONFIG = """\
model:
  base: base
  head: {dropout: 0.2}
  cut: null
data:
  train: images
  val_fraction: 0.25
  image_size: 16
  batch_size: 8
  seed: 3
schedule:
  head_epochs: 2
  fine_tune_epochs: 3
  unfreeze: 1
"""


def make_work(root: Path) -> Path:
    """An image folder (3 classes x 10 PNGs), a saved tiny base and the config."""
    make_image_folder(root / "images", per_class=10, formats=("png",))
    tltf.save_base(tltf.load_base(make_tiny_base(), preprocessing="tf"), root / "base")
    (root / "train.yaml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory.mktemp("cli_resume"))


def _train(work: Path, out: str, kill: str = "-", resume: bool = False):
    config = ["--resume"] if resume else ["--config", str(work / "train.yaml")]
    return processes.run(  # a new process, started with tltf imported
        [sys.executable, "-m", "tests.cli_job", kill, "train", *config, "--out", out],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TLTF_HOME": str(work / "home")},
        timeout=300,
    )


def weights_bytes(path: Path) -> dict[str, bytes]:
    """The raw bytes of every array in a .keras file's weights."""
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f:
        data = {}
        with h5py.File(f, "r") as h5:
            h5.visititems(
                lambda name, obj: (
                    data.__setitem__(name, obj[()].tobytes())
                    if hasattr(obj, "shape")
                    else None
                )
            )
    return data


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _train_here(work: Path, out: str, monkeypatch, resume: bool = False) -> None:
    """The same `tltf train`, in this process (only the killed run needs its own)."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("TLTF_HOME", str(work / "home"))
    config = ["--resume"] if resume else ["--config", str(work / "train.yaml")]
    assert main(["train", *config, "--out", out]) == 0


@pytest.mark.slow
def test_one_seed_repeats_and_a_killed_run_resumes_bit_equal(work, monkeypatch, capsys):
    _train_here(work, "runs/a", monkeypatch)
    a = work / "runs/a"
    stages = [row["stage"] for row in _history(a)]
    assert stages == ["1", "1", "2", "2", "2"]

    # Killed at the start of the second stage-2 epoch (the feature pass and the
    # first stage-2 epoch done), then resumed: no stage-1 feature pass this time.
    killed = _train(work, "runs/c", "epoch:3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    c = work / "runs/c"
    assert [row["stage"] for row in _history(c)] == ["1", "1", "2"]
    capsys.readouterr()
    _train_here(work, "runs/c", monkeypatch, resume=True)
    assert "cached base features" not in capsys.readouterr().out
    assert _history(c) == _history(a)
    for name in ("last.keras", "best.keras"):
        assert weights_bytes(c / name) == weights_bytes(a / name), name
