"""`voc-pipeline kernel build`: the Kaggle bundle, a wheel dataset and a notebook kernel.

The kernel is `kaggle/kernel.py`, a py:percent source (`# %%` code cells, `# %% [markdown]` text cells);
the pushed notebook is generated from it. The package travels as a wheel in a Kaggle dataset. By default
the kernel has internet, so Keras downloads the ImageNet weights the profile asks for; without internet,
a weights dataset (`voc-pipeline kernel weights`) must be attached instead.

The build never deletes what it did not create: it marks its output folder (`.voc-pipeline-bundle`,
naming the folders it wrote), replaces `dataset/` and `kernel/` only where that mark names them, and
refuses any other non-empty folder there. The user name and the datasets are checked against Kaggle's
rules, and the output path for a file in the way, before Kaggle is asked anything and before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from voc_pipeline.backbone_table import KERAS_HUB_VERSION
from voc_pipeline.errors import KernelError
from voc_pipeline.files import (
    atomic_directory,
    byte_size,
    folder_size,
    hash_file,
    read_json_file,
    write_json_atomic,
    write_text_atomic,
)
from voc_pipeline.kernel.experiments import (
    EXPERIMENTS_FOLDER,
    EXPERIMENTS_LIMIT_BYTES,
    bundle_experiments,
    check_experiments,
)
from voc_pipeline.kernel.notes import read_notes
from voc_pipeline.kernel.trained_run import check_trained_run, pack_run, run_dataset_slug

REPOSITORY = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = REPOSITORY / "kaggle" / "kernel.py"
METADATA_TEMPLATE = REPOSITORY / "kaggle" / "kernel-metadata.json"
# Installed on Kaggle's image already: everything the package needs except these (keras-hub at the version the
# backbone table is built with, installed over the image's own, as every wheel is, without its dependencies).
EXTRA_WHEELS = ("iterative-stratification", f"keras-hub=={KERAS_HUB_VERSION}")
WHEELS_DATASET = "voc-pipeline-wheels"
# The kernels' slugs: the notebook handed in, and the training kernel (`make kaggle-train`).
NOTEBOOK_KERNEL, TRAINING_KERNEL = "voc-pipeline", "voc-pipeline-train"
# Kaggle's GPU machine: two T4s (the P100 was retired in September 2026; NvidiaTeslaT4 gives T4 x2).
GPU_MACHINE_SHAPE = "NvidiaTeslaT4"
# The mark of a folder `kernel build` wrote, and the folders it writes there.
BUNDLE_MARKER = ".voc-pipeline-bundle"
BUNDLE_FOLDERS = ("dataset", "kernel")
# Written only by some builds: the carried run (--trained) and a training kernel's downloaded output (--from-kernel).
OPTIONAL_FOLDERS = ("run", "from-kernel")
# Kaggle's rules: a user name of letters, digits, '-' or '_'; a dataset slug of 6 to 50 lowercase letters,
# digits and hyphens (the kaggle CLI refuses other lengths; kaggle.com makes slugs lowercase).
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}")
DATASET_SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{4,48}[a-z0-9]")


def check_username(username: str) -> str:
    """A Kaggle user name, or a KernelError saying what Kaggle accepts."""
    if not username or not username.strip() or username == "YOUR_KAGGLE_USERNAME":
        raise KernelError(f"give your Kaggle user name with --username (got {username!r}): it owns the dataset "
                          f"and the kernel (your profile's address is https://www.kaggle.com/<user name>)")
    if not USERNAME_PATTERN.fullmatch(username):
        raise KernelError(f"--username {username!r} is not a Kaggle user name: give the name in your profile's "
                          f"address (letters, digits, '-' or '_'; not your e-mail address, no '/')")
    return username


def check_dataset_slug(slug: str) -> str:
    """An OWNER/NAME dataset reference following Kaggle's rules, or a KernelError naming what is wrong."""
    owner, separator, name = slug.partition("/")
    if not separator or "/" in name or not owner:
        raise KernelError(f"--weights-dataset {slug!r} must be OWNER/NAME, e.g. you/voc-pipeline-keras-weights "
                          f"(the name `voc-pipeline kernel weights --username you` gives it)")
    if not USERNAME_PATTERN.fullmatch(owner):
        raise KernelError(f"--weights-dataset {slug!r}: the owner {owner!r} is not a Kaggle user name "
                          f"(letters, digits, '-' or '_')")
    if not DATASET_SLUG_PATTERN.fullmatch(name):
        raise KernelError(f"--weights-dataset {slug!r}: the name {name!r} is not a Kaggle dataset slug (6 to 50 "
                          f"lowercase letters, digits and hyphens, starting and ending with a letter or digit)")
    return slug


