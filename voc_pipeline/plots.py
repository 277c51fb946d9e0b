"""PNG figures a person would rather look at than a table: learning curves, per-class bars, mask overlays, the
confusion heatmap, score comparisons, adversarial examples and attack curves, and reliability diagrams."""

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


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: (256, 3) uint8, label k -> colour; 255 (void) is near-white."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[label] = colour
    palette[255] = (224, 224, 192)
    return palette


def overlay(image: np.ndarray, label_map: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """The image with its labelled pixels tinted by the VOC colour of their class."""
    colours = voc_palette()[label_map]
    tinted = image.astype(np.float32) * (1 - opacity) + colours.astype(np.float32) * opacity
    return np.where((label_map > 0)[..., None], tinted, image).astype(np.uint8)


def plot_mask_overlays(images, true_maps, predicted_maps, titles, class_names, path: Path) -> Path:
    """One row per image: the image, the truth and the prediction overlaid, with class names listed."""
    figure, axes = plt.subplots(len(images), 3, figsize=(10, 3.2 * len(images)), squeeze=False)
    for row, (image, truth, predicted, title) in enumerate(zip(images, true_maps, predicted_maps, titles)):
        names = lambda label_map: ", ".join(class_names[k - 1] for k in np.unique(label_map) if 0 < k <= len(class_names))  # noqa: E731
        panels = [(image, title), (overlay(image, truth), f"truth: {names(truth)}"),
                  (overlay(image, predicted), f"prediction: {names(predicted)}")]
        for axis, (picture, label) in zip(axes[row], panels):
            axis.imshow(picture)
            axis.set_title(label, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_training_examples(images, label_maps, titles, path: Path, columns: int = 4) -> Path:
    """A grid of training images as a model sees them, tinted by their masks where `label_maps` is given."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, label_map, title in zip(axes.flat, images, label_maps, titles):
        axis.imshow(image if label_map is None else overlay(image, label_map))
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_confusion(confusion: np.ndarray, label_names, path: Path, title: str) -> Path:
    """A heatmap of pixel counts, each true label's row normalised to shares of its pixels."""
    confusion = np.asarray(confusion, dtype=np.float64)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    axis.set_xticks(range(len(label_names)))
    axis.set_xticklabels(label_names, rotation=90, fontsize=8)
    axis.set_yticks(range(len(label_names)))
    axis.set_yticklabels(label_names, fontsize=8)
    axis.set_xlabel("predicted label")
    axis.set_ylabel("true label")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true label's pixels")
    return save_figure(figure, path)


def plot_score_comparison(rows: dict[str, dict[str, float]], path) -> None:
    """Grouped bars of the overall, classification and segmentation scores of each answer."""
    figure, axis = plt.subplots(figsize=(8, 3.6))
    kinds = ("score", "classification", "segmentation")
    if not rows:
        axis.text(0.5, 0.5, "no answer to show", ha="center", va="center", transform=axis.transAxes)
    width = 0.8 / max(len(rows), 1)
    for offset, (name, row) in enumerate(rows.items()):
        positions = np.arange(len(kinds)) + offset * width - 0.4 + width / 2
        bars = axis.bar(positions, [row[kind] for kind in kinds], width, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=7)
    axis.set_xticks(np.arange(len(kinds)))
    axis.set_xticklabels(["overall", "classification rows", "segmentation rows"])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("mean Dice")
    if rows:
        axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)


def plot_examples(originals, adversarials, titles_clean, titles_adversarial, epsilon, path, overlays=None) -> None:
    """Rows of: original, perturbation amplified to the full range, adversarial image; predictions in titles."""
    count = len(originals)
    figure, axes = plt.subplots(count, 3, figsize=(9, 3.1 * count), squeeze=False)
    for row in range(count):
        perturbation = adversarials[row].astype(np.float32) - originals[row].astype(np.float32)
        amplified = np.clip(127.5 + perturbation * (127.5 / max(epsilon, 1e-6)), 0, 255).astype(np.uint8)
        panels = [(originals[row], f"original: {titles_clean[row]}"),
                  (amplified, f"perturbation x{127.5 / max(epsilon, 1e-6):.0f} (eps {epsilon:g})"),
                  (adversarials[row], f"adversarial: {titles_adversarial[row]}")]
        if overlays is not None:
            panels[0] = (overlays[0][row], panels[0][1])
            panels[2] = (overlays[1][row], panels[2][1])
        for axis, (picture, title) in zip(axes[row], panels):
            axis.imshow(np.asarray(picture, dtype=np.uint8))
            axis.set_title(title, fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)


def plot_success_curves(frame: pd.DataFrame, path) -> None:
    """Success rate versus epsilon for every attack, PGD, with the defence dashed."""
    figure, axis = plt.subplots(figsize=(8, 4))
    for (model, attack, defence), group in frame[frame["method"] == "PGD"].groupby(["model", "attack", "defence"]):
        axis.plot(group["epsilon"], group["success_rate"], marker="o", linestyle="--" if defence != "none" else "-",
                  label=f"{model}: {attack}{' + ' + defence if defence != 'none' else ''}")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("epsilon (pixel levels)")
    axis.set_ylabel("success rate")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
    save_figure(figure, path)


def plot_reliability(curves: dict[str, dict], path: Path) -> Path:
    """Reliability diagram: each curve's observed frequency against its predicted probability per bin (the
    diagonal is a calibrated model), with its expected calibration error in the legend."""
    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for name, curve in curves.items():
        filled = curve["count"] > 0
        axis.plot(curve["predicted"][filled], curve["observed"][filled], marker="o",
                  linestyle="--" if "as trained" in name else "-", label=f"{name} (ECE {curve['ece']:.3f})")
    axis.set_xlabel("predicted probability")
    axis.set_ylabel("observed frequency")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title("calibration on validation")
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)
