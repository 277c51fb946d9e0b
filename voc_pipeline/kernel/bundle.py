"""`voc-pipeline kernel build`: the Kaggle bundle, a wheel dataset and a notebook kernel.

The kernel is `kaggle/kernel.py`, a py:percent source (`# %%` code cells, `# %% [markdown]` text cells);
the pushed notebook is generated from it. The package travels as a wheel in a Kaggle dataset. By default
the kernel has internet, so Keras downloads the ImageNet weights the profile asks for; without internet,
a weights dataset (`voc-pipeline kernel weights`) must be attached instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from voc_pipeline.errors import KernelError
from voc_pipeline.files import write_json_atomic, write_text_atomic

REPOSITORY = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = REPOSITORY / "kaggle" / "kernel.py"
METADATA_TEMPLATE = REPOSITORY / "kaggle" / "kernel-metadata.json"
# Installed on Kaggle's image already: everything the package needs except these.
EXTRA_WHEELS = ("iterative-stratification",)
WHEELS_DATASET = "voc-pipeline-wheels"
# Kaggle's GPU machine: two T4s (the P100 was retired in September 2026; NvidiaTeslaT4 gives T4 x2).
GPU_MACHINE_SHAPE = "NvidiaTeslaT4"


def notebook_from_percent(source: str) -> dict:
    """An nbformat 4.5 notebook from a py:percent script: `# %%` starts a code cell, `# %% [markdown]` a
    text cell whose lines lose their leading `# `. Each cell gets the id nbformat 4.5 requires."""
    cells, kind, lines = [], None, []

    def close():
        text = "\n".join(lines).strip("\n")
        if kind and text:
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
            cell = {"cell_type": kind, "id": f"cell-{len(cells):02d}", "metadata": {},
                    "source": text.splitlines(keepends=True)}
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            cells.append(cell)

    for line in source.splitlines():
        if line.startswith("# %%"):
            close()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    close()
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


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


def build_bundle(output: str | Path, username: str, competition: str,
                 weights_datasets: tuple[str, ...] = (), enable_gpu: bool = True, enable_internet: bool = True) -> Path:
    """Write `output/dataset` (wheels + dataset-metadata.json) and `output/kernel` (notebook + kernel-metadata.json).

    Args:
        username: the Kaggle user that owns the dataset and the kernel.
        competition: the competition slug whose data the kernel mounts (this year's: there is no default); it is
            recorded in kernel-metadata.json, which later commands read it from.
        weights_datasets: slugs (owner/name) of datasets holding Keras ImageNet weight files.
        enable_internet: let Keras download ImageNet weights; without it a weights dataset is required.
    """
    if not username or "/" in username or username == "YOUR_KAGGLE_USERNAME":
        raise KernelError(f"give your Kaggle user name with --username (got {username!r})")
    if not competition or "/" in competition:
        raise KernelError(f"give this year's competition slug with --competition (got {competition!r})")
    if not enable_internet and not weights_datasets:
        raise KernelError("a kernel without internet cannot download ImageNet weights: attach them with "
                          "--weights-dataset OWNER/NAME (made by `voc-pipeline kernel weights`), or leave internet on")
    output = Path(output)
    dataset, kernel = output / "dataset", output / "kernel"
    for folder in (dataset, kernel):
        if folder.exists():
            shutil.rmtree(folder)
    wheels = build_wheels(dataset)
    dataset_slug = f"{username}/{WHEELS_DATASET}"
    write_json_atomic(dataset / "dataset-metadata.json", {
        "title": "voc-pipeline wheels", "id": dataset_slug, "licenses": [{"name": "CC0-1.0"}]})
    write_text_atomic(kernel / "kernel.ipynb", json.dumps(notebook_from_percent(KERNEL_SOURCE.read_text()), indent=1))
    metadata = kernel_metadata(username, competition, [dataset_slug, *weights_datasets], enable_gpu, enable_internet)
    write_json_atomic(kernel / "kernel-metadata.json", metadata)
    print(f"bundle in {output}: {len(wheels)} wheels ({', '.join(wheel.name for wheel in wheels)}), notebook and "
          f"metadata (competition {competition}, {'GPU T4 x2' if enable_gpu else 'CPU'}, internet {'on' if enable_internet else 'off'}, "
          f"datasets {', '.join(metadata['dataset_sources'])})")
    return output
