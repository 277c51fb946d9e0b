"""Stage `refit`: name the models that make the test predictions, training them again on every image if asked.

With `classifier.refit_all` or `segmenter.refit_all`, a head is trained again from its starting weights on
the fit and validation images together, for the epochs of each phase that its first training had run when
validation chose its kept epoch (nothing is held out, so every epoch runs and the last is kept). Tune has
already chosen the thresholds and rules on validation with the first models; the refit models inherit them.
A K-fold classifier already learnt from every image and stays as it is. Without refit_all a head's first
model is named as it is, and nothing trains, unless stage `self-train` kept its self-trained models: those are
named instead (self-training and refit_all exclude each other, config.check_self_training).

final_models.json records, for each head, the model files, their hashes and what they were trained on;
`predict` loads exactly those and the report says which they were.
"""

from __future__ import annotations

import logging

import numpy as np

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.files import hash_file, write_json_atomic

logger = logging.getLogger(__name__)


def first_models(run_dir, names: list[str], images: int, trained_on: str) -> dict:
    """The final-model entry of a head whose first model(s) make the test predictions."""
    return {"models": names, "sha256": [hash_file(run_dir / name) for name in names], "trained_on": trained_on,
            "images": images, "refit": False}


def self_trained(run_dir, self_training: dict, head: str, fit_images: int) -> dict:
    """The final-model entry of a head whose self-trained model won on validation (stage self-train)."""
    try:
        name, pseudo = self_training["models"][head], int(self_training["pseudo_labelled_images"])
        rounds, recorded = int(self_training["rounds_trained"]), self_training["sha256"][head]
    except (KeyError, TypeError, ValueError) as error:
        raise artifacts.unreadable(artifacts.SELF_TRAINING.path(run_dir), "self-train", f"no valid field {error}") from None
    digest = hash_file(run_dir / name)
    if digest != recorded:
        raise artifacts.unreadable(run_dir / name, "self-train", "its bytes are not those self_training.json recorded")
    return {"models": [name], "sha256": [digest], "images": fit_images + pseudo, "refit": False,
            "trained_on": f"fit part + {pseudo} pseudo-labelled test images ({rounds} round{'' if rounds == 1 else 's'} "
                          f"of self-training)",
            "self_trained": True}


def every_labelled_position(train, splits) -> np.ndarray:
    """Positions in the train set of the fit and the validation images together."""
    from voc_pipeline.data.splits import positions_of

    return np.sort(np.concatenate([positions_of(train.ids, splits.train_ids), positions_of(train.ids, splits.validation_ids)]))


def run_refit(config: Config) -> dict:
    """Stage `refit`: writes final_models.json and, for each head with refit_all, refit_<head>.keras with its
    history and curves; returns what each head's final model was trained on."""
    run_dir = config.run_dir
    splits = artifacts.read_splits(run_dir)
    classifier_manifest = artifacts.read_json(artifacts.CLASSIFIER_MANIFEST, run_dir)
    segmenter_manifest = artifacts.read_json(artifacts.SEGMENTER_MANIFEST, run_dir)
    fit_images, every_image = len(splits.train_ids), len(splits.train_ids) + len(splits.validation_ids)
    kfold = classifier_manifest.get("validation") == "out-of-fold"
    if kfold:
        classifier = first_models(run_dir, classifier_manifest["models"], every_image,
                                  "K-fold ensemble (each fold's model on the other folds: every image)")
        if config.classifier.refit_all:
            logger.info("classifier.refit_all: the K-fold classifier already learnt from every image; it stays as it is")
    else:
        classifier = first_models(run_dir, classifier_manifest["models"], fit_images, "fit part")
    segmenter = first_models(run_dir, [segmenter_manifest["model"]], fit_images, "fit part")
    self_training = artifacts.read_json(artifacts.SELF_TRAINING, run_dir)
    if self_training.get("kept"):
        classifier, segmenter = (self_trained(run_dir, self_training, head, fit_images) for head in ("classifier", "segmenter"))
    refit_classifier_now = config.classifier.refit_all and not kfold
    if refit_classifier_now or config.segmenter.refit_all:
        from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER, training_setup
        from voc_pipeline.models.training import choose_strategy

        train, _, policy = training_setup(config)
        positions = every_labelled_position(train, splits)
        strategy = choose_strategy()
        if refit_classifier_now:
            classifier = refit(config, CLASSIFIER, "train-cls", train, positions, strategy, policy)
        if config.segmenter.refit_all:
            segmenter = refit(config, SEGMENTER, "train-seg", train, positions, strategy, policy)

    classifier |= {"backbone": classifier_manifest["backbone"], "image_size": classifier_manifest["image_size"]}
    segmenter |= {"backbone": segmenter_manifest["backbone"], "image_size": segmenter_manifest["image_size"],
                  "output_stride": segmenter_manifest["output_stride"]}
    write_json_atomic(artifacts.FINAL_MODELS.path(run_dir), {"classifier": classifier, "segmenter": segmenter})
    for head, entry in (("classifier", classifier), ("segmenter", segmenter)):
        logger.info("the test predictions' %s: %s (%s, %d images)", head, ", ".join(entry["models"]), entry["trained_on"],
                    entry["images"])
    return {head: {key: entry[key] for key in ("models", "trained_on", "images", "refit")} | {"epochs": entry.get("epochs", {})}
            for head, entry in (("classifier", classifier), ("segmenter", segmenter))}


def refit(config: Config, head, stage: str, train, positions: np.ndarray, strategy, policy: str) -> dict:
    """Train `head` again on `positions` for the epochs stage `stage`'s kept model had trained; its final-model entry."""
    from voc_pipeline.models.heads import refit_head
    from voc_pipeline.models.training import plan_phases, refit_phases

    run_dir = config.run_dir
    history = artifacts.read_history(run_dir, head.model_files(run_dir).history.name, stage)
    phases = refit_phases(plan_phases(head.settings(config)), history, head.monitor)
    logger.info("refitting the %s on %d images: %s", head.name, len(positions),
                ", ".join(f"{phase.name} {phase.epochs} epochs" for phase in phases))
    trained = refit_head(config, head, train, positions, phases, strategy)
    name = artifacts.refit_model_file(head.name)
    return {"models": [name], "sha256": [hash_file(run_dir / name)], "trained_on": "fit + validation",
            "images": len(positions), "refit": True, "epochs": {phase.name: phase.epochs for phase in phases},
            "precision_policy": policy, "training": trained.facts}
