"""Stage `submit`: the run's test predictions become a validated submission.csv, where Kaggle looks for it."""

from __future__ import annotations

import shutil
from pathlib import Path

from voc_pipeline.config import Config
from voc_pipeline.data import find_data_root
from voc_pipeline.files import atomic_path, load_label_maps
from voc_pipeline.output_hygiene import count_files, prune_working_folder
from voc_pipeline.prediction import PREDICTIONS_FILE
from voc_pipeline.run_folder import prepare_run_folder, require_artifact, update_metrics
from voc_pipeline.submission import (
    SubmissionError,
    make_test_frame,
    score_submission,
    validate_submission,
    write_submission,
)


def run_submit(config: Config) -> dict:
    """Stage `submit`: build, write and validate the submission from the run's test predictions.

    Writes `runs/<RUN>/submission.csv` and copies it (atomically) to `<submit.output_dir>/submission.csv`;
    prunes that folder if asked; scores the submission when the data root holds a `solution.csv`.

    Raises:
        SubmissionError: the written file does not validate (every problem is listed).
    """
    run_dir = prepare_run_folder(config, "submit")
    arrays, label_maps = load_label_maps(require_artifact(config, PREDICTIONS_FILE, "predict"))
    root = find_data_root(config.data.root)
    path = write_submission(make_test_frame(arrays["ids"], arrays["flags"], label_maps), run_dir / "submission.csv")
    report = validate_submission(path, root)
    if not report.valid:
        raise SubmissionError(f"{path} does not validate:\n  " + "\n  ".join(report.problems))
    output = Path(config.submit.output_dir) / "submission.csv"
    with atomic_path(output) as temporary:
        shutil.copyfile(path, temporary)
    if config.submit.prune_output:
        prune_working_folder(output.parent, tuple(config.submit.keep))
    summary = {"rows": report.rows, "path": str(output), "output_files": count_files(output.parent)}
    solution = root / "solution.csv"
    if solution.exists():
        summary["local_score"] = score_submission(solution, path)
    update_metrics(config, "submit", summary)
    return summary
