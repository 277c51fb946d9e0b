"""Writing, validating and scoring `submission.csv` files, and choosing the test set a scored one is checked
against (`test_root_for`).

The writer produces, byte for byte, what the competition template's writer produces for the same
test frame (header `Id,Predicted`, for each image in frame order its `<Id>_classification` row then its
`<Id>_segmentation` row), but encodes each label map from its runs instead of building 20 masks.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from voc_pipeline.core.classes import CLASS_NAMES, NUM_CLASSES
from voc_pipeline.core.rle import encode_flags, encode_label_map, parse_runs, rle_encode
from voc_pipeline.core.scoring import competition_score, rle_row_dice
from voc_pipeline.data.competition import find_data_root, read_label_csv, read_npy_header
from voc_pipeline.errors import DataError, RleError, SubmissionError
from voc_pipeline.files import read_text_file, write_text_atomic

HEADER = "Id,Predicted"
SEG_COLUMN = "seg"
# Read as Kaggle's scorer reads a submission (pandas.read_csv, UTF-8): a leading UTF-8 byte-order mark is
# accepted and dropped; any other encoding is refused.
SUBMISSION_TEXT = "a submission CSV in UTF-8 text (header Id,Predicted)"


def plain(value):
    """A NumPy scalar as the Python value it holds, for readable error messages."""
    return value.item() if isinstance(value, np.generic) else value


def make_test_frame(ids, flags: np.ndarray, label_maps: list[np.ndarray]) -> pd.DataFrame:
    """A filled test frame like the competition notebook's: index Id, 20 class columns, a `seg` column."""
    frame = pd.DataFrame(np.asarray(flags, dtype=np.int64), columns=list(CLASS_NAMES),
                         index=pd.Index(np.asarray(ids), name="Id"))
    frame[SEG_COLUMN] = pd.Series(list(label_maps), index=frame.index, dtype=object)
    return frame


def check_test_frame(test_frame: pd.DataFrame) -> None:
    """The frame must hold the 20 class columns with 0/1 flags and a `seg` column of 2-D label maps."""
    missing = [name for name in (*CLASS_NAMES, SEG_COLUMN) if name not in test_frame.columns]
    if missing:
        raise SubmissionError(f"test frame lacks columns: {', '.join(missing)}")
    flags = test_frame[list(CLASS_NAMES)]
    bad = ~flags.isin((0, 1))
    if bad.any().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        raise SubmissionError(
            f"test frame, Id {test_frame.index[row]}, class {CLASS_NAMES[column]}: flag "
            f"{plain(flags.iloc[row, column])!r} is not 0 or 1 (was the frame filled?)"
        )
    for image_id, label_map in test_frame[SEG_COLUMN].items():
        if not isinstance(label_map, np.ndarray) or label_map.ndim != 2:
            raise SubmissionError(f"test frame, Id {image_id}: seg must be an H x W label map, got {type(label_map).__name__}"
                                  f"{' of shape ' + str(label_map.shape) if isinstance(label_map, np.ndarray) else ''}")


def submission_text(test_frame: pd.DataFrame) -> str:
    """The submission CSV as text, one classification and one segmentation row per frame row."""
    check_test_frame(test_frame)
    flags = test_frame[list(CLASS_NAMES)].to_numpy()
    lines = [HEADER]
    for position, (image_id, label_map) in enumerate(test_frame[SEG_COLUMN].items()):
        try:
            segmentation = encode_label_map(label_map, NUM_CLASSES)
        except RleError as error:
            raise SubmissionError(f"test frame, Id {image_id}: {error}") from None
        lines.append(f"{image_id}_classification,{encode_flags(flags[position])}")
        lines.append(f"{image_id}_segmentation,{segmentation}")
    return "\n".join(lines) + "\n"


