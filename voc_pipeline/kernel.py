"""`voc-pipeline kernel build|push`: the Kaggle bundle (wheel dataset + notebook kernel) and its upload.

The kernel is `kaggle/kernel.py`, a py:percent source (`# %%` code cells, `# %% [markdown]` text cells);
the pushed notebook is generated from it. The package travels as a wheel in a Kaggle dataset, so the
kernel needs no internet. Pushing uses the official `kaggle` command line and its own credentials,
which this module only checks for and never reads out, prints or copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from voc_pipeline.data.output_folder import KAGGLE_FILE_LIMIT, count_files
from voc_pipeline.data.submission import validate_submission
from voc_pipeline.errors import KernelError
from voc_pipeline.files import write_json_atomic, write_text_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
KERNEL_SOURCE = REPOSITORY / "kaggle" / "kernel.py"
METADATA_TEMPLATE = REPOSITORY / "kaggle" / "kernel-metadata.json"
DEFAULT_COMPETITION = "kul-h02a5a-computer-vision-ga2-2022"
# Installed on Kaggle's image already: everything the package needs except these.
EXTRA_WHEELS = ("iterative-stratification",)


def notebook_from_percent(source: str) -> dict:
    """An nbformat-4 notebook from a py:percent script: `# %%` starts a code cell, `# %% [markdown]` a
    text cell whose lines lose their leading `# `."""
    cells, kind, lines = [], None, []

    def close():
        text = "\n".join(lines).strip("\n")
        if kind and text:
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
            cell = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
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


def build_bundle(output: str | Path, username: str, competition: str = DEFAULT_COMPETITION,
                 weights_datasets: tuple[str, ...] = (), enable_gpu: bool = True, enable_internet: bool = False) -> Path:
    """Write `output/dataset` (wheels + dataset-metadata.json) and `output/kernel` (notebook + kernel-metadata.json).

    Args:
        username: the Kaggle user that owns the dataset and the kernel.
        competition: the competition slug whose data the kernel mounts.
        weights_datasets: slugs (owner/name) of datasets holding Keras ImageNet weight files.
    """
    if not username or "/" in username or username == "YOUR_KAGGLE_USERNAME":
        raise KernelError(f"give your Kaggle user name with --username (got {username!r})")
    output = Path(output)
    dataset, kernel = output / "dataset", output / "kernel"
    for folder in (dataset, kernel):
        if folder.exists():
            shutil.rmtree(folder)
    wheels = build_wheels(dataset)
    dataset_slug = f"{username}/voc-pipeline-wheels"
    write_json_atomic(dataset / "dataset-metadata.json", {
        "title": "voc-pipeline wheels", "id": dataset_slug, "licenses": [{"name": "CC0-1.0"}]})
    write_text_atomic(kernel / "kernel.ipynb", json.dumps(notebook_from_percent(KERNEL_SOURCE.read_text()), indent=1))
    metadata = json.loads(METADATA_TEMPLATE.read_text())
    metadata.update(id=f"{username}/voc-pipeline", enable_gpu=enable_gpu, enable_internet=enable_internet,
                    dataset_sources=[dataset_slug, *weights_datasets], competition_sources=[competition])
    write_json_atomic(kernel / "kernel-metadata.json", metadata)
    print(f"bundle in {output}: {len(wheels)} wheels ({', '.join(wheel.name for wheel in wheels)}), notebook and metadata")
    return output


def kaggle_credentials_present() -> bool:
    """Whether the kaggle CLI will find credentials (a kaggle.json file or both environment variables)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def push_bundle(bundle: str | Path) -> None:
    """Upload the wheel dataset (new version if it exists) and push the kernel with the `kaggle` CLI."""
    bundle = Path(bundle)
    for needed in (bundle / "dataset" / "dataset-metadata.json", bundle / "kernel" / "kernel-metadata.json"):
        if not needed.exists():
            raise KernelError(f"{needed} is missing: run `voc-pipeline kernel build` first")
    executable = shutil.which("kaggle")
    if executable is None:
        raise KernelError("the `kaggle` command is not installed: pip install 'voc-pipeline[kaggle]' (or pip install kaggle)")
    if not kaggle_credentials_present():
        raise KernelError("no Kaggle credentials found: create an API token on kaggle.com (Settings > API), save it as "
                          "~/.kaggle/kaggle.json with permissions 600, or set KAGGLE_USERNAME and KAGGLE_KEY")
    dataset = str(bundle / "dataset")
    status = subprocess.run([executable, "datasets", "status", json.loads((bundle / "dataset" / "dataset-metadata.json").read_text())["id"]],
                            capture_output=True, text=True)
    if status.returncode == 0:
        steps = [[executable, "datasets", "version", "-p", dataset, "-m", "voc-pipeline update", "--dir-mode", "zip"]]
    else:
        steps = [[executable, "datasets", "create", "-p", dataset, "--dir-mode", "zip"]]
    steps.append([executable, "kernels", "push", "-p", str(bundle / "kernel")])
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise KernelError(f"`kaggle {' '.join(command[1:3])}` failed: {result.stderr.strip()[-1000:]}")
        print(result.stdout.strip())


