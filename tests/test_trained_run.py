"""A trained run carried to the notebook that predicts from it: what the build refuses, what travels, and how
the stage graph, where the notebook runs, finds the carried stages current and never trains."""

import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import one_line_error

from voc_pipeline import artifacts
from voc_pipeline.cli import main
from voc_pipeline.config import build_config
from voc_pipeline.errors import ArtifactError, StaleStageError
from voc_pipeline.graph import TRAINED_STAGES, run_until, status
from voc_pipeline.kernel.trained_run import MANIFEST_FILE, install_run, pack_run, run_dataset_slug
from voc_pipeline.run_folder import ARTIFACT_FORMAT, run_lock

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(tiny_run, tmp_path):
    """A copy of the shared tiny run (both heads refit), free to break."""
    config, _ = tiny_run
    return shutil.copytree(config.run_dir, tmp_path / "runs" / "tiny")


def build_trained(run_dir, output, *extra) -> list[str]:
    return ["kernel", "build", "--username", "someone", "--competition", "kul-computer-vision-ga-2-2026", "--output",
            str(output), "--trained", str(run_dir), *extra]


def edit_run_info(run_dir, change) -> None:
    path = run_dir / artifacts.RUN_INFO_FILE
    info = json.loads(path.read_text())
    change(info["stages"])
    path.write_text(json.dumps(info))


def test_the_stages_carried_are_those_the_test_predictions_depend_on():
    assert TRAINED_STAGES == ("data", "train-cls", "train-seg", "tune", "self-train", "refit")


def test_a_run_that_has_not_reached_refit_is_refused_naming_the_stage(trained, tmp_path, capsys):
    edit_run_info(trained, lambda stages: stages.pop("refit"))
    assert main(build_trained(trained, tmp_path / "bundle")) == 2
    one_line_error(capsys.readouterr().err, "has not reached refit: stage refit has not run there",
                   "voc-pipeline run --until refit")
    assert not (tmp_path / "bundle").exists()


def test_a_run_still_running_is_refused_naming_its_lock(trained, tmp_path, capsys):
    with run_lock(trained, "train-seg"):
        assert main(build_trained(trained, tmp_path / "bundle")) == 2
    one_line_error(capsys.readouterr().err, "is still running", "holds its lock", "stage train-seg")


def test_a_carried_model_whose_bytes_changed_is_named(trained, tmp_path, capsys):
    shutil.copyfile(trained / "classifier.keras", trained / "refit_classifier.keras")
    assert main(build_trained(trained, tmp_path / "bundle")) == 2
    one_line_error(capsys.readouterr().err, f"{trained / 'refit_classifier.keras'} changed since stage refit wrote it")


def test_a_run_made_with_another_artifact_format_names_both_versions(trained, tmp_path, capsys):
    edit_run_info(trained, lambda stages: stages["train-cls"].update(artifact_format=ARTIFACT_FORMAT - 1, version="0.1.0"))
    assert main(build_trained(trained, tmp_path / "bundle")) == 2
    one_line_error(capsys.readouterr().err, f"made by voc-pipeline 0.1.0 (artifact format {ARTIFACT_FORMAT - 1})",
                   f"reads format {ARTIFACT_FORMAT} only")


def test_the_run_dataset_slug_follows_kaggles_rules():
    assert run_dataset_slug("Resnet_50.v2") == "voc-pipeline-run-resnet-50-v2"
    assert len(run_dataset_slug("x" * 80)) == 50


def carried_config(run_dir, runs_dir, data_root):
    """The configuration a notebook runs a carried run with: its own config.toml, its own name, this data."""
    return build_config(str(run_dir / artifacts.CONFIG_FILE), [f'runs_dir="{runs_dir}"', f"run_name='{run_dir.name}'",
                                                               f'data.root="{data_root}"',
                                                               f'submit.output_dir="{runs_dir / "output"}"'])


