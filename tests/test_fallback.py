"""Never worse than the trivial answer: a run whose models learnt less than the most frequent class tells falls
back to that class with a centre box, and says so in the log, report.md and the notebook."""

import json

import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.core.baseline import centre_box_map, most_frequent_class
from voc_pipeline.data.competition import load_split
from voc_pipeline.data.splits import positions_of
from voc_pipeline.report_parts import joint_part

pytestmark = pytest.mark.slow


def test_models_that_learnt_less_than_the_trivial_answer_fall_back_to_it(tiny_run):
    """The shared tiny run trains each head for one epoch at 32 px: the constructed case where the trivial answer
    wins (on validation it scores several times the models' answer)."""
    config, _ = tiny_run
    estimate = artifacts.read_metrics(config.run_dir, "tune")["joint"]["estimate"]
    assert estimate["fell_back"] and estimate["trivial"] > estimate["score"]
    train = load_split(config.data.root, "train", show_progress=False)
    splits = artifacts.read_splits(config.run_dir)
    expected = most_frequent_class(train.labels[positions_of(train.ids, splits.train_ids)])
    rule = json.loads(artifacts.JOINT_RULE.path(config.run_dir).read_text())["rule"]
    assert rule["trivial_class"] == expected
    arrays, label_maps = artifacts.read_test_predictions(config.run_dir)
    assert (arrays["flags"].sum(1) == 1).all() and (arrays["flags"][:, expected] == 1).all()
    for label_map in label_maps:
        np.testing.assert_array_equal(label_map, centre_box_map(*label_map.shape, expected))
    assert "**Warning: the trivial answer wins.**" in artifacts.REPORT.path(config.run_dir).read_text()
    assert "The trivial answer wins here" in joint_part(config.run_dir)[0]


def test_models_that_beat_the_trivial_answer_keep_their_own(smoke_run):
    estimate = artifacts.read_metrics(smoke_run.run_dir, "tune")["joint"]["estimate"]
    assert not estimate["fell_back"] and estimate["score"] > estimate["trivial"]
    assert json.loads(artifacts.JOINT_RULE.path(smoke_run.run_dir).read_text())["rule"]["trivial_class"] is None