CELL_HEADER = re.compile(r"# %%(?:\s+\[(?P<kind>markdown)\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*")
# The tag of the cells kept only when the bundle carries experiments (`kernel build --experiments`).
EXPERIMENTS_TAG = "experiments"
NOTES_TAG_PREFIX = "notes:"
# The notebook's modes: "full" trains and reports; "trained" predicts and reports from a run trained before it
# (`--trained`, `--from-kernel`); "training" trains up to refit and leaves the run as its output (`--training`).
# A cell tagged "only:MODE" (one tag per mode) is kept in those modes; a cell without such a tag, in every mode.
NOTEBOOK_MODES = ("full", "trained", "training")
ONLY_TAG_PREFIX = "only:"


def percent_cells(source: str) -> list[dict]:
    """The cells of a py:percent script: `# %%` starts a code cell, `# %% [markdown]` a text cell whose lines lose
    their leading `# `; either may carry `tags=["..."]` (JSON), kept in the cell's metadata. Empty cells are
    dropped, except notes slots (a `notes:PLACE` tag), which stand where a note may go."""
    cells, kind, tags, lines = [], None, [], []

    def close():
        text = "\n".join(lines).strip("\n")
        slot = any(tag.startswith(NOTES_TAG_PREFIX) for tag in tags)
        if kind and (text or slot):
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
            cell = {"cell_type": kind, "metadata": {"tags": list(tags)} if tags else {},
                    "source": text.splitlines(keepends=True)}
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            cells.append(cell)

    for line in source.splitlines():
        header = CELL_HEADER.fullmatch(line)
        if header:
            close()
            kind, lines = header["kind"] or "code", []
            tags = json.loads(header["tags"]) if header["tags"] else []
        else:
            lines.append(line)
    close()
    return cells


def kept_in(tags: list[str], mode: str) -> bool:
    """Whether a cell with `tags` belongs in a notebook of `mode` (NOTEBOOK_MODES)."""
    modes = {tag.removeprefix(ONLY_TAG_PREFIX) for tag in tags if tag.startswith(ONLY_TAG_PREFIX)}
    unknown = modes - set(NOTEBOOK_MODES)
    if unknown:
        raise KernelError(f"the kernel source tags a cell for the unknown notebook modes {sorted(unknown)}; the modes are "
                          f"{', '.join(NOTEBOOK_MODES)}")
    return not modes or mode in modes


def with_parameters(cell: dict, parameters: dict) -> dict:
    """The parameters cell with the defaults of `parameters` (name -> value) in place of its own: the values a run on
    Kaggle uses (papermill's parameters override them in a local check)."""
    lines = []
    for line in cell["source"]:
        name = line.split("=", 1)[0].strip()
        ending = "\n" if line.endswith("\n") else ""
        lines.append(f"{name} = {json.dumps(parameters[name])}{ending}" if name in parameters and "=" in line else line)
    return {**cell, "source": lines}