def test_a_carried_run_predicts_where_it_is_installed_and_never_trains(tiny_run, tmp_path):
    config, _ = tiny_run
    manifest = pack_run(config.run_dir, tmp_path / "packed")
    assert set(manifest["files"]) >= {"final_models.json", "refit_classifier.keras", "classifier.keras", "splits.json",
                                      "thresholds.json", "joint_rule.json", "config.toml", "run_info.json"}
    assert not any(name.startswith(("test_predictions", "submission", "report", "attack")) for name in manifest["files"])
    carried_info = json.loads((tmp_path / "packed" / artifacts.RUN_INFO_FILE).read_text())
    assert set(carried_info["stages"]) == set(TRAINED_STAGES)
    # Elsewhere: another folder, a copy of the data with new modification times (as a download or a mount).
    data = shutil.copytree(config.data.root, tmp_path / "mounted", copy_function=shutil.copy)
    run_dir = install_run(tmp_path / "packed", tmp_path / "elsewhere", data)
    carried = carried_config(run_dir, tmp_path / "elsewhere", data)
    statuses = status(carried)
    assert all(statuses[stage].state == "current" for stage in TRAINED_STAGES), statuses
    outcomes = run_until(carried, "submit", no_training=True)
    assert [stage for stage, outcome in outcomes.items() if outcome == "ran"] == ["predict", "submit"]
    local = config.run_dir / "submission.csv"
    assert (run_dir / "submission.csv").read_bytes() == local.read_bytes()


def test_no_training_stops_at_once_when_a_carried_stage_is_not_current(tiny_run, tmp_path):
    config, _ = tiny_run
    pack_run(config.run_dir, tmp_path / "packed")
    run_dir = install_run(tmp_path / "packed", tmp_path / "elsewhere", config.data.root)
    changed = carried_config(run_dir, tmp_path / "elsewhere", config.data.root)
    changed = build_config(str(run_dir / artifacts.CONFIG_FILE), ["classifier.dropout=0.45"], base=changed)
    with pytest.raises(StaleStageError, match=r"stage train-cls of run 'tiny' is stale \(classifier.dropout: 0.2 -> "
                                              r"0.45\): with --no-training"):
        run_until(changed, "attack", no_training=True)
    assert not (run_dir / "test_predictions.npz").exists()


@pytest.mark.parametrize(("change", "difference"), [
    ("drop", "24 images recorded, 23 here"),
    ("renumber", "the same 24 images by count, other ids"),
    ("content", "the same 24 image ids, other content"),
])
def test_data_that_is_not_the_runs_stops_the_install_naming_both_fingerprints(tiny_run, tmp_path, capsys, change,
                                                                              difference):
    config, _ = tiny_run
    pack_run(config.run_dir, tmp_path / "packed")
    data = shutil.copytree(config.data.root, tmp_path / "other")
    table = data / "train" / "train_set.csv"
    lines = table.read_text().splitlines()
    if change == "drop":
        table.write_text("\n".join(lines[:-1]) + "\n")
    elif change == "renumber":
        last_id = lines[-1].split(",")[0]
        table.write_text("\n".join([*lines[:-1], lines[-1].replace(last_id, "999", 1)]) + "\n")
        (data / "train" / "img" / f"train_{last_id}.npy").rename(data / "train" / "img" / "train_999.npy")
        (data / "train" / "seg" / f"train_{last_id}.npy").rename(data / "train" / "seg" / "train_999.npy")
    else:
        image = np.load(data / "train" / "img" / "train_0.npy")
        np.save(data / "train" / "img" / "train_0.npy", 255 - image)
    code = main(["kernel", "install-run", str(tmp_path / "packed"), "--runs-dir", str(tmp_path / "elsewhere"),
                 "--data", str(data)])
    assert code == 2
    line = one_line_error(capsys.readouterr().err, "is not the data run tiny was trained on", "the train data differs",
                          difference)
    assert "fingerprint recorded" in line and ", here " in line


