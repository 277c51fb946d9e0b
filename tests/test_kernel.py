"""The Kaggle kernel: bundle, weights, the push through a stand-in `kaggle` CLI, and a run on Kaggle's stack."""

import ast
import json
import shutil
import stat
import sys
import textwrap
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from voc_pipeline.cli import build_parser, main
from voc_pipeline.config import build_config
from voc_pipeline.data.demo import write_demo_data
from voc_pipeline.errors import KernelError
from voc_pipeline.kernel.bundle import KERNEL_SOURCE, REPOSITORY, build_bundle, kernel_metadata, notebook_from_percent
from voc_pipeline.kernel.client import KaggleCli, credential_sources, find_kaggle_cli, push_bundle
from voc_pipeline.kernel.stack import check_kernel, read_image
from voc_pipeline.kernel.weights import (
    WeightFile,
    install_attached_weights,
    missing_weights,
    plan_weights,
    write_weights_dataset,
)

TOKEN = "KGAT_not-a-real-token-0123456789"


def test_percent_source_becomes_cells_with_ids():
    notebook = notebook_from_percent("# %% [markdown]\n# # Title\n# some *text*\n\n# %%\nx = 1\nprint(x)\n# %%\n\n")
    assert [cell["cell_type"] for cell in notebook["cells"]] == ["markdown", "code"]
    assert "".join(notebook["cells"][0]["source"]) == "# Title\nsome *text*"
    assert "".join(notebook["cells"][1]["source"]) == "x = 1\nprint(x)"
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5) and notebook["cells"][1]["outputs"] == []


def test_the_shipped_kernel_has_text_code_and_unique_cell_ids():
    notebook = notebook_from_percent(KERNEL_SOURCE.read_text())
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids) and all(1 <= len(cell_id) <= 64 for cell_id in ids)


def commands_in_kernel() -> list[list[str]]:
    """The literal words of every `python -m voc_pipeline ...` call in the kernel's code cells."""
    notebook = notebook_from_percent(KERNEL_SOURCE.read_text())
    code = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    commands = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.List):
            continue
        words = [element.value if isinstance(element, ast.Constant) else None for element in node.elts]
        if "voc_pipeline" in words and words[words.index("voc_pipeline") - 1] == "-m":
            rest = words[words.index("voc_pipeline") + 1:]
            commands.append(rest[: rest.index(None)] if None in rest else rest)
    return commands


def test_the_kernel_calls_only_commands_the_command_line_has():
    """The notebook runs the same CLI a user runs: a renamed command or option fails here, not on Kaggle."""
    commands = commands_in_kernel()
    assert ["run", "--until", "evaluate"] in commands
    for words in commands:
        try:
            build_parser().parse_known_args(words)
        except SystemExit as exit_:
            pytest.fail(f"the kernel calls `voc-pipeline {' '.join(words)}`, which the command line refuses ({exit_})")


def test_metadata_asks_for_two_t4s_and_internet_by_default():
    metadata = kernel_metadata("someone", "a-competition", ["someone/voc-pipeline-wheels"], True, True)
    assert metadata["machine_shape"] == "NvidiaTeslaT4" and metadata["enable_gpu"] and metadata["enable_internet"]
    assert metadata["competition_sources"] == ["a-competition"] and metadata["id"] == "someone/voc-pipeline"
    assert "machine_shape" not in kernel_metadata("someone", "c", [], False, True)


def test_a_kernel_without_internet_needs_a_weights_dataset(tmp_path, capsys):
    assert main(["kernel", "build", "--username", "someone", "--output", str(tmp_path), "--no-internet"]) == 2
    assert "attach them with --weights-dataset" in capsys.readouterr().err
    with pytest.raises(KernelError, match="--username"):
        build_bundle(tmp_path, "YOUR_KAGGLE_USERNAME")


