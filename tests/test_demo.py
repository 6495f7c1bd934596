"""The transfer-vs-scratch demo: a complete run folder, on tiny sizes."""

from __future__ import annotations

import json

import pytest

import tltf.demo
from tltf.demo import _check_k_values, format_table, run_demo
from tltf.errors import ConfigError
from tltf.pretrain import QUICK_BASE

SUMMARY_KEYS = {
    "schema",
    "tltf_version",
    "created",
    "quick",
    "seed",
    "task",
    "class_names",
    "image_size",
    "test_per_class",
    "test_images",
    "k_values",
    "epochs",
    "settings",
    "base",
    "results",
    "confusion",
    "files",
    "wall_seconds",
}
RESULT_KEYS = {
    "k",
    "train_images",
    "transfer_head_only",
    "transfer_fine_tuned",
    "scratch",
    "seconds",
    "history",
    "curves",
}


def _quick_run(root):
    """One quick demo run (k = 2) with its own TLTF_HOME under `root`: the
    summary, and the arguments of each `fine_tune` it made, as `(args, kwargs)`
    without the model."""
    calls = []
    fine_tune = tltf.demo.fine_tune

    def recording(model, *args, **kwargs):
        calls.append((args, kwargs))
        return fine_tune(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLTF_HOME", str(root / "home"))
        patch.setattr(tltf.demo, "fine_tune", recording)
        summary = run_demo(k_values=[2], out_dir=root / "run", quick=True, verbose=0)
    return summary, calls


# One test for the one run (about 15 s of training): under xdist, tests sharing
# a module fixture can land on both workers, and each would train it again.
@pytest.mark.slow
def test_quick_run_writes_a_complete_folder(tmp_path):
    summary, calls = _quick_run(tmp_path)
    out = tmp_path / "run"
    assert summary["out_dir"] == str(out)
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) == SUMMARY_KEYS
    assert {**on_disk, "out_dir": str(out)} == summary
    assert on_disk["k_values"] == [2]
    assert [r["k"] for r in on_disk["results"]] == [2]
    assert on_disk["confusion"]["k"] == 2
    for result in on_disk["results"]:
        assert set(result) == RESULT_KEYS
        assert result["train_images"] == 12 * result["k"]
        for key in ("transfer_head_only", "transfer_fine_tuned", "scratch"):
            assert 0.0 <= result[key] <= 1.0
        transfer = result["history"]["transfer"]
        assert transfer["stage"] == [1, 2]
        assert len(result["history"]["scratch"]["test_accuracy"]) == 2
        assert result["transfer_head_only"] == transfer["test_accuracy"][0]
        for path in result["curves"].values():
            assert (out / path).stat().st_size > 1000
    for path in on_disk["files"].values():
        assert (out / path).stat().st_size > 1000
    matrix = on_disk["confusion"]["matrix"]
    assert len(matrix) == 12 and sum(map(sum, matrix)) == on_disk["test_images"]
    assert on_disk["base"]["architecture"] == "mobilenet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "run"]  # no temp

    # The quick base was pretrained into the run's TLTF_HOME, and stays there.
    assert (tmp_path / "home" / "bases" / QUICK_BASE.name / "base.keras").is_file()

    # The printed table: one row per k.
    lines = format_table(summary["results"]).splitlines()
    assert "transfer (head only)" in lines[0] and "scratch" in lines[0]
    assert [line.split("|")[0].strip() for line in lines[2:]] == ["2"]
    assert lines[1].startswith("-")

    # One k: the transfer run, then the scratch run, on the same augmented data.
    (transfer_args, transfer), (scratch_args, scratch) = calls
    assert transfer_args[0] is scratch_args[0]
    assert transfer["augment"] is True and scratch["augment"] is True
    assert transfer["batch_size"] == scratch["batch_size"]
    assert transfer["head_epochs"] > 0 and scratch["head_epochs"] == 0
    assert summary["settings"]["augment"] is True


def test_k_values_are_sorted_and_unique():
    assert _check_k_values((20, 5, 10, 5)) == [5, 10, 20]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_values": ()}, "k_values"),
        ({"k_values": (0, 5)}, "k_values"),
        ({"seed": -1}, "seed"),
        ({"head_epochs": 0, "fine_tune_epochs": 0}, "Nothing to train"),
        ({"augment": "yes"}, "augment"),
    ],
)
def test_bad_arguments_fail_fast(kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        run_demo(out_dir=tmp_path / "run", quick=True, verbose=0, **kwargs)


def test_existing_run_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        run_demo(out_dir=tmp_path / "run", quick=True, verbose=0)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
