"""Figures say what they show, and every plotting function returns its Figure.

Content is checked through matplotlib's objects (titles, texts, lines, legends),
never through pixels. Without `path`, a figure is pyplot's current one, so
`plt.savefig` after the call saves it; with `path`, it is written and still
returned, and pyplot holds nothing (a loop of training runs leaves no figures open).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import tltf  # noqa: E402
from tltf import demo  # noqa: E402
from tltf.evaluation import _classification_report  # noqa: E402
from tltf.guard import Kept  # noqa: E402
from tltf.lr_finder import LRFinderResult  # noqa: E402
from tltf.probe import ProbeResult  # noqa: E402
from tltf.reports import base_label  # noqa: E402
from tltf.runs import plot_run_history  # noqa: E402

LOGS = {
    "loss": [1.0, 0.7, 0.5, 0.45, 0.4],
    "val_loss": [1.1, 0.8, 0.6, 0.7, 0.75],
    "accuracy": [0.4, 0.6, 0.7, 0.8, 0.85],
    "val_accuracy": [0.4, 0.5, 0.6, 0.65, 0.6],
    "stage": [1, 1, 2, 2, 2],
}


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


def _report(names, y_true, y_pred):
    scores = np.eye(len(names))[y_pred] * 0.9 + 0.1 / len(names)
    return _classification_report(
        np.asarray(y_true), scores, "multiclass", list(names), 1
    )


def _probe():
    table = [
        {"block": f"block{i}", "index": i - 1, "features": 8, "val_accuracy": a}
        | {"train_accuracy": a, "l2": 1.0}
        for i, a in ((1, 0.5), (2, 0.7), (3, 0.6))
    ]
    return ProbeResult(table, "block2", 1, "best block", 0.01, "tiny", 3, 9, 6, 0.1)


def _lr_finder():
    lrs = np.geomspace(1e-5, 1.0, 20)
    losses = np.linspace(2.0, 1.0, 20)
    return LRFinderResult(
        lrs, losses, losses, 1e-3, 1e-2, 1e-3, "head", False, "steepest fall"
    )


PLOTS = {
    "plot_history": lambda path: tltf.plot_history(LOGS, path=path),
    "plot_run_history": lambda path: plot_run_history(
        {"epoch": [1, 2, 3, 4, 5], **LOGS}, path=path
    ),
    "plot_confusion_matrix": lambda path: tltf.plot_confusion_matrix(
        [0, 1, 1], [0, 1, 0], ["a", "b"], path=path
    ),
    "report.plot_confusion": lambda path: _report("ab", [0, 1], [0, 0]).plot_confusion(
        path
    ),
    "plot_tuning": lambda path: tltf.plot_tuning(
        [{"blocks": 0, "score": 0.5, "epoch_s": 0.1}], path=path
    ),
    "probe.plot": lambda path: _probe().plot(path),
    "lr_finder.plot": lambda path: _lr_finder().plot(path),
}


# -- every plotting function returns its figure -----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLOTS))
def test_plt_savefig_after_a_plot_saves_that_figure(name, tmp_path):
    figure = PLOTS[name](None)
    assert isinstance(figure, Figure) and figure.axes
    # pyplot's current figure is the one drawn: `plt.savefig` saves it, not a
    # blank new figure.
    assert plt.gcf() is figure
    plt.savefig(tmp_path / "plt.png")
    figure.savefig(tmp_path / "fig.png")
    assert (tmp_path / "plt.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLOTS))
def test_a_plot_written_to_a_path_is_returned_and_not_left_open(name, tmp_path):
    figure = PLOTS[name](tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert isinstance(figure, Figure) and figure.axes
    figure.savefig(tmp_path / "again.png")
    assert plt.get_fignums() == []


# -- confusion plots say what data, n and accuracy --------------------------------
def test_confusion_plot_title_names_the_data_n_and_accuracy():
    figure = tltf.plot_confusion_matrix(
        [0, 1, 1, 0], [0, 1, 0, 0], ["cat", "dog"], data="test"
    )
    title = figure.axes[0].get_title()
    assert "test" in title and "n=4" in title and "accuracy 0.750" in title
    # Without a name for the data the title still gives n and accuracy.
    title = tltf.plot_confusion_matrix([0, 1], [0, 0], ["a", "b"]).axes[0].get_title()
    assert "Confusion matrix" in title and "n=2" in title and "0.500" in title


def test_report_confusion_plot_passes_the_data_name():
    report = _report(["a", "b", "c"], [0, 1, 2, 2], [0, 1, 2, 0])
    title = report.plot_confusion(data="validation").axes[0].get_title()
    assert "validation" in title and "n=4" in title and "accuracy 0.750" in title


def test_demo_confusion_plot_gives_n_and_accuracy(tmp_path):
    matrix = np.array([[3, 1], [0, 4]])
    figure = demo._plot_confusion(tmp_path / "c.png", matrix, ["a", "b"], "demo")
    title = figure.axes[0].get_title()
    assert "test" in title and "n=8" in title and "accuracy 0.875" in title


# -- history plots: a short base name, and the best epoch marked -----------------
def test_history_title_uses_the_base_short_name():
    assert base_label("/home/me/bases/mobilenet_v3_small-64px-s0.keras") == (
        "mobilenet_v3_small-64px-s0"
    )
    assert base_label("/srv/tltf/assets/mobilenet_v3_small-64px/") == (
        "mobilenet_v3_small-64px"
    )
    assert base_label("MobileNetV3Small") == "MobileNetV3Small"
    history = {"epoch": [1, 2, 3, 4, 5], **LOGS}
    figure = plot_run_history(history, base="/a/long/path/to/my_base.keras")
    title = figure._suptitle.get_text()
    assert title.startswith("my_base: ") and "/" not in title


def _best_markers(ax):
    return [line for line in ax.get_lines() if "best" in line.get_label()]


def test_history_marks_the_best_epoch_in_every_panel_and_legend():
    figure = tltf.plot_history(LOGS)
    for ax in figure.axes:
        markers = _best_markers(ax)
        # Epoch 3 has the lowest val_loss.
        assert markers and all(list(m.get_xdata()) in ([3], [3, 3]) for m in markers)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("best" in label and "epoch 3" in label for label in labels)


def test_history_without_validation_marks_no_epoch():
    # The lowest training loss is the most overfit epoch, not the model that
    # fine_tune returns: without val_loss nothing is marked, unless asked.
    logs = {k: v for k, v in LOGS.items() if not k.startswith("val_")}
    for figure in (tltf.plot_history(logs), plot_run_history({"epoch": [], **logs})):
        assert not any(_best_markers(ax) for ax in figure.axes)
    assert _best_markers(tltf.plot_history(logs, monitor="loss").axes[0])


def test_run_history_marks_the_epoch_best_keras_holds():
    history = {"epoch": [1, 2, 3, 4, 5], **LOGS}
    figure = plot_run_history(history, monitor="val_accuracy", mode="max")
    (loss_ax, acc_ax) = figure.axes
    labels = [m.get_label() for m in _best_markers(acc_ax)]
    assert any("best.keras" in label and "epoch 4" in label for label in labels)
    assert all(m.get_xdata()[0] == 4 for m in _best_markers(loss_ax))


def _marked(ax, word):
    return [line for line in ax.get_lines() if line.get_label().startswith(word)]


def test_history_marks_the_epoch_fine_tune_kept():
    # The History fine_tune returns says which epoch's weights the model holds
    # (`history.kept`): that epoch is marked, with or without validation data,
    # even where another epoch has the lowest val_loss (epoch 3 here).
    history = keras.callbacks.History()
    history.history = dict(LOGS)
    history.kept = Kept(epoch=2, stage=1, blocks=(), note="test")
    figure = tltf.plot_history(history)
    for ax in figure.axes:
        (marker,) = _marked(ax, "kept")
        assert list(marker.get_xdata()) == [2, 2]
        assert marker.get_label() == "kept: epoch 2"
        assert not _best_markers(ax)
    # Given a monitor, its best epoch is marked instead.
    assert _best_markers(tltf.plot_history(history, monitor="val_loss").axes[0])
    # Epoch 0 (no epoch ran) marks nothing.
    history.kept = Kept(epoch=0, stage=1, blocks=(), note="test")
    assert not any(_marked(ax, "kept") for ax in tltf.plot_history(history).axes)
    # A run folder without validation data: best.keras is the kept epoch.
    logs = {k: v for k, v in LOGS.items() if not k.startswith("val_")}
    figure = plot_run_history({"epoch": [1, 2, 3, 4, 5], **logs}, kept=4)
    assert [m.get_label() for m in _marked(figure.axes[0], "best.keras")] == [
        "best.keras: epoch 4"
    ]


# -- tuning plot: depths are discrete --------------------------------------------
def test_tuning_plot_does_not_join_depths_with_a_line():
    rows = [
        {"blocks": 0, "score": 0.5, "epoch_s": 0.1},
        {"blocks": 2, "score": 0.7, "epoch_s": 0.3},
        {"blocks": 2, "score": 0.6, "epoch_s": 0.4},
        {"blocks": 4, "score": 0.65, "epoch_s": 0.5},
    ]
    figure = tltf.plot_tuning(rows, "val_accuracy")
    for ax in figure.axes:
        for line in ax.get_lines():
            assert len(line.get_xdata()) <= 1 or line.get_linestyle() == "None", (
                line.get_label()
            )
    (best,) = [
        line for line in figure.axes[0].get_lines() if "best" in line.get_label()
    ]
    assert list(best.get_xdata()) == [0, 2, 4]
    assert list(best.get_ydata()) == [0.5, 0.7, 0.65]
    assert list(figure.axes[0].get_xticks()) == [0, 2, 4]


# -- the demo's scratch plot: the legend does not cover the curves ---------------
def _points(line, samples: int = 40) -> np.ndarray:
    """Display coordinates of a line's vertices and of points along its segments."""
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    if len(xy) > 1 and line.get_linestyle() != "None":
        t = np.linspace(0, 1, samples)[:, None, None]
        xy = (xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2)
    return line.axes.transData.transform(xy)


