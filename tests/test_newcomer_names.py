"""Issue 14, items 1 and 2: the shipped base's name, and paths before TFDS names.

Everything here runs offline: the ImageNet download is replaced by one that
fails, and TFDS is only asked for its list of builders and their configs
(`tfds.load` never runs on real data).
"""

from __future__ import annotations

import warnings

import keras
import pytest
import yaml
from keras.src.utils import file_utils

import tltf
from tests.helpers import check_error, folder_snapshot
from tltf import data as tdata
from tltf import errors
from tltf.bases.registry import get_spec
from tltf.cli import main
from tltf.config import TrainConfig
from tltf.data import tfds as data_tfds
from tltf.runs import resolve_base

# -- item 1: the shipped base ----------------------------------------------------------


def _print_config(argv, capsys) -> str:
    assert main(["train", *argv, "--print-config"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_print_config_resolves_demo_like_train_and_reads_back(tmp_path, capsys):
    printed = _print_config(["--base", "demo", "--train", "x/"], capsys)
    assert yaml.safe_load(printed)["model"]["weights"] is None
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    assert _print_config(["--config", str(path)], capsys) == printed
    assert main(["train", "--base", "dmeo", "--train", "x/", "--print-config"]) == 2
    assert "Unknown base 'dmeo'. Did you mean 'demo'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (
            ["--base", "demo", "--train", "x/", "--image-size", "32"]
            + ["--set", "model.input_shape=[64,64,3]"],
            "data.image_size [32, 32] and model.input_shape [64, 64, 3] disagree",
        ),
        (["--base", "demo"], "data.train"),
        (["--train", "x/"], "No base"),
    ],
)
def test_print_config_refuses_what_train_refuses(argv, text, capsys):
    assert main(["train", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err


@pytest.mark.slow
def test_a_saved_base_folder_records_no_imagenet_weights(tmp_path):
    folder = tmp_path / "mybase"
    tltf.save_base(tltf.load_base("demo"), folder)
    for base in ("demo", str(folder)):
        config = resolve_base(TrainConfig.from_dict({"model": {"base": base}}))
        assert config.model.weights is None
        again = TrainConfig.from_dict(config.to_dict())  # config.yaml, read back
        assert resolve_base(again) == config


def test_unknown_base_with_close_registry_names_still_offers_demo():
    error = pytest.raises(errors.UnknownBaseError, get_spec, "mobilenet_v9").value
    check_error(
        error, errors.UnknownBaseError, "Did you mean 'mobilenet", "--base demo"
    )
    assert 'build_model("demo"' in str(error)


def _failing_download(*args, **kwargs):
    raise Exception("URL fetch failure: no network")  # as Keras raises it


@pytest.mark.slow
def test_offline_imagenet_error_offers_demo_and_the_cli_flag(tmp_path, monkeypatch):
    # offline_first restores both names from file_utils; monkeypatch undoes both.
    monkeypatch.setattr(file_utils, "get_file", _failing_download)
    monkeypatch.setattr(keras.utils, "get_file", _failing_download)
    before = folder_snapshot(tmp_path)
    with (
        pytest.raises(errors.WeightsError) as info,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        tltf.load_base(
            "mobilenet_v3_small",
            weights="imagenet",
            weights_dir=tmp_path,
            input_shape=(32, 32, 3),
        )
    # Not Keras's notice that the 224 px weights load at 32 px: they are the ones.
    assert [str(w.message) for w in caught] == []
    check_error(
        info.value,
        errors.WeightsError,
        "weights=None",
        "--weights none` in tltf train and tune",  # tltf rank has no --weights
        "--base demo",
        'build_model("demo"',
    )
    assert folder_snapshot(tmp_path) == before


# -- item 2: paths before TFDS names -------------------------------------------------


@pytest.fixture
def mnist_folder(tmp_path, monkeypatch):
    """`mnist/train` and `mnist/test` class folders in the working directory."""
    for split in ("train", "test"):
        (tmp_path / "mnist" / split / "0").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _data_error(source, **kwargs) -> errors.DataError:
    with pytest.raises(errors.DataError) as info:
        tdata.load_data(source, image_size=8, **kwargs)
    return info.value


def test_a_mistyped_local_path_is_no_such_folder_with_near_matches(mnist_folder):
    error = _data_error("mnist/trian")
    check_error(
        error, errors.DataError, "No such folder 'mnist/trian'", "'mnist/train'"
    )
    assert "TFDS" not in str(error) and "BuilderConfig" not in str(error)
    # The misspelt part may be the first one; the rest is kept when it exists.
    check_error(
        _data_error("mnsit/train"), errors.DataError, "Did you mean 'mnist/train'?"
    )
    check_error(
        _data_error("./mnist/tset"), errors.DataError, "No such folder", "mnist/test'"
    )
    check_error(
        _data_error("mnist/train", validation="mnist/tets"),
        errors.DataError,
        "No such folder 'mnist/tets'",
        "mnist/test",
    )


def test_a_missing_path_with_no_local_match_suggests_tfds_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = _data_error("minst/train")
    check_error(error, errors.DataError, "No such folder 'minst/train'", "'tfds:mnist'")
    assert "wmt_translate" not in str(error)
    error = _data_error("mnist/trian")  # a TFDS name, but no such config
    check_error(error, errors.DataError, "No such folder 'mnist/trian'", "'tfds:mnist'")
    assert "BuilderConfig" not in str(error)
    error = _data_error("photos")  # nothing close, locally or in TFDS
    check_error(error, errors.DataError, "No such folder 'photos'", str(tmp_path))
    assert "tfds:" in str(error) and "Did you mean" not in str(error)
    check_error(_data_error("data.npz"), errors.DataError, "No such file 'data.npz'")


def test_tfds_config_errors_come_from_tltf(monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("tfds.load must not run")

    monkeypatch.setattr(data_tfds.import_tfds(), "load", no_load)
    error = _data_error("tfds:mnist/trian")
    check_error(error, errors.DataError, "TFDS dataset 'mnist' has no config 'trian'")
    assert "BuilderConfig" not in str(error) and "tfds:mnist" in str(error)
    error = _data_error("tfds:tltf_shapes/traget")
    check_error(
        error, errors.DataError, "no config 'traget'", "'tfds:tltf_shapes/target'"
    )


def test_tfds_names_still_load_when_nothing_local_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = []

    def fake_load(name, split, data_dir, **kwargs):
        loaded.append(name)
        raise errors.DataError("stop here")

    monkeypatch.setattr(data_tfds, "_tfds_load", fake_load)
    for source in ("tf_flowers", "tltf_shapes/target", "tfds:mnist"):
        with pytest.raises(errors.DataError, match="stop here"):
            tdata.load_data(source, image_size=8)
    assert loaded == ["tf_flowers", "tltf_shapes/target", "mnist"]
    # A local folder of the same name wins over the TFDS name; a close one too.
    (tmp_path / "tf_flowers" / "daisy").mkdir(parents=True)
    assert "stop here" not in str(_data_error("tf_flowers"))
    (tmp_path / "tf_flowers").rename(tmp_path / "tf_flower")
    error = _data_error("tf_flowers")
    check_error(error, errors.DataError, "'tf_flower'?", "write 'tfds:tf_flowers'")