def notebook_from_percent(source: str, notes: dict | None = None, experiments: bool = False, mode: str = "full",
                          parameters: dict | None = None) -> dict:
    """An nbformat 4.5 notebook from a py:percent script (`percent_cells`) for `mode`, with each notes slot replaced by
    the note for its place (or dropped without one), the experiments cells kept only with `experiments` and the
    parameters cell's defaults set from `parameters`. Each cell gets the id nbformat 4.5 requires."""
    notes = notes or {}
    cells = []
    for cell in percent_cells(source):
        tags = cell["metadata"].get("tags", [])
        if not kept_in(tags, mode):
            continue
        if "parameters" in tags and parameters:
            cell = with_parameters(cell, parameters)
        places = [tag.removeprefix(NOTES_TAG_PREFIX) for tag in tags if tag.startswith(NOTES_TAG_PREFIX)]
        if places:
            cells += [notes[place].cell("") for place in places if place in notes]
        elif EXPERIMENTS_TAG not in tags or experiments:
            cells.append(cell)
    for index, cell in enumerate(cells):
        cell["id"] = f"cell-{index:02d}"
    return {"cells": cells,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def notes_slots(source: str) -> set[str]:
    """The places of the kernel source that a note can go to."""
    return {tag.removeprefix(NOTES_TAG_PREFIX) for cell in percent_cells(source)
            for tag in cell["metadata"].get("tags", []) if tag.startswith(NOTES_TAG_PREFIX)}


def build_wheels(destination: Path) -> list[Path]:
    """This package's wheel (from the source checkout) and the wheels of the dependencies Kaggle lacks."""
    if not (REPOSITORY / "pyproject.toml").exists():
        raise KernelError(f"the package source (pyproject.toml) is not at {REPOSITORY}: build from a checkout")
    destination.mkdir(parents=True, exist_ok=True)
    commands = [
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(destination), str(REPOSITORY)],
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest",
         str(destination), *EXTRA_WHEELS],
    ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise KernelError(f"`{' '.join(command[2:5])} ...` failed:\n{result.stderr[-2000:]}")
    return sorted(destination.glob("*.whl"))


def kernel_metadata(username: str, competition: str, datasets: list[str], enable_gpu: bool, enable_internet: bool,
                    slug: str = "voc-pipeline", kernels: tuple[str, ...] = (), models: tuple[str, ...] = ()) -> dict:
    """kernel-metadata.json: the template with the kernel's slug (Kaggle derives it from the title, so both are the
    slug), the user, the competition, the datasets, the kernels whose output it attaches, the Kaggle models (the
    keras-hub presets it loads) and the machine."""
    metadata = json.loads(METADATA_TEMPLATE.read_text())
    metadata.update(id=f"{username}/{slug}", title=slug, enable_gpu=enable_gpu, enable_internet=enable_internet,
                    dataset_sources=datasets, competition_sources=[competition], kernel_sources=list(kernels),
                    model_sources=list(models))
    if enable_gpu:
        metadata["machine_shape"] = GPU_MACHINE_SHAPE
    else:
        metadata.pop("machine_shape", None)
    return metadata


def dataset_content_hash(folder: Path) -> str:
    """One hash of what a dataset folder holds, its metadata file aside: each file's path and bytes, and for a wheel
    its members' names and bytes (a wheel built again from the same source differs only in its zip timestamps).
    Kept in the dataset's description, so a push uploads a dataset only when this changed."""
    digest = hashlib.sha256()
    for path in sorted(path for path in Path(folder).rglob("*") if path.is_file() and path.name != "dataset-metadata.json"):
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        if path.suffix == ".whl" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel:
                for member in sorted(wheel.namelist()):
                    digest.update(f"{member}\0".encode() + hashlib.sha256(wheel.read(member)).digest())
        else:
            digest.update(hash_file(path).encode())
    return digest.hexdigest()


CONTENT_HASH_LABEL = "content sha256: "


def write_dataset_metadata(folder: Path, dataset_id: str, title: str, description: str) -> str:
    """dataset-metadata.json for `folder`, its content hash in the description; returns the hash."""
    content = dataset_content_hash(folder)
    write_json_atomic(folder / "dataset-metadata.json", {
        "title": title, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}],
        "description": f"{description} {CONTENT_HASH_LABEL}{content}"})
    return content


