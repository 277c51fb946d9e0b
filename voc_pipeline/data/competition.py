"""The competition's data layer: find the data root, load and validate the `.npy` arrays and CSVs.

Layout (COMPETITION.md):
    <root>/train/train_set.csv        index "Id", then the 20 class columns (0/1)
    <root>/train/img/train_<Id>.npy   uint8 H x W x 3 RGB
    <root>/train/seg/train_<Id>.npy   H x W label map, 0 = background, k = k-th class
    <root>/test/test_set.csv          index "Id", class columns all -1
    <root>/test/img/test_<Id>.npy
Images stay at their native size and dtype (uint8); nothing here makes float copies of the set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from voc_pipeline.errors import DataError
from voc_pipeline.files import byte_size, hash_file, read_text_file, unreadable_reason

logger = logging.getLogger(__name__)

KAGGLE_INPUT = Path("/kaggle/input")
SPLIT_NAMES = ("train", "test")
# The true rows of a held-out test split (demo data, converted VOC devkits), for scoring locally.
SOLUTION_FILE = "solution.csv"


@dataclass(frozen=True)
class ImageSet:
    """One split of the competition data, in memory at native size.

    Attributes:
        name: "train" or "test".
        ids: (N,) int64 image ids, in CSV order.
        images: N uint8 arrays of shape (H, W, 3), RGB.
        masks: N uint8 arrays of shape (H, W) with values 0..20 (255 = void where kept), or None for test.
        labels: (N, 20) int8 class flags from the CSV (all -1 for test).
        class_names: the 20 class names in the fixed order.
        root: the data root the split was read from.
    """

    name: str
    ids: np.ndarray
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    labels: np.ndarray
    class_names: tuple[str, ...]
    root: Path

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, positions: np.ndarray) -> ImageSet:
        """The images at `positions` (indices into this set, not ids), sharing the arrays."""
        positions = np.asarray(positions, dtype=np.int64)
        return ImageSet(
            name=self.name,
            ids=self.ids[positions],
            images=[self.images[index] for index in positions],
            masks=None if self.masks is None else [self.masks[index] for index in positions],
            labels=self.labels[positions],
            class_names=self.class_names,
            root=self.root,
        )


def find_data_root(explicit: str | Path | None = None, kaggle_input: Path = KAGGLE_INPUT,
                   local_default: Path = Path("data")) -> Path:
    """Choose the data root and log which one was chosen.

    Order: an explicit path; else the folder under `kaggle_input` holding `train/train_set.csv` (old
    `/kaggle/input/<slug>/` and new `/kaggle/input/competitions/<slug>/` mounts alike); else `./data`.
    """
    if explicit:
        root = Path(explicit)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder")
        logger.debug("data root: %s (given explicitly)", root)
        return root
    if kaggle_input.is_dir():
        candidates = sorted({path.parent.parent for depth in ("*", "*/*", "*/*/*")
                             for path in kaggle_input.glob(f"{depth}/train/train_set.csv")})
        if candidates:
            if len(candidates) > 1:
                logger.warning("several data roots under %s: %s; using the first", kaggle_input,
                               ", ".join(map(str, candidates)))
            logger.info("data root: %s (found under %s)", candidates[0], kaggle_input)
            return candidates[0]
    if (local_default / "train" / "train_set.csv").exists():
        logger.info("data root: %s (local default)", local_default)
        return local_default
    raise DataError(
        f"no data root given and none found: looked for train/train_set.csv under {kaggle_input} and in "
        f"{local_default}/; pass --data PATH (e.g. a folder made by `voc-pipeline data demo data/demo`)"
    )


def read_label_csv(path: Path, split: str) -> pd.DataFrame:
    """Read `<split>_set.csv`, checking the Id index and the 20 class columns in order."""
    if not os.path.lexists(path):
        raise DataError(f"{path} is missing: expected the {split} label CSV of the competition layout")
    text = read_text_file(path, f"the {split} label CSV of the competition layout (Id, then the 20 classes)",
                          error_type=DataError)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV: {error}") from None
    expected_columns = ["Id", *CLASS_NAMES]
    if list(frame.columns) != expected_columns:
        raise DataError(
            f"{path}: columns must be Id then the 20 classes in order ({', '.join(CLASS_NAMES)}); "
            f"got {', '.join(map(str, frame.columns))}"
        )
    if frame.isna().any().any():
        row = int(np.flatnonzero(frame.isna().any(axis=1).to_numpy())[0])
        raise DataError(f"{path}: row {row + 2} has an empty or NaN value")
    if frame.empty:
        return frame.astype(np.int64).set_index("Id")
    if not pd.api.types.is_integer_dtype(frame["Id"]) or frame["Id"].duplicated().any():
        raise DataError(f"{path}: the Id column must hold unique integers")
    allowed = (0, 1) if split == "train" else (-1, 0, 1)
    # One text cell makes pandas read its whole column as text: name that cell, then compare numbers.
    numeric = frame[list(CLASS_NAMES)].apply(pd.to_numeric, errors="coerce")
    text = numeric.isna().to_numpy()
    if text.any():
        row, column = np.argwhere(text)[0]
        raise DataError(f"{path}: Id {frame['Id'].iloc[row]}, class {CLASS_NAMES[column]}: value "
                        f"{frame[CLASS_NAMES[column]].iloc[row]!r} is not a number; expected one of {allowed}")
    frame[list(CLASS_NAMES)] = numeric
    values = frame[list(CLASS_NAMES)]
    bad = ~values.isin(allowed)
    if bad.any().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        value = values.iloc[row, column]
        raise DataError(
            f"{path}: Id {frame['Id'].iloc[row]}, class {CLASS_NAMES[column]}: value "
            f"{value.item() if isinstance(value, np.generic) else value!r} is not one of {allowed}"
        )
    return frame.set_index("Id")


NPY_MAGIC = b"\x93NUMPY"


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) that a `.npy` file's header declares, checked against the file before anything is allocated.

    Raises:
        DataError: the file cannot be opened (a folder, a link to nothing, no permission), is not a .npy
            file, declares an object array (pickle) or holds fewer bytes than its header declares (cut).
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(NPY_MAGIC))
            if head != NPY_MAGIC:
                raise DataError(f"{path} is not a NumPy .npy file (it starts with {head!r}, not {NPY_MAGIC!r}); "
                                f"expected an array written by numpy.save")
            stream.seek(0)
            try:
                version = np.lib.format.read_magic(stream)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    raise ValueError(f"format version {version[0]}.{version[1]} is not one numpy.save writes by default")
                shape, _, dtype = readers[version](stream)
            except (ValueError, EOFError) as error:
                raise DataError(f"{path} is not a valid .npy file: its header cannot be read ({error})") from None
            data_bytes = os.fstat(stream.fileno()).st_size - stream.tell()
    except OSError as error:
        raise DataError(f"{path} {unreadable_reason(path, error)}; expected a .npy array file") from None
    if dtype.hasobject:
        raise DataError(f"{path} holds an object array, which cannot be loaded without pickle; "
                        f"pickles are never loaded from data")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if data_bytes < declared:
        raise DataError(f"{path} is cut short: its header declares a {dtype} array of shape {shape} "
                        f"({byte_size(declared)}) but only {byte_size(data_bytes)} follow it; write it again with numpy.save")
    return tuple(shape), dtype


def load_array(path: Path) -> np.ndarray:
    """np.load without pickles, turning missing, cut or corrupt files into a DataError naming the file.

    The header's declared size is compared with the file's before the array is allocated, so a cut file
    that declares a huge shape is named, not allocated.
    """
    if not os.path.lexists(path):
        raise DataError(f"{path} is missing")
    read_npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{path} holds an object array, which cannot be loaded without pickle; "
                            f"pickles are never loaded from data") from None
        raise DataError(f"{path} is not a valid .npy file: {error}") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is not a valid .npy file: {error}") from None


def check_image(image: np.ndarray, path: Path) -> np.ndarray:
    """An RGB image must be uint8 H x W x 3 with non-zero H and W."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise DataError(f"{path}: expected a uint8 H x W x 3 image, got dtype {image.dtype} and shape {image.shape}")
    return image


