"""A trained run, carried to the notebook that predicts from it: checked and packed here, installed and
checked again where the notebook runs.

A run that has reached `refit` holds everything the test predictions depend on: the stages of
`graph.TRAINED_STAGES` and the files their records name (the final models among them, with the hashes
`final_models.json` gives). `pack_run` copies exactly those files, the run's `config.toml` and those stages'
records into a folder with a manifest (`voc-pipeline-run.json`): a Kaggle dataset pushed beside the notebook
(`kernel build --trained`), or the output of a training kernel (`kernel pack-run` in it). `install_run` puts
them back into a run folder where the notebook runs, checks each file's bytes and that the competition data
attached there is the data the run was trained on; the stage graph then finds the carried stages current by
the same content keys it uses anywhere, so `run --no-training` predicts, submits, evaluates and attacks, and
never trains.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from voc_pipeline import __version__, artifacts
from voc_pipeline.errors import KernelError
from voc_pipeline.files import atomic_directory, hash_file, read_json_file, write_json_atomic
from voc_pipeline.run_folder import ARTIFACT_FORMAT, describe_holder, lock_holder, read_run_info

MANIFEST_FILE = "voc-pipeline-run.json"
RUN_DATASET_PREFIX = "voc-pipeline-run-"


def trained_stages() -> tuple[str, ...]:
    from voc_pipeline.graph import TRAINED_STAGES

    return TRAINED_STAGES


def rerun_hint(run_dir: Path) -> str:
    return (f"`voc-pipeline run --until refit --run {run_dir.name} --runs-dir {run_dir.parent} --profile "
            f"{run_dir / artifacts.CONFIG_FILE}` (make refit RUN={run_dir.name} ...)")


def check_trained_run(run_dir: str | Path) -> list[str]:
    """The files (relative to `run_dir`) a notebook predicting from this run needs, once the run is checked.

    Raises:
        KernelError: not a run folder; a command running in it now; a stage of TRAINED_STAGES not finished; a run
            made with another artifact format (both versions named); a file those stages wrote that is missing or
            whose bytes changed since; a final model whose hash is not the one final_models.json records.
    """
    run_dir = Path(run_dir)
    if not (run_dir / artifacts.RUN_INFO_FILE).is_file() or not (run_dir / artifacts.CONFIG_FILE).is_file():
        raise KernelError(f"{run_dir} is not a trained run folder (it has no {artifacts.RUN_INFO_FILE} and "
                          f"{artifacts.CONFIG_FILE}): train one first, e.g. `make refit RUN=NAME PROFILE=...`")
    holder = lock_holder(run_dir)
    if holder:
        raise KernelError(f"run {run_dir} is still running: {describe_holder(holder)} holds its lock "
                          f"({run_dir / '.lock'}); wait until it ends, then build again")
    records = read_run_info(run_dir)["stages"]
    files = [artifacts.CONFIG_FILE, artifacts.RUN_INFO_FILE]
    for stage in trained_stages():
        record = records.get(stage, {})
        if not record.get("finished"):
            raise KernelError(f"run {run_dir} has not reached refit: stage {stage} has not run there; run {rerun_hint(run_dir)}")
        made_with = record.get("artifact_format", 1)
        if made_with != ARTIFACT_FORMAT:
            raise KernelError(f"run {run_dir} was made by voc-pipeline {record.get('version', 'before 0.2.0')} (artifact "
                              f"format {made_with}); this voc-pipeline {__version__} reads format {ARTIFACT_FORMAT} only: "
                              f"train it again with this version (delete {run_dir / artifacts.RUN_INFO_FILE}, then "
                              f"{rerun_hint(run_dir)})")
        for name, digest in record.get("outputs", {}).items():
            path = run_dir / name
            if not path.is_file():
                raise KernelError(f"{path} is missing: stage {stage} wrote it and the notebook needs it; run {rerun_hint(run_dir)}")
            if hash_file(path) != digest:
                raise KernelError(f"{path} changed since stage {stage} wrote it (its sha256 is not the one "
                                  f"{artifacts.RUN_INFO_FILE} records); run {rerun_hint(run_dir)} --force")
            files.append(name)
    final = artifacts.read_json(artifacts.FINAL_MODELS, run_dir)
    for head in ("classifier", "segmenter"):
        for name, digest in zip(final[head]["models"], final[head]["sha256"], strict=True):
            if hash_file(run_dir / name) != digest:
                raise KernelError(f"{run_dir / name} is not the {head} stage refit chose: its sha256 differs from the one "
                                  f"{artifacts.FINAL_MODELS.pattern} records; run {rerun_hint(run_dir)}")
    return sorted(set(files))


def content_hash(files: dict[str, str]) -> str:
    """One hash of a carried run's files (relative path -> sha256): what decides whether its dataset is uploaded."""
    return hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in sorted(files.items())).encode()).hexdigest()