@pytest.mark.parametrize(("platform", "machine", "expected"), [
    ("darwin", "arm64", {"tensorflow"}),
    ("linux", "x86_64", {"tensorflow-cpu"}),
    ("win32", "AMD64", {"tensorflow-cpu"}),
])
def test_the_cpu_extra_picks_a_tensorflow_that_exists_on_each_platform(platform, machine, expected):
    extras = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    environment = {"sys_platform": platform, "platform_machine": machine, "extra": "cpu"}
    chosen = {requirement.name for requirement in map(Requirement, extras["cpu"])
              if requirement.marker is None or requirement.marker.evaluate(environment)}
    assert chosen == expected


def test_kaggles_stack_is_recorded_in_one_file():
    image = read_image()
    assert image.python == "3.12" and set(image.pins()) >= {"tensorflow-cpu==2.20.0", "keras==3.13.2"}


# ---------------------------------------------------------------- credentials and the executable


@pytest.mark.parametrize(("environment", "files", "expected"), [
    ({"KAGGLE_API_TOKEN": "x"}, [], ["KAGGLE_API_TOKEN"]),
    ({}, [".kaggle/access_token"], ["~/.kaggle/access_token"]),
    ({}, [".kaggle/access_token.txt"], ["~/.kaggle/access_token.txt"]),
    ({}, [".kaggle/credentials.json"], ["~/.kaggle/credentials.json"]),
    ({"KAGGLE_USERNAME": "a", "KAGGLE_KEY": "b"}, [], ["KAGGLE_USERNAME and KAGGLE_KEY"]),
    ({"KAGGLE_USERNAME": "a"}, [], []),
    ({}, [".kaggle/kaggle.json"], ["{home}/.kaggle/kaggle.json"]),
    ({"XDG_CONFIG_HOME": "{home}/xdg"}, ["xdg/kaggle/kaggle.json"], ["{home}/xdg/kaggle/kaggle.json"]),
    ({"KAGGLE_CONFIG_DIR": "{home}/elsewhere"}, ["elsewhere/kaggle.json", ".kaggle/kaggle.json"],
     ["{home}/elsewhere/kaggle.json"]),
    ({}, [], []),
])
def test_every_kind_of_credentials_the_cli_accepts_is_recognised(tmp_path, environment, files, expected):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("secret")
    environment = {key: value.format(home=tmp_path) for key, value in environment.items()}
    assert credential_sources(environment, tmp_path) == [item.format(home=tmp_path) for item in expected]


