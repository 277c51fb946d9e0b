"""End to end: stage train-seg on the demo data with the smoke profile (weights none)."""

import json

import numpy as np
import pytest

from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.run_folder import MissingArtifactError
from voc_pipeline.segmenter_training import load_segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    return smoke_run, json.loads((smoke_run.run_dir / "metrics.json").read_text())["segmenter"]


def test_stage_writes_its_artifacts(trained_run):
    config, _ = trained_run
    names = {path.name for path in config.run_dir.iterdir()}
    expected = {"segmenter.keras", "segmenter.json", "segmenter_history.csv", "segmenter_curves.png",
                "segmenter_per_class.png", "segmenter_overlays.png", "metrics.json", "splits.json"}
    assert expected <= names, expected - names
    metrics = json.loads((config.run_dir / "metrics.json").read_text())["segmenter"]
    assert len(metrics["iou_per_class"]) == 21 and 0 <= metrics["mean_iou"] <= 1


def test_segmenter_learns_beyond_all_background(trained_run):
    _, metrics = trained_run
    assert metrics["segmentation_dice"] > metrics["all_background_dice"] + 0.2, metrics


def test_saved_segmenter_reloads(trained_run):
    config, _ = trained_run
    model, manifest = load_segmenter(config)
    assert manifest["image_size"] == 96 and model.output_shape == (None, 96, 96, 21)
    assert np.isfinite(model.predict(np.zeros((1, 96, 96, 3), np.uint8), verbose=0)).all()


def test_missing_segmenter_names_the_stage(tmp_path, capsys):
    config = build_config(assignments=[f'runs_dir="{tmp_path}"'])
    with pytest.raises(MissingArtifactError, match="train-seg"):
        load_segmenter(config)
    assert main(["train-seg", "--runs-dir", str(tmp_path), "--data", str(tmp_path / "nothing")]) == 2
