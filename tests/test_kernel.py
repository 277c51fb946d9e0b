import json
import os
import stat
import zipfile

import pytest

from voc_pipeline.data.demo import write_demo_data
from voc_pipeline.errors import KernelError
from voc_pipeline.kernel import KERNEL_SOURCE, build_bundle, check_kernel, notebook_from_percent, push_bundle


def test_percent_source_becomes_code_and_markdown_cells():
    notebook = notebook_from_percent("# %% [markdown]\n# # Title\n# some *text*\n\n# %%\nx = 1\nprint(x)\n# %%\n\n")
    assert [cell["cell_type"] for cell in notebook["cells"]] == ["markdown", "code"]
    assert "".join(notebook["cells"][0]["source"]) == "# Title\nsome *text*"
    assert "".join(notebook["cells"][1]["source"]) == "x = 1\nprint(x)"
    assert notebook["nbformat"] == 4 and notebook["cells"][1]["outputs"] == []


def test_the_shipped_kernel_has_text_and_code():
    notebook = notebook_from_percent(KERNEL_SOURCE.read_text())
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
    assert "sigmoid" in "".join(notebook["cells"][0]["source"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), "someone", weights_datasets=("someone/keras-weights",))


@pytest.mark.slow
def test_bundle_holds_wheels_and_metadata(bundle):
    metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert metadata["id"] == "someone/voc-pipeline" and metadata["code_file"] == "kernel.ipynb"
    assert metadata["kernel_type"] == "notebook" and metadata["enable_internet"] is False
    assert metadata["dataset_sources"] == ["someone/voc-pipeline-wheels", "someone/keras-weights"]
    assert metadata["competition_sources"] == ["kul-h02a5a-computer-vision-ga2-2022"]
    assert json.loads((bundle / "dataset" / "dataset-metadata.json").read_text())["id"] == "someone/voc-pipeline-wheels"
    wheel = next((bundle / "dataset").glob("voc_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "voc_pipeline/profiles/kaggle.toml" in names and "voc_pipeline/cli.py" in names
    assert list((bundle / "dataset").glob("iterative_stratification-*.whl"))
    json.loads((bundle / "kernel" / "kernel.ipynb").read_text())


def test_build_refuses_a_missing_user_name(tmp_path):
    with pytest.raises(KernelError, match="--username"):
        build_bundle(tmp_path, "YOUR_KAGGLE_USERNAME")


def fake_kaggle(folder, log):
    """A stand-in for the external `kaggle` executable that records its arguments."""
    script = folder / "kaggle"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho done\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_push_without_credentials_fails_clearly_and_calls_nothing(bundle, tmp_path, monkeypatch):
    log = tmp_path / "calls.txt"
    fake_kaggle(tmp_path, log)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    with pytest.raises(KernelError, match="no Kaggle credentials found.*kaggle.json"):
        push_bundle(bundle)
    assert not log.exists()


@pytest.mark.slow
def test_push_with_credentials_uploads_without_showing_them(bundle, tmp_path, monkeypatch, capsys):
    log = tmp_path / "calls.txt"
    fake_kaggle(tmp_path, log)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key-123")
    push_bundle(bundle)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("datasets status someone/voc-pipeline-wheels")
    assert calls[1].startswith("datasets version") and calls[2].startswith("kernels push -p")
    output = capsys.readouterr()
    assert "secret-key-123" not in output.out + output.err + log.read_text()


@pytest.mark.slow
def test_kernel_runs_end_to_end_on_a_simulated_kaggle_tree(bundle, tmp_path):
    data = write_demo_data(tmp_path / "demo", num_train=40, num_test=6, seed=2)
    quick = ("classifier.head_epochs=1", "classifier.finetune_epochs=1", "segmenter.head_epochs=1",
             "segmenter.finetune_epochs=1")
    result = check_kernel(bundle, data, quick)
    assert result["valid"] and result["rows"] == 12 and result["files"] < 500
