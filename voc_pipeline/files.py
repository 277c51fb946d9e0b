"""Atomic file writing: every artifact appears whole or not at all.

Each writer writes a temporary file beside the target and renames it over the target, so an
interrupted run never leaves a half-written CSV, JSON or array that a later stage would trust; the
temporary file is removed when the block fails or is interrupted (the command line turns SIGTERM into
the same interruption as Ctrl-C). Written files get the permissions the user's umask gives any new
file, not the private ones of a temporary file, and a folder that cannot be written, or a target the
system refuses to replace (an immutable file, a folder in its place), is an OutputFolderError naming it. A write that finds the disk full is a DiskFullError naming the folder, how
much the write needed where that is known, and that the target is as it was.

`read_text_file` is the one reader of text the user hands over (profiles, CSVs, id lists, JSON
bookkeeping): a folder, a compressed or binary file, or text that is not UTF-8 is named as what it is.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voc_pipeline.errors import DiskFullError, OutputExistsError, OutputFolderError, VocPipelineError

# Read once: the permissions a new file or folder gets are 0o666 / 0o777 without the umask's bits.
UMASK = os.umask(0o022)
os.umask(UMASK)


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How writers that lose the errno say it: the system's words, or NumPy's short write ("53550 requested and
# 8064 written"), which only a full disk causes on a regular file.
FULL_DISK_TEXT = re.compile(r"No space left|Disk quota exceeded|\d+ requested and \d+ written")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the file system (or the user's quota) has no room left.

    HDF5 and zip writers report it as an OSError whose errno is not always set, so the text counts too.
    """
    if not isinstance(error, OSError):
        return False
    return error.errno in FULL_DISK_ERRNOS or bool(FULL_DISK_TEXT.search(str(error)))


def byte_size(count: int) -> str:
    """A byte count as people read it: 812 bytes, 3.4 kB, 1.2 MB, 2.0 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def free_space(folder: Path) -> int | None:
    """Bytes free for the user on the file system of `folder` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(folder: Path, needed: int | None, unchanged: str, at_least: bool = False) -> DiskFullError:
    """The error for a write that found no space left in `folder`.

    Args:
        needed: the bytes the write needed, or None when that is not known.
        unchanged: what the user can rely on, e.g. "nothing was changed (submission.csv is as it was)".
        at_least: `needed` is what had been written when the disk filled, so the write needed more.
    """
    free = free_space(folder)
    need = ("the write's size is not known" if needed is None else
            f"the write needed more than the {byte_size(needed)} it had written" if at_least else
            f"the write needed {byte_size(needed)}")
    have = f", {byte_size(free)} free" if free is not None else ""
    return DiskFullError(f"no space left on the disk of {folder} ({need}{have}); {unchanged}; free some space "
                         f"there or choose another folder")


@contextlib.contextmanager
def reporting_full_disk(folder: str | os.PathLike, unchanged: str = "no file was left half-written") -> Iterator[None]:
    """Turn a full disk met anywhere in the block (a Keras checkpoint, a plot) into one DiskFullError."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise disk_full(Path(folder), None, unchanged) from None


def cannot_write(path: Path, error: OSError) -> OutputFolderError:
    """The error for a file or folder that cannot be created, with the reason the system gave."""
    if is_disk_full(error):
        return disk_full(path.parent, None, f"nothing was changed ({path} is as it was)")
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


def cannot_replace(target: Path, error: OSError, elsewhere: str) -> OutputFolderError:
    """The error for a finished temporary file that the system refuses to rename onto `target`."""
    if target.is_dir():
        reason, fix = "a folder stands where the file goes", "move that folder away"
    elif error.errno in (errno.EPERM, errno.EACCES):
        reason = (f"{error.strerror.lower()}: it is immutable or append-only (`lsattr {target}` shows the flag), or "
                  f"its folder does not let this user replace it")
        fix = f"`chattr -i {target}` (as root) or fix the folder's permissions"
    else:
        reason, fix = error.strerror or str(error), "fix that"
    return OutputFolderError(f"cannot replace {target}: {reason}; {fix}, or choose {elsewhere}; nothing was changed "
                             f"({target.name} is as it was)")


def replace_file(temporary: Path, target: Path, elsewhere: str = "another folder") -> None:
    """Rename `temporary` onto `target`; an OutputFolderError names `target` when the system refuses."""
    try:
        os.replace(temporary, target)
    except OSError as error:
        if is_disk_full(error):
            raise
        raise cannot_replace(target, error, elsewhere) from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, needed: int | None = None,
                elsewhere: str = "another folder") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Args:
        needed: the bytes the block will write, if known, for the message when the disk is full.
        elsewhere: where else the user may write, for the message when `target` cannot be replaced
            (e.g. "another submit.output_dir").

    Raises:
        DiskFullError: the disk filled while the block wrote; `target` is as it was.
        OutputFolderError: `target` cannot be replaced (an immutable file, a folder in its place); it is as it was.
    """
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
        replace_file(temporary, target, elsewhere)
    except OSError as error:
        if not is_disk_full(error):
            raise
        temporary.unlink(missing_ok=True)
        state = "is as it was" if target.exists() else "was not written"
        raise disk_full(target.parent, needed, f"nothing was changed ({target.name} {state})") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `target` atomically."""
    data = text.encode("utf-8")
    with atomic_path(target, needed=len(data)) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, payload) -> Path:
    """Write `payload` as indented JSON atomically."""
    return write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=False) + "\n")


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
    except OSError as error:
        if not is_disk_full(error):
            raise
        written = folder_size(temporary)
        shutil.rmtree(temporary, ignore_errors=True)
        state = "is as it was" if target.exists() else "was not created"
        raise disk_full(target.parent, written, f"nothing was changed ({target} {state})", at_least=True) from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def folder_size(folder: Path) -> int:
    """The bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file() and not path.is_symlink())


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


