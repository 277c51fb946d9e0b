"""Faults a user meets after the easy ones (issue 19), one class per section, each with the issue's example
and a sibling: the command ends with exit 2 and one `error:` line naming the file and the fix, no traceback,
earlier files intact, or (valid input once refused) succeeds."""

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from voc_pipeline import artifacts, files
from voc_pipeline.cli import main
from voc_pipeline.core.rle import parse_runs
from voc_pipeline.errors import ArtifactError, DiskFullError, RleError


def fails(capsys, arguments: list[str], *fragments: str) -> str:
    """Run the command line in this process: exit 2 and one error line with every fragment."""
    assert main(arguments) == 2
    return one_line_error(capsys.readouterr().err, *fragments)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def check_arguments(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["data", "check", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--profile", "smoke", *extra]


def run_without_read_override(arguments: list[str]) -> subprocess.CompletedProcess:
    """The command line in a child process that file permissions stop: as root, with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped (root reads everything otherwise)."""
    command = [sys.executable, "-m", "voc_pipeline", *arguments]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("root reads every file and setpriv is absent, so no capability can be dropped here")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- 1. data loss: kernel build --output


def build_arguments(output: Path, *extra: str) -> list[str]:
    return ["kernel", "build", "--output", str(output), "--username", "someone", "--competition",
            "kul-computer-vision-ga-2-2026", *extra]


@pytest.mark.parametrize("folder", ["kernel", "dataset"])
def test_kernel_build_refuses_a_non_empty_folder_it_did_not_make(tmp_path, capsys, folder):
    output = tmp_path / "mine"
    (output / folder / "notes").mkdir(parents=True)
    (output / folder / "notes" / "thesis.tex").write_text("months of work")
    before = snapshot(output)
    fails(capsys, build_arguments(output), f"{output / folder} is not empty and not marked as a bundle",
          "never deletes what it did not create", "another --output")
    assert snapshot(output) == before


def test_kernel_build_refuses_a_file_where_its_folder_goes(tmp_path, capsys):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "dataset").write_text("a file named dataset")
    fails(capsys, build_arguments(output), f"{output / 'dataset'} is a file", "nothing was deleted")
    assert (output / "dataset").read_text() == "a file named dataset"


@pytest.mark.parametrize("below", ["", "sub"])
def test_kernel_build_onto_a_file_names_it_before_asking_kaggle(tmp_path, capsys, monkeypatch, below):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "KAGGLE_API_TOKEN",
                 "KAGGLE_API_V1_TOKEN", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials anywhere: asking Kaggle would fail
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    message = fails(capsys, ["kernel", "build", "--output", str(taken / below), "--username", "someone"],
                    f"--output {taken / below}", f"{taken} is a file", "another --output")
    assert "credentials" not in message
    assert taken.read_text() == "mine"


@pytest.mark.slow
def test_kernel_build_replaces_its_own_marked_bundle_and_nothing_else(tmp_path, capsys):
    output = tmp_path / "bundle"
    (output / "kernel").mkdir(parents=True)
    (output / "README.txt").write_text("beside the bundle")
    (output / "kernel" / "old.txt").write_text("stale")
    marker = {"written_by": "voc-pipeline kernel build", "folders": ["dataset", "kernel"]}
    (output / ".voc-pipeline-bundle").write_text(json.dumps(marker))
    assert main(build_arguments(output)) == 0
    assert not (output / "kernel" / "old.txt").exists() and (output / "kernel" / "kernel-metadata.json").is_file()
    assert list((output / "dataset").glob("voc_pipeline-*.whl"))
    assert (output / "README.txt").read_text() == "beside the bundle"
    assert json.loads((output / ".voc-pipeline-bundle").read_text())["folders"] == ["dataset", "kernel"]
    assert not list(output.glob(".*.tmp")), "no temporary folder may remain"
    (output / "kernel" / "mine.txt").write_text("added by hand")
    assert main(build_arguments(output)) == 0  # still marked as the build's own: replaced again
    assert not (output / "kernel" / "mine.txt").exists()


# ---------------------------------------------------------------- 2. two commands on one run


HOLD_THE_LOCK = """
import sys, time
from voc_pipeline.run_folder import run_lock
with run_lock(sys.argv[1], "train-seg"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_command_on_a_locked_run_stops_naming_the_holder(data, tmp_path, capsys):
    assert main(check_arguments(data, tmp_path)) == 0
    run_dir = tmp_path / "runs" / "default"
    before = snapshot(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        fails(capsys, check_arguments(data, tmp_path, "--force"), f"run folder {run_dir} is in use",
              f"pid {holder.pid}", "python -c", "stage train-seg", "wait until that command ends")
    finally:
        holder.kill()
        holder.wait()
    lock = snapshot(run_dir).pop(".lock")  # left by the killed holder, naming it
    assert f'"pid": {holder.pid}'.encode() in lock
    assert {name: content for name, content in snapshot(run_dir).items() if name != ".lock"} == before
    assert main(check_arguments(data, tmp_path, "--force")) == 0  # kill -9 released the lock: it is taken over


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over_saying_so(data, tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "stage": "train-cls",
                                               "command": "voc-pipeline train-cls", "started": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING):
        assert main(check_arguments(data, tmp_path)) == 0
    assert "taking over the lock left by `voc-pipeline train-cls`" in caplog.text
    assert f"pid {gone.pid}" in caplog.text and "which is no longer running" in caplog.text
    assert not (run_dir / ".lock").exists(), "the lock goes with the stage that held it"


# ---------------------------------------------------------------- 3. a kill while Keras backs up


def tiny_training(tmp_path: Path):
    """(build a model, compile it, data, checkpoint path, history path): a real Keras model a few weights big."""
    import keras
    import tensorflow as tf

    def build():
        inputs = keras.Input((4,))
        backbone = keras.Sequential([keras.layers.Dense(8, activation="relu")], name="backbone")
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(backbone(inputs)))

    def compile_model(model, schedule, phase=None):
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="binary_crossentropy")

    rng = np.random.default_rng(0)
    features = rng.normal(size=(32, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((features, (features[:, :1] > 0).astype("float32"))).batch(8)
    return build, compile_model, data, tmp_path / "checkpoints" / "model.keras", tmp_path / "checkpoints" / "history.csv"


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["phase0_full_backup/latest.weights.h5", "identity.json", "checkpoint"])
def test_a_cut_training_backup_is_named_and_the_training_starts_afresh(tmp_path, caplog, damaged):
    import keras

    from voc_pipeline.models.training import Phase, RecordHistory, fit_in_phases, resumable_state

    build, compile_model, data, checkpoint, history = tiny_training(tmp_path)
    identity = {"config": "the same"}
    state_dir = checkpoint.parent / "model_state"
    # What a kill -9 during the second epoch leaves: the state folder, Keras's backup of epoch 1 (kept, as
    # BackupAndRestore keeps it until the phase ends), the best checkpoint and the history so far.
    checkpoint.parent.mkdir()
    records = resumable_state(state_dir, identity, history, checkpoint)
    model = build()
    compile_model(model, 1e-2)
    model.fit(data, validation_data=data, epochs=1, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(str(state_dir / "phase0_full_backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True),
        RecordHistory(records, history, "full")])
    path = checkpoint if damaged == "checkpoint" else state_dir / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with caplog.at_level(logging.WARNING):
        records = fit_in_phases(build(), compile_model, [Phase("full", 2, 1e-2, 0, None)], data, data, 4, checkpoint,
                                history, monitor="val_loss", mode="min", patience=5, identity=identity)
    assert "saved state in" in caplog.text and "is damaged" in caplog.text and "starting this training afresh" in caplog.text
    assert path.name in caplog.text
    assert [record["epoch"] for record in records] == [1, 2], "afresh: both epochs trained again"
    keras.saving.load_model(checkpoint, compile=False)  # the checkpoint it leaves is whole
    assert not state_dir.exists()


# ---------------------------------------------------------------- 4. entries the data layer cannot read


def test_unlisted_loops_and_dangling_links_are_warned_about_and_ignored(data, tmp_path, caplog, capsys):
    images = data / "train" / "img"
    (images / "loop.npy").symlink_to("loop.npy")
    (images / "train_900.npy").symlink_to(tmp_path / "nowhere.npy")
    with caplog.at_level(logging.WARNING):
        assert main(check_arguments(data, tmp_path)) == 0
    assert "2 files in img/ or seg/ are not listed in train_set.csv and are ignored (e.g. loop.npy, train_900.npy)" in caplog.text
    assert main(["status", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--profile", "smoke"]) == 0
    assert "data       current" in capsys.readouterr().out


def test_a_listed_dangling_link_is_named_as_one(data, tmp_path, capsys):
    image = data / "test" / "img" / "test_3.npy"
    image.unlink()
    image.symlink_to(tmp_path / "moved-away.npy")
    fails(capsys, check_arguments(data, tmp_path), "test_3.npy is a symbolic link to", "moved-away.npy, which does not exist")


def test_listed_unreadable_files_and_folders_are_named_and_unlisted_ones_ignored(data, tmp_path):
    (data / "train" / "img" / "private.npy").write_bytes(b"not yours")
    (data / "train" / "img" / "private.npy").chmod(0)
    result = run_without_read_override(check_arguments(data, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "private.npy" in result.stderr  # warned about and ignored

    (data / "train" / "seg" / "train_2.npy").chmod(0)
    result = run_without_read_override(check_arguments(data, tmp_path, "--force"))
    assert result.returncode == 2
    one_line_error(result.stderr, "train_2.npy cannot be read: permission denied")

    (data / "train" / "seg" / "train_2.npy").chmod(0o644)
    (data / "test" / "img").chmod(0)
    try:
        result = run_without_read_override(check_arguments(data, tmp_path, "--force"))
    finally:
        (data / "test" / "img").chmod(0o755)
    assert result.returncode == 2
    one_line_error(result.stderr, f"{data / 'test' / 'img'} cannot be read: permission denied", "test images")


# ---------------------------------------------------------------- 5. sizes taken on trust


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_a_cut_npy_declaring_a_huge_shape_is_named_before_anything_is_allocated(data, tmp_path, capsys):
    (data / "train" / "img" / "train_4.npy").write_bytes(npy_header((100_000, 100_000, 3)) + bytes(900))
    fails(capsys, check_arguments(data, tmp_path), "train_4.npy is cut short", "shape (100000, 100000, 3) (30.0 GB)",
          "only 900 bytes follow it")


def test_an_npy_cut_inside_its_header_is_named(data, tmp_path, capsys):
    path = data / "train" / "seg" / "train_1.npy"
    path.write_bytes(path.read_bytes()[:20])
    fails(capsys, check_arguments(data, tmp_path), "train_1.npy is not a valid .npy file: its header cannot be read")


# ---------------------------------------------------------------- 6. disk full


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, unmounted at the end whatever happens; skipped where mounting one is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or result.returncode}); disk-full "
                    f"cases need one")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system is full."""
    handle = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(handle, bytes(65536))
    except OSError:
        pass
    finally:
        os.close(handle)


def test_a_stage_on_a_full_disk_names_the_folder_and_changes_nothing(data, small_disk, capsys):
    arguments = ["data", "check", "--data", str(data), "--runs-dir", str(small_disk / "runs"), "--profile", "smoke"]
    assert main(arguments) == 0
    run_dir = small_disk / "runs" / "default"
    before = snapshot(run_dir)
    fill(small_disk)
    fails(capsys, [*arguments, "--force"], f"no space left on the disk of {run_dir}", "free some space there",
          "reruns next time")
    assert snapshot(run_dir) == before


def test_an_atomic_write_on_a_full_disk_says_how_much_it_needed_and_keeps_the_file(small_disk):
    target = small_disk / "submission.csv"
    target.write_text("Id,Predicted\n")
    fill(small_disk)
    with pytest.raises(DiskFullError, match=r"the write needed 20.0 kB, 0 bytes free\); nothing was changed "
                                            r"\(submission.csv is as it was\)"):
        files.write_text_atomic(target, "x" * 20_000)
    assert target.read_text() == "Id,Predicted\n"
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "submission.csv"]