def preset_model_sources(profile: str, assignments: tuple[str, ...]) -> tuple[str, ...]:
    """The Kaggle Models handles of the keras-hub presets a kernel training with this profile loads, once each: a
    kernel attaches them as model sources and reads them without internet."""
    from voc_pipeline.backbone_table import backbone
    from voc_pipeline.config import build_config

    config = build_config(profile, assignments)
    handles = []
    for name in ("classifier", "segmenter"):
        section = getattr(config, name)
        row = backbone(section.backbone)
        if not row.from_keras_hub or section.weights.lower() == "none" or Path(section.weights).is_dir():
            continue
        if section.weights != row.preset:
            raise KernelError(f"{name}.weights = {section.weights!r}: the kernel can attach {row.name}'s own preset "
                              f"{row.preset!r} as a Kaggle model; for another preset, attach it yourself or give its folder")
        if row.kaggle_model not in handles:
            handles.append(row.kaggle_model)
    return tuple(handles)


def check_kernel_profile(profile: str, assignments: tuple[str, ...]):
    """A profile the kernel can run: one shipped in the package (a file of your own does not travel in the wheel),
    with assignments that resolve; returns its configuration."""
    from voc_pipeline.config import available_profiles, build_config

    if profile not in available_profiles():
        raise KernelError(f"--profile {profile!r}: the kernel runs a profile shipped in the package ({', '.join(available_profiles())}); "
                          f"give the keys of your own file as --set KEY=VALUE")
    return build_config(profile, assignments)


def check_build_arguments(output: str | Path, username: str, weights_datasets: tuple[str, ...],
                          enable_internet: bool, notes: str | Path | None = None,
                          experiments: tuple[str | Path, ...] = (), trained: str | Path | None = None,
                          from_kernel: str | None = None, profile: str = "kaggle",
                          assignments: tuple[str, ...] = ()) -> list[str]:
    """Everything about a build that can be checked here, before Kaggle is asked which competition to build for;
    returns the files of the `trained` run to carry ([] without one).

    Raises:
        KernelError: a user or dataset name Kaggle would refuse, no way to get weights, an output folder holding
            files the build did not write, a notes folder that is missing or holds a file that matches no place,
            a trained run that cannot be carried (`trained_run.check_trained_run`), --trained with --from-kernel.
        RunSelectionError: an experiment run that does not exist or is still running.
    """
    check_username(username)
    check_replaceable(Path(output))
    read_notes(notes)
    check_experiments(experiments)
    for slug in weights_datasets:
        check_dataset_slug(slug)
    config = check_kernel_profile(profile, assignments)
    if trained and from_kernel:
        raise KernelError("give the trained run either as a run folder (--trained RUN) or as a training kernel's output "
                          "(--from-kernel OWNER/SLUG), not both")
    if from_kernel and (from_kernel.count("/") != 1 or not all(from_kernel.split("/"))):
        raise KernelError(f"--from-kernel {from_kernel!r} must be OWNER/SLUG, as in https://www.kaggle.com/code/OWNER/SLUG")
    # A notebook that predicts from trained models needs no ImageNet weights (they are in its models), nor one whose
    # encoders are keras-hub presets (attached as Kaggle models).
    needs_imagenet = any(getattr(config, head).weights == "imagenet" for head in ("classifier", "segmenter"))
    if not enable_internet and not weights_datasets and needs_imagenet and not (trained or from_kernel):
        raise KernelError("a kernel without internet cannot download ImageNet weights: attach them with "
                          "--weights-dataset OWNER/NAME (made by `voc-pipeline kernel weights`), or leave internet on")
    return check_trained_run(trained) if trained else []