# The first bytes of the kinds of file people hand over by mistake where text is expected.
FILE_SIGNATURES = ((b"\x1f\x8b", "a gzip-compressed file"), (b"PK\x03\x04", "a zip archive"),
                   (b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 file"), (b"\x89PNG", "a PNG image"),
                   (b"\xff\xd8\xff", "a JPEG image"), (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))


def unreadable_reason(path: Path, error: OSError) -> str:
    """Why `path` could not be opened, in words: a folder, a link to nothing, no permission."""
    if isinstance(error, IsADirectoryError):
        return "is a folder"
    if isinstance(error, FileNotFoundError):
        return (f"is a symbolic link to {os.readlink(path)}, which does not exist" if path.is_symlink()
                else "does not exist")
    if isinstance(error, PermissionError):
        return "cannot be read: permission denied (fix its permissions, or run as a user who may read it)"
    if error.errno == errno.ELOOP:
        return "is a symbolic link that loops back on itself"
    return f"cannot be read: {error.strerror or error}"


def read_text_file(path: str | os.PathLike, expected: str, remedy: str = "",
                   error_type: type[VocPipelineError] = VocPipelineError) -> str:
    """The UTF-8 text of `path` (a leading byte-order mark dropped), or one error saying what the file is.

    Args:
        expected: what the file should be, e.g. "a TOML profile".
        remedy: appended to the message, e.g. "; `voc-pipeline kernel build` rewrites it".
        error_type: the VocPipelineError subclass to raise.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise error_type(f"{path} {unreadable_reason(path, error)}; expected {expected}{remedy}") from None
    kind = next((name for signature, name in FILE_SIGNATURES if data.startswith(signature)), None)
    if kind:
        raise error_type(f"{path} is {kind}, expected {expected}{remedy}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise error_type(f"{path} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                         f"expected {expected}{remedy}") from None


def read_json_file(path: str | os.PathLike, expected: str, remedy: str = "",
                   error_type: type[VocPipelineError] = VocPipelineError, shape: type = dict):
    """The JSON value in `path`, which must be a `shape` (dict or list); one error naming the file otherwise."""
    text = read_text_file(path, expected, remedy, error_type)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise error_type(f"{path} is unreadable (not valid JSON: {error}); expected {expected}{remedy}") from None
    if not isinstance(value, shape):
        raise error_type(f"{path} holds {json_kind(value)}, expected {expected}{remedy}")
    return value


def json_kind(value) -> str:
    """A JSON value's kind in words, for messages: "a JSON list", "the JSON string 'x'"."""
    if isinstance(value, dict):
        return "a JSON object" + ("" if value else " with no keys")
    if isinstance(value, list):
        return "a JSON list"
    if isinstance(value, str):
        return f"the JSON string {value[:40]!r}"
    return f"the JSON value {json.dumps(value)[:40]}"


_file_hashes: dict[tuple[str, int, int], str] = {}


def hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time within one process)."""
    status = Path(path).stat()
    memo_key = (str(Path(path).resolve()), status.st_size, status.st_mtime_ns)
    if memo_key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _file_hashes[memo_key] = digest.hexdigest()
    return _file_hashes[memo_key]