def test_demo_data_on_a_full_disk_says_what_it_had_written_and_leaves_nothing(small_disk, capsys):
    fails(capsys, ["data", "demo", str(small_disk / "demo"), "--n-train", "400", "--n-test", "5"],
          f"no space left on the disk of {small_disk}", "the write needed more than the", "it had written",
          f"nothing was changed ({small_disk / 'demo'} was not created)")
    assert list(small_disk.iterdir()) == []


# ---------------------------------------------------------------- 7. the wrong kind of file


def test_a_profile_that_is_gzip_or_a_folder_is_called_what_it_is(tmp_path, capsys):
    profile = tmp_path / "mine.toml"
    profile.write_bytes(gzip.compress(b"seed = 1\n"))
    fails(capsys, ["config", "--profile", str(profile)], f"{profile} is a gzip-compressed file, expected a TOML profile")
    profile.unlink()
    profile.mkdir()
    fails(capsys, ["config", "--profile", str(profile)], f"{profile} is a folder; expected a TOML profile")


def test_a_submission_that_is_gzip_or_not_utf8_is_called_what_it_is(demo_root, tmp_path, capsys):
    submission = tmp_path / "submission.csv"
    submission.write_bytes(gzip.compress((demo_root / "solution.csv").read_bytes()))
    fails(capsys, ["score", str(demo_root / "solution.csv"), str(submission)],
          f"{submission} is a gzip-compressed file, expected a submission CSV")
    submission.write_bytes("Id,Predicted\n0_classification,1 1 # café\n".encode("latin-1"))
    fails(capsys, ["validate", str(submission), "--data", str(demo_root)], "is not UTF-8 text (byte 0xe9 at offset 39)")


