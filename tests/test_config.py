"""Config files of `tltf train`/`tune`: sections, unknown keys, types, formats."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest
import yaml

from tltf.config import (
    DataConfig,
    ModelConfig,
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
from tltf.settings import FineTuneSettings

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
        ({"schedule": {"head_epochs": -1}}, "schedule.head_epochs >= 0 or 'auto'"),
        ({"schedule": {"head_steps": -1}}, "schedule.head_steps >= 0"),
        ({"schedule": {"head_steps": "auto"}}, "schedule.head_steps to be an integer"),
        ({"schedule": {"keep_best": "yes"}}, "schedule.keep_best to be true or false"),
        (
            {"schedule": {"fine_tune_lr": 0.0}},
            "a positive number (e.g. 1e-4) or 'find'",
        ),
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
    assert kwargs["loss"] == "auto"
    focal = ScheduleConfig.from_dict({"loss": "categorical_focal_crossentropy"})
    assert focal.fine_tune_kwargs()["loss"] == "categorical_focal_crossentropy"
    assert focal.settings().loss == "categorical_focal_crossentropy"
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
    assert config.tune.soup == 0  # no soup unless asked
    assert TuneConfig.from_dict({"tune": {"soup": 4}}).tune.soup == 4
    with pytest.raises(ConfigError, match=r"tune.*soup.*>= 0"):
        TuneConfig.from_dict({"tune": {"soup": -1}})
    with pytest.raises(ConfigError, match="soup"):
        TuneConfig.from_dict({"tune": {"soup": "all"}})
    assert config.tune.refit is False  # no refit unless asked
    assert TuneConfig.from_dict({"tune": {"refit": True}}).tune.refit is True
    with pytest.raises(
        ConfigError, match=r"tune.refit to be true or false.*refit='yes'"
    ):
        TuneConfig.from_dict({"tune": {"refit": "yes"}})


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


def test_schedule_defaults_are_fine_tune_defaults():
    """One source of defaults: the section is FineTuneSettings, field by field."""
    config = ScheduleConfig()
    kwargs = config.fine_tune_kwargs()
    settings = FineTuneSettings()
    for key in kwargs:
        assert getattr(config, key) == getattr(settings, key), key
    fields = {f.name for f in dataclasses.fields(ScheduleConfig)}
    assert set(kwargs) == fields - {"monitor", "mode"}  # every key reaches fine_tune
    assert config.settings() == settings
    changed = ScheduleConfig(unfreeze={"layers": 20}, head_lr="find").settings(seed=3)
    assert changed.changed() == {
        "unfreeze": {"layers": 20},
        "head_lr": "find",
        "seed": 3,
    }


@pytest.mark.parametrize(
    ("schedule", "word"),
    [
        ({"head_lr": "fnd"}, "'find'"),
        ({"fine_tune_lr": "fin"}, "'find'"),
        ({"head_epochs": "aut"}, "'auto'"),
        ({"fine_tune_epochs": "Auto"}, "'auto'"),
        ({"unfreeze": "auot"}, "'auto'"),
        ({"unfreeze": "al"}, "'all'"),
    ],
)
def test_misspelt_words_are_config_errors_with_a_suggestion(schedule, word):
    [(key, value)] = schedule.items()
    with pytest.raises(ConfigError) as error:
        ScheduleConfig.from_dict(schedule)
    message = str(error.value)
    assert message.startswith(f"Expected schedule.{key} ")
    assert f"Received: {key}={value!r}" in message
    assert f"Did you mean {word}?" in message


def test_head_lr_message_says_what_is_expected():
    with pytest.raises(ConfigError) as error:
        ScheduleConfig(head_lr="fnd")
    assert str(error.value) == (
        "Expected schedule.head_lr to be a number or 'find'. Received: "
        "head_lr='fnd' (str). Did you mean 'find'?"
    )


AUTO_YAML = """\
model: {base: demo, cut: auto}
data: {train: photos/}
schedule:
  head_epochs: auto
  fine_tune_epochs: auto
  head_lr: find
  fine_tune_lr: find
  unfreeze: auto
  head_steps: 500
  keep_best: false
