"""WiSE-FT in fine_tune: the run ends at a mix of stage 1's and the fine-tuned weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tltf
from tests.helpers import NO_PIXELS, make_data, make_tiny_model
from tltf.errors import ConfigError


class Ends(keras.callbacks.Callback):
    """The weights when stage 2 begins and when fit ends (before the mix)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.stage_one = [np.array(w) for w in self.model.get_weights()]

    def on_train_end(self, logs=None):
        self.fine_tuned = [np.array(w) for w in self.model.get_weights()]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_wise_mixes_stage_one_and_the_fine_tuned_weights(data, alpha):
    model, ends = make_tiny_model(), Ends()
    tltf.fine_tune(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=2,
        fine_tune_lr=1e-2,
        unfreeze=2,
        keep_best=False,
        wise=alpha,
        callbacks=[ends],
        verbose=0,
    )
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(ends.stage_one, ends.fine_tuned, strict=True)
    ]
    assert sum(moved) >= 4  # stage 2 changed the head and two blocks
    for got, a, b in zip(
        model.get_weights(), ends.stage_one, ends.fine_tuned, strict=True
    ):
        if alpha in (0.0, 1.0):  # the ends, bitwise
            np.testing.assert_array_equal(got, b if alpha else a)
        else:
            np.testing.assert_allclose(got, 0.5 * a + 0.5 * b, rtol=1e-6, atol=1e-7)


def test_wise_auto_keeps_the_mix_with_the_best_validation_loss(capsys):
    train, val = make_data(48, seed=0), make_data(24, seed=1)
    model = make_tiny_model(head=NO_PIXELS)
    tltf.fine_tune(
        model,
        train,
        val,
        head_epochs=1,
        fine_tune_epochs=2,
        fine_tune_lr=1e-2,
        unfreeze=2,
        keep_best=False,
        wise="auto",
        verbose=1,
    )
    line = [ln for ln in capsys.readouterr().out.splitlines() if "wise:" in ln][0]
    tried = line.split("(WiSE-FT) (")[1].rstrip(").").split(", ")
    scores = {float(t.split(": ")[0]): float(t.split(": ")[1]) for t in tried}
    assert sorted(scores) == [0.0, 0.25, 0.5, 0.75, 1.0]
    best = max(scores, key=lambda a: (scores[a], a))
    assert f"+ {best:g} x the fine-tuned" in line
    loss = model.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert -loss == pytest.approx(scores[best], abs=2e-3)


def test_wise_auto_without_anything_to_score_on_fails_before_training(data):
    model = make_tiny_model()
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ConfigError, match="wise='auto'"):
        tltf.fine_tune(model, data, keep_best=False, wise="auto", verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for bad in (1.5, -0.1, "best", True):
        with pytest.raises(ConfigError, match="wise"):
            tltf.FineTuneSettings(wise=bad)