def test_an_id_list_that_is_a_folder_is_named(tmp_path, capsys):
    devkit = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ids.txt"):
        (devkit / folder).mkdir(parents=True)
    fails(capsys, ["data", "from-voc", str(devkit), str(tmp_path / "out"), "--ids", str(devkit / "ids.txt")],
          f"{devkit / 'ids.txt'} is a folder; expected a text file of devkit image ids")


@pytest.mark.parametrize(("content", "fragment"), [
    ("[]", "holds a JSON list, expected the JSON object {\"stages\""),
    ("{}", "holds no \"stages\" key"),
    ('{"stages": {"data": "done"}}', "the record of stage 'data' is the JSON string 'done', expected a JSON object"),
])
def test_a_run_record_of_the_wrong_shape_is_named(data, tmp_path, capsys, content, fragment):
    assert main(check_arguments(data, tmp_path)) == 0
    record = tmp_path / "runs" / "default" / "run_info.json"
    record.write_text(content)
    fails(capsys, check_arguments(data, tmp_path), "run_info.json", fragment, "delete it to rerun every stage")
    assert record.read_text() == content


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda metadata: metadata.pop("id"), "has no 'id', expected a string"),
    (lambda metadata: metadata.update(dataset_sources="someone/keras-weights"), "holds the JSON string"),
])
def test_a_hand_edited_kernel_metadata_names_the_key_and_the_command_that_rewrites_it(tmp_path, capsys, edit, fragment):
    bundle = tmp_path / "bundle"
    for folder in ("dataset", "kernel"):
        (bundle / folder).mkdir(parents=True)
    (bundle / "dataset" / "dataset-metadata.json").write_text('{"id": "someone/voc-pipeline-wheels"}')
    metadata = {"id": "someone/voc-pipeline", "dataset_sources": ["someone/voc-pipeline-wheels"]}
    edit(metadata)
    (bundle / "kernel" / "kernel-metadata.json").write_text(json.dumps(metadata))
    fails(capsys, ["kernel", "output", "--bundle", str(bundle), "--runs-dir", str(tmp_path / "runs")],
          "kernel-metadata.json", fragment, "`voc-pipeline kernel build --username YOU` rewrites it")


