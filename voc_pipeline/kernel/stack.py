"""Kaggle's stack, locally: an environment built from `kaggle/image.toml`, and the notebook executed in a
Jupyter kernel against a simulated /kaggle tree on it (`voc-pipeline kernel check`).

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
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline.backbone_table import KERAS_HUB_VERSION
from voc_pipeline.data.output_folder import KAGGLE_FILE_LIMIT, count_files
from voc_pipeline.data.submission import validate_submission
from voc_pipeline.errors import KernelError
from voc_pipeline.files import ensure_writable_folder
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
    return {"python": python_version_of(python), "packages": [*image.pins(), f"keras-hub=={KERAS_HUB_VERSION}"],
            "sources": hashlib.sha256(sources).hexdigest()}


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
                 "-e", f"{REPOSITORY}[dev,hub,cpu]"], "installing Kaggle's packages")
    run_quietly([str(environment_python), "-m", "pip", "install", "--quiet", "--no-deps",
                 f"keras-hub=={KERAS_HUB_VERSION}"], "installing keras-hub")
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
    """A /kaggle-like tree: input/competitions/<competition> (the data), input/<wheels dataset>, the carried run's
    dataset (a `--trained` bundle) or the training kernel's output (`--from-kernel`) under its slug, and an empty
    working/."""
    simulation = Path(simulation)
    if simulation.exists():
        shutil.rmtree(simulation)
    (simulation / "working").mkdir(parents=True)
    shutil.copytree(data_root, simulation / "input" / mount / (competition or bundle_competition_slug(bundle)))
    shutil.copytree(Path(bundle) / "dataset", simulation / "input" / WHEELS_DATASET)
    metadata = json.loads((Path(bundle) / "kernel" / "kernel-metadata.json").read_text())
    run = Path(bundle) / "run"
    if (run / "dataset-metadata.json").is_file():
        run_id = json.loads((run / "dataset-metadata.json").read_text())["id"]
        if run_id in metadata.get("dataset_sources", []):
            shutil.copytree(run, simulation / "input" / run_id.split("/")[1])
    for kernel in metadata.get("kernel_sources", []):
        shutil.copytree(Path(bundle) / "from-kernel", simulation / "input" / kernel.split("/")[1])
    return simulation


def write_kernelspec(python: Path, folder: Path) -> Path:
    """A Jupyter data folder whose `python3` kernel runs `python` (set JUPYTER_PATH to it), so that papermill's kernel
    is the kernel's environment and not whatever `python3` kernel this machine has registered."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    return folder


def section_title(cell: dict) -> str | None:
    """The title of a notebook section (a Markdown cell starting with `## `), else None."""
    source = "".join(cell.get("source", []))
    if cell["cell_type"] != "markdown" or not source.startswith("## "):
        return None
    # A student's note is text inside a section, whatever its own headings.
    return None if any(tag.startswith("notes:") for tag in cell.get("metadata", {}).get("tags", [])) else source.splitlines()[0][3:].strip()


def notebook_sections(notebook: dict) -> dict[str, list[dict]]:
    """{section title: its code cells}, in order."""
    sections: dict[str, list[dict]] = {}
    current = None
    for cell in notebook["cells"]:
        title = section_title(cell)
        if title is not None:
            current = sections.setdefault(title, [])
        elif current is not None and cell["cell_type"] == "code":
            current.append(cell)
    return sections


def notebook_problems(notebook: dict) -> list[str]:
    """What is wrong with an executed notebook: error outputs, and sections none of whose cells has an output."""
    problems = [f"cell {index} ({cell.get('id', '?')}) has an error output: {output.get('ename')}: "
                f"{str(output.get('evalue', ''))[:500]}"
                for index, cell in enumerate(notebook["cells"]) for output in cell.get("outputs", [])
                if output.get("output_type") == "error"]
    problems += [f"section {title!r} has no output" for title, cells in notebook_sections(notebook).items()
                 if not any(cell.get("outputs") for cell in cells)]
    return problems


def stream_text(notebook: dict) -> str:
    """Everything the executed notebook's cells printed, in order."""
    return "".join("".join(output.get("text", "")) for cell in notebook["cells"] for output in cell.get("outputs", [])
                   if output.get("output_type") == "stream")


