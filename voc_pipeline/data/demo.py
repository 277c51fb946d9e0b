"""A synthetic data set in the exact competition layout: the built-in demo and the tests' data.

Each image has a textured, low-saturation background and one to three objects. A class is learnable
from its object's shape (disc, square, triangle, diamond, cross), colour (red, green, blue, yellow)
and texture (plain or striped): 5 x 4 = 20 classes. Objects of later draws occlude earlier ones, and
the labels come from the final masks, as the competition's do. Classes are drawn with the
competition's skewed training frequencies (person dominates). Deterministic by seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from voc_pipeline.core.classes import COMPETITION_TRAIN_CLASS_COUNTS, NUM_CLASSES
from voc_pipeline.data.competition import SOLUTION_FILE, labels_from_mask, write_split
from voc_pipeline.data.submission import make_test_frame, write_submission
from voc_pipeline.errors import DataError
from voc_pipeline.files import atomic_directory

logger = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "diamond", "cross")
COLOURS = ((215, 45, 40), (40, 175, 70), (45, 85, 215), (225, 195, 40))


def class_appearance(class_index: int) -> tuple[str, tuple[int, int, int], bool]:
    """(shape, RGB colour, striped) of a 0-based class index; each class has its own combination."""
    return SHAPES[class_index % len(SHAPES)], COLOURS[class_index // len(SHAPES)], bool((class_index // 2) % 2)


def shape_mask(shape: str, height: int, width: int, centre: tuple[int, int], radius: int, angle: float) -> np.ndarray:
    """A boolean H x W mask of one shape of the given radius, rotated by `angle` radians."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    centre_y, centre_x = centre
    if shape == "disc":
        cv2.circle(canvas, (centre_x, centre_y), radius, 1, thickness=-1)
        return canvas.astype(bool)
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = radius * 0.8
    elif shape == "triangle":
        corners = [(np.cos(a), np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
        scale = radius
    elif shape == "diamond":
        corners = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
        scale = radius
    elif shape == "cross":
        arm = 0.33
        corners = [(-arm, -1), (arm, -1), (arm, -arm), (1, -arm), (1, arm), (arm, arm), (arm, 1), (-arm, 1),
                   (-arm, arm), (-1, arm), (-1, -arm), (-arm, -arm)]
        scale = radius
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (np.array(corners, dtype=np.float64) * scale) @ rotation.T + (centre_x, centre_y)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour gradient with noise, as float32 RGB in 0..255."""
    start, end = rng.uniform(70, 180, size=(2, 3)).astype(np.float32)
    start[:] = start.mean() + 0.25 * (start - start.mean())
    end[:] = end.mean() + 0.25 * (end - end.mean())
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = start + (end - start) * ramp
    return np.broadcast_to(image, (height, width, 3)) + rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)


def draw_image(rng: np.random.Generator, class_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 H x W x 3 image, uint8 H x W mask) pair with one to three objects."""
    height, width = int(rng.integers(96, 177)), int(rng.integers(96, 177))
    image = background(height, width, rng)
    mask = np.zeros((height, width), dtype=np.uint8)
    num_objects = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    rows, columns = np.mgrid[0:height, 0:width]
    for _ in range(num_objects):
        class_index = int(rng.choice(NUM_CLASSES, p=class_weights))
        shape, colour, striped = class_appearance(class_index)
        radius = int(rng.uniform(0.15, 0.3) * min(height, width))
        centre = (int(rng.integers(radius, height - radius)), int(rng.integers(radius, width - radius)))
        region = shape_mask(shape, height, width, centre, radius, rng.uniform(-0.3, 0.3))
        paint = np.array(colour, dtype=np.float32) * rng.uniform(0.85, 1.1)
        if striped:
            stripes = ((rows + columns) // 4) % 2 == 0
            image[region & stripes] = paint * 0.45
            image[region & ~stripes] = paint
        else:
            image[region] = paint
        image[region] += rng.normal(0, 8, size=(int(region.sum()), 3)).astype(np.float32)
        mask[region] = class_index + 1
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_images(count: int, rng: np.random.Generator, description: str) -> tuple[list, list, np.ndarray]:
    """`count` images with masks and the labels derived from those masks."""
    counts = np.array(COMPETITION_TRAIN_CLASS_COUNTS, dtype=np.float64)
    class_weights = counts / counts.sum()
    images, masks = [], []
    for _ in tqdm(range(count), desc=description, unit="image"):
        image, mask = draw_image(rng, class_weights)
        images.append(image)
        masks.append(mask)
    labels = np.stack([labels_from_mask(mask) for mask in masks]) if masks else np.zeros((0, NUM_CLASSES), np.int8)
    return images, masks, labels


def write_demo_data(output: str | Path, num_train: int = 80, num_test: int = 30, seed: int = 0,
                    overwrite: bool = False) -> Path:
    """Generate the demo data set in the competition layout under `output`.

    Also writes `solution.csv` (the true submission rows of the test images) so that a run on the demo
    data can be scored locally with `voc-pipeline score`. The folder appears complete or not at all.
    """
    if num_train < 2 or num_test < 1:
        raise DataError(f"need at least 2 training and 1 test image, got {num_train} and {num_test}")
    output = Path(output)
    train_rng, test_rng = np.random.default_rng(seed).spawn(2)
    with atomic_directory(output, overwrite=overwrite) as folder:
        images, masks, labels = generate_images(num_train, train_rng, "demo train")
        write_split(folder, "train", np.arange(num_train), images, masks, labels)
        images, masks, labels = generate_images(num_test, test_rng, "demo test")
        test_ids = np.arange(num_test)
        write_split(folder, "test", test_ids, images, None, -np.ones_like(labels))
        write_submission(make_test_frame(test_ids, labels, masks), folder / SOLUTION_FILE)
    logger.info("demo data: %d train and %d test images in %s", num_train, num_test, output)
    return output
