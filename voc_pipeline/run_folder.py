"""The run folder: where stages hand their files to one another, with the configuration that made them.

`config.toml` holds the configuration of the latest stage that ran; `run_info.json` holds one record
per stage: when it ran, with which package version and git commit, what it read (configuration values,
content hashes of its input files, fingerprints of the data) and the content hashes of what it wrote.
`voc_pipeline.graph` compares those records with the present to decide what is current.

While a stage runs, the run folder is locked (`run_lock`): a second command on the same run stops at
once, naming the command and process that hold it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from voc_pipeline import __version__
from voc_pipeline.artifacts import CONFIG_FILE, RUN_INFO_FILE
from voc_pipeline.config import Config, config_to_toml
from voc_pipeline.errors import ArtifactError, RunLockedError
from voc_pipeline.files import (
    ensure_writable_folder,
    json_kind,
    read_json_file,
    reporting_full_disk,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


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
    """The run's stage records ({"stages": {}} for a new run).

    Raises:
        ArtifactError: the file is cut, not JSON, or not shaped as {"stages": {name: record object}}.
    """
    path = Path(run_dir) / RUN_INFO_FILE
    if not path.exists():
        return {"stages": {}}
    expected = 'the JSON object {"stages": {stage: record}} that records which stages of the run are done'
    remedy = "; delete it to rerun every stage of the run (each stage rewrites its record)"
    info = read_json_file(path, expected, remedy, ArtifactError)
    stages = info.get("stages")
    if not isinstance(stages, dict):
        found = "no \"stages\" key" if stages is None else f"\"stages\" as {json_kind(stages)}"
        raise ArtifactError(f"{path} holds {found}, expected {expected}{remedy}")
    for stage, record in stages.items():
        if not isinstance(record, dict):
            raise ArtifactError(f"{path}: the record of stage {stage!r} is {json_kind(record)}, expected a JSON "
                                f"object{remedy}")
    return info


def read_record(run_dir: Path, stage: str) -> dict:
    """The record of `stage` ({} if it never ran in this run folder)."""
    return read_run_info(run_dir)["stages"].get(stage, {})


def write_record(run_dir: Path, stage: str, record: dict) -> None:
    """Replace the record of `stage`, keeping the others."""
    info = read_run_info(run_dir)
    info["stages"][stage] = record
    write_json_atomic(Path(run_dir) / RUN_INFO_FILE, info)


# The version of what the run folder's files hold; a package that writes them differently raises it, and a run
# made with another format is refused where files are carried between machines (`kernel build --trained`).
ARTIFACT_FORMAT = 2


def start_record() -> dict:
    """The beginning of a stage's record (completed and written when the stage finishes): when, with which
    package and artifact format, where, and on which Python."""
    return {"started": now(), "version": __version__, "artifact_format": ARTIFACT_FORMAT, "git_commit": git_commit(),
            "host": socket.gethostname(), "python": platform.python_version()}


def software_record() -> dict:
    """The TensorFlow and Keras versions and the devices a finished stage ran with, where it loaded them (a stage
    that never imported TensorFlow records neither, and this never imports it)."""
    tensorflow, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
    record = {"tensorflow": getattr(tensorflow, "__version__", None), "keras": getattr(keras, "__version__", None)}
    if tensorflow is not None:
        gpus = [device.name for device in tensorflow.config.list_logical_devices("GPU")]
        record["device"] = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(gpus)})" if gpus else "the CPU"
    return record


# ---------------------------------------------------------------- the run lock


def command_line() -> str:
    """This process's command line, as the user typed it where it is the voc-pipeline command."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program == "-c":
        return shlex.join(["python", "-c", *sys.argv[1:]])
    if program in ("voc-pipeline", "__main__.py"):
        return shlex.join(["voc-pipeline", *sys.argv[1:]])
    return shlex.join([program, *sys.argv[1:]])


def process_is_running(pid: int) -> bool:
    """Whether a process with `pid` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def describe_holder(holder: dict) -> str:
    """Who holds (or held) a lock, from the lock file's record."""
    return (f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, stage "
            f"{holder.get('stage', '?')} since {holder.get('started', '?')})")


def read_holder(stream) -> dict:
    """The record in an open lock file ({} when it is empty or not a record)."""
    stream.seek(0)
    try:
        holder = json.loads(stream.read() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """Who runs a stage of `run_dir` now: the record of its lock file while a live process on this machine holds
    it, else None (no lock file, or one left by a process that ended)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        with open(path, encoding="utf-8") as stream:
            holder = read_holder(stream)
    except OSError:
        return None
    pid = holder.get("pid")
    if holder.get("host", socket.gethostname()) != socket.gethostname() or not isinstance(pid, int):
        return None
    return holder if process_is_running(pid) else None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, stage: str) -> Iterator[None]:
    """Hold the run folder's lock while the block runs a stage.

    The lock is an advisory `flock` on `<run>/.lock`, which the system releases when its process ends
    however it ends (kill -9 included); the file records who holds it, for the message another command
    gives. A record left by a process that no longer runs is taken over, with a warning naming it.

    Raises:
        RunLockedError: another process holds the lock; the message names its command and pid.
    """
    path = Path(run_dir) / LOCK_FILE
    while True:
        stream = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(stream)
            stream.close()
            raise RunLockedError(
                f"run folder {run_dir} is in use: {describe_holder(holder)} holds its lock ({path}); wait until that "
                f"command ends, or give this one another --run") from None
        try:
            same_file = os.fstat(stream.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        stream.close()  # the holder removed the file between our open and our lock: lock the new one
    try:
        earlier = read_holder(stream)
        if earlier:
            pid = earlier.get("pid")
            alive = earlier.get("host") == socket.gethostname() and isinstance(pid, int) and process_is_running(pid)
            logger.warning("run folder %s: taking over the lock left by %s, %s", run_dir, describe_holder(earlier),
                           "which no longer holds it" if alive else "which is no longer running")
        stream.seek(0)
        stream.truncate()
        stream.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
                                 "stage": stage, "started": now()}))
        stream.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        stream.close()


@contextlib.contextmanager
def running_stage(run_dir: str | os.PathLike, stage: str) -> Iterator[None]:
    """What holds while `stage` runs in `run_dir`: the run lock, and a full disk met anywhere in the stage
    (a Keras checkpoint, a plot, an artifact) ending as one DiskFullError.

    Raises:
        RunLockedError: another command is running a stage of this run.
        DiskFullError: the disk filled; the stage's record is not updated, so it reruns next time.
    """
    run_dir = ensure_writable_folder(run_dir)
    unchanged = (f"every file is whole (each is replaced only once written in full) and stage {stage}'s record is "
                 f"not updated, so it reruns next time")
    with reporting_full_disk(run_dir, unchanged), run_lock(run_dir, stage):  # the lock's record is a write too
        yield