"""

AUTO_TOML = """\
[model]
base = "demo"
cut = "auto"
[data]
train = "photos/"
[schedule]
head_epochs = "auto"
fine_tune_epochs = "auto"
head_lr = "find"
fine_tune_lr = "find"
unfreeze = "auto"
head_steps = 500
keep_best = false
"""


def test_auto_and_find_round_trip_through_yaml_toml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text(AUTO_YAML)
    (tmp_path / "a.toml").write_text(AUTO_TOML)
    config = TrainConfig.from_dict(load_config_file(tmp_path / "a.yaml"))
    assert config == TrainConfig.from_dict(load_config_file(tmp_path / "a.toml"))
    s = config.schedule
    assert (s.head_epochs, s.fine_tune_epochs, s.unfreeze) == ("auto",) * 3
    assert (s.head_lr, s.fine_tune_lr) == ("find", "find")
    assert (s.head_steps, s.keep_best) == (500, False)
    assert config.model.cut == "auto"
    kwargs = s.fine_tune_kwargs()
    assert kwargs["head_lr"] == "find" and kwargs["unfreeze"] == "auto"
    assert kwargs["head_steps"] == 500 and kwargs["keep_best"] is False
    for name in ("config.yaml", "config.json"):
        dump_config(config, tmp_path / name)
        assert TrainConfig.from_dict(load_config_file(tmp_path / name)) == config


def test_one_stage_may_be_zero_when_the_other_is_auto():
    assert ScheduleConfig(head_epochs=0).fine_tune_epochs == "auto"
    assert ScheduleConfig(fine_tune_epochs=0, head_epochs="auto").head_epochs == "auto"
    assert ScheduleConfig(head_lr="1e-3").head_lr == 1e-3  # YAML's 1e-3 string


def test_train_configs_default_to_cut_auto_and_tune_configs_to_no_cut():
    assert ModelConfig().cut is None  # build_model's default
    assert TrainConfig().model.cut == "auto"  # a run has the data to probe
    assert TrainConfig.from_dict({}).model.cut == "auto"
    assert TrainConfig.from_dict({"model": None}).model.cut == "auto"  # `model:`
    assert TrainConfig.from_dict({"model": {"base": "demo"}}).model.cut == "auto"
    assert TrainConfig.from_dict({"model": {"cut": None}}).model.cut is None
    assert TrainConfig.from_dict({"model": {"cut": 3}}).model.cut == 3
    assert TuneConfig().model.cut is None and TuneConfig.from_dict({}).model.cut is None
    assert TrainConfig() == TrainConfig.from_dict({})
    assert TuneConfig() == TuneConfig.from_dict(None)


def test_schedule_head_init_is_checked_and_passed_on():
    assert (
        ScheduleConfig.from_dict({"head_init": "random"}).fine_tune_kwargs()[
            "head_init"
        ]
        == "random"
    )
    with pytest.raises(ConfigError, match="head_init"):
        ScheduleConfig.from_dict({"head_init": "rdge"})


def test_schedule_head_l2_is_checked_and_passed_on():
    kwargs = ScheduleConfig.from_dict({"head_l2": 0.001}).fine_tune_kwargs()
    assert kwargs["head_l2"] == 0.001
    assert ScheduleConfig.from_dict({}).fine_tune_kwargs()["head_l2"] == "auto"
    with pytest.raises(ConfigError, match="schedule.head_l2 >= 0 or 'auto'"):
        ScheduleConfig.from_dict({"head_l2": -1.0})
    with pytest.raises(ConfigError, match="head_l2"):
        ScheduleConfig.from_dict({"head_l2": "sklearn"})


@pytest.mark.parametrize(
    ("schedule", "fix"),
    [
        ({"fine_tune_lr": 1e-5}, "set tune.search_space.fine_tune_lr to 1e-05"),
        ({"unfreeze": 2}, "set tune.search_space.unfreeze to 2"),
        ({"bn": "affine"}, "tune.search_space.bn"),
        ({"monitor": "val_accuracy"}, "tune.objective (--objective)"),
        ({"head_steps": 500}, "not a step budget: set head_epochs instead"),
    ],
)
def test_tune_refuses_schedule_keys_it_would_not_use(schedule, fix):
    """The search space sets these (and tune.objective picks the best trial):
    a value in [schedule] would be dropped without a word."""
    key = next(iter(schedule))
    with pytest.raises(
        ConfigError, match=f"schedule.{key}=.* is not used by tltf tune"
    ):
        TuneConfig.from_dict({"schedule": schedule})
    with pytest.raises(ConfigError, match=re.escape(fix)):
        TuneConfig.from_dict({"schedule": schedule})
    TrainConfig.from_dict({"schedule": schedule})  # tltf train takes them


def test_tune_passes_the_other_schedule_keys_to_every_trial():
    from tltf.runs import _trial_schedule

    assert _trial_schedule(TuneConfig().schedule) == {}
    assert _trial_schedule(TuneConfig.from_dict({}).schedule) == {}
    # The trials run without the guard unless asked, as the tuner's do.
    assert TuneConfig().schedule.keep_best is False
    assert TuneConfig.from_dict({}).to_dict()["schedule"]["keep_best"] is False
    assert TrainConfig.from_dict({}).schedule.keep_best is True
    schedule = TuneConfig.from_dict(
        {
            "schedule": {
                "head_l2": 0.01,
                "regularize": "l2sp",
                "keep_best": True,
                "fine_tune_patience": 3,
                "label_smoothing": 0.1,  # passed on by name, as before
                "head_epochs": 2,  # the tuner's epochs (`_tune_epochs`)
            }
        }
    ).schedule
    assert _trial_schedule(schedule) == {
        "head_l2": 0.01,
        "regularize": "l2sp",
        "keep_best": True,
        "fine_tune_patience": 3,
    }
    # Patience counts the guard's epochs: without keep_best it is an error.
    with pytest.raises(ConfigError, match="schedule.keep_best is false"):
        TuneConfig.from_dict({"schedule": {"fine_tune_patience": 3}})


def test_schedule_fine_tune_patience_is_checked_and_passed_on():
    kwargs = ScheduleConfig.from_dict({"fine_tune_patience": 3}).fine_tune_kwargs()
    assert kwargs["fine_tune_patience"] == 3
    assert ScheduleConfig.from_dict({}).fine_tune_kwargs()["fine_tune_patience"] is None
    with pytest.raises(ConfigError, match="schedule.fine_tune_patience >= 1"):
        ScheduleConfig.from_dict({"fine_tune_patience": 0})
    with pytest.raises(ConfigError, match="fine_tune_patience to be an integer"):
        ScheduleConfig.from_dict({"fine_tune_patience": 2.5})
    with pytest.raises(ConfigError, match="schedule.keep_best is false"):
        ScheduleConfig.from_dict({"fine_tune_patience": 2, "keep_best": False})


def test_tune_config_searches_like_tltf_tune():
    # `tltf tune` and `tltf.tune` use the same search algorithm by default.
    import tltf
    from tltf.config import TuneSection

    default = inspect.signature(tltf.tune).parameters["tuner"].default
    assert TuneSection().tuner == default == "bayesian"
