"""PNG figures a person would rather look at than a table: learning curves and per-class bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and Kaggle
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from voc_pipeline.files import atomic_path  # noqa: E402


def save_figure(figure, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_learning_curves(history: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per metric (training and validation), with phase boundaries marked."""
    metrics = [column for column in history.columns if column not in ("epoch", "phase", "learning_rate")
               and not column.startswith("val_")]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        axis.plot(history["epoch"], history[metric], marker="o", markersize=3, label="train")
        if f"val_{metric}" in history:
            axis.plot(history["epoch"], history[f"val_{metric}"], marker="o", markersize=3, label="validation")
        for boundary in history["epoch"][history["phase"] != history["phase"].shift()].iloc[1:]:
            axis.axvline(boundary - 0.5, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return save_figure(figure, path)


def plot_per_class_bars(values: dict[str, np.ndarray], class_names, path: Path, title: str, ylabel: str) -> Path:
    """Grouped bars: one group per class, one bar per named series."""
    figure, axis = plt.subplots(figsize=(13, 4))
    positions = np.arange(len(class_names))
    width = 0.8 / len(values)
    for offset, (label, series) in enumerate(values.items()):
        axis.bar(positions + offset * width - 0.4 + width / 2, np.nan_to_num(series), width, label=label)
    axis.set_xticks(positions)
    axis.set_xticklabels(class_names, rotation=45, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    return save_figure(figure, path)
