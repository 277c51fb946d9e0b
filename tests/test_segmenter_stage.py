"""End to end: stage train-seg on the demo data with the smoke profile (weights none)."""


import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.errors import ArtifactError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    return smoke_run, artifacts.read_metrics(smoke_run.run_dir, "train-seg")


def test_stage_writes_its_artifacts(trained_run):
    config, _ = trained_run
    names = {path.name for path in config.run_dir.iterdir()}
    expected = {"segmenter.keras", "segmenter.json", "segmenter_history.csv", "segmenter_curves.png",
                "segmenter_per_class.png", "segmenter_overlays.png", "splits.json"}
    assert expected <= names, expected - names
    metrics = artifacts.read_metrics(config.run_dir, "train-seg")
    assert len(metrics["iou_per_class"]) == 21 and 0 <= metrics["mean_iou"] <= 1


def test_segmenter_learns_beyond_all_background(trained_run):
    _, metrics = trained_run
    assert metrics["segmentation_dice"] > metrics["all_background_dice"] + 0.2, metrics


def test_saved_segmenter_reloads(trained_run):
    config, _ = trained_run
    model, manifest = artifacts.load_segmenter(config.run_dir)
    assert manifest["image_size"] == 96 and model.output_shape == (None, None, None, 21)
    assert np.isfinite(model.predict(np.zeros((1, 96, 96, 3), np.uint8), verbose=0)).all()


def test_missing_segmenter_names_the_stage(tmp_path, capsys):
    config = build_config(assignments=[f'runs_dir="{tmp_path}"'])
    with pytest.raises(ArtifactError, match="segmenter.json is missing: stage train-seg writes it"):
        artifacts.load_segmenter(config.run_dir)
    assert main(["train-seg", "--runs-dir", str(tmp_path), "--data", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