def test_a_damaged_carried_file_is_named(tiny_run, tmp_path, capsys):
    config, _ = tiny_run
    pack_run(config.run_dir, tmp_path / "packed")
    (tmp_path / "packed" / "thresholds.json").write_text("{}")
    code = main(["kernel", "install-run", str(tmp_path / "packed"), "--runs-dir", str(tmp_path / "elsewhere"),
                 "--data", str(config.data.root)])
    assert code == 2
    one_line_error(capsys.readouterr().err, f"{tmp_path / 'packed' / 'thresholds.json'} is damaged")
    assert not (tmp_path / "elsewhere" / "tiny").exists()


def test_a_folder_without_a_carried_run_is_named(tmp_path, capsys):
    code = main(["kernel", "install-run", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path)])
    assert code == 2
    one_line_error(capsys.readouterr().err, f"holds no carried run ({MANIFEST_FILE} is missing)")


# ---------------------------------------------------------------- models from a newer Keras


def with_option(model_path, target, option_value, recorded: bool):
    """A copy of a saved model whose Dense layer names an option no Keras has, at `option_value`, recorded as that
    class's default or not: what a model saved by a newer Keras looks like to an older one."""
    with zipfile.ZipFile(model_path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    configuration = json.loads(members["config.json"])

    def plant(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Dense" and isinstance(node.get("config"), dict):
                node["config"]["brand_new_option"] = option_value
            for value in node.values():
                plant(value)
        elif isinstance(node, list):
            for value in node:
                plant(value)

    plant(configuration)
    members["config.json"] = json.dumps(configuration).encode()
    record = json.loads(members.get(artifacts.OPTION_DEFAULTS_MEMBER, b'{"defaults": {}}'))
    if recorded:
        record.setdefault("defaults", {}).setdefault("Dense", {})["brand_new_option"] = option_value
    record["keras_version"] = "9.9.9"
    members[artifacts.OPTION_DEFAULTS_MEMBER] = json.dumps(record).encode()
    with zipfile.ZipFile(target, "w") as copy:
        for name, data in members.items():
            copy.writestr(name, data)
    return target


def test_an_option_a_newer_keras_recorded_at_its_default_is_dropped_and_the_model_predicts_the_same(tiny_run, tmp_path):
    config, _ = tiny_run
    original = artifacts.load_model_file(config.run_dir / "classifier.keras", "train-cls")
    newer = artifacts.load_model_file(with_option(config.run_dir / "classifier.keras", tmp_path / "newer.keras", None,
                                                  recorded=True), "train-cls")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(original.predict(images, verbose=0), newer.predict(images, verbose=0))


@pytest.mark.parametrize(("value", "recorded"), [(None, False), (3, False), (3, True)])
def test_an_unknown_option_not_recorded_at_that_value_is_refused_naming_both_versions(tiny_run, tmp_path, value,
                                                                                    recorded):
    config, _ = tiny_run
    path = tmp_path / "newer.keras"
    with_option(config.run_dir / "classifier.keras", path, value, recorded)
    if recorded:  # recorded at its default, but the file holds another value: a plant in the record itself
        record_says = {"defaults": {"Dense": {"brand_new_option": None}}, "keras_version": "9.9.9"}
        with zipfile.ZipFile(path) as source:
            members = {name: source.read(name) for name in source.namelist()}
        members[artifacts.OPTION_DEFAULTS_MEMBER] = json.dumps(record_says).encode()
        with zipfile.ZipFile(path, "w") as copy:
            for name, data in members.items():
                copy.writestr(name, data)
    with pytest.raises(ArtifactError, match=r"saved by Keras 9\.9\.9, whose Dense option brand_new_option = .* Keras "
                                            r"3\.\d+\.\d+ does not know"):
        artifacts.load_model_file(path, "train-cls")
