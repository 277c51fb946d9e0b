"""The stage graph: its shape, its cache keys, and what each kind of change makes rerun."""

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voc_pipeline import artifacts
from voc_pipeline.cli import build_parser, main
from voc_pipeline.config import build_config, config_to_dict
from voc_pipeline.config_view import ConfigView, UndeclaredConfigKeyError, declares
from voc_pipeline.data.competition import fingerprint
from voc_pipeline.errors import ConfigError, StaleStageError
from voc_pipeline.graph import (
    STAGE_NAMES,
    STAGES,
    describe_changes,
    downstream,
    execute,
    resolve_paths,
    run_stage,
    run_until,
    stage_named,
    status,
    upstream,
)
from voc_pipeline.run_folder import read_record

PACKAGE = Path(__file__).resolve().parents[1] / "voc_pipeline"


def test_every_stage_comes_after_the_stages_that_write_what_it_reads():
    """run_until walks STAGES in order: each stage's producers must have run before it, and each file it reads
    must be one its producer declares it writes (which is what makes that producer's rerun make it stale)."""
    assert len(set(STAGE_NAMES)) == len(STAGES)
    for position, stage in enumerate(STAGES):
        earlier = STAGES[:position]
        assert all(producer in earlier for producer in upstream(stage)), stage.name
        for artifact in stage.reads:
            assert artifact in stage_named(artifact.stage).writes, (stage.name, artifact.pattern, artifact.stage)
            assert stage_named(artifact.stage) in earlier, (stage.name, artifact.pattern, artifact.stage)
    # Validation chooses the epochs, thresholds and rules before the refit trains on its images.
    assert STAGE_NAMES.index("tune") < STAGE_NAMES.index("refit")


def test_predict_reads_only_the_models_the_tuned_choices_and_the_test_images():
    predict = stage_named("predict")
    assert {artifact.stage for artifact in predict.reads} == {"train-cls", "train-seg", "tune", "refit"}
    assert artifacts.FINAL_MODELS in predict.reads and predict.data == ("test",)
    assert [stage.name for stage in upstream(predict)] == ["data", "train-cls", "train-seg", "tune", "self-train", "refit"]
    # evaluate compares the classes per image predicted on the test set with validation's.
    assert [stage.name for stage in downstream(stage_named("predict"))] == ["submit", "evaluate"]


def test_the_refit_follows_training_and_its_switch_retrains_nothing_else():
    refit = stage_named("refit")
    # Through self-train (which pseudo-labels with tune's plan); with self-training off its file stays byte for byte
    # the same whatever tune chose, so a new tune never retrains a refit.
    assert [stage.name for stage in upstream(refit)] == ["data", "train-cls", "train-seg", "tune", "self-train"]
    assert [stage.name for stage in downstream(refit)] == ["predict", "submit", "evaluate"]
    assert STAGE_NAMES.index("refit") == STAGE_NAMES.index("self-train") + 1
    assert refit.config_keys == ("seed", "mixed_precision", "deterministic", "classifier", "segmenter")
    plain, switched = (resolve_inputs(assignments) for assignments in ([], ["classifier.refit_all=true",
                                                                            "segmenter.refit_all=true"]))
    for name in ("train-cls", "train-seg"):
        assert plain[name] == switched[name], name
    assert plain["refit"] != switched["refit"]


def resolve_inputs(assignments) -> dict:
    """Each training stage's configuration inputs, as its cache key holds them."""
    from voc_pipeline.graph import config_value

    config = build_config(assignments=assignments)
    return {stage.name: {key: config_value(config, key, stage.leaves_out) for key in stage.config_keys}
            for stage in STAGES if stage.name in ("train-cls", "train-seg", "refit")}


