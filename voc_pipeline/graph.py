"""The stage graph: every stage in order, what it reads and writes, and a cache that cannot go stale.

A stage's inputs are the configuration values it reads, the content hashes of the run-folder files it
reads, and fingerprints of the data it reads. A stage that finished is current when its recorded inputs
equal today's and its outputs are as it left them; a current stage is skipped, any other reruns. A stage
runs only when every stage it depends on is current: otherwise it stops with an error naming the stage
to rerun. `run_until` walks the graph in order and runs whatever is not current, like `make` or `dvc repro`.

The Makefile, the Kaggle kernel, the command line and the tests all go through `run_stage`/`run_until`;
stage functions are imported only when they run, so commands that need no model never load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from voc_pipeline import artifacts, run_folder
from voc_pipeline.artifacts import Artifact
from voc_pipeline.config import REFIT_KEYS, Config, config_to_dict
from voc_pipeline.config_view import ConfigView, without_keys
from voc_pipeline.data.competition import find_data_root, fingerprint
from voc_pipeline.errors import ConfigError, StaleStageError
from voc_pipeline.files import ensure_writable_folder, hash_file, write_json_atomic
from voc_pipeline.run_folder import now, prepare_run_folder, read_record, software_record, start_record, write_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: the stage's name (`voc-pipeline run --until NAME`).
        command: its own command-line words.
        function: "module:function" of `run_<stage>(config) -> dict of metrics` (saved as metrics/<stage>.json).
        summary: one line for --help and the README.
        config_keys: the configuration sections or dotted keys it reads; the stage runs on a ConfigView that
            refuses any other key (voc_pipeline.config_view), so this list is its cache key's exact scope.
        reads: the run-folder artifacts it reads.
        data: the data splits it reads ("train", "test").
        copies_to: a configuration key naming a folder the stage also copies its files into.
        leaves_out: keys under `config_keys` that a later stage reads instead (`refit_all`): outside this
            stage's cache key and refused by its view, so changing them does not rerun it.
    """

    name: str
    command: tuple[str, ...]
    function: str
    summary: str
    config_keys: tuple[str, ...]
    reads: tuple[Artifact, ...] = ()
    data: tuple[str, ...] = ()
    copies_to: str | None = None
    leaves_out: tuple[str, ...] = ()

    @property
    def writes(self) -> tuple[Artifact, ...]:
        return artifacts.written_by(self.name)

    @property
    def command_line(self) -> str:
        return "voc-pipeline " + " ".join(self.command)


TRAINING_KEYS = ("seed", "mixed_precision", "deterministic")
CLASSIFIER_FILES = (artifacts.CLASSIFIER_MANIFEST, artifacts.CLASSIFIER_MODELS)
SEGMENTER_FILES = (artifacts.SEGMENTER_MANIFEST, artifacts.SEGMENTER_MODEL)
# The first trainings leave the refit's switch to stage refit.
CLASSIFIER_REFIT_KEYS = tuple(f"classifier.{key}" for key in REFIT_KEYS)
SEGMENTER_REFIT_KEYS = tuple(f"segmenter.{key}" for key in REFIT_KEYS)

