"""Atomic file writing: every artifact appears whole or not at all.

Each writer writes a temporary file beside the target and renames it over the target, so an
interrupted run never leaves a half-written CSV, JSON or array that a later stage would trust; the
temporary file is removed when the block fails or is interrupted (the command line turns SIGTERM into
the same interruption as Ctrl-C). Written files get the permissions the user's umask gives any new
file, not the private ones of a temporary file, and a folder that cannot be written is an
OutputFolderError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voc_pipeline.errors import OutputExistsError, OutputFolderError

# Read once: the permissions a new file or folder gets are 0o666 / 0o777 without the umask's bits.
UMASK = os.umask(0o022)
os.umask(UMASK)


def cannot_write(path: Path, error: OSError) -> OutputFolderError:
    """The error for a file or folder that cannot be created, with the reason the system gave."""
    reason = error.strerror or str(error)
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        reason = "a file stands where a folder is needed on that path"
    return OutputFolderError(f"cannot write {path}: {reason}; choose another folder or fix its permissions")


def make_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) if needed; an OutputFolderError names it if that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise cannot_write(folder, error) from None
    return folder


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check that files can be created in it, before any work is done."""
    folder = make_folder(Path(folder))
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError as error:
        raise cannot_write(folder, error) from None
    os.close(handle)
    os.unlink(probe)
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    make_folder(target.parent)
    try:
        handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise cannot_write(target, error) from None
    os.fchmod(handle, 0o666 & ~UMASK)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `target` atomically."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(text.encode("utf-8"))
    return Path(target)


def write_json_atomic(target: str | os.PathLike, payload) -> Path:
    """Write `payload` as indented JSON atomically."""
    return write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_npy_atomic(target: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as .npy atomically (never pickled)."""
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as stream:
            np.save(stream, np.asarray(array), allow_pickle=False)
    return Path(target)


def save_npz_atomic(target: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save named arrays as a compressed .npz atomically."""
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    return Path(target)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds.

    Raises:
        OutputExistsError: `target` exists, is not empty and `overwrite` is false.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file; give a folder name that is free (or a folder, with --force)")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target} already exists and is not empty; pass --force to replace it")
    make_folder(target.parent)
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise cannot_write(target, error) from None
    temporary.chmod(0o777 & ~UMASK)
    try:
        yield temporary
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def save_label_maps_atomic(target: str | os.PathLike, ids: np.ndarray, label_maps: list[np.ndarray], **arrays) -> Path:
    """Save label maps of different sizes (with their ids and any extra arrays) in one compressed .npz.

    The maps are stored flat, one after another, with their heights and widths: no object arrays, so
    the file loads without pickle.
    """
    heights = np.array([label_map.shape[0] for label_map in label_maps], dtype=np.int64)
    widths = np.array([label_map.shape[1] for label_map in label_maps], dtype=np.int64)
    flat = np.concatenate([label_map.ravel() for label_map in label_maps]) if label_maps else np.zeros(0, np.uint8)
    return save_npz_atomic(target, ids=np.asarray(ids), label_maps_flat=flat.astype(np.uint8), heights=heights,
                           widths=widths, **arrays)


def load_label_maps(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The arrays and the label maps saved by save_label_maps_atomic."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    offsets = np.concatenate([[0], np.cumsum(arrays["heights"] * arrays["widths"])])
    label_maps = [arrays["label_maps_flat"][offsets[index]:offsets[index + 1]].reshape(height, width)
                  for index, (height, width) in enumerate(zip(arrays["heights"], arrays["widths"]))]
    return arrays, label_maps
