"""The Kaggle kernel: bundle, weights, credentials, reading the client's output and waiting on Kaggle, and a run
on Kaggle's stack. The push, status, output and submit through the real `kaggle` client are in
test_kaggle_loop.py."""

import ast
import json
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from voc_pipeline.cli import build_parser, main
from voc_pipeline.config import build_config
from voc_pipeline.errors import KernelError
from voc_pipeline.kernel.bundle import KERNEL_SOURCE, REPOSITORY, build_bundle, kernel_metadata, notebook_from_percent
from voc_pipeline.kernel.client import find_kaggle_cli, poll_until, read_failure
from voc_pipeline.kernel.competition import choose_competition, is_assignment_2, slug_of
from voc_pipeline.kernel.credentials import check_credentials
from voc_pipeline.kernel.stack import check_kernel, read_image
from voc_pipeline.kernel.weights import (
    WeightFile,
    install_attached_weights,
    missing_weights,
    plan_weights,
    write_weights_dataset,
)

THIS_YEAR = "kul-computer-vision-ga-2-2026"


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
    """The literal words of every `python -m voc_pipeline ...` and `voc_pipeline_cli(...)` call in the kernel's code cells."""
    notebook = notebook_from_percent(KERNEL_SOURCE.read_text())
    code = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    commands = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "voc_pipeline_cli":
            words = [element.value if isinstance(element, ast.Constant) else None for element in node.args]
            commands.append(words[: words.index(None)] if None in words else words)
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
    assert ["run", "--until", "evaluate"] in commands and ["run", "--until", "attack"] in commands
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
    assert main(["kernel", "build", "--username", "someone", "--output", str(tmp_path), "--no-internet",
                 "--competition", THIS_YEAR]) == 2
    assert "attach them with --weights-dataset" in capsys.readouterr().err
    with pytest.raises(KernelError, match="--username"):
        build_bundle(tmp_path, "YOUR_KAGGLE_USERNAME", THIS_YEAR)
    with pytest.raises(KernelError, match="--competition"):
        build_bundle(tmp_path, "someone", "")


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


LEGACY = json.dumps({"username": "someone", "key": "not-a-real-key"})
REFRESH = json.dumps({"refresh_token": "not-a-real-refresh-token"})


