"""Safe loading and config hardening (issue 12): nothing in a file runs or hangs.

A `.keras` file never runs its code, also with Keras's global unsafe switch on; a
file naming unknown objects, a YAML "billion laughs", out-of-range integers and
unknown metric names are refused with a typed error before anything runs.
"""

from __future__ import annotations

import json
import time
import types
import zipfile

import keras
import pytest
from keras.src.backend.common import global_state
from keras.src.saving import serialization_lib

import tltf
from tests.helpers import (
    check_error,
    folder_snapshot,
    make_lambda_model,
    make_tiny_base,
)
from tltf import errors, runs
from tltf.cli import main
from tltf.config import (
    LOGGED_METRICS,
    TrainConfig,
    TuneConfig,
    load_config_file,
    merge,
    parse_assignment,
)
from tltf.model import as_model
from tltf.schedule import default_loss_and_metrics


# -- 1. untrusted code -------------------------------------------------------------
@pytest.fixture
def unsafe_globally():
    """Turns Keras's process-wide unsafe deserialization on, and back afterwards."""
    saved = serialization_lib.in_safe_mode()
    keras.config.enable_unsafe_deserialization()
    yield
    global_state.set_global_attribute("safe_mode_saving", saved)


def _lambda_model_file(tmp_path):
    """A `.keras` file whose Lambda writes `marker` when it runs."""
    marker = tmp_path / "ran.txt"

    def write_marker(x):
        marker.write_text("the Lambda ran")
        return x

    path = tmp_path / "lambda.keras"
    make_lambda_model(lambda x: write_marker(x)).save(path)
    marker.unlink()  # building the model ran the function once
    return path, marker


def test_load_model_stays_safe_when_unsafe_deserialization_is_on(
    tmp_path, unsafe_globally
):
    path, marker = _lambda_model_file(tmp_path)
    before = folder_snapshot(tmp_path)
    loads = [
        lambda: tltf.load_model(path),
        lambda: as_model(str(path)),  # what evaluate() and predict() use
        lambda: tltf.export_model(str(path), tmp_path / "out.keras"),
    ]
    for load in loads:
        with pytest.raises(errors.ModelError) as info:
            load()
        check_error(info.value, errors.ModelError, "lambda", "lambda.keras")
        assert not marker.exists()
    assert folder_snapshot(tmp_path) == before
    assert serialization_lib.in_safe_mode() is False  # the user's switch is kept


# -- 2. unknown objects in a .keras file ----------------------------------------------
def _layers(config):
    return config["config"]["layers"]


def _unregistered_layer(config):
    for layer in _layers(config):
        if layer["class_name"] == "Preprocessing":
            layer.update(
                class_name="Mystery",
                module="mypkg.layers",
                registered_name="my>Mystery",
            )


def _os_system(config):
    for layer in _layers(config):
        if layer["class_name"] == "Preprocessing":
            layer.update(class_name="system", module="os", registered_name=None)


def _builtins_eval(config):
    for layer in _layers(config):
        if layer["class_name"] == "Dense":
            layer["config"]["activation"] = {
                "module": "builtins",
                "class_name": "function",
                "config": "eval",
                "registered_name": "function",
            }


def _evil_mode(config):
    for layer in _layers(config):
        if layer["class_name"] == "Preprocessing":
            layer["config"]["mode"] = "evil"


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_unregistered_layer, ["'mypkg.layers.Mystery'", "register"]),
        (_os_system, ["'os.system'", "did not import or run it"]),
        (_builtins_eval, ["'builtins.eval'", "re-export"]),
        (_evil_mode, ["'Preprocessing'", "mode='evil'", "re-export"]),
    ],
)
def test_edited_keras_file_names_the_unknown_object(tmp_path, edit, words):
    good = tmp_path / "good.keras"
    tltf.build_model(make_tiny_base(), 3, weights=None).save(good)
    bad = tmp_path / "edited.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config)
            target.writestr(name, data)
    before = folder_snapshot(tmp_path)
    with pytest.raises(errors.ModelError) as info:
        tltf.load_model(bad)
    check_error(info.value, errors.ModelError, "edited.keras", *words)
    assert folder_snapshot(tmp_path) == before