def check_kernel(bundle: str | Path, data_root: str | Path, assignments: tuple[str, ...] = (), profile: str = "smoke",
                 stack: str = "kaggle", output: str | Path = "kaggle/check") -> dict:
    """Execute the bundle's notebook as Kaggle does, in a Jupyter kernel (papermill), against a simulated /kaggle
    tree; keep the executed notebook and its HTML rendering (nbconvert) in `output`; validate what it left.

    The notebook's `parameters` cell gets the simulated root, the profile and the overrides; Kaggle's own run
    uses that cell's defaults.

    Args:
        stack: "kaggle" (the environment of kaggle/image.toml) or "local" (this environment's packages).

    Returns:
        {"files": files left in working/, "rows": submission rows, "valid": bool, "python": version,
         "notebook": the executed .ipynb, "html": its rendering, "output": what the cells printed,
         "submission": the submission.csv it wrote, kept in `output`}.

    Raises:
        KernelError: an error output, a section without outputs, 500 or more files in working/, an invalid
            submission; the executed notebook and its HTML are kept for a look all the same.
    """
    base_python = build_stack_environment() if stack == "kaggle" else Path(sys.executable)
    # Absolute: papermill runs in the simulated working folder.
    bundle, output = Path(bundle).resolve(), ensure_writable_folder(output).resolve()
    executed, html = output / "kernel.ipynb", output / "kernel.html"
    for stale in (executed, html, output / "submission.csv"):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="kaggle-check-") as temporary:
        simulation = simulate_kaggle(bundle, data_root, Path(temporary) / "kaggle")
        working = simulation / "working"
        python = layered_environment(base_python, Path(temporary) / "environment")
        parameters = Path(temporary) / "parameters.json"
        parameters.write_text(json.dumps({"kaggle_root": str(simulation), "profile": profile, "assignments": list(assignments)}))
        # nbconvert's templates are in the base environment's share/jupyter, which the layered one does not see.
        base_share = Path(subprocess.run([str(base_python), "-c", "import sys; print(sys.prefix)"], check=True,
                                         capture_output=True, text=True).stdout.strip()) / "share" / "jupyter"
        jupyter_path = os.pathsep.join([str(write_kernelspec(python, Path(temporary) / "jupyter")), str(base_share)])
        environment = {**os.environ, "JUPYTER_PATH": jupyter_path,
                       "JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        environment.pop("PYTHONPATH", None)
        # Kaggle runs notebooks in /kaggle/working; here that also keeps the source checkout off sys.path.
        result = subprocess.run([str(python), "-m", "papermill", str(Path(bundle) / "kernel" / "kernel.ipynb"), str(executed),
                                 "-f", str(parameters), "-k", "python3", "--cwd", str(working), "--no-progress-bar"],
                                capture_output=True, text=True, cwd=working, env=environment)
        if not executed.is_file():
            raise KernelError(f"papermill did not execute the notebook (exit {result.returncode}):\n{result.stderr[-3000:]}")
        render = subprocess.run([str(python), "-m", "nbconvert", "--to", "html", "--output-dir", str(output), str(executed)],
                                capture_output=True, text=True, env=environment)
        notebook = json.loads(executed.read_text())
        problems = notebook_problems(notebook)
        if result.returncode and not problems:
            problems.append(f"papermill failed (exit {result.returncode}): {result.stderr[-2000:]}")
        if render.returncode:
            problems.append(f"nbconvert could not render it: {render.stderr[-1000:]}")
        files = count_files(working)
        if files >= KAGGLE_FILE_LIMIT:
            problems.append(f"{files} files in working/: Kaggle finds no submission at {KAGGLE_FILE_LIMIT} or more")
        report = None
        if (working / "submission.csv").is_file():
            shutil.copyfile(working / "submission.csv", output / "submission.csv")  # kept beside the notebook
            report = validate_submission(working / "submission.csv",
                                         simulation / "input" / "competitions" / bundle_competition_slug(bundle))
            problems += [f"submission: {problem}" for problem in report.problems]
        elif not problems:
            problems.append("the notebook wrote no submission.csv in working/")
        if problems:
            raise KernelError("the notebook as Kaggle runs it is not acceptable (executed notebook: "
                              f"{executed}, HTML: {html}):\n" + "\n".join(f"- {problem}" for problem in problems))
        version = python_version_of(python)
        print(f"kernel check passed on Python {version}: the notebook ran in a Jupyter kernel without an error, every "
              f"section has its outputs, valid submission with {report.rows} rows, {files} files in working/; executed "
              f"notebook {executed}, HTML {html}")
        return {"files": files, "rows": report.rows, "valid": report.valid, "python": version, "notebook": executed,
                "html": html, "output": stream_text(notebook), "submission": output / "submission.csv"}
