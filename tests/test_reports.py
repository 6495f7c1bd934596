"""Report plots: learning curves with the stage boundary, confusion matrices."""

from __future__ import annotations

import numpy as np

import tltf
from tltf.reports import confusion_matrix, stage_boundary


def test_stage_boundary():
    assert stage_boundary([1, 1, 1, 2, 2]) == 4
    assert stage_boundary([1, 1]) is None
    assert stage_boundary([2, 2]) is None


def test_plot_history_marks_the_boundary_and_writes_png(tmp_path):
    logs = {
        "loss": [1.0, 0.8, 0.6, 0.5],
        "val_loss": [1.1, 0.9, 0.7, 0.6],
        "accuracy": [0.3, 0.5, 0.6, 0.7],
        "val_accuracy": [0.3, 0.4, 0.6, 0.6],
        "stage": [1, 1, 2, 2],
    }
    figure = tltf.plot_history(logs, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.get_lines()][:2] == ["loss", "val_loss"]
    boundary = [line for line in ax.get_lines() if line.get_label().startswith("_")]
    assert boundary and boundary[0].get_xdata()[0] == 2.5
    assert len(figure.axes) == 2  # loss and accuracy


def test_confusion_matrix(tmp_path):
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    tltf.plot_confusion_matrix([0, 1], [1, 1], ["a", "b"], path=tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000