STAGES: tuple[Stage, ...] = (
    Stage("data", ("data", "check"), "voc_pipeline.stages.data_check:run_data_check",
          "load and validate the data, write stratified splits and a summary",
          ("seed", "data.validation_fraction", "data.num_folds"), data=("train", "test")),
    Stage("train-cls", ("train-cls",), "voc_pipeline.stages.train_cls:run_train_cls",
          "train the multi-label classifier; validation probabilities",
          (*TRAINING_KEYS, "classifier"), (artifacts.SPLITS,), ("train",), leaves_out=CLASSIFIER_REFIT_KEYS),
    Stage("train-seg", ("train-seg",), "voc_pipeline.stages.train_seg:run_train_seg",
          "train the DeepLabV3+ segmenter; validation mIoU and overlays",
          (*TRAINING_KEYS, "segmenter"), (artifacts.SPLITS,), ("train",), leaves_out=SEGMENTER_REFIT_KEYS),
    Stage("tune", ("tune",), "voc_pipeline.stages.tune:run_tune",
          "thresholds, scales, fused evidence and the joint rule, each chosen on validation predictions",
          ("seed", "thresholds", "joint", "inference"),
          (artifacts.SPLITS, artifacts.CLASSIFIER_VALIDATION, *SEGMENTER_FILES), ("train",)),
    Stage("self-train", ("self-train",), "voc_pipeline.stages.self_train:run_self_train",
          "with self_training.rounds, train both heads on from the test images they confidently agree on; kept only "
          "if they then beat the first models on validation",
          (*TRAINING_KEYS, "classifier", "segmenter", "inference", "self_training"),
          (artifacts.SPLITS, *CLASSIFIER_FILES, *SEGMENTER_FILES, artifacts.THRESHOLDS, artifacts.JOINT_RULE),
          ("train", "test"), leaves_out=CLASSIFIER_REFIT_KEYS + SEGMENTER_REFIT_KEYS),
    # After tune, so that validation has chosen the epochs, thresholds and rules before its images are trained on.
    Stage("refit", ("refit",), "voc_pipeline.stages.refit:run_refit",
          "with refit_all, train the final models again on fit + validation images for the epochs validation chose",
          (*TRAINING_KEYS, "classifier", "segmenter"),
          (artifacts.SPLITS, *CLASSIFIER_FILES, artifacts.CLASSIFIER_HISTORY, *SEGMENTER_FILES, artifacts.SEGMENTER_HISTORY,
           artifacts.SELF_TRAINING), ("train",)),
    Stage("predict", ("predict",), "voc_pipeline.stages.predict:run_predict",
          "classify and segment the test set with the final models and what tune chose",
          ("inference",), (*CLASSIFIER_FILES, *SEGMENTER_FILES, artifacts.FINAL_MODELS, artifacts.THRESHOLDS,
                           artifacts.JOINT_RULE), ("test",)),
    Stage("submit", ("submit",), "voc_pipeline.stages.submit:run_submit",
          "write, validate and copy submission.csv",
          ("submit",), (artifacts.TEST_PREDICTIONS,), ("test",), copies_to="submit.output_dir"),
    Stage("evaluate", ("evaluate",), "voc_pipeline.stages.evaluate:run_evaluate",
          "validation scores against the baseline, report.md",
          (), (artifacts.SPLITS, artifacts.CLASSIFIER_MANIFEST, artifacts.SEGMENTER_MANIFEST, artifacts.THRESHOLD_COMPARISON,
               artifacts.JOINT_RULE, artifacts.VALIDATION_PREDICTIONS, artifacts.TEST_PREDICTIONS, artifacts.FINAL_MODELS,
               artifacts.SELF_TRAINING,
               artifacts.metrics("train-cls"),
               artifacts.metrics("train-seg"), artifacts.metrics("tune")),
          ("train",)),
    Stage("attack", ("attack",), "voc_pipeline.stages.attack:run_attack",
          "adversarial examples against the run's models, attack/attack.md",
          ("attack",), (artifacts.SPLITS, *CLASSIFIER_FILES, *SEGMENTER_FILES, artifacts.THRESHOLDS), ("train",)),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage_named(name: str) -> Stage:
    """The stage called `name`, or a ConfigError listing the stages."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; the stages, in order: {', '.join(STAGE_NAMES)}")


def stages_until(name: str) -> tuple[Stage, ...]:
    """The stages from the first up to and including `name`."""
    return STAGES[: STAGE_NAMES.index(stage_named(name).name) + 1]


def producers(stage: Stage) -> tuple[Stage, ...]:
    """The stages that write what `stage` reads, in graph order."""
    names = {artifact.stage for artifact in stage.reads}
    return tuple(candidate for candidate in STAGES if candidate.name in names)


def upstream(stage: Stage) -> tuple[Stage, ...]:
    """Every stage `stage` depends on, directly or not, in graph order."""
    names: set[str] = set()
    pending = list(producers(stage))
    while pending:
        producer = pending.pop()
        if producer.name not in names:
            names.add(producer.name)
            pending.extend(producers(producer))
    return tuple(candidate for candidate in STAGES if candidate.name in names)


def downstream(stage: Stage) -> tuple[Stage, ...]:
    """Every stage that depends on `stage`, in graph order."""
    return tuple(candidate for candidate in STAGES if stage in upstream(candidate))


# What a trained run carries to a notebook that predicts from it (`kernel build --trained`): every stage the
# test predictions depend on. The notebook runs only the others, and never these.
TRAINED_STAGES = tuple(stage.name for stage in upstream(stage_named("predict")))


# ---------------------------------------------------------------- inputs and keys


def resolve_paths(config: Config) -> Config:
    """The configuration with the data root found and made absolute, and the output folder made absolute.

    Done once, before any stage runs, so `--data ./d` and `--data d` are the same run, and `config.toml`
    records where the data really was.
    """
    root = str(find_data_root(config.data.root or None).resolve())
    output_dir = str(Path(config.submit.output_dir).expanduser().resolve())
    return dataclasses.replace(config, data=dataclasses.replace(config.data, root=root),
                               submit=dataclasses.replace(config.submit, output_dir=output_dir))


def config_value(config: Config, dotted_key: str, left_out: tuple[str, ...] = ()):
    """A section (as a dict, less the `left_out` keys) or a single value of the configuration, by dotted key."""
    value = config_to_dict(config)
    for part in dotted_key.split("."):
        value = value[part]
    return without_keys(value, dotted_key + ".", left_out) if isinstance(value, dict) else value


def current_inputs(config: Config, stage: Stage) -> dict:
    """What `stage` would read now: configuration values, input file hashes (None for a missing input)
    and data fingerprints."""
    run_dir = config.run_dir
    files = {}
    for artifact in stage.reads:
        found = artifact.files(run_dir)
        files.update({path.relative_to(run_dir).as_posix(): hash_file(path) for path in found})
        if not found:
            files[artifact.pattern] = None
    return {
        "config": {key: config_value(config, key, stage.leaves_out) for key in stage.config_keys},
        "artifacts": files,
        "data": {split: fingerprint(config.data.root, split) for split in stage.data},
    }


def input_key(inputs: dict) -> str:
    """One hash of everything a stage read."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def describe_changes(recorded: dict, current: dict) -> list[str]:
    """In words, how the inputs a stage ran with differ from today's."""
    reasons = []
    old_config, new_config = flatten(recorded.get("config", {})), flatten(current["config"])
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key, "(absent)") != new_config.get(key, "(absent)"):
            reasons.append(f"{key}: {old_config.get(key, '(absent)')} -> {new_config.get(key, '(absent)')}")
    old_files = recorded.get("artifacts", {})
    for name, digest in current["artifacts"].items():
        if digest is None:
            reasons.append(f"its input {name} is missing")
        elif old_files.get(name) != digest:
            reasons.append(f"its input {name} changed")
    reasons += [f"its input {name} is gone" for name in old_files if name not in current["artifacts"]]
    old_data = recorded.get("data", {})
    reasons += [f"the {split} data changed" for split, digest in current["data"].items() if old_data.get(split) != digest]
    return reasons


