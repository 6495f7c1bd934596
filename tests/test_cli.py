"""The `tltf` command line: listing bases, errors without tracebacks."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from PIL import Image

import tltf
from tests import processes
from tltf import datasets
from tltf.bases.registry import SHIPPED_BASES
from tltf.cli import main
from tltf.config import TrainConfig
from tltf.errors import ConfigError
from tltf.runs import resolve_base, still_improving, still_improving_hint


def _tltf(*args, tmp_path):
    """`python -m tltf.cli ...` in a new process, started with tltf imported
    (tests/processes.py; a fresh interpreter's output is checked in
    tests/test_cli_e2e.py)."""
    env = {**os.environ, "TLTF_HOME": str(tmp_path / "home")}
    return processes.run(
        [sys.executable, "-m", "tltf.cli", *args], env=env, timeout=120
    )


@pytest.mark.slow
def test_bases_lists_the_registry_in_a_subprocess(tmp_path):
    result = _tltf("bases", "--filter", "mobilenet*", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "family", "default", "min"]
    assert [line.split()[0] for line in lines[1:]] == [
        "mobilenet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
    ]
    assert lines[2].split() == ["mobilenet_v2", "mobilenet_v2", "224", "32"]
    assert "Traceback" not in result.stderr


def test_unknown_base_is_an_error_without_traceback(capsys):
    assert main(["bases", "mobilenet_v9"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("tltf: error: Unknown base 'mobilenet_v9'.")
    assert "Did you mean" in err
    assert "Traceback" not in err
    assert out == ""


def test_bad_subcommand_exits_2(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fly'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "status", "text"),
    [
        (["bases", "--filter", "nothing*"], 2, "tltf: error: No base matches"),
        (["demo", "--k", "0"], 2, "expected an integer >= 1"),
        (["demo", "--seed", "x"], 2, "expected an integer"),
        (["pretrain", "mobilenet_v9"], 2, "tltf: error: Unknown base 'mobilenet_v9'"),
        (["pretrain", "--task", "shapes"], 2, "invalid choice: 'shapes'"),
        (["pretrain", "--epochs", "0"], 2, "expected an integer >= 1"),
        (["rank", "--max-images", "some"], 2, "expected an integer >= 1 or 'all'"),
        (["pretrain", "--learning-rate", "-1"], 2, "learning_rate"),
        (["pretrain", "--arg", "alpha"], 2, "Expected --arg KEY=VALUE"),
        (["pretrain", "mobilenet", "--arg", "alphaa=0.5"], 2, "Did you mean 'alpha'"),
    ],
)
def test_errors_exit_2(argv, status, text, capsys):
    assert main(argv) == status
    assert text in capsys.readouterr().err


def test_demo_error_from_the_library_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    assert main(["demo", "--quick", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tltf: error: Run folder") and err.count("\n") == 1


@pytest.mark.parametrize(("flags", "augment"), [([], True), (["--no-augment"], False)])
def test_demo_augments_unless_told_not_to(flags, augment, monkeypatch):
    import tltf.cli

    calls = []
    monkeypatch.setattr(tltf.cli, "run_demo", lambda **kwargs: calls.append(kwargs))
    assert main(["demo", "--k", "5", *flags]) == 0
    assert calls == [
        {
            "k_values": [5],
            "seed": 0,
            "out_dir": None,
            "quick": False,
            "augment": augment,
        }
    ]


@pytest.mark.parametrize(
    "command",
    ["bases", "train", "tune", "evaluate", "predict", "export", "demo", "pretrain"],
)
def test_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"tltf {command}" in out


def test_tltf_alone_lists_the_commands(capsys):
    """`tltf` with no command shows what it can do (the help), not only argparse's
    "the following arguments are required"; the status is a usage error's."""
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("bases", "train", "tune", "evaluate", "predict", "export"):
        assert f"    {command} " in out, command
    assert "tltf <command> --help" in out