def saved_keras_version(path: Path) -> str | None:
    """The Keras version a .keras file was saved with (its metadata.json), None if it does not say."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# The model files (by sha256) that loaded on Kaggle's stack, kept in its folder: it is rebuilt when its versions change.
LOADED_RECORD = ".voc-pipeline-loaded-models.json"
# Loads a model as `predict` will where the notebook runs (voc_pipeline.artifacts.load_model_file).
LOAD_WITH_THE_PACKAGE = ("import sys; from pathlib import Path; from voc_pipeline.artifacts import load_model_file; "
                         "load_model_file(Path(sys.argv[1]), 'refit')")


def check_models_load_on_kaggle(run_dir: Path, names: list[str]) -> list[str]:
    """Each carried model saved by a newer Keras than Kaggle's image (kaggle/image.toml) is loaded in Kaggle's stack
    (.venv-kaggle, built if missing) as `predict` loads it there; returns a line per model saying so. A model file
    that loaded there once is remembered by its hash in the stack's folder, so a push that changes only the notes
    does not load it again.

    Raises:
        KernelError: a model does not load there; the message names the file and both Keras versions.
    """
    from voc_pipeline.kernel.stack import build_stack_environment, read_image

    kaggle_keras = read_image().packages.get("keras", "0")
    newer = {name: version for name in names if name.endswith(".keras")
             and (version := saved_keras_version(run_dir / name)) and version_tuple(version) > version_tuple(kaggle_keras)}
    if not newer:
        return []
    python = build_stack_environment()
    record = python.parent.parent / LOADED_RECORD
    loaded = set(json.loads(record.read_text())) if record.is_file() else set()
    lines = []
    for name, version in newer.items():
        digest = hash_file(run_dir / name)
        if digest not in loaded:
            result = subprocess.run([str(python), "-c", LOAD_WITH_THE_PACKAGE, str((run_dir / name).resolve())],
                                    capture_output=True, text=True)
            if result.returncode:
                last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise KernelError(f"{run_dir / name} was saved by Keras {version} and does not load on Kaggle's Keras "
                                  f"{kaggle_keras} ({last}); train the run on Kaggle's versions (`make kaggle-train`, or "
                                  f"a local environment with keras=={kaggle_keras}) and build again")
            loaded.add(digest)
            write_json_atomic(record, sorted(loaded))
        lines.append(f"{name}: saved by Keras {version}, loads on Kaggle's Keras {kaggle_keras}")
    return lines


def run_dataset_slug(run_name: str) -> str:
    """The Kaggle dataset slug of a carried run: voc-pipeline-run-<name>, in Kaggle's alphabet."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", run_name.lower())).strip("-") or "run"
    return (RUN_DATASET_PREFIX + name)[:50].rstrip("-")


