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

    info_path = run_dir / RUN_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {"stages": {}}
    info["stages"][stage] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "version": __version__,
        "git_commit": git_commit(),
        "config": config_to_dict(config),
    }
    write_json_atomic(info_path, info)
    return run_dir


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