def test_each_run_folder_file_belongs_to_one_artifact(tiny_run):
    """Every file a real run wrote (so that a stage records it as its output, and a carried run carries it), and
    the names of those the tiny run does not write (folds, the attack), belongs to exactly one artifact."""
    config, _ = tiny_run
    written = [path.relative_to(config.run_dir).as_posix() for path in config.run_dir.rglob("*") if path.is_file()
               and path.name not in (artifacts.CONFIG_FILE, artifacts.RUN_INFO_FILE) and "checkpoints" not in path.parts]
    assert "reliability.png" in written
    names = [*written, "splits.json", "classifier.keras", "classifier_fold3.keras", "classifier_history_fold0.csv",
             "classifier_curves.png", "classifier_per_class.png", "segmenter.keras", "segmenter_curves.png",
             "thresholds.json", "joint_rule.json", "validation_predictions.npz", "test_predictions.npz", "submission.csv",
             "report.md", "worst_validation_images.png", "pixel_confusion.png",
             "attack/attack.md", "metrics/tune.json", "final_models.json", "refit_classifier.keras",
             "refit_segmenter.keras", "refit_classifier_history.csv", "refit_segmenter_curves.png", "metrics/refit.json",
             "self_training.json", "self_trained_classifier.keras", "self_trained_segmenter_history.csv",
             "self_trained_classifier_curves.png", "pseudo_labels.png", "metrics/self-train.json"]
    every = [*artifacts.ARTIFACTS, *(artifacts.metrics(name) for name in STAGE_NAMES)]
    for name in names:
        owners = [artifact.pattern for artifact in every if Path(name).match(artifact.pattern)]
        assert len(owners) == 1, (name, owners)


def test_the_command_line_offers_each_stage_and_run_until():
    help_text = build_parser().format_help()
    for stage in STAGES:
        assert stage.command[0] in help_text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--until", "nonsense"])
    with pytest.raises(ConfigError, match="unknown stage 'nonsense'; the stages, in order: data, train-cls"):
        stage_named("nonsense")


def stage_modules() -> dict[str, set[str]]:
    """Each stage module and the voc_pipeline modules it imports."""
    imports = {}
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        found |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imports[path.stem] = {name for name in found if name.startswith("voc_pipeline")}
    return imports


def test_no_stage_module_imports_another():
    for module, imported in stage_modules().items():
        assert not {name for name in imported if name.startswith("voc_pipeline.stages")}, module


def test_every_stage_function_exists_with_its_documented_name():
    from voc_pipeline.graph import import_function

    for stage in STAGES:
        module_name = "_".join(stage.command).replace("-", "_")
        assert stage.function == f"voc_pipeline.stages.{module_name}:run_{module_name}"
        assert callable(import_function(stage.function))


@pytest.mark.slow
def test_the_pure_core_loads_neither_tensorflow_nor_keras():
    core = sorted(f"voc_pipeline.core.{path.stem}" for path in Path(artifacts.__file__).with_name("core").glob("*.py"))
    assert len(core) >= 10
    # The allowed values and the configuration are read by every command, before any model is needed.
    code = (f"import sys, {', '.join(core)}, voc_pipeline.choices, voc_pipeline.config, voc_pipeline.config_view; "
            "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_command_line_starts_without_tensorflow():
    code = "import sys; from voc_pipeline.cli import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_changes_are_described_key_by_key():
    recorded = {"config": {"classifier": {"image_size": 96, "loss": "bce"}, "seed": 0},
                "artifacts": {"splits.json": "aaa", "old.json": "ccc"}, "data": {"train": "x"}}
    current = {"config": {"classifier": {"image_size": 128, "loss": "bce"}, "seed": 0},
               "artifacts": {"splits.json": "bbb", "new.json": None}, "data": {"train": "y"}}
    assert describe_changes(recorded, current) == [
        "classifier.image_size: 96 -> 128", "its input splits.json changed", "its input new.json is missing",
        "its input old.json is gone", "the train data changed"]
    assert describe_changes(current, current) == ["its input new.json is missing"]


def test_data_paths_are_resolved_once_and_equal_spellings_agree(demo_root, monkeypatch):
    monkeypatch.chdir(demo_root.parent)
    plain = resolve_paths(build_config(assignments=[f'data.root="{demo_root.name}"']))
    dotted = resolve_paths(build_config(assignments=[f'data.root="./{demo_root.name}/"']))
    assert plain == dotted and Path(plain.data.root).is_absolute() and Path(plain.submit.output_dir).is_absolute()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "a\\b", "", ".hidden"])
