"""The run folder: where stages hand their files to one another, with the configuration that made them.

`config.toml` holds the configuration of the latest stage that ran; `run_info.json` holds one record
per stage: when it ran, with which package version and git commit, what it read (configuration values,
content hashes of its input files, fingerprints of the data) and the content hashes of what it wrote.
`voc_pipeline.graph` compares those records with the present to decide what is current.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from pathlib import Path

from voc_pipeline import __version__
from voc_pipeline.artifacts import CONFIG_FILE, RUN_INFO_FILE
from voc_pipeline.config import Config, config_to_toml
from voc_pipeline.errors import ArtifactError
from voc_pipeline.files import ensure_writable_folder, write_json_atomic, write_text_atomic


def git_commit() -> str | None:
    """The commit of the source checkout this package runs from, if it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def prepare_run_folder(config: Config) -> Path:
    """Create the run folder and save the resolved configuration in it before a stage does any work."""
    run_dir = ensure_writable_folder(config.run_dir)
    write_text_atomic(run_dir / CONFIG_FILE, config_to_toml(config))
    return run_dir


def read_run_info(run_dir: Path) -> dict:
    """The run's stage records ({"stages": {}} for a new run)."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.exists():
        return {"stages": {}}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is unreadable ({error}): it records which stages of the run are done; "
                            f"delete it to rerun every stage of the run") from None


def read_record(run_dir: Path, stage: str) -> dict:
    """The record of `stage` ({} if it never ran in this run folder)."""
    return read_run_info(run_dir)["stages"].get(stage, {})


def write_record(run_dir: Path, stage: str, record: dict) -> None:
    """Replace the record of `stage`, keeping the others."""
    info = read_run_info(run_dir)
    info["stages"][stage] = record
    write_json_atomic(Path(run_dir) / RUN_INFO_FILE, info)


def start_record() -> dict:
    """The beginning of a stage's record (completed and written when the stage finishes)."""
    return {"started": now(), "version": __version__, "git_commit": git_commit()}


_file_hashes: dict[tuple[str, int, int], str] = {}


def hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time within one process)."""
    status = Path(path).stat()
    memo_key = (str(Path(path).resolve()), status.st_size, status.st_mtime_ns)
    if memo_key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _file_hashes[memo_key] = digest.hexdigest()
    return _file_hashes[memo_key]