def test_demo_scratch_legend_does_not_cover_its_curves(tmp_path):
    # From scratch on a few images per class, accuracy stays near chance: the
    # curves run along the bottom, where a "lower right" legend sat.
    epochs = 12
    history = {
        "loss": list(np.linspace(1.6, 1.4, epochs)),
        "accuracy": list(np.linspace(0.15, 0.25, epochs)),
        "test_epochs": [4, 8, 12],
        "test_loss": [1.6, 1.55, 1.5],
        "test_accuracy": [0.15, 0.2, 0.2],
    }
    figure = demo._plot_curves(tmp_path / "s.png", history, "k=2: from scratch", None)
    assert (tmp_path / "s.png").is_file()
    figure.draw_without_rendering()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend()]
    legends += figure.legends
    assert legends
    for legend in legends:
        box = legend.get_window_extent()
        for ax in figure.axes:
            for line in ax.get_lines():
                inside = [box.contains(x, y) for x, y in _points(line)]
                assert not any(inside), (line.get_label(), ax.get_ylabel())


# -- the text confusion matrix ----------------------------------------------------
def _matrix_lines(text: str) -> list[str]:
    return text.split("confusion matrix")[1].splitlines()[1:]


def test_text_confusion_matrix_shows_short_names_in_full():
    names = ["hollow", "holly", "cat"]
    text = str(_report(names, [0, 1, 2, 2], [0, 1, 2, 0]))
    header = _matrix_lines(text)[0].split()
    assert header == names


