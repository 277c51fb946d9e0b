"""The report states how each head was trained from what its training recorded, not from the configuration:
a weights file is pretraining, ConvNeXt's layer norm trains while batch norm stays frozen (every fold's curves
are checked with the K-fold run of test_classifier_stage.py)."""

import keras
import pytest

from voc_pipeline import artifacts
from voc_pipeline.config import build_config
from voc_pipeline.graph import run_until
from voc_pipeline.models.backbones import build_backbone
from voc_pipeline.report_parts import training_text

pytestmark = pytest.mark.slow


def weights_file(folder, backbone: str, **options) -> str:
    """A no-top weights file of `backbone`, as a user attaches one (here from random initialisation)."""
    path = folder / f"{backbone}.weights.h5"
    build_backbone(backbone, 32, "none", **options).save_weights(path)
    keras.backend.clear_session()
    return str(path)


@pytest.fixture(scope="module")
def pretrained_run(demo_root, tmp_path_factory):
    """Both heads from weights files: a ConvNeXt classifier and a MobileNetV2 segmenter, trained for real."""
    folder = tmp_path_factory.mktemp("report-facts")
    assignments = [f'data.root="{demo_root}"', f'runs_dir="{folder / "runs"}"', "run_name='facts'",
                   "classifier.backbone='convnext_tiny'", "classifier.image_size=32",
                   f'classifier.weights="{weights_file(folder, "convnext_tiny")}"', "classifier.head_epochs=1",
                   "classifier.finetune_epochs=1", "classifier.batch_size=8",
                   "segmenter.backbone='mobilenet_v2'", "segmenter.image_size=32", "segmenter.width_multiplier=0.35",
                   f'segmenter.weights="{weights_file(folder, "mobilenet_v2", width_multiplier=0.35)}"',
                   "segmenter.head_epochs=1", "segmenter.finetune_epochs=1", "segmenter.aspp_filters=8",
                   "segmenter.decoder_filters=8"]
    config = build_config("smoke", assignments)
    run_until(config, "train-seg")
    return config.run_dir


def test_a_weights_file_is_pretraining_and_convnext_fine_tunes_its_layer_norm(pretrained_run):
    classifier = training_text(artifacts.read_training_facts(artifacts.CLASSIFIER_MANIFEST, pretrained_run))
    assert classifier.startswith("From pretrained weights loaded from the file `convnext_tiny.weights.h5`, in phases: "
                                 "1 epoch of the head alone on the frozen backbone"), classifier
    assert "its layer norm trains with the layers around it" in classifier and "batch norm" not in classifier
    assert "random" not in classifier


def test_batch_norm_stays_frozen_where_the_backbone_has_it(pretrained_run):
    segmenter = training_text(artifacts.read_training_facts(artifacts.SEGMENTER_MANIFEST, pretrained_run))
    assert segmenter.startswith("From pretrained weights loaded from the file `mobilenet_v2.weights.h5`"), segmenter
    assert "batch norm stays frozen" in segmenter
    facts = artifacts.read_training_facts(artifacts.SEGMENTER_MANIFEST, pretrained_run)
    finetune = next(phase for phase in facts["phases"] if phase["phase"] == "finetune")
    # The segmenter unfreezes the whole backbone but its batch norm: fewer trainable layers than layers.
    assert 0 < finetune["trainable_backbone_layers"] < finetune["backbone_layers"]
    assert f"{finetune['trainable_backbone_layers']} of the backbone's {finetune['backbone_layers']} layers" in segmenter


def test_from_random_weights_every_layer_trains(tiny_run):
    config, _ = tiny_run
    text = training_text(artifacts.read_training_facts(artifacts.CLASSIFIER_MANIFEST, config.run_dir))
    assert text.startswith("From random initial weights (no pretraining), every layer trains from the start: 1 planned "
                           "epoch"), text
    report = artifacts.REPORT.path(config.run_dir).read_text()
    assert text in report
