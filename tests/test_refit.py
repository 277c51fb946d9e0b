"""The refit on every image: the epochs it takes from validation, and the record of which models predict."""

import json

import pytest

from voc_pipeline import artifacts
from voc_pipeline.errors import ArtifactError
from voc_pipeline.models.training import Phase, refit_phases
from voc_pipeline.stages.evaluate import final_models_text

PHASES = [Phase("head", 3, 1e-3, 0, 0.0), Phase("finetune", 10, 1e-4, 2, 0.5, 0.8)]


def history(scores: list[float], head_epochs: int = 3) -> list[dict]:
    return [{"epoch": epoch, "phase": "head" if epoch <= head_epochs else "finetune", "val_pr_auc": score}
            for epoch, score in enumerate(scores, start=1)]


@pytest.mark.parametrize(("scores", "expected"), [
    ([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.5], [("head", 3), ("finetune", 2)]),  # stopped early after a fine-tuning peak
    ([0.1, 0.8, 0.3, 0.4, 0.5], [("head", 2)]),                              # the head's epoch was kept: no fine-tuning
    ([0.1, 0.2, 0.3, *[0.5] * 10], [("head", 3), ("finetune", 1)]),          # a tie keeps the first, as the checkpoint does
    ([0.1, 0.2, 0.3, *range(10)], [("head", 3), ("finetune", 10)]),          # the whole schedule
])
def test_the_refit_runs_each_phase_up_to_the_kept_epoch(scores, expected):
    phases = refit_phases(PHASES, history(scores), "val_pr_auc")
    assert [(phase.name, phase.epochs) for phase in phases] == expected
    for phase, planned in zip(phases, PHASES):
        assert (phase.learning_rate, phase.warmup_epochs, phase.trainable_fraction, phase.layer_decay) == (
            planned.learning_rate, planned.warmup_epochs, planned.trainable_fraction, planned.layer_decay)


def test_a_history_without_a_finite_score_has_no_epoch_to_refit_to():
    with pytest.raises(ValueError, match="no epoch of the training history has a finite val_pr_auc"):
        refit_phases(PHASES, history([float("nan")] * 3), "val_pr_auc")


def test_the_report_says_which_models_made_the_test_predictions():
    text = final_models_text({
        "classifier": {"models": ["refit_classifier.keras"], "trained_on": "fit + validation", "images": 749,
                       "refit": True, "epochs": {"head": 3, "finetune": 12}},
        "segmenter": {"models": ["segmenter.keras"], "trained_on": "fit part", "images": 636, "refit": False}})
    assert "- classifier: `refit_classifier.keras`, trained on fit + validation (749 images) (refit after tune, " \
           "epochs head 3, finetune 12" in text
    assert "- segmenter: `segmenter.keras`, trained on fit part (636 images)." in text


def test_a_final_model_replaced_after_the_refit_is_refused(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for name in ("classifier.keras", "segmenter.keras"):
        model.save(tmp_path / name)
    from voc_pipeline.files import hash_file

    entry = {"trained_on": "fit part", "images": 1, "refit": False}
    manifest = {"classifier": {**entry, "models": ["classifier.keras"], "sha256": [hash_file(tmp_path / "classifier.keras")]},
                "segmenter": {**entry, "models": ["segmenter.keras"], "sha256": ["0" * 64]}}
    artifacts.FINAL_MODELS.path(tmp_path).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="segmenter.keras is not the model stage refit chose"):
        artifacts.load_final_models(tmp_path)
    manifest["segmenter"]["sha256"] = [hash_file(tmp_path / "segmenter.keras")]
    artifacts.FINAL_MODELS.path(tmp_path).write_text(json.dumps(manifest))
    classifiers, segmenter, _ = artifacts.load_final_models(tmp_path)
    assert len(classifiers) == 1 and segmenter is not None


def test_the_attack_costs_a_forward_per_taped_step_two_per_backward_and_the_scoring():
    from voc_pipeline.bench import attack_flops
    from voc_pipeline.config import build_config

    config = build_config(assignments=["attack.pgd_steps=10", "attack.num_images=4", "attack.epsilons=[2.0, 8.0]"])
    # FGSM: 4 * 1 + 1 + 2 = 7 passes; PGD of 10 steps: 4 * 10 + 1 + 2 = 43; three classifier attacks and one
    # segmenter attack at each of 2 budgets on 4 images.
    assert attack_flops(config, classifier_flops=1.0, segmenter_flops=0.0) == 4 * 2 * (7 + 43) * 3
    assert attack_flops(config, classifier_flops=0.0, segmenter_flops=1.0) == 4 * 2 * (7 + 43)


@pytest.mark.slow
def test_the_estimate_counts_the_refit_and_the_attack(capsys):
    from voc_pipeline.bench import bench_estimate
    from voc_pipeline.config import build_config

    tiny = ["classifier.backbone='simple_cnn'", "classifier.image_size=32", "classifier.batch_size=2",
            "segmenter.image_size=32", "segmenter.batch_size=2"]
    without = bench_estimate(build_config("smoke", tiny))
    with_refit = bench_estimate(build_config("smoke", [*tiny, "classifier.refit_all=true", "segmenter.refit_all=true"]))
    printed = capsys.readouterr().out
    assert "classifier refit (every image)" in printed and "adversarial attack" in printed and "ESTIMATE" in printed
    assert "estimated_hours_classifier_refit_low" not in without and without["estimated_hours_adversarial_attack_low"] > 0
    assert with_refit["estimated_hours_total_high"] > without["estimated_hours_total_high"]
    # A refit of every planned epoch on 749 images costs 3 forwards an image, as the first training's fit part does.
    ratio = with_refit["estimated_hours_classifier_refit_high"] / with_refit["estimated_hours_classifier_training_high"]
    assert 1.0 < ratio < 1.25
