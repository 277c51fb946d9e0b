"""Convert a PASCAL VOC devkit folder (VOC2009-2012) into the competition's `.npy` layout.

The devkit keeps `JPEGImages/<id>.jpg`, palette PNGs `SegmentationClass/<id>.png` (values 0..20 and
255 = void on object borders) and id lists in `ImageSets/Segmentation/*.txt`. Labels come from which
classes are present in the mask; void becomes background as in the competition's packaging unless
asked to keep it. With a test fraction, a stratified part becomes the test split and its true rows are
written to `solution.csv`, so runs on it can be scored locally.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from voc_pipeline.core.classes import BACKGROUND_LABEL, NUM_CLASSES, VOID_LABEL
from voc_pipeline.data.competition import SOLUTION_FILE, labels_from_mask, write_split
from voc_pipeline.data.splits import holdout_positions
from voc_pipeline.data.submission import make_test_frame, write_submission
from voc_pipeline.errors import DataError
from voc_pipeline.files import atomic_directory, read_text_file

logger = logging.getLogger(__name__)

ID_MAP_FILE = "voc_ids.csv"


def find_devkit_folder(voc_root: str | Path) -> Path:
    """The folder holding JPEGImages/ and SegmentationClass/: `voc_root` itself or one folder below it."""
    voc_root = Path(voc_root)
    if not voc_root.is_dir():
        raise DataError(f"VOC root {voc_root} does not exist or is not a folder")
    for candidate in (voc_root, *sorted(voc_root.glob("*")), *sorted(voc_root.glob("*/*"))):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DataError(f"{voc_root} holds no JPEGImages/ and SegmentationClass/ folders (VOC devkit layout)")


def read_id_list(path: Path) -> list[str]:
    """Image ids from a devkit id list, one per line."""
    if not path.exists():
        raise DataError(f"id list {path} does not exist")
    text = read_text_file(path, "a text file of devkit image ids, one per line", error_type=DataError)
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def devkit_ids(devkit: Path, ids_file: str | Path | None) -> list[str]:
    """The ids to convert: from `ids_file`, else ImageSets/Segmentation's lists, else every mask PNG."""
    if ids_file:
        return read_id_list(Path(ids_file))
    lists = [devkit / "ImageSets" / "Segmentation" / f"{name}.txt" for name in ("train", "val")]
    found = [path for path in lists if path.exists()]
    if found:
        return sorted({image_id for path in found for image_id in read_id_list(path)})
    return sorted(path.stem for path in (devkit / "SegmentationClass").glob("*.png"))


def read_devkit_pair(devkit: Path, voc_id: str, keep_void: bool) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 RGB image, uint8 label map) pair; errors name the file."""
    image_path = devkit / "JPEGImages" / f"{voc_id}.jpg"
    mask_path = devkit / "SegmentationClass" / f"{voc_id}.png"
    for path in (image_path, mask_path):
        if not path.exists():
            raise DataError(f"{path} is missing (id {voc_id} is listed for conversion)")
    try:
        with Image.open(image_path) as opened:
            image = np.asarray(opened.convert("RGB"), dtype=np.uint8)
        with Image.open(mask_path) as opened:
            if opened.mode not in ("P", "L"):
                raise DataError(f"{mask_path}: expected a palette (P) or grey (L) PNG of class indices, got mode {opened.mode}")
            mask = np.array(opened, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read the pair for id {voc_id}: {error}") from None
    if mask.shape != image.shape[:2]:
        raise DataError(f"{mask_path}: mask shape {mask.shape} differs from its image's {image.shape[:2]}")
    bad = np.setdiff1d(np.unique(mask), [*range(NUM_CLASSES + 1), VOID_LABEL])
    if bad.size:
        raise DataError(f"{mask_path}: values {bad.tolist()} are outside 0..{NUM_CLASSES} and {VOID_LABEL}")
    if not keep_void:
        mask[mask == VOID_LABEL] = BACKGROUND_LABEL
    return image, mask


def convert_devkit(voc_root: str | Path, output: str | Path, ids_file: str | Path | None = None,
                   test_fraction: float = 0.2, keep_void: bool = False, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write the devkit's images and masks under `output` in the competition layout.

    Args:
        voc_root: a devkit folder (or its parent, e.g. VOCdevkit/ holding VOC2012/).
        output: the new data root; it appears complete or not at all.
        ids_file: optional list of devkit ids to convert.
        test_fraction: share of images (stratified by class) that becomes the test split, with
            `solution.csv` holding their true rows (every competition layout has a test split).
        keep_void: keep 255 on object borders instead of turning it into background.
        seed: the stratified test split's seed.
        overwrite: replace an existing non-empty `output`.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}: the competition "
                        f"layout needs a test split")
    devkit = find_devkit_folder(voc_root)
    voc_ids = devkit_ids(devkit, ids_file)
    if len(voc_ids) < 2:
        raise DataError(f"{devkit}: found {len(voc_ids)} ids to convert; need at least 2")
    images, masks = [], []
    for voc_id in tqdm(voc_ids, desc=f"reading {devkit.name}", unit="image"):
        image, mask = read_devkit_pair(devkit, voc_id, keep_void)
        images.append(image)
        masks.append(mask)
    labels = np.stack([labels_from_mask(mask) for mask in masks])

    train_positions, test_positions = holdout_positions(labels, test_fraction, seed)
    if len(test_positions) == 0 or len(train_positions) == 0:
        raise DataError(f"{devkit}: a stratified split of {len(voc_ids)} images at --test-fraction {test_fraction} "
                        f"leaves {len(train_positions)} train and {len(test_positions)} test images; convert more "
                        f"images or choose another --test-fraction")

    with atomic_directory(output, overwrite=overwrite) as folder:
        train_ids, test_ids = np.arange(len(train_positions)), np.arange(len(test_positions))
        write_split(folder, "train", train_ids, [images[p] for p in train_positions],
                    [masks[p] for p in train_positions], labels[train_positions])
        write_split(folder, "test", test_ids, [images[p] for p in test_positions], None,
                    -np.ones((len(test_positions), NUM_CLASSES), dtype=np.int8))
        # The competition has no void: the solution scores void borders as background.
        solution_maps = [np.where(masks[p] == VOID_LABEL, BACKGROUND_LABEL, masks[p]) for p in test_positions]
        write_submission(make_test_frame(test_ids, labels[test_positions], solution_maps), folder / SOLUTION_FILE)
        pd.DataFrame({
            "split": ["train"] * len(train_positions) + ["test"] * len(test_positions),
            "Id": np.concatenate([train_ids, test_ids]),
            "voc_id": [voc_ids[p] for p in np.concatenate([train_positions, test_positions])],
        }).to_csv(folder / ID_MAP_FILE, index=False)
    logger.info("converted %d devkit pairs from %s into %s (%d train, %d test)", len(voc_ids), devkit, output,
                len(train_positions), len(test_positions))
    return Path(output)