def build_bundle(output: str | Path, username: str, competition: str,
                 weights_datasets: tuple[str, ...] = (), enable_gpu: bool = True, enable_internet: bool = True,
                 notes: str | Path | None = None, experiments: tuple[str | Path, ...] = (),
                 trained: str | Path | None = None, from_kernel: str | None = None, training: bool = False,
                 profile: str = "kaggle", assignments: tuple[str, ...] = (), cli=None) -> Path:
    """Write `output/dataset` (wheels + dataset-metadata.json), `output/kernel` (notebook + kernel-metadata.json) and,
    for a notebook predicting from a trained run folder, `output/run` (the carried run, a second dataset).

    Args:
        username: the Kaggle user that owns the datasets and the kernel.
        competition: the competition slug whose data the kernel mounts (this year's: there is no default); it is
            recorded in kernel-metadata.json, which later commands read it from.
        weights_datasets: slugs (owner/name) of datasets holding Keras ImageNet weight files.
        enable_internet: let Keras download ImageNet weights; without it a weights dataset is required, unless
            the notebook predicts from a trained run.
        notes: a folder of the student's Markdown notes (voc_pipeline.kernel.notes), put at their places.
        experiments: run folders made elsewhere; their small files and their comparison travel in the dataset.
        trained: a run folder that has reached refit: the notebook predicts and reports from it, never trains.
        from_kernel: OWNER/SLUG of a training kernel whose output holds such a run (checked through `cli`).
        training: the training kernel instead (`OWNER/voc-pipeline-train`): it trains up to refit and leaves the
            run, packed, as its output.
        profile, assignments: the shipped profile and the `--set` assignments a notebook that trains runs with (one
            that predicts from a trained run takes the run's own configuration).
    """
    carried = check_build_arguments(output, username, weights_datasets, enable_internet, notes, experiments, trained,
                                    from_kernel, profile, assignments)
    student_notes = read_notes(notes)
    if not competition or "/" in competition:
        raise KernelError(f"give this year's competition slug with --competition (got {competition!r})")
    output = Path(output)
    mode = "training" if training else "trained" if (trained or from_kernel) else "full"
    if trained:
        from voc_pipeline.kernel.trained_run import check_models_load_on_kaggle

        for line in check_models_load_on_kaggle(Path(trained), carried):
            print(line)
    if from_kernel:
        from voc_pipeline.kernel.trained_run import check_training_kernel

        check_training_kernel(from_kernel, cli, output / "from-kernel")
    # A folder an earlier build wrote and this one does not is removed, so that no push finds a stale run there.
    for name, written in (("run", trained), ("from-kernel", from_kernel)):
        if not written and name in marked_folders(output) and (output / name).is_dir():
            shutil.rmtree(output / name)
    dataset_slug = f"{username}/{WHEELS_DATASET}"
    datasets = [dataset_slug, *weights_datasets]
    run_dataset = f"{username}/{run_dataset_slug(Path(trained).name)}" if trained else None
    # A notebook from a trained run loads no preset: its models carry their weights.
    models = preset_model_sources(profile, assignments) if mode != "trained" else ()
    metadata = kernel_metadata(username, competition, [*datasets, *([run_dataset] if run_dataset else [])], enable_gpu,
                               enable_internet, TRAINING_KERNEL if training else NOTEBOOK_KERNEL,
                               (from_kernel,) if from_kernel else (), models)
    folders = [*BUNDLE_FOLDERS, *(["run"] if trained else []), *(["from-kernel"] if from_kernel else [])]
    # Each folder is built beside its final place and replaces it only once whole; the mark is written
    # last, so an interrupted build leaves at worst unmarked folders, which the next build refuses to delete.
    with atomic_directory(output / "dataset", overwrite=True) as dataset, \
            atomic_directory(output / "kernel", overwrite=True) as kernel:
        wheels = build_wheels(dataset)
        bundled = bundle_experiments(experiments, dataset / EXPERIMENTS_FOLDER) if experiments else None
        write_dataset_metadata(dataset, dataset_slug, "voc-pipeline wheels", "The voc-pipeline package and the wheels "
                               "Kaggle's image lacks.")
        notebook = notebook_from_percent(KERNEL_SOURCE.read_text(), student_notes, bool(experiments), mode,
                                         {"profile": profile, "assignments": list(assignments)})
        write_text_atomic(kernel / "kernel.ipynb", json.dumps(notebook, indent=1))
        dataset_bytes = folder_size(dataset)
        write_json_atomic(kernel / "kernel-metadata.json", metadata)
    if trained:
        manifest = pack_run(trained, output / "run")
        write_dataset_metadata(output / "run", run_dataset, f"voc-pipeline run {manifest['run']}"[:50],
                               f"The trained run {manifest['run']} (voc-pipeline {manifest['package_version']}), "
                               f"carried to the notebook that predicts from it.")
    write_json_atomic(output / BUNDLE_MARKER, {"written_by": "voc-pipeline kernel build", "folders": folders})
    print(f"bundle in {output}: {len(wheels)} wheels ({', '.join(wheel.name for wheel in wheels)}), {mode} notebook "
          f"{metadata['id']} and metadata (competition {competition}, {'GPU T4 x2' if enable_gpu else 'CPU'}, internet "
          f"{'on' if enable_internet else 'off'}, datasets {', '.join(metadata['dataset_sources'])}"
          + (f", the output of kernel {from_kernel}" if from_kernel else "")
          + (f", models {', '.join(models)}" if models else "") + ")")
    print(f"dataset: {byte_size(dataset_bytes)}" + (f", of which {len(bundled['runs'])} experiment runs "
          f"{byte_size(bundled['bytes'])} (limit {byte_size(EXPERIMENTS_LIMIT_BYTES)})" if bundled else "")
          + f"; notes: {', '.join(f'{place}.md' for place in student_notes) or 'none'}")
    if trained:
        print(f"run dataset {run_dataset}: run {manifest['run']}, {len(manifest['files'])} files, "
              f"{byte_size(manifest['bytes'])} (content sha256 {manifest['content_sha256'][:12]})")
    return output