def test_text_confusion_matrix_numbers_long_names_so_columns_differ():
    names = ["hollow_square_outline", "holly_leaf_silhouette", "cat"]
    text = str(_report(names, [0, 1, 2, 2], [0, 1, 2, 0]))
    header, *rows = _matrix_lines(text)
    columns = header.split()
    assert len(set(columns)) == len(columns) == 3
    # A numbered legend: each row starts with its column's number and full name.
    for number, (name, row) in enumerate(zip(names, rows, strict=True)):
        assert row.split()[:2] == [columns[number], name]
    assert "numbered" in text


def test_plot_history_names_what_it_takes():
    from tltf.errors import ConfigError

    for bad in (None, [0.5, 0.4], "history.csv"):
        with pytest.raises(ConfigError, match="History that fine_tune .* returned"):
            tltf.plot_history(bad)
    assert isinstance(tltf.plot_history({"loss": [0.5, 0.4]}), Figure)
    plt.close("all")


def test_plot_history_takes_one_metric_name_and_names_one_it_never_logged():
    from tltf.errors import ConfigError

    # A name alone is one panel (it drew one empty panel per letter).
    figure = tltf.plot_history(LOGS, metrics="accuracy")
    assert [ax.get_ylabel() for ax in figure.axes] == ["accuracy"]
    assert [line.get_label() for line in figure.axes[0].lines[:2]] == [
        "accuracy",
        "val_accuracy",
    ]
    figure = tltf.plot_history(LOGS, metrics=("val_loss", "accuracy"))
    assert [ax.get_ylabel() for ax in figure.axes] == ["val_loss", "accuracy"]
    # A metric the History never logged drew an empty panel.
    for bad in (["f1"], ["loss", "acuracy"], [3]):
        with pytest.raises(ConfigError) as info:
            tltf.plot_history(LOGS, metrics=bad)
        message = str(info.value)
        assert "Expected metrics that the History logged: accuracy, loss" in message
        assert repr(bad[-1]) in message
        if bad[-1] == "acuracy":
            assert "Did you mean 'accuracy'?" in message
    plt.close("all")