@pytest.mark.parametrize(("environment", "files", "platform", "expected"), [
    ({"KAGGLE_API_TOKEN": "x"}, {}, "linux", ["KAGGLE_API_TOKEN"]),
    ({"KAGGLE_API_TOKEN": "{home}/token"}, {"token": "t\n"}, "linux", ["KAGGLE_API_TOKEN (a token file)"]),
    # A token variable naming an empty file: no token, and no fall-back to ~/.kaggle/access_token.
    ({"KAGGLE_API_TOKEN": "{home}/token"}, {"token": "", ".kaggle/access_token": "t"}, "linux", []),
    ({}, {".kaggle/access_token": "t"}, "linux", ["~/.kaggle/access_token"]),
    ({}, {".kaggle/access_token": ""}, "linux", []),
    ({}, {".kaggle/access_token": " \n\t"}, "linux", []),
    ({}, {".kaggle/access_token": "", ".kaggle/access_token.txt": "t"}, "linux", ["~/.kaggle/access_token.txt"]),
    ({}, {".kaggle/credentials.json": REFRESH}, "linux", ["~/.kaggle/credentials.json"]),
    ({}, {".kaggle/credentials.json": json.dumps({"access_token": "a"})}, "linux", []),
    ({}, {".kaggle/credentials.json": "not json"}, "linux", []),
    ({"KAGGLE_USERNAME": "a", "KAGGLE_KEY": "b"}, {}, "linux", ["KAGGLE_USERNAME and KAGGLE_KEY"]),
    ({"KAGGLE_USERNAME": "a"}, {}, "linux", []),
    ({}, {".kaggle/kaggle.json": LEGACY}, "linux", ["{home}/.kaggle/kaggle.json"]),
    ({}, {".kaggle/kaggle.json": json.dumps({"username": "someone"})}, "linux", []),
    ({}, {".kaggle/kaggle.json": "secret"}, "linux", []),
    ({"KAGGLE_KEY": "b"}, {".kaggle/kaggle.json": json.dumps({"username": "someone"})}, "linux",
     ["{home}/.kaggle/kaggle.json with KAGGLE_KEY"]),
    # XDG: only on Linux, and only while ~/.kaggle does not exist.
    ({"XDG_CONFIG_HOME": "{home}/xdg"}, {"xdg/kaggle/kaggle.json": LEGACY}, "linux", ["{home}/xdg/kaggle/kaggle.json"]),
    ({"XDG_CONFIG_HOME": "{home}/xdg"}, {"xdg/kaggle/kaggle.json": LEGACY, ".kaggle/other": ""}, "linux", []),
    ({"XDG_CONFIG_HOME": "{home}/xdg"}, {"xdg/kaggle/kaggle.json": LEGACY}, "darwin", []),
    ({}, {".config/kaggle/kaggle.json": LEGACY}, "linux", ["{home}/.config/kaggle/kaggle.json"]),
    ({"KAGGLE_CONFIG_DIR": "{home}/elsewhere"}, {"elsewhere/kaggle.json": LEGACY, ".kaggle/kaggle.json": LEGACY},
     "linux", ["{home}/elsewhere/kaggle.json"]),
    # Inside a Kaggle notebook the client reads the token file KAGGLE_API_V1_TOKEN names.
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_DATA_PROXY_URL": "http://proxy", "KAGGLE_API_V1_TOKEN": "{home}/v1"},
     {"v1": "t"}, "linux", ["KAGGLE_API_V1_TOKEN (Kaggle notebook)"]),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_API_V1_TOKEN": "{home}/v1"}, {"v1": "t"}, "linux", []),
    ({}, {}, "linux", []),
])
def test_the_credential_check_follows_the_client_case_by_case(tmp_path, environment, files, platform, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    environment = {key: value.format(home=tmp_path) for key, value in environment.items()}
    check = check_credentials(environment, tmp_path, platform)
    assert check.found == [item.format(home=tmp_path) for item in expected]
    if files and not expected:
        assert check.problems, "a file the client cannot use is named, with the reason"
    said = " ".join(check.found + check.problems)  # names and reasons only, never a value
    assert "not-a-real-key" not in said and "not-a-real-refresh-token" not in said and "someone" not in said


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


# ---------------------------------------------------------------- reading the client's output


HINT_404 = ("The resource was not found. Check the spelling of the reference you passed.\n"
            "References are usually '<owner>/<slug>', which you can find in the resource's URL.\n"
            "To search for one, try 'kaggle search <query>'.")
HINT_403 = ("You don't have access to this resource.\nIf this is a competition, you may need to accept its rules first at\n"
            "  https://www.kaggle.com/competitions/<competition>/rules")


@pytest.mark.parametrize(("output", "line", "status"), [
    (f"404 Client Error: Not Found for url: http://x/api\n\n{HINT_404}\n", "404 Client Error: Not Found for url: http://x/api", 404),
    (f"Dataset not found\n\n{HINT_404}\n", "Dataset not found", 404),
    (f"Permission 'datasets.get' was denied\n\n{HINT_403}\n", "Permission 'datasets.get' was denied", 403),
    ("Not found\n", "Not found", None),
    ("boom\n\nThis is a problem on Kaggle's side, not with your command. Please try again later.", "boom", 500),
    ("Authentication required to call the Kaggle API.\n\nFirst, you will need a Kaggle account.",
     "Authentication required to call the Kaggle API (the client found no usable credentials)", 401),
    ("Could not find competition - please verify ...\n  Error: 404 Client Error: Not Found for url: u",
     "Could not find competition - please verify ... (Error: 404 Client Error: Not Found for url: u)", 404),
    ("The following are not valid competition sources and could not be added to the kernel: ['c']\n"
     "Kernel version 2 successfully pushed.  Please check progress at https://www.kaggle.com/code/a/b",
     "The following are not valid competition sources and could not be added to the kernel: ['c']", None),
])
def test_the_error_line_is_the_error_not_the_hint(output, line, status):
    assert read_failure(output) == type(read_failure(""))(line, status)


def test_polling_prints_each_change_once_and_returns_the_first_result(capsys):
    seen = iter([("queued", None), ("queued", None), ("running", None), ("complete", "the row")])
    assert poll_until("kernel a/b", lambda: next(seen), lambda state: f"still {state}", 0, 60) == "the row"
    assert capsys.readouterr().out == "kernel a/b: queued\nkernel a/b: running\nkernel a/b: complete\n"


def test_polling_past_the_deadline_names_the_last_state():
    with pytest.raises(KernelError, match="^kernel a/b is still running after the wait$"):
        poll_until("kernel a/b", lambda: ("running", None), lambda state: f"kernel a/b is still {state} after the wait",
                   0.01, 0.05)


def test_polling_stops_at_a_state_that_failed():
    def failed():
        raise KernelError("the kernel's run ended with error")

    with pytest.raises(KernelError, match="ended with error"):
        poll_until("kernel a/b", failed, lambda state: "timed out", 0, 60)


@pytest.mark.parametrize(("slug", "fits"), [
    ("kul-h02a5a-computer-vision-ga2-2022", True), ("kul-computer-vision-ga-2-2025", True), (THIS_YEAR, True),
    ("kul-computer-vision-ga-1-2026", False), ("kul-h02a5a-computer-vision-ga1-2022", False),
    ("kul-computer-vision-ga-20-2026", False), ("titanic", False), ("computer-vision-ga-2-2026", False),
])
def test_only_assignment_2_slugs_fit(slug, fits):
    assert is_assignment_2(slug) is fits


def test_the_slug_is_the_last_segment_of_the_ref_and_exactly_one_must_fit():
    assert slug_of(f"https://www.kaggle.com/competitions/{THIS_YEAR}/") == THIS_YEAR == slug_of(THIS_YEAR)
    assert choose_competition(["titanic", "kul-computer-vision-ga-1-2026", THIS_YEAR]) == THIS_YEAR
    with pytest.raises(KernelError, match=r"\(entered: titanic\).*--competition SLUG"):
        choose_competition(["titanic"])
    with pytest.raises(KernelError, match="several .*--competition SLUG"):
        choose_competition(["kul-computer-vision-ga-2-2025", THIS_YEAR])


# ---------------------------------------------------------------- the bundle

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), "someone", THIS_YEAR, weights_datasets=("someone/keras-weights",))