# -- 3. YAML billion laughs, and 7. where a YAML error is ------------------------------
def _laughs(levels=7) -> str:
    """Nine times more values per level: 9**7 (4.8 million) strings in 360 bytes."""
    names = "abcdefghij"
    lines = ["tune:", "  search_space:", f"    a: &a [{', '.join(['lol'] * 9)}]"]
    for prev, name in zip(names[: levels - 1], names[1:levels], strict=True):
        lines.append(f"    {name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_fast(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs())
    assert path.stat().st_size < 700
    started = time.perf_counter()
    with pytest.raises(errors.ConfigError) as info:
        load_config_file(path)
    check_error(info.value, errors.ConfigError, "laughs.yaml", "line 3", "anchors")
    argv = ["tune", "--base", "demo", "--train", "x/", "--config", str(path)]
    assert main([*argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "anchors and aliases" in err and "Traceback" not in err
    with pytest.raises(errors.ConfigError) as info:
        parse_assignment("tune.search_space=[&a [1, 1], [*a, *a]]")
    check_error(info.value, errors.ConfigError, "--set", "anchors")
    assert time.perf_counter() - started < 1.0


def test_yaml_indentation_error_names_the_real_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  base: demo\n weights: null\n")
    with pytest.raises(errors.ConfigError) as info:
        load_config_file(path)
    check_error(
        info.value, errors.ConfigError, "bad.yaml", "line 3, column 2", "indent"
    )
    assert "line 1, column 1" not in str(info.value)


# -- 4, 5, 6. values checked before anything runs ----------------------------------
@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("schedule.unfreeze={names: [1,2]}", ["schedule.unfreeze.names", "regex"]),
        ("schedule.unfreeze={names: '('}", ["regex", "'('"]),
        ("schedule.unfreeze={blocks: -1}", ["unfreeze.blocks", ">= 0"]),
        ("schedule.unfreeze={layers: 1e30}", ["unfreeze.layers", "integer"]),
        ("data.batch_size=99999999999999999999", ["data.batch_size", "2**31"]),
        ("schedule.head_epochs=99999999999999999999", ["head_epochs", "2**31"]),
        ("model.num_classes=4294967296", ["model.num_classes", "2**31"]),
        ("data.image_size=[64, 99999999999]", ["data.image_size", "2**31"]),
        ("data.seed=-1", ["data.seed", ">= 0"]),
        ("model.input_shape=[32,32,1]", ["3 channels", "[32, 32, 3]", "rgb"]),
        ("schedule.monitor=val_acc", ["schedule.monitor", "'val_accuracy'?"]),
        ("model.head.pixels=-8", ["head pixels", ">= 0", "-8"]),
        ("model.head.pixels=yes", ["head pixels", "int"]),
        (
            "model.task=regression --set schedule.monitor=val_accuracy",
            ["schedule.monitor", "val_mae"],
        ),
    ],
)
def test_bad_values_are_config_errors_before_anything_runs(assignment, words, capsys):
    sets = [arg for part in assignment.split(" --set ") for arg in ("--set", part)]
    argv = ["train", "--base", "demo", "--train", "x/", *sets, "--print-config"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tltf: error: Expected") or "Invalid" in err, err
    for word in words:
        assert word.lower() in err.lower(), (word, err)
    overrides = {}
    for part in assignment.split(" --set "):
        overrides = merge(overrides, parse_assignment(part))
    with pytest.raises(errors.ConfigError) as info:
        TrainConfig.from_dict(overrides)
    check_error(info.value, errors.ConfigError, *words)


def test_tune_objective_is_checked_in_the_config(capsys):
    with pytest.raises(errors.ConfigError) as info:
        TuneConfig.from_dict({"tune": {"objective": "val_acc"}})
    check_error(info.value, errors.ConfigError, "tune.objective", "'val_accuracy'?")
    argv = ["tune", "--base", "demo", "--train", "x/", "--print-config"]
    assert main([*argv, "--set", "tune.objective=val_acc"]) == 2
    assert "Did you mean 'val_accuracy'" in capsys.readouterr().err
    for objective in ("auto", "val_accuracy", "val_loss", "accuracy"):
        TuneConfig.from_dict({"tune": {"objective": objective}})


def test_logged_metrics_match_what_tltf_compiles():
    for task, logged in LOGGED_METRICS.items():
        info = types.SimpleNamespace(task=task, logits=False)
        _, metrics = default_loss_and_metrics(info)
        names = {m if isinstance(m, str) else m.name for m in metrics}
        assert {"loss", *names} == set(logged), task


def test_tune_exits_non_zero_when_every_trial_failed(monkeypatch, tmp_path, capsys):
    # tltf.tune raises this when no trial completed (tests/test_tuning_safety.py);
    # the CLI must turn it into one line and exit 2, never "wrote ...".
    def all_failed(config, out, **kwargs):
        raise errors.TrainingError(
            "Expected at least one trial to complete. Received: 2 of 2 trials "
            "failed, so there is no best model. Trial 0 failed with: KeyError: "
            "'val_acc'."
        )

    monkeypatch.setattr(runs, "run_tuning", all_failed)
    assert main(["tune", "--base", "demo", "--train", "x/"]) == 2
    captured = capsys.readouterr()
    assert "wrote" not in captured.out
    assert "2 of 2 trials failed" in captured.err
    assert "KeyError: 'val_acc'" in captured.err and "Traceback" not in captured.err