def test_a_json_artifact_that_is_a_list_names_the_stage_that_rewrites_it(tmp_path):
    artifacts.THRESHOLDS.path(tmp_path).write_text("[0.5, 0.5]")
    with pytest.raises(ArtifactError, match=r"thresholds.json is unreadable \(it holds a JSON list, expected a JSON "
                                            r"object\); stage tune rewrites it"):
        artifacts.read_thresholds(tmp_path)


# ---------------------------------------------------------------- 8. values of the wrong type inside files


def replace_label(csv: Path, row: int, value: str) -> None:
    lines = csv.read_text().splitlines()
    fields = lines[row].split(",")
    fields[3] = value
    lines[row] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")


def test_a_text_label_in_the_train_csv_is_named(data, tmp_path, capsys):
    replace_label(data / "train" / "train_set.csv", 2, "yes")
    fails(capsys, check_arguments(data, tmp_path), "train_set.csv: Id 1, class bird: value 'yes' is not a number; expected one of (0, 1)")


def test_a_text_label_in_the_test_csv_is_named_by_validate(data, demo_root, tmp_path, capsys):
    replace_label(data / "test" / "test_set.csv", 1, "unknown")
    fails(capsys, ["validate", str(demo_root / "solution.csv"), "--data", str(data)],
          "test_set.csv: Id 0, class bird: value 'unknown' is not a number; expected one of (-1, 0, 1)")


