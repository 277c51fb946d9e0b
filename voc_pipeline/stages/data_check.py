"""Stage `data` (`voc-pipeline data check`): load and validate both splits, write the splits and a summary."""

from __future__ import annotations

import logging

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.data.competition import data_identity, load_competition_data, summarize
from voc_pipeline.data.splits import make_splits, save_splits
from voc_pipeline.files import write_json_atomic

logger = logging.getLogger(__name__)


def run_data_check(config: Config) -> dict:
    """Stage `data`: writes splits.json (stratified holdout and K folds, by seed) and data_summary.json;
    returns the summary."""
    root = config.data.root
    train, test = load_competition_data(root)
    splits = make_splits(train.ids, train.labels, config.data.validation_fraction, config.data.num_folds, config.seed)
    save_splits(splits, artifacts.SPLITS.path(config.run_dir))
    summary = {"root": root, "train": summarize(train) | data_identity(root, train),
               "test": summarize(test) | data_identity(root, test),
               "train_split": len(splits.train_ids), "validation_split": len(splits.validation_ids)}
    write_json_atomic(artifacts.DATA_SUMMARY.path(config.run_dir), summary)
    logger.info("data: %d train (%d fit, %d validation), %d test images from %s",
                len(train), len(splits.train_ids), len(splits.validation_ids), len(test), root)
    return summary
