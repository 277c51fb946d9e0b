"""Run-length encoding exactly as the competition defines it (pure NumPy, no I/O).

A flat 0/1 vector is written as pairs `start length` for each run of ones, starts counted from 1,
all numbers separated by single spaces; a vector without ones is the empty string. A segmentation
row encodes the stack of 20 binary masks `label_map == k` (k = 1..20), shape (20, H, W), flattened
in C order: class first, then rows, then columns.
"""

from __future__ import annotations

import numpy as np

from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.errors import RleError


def runs_to_text(starts: np.ndarray, lengths: np.ndarray) -> str:
    """Join 1-based run starts and run lengths into the competition's `start length ...` text."""
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def rle_encode(array: np.ndarray) -> str:
    """Encode a 0/1 (or boolean) array of any shape, flattened in C order.

    Args:
        array: values must all be 0 or 1.

    Returns:
        The run-length text; the empty string when the array holds no ones.
    """
    flat = np.asarray(array).ravel(order="C")
    if flat.dtype != np.bool_:
        if flat.size and not np.isin(flat, (0, 1)).all():
            bad = np.unique(flat[~np.isin(flat, (0, 1))])[:5]
            raise RleError(f"rle_encode expects only 0 and 1, got values {bad.tolist()}")
        flat = flat.astype(bool)
    padded = np.concatenate(([False], flat, [False]))
    boundaries = np.flatnonzero(padded[1:] != padded[:-1])
    starts = boundaries[0::2] + 1
    lengths = boundaries[1::2] - boundaries[0::2]
    return runs_to_text(starts, lengths)


def parse_runs(text: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check a run-length text.

    Args:
        text: the `start length ...` text (empty for no ones).
        size: the length of the encoded vector, if known; runs must end inside it.

    Returns:
        (starts, lengths), 1-based starts, as int64 arrays.

    Raises:
        RleError: a token that is not a positive integer, an odd number of numbers, runs that are
            unsorted or overlap, or a run that ends beyond `size`.
    """
    tokens = text.split()
    if " ".join(tokens) != text:
        raise RleError("numbers must be separated by single spaces, with none at either end")
    if not all(token.isdigit() for token in tokens):
        bad = next(token for token in tokens if not token.isdigit())
        raise RleError(f"token {bad!r} is not a non-negative integer")
    if len(tokens) % 2:
        raise RleError(f"odd number of numbers ({len(tokens)}): runs come as start/length pairs")
    check_magnitudes(tokens, size)
    numbers = np.array(tokens, dtype=np.int64).reshape(-1, 2) if tokens else np.zeros((0, 2), np.int64)
    starts, lengths = numbers[:, 0], numbers[:, 1]
    if (starts < 1).any():
        raise RleError(f"run start {int(starts[starts < 1][0])} is below 1 (starts count from 1)")
    if (lengths < 1).any():
        raise RleError(f"run length {int(lengths[lengths < 1][0])} is below 1")
    ends = starts + lengths  # one past the last position, 1-based
    if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
        position = int(np.flatnonzero(starts[1:] < ends[:-1])[0]) + 1
        raise RleError(f"run {position + 1} (start {int(starts[position])}) overlaps or precedes the run before it")
    if size is not None and len(ends) and ends[-1] - 1 > size:
        raise RleError(f"run ending at position {int(ends[-1] - 1)} is outside a vector of length {size}")
    return starts, lengths


# Runs are held as int64: any number with more digits than this could overflow start + length, and is far
# beyond any image's 20 x H x W anyway.
MAX_DIGITS = 18


def check_magnitudes(tokens: list[str], size: int | None) -> None:
    """Numbers too long for 64-bit arithmetic are refused in words, before NumPy would overflow on them."""
    big = next((index for index, token in enumerate(tokens) if len(token.lstrip("0")) > MAX_DIGITS), None)
    if big is None:
        return
    start, length = int(tokens[big - big % 2]), int(tokens[big - big % 2 + 1])
    if size is not None:
        raise RleError(f"run ending at position {start + length - 1} is outside a vector of length {size}")
    raise RleError(f"number {tokens[big]} is too large: no image has a vector that long (at most 20 x H x W)")


def rle_decode(text: str, shape: tuple[int, ...] | int) -> np.ndarray:
    """Decode a run-length text into a uint8 0/1 array of `shape` (filled in C order)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    size = int(np.prod(shape))
    starts, lengths = parse_runs(text, size)
    flat = np.zeros(size + 1, dtype=np.int32)
    np.add.at(flat, starts - 1, 1)
    np.add.at(flat, starts - 1 + lengths, -1)
    return np.cumsum(flat[:-1]).astype(np.uint8).reshape(shape)


def encode_label_map(label_map: np.ndarray, num_classes: int = NUM_CLASSES) -> str:
    """Encode a H x W label map as the stack of `label_map == k` masks for k = 1..num_classes.

    Equivalent to `rle_encode(np.stack([label_map == k for k in 1..num_classes]))` but works on the
    runs of the label map itself, so it never builds the 20 x H x W stack. Runs of class k sit at
    offset (k - 1) * H * W in the stack; runs that touch across a plane boundary (the last pixel of
    plane k and the first of plane k + 1) merge, as they do in the stacked vector.

    Raises:
        RleError: the map is not 2-D or holds values outside 0..num_classes.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise RleError(f"label map must be H x W, got shape {label_map.shape}")
    flat = label_map.ravel(order="C")
    if flat.size and (flat.min() < 0 or flat.max() > num_classes):
        bad = np.unique(flat[(flat < 0) | (flat > num_classes)])[:5]
        raise RleError(f"label map values must be in 0..{num_classes}, got {bad.tolist()}")
    plane_size = flat.size
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    run_starts = np.concatenate(([0], changes))
    run_ends = np.concatenate((changes, [plane_size]))
    values = flat[run_starts].astype(np.int64)
    foreground = values > 0
    offsets = (values[foreground] - 1) * plane_size
    stack_starts = offsets + run_starts[foreground]
    stack_ends = offsets + run_ends[foreground]
    if stack_starts.size == 0:
        return ""
    order = np.argsort(stack_starts, kind="stable")
    stack_starts, stack_ends = stack_starts[order], stack_ends[order]
    begins_group = np.concatenate(([True], stack_starts[1:] != stack_ends[:-1]))
    ends_group = np.concatenate((begins_group[1:], [True]))
    group_starts = stack_starts[begins_group]
    group_ends = stack_ends[ends_group]
    return runs_to_text(group_starts + 1, group_ends - group_starts)


def encode_flags(flags: np.ndarray) -> str:
    """Encode one image's class flags (length num_classes, values 0/1) as a classification row."""
    return rle_encode(np.asarray(flags).ravel())
