"""Bad input and faults, thrown at the command line as a user would: each ends with a non-zero exit and one
line that names the file or key and the fix, no traceback, and the user's earlier files intact."""

import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, wait_for

from voc_pipeline import artifacts, files
from voc_pipeline.cli import main
from voc_pipeline.errors import ArtifactError, OutputFolderError
from voc_pipeline.native_logs import forward_without_native_logs


def check(data, tmp_path, *extra) -> int:
    return main(["data", "check", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--profile", "smoke", *extra])


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder in which nothing can be created, even by root (who ignores permission bits)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        yield folder
        folder.chmod(stat.S_IRWXU)
        return
    try:
        tempfile.mkstemp(dir="/sys")
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no folder here refuses writes to root")


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_split_with_a_header_and_no_rows_fails_at_data_check(data, tmp_path, capsys, split):
    csv = data / split / f"{split}_set.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    assert check(data, tmp_path) == 2
    one_line_error(capsys.readouterr().err, f"{split}_set.csv lists no image (a header and no rows)")
    assert not (tmp_path / "runs" / "default" / "splits.json").exists()


def test_arrays_the_csv_does_not_list_are_named_in_a_warning(data, tmp_path, caplog):
    np.save(data / "test" / "img" / "test_90.npy", np.zeros((4, 4, 3), np.uint8))
    np.save(data / "test" / "img" / "test_91.npy", np.zeros((4, 4, 3), np.uint8))
    np.save(data / "train" / "seg" / "train_77.npy", np.zeros((4, 4), np.uint8))
    with caplog.at_level(logging.WARNING):
        assert check(data, tmp_path) == 0
    assert "2 files in img/ or seg/ are not listed in test_set.csv and are ignored (e.g. test_90.npy, test_91.npy)" in caplog.text
    assert "1 files in img/ or seg/ are not listed in train_set.csv and are ignored (e.g. train_77.npy)" in caplog.text


def test_a_text_file_named_npy_is_called_what_it_is(data, tmp_path, capsys):
    (data / "test" / "img" / "test_2.npy").write_text("id,value\n1,2\n")
    assert check(data, tmp_path) == 2
    one_line_error(capsys.readouterr().err, "test_2.npy is not a NumPy .npy file (it starts with b'id,val'")


def test_too_few_images_for_the_folds_names_the_key(data, tmp_path, capsys):
    assert check(data, tmp_path, "--set", "data.num_folds=30") == 2
    one_line_error(capsys.readouterr().err, "24 images cannot be split into 30 folds", "data.num_folds")


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("assignment", "fragment"), [
    ("segmenter.output_stride=0", "segmenter.output_stride = 0 is not one of: 8, 16"),
    ("seed=-1", "seed = -1, outside its range [0, 4294967295]"),
    ("classifier.head_epochs=-2", "classifier.head_epochs = -2, outside its range [0, 100000]"),
    ("inference.batch_size=0", "inference.batch_size = 0, outside its range [1, 4096]"),
    ("attack.defence_bits=9", "attack.defence_bits = 9, outside its range [1, 8]"),
])
def test_an_out_of_range_value_stops_before_any_work(data, tmp_path, capsys, assignment, fragment):
    assert check(data, tmp_path, "--set", assignment) == 2
    one_line_error(capsys.readouterr().err, fragment)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- folders and files


def test_an_unwritable_run_folder_is_named(data, unwritable, capsys):
    assert main(["data", "check", "--data", str(data), "--runs-dir", str(unwritable / "runs")]) == 2
    one_line_error(capsys.readouterr().err, f"cannot write {unwritable / 'runs'}", "choose another folder or fix its permissions")


def test_runs_dir_pointing_at_a_file_is_named(data, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["data", "check", "--data", str(data), "--runs-dir", str(tmp_path / "a-file")]) == 2
    one_line_error(capsys.readouterr().err, "a-file", "a file stands where a folder is needed")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_demo_data_into_an_unwritable_folder_is_named(unwritable, capsys):
    assert main(["data", "demo", str(unwritable / "demo"), "--n-train", "2", "--n-test", "1"]) == 2
    one_line_error(capsys.readouterr().err, f"cannot write {unwritable / 'demo'}")


def test_a_cut_json_artifact_names_the_file_and_the_stage_that_rewrites_it(tmp_path):
    path = artifacts.THRESHOLDS.path(tmp_path)
    path.write_text('{"strategy": "global", "thresholds": {"aeroplane": 0.')
    with pytest.raises(ArtifactError, match=r"thresholds.json is unreadable \(not valid JSON: .*stage tune rewrites it"):
        artifacts.read_thresholds(tmp_path)


def test_a_cut_npz_artifact_names_the_file_and_the_stage_that_rewrites_it(tmp_path):
    files.save_label_maps_atomic(artifacts.TEST_PREDICTIONS.path(tmp_path), np.arange(2), [np.zeros((3, 3), np.uint8)] * 2)
    path = artifacts.TEST_PREDICTIONS.path(tmp_path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ArtifactError, match=r"test_predictions.npz is unreadable \(not a complete .npz .*stage predict rewrites it"):
        artifacts.read_test_predictions(tmp_path)


def test_a_cut_model_file_is_called_cut_not_missing(tmp_path):
    path = tmp_path / "classifier.keras"
    path.write_bytes(b"PK\x03\x04 only the start of a zip")
    with pytest.raises(ArtifactError, match=r"classifier.keras is unreadable \(not a complete Keras model file.*stage train-cls"):
        artifacts.load_model_file(path, "train-cls")


def test_a_cut_run_record_is_named(tmp_path, data, capsys):
    assert check(data, tmp_path) == 0
    record = tmp_path / "runs" / "default" / "run_info.json"
    record.write_text(record.read_text()[:40])
    assert check(data, tmp_path) == 2
    one_line_error(capsys.readouterr().err, "run_info.json is unreadable", "delete it to rerun every stage")


# ---------------------------------------------------------------- score and validate


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda rows: rows + [rows[-1]], "1 duplicated ids"),
    (lambda rows: rows + ["99_classification,1 1"], "1 unexpected ids"),
    (lambda rows: rows[:1] + [rows[1].split(",")[0] + ",1 999999999"] + rows[2:], "outside a vector of length"),
])
def test_score_refuses_an_invalid_submission_as_validate_does(demo_root, tmp_path, capsys, edit, fragment):
    lines = (demo_root / "solution.csv").read_text().splitlines()
    submission = tmp_path / "submission.csv"
    submission.write_text("\n".join([lines[0], *edit(lines[1:])]) + "\n")
    assert main(["validate", str(submission), "--data", str(demo_root)]) == 1
    assert fragment in capsys.readouterr().out
    assert main(["score", str(demo_root / "solution.csv"), str(submission)]) == 2
    one_line_error(capsys.readouterr().err, "is not a valid submission, so it is not scored", fragment)


