"""The output folder's hygiene: only the configured output folder (never a project folder) is pruned, down to
what Kaggle keeps (a notebook that leaves 500 or more files in /kaggle/working loses its submission)."""

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


# A folder holding one of these is someone's project, never a folder of outputs to empty.
PROJECT_MARKERS = (".git", "pyproject.toml")


def check_prunable(folder: Path, patterns: tuple[str, ...], force: bool = False) -> None:
    """Refuse to prune a folder that holds `.git` or `pyproject.toml` (unless `force`)."""
    markers = [name for name in PROJECT_MARKERS if (Path(folder) / name).exists()]
    if markers and not force:
        raise OutputFolderError(f"{folder} holds {' and '.join(markers)}: it looks like a project folder, and pruning "
                                f"would delete everything in it but {', '.join(patterns)}; refused (--dry-run lists "
                                f"what would go, --force prunes anyway)")


def check_configured_output(folder: str | Path, configured: str | Path, force: bool = False) -> None:
    """Refuse to prune an existing folder other than the configured output folder (submit.output_dir), unless
    `force`: `prune` empties that one folder, and a mistyped path must not empty another.

    Raises:
        OutputFolderError: `folder` is an existing folder that is not `configured`, and `force` is not set.
    """
    folder, configured = Path(folder), Path(configured)
    if folder.is_dir() and folder.resolve() != configured.resolve() and not force:
        raise OutputFolderError(f"{folder} is not the configured output folder (submit.output_dir = {configured}); "
                                f"prune only empties that one: give --set submit.output_dir=... or --force")


def prune_working_folder(folder: str | Path, keep: tuple[str, ...] = (), limit: int = KAGGLE_FILE_LIMIT,
                         dry_run: bool = False, force: bool = False) -> list[Path]:
    """Delete every top-level entry of `folder` not matched by the `keep` glob patterns.

    `submission.csv` is always kept. Kept folders are kept whole. A folder that holds `.git` or
    `pyproject.toml` is refused unless `force`: emptying a project folder is never what a user wants.

    Args:
        dry_run: only list (and log) what would be deleted.

    Returns:
        The deleted paths (with `dry_run`, the paths that would be deleted).

    Raises:
        OutputFolderError: the folder is missing or a project folder, or the kept entries alone still hold
            `limit` files or more.
    """
    folder = Path(folder)
    patterns = (ALWAYS_KEPT, *keep)
    if not folder.is_dir():
        raise OutputFolderError(f"{folder} does not exist or is not a folder: there is nothing to prune")
    check_prunable(folder, patterns, force)
    doomed = [entry for entry in sorted(folder.iterdir())
              if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns)]
    if dry_run:
        for entry in doomed:
            logger.info("would delete %s", entry)
        return doomed
    for entry in doomed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    remaining = count_files(folder)
    logger.info("pruned %d entries from %s; %d files remain", len(doomed), folder, remaining)
    if remaining >= limit:
        raise OutputFolderError(f"{folder} still holds {remaining} files after pruning (limit {limit}); "
                                f"narrow the kept patterns {patterns}")
    return doomed