def output_paths(config: Config, stage: Stage) -> list[Path]:
    """The files `stage` wrote: its artifacts in the run folder, and their copies where it copies them."""
    paths = [path for artifact in stage.writes for path in artifact.files(config.run_dir)]
    if stage.copies_to:
        folder = Path(config_value(config, stage.copies_to))
        paths += [folder / path.name for artifact in stage.writes if "*" not in artifact.pattern
                  and not artifact.pattern.startswith("metrics/") for path in artifact.files(config.run_dir)]
    return paths


def record_name(config: Config, path: Path) -> str:
    """A path as it is recorded: relative inside the run folder, absolute outside it."""
    return path.relative_to(config.run_dir).as_posix() if path.is_relative_to(config.run_dir) else str(path)


def changed_outputs(config: Config, outputs: dict[str, str]) -> list[str]:
    """The recorded outputs that are gone or whose bytes changed since the stage wrote them."""
    changed = []
    for name, digest in outputs.items():
        path = Path(name) if Path(name).is_absolute() else config.run_dir / name
        if not path.is_file() or hash_file(path) != digest:
            changed.append(name)
    return changed


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class StageStatus:
    """Where a stage stands: "current", "not run", "stale" (its inputs or outputs changed) or "waiting"
    (it is current itself, but a stage it depends on is not)."""

    stage: str
    state: str
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.state + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def status(config: Config, until: str | None = None) -> dict[str, StageStatus]:
    """The status of every stage (up to `until`), in graph order. `config` must have resolved paths."""
    statuses: dict[str, StageStatus] = {}
    for stage in stages_until(until) if until else STAGES:
        record = read_record(config.run_dir, stage.name)
        if not record.get("finished"):
            statuses[stage.name] = StageStatus(stage.name, "not run")
            continue
        reasons = [f"its output {name} was changed or deleted" for name in changed_outputs(config, record.get("outputs", {}))]
        reasons += describe_changes(record.get("inputs", {}), current_inputs(config, stage))
        if reasons:
            statuses[stage.name] = StageStatus(stage.name, "stale", tuple(reasons))
            continue
        waiting = [producer.name for producer in producers(stage) if statuses[producer.name].state != "current"]
        statuses[stage.name] = StageStatus(stage.name, "waiting" if waiting else "current",
                                           tuple(f"on {name}" for name in waiting))
    return statuses


