import pytest

from voc_pipeline.data.output_folder import count_files, prune_working_folder
from voc_pipeline.errors import OutputFolderError


def test_prune_keeps_the_submission_and_allow_listed_entries(tmp_path):
    (tmp_path / "submission.csv").write_text("Id,Predicted\n")
    (tmp_path / "report.md").write_text("report")
    (tmp_path / "checkpoints").mkdir()
    for index in range(600):
        (tmp_path / "checkpoints" / f"epoch_{index}.weights.h5").write_text("x")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curve.png").write_text("png")
    deleted = prune_working_folder(tmp_path, keep=("report.md", "figures"))
    assert sorted(path.name for path in deleted) == ["checkpoints"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figures", "report.md", "submission.csv"]
    assert count_files(tmp_path) == 3


def test_prune_fails_when_kept_entries_exceed_the_limit(tmp_path):
    (tmp_path / "submission.csv").write_text("")
    (tmp_path / "many").mkdir()
    for index in range(10):
        (tmp_path / "many" / f"{index}.txt").write_text("")
    with pytest.raises(OutputFolderError, match="still holds 11 files"):
        prune_working_folder(tmp_path, keep=("many",), limit=10)
    assert (tmp_path / "submission.csv").exists()
