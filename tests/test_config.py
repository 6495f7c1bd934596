"""Config files of `tltf train`/`tune`: sections, unknown keys, types, formats."""

from __future__ import annotations

import json

import pytest
import yaml

from tltf.config import (
    DataConfig,
    ScheduleConfig,
    TrainConfig,
    TuneConfig,
    dump_config,
    load_config_file,
    merge,
    parse_assignment,
    parse_source,
)
from tltf.errors import ConfigError
from tltf.heads import HeadConfig

YAML = """\
model:
  base: mobilenet_v2
  weights: null
  head: {dropout: 0.3, hidden_units: [64]}
data:
  train: photos/
  val_fraction: 0.2
  image_size: [96, 128]
schedule:
  head_epochs: 2
  fine_tune_lr: 1e-4     # PyYAML reads this as a string; tltf takes the number
  unfreeze: 3
  class_weight: balanced
"""

TOML = """\
[model]
base = "mobilenet_v2"
head = { dropout = 0.3, hidden_units = [64] }

[data]
train = "photos/"
val_fraction = 0.2
image_size = [96, 128]

[schedule]
head_epochs = 2
fine_tune_lr = 1e-4
unfreeze = 3
class_weight = "balanced"
"""


def test_yaml_and_toml_give_the_same_config(tmp_path):
    (tmp_path / "a.yaml").write_text(YAML)
    (tmp_path / "a.toml").write_text(TOML)
    from_yaml = TrainConfig.from_dict(load_config_file(tmp_path / "a.yaml"))
    from_toml = TrainConfig.from_dict(load_config_file(tmp_path / "a.toml"))
    assert from_yaml.model.weights is None  # TOML has no null: the default stays
    assert from_toml.model.weights == "imagenet"
    assert from_yaml.data == from_toml.data
    assert from_yaml.schedule == from_toml.schedule
    assert from_yaml.schedule.fine_tune_lr == 1e-4
    assert from_yaml.model.head == HeadConfig(dropout=0.3, hidden_units=(64,))
    assert from_yaml.data.size == (96, 128)


def test_resolved_config_round_trips_through_yaml_and_json(tmp_path):
    config = TrainConfig.from_dict(yaml.safe_load(YAML))
    for name in ("config.yaml", "config.json"):
        dump_config(config, tmp_path / name)
        assert TrainConfig.from_dict(load_config_file(tmp_path / name)) == config
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["schedule"]["unfreeze"] == 3 and data["model"]["head"]["dropout"] == 0.3


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {"schedule": {"head_epoch": 3}},
            ["head_epoch", "[schedule]", "'head_epochs'"],
        ),
        ({"modle": {}}, ["section 'modle'", "'model'"]),
        ({"data": {"val_fractoin": 0.2}}, ["[data]", "'val_fraction'"]),
        ({"model": {"head": {"drop": 0.1}}}, ["[model.head]", "'dropout'"]),
        ({"tune": {"max_trials": 3}}, ["section 'tune'", "`tltf tune`"]),
    ],
)
def test_unknown_keys_name_the_section_and_suggest(config, words):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict(config)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ({"schedule": {"head_epochs": "3"}}, "schedule.head_epochs to be an integer"),
        ({"schedule": {"head_epochs": True}}, "schedule.head_epochs to be an integer"),
        ({"schedule": {"head_lr": "fast"}}, "schedule.head_lr to be a number"),
        ({"schedule": {"head_lr": -1.0}}, "schedule.head_lr to be a positive"),
        ({"schedule": {"unfreeze": "most"}}, "schedule.unfreeze as a number"),
        ({"schedule": {"bn": "frozn"}}, "Did you mean 'frozen'"),
        ({"schedule": {"head_epochs": 0, "fine_tune_epochs": 0}}, "Nothing to train"),
        ({"data": {"batch_size": 0}}, "data.batch_size >= 1"),
        ({"data": {"val_fraction": 1.5}}, "strictly between 0 and 1"),
        ({"data": {"val_fraction": 0.2, "val": "x/"}}, "not both"),
        ({"data": {"image_size": [1, 2, 3]}}, "data.image_size as an integer"),
        ({"model": {"task": "multiclas"}}, "Did you mean 'multiclass'"),
        ({"model": {"input_shape": [96, 96]}}, "[height, width, channels]"),
        ({"model": {"head": {"dropout": 2.0}}}, "dropout in [0, 1)"),
        ({"model": []}, "[model] section to be a mapping"),
    ],
)
def test_bad_values_are_config_errors(config, text):
    with pytest.raises(ConfigError, match=None) as error:
        TrainConfig.from_dict(config)
    assert text in str(error.value)


