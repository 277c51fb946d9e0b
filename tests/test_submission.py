import re

import numpy as np
import pandas as pd
import pytest

from voc_pipeline.data.competition import write_label_csv
from voc_pipeline.data.submission import (
    SubmissionError,
    make_test_frame,
    reference_submission_csv,
    score_submission,
    submission_text,
    validate_submission,
    write_submission,
)


def two_image_frame():
    flags = np.zeros((2, 20), dtype=np.int64)
    flags[0, [0, 14]] = 1  # aeroplane, person
    label_maps = [np.array([[0, 1], [15, 15]], dtype=np.uint8), np.zeros((1, 3), dtype=np.uint8)]
    return make_test_frame([4, 7], flags, label_maps)


def test_write_submission_matches_expected_text(tmp_path):
    path = write_submission(two_image_frame(), tmp_path / "submission.csv")
    # Image 4: flags 1 and 15; mask plane 0 has position 1 (start 2), plane 14 (offset 56) positions 2,3.
    expected = (
        "Id,Predicted\n"
        "4_classification,1 1 15 1\n"
        "4_segmentation,2 1 59 2\n"
        "7_classification,\n"
        "7_segmentation,\n"
    )
    assert path.read_bytes() == expected.encode()


@pytest.mark.parametrize("seed", range(8))
def test_writer_is_byte_identical_to_the_reference_writer(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 6))
    label_maps = []
    for _ in range(count):
        height, width = rng.integers(1, 30, size=2)
        label_map = rng.integers(0, 21, size=(height, width)) * (rng.random((height, width)) < rng.random())
        label_maps.append(label_map.astype(np.uint8))
    flags = rng.integers(0, 2, size=(count, 20))
    frame = make_test_frame(rng.permutation(1000)[:count], flags, label_maps)
    assert submission_text(frame) == reference_submission_csv(frame)


def test_failed_write_keeps_the_old_file_whole(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("old\n")
    frame = two_image_frame()
    frame.at[7, "seg"] = np.full((2, 2), 21, dtype=np.uint8)
    with pytest.raises(SubmissionError, match="Id 7.*21"):
        write_submission(frame, path)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda frame: frame.drop(columns=["cat"]), "lacks columns: cat"),
        (lambda frame: frame.assign(dog=-1), "class dog: flag -1"),
        (lambda frame: frame.assign(seg=[np.zeros((2, 2, 3))] * 2), "H x W label map"),
        (lambda frame: frame.assign(seg=["not a map"] * 2), "got str"),
    ],
)
def test_unfilled_or_malformed_frames_are_refused(breaker, message):
    with pytest.raises(SubmissionError, match=message):
        submission_text(breaker(two_image_frame()))


@pytest.fixture
def test_root(tmp_path):
    """A test split of two images, 2 x 2 and 1 x 3, with ids 4 and 7."""
    write_label_csv(tmp_path / "test" / "test_set.csv", np.array([4, 7]), -np.ones((2, 20)))
    (tmp_path / "test" / "img").mkdir()
    np.save(tmp_path / "test" / "img" / "test_4.npy", np.zeros((2, 2, 3), np.uint8))
    np.save(tmp_path / "test" / "img" / "test_7.npy", np.zeros((1, 3, 3), np.uint8))
    return tmp_path


def test_valid_submission_has_no_problems(tmp_path, test_root):
    path = write_submission(two_image_frame(), tmp_path / "submission.csv")
    report = validate_submission(path, test_root)
    assert report.valid and report.rows == 4, report.problems


VALID_ROWS = ["4_classification,1 1 15 1", "4_segmentation,2 1 59 2", "7_classification,", "7_segmentation,"]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("Id,Prediction", VALID_ROWS, "header"),
        ("Id,Predicted", VALID_ROWS[:3], "1 missing ids"),
        ("Id,Predicted", [*VALID_ROWS, "9_classification,"], "1 unexpected ids"),
        ("Id,Predicted", [*VALID_ROWS, VALID_ROWS[0]], "1 duplicated ids"),
        ("Id,Predicted", [VALID_ROWS[1], VALID_ROWS[0], *VALID_ROWS[2:]], "out of order"),
        ("Id,Predicted", ["4_classification,1 1 15", *VALID_ROWS[1:]], "4_classification: odd number"),
        ("Id,Predicted", ["4_classification,1 3 2 1", *VALID_ROWS[1:]], "4_classification: run 2 .* overlaps"),
        ("Id,Predicted", ["4_classification,20 2", *VALID_ROWS[1:]], "outside a vector of length 20"),
        ("Id,Predicted", [*VALID_ROWS[:3], "7_segmentation,60 2"], "7_segmentation: .*length 60"),
    ],
)
def test_each_validator_problem_is_reported(tmp_path, test_root, header, rows, message):
    path = tmp_path / "submission.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    report = validate_submission(path, test_root)
    assert not report.valid
    assert any(re.search(message, problem) for problem in report.problems), report.problems


def test_validator_reports_every_problem_not_just_the_first(tmp_path, test_root):
    path = tmp_path / "submission.csv"
    path.write_text("Id,Predicted\n4_classification,0 1\n4_segmentation,1 1 1 1\n7_classification,\n")
    problems = validate_submission(path, test_root).problems
    assert len(problems) == 3, problems


def test_score_of_solution_against_itself_is_one(tmp_path, test_root):
    path = write_submission(two_image_frame(), tmp_path / "solution.csv")
    assert score_submission(path, path, test_root) == {"score": 1.0, "classification": 1.0, "segmentation": 1.0, "rows": 4}


def test_score_hand_computed(tmp_path, test_root):
    solution = write_submission(two_image_frame(), tmp_path / "solution.csv")
    frame = two_image_frame()
    frame.loc[4, "person"] = 0  # flags {1} vs {1, 15}: F1 = 2/3
    frame.at[4, "seg"] = np.array([[0, 1], [15, 0]], dtype=np.uint8)  # 2 of 3 pixels: 2*2/(2+3) = 0.8
    frame.loc[7, "cat"] = 1  # empty truth, one flag: 0
    submission = write_submission(frame, tmp_path / "submission.csv")
    result = score_submission(solution, submission, test_root)
    assert result["classification"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["segmentation"] == pytest.approx((0.8 + 1.0) / 2)
    assert result["score"] == pytest.approx((2 / 3 + 0 + 0.8 + 1.0) / 4)


@pytest.mark.parametrize(("rows", "problem"), [
    ("4_classification,1 1\n", "3 missing ids"),
    ("4_classification,1 1\n4_segmentation,\n7_classification,\n7_segmentation,\n8_classification,1 1\n", "1 unexpected ids"),
    ("4_classification,1 1\n4_segmentation,\n7_classification,\n7_segmentation,\n7_segmentation,\n", "1 duplicated ids"),
    ("4_classification,1 1\n4_segmentation,80 2\n7_classification,\n7_segmentation,\n", "outside a vector of length 80"),
])
def test_score_refuses_what_validate_refuses(tmp_path, test_root, rows, problem):
    solution = write_submission(two_image_frame(), tmp_path / "solution.csv")
    submission = tmp_path / "submission.csv"
    submission.write_text("Id,Predicted\n" + rows)
    assert problem in " ".join(validate_submission(submission, test_root).problems)
    with pytest.raises(SubmissionError, match=f"submission.csv is not a valid submission, so it is not scored .*{problem}"):
        score_submission(solution, submission, test_root)


def test_empty_fields_survive_a_pandas_round_trip(tmp_path):
    path = write_submission(two_image_frame(), tmp_path / "submission.csv")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert frame["Predicted"].tolist()[2:] == ["", ""]
