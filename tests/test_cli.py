"""The edges a user calls: the command line (`voc-pipeline` and `python -m voc_pipeline`), its outputs and exit
statuses, and the commands the Makefile runs (`make -n`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from voc_pipeline.cli import main
from voc_pipeline.data.demo import write_demo_data
from voc_pipeline.data.submission import make_test_frame, submission_text, write_submission

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_python_m_voc_pipeline_is_the_command_line_with_its_output_and_exit_status(capsys):
    assert main(["config", "--profile", "smoke"]) == 0
    printed = capsys.readouterr().out
    result = subprocess.run([sys.executable, "-m", "voc_pipeline", "config", "--profile", "smoke"],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, printed)
    result = subprocess.run([sys.executable, "-m", "voc_pipeline", "config", "--set", "data.bogus=1"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    one_line_error(result.stderr, "unknown configuration key 'data.bogus'")


def test_data_demo_then_check_writes_splits_and_config(tmp_path, capsys):
    assert main(["data", "demo", str(tmp_path / "demo"), "--n-train", "12", "--n-test", "4"]) == 0
    assert main(["data", "check", "--data", str(tmp_path / "demo"), "--runs-dir", str(tmp_path / "runs"),
                 "--run", "trial", "--profile", "smoke", "--set", "seed=4"]) == 0
    run_dir = tmp_path / "runs" / "trial"
    assert {"config.toml", "run_info.json", "splits.json", "data_summary.json"} <= {p.name for p in run_dir.iterdir()}
    saved = (run_dir / "config.toml").read_text()
    assert "seed = 4" in saved and f'root = "{(tmp_path / "demo").resolve()}"' in saved
    summary = json.loads((run_dir / "metrics" / "data.json").read_text())
    assert summary["train_split"] + summary["validation_split"] == 12 and summary["test"]["images"] == 4


def test_score_prints_the_score_last(tmp_path, capsys):
    root = write_demo_data(tmp_path / "demo", num_train=4, num_test=3)
    empty = make_test_frame(np.arange(3), np.zeros((3, 20), int), [np.zeros((2, 2), np.uint8)] * 3)
    write_submission(empty, tmp_path / "empty.csv")
    assert main(["score", str(root / "solution.csv"), str(root / "solution.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 1.0000"
    assert main(["score", str(root / "solution.csv"), str(tmp_path / "empty.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 0.0000"


def test_validate_exits_non_zero_on_problems(tmp_path, capsys):
    root = write_demo_data(tmp_path / "demo", num_train=4, num_test=2)
    assert main(["validate", str(root / "solution.csv"), "--data", str(root)]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Predicted\n0_classification,1\n")
    assert main(["validate", str(bad), "--data", str(root)]) == 1
    output = capsys.readouterr().out
    assert "odd number" in output and "missing ids" in output


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["config", "--set", "data.bogus=1"]) == 2
    assert "error: unknown configuration key 'data.bogus'" in capsys.readouterr().err
    assert main(["data", "check", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_submission_reports_the_figures_it_measured_on_the_images_asked_for(capsys):
    assert main(["bench", "submission", "--images", "5", "--repeats", "1", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["images"] == 5
    assert figures["speedup"] == pytest.approx(figures["reference_seconds"] / figures["fast_seconds"])
    assert lines[0].startswith("submission writing, 5 images")
    assert f"speed-up: {figures['speedup']:.1f}x" in lines[-2]


def test_bench_submission_gives_no_speed_up_when_the_writers_disagree(monkeypatch):
    """The speed-up compares two writers of the same file: the fast one, broken, must stop the benchmark."""
    from voc_pipeline import bench

    monkeypatch.setattr(bench, "submission_text", lambda frame: submission_text(frame).replace("\n", "\r\n", 1))
    with pytest.raises(AssertionError, match="the fast writer's output differs from the reference writer's"):
        bench.bench_submission(3, 1)


def test_kernel_output_with_a_wrong_data_path_says_so_instead_of_checking_the_format_only(tmp_path, capsys):
    """An explicit --data that is not a data root is an error; without --data the check may fall back to the
    format alone (and says so)."""
    missing = tmp_path / "no-such-data"
    assert main(["kernel", "output", "--bundle", str(tmp_path / "bundle"), "--runs-dir", str(tmp_path / "runs"),
                 "--data", str(missing)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and str(missing) in error[0]
    assert not (tmp_path / "runs").exists()


def make_dry_run(target: str, *variables: str) -> list[list[str]]:
    """The arguments of each voc-pipeline command `make -n TARGET VARIABLES` would run in the checkout (DATA and
    KAGGLE_DATA taken from the command line only)."""
    environment = {name: value for name, value in os.environ.items() if name not in ("DATA", "KAGGLE_DATA")}
    result = subprocess.run(["make", "-n", "-C", str(CHECKOUT), target, *variables], capture_output=True, text=True,
                            env=environment, check=True)
    return [line.split("bin/voc-pipeline ", 1)[1].split() for line in result.stdout.splitlines()
            if "bin/voc-pipeline " in line]


def value_of(option: str, arguments: list[str]) -> str | None:
    """The value given to `option` in `arguments`, or None."""
    return arguments[arguments.index(option) + 1] if option in arguments else None


def test_make_kaggle_data_downloads_where_make_train_with_the_same_data_reads(tmp_path):
    folder = str(tmp_path / "kaggle-data")
    assert make_dry_run("kaggle-data", f"DATA={folder}") == [["data", "download", folder]]
    assert value_of("--data", make_dry_run("train", f"DATA={folder}")[0]) == folder
    assert make_dry_run("kaggle-data") == [["data", "download", "data/kaggle"]]


def test_make_kaggle_output_checks_against_the_given_data_once_it_holds_the_test_set(tmp_path):
    folder = tmp_path / "kaggle-data"
    assert value_of("--data", make_dry_run("kaggle-output", f"DATA={folder}")[0]) is None
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "test_set.csv").write_text("Id\n")
    assert value_of("--data", make_dry_run("kaggle-output", f"DATA={folder}")[0]) == str(folder)