def test_run_names_are_plain_folder_names(name):
    with pytest.raises(ConfigError, match="not a plain folder name"):
        build_config(assignments=[f'run_name="{name}"'])


def test_fingerprint_follows_the_data_not_its_path_nor_its_times(demo_root, tmp_path):
    # shutil.copy gives every file a new modification time, as a download or Kaggle's mount of the same data does.
    copy = shutil.copytree(demo_root, tmp_path / "copy", copy_function=shutil.copy)
    os.utime(copy / "train" / "img" / "train_0.npy", (1, 1))
    assert fingerprint(copy, "train") == fingerprint(demo_root, "train")
    assert fingerprint(copy, "test") == fingerprint(demo_root, "test")
    before_train = fingerprint(copy, "train")
    image_path = copy / "test" / "img" / "test_0.npy"
    np.save(image_path, np.load(image_path)[::-1].copy())
    assert fingerprint(copy, "test") != fingerprint(demo_root, "test")
    assert fingerprint(copy, "train") == before_train
    (copy / "solution.csv").unlink()
    changed = fingerprint(copy, "test")
    (copy / "test" / "test_set.csv").write_text((copy / "test" / "test_set.csv").read_text() + "\n")
    assert fingerprint(copy, "test") != changed


# ---------------------------------------------------------------- on a tiny real run


def rerun(config, until="evaluate") -> set[str]:
    return {stage for stage, outcome in run_until(config, until).items() if outcome == "ran"}


def changed(tiny_run, *assignments):
    config, base = tiny_run
    return build_config("smoke", [*base, *assignments])


@pytest.fixture
def tiny_copy(tiny_run, tmp_path):
    """A copy of the tiny run's folder (its submission written elsewhere), every stage current: a test that changes
    it need not train the shared run back. Returns (configuration, assignments that make it)."""
    config, base = tiny_run
    runs = tmp_path / "runs"
    shutil.copytree(config.run_dir, runs / config.run_name)
    assignments = [*base, f'runs_dir="{runs}"', f'submit.output_dir="{tmp_path / "output"}"']
    copied = build_config("smoke", assignments)
    assert rerun(copied) == {"submit"}, "a copied run is current but for the submission's new folder"
    return copied, assignments


@pytest.mark.slow
def test_an_unchanged_run_reruns_nothing_and_relative_data_paths_reuse_it(tiny_run, monkeypatch):
    config, _ = tiny_run
    assert rerun(config) == set()
    monkeypatch.chdir(Path(config.data.root).parent)
    relative = changed(tiny_run, f'data.root="./{Path(config.data.root).name}"')
    assert rerun(relative) == set()
    assert all(item.state == "current" for name, item in status(resolve_paths(config)).items() if name != "attack")


@pytest.mark.slow
@pytest.mark.parametrize(("assignment", "stage"), [
    ("thresholds.grid_step=0.05", "tune"),
    ("joint.area_grid=[0.3]", "tune"),
    ("inference.segmenter_flip_tta=false", "tune"),
    ("submit.keep=['runs']", "submit"),
    ("classifier.dropout=0.3", "train-cls"),
    ("segmenter.refit_all=false", "refit"),
])
def test_a_config_change_invalidates_its_stage_and_only_what_depends_on_it(tiny_copy, assignment, stage):
    config = resolve_paths(changed(tiny_copy, assignment))
    statuses = status(config)
    affected = {stage} | {later.name for later in downstream(stage_named(stage))}
    assert statuses[stage].state == "stale" and assignment.split("=")[0] in statuses[stage].describe()
    for name, item in statuses.items():
        if name not in affected:
            assert item.state == "current" or name == "attack", (name, item)
        elif name != stage:
            assert item.state in ("waiting", "not run", "stale"), (name, item)
    ran = rerun(config)
    assert stage in ran and ran <= affected, ran
    # And back again: under the original configuration the stage is stale, which is what makes a run rerun it.
    back = status(resolve_paths(tiny_copy[0]))[stage]
    assert back.state == "stale" and assignment.split("=")[0] in back.describe(), back