def write_submission(test_frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `submission.csv` for a filled test frame, atomically (a temporary file renamed over `path`).

    Args:
        test_frame: indexed by image Id, with the 20 class columns (0/1) and a `seg` column of H x W
            label maps at each test image's own size.
        path: the CSV to write; an existing file is only ever replaced whole.
    """
    return write_text_atomic(path, submission_text(test_frame))


def reference_submission_csv(test_frame: pd.DataFrame) -> str:
    """The straightforward per-image, per-class writer, as the competition's template does it.

    Kept as the reference that tests and `voc-pipeline bench submission` hold the fast writer to.
    """
    rows = {"Id": [], "Predicted": []}
    for image_id, row in test_frame.iterrows():
        rows["Id"].append(f"{image_id}_classification")
        rows["Predicted"].append(rle_encode(np.array(row[list(CLASS_NAMES)].tolist())))
        class_masks = [row[SEG_COLUMN] == class_number for class_number in range(1, NUM_CLASSES + 1)]
        rows["Id"].append(f"{image_id}_segmentation")
        rows["Predicted"].append(rle_encode(np.array(class_masks)))
    buffer = io.StringIO()
    pd.DataFrame(data=rows, dtype=str).set_index("Id").to_csv(buffer)
    return buffer.getvalue()


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission (or solution) CSV keeping empty fields as empty strings, indexed by row Id."""
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{path} does not exist")
    text = read_text_file(path, SUBMISSION_TEXT, error_type=SubmissionError)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SubmissionError(f"{path} is not a readable CSV: {error}") from None
    if list(frame.columns[:2]) != ["Id", "Predicted"]:
        raise SubmissionError(f"{path}: header must start with Id,Predicted, got {','.join(frame.columns)}")
    return frame


def expected_row_ids(test_ids) -> list[str]:
    """Submission row ids in the required order for the test ids in CSV order."""
    return [f"{image_id}_{kind}" for image_id in test_ids for kind in ("classification", "segmentation")]


@dataclass
class ValidationReport:
    """Every problem found in a submission file; valid when there is none."""

    path: Path
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def validate_submission(path: str | Path, test_root: str | Path | None, max_problems: int = 50) -> ValidationReport:
    """Decode every row of a submission against the test set under `test_root` and list every problem.

    Checks the header, missing, extra, duplicated and out-of-order ids, and each row's encoding: numbers,
    even count, positive starts and lengths, sorted non-overlapping runs, and runs inside 20 flags or
    inside the 20 x H x W stack of that test image (H and W read from the array header only).
    Without a `test_root` (a kernel's output checked where the test images are not), the ids are checked
    to come in classification/segmentation pairs and the segmentation runs without a size limit.
    A leading UTF-8 byte-order mark is accepted, as Kaggle's reader accepts it.

    Raises:
        SubmissionError: the file is not text at all (a folder, a compressed file, not UTF-8).
        DataError: a test image whose size is needed is not a whole .npy image.
    """
    path = Path(path)
    test_root = None if test_root is None else Path(test_root)
    report = ValidationReport(path)
    if not path.exists():
        report.problems.append(f"{path} does not exist")
        return report
    text = read_text_file(path, SUBMISSION_TEXT, error_type=SubmissionError)
    records = list(csv.reader(io.StringIO(text, newline="")))
    header, rows = (records[0], records[1:]) if records else ([], [])
    if ",".join(header) != HEADER:
        report.problems.append(f"header is {','.join(header)!r}, expected {HEADER!r}")
    for line_number, row in enumerate(rows, start=2):
        if len(row) != 2:
            report.problems.append(f"line {line_number} has {len(row)} fields, expected 2")
    rows = [row for row in rows if len(row) == 2]
    report.rows = len(rows)
    if test_root is None:
        test_ids = list(dict.fromkeys(row_id.rpartition("_")[0] for row_id, _ in rows))
    else:
        test_ids = read_label_csv(test_root / "test" / "test_set.csv", "test").index.to_numpy()
    expected = expected_row_ids(test_ids)
    found = [row_id for row_id, _ in rows]
    duplicated = sorted(row_id for row_id, count in Counter(found).items() if count > 1)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if duplicated:
        report.problems.append(f"{len(duplicated)} duplicated ids, e.g. {duplicated[:3]}")
    if missing:
        report.problems.append(f"{len(missing)} missing ids, e.g. {missing[:3]}")
    if extra:
        report.problems.append(f"{len(extra)} unexpected ids, e.g. {extra[:3]}")
    if not (duplicated or missing or extra) and found != expected:
        first = next(position for position, (a, b) in enumerate(zip(found, expected)) if a != b)
        report.problems.append(f"rows out of order: row {first + 2} is {found[first]}, expected {expected[first]}")

    for row_id, text in rows:
        image_id, _, kind = row_id.rpartition("_")
        if row_id in extra or len(report.problems) >= max_problems:
            continue
        if kind == "classification":
            size = NUM_CLASSES
        elif test_root is None:
            size = None
        else:
            image_path = test_root / "test" / "img" / f"test_{image_id}.npy"
            if not image_path.exists():
                report.problems.append(f"{row_id}: test image {image_path} is missing")
                continue
            shape, _ = read_npy_header(image_path)
            if len(shape) != 3:
                raise DataError(f"{image_path}: expected a H x W x 3 image, its header declares shape {shape}")
            height, width = shape[:2]
            size = NUM_CLASSES * height * width
        try:
            parse_runs(text, size)
        except RleError as error:
            report.problems.append(f"{row_id}: {error}")
    return report


def check_solution_path(path: str | Path) -> Path:
    """The solution CSV given to `score` must be a file; an error says what it is and where one comes from."""
    path = Path(path)
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "does not exist"
        raise SubmissionError(f"solution file {path} {found}: give the CSV of the test set's true rows (`voc-pipeline "
                              f"data demo` and `data from-voc` write one as solution.csv in the data folder)")
    return path


def test_root_for(solution: str | Path, data: str | Path | None) -> Path:
    """The data root whose test set a submission is checked against when it is scored.

    Arguments:
        solution: the solution CSV; checked first, so that a mistyped path is named as such.
        data: the data root given by the user, if any.

    Returns:
        `data` when given; else the solution's own folder when it holds the test split (demo data, converted
        devkits); else the data root found as for the stages.
    """
    solution = check_solution_path(solution)
    if not data and (solution.parent / "test" / "test_set.csv").exists():
        return solution.parent
    return find_data_root(data)


def score_submission(solution_path: str | Path, submission_path: str | Path, test_root: str | Path) -> dict[str, float]:
    """Score a submission against a solution CSV (true rows) the way the leaderboard does.

    The submission is first checked exactly as `validate_submission` checks it against the test set
    under `test_root`: a file the leaderboard would refuse is never given a score.

    Returns:
        {"score", "classification", "segmentation", "rows"}; every solution row must be in the submission.

    Raises:
        SubmissionError: the submission does not validate (every problem is listed), or lacks solution rows.
    """
    check_solution_path(solution_path)
    report = validate_submission(submission_path, test_root)
    if not report.valid:
        raise SubmissionError(f"{submission_path} is not a valid submission, so it is not scored "
                              f"({len(report.problems)} problems): " + "; ".join(report.problems[:10]))
    solution = read_submission(solution_path).set_index("Id")["Predicted"]
    submission = read_submission(submission_path).set_index("Id")["Predicted"]
    missing = solution.index.difference(submission.index)
    if len(missing):
        raise SubmissionError(f"{submission_path} lacks {len(missing)} rows of the solution, e.g. {list(missing[:3])}")
    scores = {"classification": [], "segmentation": []}
    for row_id, true_text in solution.items():
        kind = row_id.rpartition("_")[2]
        if kind not in scores:
            raise SubmissionError(f"{solution_path}: row id {row_id!r} is neither _classification nor _segmentation")
        try:
            scores[kind].append(rle_row_dice(submission[row_id], true_text))
        except RleError as error:
            raise SubmissionError(f"{submission_path}, row {row_id}: {error}") from None
    result = competition_score(np.array(scores["classification"]), np.array(scores["segmentation"]))
    result["rows"] = len(solution)
    return result

