"""Stage `submit`: the run's test predictions become a validated submission.csv, where Kaggle looks for it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from voc_pipeline import artifacts
from voc_pipeline.config import Config
from voc_pipeline.data.competition import SOLUTION_FILE
from voc_pipeline.data.output_folder import ALWAYS_KEPT, check_prunable, count_files, prune_working_folder
from voc_pipeline.data.submission import make_test_frame, score_submission, validate_submission, write_submission
from voc_pipeline.errors import SubmissionError
from voc_pipeline.files import atomic_path

logger = logging.getLogger(__name__)


def run_submit(config: Config) -> dict:
    """Stage `submit`: build, write and validate the submission from the run's test predictions.

    Writes `runs/<RUN>/submission.csv` and copies it (atomically) to `<submit.output_dir>/submission.csv`;
    prunes that folder if asked; scores the submission when the data root holds a `solution.csv`.

    Raises:
        SubmissionError: the written file does not validate (every problem is listed).
    """
    output = Path(config.submit.output_dir) / artifacts.SUBMISSION.pattern
    if config.submit.prune_output:
        check_prunable(output.parent, (ALWAYS_KEPT, *config.submit.keep))  # before anything is copied there
    arrays, label_maps = artifacts.read_test_predictions(config.run_dir)
    root = Path(config.data.root)
    path = write_submission(make_test_frame(arrays["ids"], arrays["flags"], label_maps),
                            artifacts.SUBMISSION.path(config.run_dir))
    report = validate_submission(path, root)
    if not report.valid:
        raise SubmissionError(f"{path} does not validate:\n  " + "\n  ".join(report.problems))
    with atomic_path(output, elsewhere="another submit.output_dir") as temporary:
        shutil.copyfile(path, temporary)
    if config.submit.prune_output:
        prune_working_folder(output.parent, tuple(config.submit.keep))
    summary = {"rows": report.rows, "path": str(output), "output_files": count_files(output.parent)}
    solution = root / SOLUTION_FILE
    if solution.exists():
        summary["local_score"] = score_submission(solution, path, root)
    logger.info("submission: %d rows, validated, copied to %s%s", report.rows, output,
                f"; local score {summary['local_score']['score']:.4f}" if "local_score" in summary else "")
    return summary
