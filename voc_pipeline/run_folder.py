"""The run folder: where stages hand their files to one another, with the configuration that made them."""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
from pathlib import Path

from voc_pipeline import __version__
from voc_pipeline.config import Config, config_to_dict, config_to_toml
from voc_pipeline.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
RUN_INFO_FILE = "run_info.json"


class MissingArtifactError(FileNotFoundError):
    """A stage needs a file that an earlier stage of the run should have written."""


def git_commit() -> str | None:
    """The commit of the source checkout this package runs from, if it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def prepare_run_folder(config: Config, stage: str) -> Path:
    """Create the run folder and save the resolved configuration before `stage` does any work.

    The configuration of the latest stage is `config.toml`; `run_info.json` records, per stage, when it
    started, the package version and the git commit. A configuration that differs from the one an
    earlier stage saved is logged key by key, since artifacts in the folder may come from either.
    """
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    new_text = config_to_toml(config)
    if config_path.exists() and config_path.read_text() != new_text:
        logger.warning("%s: the configuration differs from the one saved by an earlier stage:", config_path)
        old_lines, new_lines = set(config_path.read_text().splitlines()), set(new_text.splitlines())
        for line in sorted(old_lines ^ new_lines):
            logger.warning("  %s %s", "-" if line in old_lines else "+", line)
    write_text_atomic(config_path, new_text)

    info = read_run_info(config)
    info["stages"][stage] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": __version__,
        "git_commit": git_commit(),
        "config": config_to_dict(config),
    }
    write_json_atomic(run_dir / RUN_INFO_FILE, info)
    return run_dir


# Which configuration sections each stage depends on: a finished stage reruns only when one of them changed.
STAGE_SECTIONS = {
    "data": ("seed", "data"),
    "train-cls": ("seed", "mixed_precision", "deterministic", "data", "classifier"),
    "tune": ("seed", "data", "classifier", "thresholds"),
    "train-seg": ("seed", "mixed_precision", "deterministic", "data", "segmenter"),
    "predict": ("seed", "data", "classifier", "thresholds", "segmenter", "predict"),
    "submit": ("seed", "data", "classifier", "thresholds", "segmenter", "predict", "submit"),
    "evaluate": ("seed", "data", "classifier", "thresholds", "segmenter", "predict"),
    "attack": ("seed", "data", "classifier", "thresholds", "segmenter", "attack"),
}
# Stages whose results depend on a stage's outputs, and so become stale when it runs again.
DOWNSTREAM = {
    "data": ("train-cls", "tune", "train-seg", "predict", "submit", "evaluate", "attack"),
    "train-cls": ("tune", "predict", "submit", "evaluate", "attack"),
    "tune": ("predict", "submit", "evaluate", "attack"),
    "train-seg": ("predict", "submit", "evaluate", "attack"),
    "attack": ("evaluate",),
    "predict": ("submit",),
}


def relevant_config(config: Config, stage: str) -> dict:
    """The parts of the configuration a stage depends on."""
    plain = config_to_dict(config)
    return {key: plain[key] for key in STAGE_SECTIONS.get(stage, tuple(plain))}


def read_run_info(config: Config) -> dict:
    path = config.run_dir / RUN_INFO_FILE
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def stage_is_finished(config: Config, stage: str) -> bool:
    """True when `stage` finished in this run folder with the same relevant configuration."""
    record = read_run_info(config)["stages"].get(stage, {})
    return bool(record.get("finished")) and record.get("relevant_config") == relevant_config(config, stage)


def mark_stage_finished(config: Config, stage: str) -> None:
    """Record that `stage` finished, and mark the stages that use its outputs as needing a rerun."""
    info = read_run_info(config)
    record = info["stages"].setdefault(stage, {})
    record["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record["relevant_config"] = relevant_config(config, stage)
    for later in DOWNSTREAM.get(stage, ()):
        info["stages"].get(later, {}).pop("finished", None)
    write_json_atomic(config.run_dir / RUN_INFO_FILE, info)


def require_artifact(config: Config, name: str, produced_by: str) -> Path:
    """Path of an artifact in the run folder, or an error naming the stage (command) that makes it."""
    path = config.run_dir / name
    if not path.exists():
        raise MissingArtifactError(
            f"{path} is missing: it is written by `voc-pipeline {produced_by}` (make {produced_by}); "
            f"run that stage for run {config.run_name!r} first"
        )
    return path


METRICS_FILE = "metrics.json"


def update_metrics(config: Config, section: str, values: dict) -> Path:
    """Replace one stage's section of the run's metrics.json, keeping the other stages' sections."""
    path = config.run_dir / METRICS_FILE
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[section] = values
    return write_json_atomic(path, metrics)


def read_metrics(config: Config) -> dict:
    """The run's metrics.json (empty if no stage wrote one yet)."""
    path = config.run_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
