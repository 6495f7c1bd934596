"""Plots for notebooks and run folders: learning curves and confusion matrices.

Every function returns its `matplotlib.figure.Figure`. Without `path`, the figure
is pyplot's current figure, as after any matplotlib call: Jupyter shows it inline,
and `plt.savefig` or `plt.show` after the call work. (A notebook cell that ends
with the call shows it twice, once as the cell's value; end the line with `;`
or assign the figure.) Given `path`, the figure is written as a PNG, atomically,
and returned without pyplot holding it, so a loop of training runs leaves no
figures open and no window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tltf._io import atomic_path, check_file_replaceable, is_matplotlib_png
from tltf.errors import ConfigError, suggest
from tltf.saving import MODEL_SUFFIXES


def new_figure(path: str | os.PathLike | None = None, **kwargs) -> Figure:
    """A new Figure: pyplot's current one, or, when it goes to `path`, a bare one.

    Args:
        path: str or None. Where the caller will write the figure. Without it the
            figure is made by `pyplot.figure`, so it is the current figure
            (`plt.savefig`, `plt.show`, notebooks' inline display). With it, the
            figure is a bare `Figure` that pyplot never holds. Defaults to None.
        **kwargs: `Figure` arguments (`figsize`, `layout`, ...).

    Returns:
        The matplotlib Figure.
    """
    if path is not None:
        return Figure(**kwargs)
    # Importing pyplot picks the user's backend (a GUI one on a desktop): only
    # for a figure the user is to see, never for one written to a run folder.
    from matplotlib import pyplot

    return pyplot.figure(**kwargs)


def base_label(base: str | os.PathLike) -> str:
    """A base's short name for titles: a saved base's folder or file name.

    >>> base_label("/home/me/bases/flowers_base.keras")
    'flowers_base'
    """
    name = Path(base).name if ("/" in str(base) or os.sep in str(base)) else base
    stem, suffix = os.path.splitext(str(name))
    return stem if suffix.lower() in MODEL_SUFFIXES else str(name)


def resolve_mode(monitor: str, mode: str = "auto") -> str:
    """The mode for `monitor`: "auto" is "min" for losses and errors, else "max"."""
    if mode != "auto":
        return mode
    return "min" if "loss" in monitor or "error" in monitor else "max"


def best_epoch(logs: dict, monitor: str, mode: str = "auto") -> int | None:
    """The 1-based epoch with the best `monitor`, as `ModelCheckpoint` keeps it.

    Args:
        logs: dict. Per-epoch values by metric name (a History's `.history`).
        monitor: str. The metric, e.g. "val_loss".
        mode: str. "min", "max" or "auto" (min for losses and errors, else
            max). Defaults to "auto".

    Returns:
        The first epoch with the best value (a checkpoint saved with
        `save_best_only` is replaced only on a strict improvement), or None
        when `monitor` was not logged or is NaN throughout.
    """
    values = np.asarray(logs.get(monitor, []), dtype=float)
    if not np.isfinite(values).any():
        return None
    mode = resolve_mode(monitor, mode)
    masked = np.where(np.isfinite(values), values, np.inf if mode == "min" else -np.inf)
    return int(np.argmin(masked) if mode == "min" else np.argmax(masked)) + 1


def check_figure_path(path: str | os.PathLike) -> None:
    """Raises (a ConfigError) unless a figure may be written at `path`: a new
    path, or a figure (a PNG that Matplotlib wrote, as every figure of tltf's)."""
    check_file_replaceable(path, is_matplotlib_png, "figure (a PNG)")


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Writes a figure as PNG atomically (temporary file, then `os.replace`).

    An existing file is replaced only if it is a figure (a PNG that Matplotlib
    wrote): tltf never replaces a file it did not write (a ConfigError names it).
    """
    path = Path(path)
    check_figure_path(path)
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
    monitor: str | None | bool = None,
    mode: str = "auto",
    best_label: str = "best",
    kept: int | None = None,
) -> Figure:
    """Plots learning curves of a `fine_tune` History, marking the stage boundary.

    The epoch whose weights `fine_tune` returned (`history.kept`) is marked in
    every panel: a vertical line, with the epoch in the legend. Given a
    `monitor`, or for a History without `kept`, the best epoch by `monitor` is
    marked instead (and a star on the `monitor` curve).

    Args:
        history: A `keras.callbacks.History` or its `.history` dict.
        metrics: Metric names to plot, or one name (train and `val_` curves
            share a panel); each must be logged. Defaults to "loss" plus the
            first other metric found.
        title: str or None. The figure title.
        path: str or None. Also write the figure to this PNG file.
        monitor: str, None or False. The metric whose best epoch is marked;
            False marks none. Defaults to the kept epoch (`kept`) where known,
            else "val_loss" when logged, else none: without validation data
            the lowest training loss marks the most overfit epoch, not the
            model `fine_tune` returns (`keep_best` judged it on a held-out
            slice).
        mode: str. "min", "max" or "auto" for `monitor` (see `best_epoch`).
            Defaults to "auto".
        best_label: str. The legend's word for the marked epoch. Defaults to
            "best" ("kept" for the kept epoch).
        kept: int or None. The 1-based epoch whose weights the model holds,
            marked when `monitor` is None. Defaults to `history.kept.epoch`
            for the History `fine_tune` returned (none marked for 0: no
            epoch ran).

    Returns:
        The matplotlib Figure: pyplot's current figure (so `plt.savefig` works
        after the call) unless it was written to `path`.

    Example:

    >>> history = tltf.fine_tune(model, train_ds, val_ds)
    >>> figure = tltf.plot_history(history)  # marks history.kept.epoch
    >>> figure.savefig("history.png")
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise ConfigError(
            "plot_history takes the History that fine_tune (or model.fit) "
            "returned, or its .history dict of per-epoch lists. Received: "
            f"{type(history).__name__} {history!r:.60}. For a run folder, "
            "tltf.runs.read_history(folder / 'history.csv') gives the dict."
        )
    if metrics is None:
        others = [
            k
            for k in logs
            if not k.startswith("val_") and k not in ("loss", "stage", "learning_rate")
        ]
        metrics = ["loss", *others[:1]]
    else:
        metrics = _logged_metrics(metrics, logs)
    if kept is None and monitor is None and hasattr(history, "kept"):
        kept = history.kept.epoch
    if kept is not None and monitor is None and best_label == "best":
        best_label = "kept"
    if kept is not None and monitor is None:
        best, monitor = (kept or None), False
    else:
        if monitor is None:
            monitor = "val_loss" if "val_loss" in logs else False
        best = None if monitor is False else best_epoch(logs, monitor, mode)
    epochs = np.arange(1, len(logs.get("loss", [])) + 1)
    boundary = stage_boundary(logs.get("stage", []))
    figure = new_figure(path, figsize=(5 * len(metrics), 3.6))
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
        if best is not None:
            label = f"{best_label}: epoch {best}"
            ax.axvline(best, color="tab:green", linewidth=1, alpha=0.7, label=label)
            if monitor in (metric, f"val_{metric}"):
                min_mode = resolve_mode(monitor, mode) == "min"
                extreme = "lowest" if min_mode else "highest"
                ax.plot(
                    best,
                    logs[monitor][best - 1],
                    "*",
                    color="tab:green",
                    markersize=12,
                    label=f"{extreme} {monitor}",
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


def _logged_metrics(metrics, logs: dict) -> list[str]:
    """`metrics` as a list of names the History logged (a name alone, as
    `metrics="accuracy"`, is one panel, not one per letter)."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    logged = sorted(k for k in logs if not k.startswith("val_") and k != "stage")
    for metric in metrics:
        if not isinstance(metric, str) or not (
            metric in logs or f"val_{metric}" in logs
        ):
            raise ConfigError(
                f"Expected metrics that the History logged: {', '.join(logged)} "
                f"(each with its val_ curve, where logged). Received: {metric!r}."
                f"{suggest(str(metric).removeprefix('val_'), logged)}"
            )
    return metrics


def confusion_matrix(y_true, y_pred, num_classes: int, weights=None) -> np.ndarray:
    """Counts of (true, predicted) label pairs, shape (num_classes, num_classes);
    with `weights` (one per example), the sums of their weights instead."""
    dtype = np.int64 if weights is None else np.float64
    matrix = np.zeros((num_classes, num_classes), dtype=dtype)
    add = 1 if weights is None else np.asarray(weights, np.float64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), add)
    return matrix


def plot_confusion_matrix(
    y_true,
    y_pred,
    class_names: Sequence[str],
    title: str | None = None,
    path: str | os.PathLike | None = None,
    data: str | None = None,
) -> Figure:
    """Plots a confusion matrix (rows: true class, columns: predicted class).

    The title gives the data's name, the number of examples and the accuracy.

    Args:
        y_true: Integer labels.
        y_pred: Integer predictions.
        class_names: Names of the classes, in label order.
        title: str or None. The title's first line. Defaults to "Confusion
            matrix".
        path: str or None. Also write the figure to this PNG file.
        data: str or None. What the examples are, e.g. "validation" or "test".
            Defaults to None (not named).

    Returns:
        The matplotlib Figure.
    """
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    return plot_confusion_counts(matrix, class_names, title, path, data)


def plot_confusion_counts(
    matrix,
    class_names: Sequence[str],
    title: str | None = None,
    path: str | os.PathLike | None = None,
    data: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plots a confusion matrix from its counts; see `plot_confusion_matrix`.

    Args:
        matrix: Counts, shape (classes, classes) (rows: true, columns:
            predicted), or sums of sample weights (floats).
        class_names: Names of the classes, in label order.
        title: str or None. The title's first line. Defaults to "Confusion
            matrix".
        path: str or None. Also write the figure to this PNG file.
        data: str or None. What the examples are ("validation", "test").
        figsize: (width, height) or None. Defaults to a size that grows with
            the number of classes.

    Returns:
        The matplotlib Figure.
    """
    matrix = np.asarray(matrix)
    n = len(class_names)
    total = matrix.sum()
    counted = np.issubdtype(matrix.dtype, np.integer)
    stats = (
        f"n={int(total)}" if counted else f"total weight {total:.4g}"
    ) + f", accuracy {np.trace(matrix) / (total or 1):.3f}"
    size = max(4.0, 0.45 * n + 2)
    figure = new_figure(path, figsize=figsize or (size, size))
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
                str(count) if counted else f"{count:.3g}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > threshold else "black",
            )
    if data:
        stats = f"{data}: {stats}"
    ax.set_title(f"{title or 'Confusion matrix'}\n{stats}", fontsize=10)
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

    Depths are discrete, so nothing is joined by a line: each completed trial is
    a dot (its best `metric` against the blocks it unfroze), the best trial per
    depth is a star, and the seconds per stage-2 epoch (the table's `epoch_s`,
    averaged over the trials at that depth) are squares on a second axis.

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
    figure = new_figure(path, figsize=(6, 4.2), layout="constrained")
    ax = figure.add_subplot(1, 1, 1)
    handles = []
    if done:
        blocks = np.array([r["blocks"] for r in done], dtype=float)
        scores = np.array([r["score"] for r in done], dtype=float)
        handles.append(
            ax.scatter(blocks, scores, color="tab:blue", alpha=0.5, label="trial")
        )
        depths = sorted(set(blocks.tolist()))
        best = [
            (max if not metric.endswith("loss") else min)(scores[blocks == d])
            for d in depths
        ]
        handles += ax.plot(
            depths,
            best,
            linestyle="none",
            marker="*",
            markersize=13,
            color="tab:blue",
            label="best per depth",
        )
        ax.set_xticks(depths, [f"{d:g}" for d in depths])
        per_depth: dict[float, list[float]] = {}
        for r in done:
            if r.get("epoch_s") is not None:
                per_depth.setdefault(float(r["blocks"]), []).append(r["epoch_s"])
        times = [(d, float(np.mean(per_depth[d]))) for d in depths if d in per_depth]
        if times:
            twin = ax.twinx()
            handles += twin.plot(
                [t[0] for t in times],
                [t[1] for t in times],
                linestyle="none",
                color="tab:orange",
                marker="s",
                markersize=5,
                label="s / epoch (stage 2)",
            )
            twin.set_ylabel("seconds per epoch (stage 2)", color="tab:orange")
            twin.set_ylim(bottom=0)
    ax.set_xlabel("unfrozen blocks")
    ax.set_ylabel(f"best {metric}", color="tab:blue")
    ax.grid(alpha=0.3)
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    ax.set_title(title or f"{metric} and time per epoch by unfrozen blocks")
    if path is not None:
        save_figure(figure, path)
    return figure
