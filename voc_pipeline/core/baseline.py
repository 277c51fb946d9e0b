"""The trivial reference answer (pure NumPy): the most frequent class everywhere, with a centre box mask.

COMPETITION.md puts it at about 0.18 on real VOC images; a trained pipeline has to beat it clearly.
"""

from __future__ import annotations

import numpy as np


def most_frequent_class(train_labels: np.ndarray) -> int:
    """Index of the class present in most training images."""
    return int(np.asarray(train_labels).sum(0).argmax())


def baseline_flags(train_labels: np.ndarray, num_images: int) -> np.ndarray:
    """(num_images, C) flags with only the most frequent training class set."""
    flags = np.zeros((num_images, np.asarray(train_labels).shape[1]), dtype=np.int8)
    flags[:, most_frequent_class(train_labels)] = 1
    return flags


def centre_box_map(height: int, width: int, class_index: int, fraction: float = 0.5) -> np.ndarray:
    """A label map with a centred box covering `fraction` of each side, labelled class_index + 1."""
    label_map = np.zeros((height, width), dtype=np.uint8)
    top, left = int(round(height * (1 - fraction) / 2)), int(round(width * (1 - fraction) / 2))
    label_map[top:height - top, left:width - left] = class_index + 1
    return label_map