def marked_folders(output: Path) -> list[str]:
    """The folders of `output` that its bundle mark says `kernel build` wrote ([] without a readable mark)."""
    marker = output / BUNDLE_MARKER
    if not marker.is_file():
        return []
    try:
        folders = read_json_file(marker, "a bundle mark", error_type=KernelError).get("folders", [])
    except KernelError:
        return []
    return [name for name in folders if isinstance(name, str)] if isinstance(folders, list) else []


def check_output_folder(output: Path) -> None:
    """`output` must be a folder, or a path where one can be made: nothing but folders on its way down.

    Raises:
        KernelError: `output`, or a path above it, is a file (or a link to nothing).
    """
    existing = output
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "not a folder"
        raise KernelError(f"--output {output}: {existing} is {kind}, where `kernel build` writes its bundle folder; "
                          f"move it away or give another --output (nothing was changed)")


def check_replaceable(output: Path) -> None:
    """`output` must be a folder (or free), and `output/dataset` and `output/kernel` may be replaced only when
    absent, empty or marked as the build's own.

    Raises:
        KernelError: `output` is a file, or one of the two holds files the build did not write (or is a file or a
            link); nothing is deleted.
    """
    check_output_folder(output)
    owned = marked_folders(output)
    for name in (*BUNDLE_FOLDERS, *OPTIONAL_FOLDERS):
        folder = output / name
        if not os.path.lexists(folder):
            continue
        if folder.is_symlink() or not folder.is_dir():
            raise KernelError(f"{folder} is {'a link' if folder.is_symlink() else 'a file'}, where `kernel build` "
                              f"writes its {name} folder; move it away or give another --output (nothing was deleted)")
        if name not in owned and any(folder.iterdir()):
            raise KernelError(f"{folder} is not empty and not marked as a bundle `kernel build` wrote (no {BUNDLE_MARKER} "
                              f"in {output} names it); it never deletes what it did not create: move its files away, "
                              f"or give another --output")