@pytest.mark.slow
def test_the_refit_reruns_when_the_chosen_schedule_changes_and_is_skipped_otherwise(tiny_copy):
    """The refit trains for the epochs validation chose; another training history (here: a second head epoch)
    reruns it, with the epochs of the new history's kept epoch, and an unchanged run skips it."""
    from voc_pipeline.models.training import plan_phases, refit_phases

    config, _ = tiny_copy
    assert rerun(config) == set()
    final = json.loads(artifacts.FINAL_MODELS.path(config.run_dir).read_text())
    assert final["classifier"]["models"] == ["refit_classifier.keras"] and final["classifier"]["epochs"] == {"full": 1}
    assert final["segmenter"]["models"] == ["refit_segmenter.keras"] and final["segmenter"]["refit"]
    longer = resolve_paths(changed(tiny_copy, "classifier.head_epochs=3"))
    assert status(longer)["refit"].state == "stale"
    assert {"train-cls", "refit", "predict"} <= rerun(longer)
    history = artifacts.read_history(longer.run_dir, "classifier_history.csv", "train-cls")
    expected = {phase.name: phase.epochs for phase in refit_phases(plan_phases(longer.classifier), history, "val_pr_auc")}
    final = json.loads(artifacts.FINAL_MODELS.path(config.run_dir).read_text())
    assert final["classifier"]["epochs"] == expected and len(history) == 3
    refit_history = artifacts.read_history(longer.run_dir, "refit_classifier_history.csv", "refit")
    assert len(refit_history) == expected["full"] and "val_loss" not in refit_history[0]
    assert "refit" not in rerun(longer)
    assert status(resolve_paths(config))["refit"].state == "stale", "and the shorter history would refit again"


@pytest.mark.slow
def test_replaced_test_images_rerun_data_predict_and_submit_only(tiny_run):
    """And self-train, which pseudo-labels the test images when on: off, it writes the same file again in no time,
    so that the refit (and every training) stays current."""
    config, _ = tiny_run
    image_path = Path(config.data.root) / "test" / "img" / "test_1.npy"
    original = np.load(image_path)
    try:
        np.save(image_path, np.ascontiguousarray(original[:, ::-1]))
        assert rerun(config, "submit") == {"data", "self-train", "predict", "submit"}
    finally:
        np.save(image_path, original)
    assert rerun(config, "submit") == {"data", "self-train", "predict", "submit"}


@pytest.mark.slow
def test_an_edited_artifact_makes_its_stage_stale(tiny_run):
    config, _ = tiny_run
    path = artifacts.THRESHOLDS.path(config.run_dir)
    path.write_text(path.read_text() + " ")
    statuses = status(resolve_paths(config))
    assert statuses["tune"].state == "stale" and "output thresholds.json was changed" in statuses["tune"].describe()
    assert statuses["predict"].state == "stale" and "input thresholds.json changed" in statuses["predict"].describe()
    assert "tune" in rerun(config)
    assert status(resolve_paths(config))["tune"].state == "current"


@pytest.mark.slow
def test_a_stage_with_a_stale_upstream_stops_and_names_it(tiny_run, capsys):
    config = changed(tiny_run, "classifier.image_size=48")
    with pytest.raises(StaleStageError, match=r"needs stage train-cls .* stale \(classifier.image_size: 32 -> 48\)"):
        run_stage(config, "predict")
    arguments = ["--data", config.data.root, "--runs-dir", config.runs_dir, "--run", config.run_name, "--profile", "smoke"]
    assert main(["predict", *arguments]) == 2  # the smoke profile alone differs from the tiny run's configuration
    assert "voc-pipeline run --until predict" in capsys.readouterr().err