@pytest.mark.slow
def test_bundle_holds_wheels_and_metadata(bundle):
    metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert metadata["id"] == "someone/voc-pipeline" and metadata["code_file"] == "kernel.ipynb"
    assert metadata["kernel_type"] == "notebook" and metadata["enable_internet"] is True
    assert metadata["machine_shape"] == "NvidiaTeslaT4"
    assert metadata["dataset_sources"] == ["someone/voc-pipeline-wheels", "someone/keras-weights"]
    assert metadata["competition_sources"] == [THIS_YEAR]
    assert json.loads((bundle / "dataset" / "dataset-metadata.json").read_text())["id"] == "someone/voc-pipeline-wheels"
    wheel = next((bundle / "dataset").glob("voc_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "voc_pipeline/profiles/kaggle.toml" in names and "voc_pipeline/kernel/client.py" in names
    assert list((bundle / "dataset").glob("iterative_stratification-*.whl"))
    assert json.loads((bundle / "kernel" / "kernel.ipynb").read_text())["nbformat_minor"] == 5


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
    ("kaggle-strong", [], {"convnext_small_notop.h5": "classifier, segmenter"}),
    ("kaggle-strong", ["classifier.backbone=convnext_tiny", "segmenter.backbone=convnext_base"],
     {"convnext_tiny_notop.h5": "classifier", "convnext_base_notop.h5": "segmenter"}),
    ("kaggle-strong", ["classifier.backbone=efficientnetv2_s", "segmenter.backbone=resnet50v2"],
     {"efficientnetv2-s_notop.h5": "classifier", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "segmenter"}),
    ("smoke", [], {}),
])
def test_the_plan_is_what_keras_would_download(profile, assignments, expected):
    plan = plan_weights(build_config(profile, assignments))
    assert {weight.fname: weight.used_by for weight in plan} == expected
    for weight in plan:
        assert weight.origin.startswith("https://") and weight.origin.endswith(weight.fname) and weight.cache_subdir == "models"
    assert all(weight.file_hash for weight in plan if weight.fname.startswith(("resnet", "efficientnet", "convnext")))


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