def with_row(solution: Path, target: Path, row_id: str, text: str) -> Path:
    lines = solution.read_text().splitlines()
    target.write_text("\n".join(line if not line.startswith(row_id + ",") else f"{row_id},{text}" for line in lines) + "\n")
    return target


def test_a_run_length_beyond_64_bits_is_the_out_of_range_message(demo_root, tmp_path, capsys):
    submission = with_row(demo_root / "solution.csv", tmp_path / "submission.csv", "0_segmentation",
                          "1 99999999999999999999999")
    assert main(["validate", str(submission), "--data", str(demo_root)]) == 1
    output = capsys.readouterr()
    assert "0_segmentation: run ending at position 99999999999999999999999 is outside a vector of length" in output.out
    assert "Traceback" not in output.err
    fails(capsys, ["score", str(demo_root / "solution.csv"), str(submission)], "is outside a vector of length")


def test_a_run_start_beyond_64_bits_without_a_size_is_refused_in_words():
    with pytest.raises(RleError, match="number 184467440737095516160 is too large"):
        parse_runs("184467440737095516160 2")
    with pytest.raises(RleError, match="run ending at position 2 is outside a vector of length 1"):
        parse_runs("00000000000000000000001 2", 1)  # leading zeros do not make a number large


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda path: path.write_text("Id,Predicted\n"), "test_1.npy is not a NumPy .npy file (it starts with b'Id,Pre'"),
    (lambda path: path.write_bytes(path.read_bytes()[:200]), "test_1.npy is cut short"),
])
def test_validate_names_a_test_image_that_is_text_or_cut(data, demo_root, capsys, damage, fragment):
    damage(data / "test" / "img" / "test_1.npy")
    message = fails(capsys, ["validate", str(demo_root / "solution.csv"), "--data", str(data)], fragment)
    assert "pickle" not in message


# ---------------------------------------------------------------- 9. messages that point the wrong way


