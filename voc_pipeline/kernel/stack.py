"""Kaggle's stack, locally: an environment built from `kaggle/image.toml`, and the kernel run against a
simulated /kaggle tree on it (`voc-pipeline kernel check`).

The kernel meets Kaggle's Python, TensorFlow and Keras, not this machine's. `build_stack_environment`
makes `.venv-kaggle` with that Python (found through PATH or pyenv; else this Python, with a warning) and
those versions pinned, plus this package in editable mode for the tests. `check_kernel` runs the bundle's
notebook in a fresh environment layered on it that does not see this package, as on Kaggle, where the
notebook installs it from the wheel dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline.data.output_folder import KAGGLE_FILE_LIMIT, count_files
from voc_pipeline.data.submission import validate_submission
from voc_pipeline.errors import KernelError
from voc_pipeline.kernel.bundle import REPOSITORY, WHEELS_DATASET

logger = logging.getLogger(__name__)

IMAGE_FILE = REPOSITORY / "kaggle" / "image.toml"
STACK_ENVIRONMENT = REPOSITORY / ".venv-kaggle"
STAMP_FILE = ".voc-pipeline-stack.json"


@dataclass(frozen=True)
class KaggleImage:
    """The Python version and the pinned packages of Kaggle's image."""

    python: str
    packages: dict[str, str]

    def pins(self) -> list[str]:
        return [f"{name}=={version}" for name, version in self.packages.items()]


