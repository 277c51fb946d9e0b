"""Atomic file writing: every artifact appears whole or not at all.

Each writer writes a temporary file beside the target and renames it over the target, so an
interrupted run never leaves a half-written CSV, JSON or array that a later stage would trust.
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
        FileExistsError: `target` exists, is not empty and `overwrite` is false.
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already exists and is not empty; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temporary
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
