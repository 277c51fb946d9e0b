"""Kaggle output hygiene: a notebook that leaves 500 or more files in /kaggle/working loses its submission."""

from __future__ import annotations

import fnmatch
import logging
import shutil
from pathlib import Path

from voc_pipeline.errors import OutputFolderError

logger = logging.getLogger(__name__)

KAGGLE_FILE_LIMIT = 500
ALWAYS_KEPT = "submission.csv"


def count_files(folder: Path) -> int:
    """Number of files (not folders) anywhere under `folder`."""
    return sum(1 for path in Path(folder).rglob("*") if path.is_file() or path.is_symlink())


def prune_working_folder(folder: str | Path, keep: tuple[str, ...] = (), limit: int = KAGGLE_FILE_LIMIT) -> list[Path]:
    """Delete every top-level entry of `folder` not matched by the `keep` glob patterns.

    `submission.csv` is always kept. Kept folders are kept whole.

    Returns:
        The deleted paths.

    Raises:
        OutputFolderError: the kept entries alone still hold `limit` files or more.
    """
    folder = Path(folder)
    patterns = (ALWAYS_KEPT, *keep)
    deleted = []
    for entry in sorted(folder.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        deleted.append(entry)
    remaining = count_files(folder)
    logger.info("pruned %d entries from %s; %d files remain", len(deleted), folder, remaining)
    if remaining >= limit:
        raise OutputFolderError(f"{folder} still holds {remaining} files after pruning (limit {limit}); "
                           f"narrow the kept patterns {patterns}")
    return deleted