def read_image(path: Path = IMAGE_FILE) -> KaggleImage:
    try:
        payload = tomllib.loads(Path(path).read_text())
        return KaggleImage(str(payload["python"]), dict(payload["packages"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError) as error:
        raise KernelError(f"{path} does not describe Kaggle's image (python = ..., [packages]): {error}") from None


def python_version_of(executable: str | Path) -> str | None:
    """"3.12.1" for a working interpreter, None if it does not run."""
    try:
        result = subprocess.run([str(executable), "-c", "import platform; print(platform.python_version())"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find_python(version: str) -> Path | None:
    """An interpreter of `version` ("3.12"): on PATH, else installed through pyenv."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        prefix = subprocess.run([pyenv, "prefix", version], capture_output=True, text=True)
        if prefix.returncode == 0:
            candidates.append(str(Path(prefix.stdout.strip().splitlines()[0]) / "bin" / f"python{version}"))
    for candidate in filter(None, candidates):
        found = python_version_of(candidate)
        if found and (found == version or found.startswith(version + ".")):
            return Path(candidate)
    return None


def stack_stamp(image: KaggleImage, python: Path) -> dict:
    """What the environment was built from; a change rebuilds it."""
    sources = b"".join(path.read_bytes() for path in (IMAGE_FILE, REPOSITORY / "pyproject.toml") if path.exists())
    return {"python": python_version_of(python), "packages": image.pins(), "sources": hashlib.sha256(sources).hexdigest()}


def run_quietly(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise KernelError(f"{what} failed (`{' '.join(map(str, command[:6]))} ...`):\n{result.stderr[-2000:]}")


def build_stack_environment(folder: Path = STACK_ENVIRONMENT, image: KaggleImage | None = None) -> Path:
    """The python of an environment with Kaggle's versions (reused while its sources are unchanged)."""
    image = image or read_image()
    python = find_python(image.python)
    if python is None:
        logger.warning("no Python %s found on PATH or through pyenv: building Kaggle's stack on this Python %s "
                       "instead, so the check covers Kaggle's packages but not its interpreter",
                       image.python, sys.version.split()[0])
        python = Path(sys.executable)
    folder = Path(folder)
    environment_python = folder / "bin" / "python"
    stamp = stack_stamp(image, python)
    if environment_python.exists() and (folder / STAMP_FILE).exists() and \
            json.loads((folder / STAMP_FILE).read_text()) == stamp:
        logger.info("Kaggle's stack in %s is up to date (Python %s, %s)", folder, stamp["python"], ", ".join(stamp["packages"]))
        return environment_python
    if folder.exists():
        shutil.rmtree(folder)
    logger.info("building Kaggle's stack in %s: Python %s, %s", folder, stamp["python"], ", ".join(stamp["packages"]))
    run_quietly([str(python), "-m", "venv", str(folder)], "creating the environment")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(image.pins()) + "\n")
    run_quietly([str(environment_python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
    run_quietly([str(environment_python), "-m", "pip", "install", "--quiet", "-c", constraints.name, *image.pins(),
                 "-e", f"{REPOSITORY}[dev,cpu]"], "installing Kaggle's packages")
    Path(constraints.name).unlink()
    (folder / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    return environment_python


def layered_environment(base_python: Path, folder: Path) -> Path:
    """A fresh environment that sees `base_python`'s installed packages (TensorFlow, Keras, ...) but not this
    package, like Kaggle's image: the kernel installs it from the wheel. Returns its python."""
    run_quietly([str(base_python), "-m", "venv", str(folder)], "creating the kernel's environment")
    python = folder / "bin" / "python"
    paths = json.loads(subprocess.run([str(base_python), "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                                      check=True, capture_output=True, text=True).stdout)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line in a .pth file adds the folder without running the .pth files inside it, so the
    # base's editable install of this package stays invisible.
    Path(own, "kaggle_image.pth").write_text("\n".join(paths) + "\n")
    return python


def bundle_competition_slug(bundle: str | Path) -> str:
    """The competition the bundle's kernel attaches (its kernel-metadata.json)."""
    metadata = json.loads((Path(bundle) / "kernel" / "kernel-metadata.json").read_text())
    return (metadata.get("competition_sources") or ["competition"])[0]


def simulate_kaggle(bundle: str | Path, data_root: str | Path, simulation: str | Path,
                    competition: str | None = None, mount: str = "competitions") -> Path:
    """A /kaggle-like tree: input/competitions/<competition> (the data), input/<wheels dataset>, an empty working/."""
    simulation = Path(simulation)
    if simulation.exists():
        shutil.rmtree(simulation)
    (simulation / "working").mkdir(parents=True)
    shutil.copytree(data_root, simulation / "input" / mount / (competition or bundle_competition_slug(bundle)))
    shutil.copytree(Path(bundle) / "dataset", simulation / "input" / WHEELS_DATASET)
    return simulation


def check_kernel(bundle: str | Path, data_root: str | Path, assignments: tuple[str, ...] = (), profile: str = "smoke",
                 stack: str = "kaggle") -> dict:
    """Run the bundle's kernel end to end against a simulated /kaggle tree; validate its output.

    Args:
        stack: "kaggle" (the environment of kaggle/image.toml) or "local" (this environment's packages).

    Returns:
        {"files": files left in working/, "rows": submission rows, "valid": bool, "python": version}.
    """
    base_python = build_stack_environment() if stack == "kaggle" else Path(sys.executable)
    with tempfile.TemporaryDirectory(prefix="kaggle-check-") as temporary:
        simulation = simulate_kaggle(bundle, data_root, Path(temporary) / "kaggle")
        script = Path(temporary) / "kernel.py"
        notebook = json.loads((Path(bundle) / "kernel" / "kernel.ipynb").read_text())
        # Run the notebook's code cells in order, as Kaggle does.
        script.write_text("\n\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"))
        python = layered_environment(base_python, Path(temporary) / "environment")
        command = [str(python), str(script), "--kaggle-root", str(simulation), "--profile", profile]
        command += [item for assignment in assignments for item in ("--set", assignment)]
        # Kaggle runs notebooks in /kaggle/working; here that also keeps the source checkout off sys.path.
        result = subprocess.run(command, capture_output=True, text=True, cwd=simulation / "working")
        if result.returncode:
            raise KernelError(f"the kernel failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        working = simulation / "working"
        report = validate_submission(working / "submission.csv", simulation / "input" / "competitions" / bundle_competition_slug(bundle))
        files = count_files(working)
        if not report.valid or files >= KAGGLE_FILE_LIMIT:
            raise KernelError(f"kernel output is not acceptable: {files} files, problems: {report.problems}")
        version = python_version_of(python)
        print(f"kernel check passed on Python {version}: valid submission with {report.rows} rows, {files} files in working/")
        return {"files": files, "rows": report.rows, "valid": report.valid, "python": version, "output": result.stdout}
