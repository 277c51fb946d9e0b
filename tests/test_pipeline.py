"""End to end: predict, submit and evaluate after training, and how reruns behave."""

import json
import logging

import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.core.scoring import classification_row_scores, competition_score, segmentation_row_scores
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.data.submission import read_submission, validate_submission
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import load_label_maps

pytestmark = pytest.mark.slow


def stage_arguments(config):
    return ["--data", config.data.root, "--profile", "smoke", "--runs-dir", config.runs_dir, "--run", config.run_name,
            "--set", f'submit.output_dir="{config.submit.output_dir}"']


def test_submission_is_valid_and_beats_the_trivial_answer(smoke_run):
    submission = smoke_run.run_dir / "submission.csv"
    copied = smoke_run.submit.output_dir + "/submission.csv"
    assert submission.read_bytes() == open(copied, "rb").read()
    assert validate_submission(submission, smoke_run.data.root).valid
    local = artifacts.read_metrics(smoke_run.run_dir, "submit")["local_score"]
    assert local["rows"] == 24 and local["score"] > 0.3, local
    scores = artifacts.read_metrics(smoke_run.run_dir, "evaluate")["scores"]
    baseline = scores["most frequent class + centre box"]["score"]
    assert scores["independent heads"]["score"] > baseline + 0.15, scores


def test_predictions_hold_maps_at_each_test_size(smoke_run):
    arrays, label_maps = load_label_maps(smoke_run.run_dir / "test_predictions.npz")
    test = load_split(smoke_run.data.root, "test", show_progress=False)
    np.testing.assert_array_equal(arrays["ids"], test.ids)
    assert [m.shape for m in label_maps] == [image.shape[:2] for image in test.images]
    assert arrays["flags"].shape == (12, 20) and (arrays["flags"].sum(1) >= 1).all()
    assert arrays["probabilities"].min() >= 0 and arrays["probabilities"].max() <= 1


def test_the_chosen_rule_is_scored_by_what_it_predicted_on_validation(smoke_run):
    """The candidate table's figure for the chosen rule is the competition score of the per-image rows tune kept, and
    the worst images' saved flags and maps, scored again here against the truth, give those rows."""
    joint = json.loads((smoke_run.run_dir / "joint_rule.json").read_text())
    chosen = next(row for row in joint["candidates"] if row["name"] == joint["rule"]["name"])
    arrays, label_maps = artifacts.read_validation_predictions(smoke_run.run_dir)
    kept = competition_score(arrays["classification_scores"], arrays["segmentation_scores"])
    assert kept == pytest.approx({key: chosen[key] for key in ("score", "classification", "segmentation")})
    train = load_split(smoke_run.data.root, "train", show_progress=False)
    positions = positions_of(train.ids, arrays["ids"])
    rows = positions_of(arrays["all_ids"], arrays["ids"])
    assert len(positions) == smoke_run.joint.worst_images
    np.testing.assert_allclose(classification_row_scores(arrays["flags"], train.labels[positions]),
                               arrays["classification_scores"][rows])
    np.testing.assert_allclose(segmentation_row_scores(label_maps, [train.masks[p] for p in positions]),
                               arrays["segmentation_scores"][rows])
    splits = artifacts.read_splits(smoke_run.run_dir)
    assert sorted(joint["validation_ids"]) == sorted(splits.validation_ids.tolist())
    rule, _ = artifacts.read_joint_rule(smoke_run.run_dir)
    assert rule.name == joint["rule"]["name"]


def test_report_links_the_figures_that_exist(smoke_run):
    report = (smoke_run.run_dir / "report.md").read_text()
    for figure in ("classifier_curves.png", "segmenter_overlays.png", "score_comparison.png"):
        assert f"]({figure})" in report and (smoke_run.run_dir / figure).exists()
    assert "| most frequent class + centre box |" in report


def test_finished_stages_are_skipped_unless_forced(smoke_run, caplog):
    before = (smoke_run.run_dir / "submission.csv").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(["submit", *stage_arguments(smoke_run)]) == 0
    assert "stage submit is current" in caplog.text
    assert (smoke_run.run_dir / "submission.csv").stat().st_mtime_ns == before
    assert main(["submit", *stage_arguments(smoke_run), "--force"]) == 0
    assert (smoke_run.run_dir / "submission.csv").stat().st_mtime_ns != before


def test_submission_can_be_rebuilt_from_saved_predictions_alone(smoke_run, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    assert main(["submit", *stage_arguments(smoke_run), "--force", "--set", f'submit.output_dir="{rebuilt}"']) == 0
    assert (rebuilt / "submission.csv").read_bytes() == (smoke_run.run_dir / "submission.csv").read_bytes()
    assert len(read_submission(rebuilt / "submission.csv")) == 24


def test_stage_without_its_inputs_names_the_stage_to_run(tmp_path, smoke_run, capsys):
    arguments = ["--data", smoke_run.data.root, "--runs-dir", str(tmp_path), "--run", "empty"]
    assert main(["predict", *arguments]) == 2
    error = capsys.readouterr().err
    assert "stage predict needs stage data" in error and "not run" in error and "run --until predict" in error
    with pytest.raises(ArtifactError, match=r"thresholds.json is missing: stage tune writes it; run `voc-pipeline run --until tune`"):
        artifacts.read_thresholds(build_config(assignments=[f'runs_dir="{tmp_path}"']).run_dir)


def test_metrics_and_records_describe_every_stage_that_ran(smoke_run):
    for stage in ("data", "train-cls", "train-seg", "tune", "self-train", "refit", "predict", "submit", "evaluate"):
        assert artifacts.read_metrics(smoke_run.run_dir, stage), stage
    info = json.loads((smoke_run.run_dir / "run_info.json").read_text())["stages"]["predict"]
    assert set(info["inputs"]["artifacts"]) == {"classifier.json", "classifier.keras", "segmenter.json", "segmenter.keras",
                                               "final_models.json", "thresholds.json", "joint_rule.json"}
    assert set(info["inputs"]["data"]) == {"test"} and set(info["inputs"]["config"]) == {"inference"}
    assert set(info["outputs"]) == {"test_predictions.npz", "metrics/predict.json"}