def pack_run(run_dir: str | Path, folder: str | Path) -> dict:
    """Copy a checked trained run's files (`check_trained_run`) into `folder`, with its manifest; returns the
    manifest."""
    run_dir = Path(run_dir)
    names = check_trained_run(run_dir)
    info = read_run_info(run_dir)
    kept = {"stages": {stage: record for stage, record in info["stages"].items() if stage in trained_stages()}}
    with atomic_directory(folder, overwrite=True) as target:
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            if name == artifacts.RUN_INFO_FILE:
                write_json_atomic(target / name, kept)
            else:
                shutil.copyfile(run_dir / name, target / name)
        files = {name: hash_file(target / name) for name in names}
        manifest = {"run": run_dir.name, "package_version": __version__, "artifact_format": ARTIFACT_FORMAT,
                    "stages": list(trained_stages()), "files": files, "content_sha256": content_hash(files),
                    "bytes": sum((target / name).stat().st_size for name in names)}
        write_json_atomic(target / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    """A carried run's manifest, or a KernelError naming what is wrong with it."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise KernelError(f"{folder} holds no carried run ({MANIFEST_FILE} is missing): attach the dataset `kernel build "
                          f"--trained` made, or the output of a training kernel (`make kaggle-train`)")
    manifest = read_json_file(path, "a carried run's manifest", error_type=KernelError)
    if manifest.get("artifact_format") != ARTIFACT_FORMAT:
        raise KernelError(f"{path}: the run was packed by voc-pipeline {manifest.get('package_version', '?')} (artifact "
                          f"format {manifest.get('artifact_format', '?')}); this voc-pipeline {__version__} reads format "
                          f"{ARTIFACT_FORMAT} only: build the notebook from a run trained with this version")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("run"), str):
        raise KernelError(f"{path} names no run and no files: pack the run again")
    return manifest


def find_carried_run(input_dir: str | Path) -> Path:
    """The one folder under `input_dir` (Kaggle's /kaggle/input) holding a carried run's manifest."""
    found = sorted(path.parent for path in Path(input_dir).rglob(MANIFEST_FILE))
    if len(found) != 1:
        raise KernelError(f"{'no' if not found else len(found)} carried runs under {input_dir} "
                          f"({', '.join(map(str, found))}): attach exactly one (`kernel build --trained` or --from-kernel)")
    return found[0]


def install_run(source: str | Path, runs_dir: str | Path, data_root: str | Path) -> Path:
    """Put a carried run into `runs_dir`/<its name>, each file checked against its manifest, and check that the data
    under `data_root` is the data it was trained on; returns the run folder.

    Raises:
        KernelError: a file missing or damaged on the way (named); the data differs (both fingerprints, and
            whether the image count, the ids or the content differ).
    """
    from voc_pipeline.data.competition import describe_data_difference

    source = Path(source)
    manifest = read_manifest(source)
    run_dir = Path(runs_dir) / manifest["run"]
    verify_carried_files(source, manifest)
    with atomic_directory(run_dir, overwrite=True) as target:
        for name in manifest["files"]:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    summary = artifacts.read_json(artifacts.DATA_SUMMARY, run_dir)
    differences = [difference for split in ("train", "test")
                   if (difference := describe_data_difference(summary[split], data_root, split))]
    if differences:
        raise KernelError(f"the competition data at {data_root} is not the data run {manifest['run']} was trained on: "
                          + "; ".join(differences))
    print(f"run {manifest['run']} installed in {run_dir}: {len(manifest['files'])} files checked; the data at {data_root} "
          f"is the data it was trained on (train {summary['train']['fingerprint'][:12]}, test "
          f"{summary['test']['fingerprint'][:12]})")
    return run_dir


def verify_carried_files(folder: Path, manifest: dict) -> None:
    """Every file a carried run's manifest lists is in `folder` with its recorded bytes, or a KernelError naming it."""
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file():
            raise KernelError(f"{folder / name} is missing from the carried run: pack it again")
        if hash_file(folder / name) != digest:
            raise KernelError(f"{folder / name} is damaged: its sha256 is not the one {MANIFEST_FILE} records; "
                              f"pack (or upload) the run again")


def check_training_kernel(kernel: str, cli, folder: Path) -> dict:
    """The run a training kernel (`make kaggle-train`) left as its output: the kernel must have completed, and its
    output, downloaded into `folder`, must hold a whole carried run; returns its manifest.

    Raises:
        KernelError: the kernel failed, still runs, or left no carried run (or a damaged one) in its output.
    """
    from voc_pipeline.kernel.client import KaggleCli

    cli = cli or KaggleCli.ready()
    state, failure = cli.kernel_state(kernel)
    if state in ("error", "cancel_requested", "cancel_acknowledged"):
        raise KernelError(f"training kernel {kernel} failed ({state}{': ' + failure if failure else ''}); its log is at "
                          f"https://www.kaggle.com/code/{kernel} (tab Logs): mend it and `make kaggle-train` again")
    if state != "complete":
        raise KernelError(f"training kernel {kernel} is still {state}: wait until it completes (`make kaggle-status "
                          f"KERNEL={kernel}`), then build again")
    # Downloaded beside `folder`, which it replaces only once checked.
    with atomic_directory(folder, overwrite=True) as download:
        cli.download_output(kernel, download)
        try:
            carried = find_carried_run(download)
        except KernelError:
            raise KernelError(f"training kernel {kernel} completed but its output holds no carried run ({MANIFEST_FILE}): "
                              f"was it built with `make kaggle-train`? See its output at https://www.kaggle.com/code/"
                              f"{kernel} (tab Output)") from None
        manifest = read_manifest(carried)
        verify_carried_files(carried, manifest)
    print(f"training kernel {kernel}: complete; its output holds run {manifest['run']} ({len(manifest['files'])} files, "
          f"checked)")
    return manifest
