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

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from voc_pipeline.errors import KernelError
from voc_pipeline.files import (
    atomic_directory,
    byte_size,
    folder_size,
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

REPOSITORY = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = REPOSITORY / "kaggle" / "kernel.py"
METADATA_TEMPLATE = REPOSITORY / "kaggle" / "kernel-metadata.json"
# Installed on Kaggle's image already: everything the package needs except these.
EXTRA_WHEELS = ("iterative-stratification",)
WHEELS_DATASET = "voc-pipeline-wheels"
# Kaggle's GPU machine: two T4s (the P100 was retired in September 2026; NvidiaTeslaT4 gives T4 x2).
GPU_MACHINE_SHAPE = "NvidiaTeslaT4"
# The mark of a folder `kernel build` wrote, and the folders it writes there.
BUNDLE_MARKER = ".voc-pipeline-bundle"
BUNDLE_FOLDERS = ("dataset", "kernel")
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


def notebook_from_percent(source: str, notes: dict | None = None, experiments: bool = False) -> dict:
    """An nbformat 4.5 notebook from a py:percent script (`percent_cells`), with each notes slot replaced by the
    note for its place (or dropped without one) and the experiments cells kept only with `experiments`. Each cell
    gets the id nbformat 4.5 requires."""
    notes = notes or {}
    cells = []
    for cell in percent_cells(source):
        tags = cell["metadata"].get("tags", [])
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


def kernel_metadata(username: str, competition: str, datasets: list[str], enable_gpu: bool, enable_internet: bool) -> dict:
    """kernel-metadata.json: the template with the user, the competition, the datasets and the machine."""
    metadata = json.loads(METADATA_TEMPLATE.read_text())
    metadata.update(id=f"{username}/voc-pipeline", enable_gpu=enable_gpu, enable_internet=enable_internet,
                    dataset_sources=datasets, competition_sources=[competition])
    if enable_gpu:
        metadata["machine_shape"] = GPU_MACHINE_SHAPE
    else:
        metadata.pop("machine_shape", None)
    return metadata


def check_build_arguments(output: str | Path, username: str, weights_datasets: tuple[str, ...],
                          enable_internet: bool, notes: str | Path | None = None,
                          experiments: tuple[str | Path, ...] = ()) -> None:
    """Everything about a build that can be checked here, before Kaggle is asked which competition to build for.

    Raises:
        KernelError: a user or dataset name Kaggle would refuse, no way to get weights, an output folder holding
            files the build did not write, a notes folder that is missing or holds a file that matches no place.
        RunSelectionError: an experiment run that does not exist or is still running.
    """
    check_username(username)
    read_notes(notes)
    check_experiments(experiments)
    for slug in weights_datasets:
        check_dataset_slug(slug)
    if not enable_internet and not weights_datasets:
        raise KernelError("a kernel without internet cannot download ImageNet weights: attach them with "
                          "--weights-dataset OWNER/NAME (made by `voc-pipeline kernel weights`), or leave internet on")
    check_replaceable(Path(output))


def build_bundle(output: str | Path, username: str, competition: str,
                 weights_datasets: tuple[str, ...] = (), enable_gpu: bool = True, enable_internet: bool = True,
                 notes: str | Path | None = None, experiments: tuple[str | Path, ...] = ()) -> Path:
    """Write `output/dataset` (wheels + dataset-metadata.json) and `output/kernel` (notebook + kernel-metadata.json).

    Args:
        username: the Kaggle user that owns the dataset and the kernel.
        competition: the competition slug whose data the kernel mounts (this year's: there is no default); it is
            recorded in kernel-metadata.json, which later commands read it from.
        weights_datasets: slugs (owner/name) of datasets holding Keras ImageNet weight files.
        enable_internet: let Keras download ImageNet weights; without it a weights dataset is required.
        notes: a folder of the student's Markdown notes (voc_pipeline.kernel.notes), put at their places.
        experiments: run folders made elsewhere; their small files and their comparison travel in the dataset.
    """
    check_build_arguments(output, username, weights_datasets, enable_internet, notes, experiments)
    student_notes = read_notes(notes)
    if not competition or "/" in competition:
        raise KernelError(f"give this year's competition slug with --competition (got {competition!r})")
    output = Path(output)
    dataset_slug = f"{username}/{WHEELS_DATASET}"
    metadata = kernel_metadata(username, competition, [dataset_slug, *weights_datasets], enable_gpu, enable_internet)
    # Each folder is built beside its final place and replaces it only once whole; the mark is written
    # last, so an interrupted build leaves at worst unmarked folders, which the next build refuses to delete.
    with atomic_directory(output / "dataset", overwrite=True) as dataset, \
            atomic_directory(output / "kernel", overwrite=True) as kernel:
        wheels = build_wheels(dataset)
        bundled = bundle_experiments(experiments, dataset / EXPERIMENTS_FOLDER) if experiments else None
        write_json_atomic(dataset / "dataset-metadata.json", {
            "title": "voc-pipeline wheels", "id": dataset_slug, "licenses": [{"name": "CC0-1.0"}]})
        notebook = notebook_from_percent(KERNEL_SOURCE.read_text(), student_notes, experiments=bool(experiments))
        write_text_atomic(kernel / "kernel.ipynb", json.dumps(notebook, indent=1))
        dataset_bytes = folder_size(dataset)
        write_json_atomic(kernel / "kernel-metadata.json", metadata)
    write_json_atomic(output / BUNDLE_MARKER, {"written_by": "voc-pipeline kernel build", "folders": list(BUNDLE_FOLDERS)})
    print(f"bundle in {output}: {len(wheels)} wheels ({', '.join(wheel.name for wheel in wheels)}), notebook and "
          f"metadata (competition {competition}, {'GPU T4 x2' if enable_gpu else 'CPU'}, internet {'on' if enable_internet else 'off'}, "
          f"datasets {', '.join(metadata['dataset_sources'])})")
    print(f"dataset: {byte_size(dataset_bytes)}" + (f", of which {len(bundled['runs'])} experiment runs "
          f"{byte_size(bundled['bytes'])} (limit {byte_size(EXPERIMENTS_LIMIT_BYTES)})" if bundled else "")
          + f"; notes: {', '.join(f'{place}.md' for place in student_notes) or 'none'}")
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
    for name in BUNDLE_FOLDERS:
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
