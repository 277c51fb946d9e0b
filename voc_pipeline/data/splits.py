"""Multi-label stratified splits (iterative stratification), deterministic by seed, saved as id lists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voc_pipeline.errors import DataError
from voc_pipeline.files import write_json_atomic


@dataclass(frozen=True)
class Splits:
    """Image ids of the holdout split and of each fold's validation part."""

    seed: int
    train_ids: np.ndarray
    validation_ids: np.ndarray
    fold_validation_ids: list[np.ndarray]


def holdout_positions(labels: np.ndarray, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions that keep each class's share close in both parts."""
    # Imported here: it loads scikit-learn, which commands that only read splits do not need.
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=validation_fraction, random_state=seed)
    train_positions, validation_positions = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(train_positions), np.sort(validation_positions)


def fold_positions(labels: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
    """The validation positions of each of `num_folds` stratified folds (they partition the set)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if len(labels) < num_folds:
        raise DataError(f"{len(labels)} images cannot be split into {num_folds} folds: lower data.num_folds "
                        f"(at most {len(labels)}) or add images")
    splitter = MultilabelStratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return [np.sort(validation) for _, validation in splitter.split(np.zeros(len(labels)), labels)]


def make_splits(ids: np.ndarray, labels: np.ndarray, validation_fraction: float, num_folds: int, seed: int) -> Splits:
    """Stratified holdout and K-fold splits of the labelled images, as ids."""
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels)
    train_positions, validation_positions = holdout_positions(labels, validation_fraction, seed)
    folds = [ids[positions] for positions in fold_positions(labels, num_folds, seed)]
    return Splits(seed, ids[train_positions], ids[validation_positions], folds)


def save_splits(splits: Splits, path: Path) -> Path:
    """Write the splits as JSON id lists."""
    return write_json_atomic(path, {
        "seed": splits.seed,
        "train_ids": splits.train_ids.tolist(),
        "validation_ids": splits.validation_ids.tolist(),
        "fold_validation_ids": [fold.tolist() for fold in splits.fold_validation_ids],
    })


def load_splits(path: Path) -> Splits:
    """Read splits written by save_splits."""
    payload = json.loads(Path(path).read_text())
    return Splits(
        seed=int(payload["seed"]),
        train_ids=np.array(payload["train_ids"], dtype=np.int64),
        validation_ids=np.array(payload["validation_ids"], dtype=np.int64),
        fold_validation_ids=[np.array(fold, dtype=np.int64) for fold in payload["fold_validation_ids"]],
    )


def positions_of(all_ids: np.ndarray, wanted_ids: np.ndarray) -> np.ndarray:
    """Positions in `all_ids` of each of `wanted_ids`; an error names ids that are not there."""
    index = {int(image_id): position for position, image_id in enumerate(all_ids)}
    unknown = [int(image_id) for image_id in wanted_ids if int(image_id) not in index]
    if unknown:
        raise DataError(f"split ids not in the data: {unknown[:10]}; the splits belong to other data")
    return np.array([index[int(image_id)] for image_id in wanted_ids], dtype=np.int64)