def test_the_cli_is_found_beside_the_interpreter_before_path(tmp_path, monkeypatch):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for folder in (tmp_path / "venv" / "bin", tmp_path / "elsewhere"):
        (folder / "kaggle").write_text("#!/bin/sh\n")
        (folder / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert find_kaggle_cli(tmp_path / "venv" / "bin" / "python") == tmp_path / "venv" / "bin" / "kaggle"
    assert find_kaggle_cli(tmp_path / "other" / "python") == tmp_path / "elsewhere" / "kaggle"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(KernelError, match="installed neither beside .* nor on PATH: pip install 'voc-pipeline\\[kaggle\\]'"):
        find_kaggle_cli(tmp_path / "other" / "python")


# ---------------------------------------------------------------- the stand-in CLI

STAND_IN = '''
#!{python}
"""Behaves as the kaggle CLI 2.x does for the calls voc-pipeline makes (its texts are the CLI's own)."""
import json, os, sys
from pathlib import Path

state_path = Path({state!r})
state = json.loads(state_path.read_text()) if state_path.exists() else {{"datasets": {{}}, "kernel_polls": 0}}
arguments = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(" ".join(arguments) + "\\n")
if not os.environ.get("KAGGLE_API_TOKEN"):
    print("Authentication required to call the Kaggle API.")
    sys.exit(1)

def save():
    state_path.write_text(json.dumps(state))

def dataset_id(folder):
    return json.loads((Path(folder) / "dataset-metadata.json").read_text())["id"]

command = arguments[:2]
if command == ["datasets", "status"]:
    polls = state["datasets"].get(arguments[2])
    if polls is None:
        print("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/" + arguments[2],
              file=sys.stderr)
        sys.exit(1)
    state["datasets"][arguments[2]] = polls + 1
    save()
    print("ready" if polls >= 1 else "running")
elif command == ["datasets", "create"]:
    state["datasets"][dataset_id(arguments[3])] = 0
    save()
    print("Your private Dataset is being created. Please check progress at https://www.kaggle.com/datasets/x")
elif command == ["datasets", "version"]:
    state["datasets"][dataset_id(arguments[3])] = 0
    save()
    print("Dataset version is being created. Please check progress at https://www.kaggle.com/datasets/x")
elif command == ["kernels", "push"]:
    metadata = json.loads((Path(arguments[3]) / "kernel-metadata.json").read_text())
    not_ready = [name for name in metadata["dataset_sources"] if state["datasets"].get(name, 0) < 2]
    if not_ready:
        print("The following are not valid dataset sources and could not be added to the kernel: " + str(not_ready))
    if os.environ.get("STAND_IN_REJECT"):
        print("The following are not valid competition sources and could not be added to the kernel: "
              + str(metadata["competition_sources"]))
    print("Kernel version 3 successfully pushed.  Please check progress at https://www.kaggle.com/code/"
          + metadata["id"])
elif command == ["kernels", "status"]:
    state["kernel_polls"] += 1
    save()
    status = "COMPLETE" if state["kernel_polls"] >= 3 else "RUNNING"
    print(arguments[2] + ' has status "KernelWorkerStatus.' + status + '"')
elif command == ["kernels", "output"]:
    folder = Path(arguments[arguments.index("-p") + 1])
    (folder / "runs" / "kaggle").mkdir(parents=True, exist_ok=True)
    (folder / "submission.csv").write_text(Path(os.environ["STAND_IN_SUBMISSION"]).read_text())
    (folder / "runs" / "kaggle" / "report.md").write_text("# report")
    print("Output file downloaded to " + str(folder / "submission.csv"))
else:
    print("unexpected call: " + " ".join(arguments), file=sys.stderr)
    sys.exit(2)
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A stand-in `kaggle` in a virtual environment's bin/ beside the (pretended) interpreter, not on PATH, with
    only KAGGLE_API_TOKEN as credentials. Returns its log file."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    log = tmp_path / "calls.log"
    script = venv_bin / "kaggle"
    script.write_text(textwrap.dedent(STAND_IN).lstrip().format(python=sys.executable, state=str(tmp_path / "state.json"),
                                                                 log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    # The weights dataset the bundle attaches exists on "Kaggle" already, ready.
    (tmp_path / "state.json").write_text(json.dumps({"datasets": {"someone/keras-weights": 5}, "kernel_polls": 0}))
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    return log


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), "someone", weights_datasets=("someone/keras-weights",))


def quick_cli():
    return KaggleCli.ready(poll_seconds=0.01, wait_seconds=5)


@pytest.mark.slow
def test_bundle_holds_wheels_and_metadata(bundle):
    metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert metadata["id"] == "someone/voc-pipeline" and metadata["code_file"] == "kernel.ipynb"
    assert metadata["kernel_type"] == "notebook" and metadata["enable_internet"] is True
    assert metadata["machine_shape"] == "NvidiaTeslaT4"
    assert metadata["dataset_sources"] == ["someone/voc-pipeline-wheels", "someone/keras-weights"]
    assert metadata["competition_sources"] == ["kul-h02a5a-computer-vision-ga2-2022"]
    assert json.loads((bundle / "dataset" / "dataset-metadata.json").read_text())["id"] == "someone/voc-pipeline-wheels"
    wheel = next((bundle / "dataset").glob("voc_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "voc_pipeline/profiles/kaggle.toml" in names and "voc_pipeline/kernel/client.py" in names
    assert list((bundle / "dataset").glob("iterative_stratification-*.whl"))
    assert json.loads((bundle / "kernel" / "kernel.ipynb").read_text())["nbformat_minor"] == 5


@pytest.mark.slow
def test_a_push_with_the_cli_only_in_the_venv_and_only_a_token_waits_for_ready_datasets(bundle, stand_in, capsys):
    pushed = push_bundle(bundle, cli=quick_cli())
    assert pushed == {"kernel": "someone/voc-pipeline", "version": 3, "url": "https://www.kaggle.com/code/someone/voc-pipeline"}
    calls = stand_in.read_text().splitlines()
    assert calls[:2] == ["datasets status someone/voc-pipeline-wheels",  # 404: a new dataset
                         f"datasets create -p {bundle / 'dataset'} --dir-mode zip"]
    assert calls[-2:] == ["datasets status someone/keras-weights", f"kernels push -p {bundle / 'kernel'}"]
    output = capsys.readouterr().out
    assert output.index("dataset someone/voc-pipeline-wheels: running") < output.index("dataset someone/voc-pipeline-wheels: ready")
    assert TOKEN not in output + stand_in.read_text()
    # A second push adds a version and waits again.
    push_bundle(bundle, cli=quick_cli())
    assert any(call.startswith("datasets version -p") for call in stand_in.read_text().splitlines())


@pytest.mark.slow
def test_a_rejected_push_fails_with_the_fix(bundle, stand_in, monkeypatch, capsys):
    monkeypatch.setenv("STAND_IN_REJECT", "1")
    assert main(["kernel", "push", "--bundle", str(bundle), "--poll", "0.01", "--timeout", "5"]) == 2
    error = capsys.readouterr().err
    assert "The following are not valid competition sources" in error and "join the competition" in error
    assert TOKEN not in error


@pytest.mark.slow
def test_a_push_without_credentials_names_them_and_calls_nothing(bundle, stand_in, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    assert main(["kernel", "push", "--bundle", str(bundle)]) == 2
    assert "no Kaggle credentials found: create an API token" in capsys.readouterr().err
    assert not stand_in.exists()


@pytest.mark.slow
def test_status_waits_for_the_run_and_output_fetches_a_valid_submission(bundle, stand_in, demo_root, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setenv("STAND_IN_SUBMISSION", str(demo_root / "solution.csv"))
    push_bundle(bundle, cli=quick_cli())
    assert main(["kernel", "status", "--bundle", str(bundle), "--poll", "0.01", "--timeout", "5"]) == 0
    output = capsys.readouterr().out
    assert "kernel someone/voc-pipeline: running" in output and "kernel someone/voc-pipeline: complete" in output
    runs = tmp_path / "runs"
    assert main(["kernel", "output", "--bundle", str(bundle), "--runs-dir", str(runs), "--data", str(demo_root)]) == 0
    output = capsys.readouterr().out
    assert (runs / "kaggle-3" / "submission.csv").exists() and "16 rows, valid" in output
    assert f"report: {runs / 'kaggle-3' / 'runs' / 'kaggle' / 'report.md'}" in output


# ---------------------------------------------------------------- ImageNet weights


@pytest.mark.parametrize(("profile", "assignments", "expected"), [
    ("kaggle", [], {"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5": "classifier",
                    "mobilenet_1_0_224_tf_no_top.h5": "segmenter"}),
    ("cpu", [], {"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5": "classifier",
                 "mobilenet_1_0_224_tf_no_top.h5": "segmenter"}),
    ("cpu", ["segmenter.backbone=mobilenet_v2", "classifier.image_size=224"],
     {"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5": "classifier, segmenter"}),
    ("kaggle", ["classifier.backbone=resnet50v2", "segmenter.weights=none"],
     {"resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "classifier"}),
    ("kaggle-strong", [], {"efficientnetv2-s_notop.h5": "classifier",
                           "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "segmenter"}),
    ("smoke", [], {}),
])
def test_the_plan_is_what_keras_would_download(profile, assignments, expected):
    plan = plan_weights(build_config(profile, assignments))
    assert {weight.fname: weight.used_by for weight in plan} == expected
    for weight in plan:
        assert weight.origin.startswith("https://") and weight.origin.endswith(weight.fname) and weight.cache_subdir == "models"
    assert all(weight.file_hash for weight in plan if weight.fname.startswith(("resnet", "efficientnet")))


def test_a_weights_dataset_is_written_from_keras_cache(tmp_path):
    plan = plan_weights(build_config("cpu"))
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    for weight in plan:
        (cache / "models" / weight.fname).write_bytes(b"h5 bytes of " + weight.fname.encode())
    folder = write_weights_dataset(plan, tmp_path / "weights", "someone", cache_dir=cache)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [*(weight.fname for weight in plan), "weights.json", "dataset-metadata.json"])
    assert json.loads((folder / "dataset-metadata.json").read_text())["id"] == "someone/voc-pipeline-keras-weights"
    assert [WeightFile(**entry) for entry in json.loads((folder / "weights.json").read_text())] == plan
    home = tmp_path / "keras-home"
    installed = install_attached_weights(folder, home)  # the dataset as Kaggle mounts it
    assert sorted(path.name for path in installed) == sorted(weight.fname for weight in plan)
    assert (home / "models" / plan[0].fname).read_bytes() == b"h5 bytes of " + plan[0].fname.encode()
    assert missing_weights(build_config("cpu"), home) == []
    assert [weight.fname for weight in missing_weights(build_config("kaggle"), home)] == [
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"]


def test_a_failed_weight_download_names_the_file_and_the_need_for_internet(tmp_path):
    plan = plan_weights(build_config("kaggle", ["classifier.backbone=resnet50v2", "segmenter.weights=none"]))
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / plan[0].fname).write_bytes(b"not the file Keras's hash expects")
    with pytest.raises(KernelError, match=f"could not fetch {plan[0].fname} .* needs internet access"):
        write_weights_dataset(plan, tmp_path / "weights", "someone", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "weights").exists()


def test_weights_for_a_profile_without_imagenet_are_refused(tmp_path, capsys):
    assert main(["kernel", "weights", "--profile", "smoke", "--username", "someone", "--output", str(tmp_path / "w")]) == 2
    assert "asks for no ImageNet weights" in capsys.readouterr().err


# ---------------------------------------------------------------- the kernel itself, on Kaggle's stack


@pytest.mark.slow
def test_kernel_runs_end_to_end_on_kaggles_stack_and_a_simulated_kaggle_tree(bundle, tmp_path):
    data = write_demo_data(tmp_path / "demo", num_train=40, num_test=6, seed=2)
    # A stray wheel elsewhere under /kaggle/input must not be installed (pip would fail on it).
    (data / "stray-0.1-py3-none-any.whl").write_bytes(b"not a wheel")
    quick = ("classifier.head_epochs=1", "classifier.finetune_epochs=1", "segmenter.head_epochs=1",
             "segmenter.finetune_epochs=1")
    result = check_kernel(bundle, data, quick, stack="kaggle")
    assert result["valid"] and result["rows"] == 12 and result["files"] < 500
    assert result["python"].startswith(read_image().python) or shutil.which("pyenv") is None
    assert "installing from" in result["output"] and "stray" not in result["output"]


@pytest.mark.slow
def test_an_attached_dataset_that_is_not_on_kaggle_stops_the_push_before_it(bundle, stand_in, tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"datasets": {}, "kernel_polls": 0}))
    with pytest.raises(KernelError, match="dataset someone/keras-weights, attached in .* is missing on Kaggle: upload it first"):
        push_bundle(bundle, cli=quick_cli())
    assert not any(call.startswith("kernels push") for call in stand_in.read_text().splitlines())


def internet_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_a_kernel_that_needs_weights_it_cannot_get_stops_at_once(bundle, demo_root):
    if internet_reachable():
        pytest.skip("Keras could download the weights here")
    with pytest.raises(KernelError, match=r"(?s)Keras's cache lacks 1 ImageNet weight files .*mobilenet_v2_weights.*"
                                          r"This kernel has no internet: attach the weights dataset"):
        check_kernel(bundle, demo_root, ("classifier.weights=imagenet", "classifier.image_size=96"), stack="kaggle")