@pytest.mark.slow
def test_bases_shows_one_entry(capsys):
    assert main(["bases", "EfficientNetB0"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_b0" in out and "preprocessing: none" in out
    assert "parameters:    4,049,571" in out
    assert "blocks:        18, bottom to top: stem block1a" in out


def test_bases_blocks_adds_block_and_parameter_counts(capsys):
    assert main(["bases", "--filter", "mobilenet_v3_s*", "--blocks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "default", "min", "blocks", "params"]
    assert lines[1].split() == [
        "mobilenet_v3_small",
        "mobilenet_v3",
        "224",
        "32",
        "13",
        "0.9M",
    ]


def test_bases_lists_the_shipped_demo_base(capsys):
    assert main(["bases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["demo", "mobilenet_v3", "64", "32"]  # first row
    assert lines[-1] == (
        "demo: MobileNetV3Small @64 px pretrained on tltf's procedural "
        "shapes_source; ships with tltf, works offline."
    )
    assert main(["bases", "--filter", "dem*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:] if line.strip()] == ["demo", "demo:"]


@pytest.mark.slow
def test_bases_shows_the_shipped_base(capsys):
    assert main(["bases", "demo"]) == 0
    out = capsys.readouterr().out
    assert f"folder:        {SHIPPED_BASES['demo'].path}" in out
    assert "architecture:  mobilenet_v3_small" in out and "default size:  64" in out
    assert "blocks:        13, bottom to top: stem expanded_conv" in out


def test_the_shipped_base_is_the_demo_base():
    from tltf.pretrain import shipped_demo_base_path

    assert SHIPPED_BASES["demo"].path == shipped_demo_base_path()
    assert SHIPPED_BASES["demo"].path.is_dir()


@pytest.mark.slow
def test_demo_loads_by_name_in_python():
    base = tltf.load_base("demo")
    assert base.input_shape == (64, 64, 3) and len(base.block_map) == 13
    model = tltf.build_model("demo", 3, weights="imagenet")  # ignored: saved weights
    assert model.input_shape == (None, 64, 64, 3)


def test_unknown_base_suggests_demo_when_nothing_is_close(capsys):
    assert main(["bases", "qqqqqq"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tltf: error: Unknown base 'qqqqqq'. Try 'demo' (")
    assert main(["bases", "dmeo"]) == 2
    assert "Did you mean 'demo'?" in capsys.readouterr().err


def _printed(argv, capsys) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def test_the_training_data_can_come_first_without_train(capsys):
    """`tltf train photos/ --base demo`, as a first try reads: the same as
    --train; given both ways, it is a usage error that names them."""
    assert _printed(["photos/", "--base", "demo"], capsys)["data"]["train"] == "photos/"
    assert main(["tune", "photos/", "--base", "demo", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["train"] == "photos/"
    argv = ["train", "photos/", "--base", "demo", "--train", "other/"]
    assert main([*argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "tltf: error: the training data is given twice: 'photos/' and --train "
        "'other/'; give it once.\n"
    )


def test_print_config_takes_auto_find_and_the_new_schedule_flags(capsys):
    printed = _printed(["--base", "demo", "--train", "x/"], capsys)
    assert printed["model"]["cut"] == "auto"  # train's default
    assert printed["model"]["weights"] is None  # a saved base has its own
    defaults = TrainConfig().schedule
    assert printed["schedule"]["head_epochs"] == defaults.head_epochs
    assert printed["schedule"]["unfreeze"] == defaults.unfreeze
    argv = [
        *("--base", "demo", "--train", "x/", "--head-epochs", "auto"),
        *("--fine-tune-epochs", "7", "--head-lr", "find", "--fine-tune-lr", "find"),
        *("--unfreeze", "auto", "--head-steps", "300", "--no-keep-best"),
        *("--cut", "none", "--head-l2", "0.001"),
        *("--loss", "categorical_focal_crossentropy"),
    ]
    printed = _printed(argv, capsys)
    assert printed["schedule"] == {
        **printed["schedule"],
        "head_epochs": "auto",
        "fine_tune_epochs": 7,
        "head_lr": "find",
        "fine_tune_lr": "find",
        "unfreeze": "auto",
        "head_steps": 300,
        "keep_best": False,
        "head_l2": 0.001,
        "loss": "categorical_focal_crossentropy",
    }
    assert printed["model"]["cut"] is None
    config = TrainConfig.from_dict(printed)  # what --print-config shows reads back
    assert config.schedule.head_lr == "find" and config.model.cut is None
    printed = _printed(
        ["--base", "demo", "--train", "x/", "--set", "schedule.head_lr=find"], capsys
    )
    assert printed["schedule"]["head_lr"] == "find"
    argv = ["--base", "demo", "--train", "x/", "--fine-tune-patience", "3"]
    assert _printed(argv, capsys)["schedule"]["fine_tune_patience"] == 3
    # The stage-2 rate's default, "auto" (1e-4, or 3e-4 on a large set).
    assert printed["schedule"]["fine_tune_lr"] == defaults.fine_tune_lr == "auto"
    argv = ["--base", "demo", "--train", "x/", "--fine-tune-lr", "auto"]
    assert _printed(argv, capsys)["schedule"]["fine_tune_lr"] == "auto"


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (
            ["--base", "demoo"],
            "tltf: error: Unknown base 'demoo'. Did you mean 'demo'?",
        ),
        (["--base", "qqqqqq"], "tltf: error: Unknown base 'qqqqqq'. Try 'demo'"),
        (["--base", "no/such/folder"], "does not exist"),
        (["--base", "demo", "--weights", "w.h5"], "'demo' is a saved base"),
        (["--head-lr", "fnd"], "expected a number > 0 or 'find', got 'fnd'; did you"),
        (["--head-lr", "0"], "expected a number > 0, got '0'"),
        (["--fine-tune-lr", "fine"], "got 'fine'; did you mean 'find'?"),
        (["--fine-tune-lr", "aut"], "or 'auto' or 'find', got 'aut'; did you mean"),
        (["--head-epochs", "aut"], "or 'auto', got 'aut'; did you mean 'auto'?"),
        (["--fine-tune-epochs", "-1"], "expected an integer >= 0, got -1"),
        (["--unfreeze", "al"], "'all' or 'auto', got 'al'; did you mean 'all'?"),
        (["--head-steps", "-1"], "expected an integer >= 0"),
        (["--head-l2", "-1"], "expected a number >= 0, got '-1'"),
        (["--head-l2", "aut"], "or 'auto', got 'aut'; did you mean 'auto'?"),
        (["--fine-tune-patience", "0"], "expected an integer >= 1, got 0"),
        (
            ["--fine-tune-patience", "2", "--no-keep-best"],
            "schedule.fine_tune_patience=2 counts the stage-2 epochs that keep_best "
            "did not keep, and schedule.keep_best is false",
        ),
        (["--set", "schedule.head_lr=fnd"], "Did you mean 'find'?"),
        (
            ["--loss", "categorical_focal_crosentropy"],
            "Unknown loss 'categorical_focal_crosentropy' in schedule.loss. Pass "
            "'auto' (the task's own loss) or a Keras loss name such as "
            "'sparse_categorical_crossentropy'. Did you mean "
            "'categorical_focal_crossentropy'",
        ),
        (
            ["--loss", "categorical_crossentropy", "--label-smoothing", "0.1"],
            "schedule.label_smoothing=0.1 smooths the task's own loss (loss: auto), "
            "and schedule.loss is 'categorical_crossentropy'. Leave label_smoothing "
            "at 0 with a loss of your own.",
        ),
    ],
)
def test_print_config_rejects_bad_bases_and_values(argv, text, capsys):
    base = [] if "--base" in argv else ["--base", "demo"]
    assert main(["train", *base, "--train", "x/", *argv, "--print-config"]) == 2
    captured = capsys.readouterr()
    assert text in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_saved_bases_record_no_weights():
    config = TrainConfig.from_dict({"model": {"base": "demo"}})
    assert resolve_base(config).model.weights is None
    config = TrainConfig.from_dict({"model": {"base": "mobilenet_v2"}})
    assert resolve_base(config).model.weights == "imagenet"
    with pytest.raises(ConfigError, match="saved base with its own weights"):
        resolve_base(
            TrainConfig.from_dict({"model": {"base": "demo", "weights": "w.h5"}})
        )


def test_tune_keeps_its_default_epochs_for_auto():
    from tltf.config import ScheduleConfig
    from tltf.runs import _tune_epochs

    assert _tune_epochs(ScheduleConfig(head_epochs="auto", fine_tune_epochs=3)) == {
        "fine_tune_epochs": 3
    }


def test_a_run_still_improving_says_what_to_try():
    summary = {
        "best": {"monitor": "val_loss", "epoch": 12},
        "epochs": {"head": 2, "fine_tune": 10, "run": 12},
        "still_improving": True,
    }
    assert still_improving_hint(summary) == (
        "the best epoch is the last one (val_loss still improving): train longer, "
        "e.g. --fine-tune-epochs 20 (this run had 10)"
    )
    head_only = {**summary, "epochs": {"head": 3, "fine_tune": 0, "run": 3}}
    assert "--head-epochs 6 (this run had 3)" in still_improving_hint(head_only)
    assert still_improving_hint({**summary, "still_improving": False}) is None


def test_a_searchs_best_values_are_shown_in_four_significant_digits():
    from tltf.cli import best_values_text

    best = {"unfreeze_blocks": 6, "fine_tune_lr": 6.111990276556007e-05}
    best |= {"head_dropout": 0.0, "bn": "frozen", "lr_decay": 1.0}
    assert best_values_text(best) == (
        "unfreeze_blocks=6, fine_tune_lr=6.112e-05, head_dropout=0, bn=frozen, "
        "lr_decay=1"
    )


def test_still_improving_needs_a_last_epoch_better_by_a_margin_that_matters():
    assert still_improving([0.9, 0.5, 0.4], "min")
    assert still_improving([0.5, 0.7, 0.8], "max")
    assert still_improving([0.4], "min")  # one epoch: nothing says otherwise
    # A tie with an earlier epoch, a worse last epoch, a NaN last epoch: no.
    assert not still_improving([0.9, 0.4, 0.4], "min")
    assert not still_improving([0.9, 0.4, 0.5], "min")
    assert not still_improving([0.9, 0.4, float("nan")], "min")
    assert still_improving([0.9, float("nan"), 0.4], "min")
    # Better by under 1% of the best before: converged, not improving.
    assert not still_improving([0.9, 0.5, 0.496], "min")
    assert not still_improving([0.5, 0.9, 0.905], "max")
    assert still_improving([0.5, 0.9, 0.92], "max")
    # A cross-entropy that falls by 7e-8 (a saturated validation set, seen on
    # sklearn's digits with the demo base), 5% of its value: not by min_fall.
    assert still_improving([3.1e-7, 2.9e-7, 2.4e-7], "min")
    assert not still_improving([3.1e-7, 2.9e-7, 2.4e-7], "min", min_fall=1e-3)
    assert still_improving([0.30, 0.25, 0.2], "min", min_fall=1e-3)


def test_a_fixed_unfreeze_must_fit_below_an_auto_cut():
    from tests.helpers import make_tiny_base
    from tltf.runs import _check_unfreeze_below_cut

    model = tltf.build_model(make_tiny_base(), 3, cut="block2")
    config = TrainConfig.from_dict({"schedule": {"unfreeze": 3}})
    with pytest.raises(ConfigError) as error:
        _check_unfreeze_below_cut(config, model)
    assert str(error.value) == (
        "schedule.unfreeze=3 top blocks, but model.cut='auto' cut the base at "
        "'block2', which keeps 2 block(s). Set --unfreeze auto (or at most 2), or "
        "keep the whole base with --cut none (model.cut: null)."
    )
    for unfreeze in (2, "auto", "all", {"layers": 9}):
        config = TrainConfig.from_dict({"schedule": {"unfreeze": unfreeze}})
        _check_unfreeze_below_cut(config, model)
    # cut="auto" may keep the whole base: no cut to name, nor --cut none to undo
    # it (the message used to read "cut the base at None").
    whole = tltf.build_model(make_tiny_base(), 3)
    config = TrainConfig.from_dict({"schedule": {"unfreeze": 5}})
    with pytest.raises(ConfigError) as error:
        _check_unfreeze_below_cut(config, whole)
    assert str(error.value) == (
        "schedule.unfreeze=5 top blocks, but the base has 4 (model.cut='auto' "
        "kept all of them). Set --unfreeze auto, or at most 4."
    )


@pytest.mark.slow
def test_pretrain_writes_a_base_that_train_takes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TLTF_HOME", str(tmp_path / "home"))
    out = tmp_path / "bases" / "tiny"
    argv = ["pretrain", "mobilenet", "--arg", "alpha=0.25", "--images", "64"]
    argv += ["--image-size", "32", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"--base {out}" in printed.splitlines()[-1]
    assert "2/2 - " in printed and "━" not in printed  # piped: one line an epoch
    train = ["train", "--base", str(out), "--train", "photos/", "--print-config"]
    assert main(train) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["base"] == str(out) and printed["model"]["weights"] is None
    base = tltf.load_base(str(out))
    assert base.info["constructor_kwargs"] == {"alpha": 0.25}
    assert base.info["images"] == 64 and base.input_shape == (32, 32, 3)


def test_pretrain_refuses_a_folder_it_did_not_write(tmp_path, capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("generated training data for a refused folder")

    monkeypatch.setattr(datasets, "make_images", no_data)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["pretrain", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "tltf did not write" in err and err.count("\n") == 1
    assert (mine / "notes.txt").read_text() == "keep"


def test_bases_lists_the_bases_pretrained_into_the_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TLTF_HOME", str(tmp_path / "home"))
    store = tmp_path / "home" / "bases"
    info = {"task": "shapes_source", "val_accuracy": 0.8433}
    for name, record in [
        ("mobilenet-64px-a", {"info": info}),
        ("mobilenet-odd", ["not", "a", "record"]),  # listed, without details
        ("vgg16-b", {}),
    ]:
        (store / name).mkdir(parents=True)
        (store / name / "base.json").write_text(json.dumps(record))
    (store / "mobilenet-interrupted").mkdir()  # no base.json: skipped
    assert main(["bases", "--filter", "mobilenet*"]) == 0
    out = capsys.readouterr().out
    assert f"Pretrained in the base store ({store})" in out
    assert (
        f"{store / 'mobilenet-64px-a'}  (on shapes_source, val accuracy 0.8433)" in out
    )
    assert f"  {store / 'mobilenet-odd'}\n" in out
    assert "vgg16-b" not in out and "interrupted" not in out
    assert main(["bases", "--filter", "resnet50"]) == 0
    assert "base store" not in capsys.readouterr().out


def test_train_on_a_folder_of_one_class_names_it(tmp_path, capsys):
    folder = tmp_path / "photos" / "cats"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"{i}.png")
    out = tmp_path / "runs" / "one"
    data = ["--base", "demo", "--train", str(folder.parent), "--out", str(out)]
    for argv in [["train", *data], ["tune", *data, "--val-fraction", "0.25"]]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "has one class (cats); a classifier needs at least 2" in err
        assert err.count("\n") == 1 and not out.exists()


def test_tune_refuses_a_rate_the_search_space_would_replace(capsys):
    argv = ["tune", "--base", "demo", "--train", "x/", "--fine-tune-lr", "1e-5"]
    assert main([*argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert (
        "schedule.fine_tune_lr=1e-05 (--fine-tune-lr) is not used by tltf tune" in err
    )
    assert "tune.search_space.fine_tune_lr" in err and "Traceback" not in err


def test_tune_help_offers_no_flag_the_search_space_replaces(capsys):
    searched = ("--head-lr", "--fine-tune-lr", "--unfreeze", "--bn", "--lr-decay")
    for command, shown in (("train", True), ("tune", False)):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        for flag in (*searched, "--monitor"):
            assert (f"{flag} " in text) is shown, (command, flag)
    assert "--objective" in text  # tune's own


def test_tune_takes_the_guard_patience_and_head_flags(capsys):
    """They reach every trial (`runs._trial_schedule`); the trials run without
    the guard unless --keep-best asks for it."""
    argv = ["tune", "--base", "demo", "--train", "x/", "--val-fraction", "0.2"]
    assert main([*argv, "--print-config"]) == 0
    assert "keep_best: false" in capsys.readouterr().out
    flags = ["--keep-best", "--fine-tune-patience", "2", "--head-l2", "0.01"]
    assert main([*argv, *flags, "--head-init", "random", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "keep_best: true" in out and "fine_tune_patience: 2" in out
    assert "head_l2: 0.01" in out and "head_init: random" in out
    assert main([*argv, "--fine-tune-patience", "2", "--print-config"]) == 2
    assert "Set keep_best: true (--keep-best)" in capsys.readouterr().err