# ---------------------------------------------------------------- prune


def test_prune_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nowhere"), "--force"]) == 2
    one_line_error(capsys.readouterr().err, "nowhere does not exist or is not a folder")


@pytest.mark.parametrize("marker", [".git", "pyproject.toml"])
def test_prune_refuses_a_project_folder_and_deletes_nothing(tmp_path, capsys, marker):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / marker).mkdir() if marker == ".git" else (project / marker).write_text("[project]\n")
    (project / "README.md").write_text("mine")
    before = sorted(path.name for path in project.rglob("*"))
    assert main(["prune", str(project), "--set", f'submit.output_dir="{project}"']) == 2
    one_line_error(capsys.readouterr().err, f"holds {marker}", "looks like a project folder", "--force")
    assert sorted(path.name for path in project.rglob("*")) == before


def test_prune_refuses_a_folder_that_is_not_the_configured_output(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep-me.txt").write_text("x")
    assert main(["prune", str(other)]) == 2
    one_line_error(capsys.readouterr().err, "is not the configured output folder (submit.output_dir = submissions)")
    assert (other / "keep-me.txt").exists()


def test_prune_dry_run_lists_and_deletes_nothing_then_prunes(tmp_path, capsys):
    output = tmp_path / "out"
    (output / "checkpoints").mkdir(parents=True)
    (output / "submission.csv").write_text("Id,Predicted\n")
    (output / "notes.txt").write_text("x")
    arguments = ["prune", str(output), "--set", f'submit.output_dir="{output}"']
    assert main([*arguments, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"would delete {output / 'checkpoints'}", f"would delete {output / 'notes.txt'}"]
    assert (output / "notes.txt").exists() and (output / "checkpoints").exists()
    assert main(arguments) == 0
    assert sorted(path.name for path in output.iterdir()) == ["submission.csv"]


# ---------------------------------------------------------------- permissions


def test_written_files_follow_the_umask(data, tmp_path, monkeypatch):
    real = os.umask(0o022)
    os.umask(real)
    assert files.UMASK == real
    monkeypatch.setattr(files, "UMASK", 0o027)
    assert check(data, tmp_path) == 0
    run_dir = tmp_path / "runs" / "default"
    for name in ("config.toml", "run_info.json", "splits.json", "data_summary.json", "metrics/data.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o640, name
    written = files.write_text_atomic(tmp_path / "submissions" / "submission.csv", "Id,Predicted\n")
    assert stat.S_IMODE(written.stat().st_mode) == 0o640


# ---------------------------------------------------------------- on a finished tiny run


@pytest.fixture
def finished_run(tiny_run):
    """(run folder, command-line arguments) of the shared tiny run, finished through evaluate."""
    config, assignments = tiny_run
    return config.run_dir, ["--profile", "smoke", *(item for assignment in assignments for item in ("--set", assignment))]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_bad_batch_size_leaves_the_finished_files_untouched(finished_run, capsys):
    run_dir, arguments = finished_run
    before = snapshot(run_dir)
    assert main(["predict", *arguments, "--set", "inference.batch_size=0"]) == 2
    one_line_error(capsys.readouterr().err, "inference.batch_size = 0")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_an_unwritable_output_folder_stops_submit_before_it_writes(finished_run, unwritable, capsys):
    run_dir, arguments = finished_run
    before = snapshot(run_dir)
    assert main(["submit", *arguments, "--set", f'submit.output_dir="{unwritable / "out"}"']) == 2
    one_line_error(capsys.readouterr().err, f"cannot write {unwritable / 'out'}")
    assert snapshot(run_dir) == before


@contextlib.contextmanager
def immutable(path: Path):
    """`path` with the file system's immutable flag set (`chattr +i`: not even root may replace it), cleared
    again whatever happens; the test is skipped where the flag cannot be set (not root, or a file system
    without it)."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True) if shutil.which("chattr") else None
    if made is None or made.returncode:
        pytest.skip(f"cannot make {path} immutable here: {made.stderr.strip() if made else 'no chattr'}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_an_atomic_write_onto_an_immutable_file_names_it_and_leaves_it_whole(tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("Id,Predicted\n")
    with immutable(target), pytest.raises(OutputFolderError, match=r"cannot replace .*submission.csv: .*chattr -i"):
        files.write_text_atomic(target, "Id,Predicted\nnew\n")
    assert target.read_text() == "Id,Predicted\n"
    assert list(tmp_path.iterdir()) == [target], "the temporary file must be removed"


@pytest.mark.slow
def test_submit_force_onto_an_immutable_submission_is_one_line(finished_run, tmp_path, capsys):
    _, arguments = finished_run
    output = tmp_path / "out"
    arguments = [*arguments, "--set", f'submit.output_dir="{output}"']
    assert main(["submit", *arguments, "--force"]) == 0
    submission = output / "submission.csv"
    before = submission.read_bytes()
    with immutable(submission):
        assert main(["submit", *arguments, "--force"]) == 2
        one_line_error(capsys.readouterr().err, f"cannot replace {submission}", "chattr -i",
                       "choose another submit.output_dir")
    assert submission.read_bytes() == before
    assert sorted(path.name for path in output.iterdir()) == ["submission.csv"], "no temporary file may remain"


@pytest.mark.slow
@pytest.mark.parametrize(("artifact", "stage", "consumer"), [
    (artifacts.THRESHOLDS, "tune", "predict"),
    (artifacts.TEST_PREDICTIONS, "predict", "submit"),
])
def test_a_cut_artifact_in_a_run_names_the_stage_that_rewrites_it(finished_run, capsys, artifact, stage, consumer):
    run_dir, arguments = finished_run
    path = artifact.path(run_dir)
    original = path.read_bytes()
    try:
        path.write_bytes(original[: len(original) // 2])
        assert main([consumer, *arguments]) == 2
        one_line_error(capsys.readouterr().err, f"needs stage {stage}", f"its output {artifact.pattern} was changed or deleted",
                       f"voc-pipeline run --until {consumer}")
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_a_cut_model_in_a_run_names_the_stage_that_rewrites_it(finished_run, capsys):
    run_dir, arguments = finished_run
    path = run_dir / "classifier.keras"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:1000])
        assert main(["predict", *arguments]) == 2
        one_line_error(capsys.readouterr().err, "needs stage train-cls", "its output classifier.keras was changed or deleted")
        with pytest.raises(ArtifactError, match="classifier.keras is unreadable .*stage train-cls rewrites it"):
            artifacts.load_classifiers(run_dir)
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_submit_refuses_to_prune_a_project_folder(finished_run, tmp_path, capsys):
    _, arguments = finished_run
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\n")
    (project / "main.py").write_text("print('mine')\n")
    assert main(["submit", *arguments, "--set", f'submit.output_dir="{project}"', "--set", "submit.prune_output=true"]) == 2
    one_line_error(capsys.readouterr().err, "holds pyproject.toml", "looks like a project folder")
    assert (project / "main.py").read_text() == "print('mine')\n"


# ---------------------------------------------------------------- signals and what the user reads


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_leaves_no_partial_file(tmp_path, signal_number):
    output = tmp_path / "demo"
    # A shell's background job starts with SIGINT ignored, and Python keeps an ignored SIGINT ignored: give the
    # child the default disposition, as a terminal's foreground command has, whatever started the tests.
    process = subprocess.Popen([sys.executable, "-m", "voc_pipeline", "data", "demo", str(output), "--n-train", "5000",
                                "--n-test", "5"], stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(lambda: list(tmp_path.glob(".demo.*.tmp")), 60), "the atomic folder never appeared"
    process.send_signal(signal_number)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 128 + signal_number
    assert list(tmp_path.iterdir()) == [], "neither the temporary folder nor a partial output may remain"
    assert "Traceback" not in error and error.strip().splitlines()[-1].startswith("error: ")


def test_native_log_lines_are_dropped_and_the_rest_forwarded_as_written():
    read_source, write_source = os.pipe()
    read_destination, write_destination = os.pipe()
    os.write(write_source, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                           b"I0000 00:00:1795507564.083588   17021 port.cc:153] oneDNN custom operations are on.\n"
                           b"E0000 00:00:1795507597.618439   17021 util.cc:131] oneDNN supports DT_BOOL only\n"
                           b"To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n"
                           b"INFO voc_pipeline.graph: stage data: running\n"
                           b"\rloading train: 50%\rloading train: 100%\nEpoch 1/3 done")
    os.close(write_source)
    forward_without_native_logs(read_source, write_destination)
    os.close(write_destination)
    assert os.read(read_destination, 10_000) == (b"INFO voc_pipeline.graph: stage data: running\n"
                                                 b"\rloading train: 50%\rloading train: 100%\nEpoch 1/3 done")


# A line in the format of TensorFlow's native logging, written to the process's stderr file descriptor as TensorFlow
# writes it. Which native lines TensorFlow itself prints depends on the CPU (oneDNN's, for one, only where it is on
# by default), so the tests plant their own.
PLANTED = "I0000 00:00:1795507564.083588   17021 port.cc:153] a planted native log line"
PLANTING = ("import os, sys; from voc_pipeline.native_logs import quiet_tensorflow\n"
            "with quiet_tensorflow(sys.argv[1]):\n"
            f"    os.write(2, b'{PLANTED}\\n'); print('a line of the project', file=sys.stderr, flush=True)")


@pytest.mark.parametrize(("log_level", "shown"), [("INFO", False), ("WARNING", False), ("DEBUG", True)])
def test_native_log_lines_are_shown_only_when_asked_for(log_level, shown):
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    error = subprocess.run([sys.executable, "-c", PLANTING, log_level], capture_output=True, text=True,
                           env=environment, check=True).stderr
    assert "a line of the project" in error
    assert (PLANTED in error) == shown, error


@pytest.mark.slow
def test_a_stage_prints_no_tensorflow_start_up_lines_unless_asked(finished_run):
    _, arguments = finished_run
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "voc_pipeline"]
    # A forced predict loads TensorFlow and the models, and invalidates nothing that trains.
    quiet = subprocess.run([*command, "predict", *arguments, "--force"], capture_output=True, text=True,
                           env=environment, check=True).stderr
    assert "stage predict: running (forced)" in quiet
    for noise in ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "shuffle=True", "I0000", "E0000"):
        assert noise not in quiet, noise
    detailed = subprocess.run([*command, "--log-level", "DEBUG", "predict", *arguments, "--force"],
                              capture_output=True, text=True, env=environment, check=True).stderr
    # The project's own DEBUG lines appear (the native lines, when TensorFlow prints any, pass unfiltered: above).
    assert "DEBUG voc_pipeline.graph: stage predict reads the configuration keys inference" in detailed
    subprocess.run([*command, "run", "--until", "evaluate", *arguments], env=environment, check=True,
                   capture_output=True)  # the shared run is current again
