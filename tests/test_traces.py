"""Each stage's training step is traced once (tltf.cache.build_metrics and
build_optimizer): Keras would build the compiled metrics and the optimizer inside
the first trace, and TensorFlow would then trace the whole step again. The probe,
a stage-2 LR sweep and `recalibrate_bn` trace their model once too, whatever the
size of the last batch."""

from __future__ import annotations

import keras
import pytest

import tltf
from tests.helpers import count_traces, make_data, make_tiny_base, make_tiny_model


@pytest.fixture
def traces(monkeypatch):
    return count_traces(monkeypatch)


@pytest.mark.parametrize(
    ("settings", "train_traces"),
    [
        # Stage 2 alone: the full model's step, from its first epoch.
        ({"head_epochs": 0, "fine_tune_epochs": 2, "keep_best": False}, 1),
        # Both stages through the base (no feature cache): one step per stage.
        ({"cache_features": False, "head_epochs": 2, "fine_tune_epochs": 2}, 2),
        # Stage 1 on cached features (the head sub-model), then stage 2.
        ({"cache_features": True, "head_epochs": 2, "fine_tune_epochs": 2}, 2),
        # A closed-form head (no stage-1 epochs), which the stage-2 guard
        # evaluates on the validation data before stage 2.
        (
            {
                "cache_features": False,
                "head_epochs": "auto",
                "head_steps": 0,
                "fine_tune_epochs": 2,
            },
            1,
        ),
    ],
    ids=["stage2-only", "uncached", "cached", "closed-form"],
)
def test_each_stage_traces_its_training_step_once(traces, settings, train_traces):
    history = tltf.fine_tune(
        make_tiny_model(),
        make_data(24),
        make_data(12, seed=1),
        unfreeze=1,
        seed=0,
        verbose=0,
        **settings,
    )
    assert history.history["stage"][-1] == 2
    assert traces["train"] == train_traces
    # One evaluation step per model evaluated (the head sub-model is a second).
    assert traces["test"] == (2 if settings.get("cache_features") is True else 1)


class _NoSingleRows(keras.metrics.Mean):
    """A user metric that refuses a batch of one row (a graph batch is fine)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if y_true.shape[0] == 1:
            raise ValueError("no single rows")
        return super().update_state(keras.ops.mean(y_pred), sample_weight)


def test_a_metric_that_refuses_the_dummy_batch_is_left_to_keras():
    model = make_tiny_model()
    history = tltf.fine_tune(
        model,
        make_data(24),
        make_data(12, seed=1),
        head_epochs=0,
        fine_tune_epochs=1,
        unfreeze=1,
        keep_best=False,
        metrics=[_NoSingleRows(name="rows")],
        seed=0,
        verbose=0,
    )
    # It trained and reported the metric: the shortcut's failure was dropped.
    assert history.history["stage"] == [2]
    assert "val_rows" in history.history


@pytest.fixture
def model_calls(monkeypatch):
    """Calls of `tltf.layers.Preprocessing`, the first layer of every model and
    extractor tltf builds: in a compiled function, one per trace."""
    calls = []
    call = tltf.layers.Preprocessing.call

    def counting(self, inputs):
        calls.append(self.name)
        return call(self, inputs)

    monkeypatch.setattr(tltf.layers.Preprocessing, "call", counting)
    return calls


# 40 images in batches of 32: a smaller last batch, which a `reduce_retracing`
# function traces again (a whole model's training step in a stage-2 sweep).
def test_the_probe_traces_its_extractor_once(model_calls):
    base = tltf.load_base(make_tiny_base(), preprocessing="tf")
    tltf.probe_blocks(base, make_data(40), make_data(20, seed=1), verbose=0)
    assert len(model_calls) == 1


def test_a_stage_2_sweep_traces_its_training_step_once(model_calls):
    model = make_tiny_model()
    model_calls.clear()
    tltf.find_lr(
        model, make_data(40), stage="fine_tune", unfreeze=1, steps=12, verbose=0
    )
    assert len(model_calls) == 1


def test_recalibrate_bn_traces_the_model_once(model_calls):
    model = make_tiny_model()
    model_calls.clear()
    tltf.recalibrate_bn(model, make_data(40))
    assert len(model_calls) == 1
