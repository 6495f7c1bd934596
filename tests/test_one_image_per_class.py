"""One image per class: leave-one-out scores nothing there, and nothing may
pretend it does (the probe, `unfreeze="auto"`, `cut="auto"`, the head's block
and pixel weights, the guard)."""

from __future__ import annotations

import numpy as np

import tltf
from tests.helpers import (
    NO_PIXELS,
    changed_keys,
    check_error,
    make_data,
    make_tiny_base,
    make_tiny_model,
    raises,
    weights_snapshot,
)
from tltf.errors import DataError, LeaveOneOutError
from tltf.heads import pixel_columns
from tltf.model import model_info
from tltf.probe import loo_accuracy, probe_blocks, scorable


def test_leave_one_out_accuracy_scores_only_images_whose_class_has_another():
    y = np.array([0, 0, 1, 1, 2])
    # The lone image of class 2 is named wrongly, as it must be once left out.
    scores = np.eye(3)[[0, 0, 1, 0, 0]]
    assert scorable(y).tolist() == [True, True, True, True, False]
    assert loo_accuracy(scores, y) == 0.75
    assert loo_accuracy(np.eye(3)[[1, 2, 0]], np.array([0, 1, 2])) == 0.0


def test_the_probe_at_one_image_per_class_says_what_would_score_it():
    data = make_data(3)  # three classes, one image each
    error = raises(LeaveOneOutError, probe_blocks, make_tiny_base(), data, verbose=0)
    check_error(error, DataError, "one training image", "validation_data=")
    probe = probe_blocks(make_tiny_base(), data, make_data(12, seed=1), verbose=0)
    assert probe.scoring == "validation" and probe.num_val == 12


def test_fine_tune_at_one_image_per_class_trains_the_head_alone(capsys):
    model = make_tiny_model()
    before = weights_snapshot(model_info(model).base)
    history = tltf.fine_tune(model, make_data(3), verbose=1)
    out = capsys.readouterr().out
    assert set(history.history["stage"]) == {1}
    assert history.kept.stage == 1
    assert "stage 2 skipped: every class has one training image" in out
    assert "no leave-one-out score" in out and "nothing to weigh them" in out
    # No made-up score, and no verdict on the base drawn from one.
    assert "leave-one-out accuracy 0.000" not in out
    assert "adds little or nothing" not in out
    # The raw pixels, which nothing scored, stay muted.
    scale = model.get_layer("head_standardize").scale.numpy()
    assert not np.any(scale[pixel_columns(model)])
    assert not changed_keys(before, weights_snapshot(model_info(model).base))


def test_the_guard_says_it_could_not_score_an_asked_for_stage_2(capsys):
    model = make_tiny_model(head=NO_PIXELS)
    history = tltf.fine_tune(
        model, make_data(3), unfreeze=1, head_epochs=1, fine_tune_epochs=2, verbose=1
    )
    out = capsys.readouterr().out
    assert history.history["stage"] == [1, 2, 2]
    assert "leave-one-out could not score stage 2's epochs" in out
    assert "restored" not in out and "0.000" not in out
    assert history.kept.epoch == 3 and history.kept.stage == 2


def test_cut_auto_at_one_image_per_class_keeps_the_whole_base(capsys):
    model = tltf.build_model(make_tiny_base(), 3, cut="auto", data=make_data(3))
    assert model_info(model).block_map.names[-1] == "block4"
    assert "cut='auto' -> None (the whole base): every class has one" in (
        capsys.readouterr().out
    )


def test_two_images_per_class_one_held_out_unfreeze_all_but_the_first_block(capsys):
    # The probe cannot score the one image per class left to train on; the
    # held-out slice judges stage 2 instead, and the run does not skip it.
    model = make_tiny_model(head=NO_PIXELS)
    history = tltf.fine_tune(
        model, make_data(6), head_epochs=1, fine_tune_epochs=1, verbose=1
    )
    out = capsys.readouterr().out
    assert "3 of 6 training images" in out and "held out of both stages" in out
    assert "unfreeze='auto' -> 3 of 4 blocks" in out and "slice judges" in out
    assert "stage 2 skipped: every class" not in out and "0.000" not in out
    # (Here stage 1 already classifies the slice, so the guard ends the run.)
    assert history.history["stage"][0] == 1