# ---------------------------------------------------------------- running


def import_function(reference: str):
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def file_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def execute(config: Config, stage: Stage) -> dict:
    """Run one stage now and record what it read and wrote; returns its metrics.

    Every folder it writes is checked first, so a bad folder fails before any file changes. Its record is
    written only when it has finished: an attempt that fails leaves the earlier record, which stays current
    only while every file it lists is byte for byte as it was (files are only ever replaced whole). Once
    it has finished, those of its earlier files it did not write again (a model of a fold that no longer
    exists) are removed.
    """
    ensure_writable_folder(config.run_dir)
    if stage.copies_to:
        ensure_writable_folder(config_value(config, stage.copies_to))
    run_dir = prepare_run_folder(config)
    inputs = current_inputs(config, stage)
    record = start_record()
    earlier = {path: file_identity(path) for path in output_paths(config, stage) if path.is_relative_to(run_dir)}
    started = time.perf_counter()
    view = ConfigView(config, stage.name, stage.config_keys, left_out=stage.leaves_out)
    metrics = import_function(stage.function)(view)
    write_json_atomic(artifacts.metrics(stage.name).path(run_dir), metrics)
    for path, identity in earlier.items():
        if path.exists() and file_identity(path) == identity:
            path.unlink()
    outputs = {record_name(config, path): hash_file(path) for path in output_paths(config, stage)}
    write_record(run_dir, stage.name, {**record, **software_record(), "finished": now(),
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "key": input_key(inputs), "inputs": inputs, "outputs": outputs,
                                       "config_read": view.reads})
    return metrics


def run_stage(config: Config, name: str, force: bool = False) -> str:
    """Run stage `name` unless it is current (or `force`); returns "ran" or "current".

    Raises:
        StaleStageError: a stage it depends on has not run, or is no longer current; the message names it.
    """
    config = resolve_paths(config)
    stage = stage_named(name)
    statuses = status(config, until=name)
    for needed in upstream(stage):
        if statuses[needed.name].state != "current":
            raise StaleStageError(
                f"stage {name} needs stage {needed.name} of run {config.run_name!r}, which is "
                f"{statuses[needed.name].describe()}: run `voc-pipeline run --until {name}` (with this run's "
                f"--run, --profile and --set) to rerun what changed, or give the configuration it ran with "
                f"(--profile {config.run_dir / artifacts.CONFIG_FILE} is the last one used)")
    own = statuses[name]
    if own.state == "current" and not force:
        logger.info("stage %s is current in %s (same configuration, inputs and data): skipped; --force reruns it",
                    name, config.run_dir)
        return "current"
    logger.info("stage %s: running (%s)", name, "forced" if own.state == "current" else own.describe())
    logger.debug("stage %s reads the configuration keys %s, the artifacts %s and the %s data", name,
                 ", ".join(stage.config_keys) or "(none)", ", ".join(artifact.pattern for artifact in stage.reads) or "(none)",
                 " and ".join(stage.data) or "no")
    with run_folder.running_stage(config.run_dir, name):  # the run lock; a full disk as one error
        execute(config, stage)
    return "ran"


def run_until(config: Config, name: str, force: bool = False, no_training: bool = False) -> dict[str, str]:
    """Run every stage up to and including `name` that is not current; `force` reruns `name` itself.

    With `no_training` (a notebook predicting from a trained run), the TRAINED_STAGES must all be current, by the
    same content keys as always: one that is not stops everything at once, naming why, instead of training.

    Returns:
        {stage: "ran" or "current"} in graph order.
    """
    config = resolve_paths(config)
    if no_training:
        statuses = status(config, until=TRAINED_STAGES[-1])
        for stage in TRAINED_STAGES:
            if statuses[stage].state != "current":
                raise StaleStageError(
                    f"stage {stage} of run {config.run_name!r} is {statuses[stage].describe()}: with --no-training "
                    f"the stages {', '.join(TRAINED_STAGES)} must be current, and this command never reruns them "
                    f"(the run's own configuration is --profile {config.run_dir / artifacts.CONFIG_FILE})")
    return {stage.name: run_stage(config, stage.name, force=force and stage.name == name) for stage in stages_until(name)}