@pytest.mark.slow
def test_a_forced_rerun_of_a_stage_reruns_only_what_depends_on_it(tiny_run):
    config, _ = tiny_run
    assert run_stage(config, "train-cls", force=True) == "ran"
    ran = rerun(config)
    assert ran <= {later.name for later in downstream(stage_named("train-cls"))} and "predict" in ran
    assert os.path.exists(config.submit.output_dir + "/submission.csv")


# ---------------------------------------------------------------- what a stage reads of the configuration


def test_a_view_hands_out_declared_keys_and_records_them():
    config = build_config("smoke")
    view = ConfigView(config, "train-cls", ("seed", "classifier"))
    assert view.classifier.image_size == config.classifier.image_size and view.seed == config.seed
    assert view.run_dir == config.run_dir  # a property reads through the view: run_name and runs_dir are locations
    assert config_to_dict(view.classifier) == config_to_dict(config.classifier)  # unwrapping records the whole section
    assert view.reads == sorted({"seed", "run_name", "runs_dir", *(f"classifier.{key}" for key in
                                                                   config_to_dict(config.classifier))})
    with pytest.raises(UndeclaredConfigKeyError, match="stage train-cls read the configuration key 'segmenter.image_size'"):
        assert view.segmenter.image_size is None  # never reached: reading it raises
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.seed = 3


def test_a_view_refuses_the_keys_a_declaration_leaves_out_even_when_unwrapping():
    config = build_config("smoke", ["classifier.refit_all=true"])
    view = ConfigView(config, "train-cls", ("classifier",), left_out=("classifier.refit_all",))
    assert view.classifier.dropout == config.classifier.dropout
    with pytest.raises(UndeclaredConfigKeyError, match=r"'classifier.refit_all'.*\(classifier, less classifier.refit_all\)"):
        assert view.classifier.refit_all is None  # never reached
    view.classifier.unwrap()
    assert "classifier.refit_all" not in view.reads and "classifier.loss" in view.reads


def test_a_stage_that_reads_a_key_its_declaration_leaves_out_fails(tmp_path, demo_root):
    """The planted fault: the data stage's real code under a declaration that forgot data.num_folds."""
    config = resolve_paths(build_config("smoke", [f'data.root="{demo_root}"', f'runs_dir="{tmp_path}"']))
    forgetful = dataclasses.replace(stage_named("data"), config_keys=("seed", "data.validation_fraction"))
    with pytest.raises(UndeclaredConfigKeyError, match="'data.num_folds'"):
        execute(config, forgetful)
    assert read_record(config.run_dir, "data") == {}, "a stage that failed must leave no record"


@pytest.mark.slow
def test_every_stage_reads_exactly_what_its_declaration_lists(tiny_run):
    """Each stage ran on a view that refuses undeclared keys (so none read one), and each declared entry was read:
    a declaration that lists more than the stage reads reruns it for nothing."""
    config, _ = tiny_run
    run_until(config, "attack")  # the shared run stops at evaluate; the attack's own files change nothing upstream
    for stage in STAGES:
        read = read_record(config.run_dir, stage.name)["config_read"]
        assert all(declares(stage.config_keys, key) for key in read), (stage.name, read)
        if stage.name == "self-train" and not config.self_training.rounds:
            # Off, it reads its switch only; a run that trains reads the rest (test_self_training checks it).
            assert [key for key in read if key.startswith("self_training.")] == ["self_training.rounds"], read
            continue
        unread = [entry for entry in stage.config_keys
                  if not any(key == entry or key.startswith(entry + ".") for key in read)]
        assert unread == [], f"stage {stage.name} declares {unread} but never read them"
