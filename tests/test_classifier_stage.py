"""End to end: stages train-cls and tune on the demo data with the smoke profile (weights none)."""

import json

import keras
import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.core.baseline import baseline_flags
from voc_pipeline.core.scoring import classification_row_scores
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.demo import write_demo_data
from voc_pipeline.data.splits import load_splits, positions_of
from voc_pipeline.graph import run_until
from voc_pipeline.models.classifier import predict_probabilities
from voc_pipeline.report_parts import CLASSIFIER_FIGURES, REPORT_FIGURES, epochs_text, figures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    return (smoke_run, artifacts.read_metrics(smoke_run.run_dir, "train-cls"),
            artifacts.read_metrics(smoke_run.run_dir, "tune")["thresholds"])


def test_stage_writes_its_artifacts(trained_run):
    config, _, _ = trained_run
    names = {path.name for path in config.run_dir.iterdir()}
    expected = {"classifier.keras", "classifier.json", "classifier_validation.npz", "classifier_history.csv",
                "classifier_curves.png", "thresholds.json", "threshold_comparison.md", "classifier_per_class.png",
                "metrics", "config.toml", "run_info.json"}
    assert expected <= names, expected - names
    assert not list(config.run_dir.rglob(".*.tmp")), "no temporary files are left behind"
    assert not list((config.run_dir / "checkpoints").glob("*")), "a finished training leaves no checkpoint state"
    thresholds = json.loads((config.run_dir / "thresholds.json").read_text())
    assert len(thresholds["thresholds"]) == 20 and all(0 < t < 1 for t in thresholds["thresholds"].values())
    assert {"train-cls.json", "tune.json"} <= {path.name for path in (config.run_dir / "metrics").iterdir()}


def test_classifier_learns_beyond_the_most_frequent_class_baseline(trained_run):
    config, _, tuning = trained_run
    train = load_split(config.data.root, "train", show_progress=False)
    splits = load_splits(config.run_dir / "splits.json")
    fit_labels = train.labels[positions_of(train.ids, splits.train_ids)]
    validation_labels = train.labels[positions_of(train.ids, splits.validation_ids)]
    baseline = classification_row_scores(baseline_flags(fit_labels, len(validation_labels)), validation_labels).mean()
    assert tuning["flip_tta"]["global"] > baseline + 0.1, (tuning["flip_tta"], baseline)
    # Tuning per class can only match or beat one global threshold on the images it was tuned on.
    for row in (tuning["plain"], tuning["flip_tta"]):
        assert row["per_class"] >= row["global"] >= row["threshold_0.5"] - 1e-9


def test_saved_models_reload_and_reproduce_the_validation_probabilities(trained_run):
    config, _, _ = trained_run
    models, manifest = artifacts.load_classifiers(config.run_dir)
    assert manifest["models"] == ["classifier.keras"] and manifest["image_size"] == 96
    assert isinstance(models[0], keras.Model)
    train = load_split(config.data.root, "train", show_progress=False)
    with np.load(config.run_dir / "classifier_validation.npz") as saved:
        positions = positions_of(train.ids, saved["ids"])
        np.testing.assert_allclose(predict_probabilities(models, [train.images[p] for p in positions], flip_tta=True),
                                   saved["probabilities_flip_tta"], atol=1e-5)


def test_tune_without_a_trained_classifier_names_the_stage(tmp_path, demo_root, capsys):
    arguments = ["--data", str(demo_root), "--runs-dir", str(tmp_path), "--run", "empty", "--profile", "smoke"]
    assert main(["data", "check", *arguments]) == 0
    assert main(["tune", *arguments]) == 2
    assert "stage tune needs stage train-cls of run 'empty', which is not run" in capsys.readouterr().err


def test_kfold_training_gives_out_of_fold_probabilities_for_every_image(tmp_path):
    root = write_demo_data(tmp_path / "demo", num_train=30, num_test=2, seed=4)
    settings = [f'data.root="{root}"', f'runs_dir="{tmp_path / "runs"}"', "classifier.backbone='simple_cnn'",
                "classifier.image_size=32", "classifier.head_epochs=1", "classifier.finetune_epochs=0"]
    assert run_until(build_config("smoke", settings), "train-cls")["train-cls"] == "ran"
    assert (tmp_path / "runs" / "default" / "classifier.keras").exists()
    config = build_config("smoke", [*settings, "classifier.kfold=true"])
    assert run_until(config, "train-cls")["train-cls"] == "ran"
    assert not (config.run_dir / "classifier.keras").exists(), "the holdout model of the earlier run is removed"
    metrics = artifacts.read_metrics(config.run_dir, "train-cls")
    assert metrics["validation"] == "out-of-fold" and metrics["validation_images"] == 30
    models, manifest = artifacts.load_classifiers(config.run_dir)
    assert manifest["models"] == ["classifier_fold0.keras", "classifier_fold1.keras", "classifier_fold2.keras"]
    assert len(models) == 3
    with np.load(config.run_dir / "classifier_validation.npz") as saved:
        assert sorted(saved["ids"].tolist()) == list(range(30)) and not np.isnan(saved["probabilities"]).any()
    # The report shows every fold's learning curves, and says how many epochs each fold trained.
    shown = {figure.path.name for figure in figures(config.run_dir, CLASSIFIER_FIGURES)}
    assert {f"classifier_curves_fold{fold}.png" for fold in range(3)} <= shown
    assert shown <= {figure.path.name for figure in figures(config.run_dir, REPORT_FIGURES)}
    assert epochs_text(config.run_dir, artifacts.CLASSIFIER_HISTORY).endswith(
        "per fold (3 folds) (from random weights, all layers 1)")