def check_mask(mask: np.ndarray, image_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """A mask must be an integer H x W map matching its image, values 0..20 or 255 (void)."""
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise DataError(f"{path}: expected an integer H x W label map, got dtype {mask.dtype} and shape {mask.shape}")
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(f"{path}: mask shape {mask.shape} differs from its image's {tuple(image_shape[:2])}")
    values = np.unique(mask)
    bad = values[((values < 0) | (values > NUM_CLASSES)) & (values != VOID_LABEL)]
    if bad.size:
        raise DataError(f"{path}: mask values {bad.tolist()[:10]} are outside 0..{NUM_CLASSES} (and {VOID_LABEL} = void)")
    return mask.astype(np.uint8, copy=False)


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """(20,) int8 flags: which classes have at least one pixel in the mask (void ignored)."""
    present = np.zeros(NUM_CLASSES + 1, dtype=bool)
    values = np.unique(mask)
    present[values[values <= NUM_CLASSES]] = True
    return present[1:].astype(np.int8)


def load_split(root: str | Path, split: str, show_progress: bool = True) -> ImageSet:
    """Load and validate one split ("train" or "test") of the competition layout under `root`.

    Raises:
        DataError: naming the file and the problem, for any missing file or malformed array.
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
    root = Path(root)
    split_dir = root / split
    check_folder(split_dir, f"the {split} folder of the competition layout")
    for folder in ("img", "seg"):
        if os.path.lexists(split_dir / folder):
            check_folder(split_dir / folder, f"the folder of the {split} {'images' if folder == 'img' else 'masks'}")
    csv_path = split_dir / f"{split}_set.csv"
    frame = read_label_csv(csv_path, split)
    if frame.empty:
        raise DataError(f"{csv_path} lists no image (a header and no rows): the {split} split needs at least one")
    ids = frame.index.to_numpy(dtype=np.int64)
    warn_about_unlisted_arrays(split_dir, split, ids)
    image_paths = [split_dir / "img" / f"{split}_{image_id}.npy" for image_id in ids]
    missing = [path for path in image_paths if not os.path.lexists(path)]
    if missing:
        raise DataError(f"{len(missing)} image arrays listed in {split_dir / f'{split}_set.csv'} are missing, "
                        f"first: {', '.join(map(str, missing[:3]))}")

    images, masks = [], [] if split == "train" else None
    for image_id, image_path in tqdm(list(zip(ids, image_paths)), desc=f"loading {split}", unit="image",
                                     disable=not show_progress):
        image = check_image(load_array(image_path), image_path)
        images.append(image)
        if masks is not None:
            mask_path = split_dir / "seg" / f"{split}_{image_id}.npy"
            masks.append(check_mask(load_array(mask_path), image.shape, mask_path))

    image_set = ImageSet(split, ids, images, masks, frame.to_numpy(dtype=np.int8), CLASS_NAMES, root)
    if masks is not None:
        report_mask_consistency(image_set)
    return image_set


def check_folder(folder: Path, expected: str) -> None:
    """A folder the layout needs must exist and be readable; a DataError names it otherwise."""
    try:
        with os.scandir(folder):
            pass
    except FileNotFoundError:
        raise DataError(f"{folder} is missing: expected {expected}") from None
    except NotADirectoryError:
        raise DataError(f"{folder} is a file, not a folder: expected {expected}") from None
    except OSError as error:
        raise DataError(f"{folder} {unreadable_reason(folder, error)}; expected {expected}") from None


def warn_about_unlisted_arrays(split_dir: Path, split: str, ids: np.ndarray) -> list[str]:
    """Warn about array files under `split_dir` that the split's CSV does not list (they are ignored)."""
    expected = {f"{split}_{image_id}.npy" for image_id in ids}
    unlisted = sorted(entry.name for folder in ("img", "seg") if (split_dir / folder).is_dir()
                      for entry in os.scandir(split_dir / folder) if entry.name not in expected)
    if unlisted:
        logger.warning("%s: %d files in img/ or seg/ are not listed in %s_set.csv and are ignored (e.g. %s)",
                       split_dir, len(unlisted), split, ", ".join(unlisted[:5]))
    return unlisted


def mask_consistency(image_set: ImageSet) -> tuple[int, np.ndarray]:
    """(number of masks keeping void pixels, positions of images whose CSV labels disagree with their masks)."""
    void_images = sum(bool((mask == VOID_LABEL).any()) for mask in image_set.masks)
    mask_labels = np.stack([labels_from_mask(mask) for mask in image_set.masks]) if len(image_set) else image_set.labels
    return void_images, np.flatnonzero((mask_labels != image_set.labels).any(axis=1))


def report_mask_consistency(image_set: ImageSet) -> None:
    """Warn (once, when the split is loaded) about void pixels and CSV labels that disagree with their masks.

    Classification trusts the CSV and segmentation the mask, so a disagreement is a warning, not an error.
    """
    void_images, disagreeing = mask_consistency(image_set)
    if void_images:
        logger.info("%s: %d masks keep void (%d) pixels; the segmenter ignores them",
                    image_set.name, void_images, VOID_LABEL)
    if disagreeing.size:
        logger.warning("%s: %d images have CSV labels that disagree with their masks (ids %s%s); "
                       "classification uses the CSV, segmentation the mask",
                       image_set.name, disagreeing.size, image_set.ids[disagreeing[:5]].tolist(),
                       " ..." if disagreeing.size > 5 else "")


def load_competition_data(root: str | Path, show_progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """Load and validate both splits: (train, test)."""
    return load_split(root, "train", show_progress), load_split(root, "test", show_progress)


def write_label_csv(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """Write a `<split>_set.csv` in the competition's layout (index Id, 20 class columns)."""
    frame = pd.DataFrame(np.asarray(labels, dtype=np.int64), columns=list(CLASS_NAMES))
    frame.insert(0, "Id", np.asarray(ids, dtype=np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_split(root: Path, split: str, ids: np.ndarray, images: list[np.ndarray],
                masks: list[np.ndarray] | None, labels: np.ndarray) -> None:
    """Write one split in the competition layout under `root` (used by the data generators)."""
    write_label_csv(root / split / f"{split}_set.csv", ids, labels)
    (root / split / "img").mkdir(parents=True, exist_ok=True)
    if masks is not None:
        (root / split / "seg").mkdir(parents=True, exist_ok=True)
    for position, image_id in enumerate(ids):
        np.save(root / split / "img" / f"{split}_{image_id}.npy", images[position], allow_pickle=False)
        if masks is not None:
            np.save(root / split / "seg" / f"{split}_{image_id}.npy", masks[position], allow_pickle=False)


def summarize(image_set: ImageSet) -> dict:
    """Counts and sizes of one split, for the run folder and `voc-pipeline data check`."""
    heights = np.array([image.shape[0] for image in image_set.images])
    widths = np.array([image.shape[1] for image in image_set.images])
    summary = {
        "images": len(image_set),
        "height_range": [int(heights.min()), int(heights.max())] if len(image_set) else [],
        "width_range": [int(widths.min()), int(widths.max())] if len(image_set) else [],
    }
    if image_set.masks is not None:
        summary["images_per_class"] = dict(zip(image_set.class_names, image_set.labels.sum(0).tolist()))
        summary["images_without_class"] = int((image_set.labels.sum(1) == 0).sum())
        void_images, disagreeing = mask_consistency(image_set)
        summary.update({"void_images": void_images, "label_mask_disagreements": int(disagreeing.size)})
    return summary


def ids_digest(ids) -> str:
    """A hash of a split's image ids in CSV order."""
    return hashlib.sha256(",".join(str(int(image_id)) for image_id in ids).encode()).hexdigest()


def data_identity(root: str | Path, image_set: ImageSet) -> dict:
    """What identifies a split's data wherever it lies: its image count, its ids' hash and its fingerprint
    (recorded by stage data, and compared when a trained run meets data elsewhere: `describe_data_difference`)."""
    return {"ids_sha256": ids_digest(image_set.ids), "fingerprint": fingerprint(root, image_set.name)}


def describe_data_difference(recorded: dict, root: str | Path, split: str) -> str | None:
    """How the split under `root` differs from a recorded `data_identity` (with its summary's image count), in
    words naming both fingerprints; None when it is the same data."""
    current = fingerprint(root, split)
    if current == recorded.get("fingerprint"):
        return None
    try:
        ids = read_label_csv(Path(root) / split / f"{split}_set.csv", split).index.to_numpy(dtype=np.int64)
        shape = (f"{recorded.get('images')} images recorded, {len(ids)} here" if len(ids) != recorded.get("images")
                 else f"the same {len(ids)} images by count, other ids" if ids_digest(ids) != recorded.get("ids_sha256")
                 else f"the same {len(ids)} image ids, other content")
    except DataError as error:
        shape = str(error)
    return (f"the {split} data differs (fingerprint recorded {str(recorded.get('fingerprint'))[:12]}, here "
            f"{current[:12]}): {shape}")


def fingerprint(root: str | Path, split: str) -> str:
    """A hash of the split's data under `root`: the same bytes give the same hash on any machine, in any folder.

    It covers the bytes of the split's CSV, the name, size and content of each of its array files, and for the
    test split also the bytes of `solution.csv` if there is one; neither the root's path nor modification times
    count, so a run trained here recognises the same competition data mounted on Kaggle. Each file is read once
    per process (`files.hash_file` remembers it by path, size and modification time), about the cost of
    loading the split once.
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
    root = Path(root)
    digest = hashlib.sha256()
    listed = [root / split / f"{split}_set.csv"] + ([root / SOLUTION_FILE] if split == "test" else [])
    # An entry that cannot be read (a link to nothing, a loop, no permission) counts by its name and the
    # reason, so the fingerprint never fails and changes when the entry is mended; the loaders name it,
    # when it is one the CSV lists, and ignore it otherwise.
    for path in listed:
        digest.update(f"{path.relative_to(root)}\0".encode())
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as error:
            digest.update(b"absent" if isinstance(error, FileNotFoundError) else f"unreadable {error.errno}".encode())
    for folder in ("img", "seg"):
        try:
            entries = sorted(os.scandir(root / split / folder), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            digest.update(f"{folder}\0unreadable {error.errno}\n".encode())
            continue
        for entry in entries:
            try:
                digest.update(f"{folder}/{entry.name}\0{entry.stat().st_size}\0{hash_file(entry.path)}\n".encode())
            except OSError as error:
                digest.update(f"{folder}/{entry.name}\0unreadable {error.errno}\n".encode())
    return digest.hexdigest()