def test_data_sources_and_splits():
    assert parse_source("tfds:tf_flowers[train[:80%]]") == (
        "tfds:tf_flowers",
        "train[:80%]",
    )
    assert parse_source("tfds:tltf_shapes/target") == ("tfds:tltf_shapes/target", None)
    assert parse_source("photos/") == ("photos/", None)
    with pytest.raises(ConfigError, match="tfds:NAME"):
        parse_source("tfds:[train]")
    kwargs = DataConfig(
        train="tfds:tf_flowers[train[:80%]]", val="tfds:tf_flowers[train[80%:]]"
    ).load_data_kwargs()
    assert kwargs["source"] == "tfds:tf_flowers"
    assert kwargs["split"] == "train[:80%]" and kwargs["validation"] == "train[80%:]"
    kwargs = DataConfig(
        train="tfds:x", train_split="train", val_split="test"
    ).load_data_kwargs()
    assert (kwargs["split"], kwargs["validation"]) == ("train", "test")
    kwargs = DataConfig(train="a/", val="b/").load_data_kwargs()
    assert kwargs["validation"] == "b/" and "split" not in kwargs
    with pytest.raises(ConfigError, match="not tfds:NAME"):
        DataConfig(train="photos/", train_split="train").load_data_kwargs()
    with pytest.raises(ConfigError, match="same dataset"):
        DataConfig(train="tfds:a", val="tfds:b[test]").load_data_kwargs()
    with pytest.raises(ConfigError, match="Give the split once"):
        DataConfig(train="tfds:a[train]", train_split="test")
    with pytest.raises(ConfigError, match="--train"):
        DataConfig().load_data_kwargs()


def test_schedule_maps_to_fine_tune_arguments():
    schedule = ScheduleConfig.from_dict(
        {"unfreeze": {"layers": 20}, "class_weight": {"0": 1, "1": 3}}
    )
    kwargs = schedule.fine_tune_kwargs()
    assert kwargs["unfreeze"] == {"layers": 20}
    assert kwargs["class_weight"] == {0: 1.0, 1: 3.0}
    assert set(kwargs) >= {"head_epochs", "fine_tune_lr", "bn", "label_smoothing"}
    with pytest.raises(ConfigError, match="one key"):
        ScheduleConfig(unfreeze={"layers": 2, "names": "x"})


def test_tune_config_has_a_tune_section():
    config = TuneConfig.from_dict(
        {"tune": {"max_trials": 3, "search_space": {"fine_tune_lr": [1e-5, 1e-4]}}}
    )
    assert config.tune.max_trials == 3
    assert config.to_dict()["tune"]["search_space"] == {"fine_tune_lr": [1e-5, 1e-4]}
    with pytest.raises(ConfigError, match="'max_trials'"):
        TuneConfig.from_dict({"tune": {"max_trial": 3}})


def test_overrides_merge_and_set_syntax():
    base = {"data": {"train": "a/", "seed": 1}, "model": {"base": "x"}}
    merged = merge(base, {"data": {"seed": 2}})
    assert merged == {"data": {"train": "a/", "seed": 2}, "model": {"base": "x"}}
    assert base["data"]["seed"] == 1  # inputs untouched
    assert parse_assignment("model.head.dropout=0.3") == {
        "model": {"head": {"dropout": 0.3}}
    }
    assert parse_assignment("schedule.unfreeze={layers: 20}") == {
        "schedule": {"unfreeze": {"layers": 20}}
    }
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        parse_assignment("dropout")


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(ConfigError, match="unknown suffix"):
        load_config_file(tmp_path / "c.ini")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="Could not parse"):
        load_config_file(tmp_path / "bad.yaml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="as TOML"):
        load_config_file(tmp_path / "bad.toml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "evil.yaml").write_text("model: !!python/object/apply:os.system [ls]\n")
    with pytest.raises(ConfigError, match="Could not parse"):
        load_config_file(tmp_path / "evil.yaml")  # safe_load refuses Python tags
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(tmp_path / "empty.yaml") == {}