def test_score_with_a_mistyped_solution_names_the_solution_not_the_data_root(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the old message blamed the data root
    message = fails(capsys, ["score", str(demo_root / "solutoin.csv"), str(demo_root / "solution.csv")],
                    f"solution file {demo_root / 'solutoin.csv'} does not exist", "solution.csv in the data folder")
    assert "data root" not in message
    fails(capsys, ["score", str(demo_root), str(demo_root / "solution.csv")], f"solution file {demo_root} is a folder")


UNKNOWN_KERNEL_CLI = f"""#!{sys.executable}
import sys
print("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/kernels/status?userName=x", file=sys.stderr)
sys.exit(1)
"""


def test_kernel_status_on_a_kernel_kaggle_does_not_know_says_what_to_check(tmp_path, capsys, monkeypatch):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "kaggle").write_text(textwrap.dedent(UNKNOWN_KERNEL_CLI))
    (venv_bin / "kaggle").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "not-a-real-token")
    fails(capsys, ["kernel", "status", "--bundle", str(tmp_path / "none"), "--kernel", "someone/no-such-kernel"],
          "404 Client Error", "there is no kernel someone/no-such-kernel this account can see", "voc-pipeline kernel push")
    fails(capsys, ["kernel", "output", "--bundle", str(tmp_path / "none"), "--kernel", "no-owner"],
          "--kernel 'no-owner' must be OWNER/SLUG")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--username", " "], "give your Kaggle user name with --username (got ' ')"),
    (["--username", "me@example.com"], "'me@example.com' is not a Kaggle user name"),
    (["--username", "someone", "--no-internet", "--weights-dataset", "voc-pipeline-keras-weights"],
     "must be OWNER/NAME, e.g. you/voc-pipeline-keras-weights"),
    (["--username", "someone", "--weights-dataset", "someone/w"], "the name 'w' is not a Kaggle dataset slug (6 to 50"),
])
def test_kernel_build_checks_kaggle_names_before_building(tmp_path, capsys, extra, fragment):
    output = tmp_path / "bundle"
    fails(capsys, ["kernel", "build", "--output", str(output), *extra], fragment)
    assert not output.exists(), "nothing is built before the names are checked"


@pytest.mark.parametrize(("extra", "fragment"), [(["--repeats", "0"], "bench --repeats 0: give at least 1"),
                                                 (["--images", "-3"], "bench --images -3: give at least 1")])
def test_bench_refuses_counts_below_one(capsys, extra, fragment):
    fails(capsys, ["bench", "submission", *extra], fragment)


# ---------------------------------------------------------------- 10. valid input once refused


def test_a_text_key_takes_a_number_as_its_text(capsys):
    assert main(["config", "--set", "submit.output_dir=2024"]) == 0
    assert 'output_dir = "2024"' in capsys.readouterr().out
    fails(capsys, ["config", "--set", "submit.output_dir=2024.10"], "expected text, got the number 2024.1",
          "quote it to keep it as typed")


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_a_submission_with_a_utf8_byte_order_mark_is_accepted_as_kaggle_accepts_it(demo_root, tmp_path, capsys, line_end):
    plain = demo_root / "solution.csv"
    marked = tmp_path / "submission.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + line_end.join(plain.read_text().splitlines()).encode() + line_end.encode())
    assert main(["validate", str(marked), "--data", str(demo_root)]) == 0
    assert capsys.readouterr().out.endswith("16 rows, valid\n")
    assert main(["score", str(plain), str(plain)]) == 0
    unmarked_score = capsys.readouterr().out
    assert main(["score", str(plain), str(marked)]) == 0
    assert capsys.readouterr().out == unmarked_score


def test_a_utf16_submission_is_refused_in_words(demo_root, tmp_path, capsys):
    submission = tmp_path / "submission.csv"
    submission.write_bytes((demo_root / "solution.csv").read_text().encode("utf-16"))
    fails(capsys, ["validate", str(submission), "--data", str(demo_root)], "is UTF-16 text, expected a submission CSV in UTF-8")


