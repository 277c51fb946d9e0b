"""Shared fixtures and helpers: the synthetic demo data set (and a private copy to break), the real VOC sample
when present, whole runs, and the checks of what a failing command prints (`from conftest import ...`)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from voc_pipeline.data.demo import write_demo_data

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"

# `make test` runs the suite on several processes (pytest-xdist, `--dist loadgroup`). A session fixture is built
# once per process that needs it, so the tests of each whole run share one process: the run is trained once, and
# the tests that change the tiny run and put it back never meet another process's changes. The fake Kaggle API
# listens on port 80 (where the client sends it), so its tests share one process too.
WHOLE_RUN_GROUPS = {"smoke_run": "smoke-run", "tiny_run": "tiny-run"}
ONE_PROCESS_MODULES = {"test_kaggle_loop.py": "tiny-run"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = ONE_PROCESS_MODULES.get(item.path.name) or next(
            (name for fixture, name in WHOLE_RUN_GROUPS.items() if fixture in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    """pytest 9.2 stores node ids where pytest-xdist (3.8) tags a test with its group: with it, `--dist loadgroup`
    would rebuild every whole run in each process and bind port 80 twice, so the run stops here instead."""
    if config.getoption("dist", "no") == "loadgroup" and tuple(pytest.version_tuple[:2]) >= (9, 2):
        raise pytest.UsageError(f"pytest {pytest.__version__} cannot group tests for pytest-xdist's --dist loadgroup "
                                f"(`make test`): install the pytest that pyproject.toml's dev extra asks for (<9.2)")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo data set in the competition layout (read-only for tests: copy before breaking it)."""
    return write_demo_data(tmp_path_factory.mktemp("demo") / "data", num_train=24, num_test=8, seed=3)


@pytest.fixture
def data(demo_root, tmp_path) -> Path:
    """A private copy of the demo data to break."""
    return shutil.copytree(demo_root, tmp_path / "data")


def one_line_error(text: str, *fragments: str) -> str:
    """The error a command printed (its stderr `text`): exactly one line starting with 'error:', holding every
    fragment, and no traceback. Returns that line."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def wait_for(predicate, seconds: float) -> bool:
    """Whether `predicate()` became true within `seconds` (checked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def voc_sample() -> Path:
    """The real VOC2012 sample beside the checkout; the test is skipped where it is absent."""
    if not (VOC_SAMPLE / "VOC2012" / "JPEGImages").is_dir():
        pytest.skip(f"{VOC_SAMPLE} is absent")
    return VOC_SAMPLE


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole pipeline through the command line on demo data with the smoke profile (weights none).

    Returns the resolved configuration of the run; the stages' files are in config.run_dir and the
    final submission in config.submit.output_dir.
    """
    from voc_pipeline.cli import main
    from voc_pipeline.config import build_config

    root = write_demo_data(tmp_path_factory.mktemp("smoke-data") / "demo", num_train=160, num_test=12, seed=0)
    runs = tmp_path_factory.mktemp("smoke-runs")
    output = tmp_path_factory.mktemp("smoke-output")
    arguments = ["--data", str(root), "--profile", "smoke", "--runs-dir", str(runs), "--run", "smoke",
                 "--set", f'submit.output_dir="{output}"']
    assert main(["run", "--until", "evaluate", *arguments]) == 0
    return build_config("smoke", [f'data.root="{root}"', f'runs_dir="{runs}"', "run_name='smoke'",
                                  f'submit.output_dir="{output}"'])


# The small CNN builds and compiles in a fraction of MobileNetV2's time; the graph does not care which model.
# Both heads refit on every image, so that stage refit trains here too.
TINY_SETTINGS = ("classifier.backbone='simple_cnn'", "classifier.image_size=32", "classifier.head_epochs=1",
                 "classifier.finetune_epochs=0", "segmenter.image_size=32", "segmenter.head_epochs=1",
                 "segmenter.finetune_epochs=0", "classifier.refit_all=true", "segmenter.refit_all=true")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole pipeline, once, at the smallest sizes that still train real models (weights none).

    Returns (configuration, assignments that make it). Tests that change the run put it back as it was.
    """
    from voc_pipeline.config import build_config
    from voc_pipeline.graph import run_until

    root = write_demo_data(tmp_path_factory.mktemp("tiny-data") / "demo", num_train=24, num_test=4, seed=5)
    runs = tmp_path_factory.mktemp("tiny-runs")
    output = tmp_path_factory.mktemp("tiny-output")
    assignments = [f'data.root="{root}"', f'runs_dir="{runs}"', "run_name='tiny'", f'submit.output_dir="{output}"',
                   *TINY_SETTINGS]
    config = build_config("smoke", assignments)
    assert set(run_until(config, "evaluate").values()) == {"ran"}
    return config, assignments


@pytest.fixture(scope="session")
def kaggle_stack():
    """Kaggle's stack (.venv-kaggle, built once from kaggle/image.toml), built before any test installs its network
    guard: a kernel build carrying models saved by a newer Keras loads them there."""
    from voc_pipeline.kernel.stack import build_stack_environment

    return build_stack_environment()
