"""Runs made before the notebook, in its dataset: `kernel build --experiments RUN [RUN ...]`.

The course suggests running the expensive experiments elsewhere and summarising them in the notebook. The
build copies each run's small files (configuration, stage records, metrics, reports, histories, figures;
never models, predictions or data) into `dataset/experiments/<run>/`, writes their comparison
(`voc-pipeline compare`) beside them, and the notebook shows it in "Experiments run before this notebook".
"""

from __future__ import annotations

import shutil
from pathlib import Path

from voc_pipeline.errors import RunSelectionError
from voc_pipeline.files import byte_size, write_json_atomic

EXPERIMENTS_FOLDER = "experiments"
# The small files of a run folder, by pattern relative to it.
SMALL_FILES = ("config.toml", "run_info.json", "metrics/*.json", "*.md", "*_history*.csv", "*.png",
               "attack/*.md", "attack/*.csv", "attack/*.png")
# What the experiments may add to the uploaded dataset: figures and reports, never models.
EXPERIMENTS_LIMIT_BYTES = 50_000_000


def small_files(run_dir: Path) -> list[Path]:
    """The files of a run that travel with the notebook, sorted, each once."""
    return sorted({path for pattern in SMALL_FILES for path in run_dir.glob(pattern) if path.is_file() and not path.is_symlink()})


def check_experiments(run_dirs: tuple[str | Path, ...]) -> list[Path]:
    """The experiment runs, checked: each a finished run folder (not running now), names unique, their small files
    under the size limit.

    Raises:
        RunSelectionError: a run that does not exist, is not a run folder or is still running; repeated names; too
            many bytes.
    """
    from voc_pipeline.comparison import check_run_folder

    paths = [check_run_folder(path, allow_running=False) for path in run_dirs]
    names = [path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RunSelectionError(f"--experiments names two runs called {', '.join(repeated)}: the dataset keeps each run "
                                f"under its folder name; rename one")
    files = [(path, file) for path in paths for file in small_files(path)]
    total = sum(file.stat().st_size for _, file in files)
    if total > EXPERIMENTS_LIMIT_BYTES:
        largest = sorted(files, key=lambda item: -item[1].stat().st_size)[:3]
        raise RunSelectionError(f"the experiment runs' small files take {byte_size(total)}, over the "
                                f"{byte_size(EXPERIMENTS_LIMIT_BYTES)} the bundle allows; the largest: "
                                + ", ".join(f"{file} ({byte_size(file.stat().st_size)})" for _, file in largest))
    return paths


def bundle_experiments(run_dirs: tuple[str | Path, ...], destination: Path) -> dict:
    """Copy the runs' small files into `destination/<run>/`, write the comparison and experiments.json there.

    Returns:
        {"runs": names in order, "files": count, "bytes": size of the folder}.
    """
    from voc_pipeline.comparison import summarise_run, write_comparison

    paths = check_experiments(run_dirs)
    count = 0
    for path in paths:
        for file in small_files(path):
            target = destination / path.name / file.relative_to(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
            count += 1
    write_comparison([summarise_run(path) for path in paths], destination)
    size = sum(file.stat().st_size for file in destination.rglob("*") if file.is_file())
    manifest = {"runs": [path.name for path in paths], "files": count, "bytes": size}
    write_json_atomic(destination / "experiments.json", manifest)
    return manifest
