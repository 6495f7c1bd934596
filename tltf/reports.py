"""Plots for notebooks and run folders: learning curves and confusion matrices.

Functions return a `matplotlib.figure.Figure` (shown inline by Jupyter) and, given
`path`, also write a PNG atomically. They use the object-oriented matplotlib API,
so they never touch pyplot's global state or the user's backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tltf._io import atomic_path


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Writes a figure as PNG atomically (temporary file, then `os.replace`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def stage_boundary(stages: Sequence[float]) -> int | None:
    """The 1-based epoch at which stage 2 starts, or None."""
    for epoch, stage in enumerate(stages, start=1):
        if stage == 2:
            return epoch if epoch > 1 else None
    return None


def plot_history(
    history,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Plots learning curves of a `fine_tune` History, marking the stage boundary.

    Args:
        history: A `keras.callbacks.History` or its `.history` dict.
        metrics: Metric names to plot (train and `val_` curves share a panel).
            Defaults to "loss" plus the first other metric found.
        title: str or None. The figure title.
        path: str or None. Also write the figure to this PNG file.

    Returns:
        The matplotlib Figure.

    Example:

    >>> history = tltf.fine_tune(model, train_ds, val_ds)
    >>> tltf.plot_history(history)
    """
    logs = getattr(history, "history", history)
    if metrics is None:
        others = [
            k
            for k in logs
            if not k.startswith("val_") and k not in ("loss", "stage", "learning_rate")
        ]
        metrics = ["loss", *others[:1]]
    epochs = np.arange(1, len(logs.get("loss", [])) + 1)
    boundary = stage_boundary(logs.get("stage", []))
    figure = Figure(figsize=(5 * len(metrics), 3.6))
    for i, metric in enumerate(metrics, start=1):
        ax = figure.add_subplot(1, len(metrics), i)
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in logs:
                ax.plot(epochs, logs[key], style, marker="o", markersize=3, label=key)
        if boundary is not None:
            ax.axvline(boundary - 0.5, color="grey", linestyle=":", linewidth=1.5)
            ax.text(
                boundary - 0.4,
                0.98,
                "fine-tune",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="grey",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    if path is not None:
        save_figure(figure, path)
    return figure


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs, shape (num_classes, num_classes)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def plot_confusion_matrix(
    y_true,
    y_pred,
    class_names: Sequence[str],
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Plots a confusion matrix (rows: true class, columns: predicted class).

    Args:
        y_true: Integer labels.
        y_pred: Integer predictions.
        class_names: Names of the classes, in label order.
        title: str or None. The title.
        path: str or None. Also write the figure to this PNG file.

    Returns:
        The matplotlib Figure.
    """
    n = len(class_names)
    matrix = confusion_matrix(y_true, y_pred, n)
    size = max(4.0, 0.45 * n + 2)
    figure = Figure(figsize=(size, size))
    ax = figure.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > threshold else "black",
            )
    if title:
        ax.set_title(title)
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_tuning(
    rows: Sequence[dict],
    metric: str = "score",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Plots a tuning search: best val metric and time per epoch by unfrozen blocks.

    Each completed trial is a dot (its best `metric` against the blocks it
    unfroze), the best trial per depth is joined by a line, and the seconds per
    stage-2 epoch (the table's `epoch_s`, averaged over the trials at that depth)
    are drawn on a second axis.

    Args:
        rows: The results table of `tltf.tuning.results_table` (dicts with
            "blocks", "score", "epoch_s", "status").
        metric: str. The objective's name, for the axis label. Defaults to
            "score".
        title: str or None. The title.
        path: str or None. Also write the figure to this PNG file.

    Returns:
        The matplotlib Figure.
    """
    done = [
        r for r in rows if r.get("score") is not None and r.get("blocks") is not None
    ]
    figure = Figure(figsize=(6, 3.8))
    ax = figure.add_subplot(1, 1, 1)
    if done:
        blocks = np.array([r["blocks"] for r in done], dtype=float)
        scores = np.array([r["score"] for r in done], dtype=float)
        ax.scatter(blocks, scores, color="tab:blue", alpha=0.6, label=metric)
        depths = sorted(set(blocks.tolist()))
        best = [
            (max if not metric.endswith("loss") else min)(scores[blocks == d])
            for d in depths
        ]
        ax.plot(depths, best, color="tab:blue", linewidth=1.5)
        per_depth: dict[float, list[float]] = {}
        for r in done:
            if r.get("epoch_s") is not None:
                per_depth.setdefault(float(r["blocks"]), []).append(r["epoch_s"])
        times = [(d, float(np.mean(per_depth[d]))) for d in depths if d in per_depth]
        if times:
            twin = ax.twinx()
            twin.plot(
                [t[0] for t in times],
                [t[1] for t in times],
                color="tab:orange",
                linestyle="--",
                marker="s",
                markersize=4,
                label="s / epoch (stage 2)",
            )
            twin.set_ylabel("seconds per epoch (stage 2)", color="tab:orange")
            twin.set_ylim(bottom=0)
    ax.set_xlabel("unfrozen blocks")
    ax.set_ylabel(f"best {metric}", color="tab:blue")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{metric} and time per epoch by unfrozen blocks")
    if path is not None:
        save_figure(figure, path)
    return figure