def simulate_kaggle(bundle: str | Path, data_root: str | Path, simulation: str | Path,
                    competition: str = DEFAULT_COMPETITION) -> Path:
    """A /kaggle-like tree: input/<competition> (the data), input/voc-pipeline-wheels, an empty working/."""
    simulation = Path(simulation)
    if simulation.exists():
        shutil.rmtree(simulation)
    (simulation / "working").mkdir(parents=True)
    shutil.copytree(data_root, simulation / "input" / competition)
    shutil.copytree(Path(bundle) / "dataset", simulation / "input" / "voc-pipeline-wheels")
    return simulation


def kernel_environment(folder: Path) -> Path:
    """A fresh virtual environment that sees this environment's packages (TensorFlow, Keras, ...) but not
    this package, like Kaggle's image; the kernel installs the wheel into it. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
    python = folder / "bin" / "python"
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    ours = [path for path in sys.path if path.endswith("site-packages")]
    Path(site_packages, "host_packages.pth").write_text("\n".join(ours) + "\n")
    return python


def check_kernel(bundle: str | Path, data_root: str | Path, assignments: tuple[str, ...] = (), profile: str = "smoke") -> dict:
    """Run the bundle's kernel end to end against a simulated /kaggle tree; validate its output.

    Returns:
        {"files": files left in working/, "rows": submission rows, "valid": bool}.
    """
    with tempfile.TemporaryDirectory(prefix="kaggle-check-") as temporary:
        simulation = simulate_kaggle(bundle, data_root, Path(temporary) / "kaggle")
        script = Path(temporary) / "kernel.py"
        notebook = json.loads((Path(bundle) / "kernel" / "kernel.ipynb").read_text())
        # Run the notebook's code cells in order, as Kaggle does.
        script.write_text("\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"))
        python = kernel_environment(Path(temporary) / "environment")
        command = [str(python), str(script), "--kaggle-root", str(simulation), "--profile", profile]
        command += [item for assignment in assignments for item in ("--set", assignment)]
        # Kaggle runs notebooks in /kaggle/working; here that also keeps the source checkout off sys.path.
        result = subprocess.run(command, capture_output=True, text=True, cwd=simulation / "working")
        if result.returncode:
            raise KernelError(f"the kernel failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        working = simulation / "working"
        report = validate_submission(working / "submission.csv", simulation / "input" / DEFAULT_COMPETITION)
        files = count_files(working)
        if not report.valid or files >= KAGGLE_FILE_LIMIT:
            raise KernelError(f"kernel output is not acceptable: {files} files, problems: {report.problems}")
        print(f"kernel check passed: valid submission with {report.rows} rows, {files} files in working/")
        return {"files": files, "rows": report.rows, "valid": report.valid}
