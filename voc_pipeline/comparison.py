"""`voc-pipeline compare RUN [RUN ...]`: runs made elsewhere side by side, as comparison.md and comparison.png.

For each run: its name, what differs in its configuration from the first run's, the validation score
(overall, classification rows, segmentation rows), classifier mAP, segmenter mIoU, the chosen joint rule,
what self-training did and the training time. A run that did not reach `evaluate`, or is running now, is named as such in the
table, never left out. Everything comes from the run folders' own files (config.toml, run_info.json,
metrics/*.json, self_training.json); no model is loaded.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline import artifacts, markdown, run_folder
from voc_pipeline.errors import RunSelectionError
from voc_pipeline.files import ensure_writable_folder, write_text_atomic
from voc_pipeline.graph import STAGE_NAMES, flatten

# Where a run's files went, not what it did: never reported as a difference.
BOOKKEEPING_KEYS = ("run_name", "runs_dir", "submit.output_dir")
TRAINING_STAGES = ("train-cls", "train-seg", "self-train")


@dataclass(frozen=True)
class RunSummary:
    """What `compare` reports of one run."""

    name: str
    path: Path
    config: dict
    state: str
    scores: dict | None
    classifier_map: float | None
    segmenter_miou: float | None
    joint_rule: str | None
    training_seconds: float
    self_training: str = "off"


def check_run_folder(path: str | Path, allow_running: bool = True) -> Path:
    """A run folder given on the command line, or a RunSelectionError saying why it cannot be used."""
    path = Path(path)
    if not path.is_dir():
        raise RunSelectionError(f"{path} is {'not a folder' if path.exists() else 'no run folder (no such folder)'}: "
                                f"give run folders such as runs/first")
    if not (path / artifacts.CONFIG_FILE).is_file():
        raise RunSelectionError(f"{path} is not a run folder: it has no {artifacts.CONFIG_FILE} (every stage writes one)")
    holder = run_folder.lock_holder(path)
    if holder and not allow_running:
        raise RunSelectionError(f"run {path} is still running: {run_folder.describe_holder(holder)} holds its lock; "
                                f"wait until it ends")
    return path


def read_optional_metrics(run_dir: Path, stage: str) -> dict | None:
    path = artifacts.metrics(stage).path(run_dir)
    return artifacts.read_metrics(run_dir, stage) if path.is_file() else None


def summarise_run(path: Path) -> RunSummary:
    """One run's figures from its files."""
    try:
        config = flatten(tomllib.loads((path / artifacts.CONFIG_FILE).read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RunSelectionError(f"{path / artifacts.CONFIG_FILE} is unreadable ({error}): it is not a run's "
                                f"configuration") from None
    records = run_folder.read_run_info(path)["stages"]
    finished = [name for name in STAGE_NAMES if records.get(name, {}).get("finished")]
    evaluation = read_optional_metrics(path, "evaluate") if "evaluate" in finished else None
    holder = run_folder.lock_holder(path)
    if holder:
        state = f"still running (stage {holder.get('stage', '?')})"
    elif evaluation:
        state = "evaluated"
    else:
        state = f"stopped before evaluate (last stage: {finished[-1] if finished else 'none'})"
    classifier = read_optional_metrics(path, "train-cls") if "train-cls" in finished else None
    segmenter = read_optional_metrics(path, "train-seg") if "train-seg" in finished else None
    scores = None
    if evaluation:
        scores = evaluation["scores"][next(name for name in evaluation["scores"] if name.startswith("joint rule"))]
    return RunSummary(path.name, path, config, state, scores,
                      classifier["mean_average_precision"] if classifier else None,
                      segmenter["mean_iou"] if segmenter else None,
                      evaluation["joint_rule"] if evaluation else None,
                      sum(float(records[name].get("seconds", 0)) for name in TRAINING_STAGES if name in finished),
                      self_training_outcome(path) if "self-train" in finished else "off")


def self_training_outcome(run_dir: Path) -> str:
    """What stage self-train did, in a few words: off, nothing pseudo-labelled, or kept / not kept with both
    validation scores."""
    manifest = artifacts.read_self_training(Path(run_dir))
    if not manifest.get("rounds"):
        return "off"
    scores = manifest.get("validation_score", {})
    if "self_trained" not in scores:
        return "nothing pseudo-labelled"
    return (f"{'kept' if manifest['kept'] else 'not kept'}: {scores['self_trained']:.4f} against {scores['first']:.4f} "
            f"({manifest['pseudo_labelled_images']} test images)")


def differences(config: dict, reference: dict) -> list[str]:
    """The configuration keys whose values differ from the reference run's, as `key = value`."""
    keys = sorted((set(config) | set(reference)) - set(BOOKKEEPING_KEYS))
    return [f"{key} = {json.dumps(config.get(key, '(absent)'))}" for key in keys
            if config.get(key, "(absent)") != reference.get(key, "(absent)")]


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s" if minutes else f"{rest} s"


def comparison_table(summaries: list[RunSummary]) -> str:
    fmt = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    rows = []
    for index, summary in enumerate(summaries):
        changed = "(reference)" if index == 0 else "<br>".join(differences(summary.config, summaries[0].config)) or "nothing"
        scores = summary.scores or {}
        rows.append((f"`{summary.name}`", changed, summary.state, fmt(scores.get("score")), fmt(scores.get("classification")),
                     fmt(scores.get("segmentation")), fmt(summary.classifier_map), fmt(summary.segmenter_miou),
                     summary.joint_rule or "-", summary.self_training, duration(summary.training_seconds)))
    return markdown.table(("run", f"differs from `{summaries[0].name}`", "state", "validation score", "classification rows",
                           "segmentation rows", "classifier mAP", "segmenter mIoU", "joint rule", "self-training",
                           "training time"), rows)


def compare_runs(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Write `output/comparison.md` and `output/comparison.png` for the runs (the first is the reference).

    Raises:
        RunSelectionError: fewer than two runs, a folder that is not a run, two runs of the same name; nothing is
            written then.
    """
    if len(run_dirs) < 2:
        raise RunSelectionError(f"compare needs at least two runs to compare, got {len(run_dirs)}: "
                                f"`voc-pipeline compare runs/a runs/b --output DIR`")
    paths = [check_run_folder(path) for path in run_dirs]
    names = [path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RunSelectionError(f"two runs are named {', '.join(repeated)}: give runs with different folder names")
    summaries = [summarise_run(path) for path in paths]
    output = write_comparison(summaries, output)
    print(f"comparison of {len(summaries)} runs ({sum(1 for summary in summaries if summary.scores)} evaluated) in "
          f"{output / 'comparison.md'} and {output / 'comparison.png'}")
    return output


def write_comparison(summaries: list[RunSummary], output: str | Path) -> Path:
    from voc_pipeline.plots import plot_score_comparison

    output = ensure_writable_folder(output)
    evaluated = [summary for summary in summaries if summary.scores]
    not_evaluated = [summary for summary in summaries if not summary.scores]
    lines = [f"# {len(summaries)} run{'s' if len(summaries) > 1 else ''} compared",
             f"Validation figures of each run's own validation split; the first run, `{summaries[0].name}`, is the "
             f"reference its configuration differences are measured from. Training time: both heads' training stages and self-training.",
             comparison_table(summaries)]
    if not_evaluated:
        lines.append("Not evaluated: " + "; ".join(f"`{summary.name}` {summary.state}" for summary in not_evaluated) + ".")
    plot_score_comparison({summary.name: summary.scores for summary in evaluated}, output / "comparison.png")
    write_text_atomic(output / "comparison.md", "\n\n".join(lines) + "\n")
    return output
