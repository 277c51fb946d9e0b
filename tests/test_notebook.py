"""The handed-in notebook: its parts, the student's notes, offline experiments and `compare`, and the notebook
executed with papermill in a Jupyter kernel as Kaggle executes it."""

import json
import os
import shutil
import subprocess

import pytest
from conftest import one_line_error

from voc_pipeline.cli import main
from voc_pipeline.config import build_config, config_to_toml
from voc_pipeline.kernel.bundle import KERNEL_SOURCE, build_bundle, notebook_from_percent, notes_slots
from voc_pipeline.kernel.notes import NOTE_PLACES, read_notes
from voc_pipeline.kernel.stack import build_stack_environment, check_kernel, notebook_sections, read_image

COMPETITION = "kul-computer-vision-ga-2-2026"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5d0c1e30000000049454e44ae426082")


def write_run(folder, assignments=(), until="evaluate", score=0.5, seconds=60.0):
    """A run folder as the stages leave it, without training: the resolved configuration, the stage records and
    the metrics compare reads."""
    folder.mkdir(parents=True)
    config = build_config("smoke", [f"run_name='{folder.name}'", f'runs_dir="{folder.parent}"', *assignments])
    (folder / "config.toml").write_text(config_to_toml(config))
    stages = ["data", "train-cls", "train-seg", "tune", "predict", "submit", "evaluate"]
    done = stages[: stages.index(until) + 1]
    (folder / "run_info.json").write_text(json.dumps({"stages": {
        name: {"finished": "2026-12-01T00:00:00+00:00", "seconds": seconds} for name in done}}))
    metrics = {"train-cls": {"mean_average_precision": score - 0.1},
               "train-seg": {"mean_iou": score - 0.2},
               "evaluate": {"validation_images": 10, "joint_rule": "two-step masks", "scores": {
                   "most frequent class + centre box": {"score": 0.2, "classification": 0.3, "segmentation": 0.1},
                   "independent heads": {"score": score - 0.05, "classification": score, "segmentation": score - 0.1},
                   "joint rule (two-step masks)": {"score": score, "classification": score + 0.05,
                                                   "segmentation": score - 0.05}}}}
    (folder / "metrics").mkdir()
    for name in done:
        if name in metrics:
            (folder / "metrics" / f"{name}.json").write_text(json.dumps(metrics[name]))
    (folder / "report.md").write_text(f"# Run {folder.name}\n")
    (folder / "classifier_curves.png").write_bytes(PNG)
    (folder / "classifier.keras").write_bytes(b"a model, never bundled")
    return folder


# ---------------------------------------------------------------- compare


def test_compare_lists_exactly_the_differing_keys_and_every_runs_scores(tmp_path, capsys):
    first = write_run(tmp_path / "runs" / "baseline", score=0.5)
    second = write_run(tmp_path / "runs" / "longer", ["classifier.head_epochs=7", "segmenter.dice_weight=0.25"], score=0.6)
    stopped = write_run(tmp_path / "runs" / "stopped", ["classifier.loss='focal'"], until="train-seg")
    assert main(["compare", str(first), str(second), str(stopped), "--output", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == {"baseline", "longer", "stopped"}
    assert "(reference)" in rows["baseline"] and "0.5000" in rows["baseline"] and "0.6000" in rows["longer"]
    differences = rows["longer"].split(" | ")[1].split("<br>")
    assert differences == ["classifier.head_epochs = 7", "segmenter.dice_weight = 0.25"]
    assert rows["stopped"].split(" | ")[1] == 'classifier.loss = "focal"'
    assert "stopped before evaluate (last stage: train-seg)" in rows["stopped"]
    assert "two-step masks" in rows["longer"] and "2 min 0 s" in rows["longer"]
    assert "Not evaluated: `stopped`" in text
    assert " | off | " in rows["baseline"], "no self-train stage: self-training was off"
    assert (tmp_path / "out" / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_compare_says_what_self_training_did(tmp_path):
    from voc_pipeline.comparison import summarise_run

    run = write_run(tmp_path / "runs" / "selftrained")
    info = json.loads((run / "run_info.json").read_text())
    info["stages"]["self-train"] = {"finished": "2026-12-01T00:00:00+00:00", "seconds": 300.0}
    (run / "run_info.json").write_text(json.dumps(info))
    (run / "self_training.json").write_text(json.dumps({"rounds": 1, "kept": False, "pseudo_labelled_images": 7,
                                                        "validation_score": {"first": 0.3082, "self_trained": 0.2786}}))
    summary = summarise_run(run)
    assert summary.self_training == "not kept: 0.2786 against 0.3082 (7 test images)"
    assert summary.training_seconds == 2 * 60 + 300, "self-training counts as training time (beside both heads)"
    (run / "self_training.json").write_text(json.dumps({"rounds": 1, "kept": False, "validation_score": {"first": 0.3}}))
    assert summarise_run(run).self_training == "nothing pseudo-labelled"


def test_compare_needs_two_runs_and_writes_nothing_otherwise(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "only")
    assert main(["compare", str(run), "--output", str(tmp_path / "out")]) == 2
    one_line_error(capsys.readouterr().err, "compare needs at least two runs", "got 1")
    assert main(["compare", str(run), str(tmp_path / "runs" / "missing"), "--output", str(tmp_path / "out")]) == 2
    one_line_error(capsys.readouterr().err, "missing", "no such folder")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- notes and experiments in the build


def test_every_note_place_has_its_slot_in_the_kernel():
    assert notes_slots(KERNEL_SOURCE.read_text()) == set(NOTE_PLACES)


def test_notes_go_to_their_places_with_their_images_attached(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "sketch.png").write_bytes(PNG)
    (tmp_path / "classification.md").write_text("## My argument\n\nWhy this loss.\n\n![sketch](figures/sketch.png)\n")
    (tmp_path / "discussion.md").write_text('All in all. <img src="figures/sketch.png" width="50">\n')
    notebook = notebook_from_percent(KERNEL_SOURCE.read_text(), read_notes(tmp_path))
    texts = ["".join(cell["source"]) for cell in notebook["cells"]]
    notes = {cell["metadata"]["tags"][0]: index for index, cell in enumerate(notebook["cells"])
             if cell["metadata"].get("tags", [""])[0].startswith("notes:")}
    assert set(notes) == {"notes:classification", "notes:discussion"}
    part_1 = next(index for index, text in enumerate(texts) if text.startswith("## Part 1"))
    part_2 = next(index for index, text in enumerate(texts) if text.startswith("## Part 2"))
    assert part_1 < notes["notes:classification"] < part_2
    assert notes["notes:discussion"] > next(index for index, text in enumerate(texts) if text.startswith("## Part 4"))
    cell = notebook["cells"][notes["notes:classification"]]
    assert "![sketch](attachment:figures_sketch.png)" in texts[notes["notes:classification"]]
    assert cell["attachments"]["figures_sketch.png"]["image/png"]
    assert 'src="attachment:figures_sketch.png"' in texts[notes["notes:discussion"]]
    # Without experiments their section is not in the notebook; every cell id is unique.
    assert not any(text.startswith("## Experiments") for text in texts)
    assert len({cell["id"] for cell in notebook["cells"]}) == len(notebook["cells"])


def build(tmp_path, *extra) -> int:
    return main(["kernel", "build", "--username", "someone", "--competition", COMPETITION,
                 "--output", str(tmp_path / "bundle"), *extra])


@pytest.mark.parametrize(("make", "arguments", "fragments"), [
    (lambda path: None, ["--notes", "{tmp}/absent"], ["--notes", "absent: no such folder"]),
    (lambda path: (path / "notes").mkdir() or (path / "notes" / "results.md").write_text("x"), ["--notes", "{tmp}/notes"],
     ["results.md matches no place", "introduction.md, data.md, classification.md, segmentation.md, adversarial.md, "
                                     "discussion.md"]),
    (lambda path: (path / "notes").mkdir() or (path / "notes" / "discussion.md").write_text("![a](lost.png)"),
     ["--notes", "{tmp}/notes"], ["references the image lost.png, which does not exist"]),
    (lambda path: None, ["--experiments", "{tmp}/runs/absent"], ["absent", "no such folder"]),
    (lambda path: (write_run(path / "runs" / "busy") / ".lock").write_text(json.dumps({
        "pid": os.getpid(), "host": __import__("socket").gethostname(), "command": "voc-pipeline train-cls",
        "stage": "train-cls", "started": "now"})), ["--experiments", "{tmp}/runs/busy"],
     ["run", "busy is still running", f"pid {os.getpid()}", "train-cls"]),
])
def test_bad_notes_and_experiments_stop_the_build_before_anything_is_written(tmp_path, capsys, make, arguments, fragments):
    make(tmp_path)
    assert build(tmp_path, *(argument.format(tmp=tmp_path) for argument in arguments)) == 2
    one_line_error(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "bundle").exists()


# ---------------------------------------------------------------- the notebook, executed as Kaggle executes it



def outputs_of(cells) -> list[dict]:
    return [output for cell in cells for output in cell.get("outputs", [])]


@pytest.mark.slow
def test_the_notebook_from_a_trained_run_predicts_reports_and_never_trains(tiny_run, tmp_path):
    """The notebook, executed once, as Kaggle runs it: on Kaggle's stack, from the shared tiny run trained here
    (both heads refit), with the student's notes and two offline experiments. It installs the run, finds the
    carried stages current, predicts, reports every part with the run's curves, and writes the submission that
    `submit` writes for the same run and data on the same stack, byte for byte."""
    config, _ = tiny_run
    data = shutil.copytree(config.data.root, tmp_path / "demo")
    # A stray wheel elsewhere under /kaggle/input must not be installed (pip would fail on it).
    (data / "stray-0.1-py3-none-any.whl").write_bytes(b"not a wheel")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "sketch.png").write_bytes(PNG)
    (notes / "introduction.md").write_text("INTRODUCTION-NOTE: what we set out to do.\n")
    (notes / "adversarial.md").write_text("ADVERSARIAL-NOTE: our goal.\n\n![sketch](sketch.png)\n")
    offline = [write_run(tmp_path / "runs" / "resnet", ["classifier.backbone='resnet50v2'"], score=0.61),
               write_run(tmp_path / "runs" / "baseline", score=0.55)]
    bundle = build_bundle(tmp_path / "bundle", "someone", COMPETITION, enable_internet=False, notes=notes,
                          experiments=tuple(offline), trained=config.run_dir)
    metadata = json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())
    assert metadata["enable_internet"] is False and metadata["dataset_sources"][-1] == "someone/voc-pipeline-run-tiny"
    assert not list((bundle / "dataset" / "experiments").rglob("*.keras"))
    result = check_kernel(bundle, data, stack="kaggle", output=tmp_path / "check")
    assert result["valid"] and result["rows"] == 8 and result["files"] < 500
    assert result["python"].startswith(read_image().python) or shutil.which("pyenv") is None
    assert "installing from" in result["output"] and "stray" not in result["output"]
    assert result["html"].is_file() and "ADVERSARIAL-NOTE" in result["html"].read_text()
    carried = "current already: data, train-cls, train-seg, tune, self-train, refit"
    assert f"ran: predict, submit, evaluate; {carried}" in result["output"]
    assert f"ran: attack; {carried}, predict, submit, evaluate" in result["output"]
    assert "Epoch 1/" not in result["output"]  # nothing trained

    notebook = json.loads(result["notebook"].read_text())
    everything = outputs_of(notebook["cells"])
    assert not [output for output in everything if output["output_type"] == "error"]
    sections = notebook_sections(notebook)
    assert list(sections) == ["Setup: the package and the ImageNet weights", "The data", "Training (before this notebook)",
                              "Predictions, and the time they take", "Part 1: multi-label classification",
                              "Part 2: semantic segmentation, and how both heads decide together",
                              "Part 3: an adversarial attack on this run's own models",
                              "Experiments run before this notebook", "Part 4: findings", "The submission"]
    assert all(outputs_of(cells) for cells in sections.values())

    def shown(title: str) -> str:
        return "".join("".join(output.get("data", {}).get("text/markdown", output.get("text", "")))
                       for output in outputs_of(sections[title]))

    def images(title: str) -> int:
        return sum("image/png" in output.get("data", {}) for output in outputs_of(sections[title]))

    training = shown("Training (before this notebook)")
    assert "run `tiny`" in training and "| train-cls |" in training and "the CPU" in training
    assert "`refit_classifier.keras`, trained on fit + validation" in training
    assert images("Training (before this notebook)") == 4  # both heads' curves, and both refits'
    assert "no training" in shown("Predictions, and the time they take") and "ESTIMATE" in \
        shown("Predictions, and the time they take")
    assert "Backbone `simple_cnn`" in shown("Part 1: multi-label classification")
    assert images("Part 1: multi-label classification") == 4  # curves, refit curves, per class, calibration
    assert images("Part 2: semantic segmentation, and how both heads decide together") == 7
    attack = shown("Part 3: an adversarial attack on this run's own models")
    assert "| model | attack | epsilon | defence | success |" in attack and images("Part 3: an adversarial attack on this run's own models") == 3
    experiments = shown("Experiments run before this notebook")
    assert "`resnet`" in experiments and "`baseline`" in experiments and "classifier.backbone = " in experiments
    assert "| choice | decided by |" in shown("Part 4: findings")
    # The notes stand at their places, the note's image travels as an attachment.
    texts = ["".join(cell["source"]) for cell in notebook["cells"]]

    def first(prefix: str) -> int:
        return next(index for index, text in enumerate(texts) if text.startswith(prefix))

    assert first("INTRODUCTION-NOTE") < first("## Setup")
    assert first("## Part 3") < first("ADVERSARIAL-NOTE") < first("## Experiments")
    assert notebook["cells"][first("ADVERSARIAL-NOTE")]["attachments"]["sketch.png"]["image/png"]

    # The same run and data, `submit` on Kaggle's stack here: byte for byte the notebook's submission.
    local = shutil.copytree(config.run_dir, tmp_path / "local" / "tiny")
    for stale in ("test_predictions.npz", "submission.csv"):
        (local / stale).unlink()
    subprocess.run([str(build_stack_environment()), "-m", "voc_pipeline", "--log-level", "WARNING", "run", "--until",
                    "submit", "--profile", str(local / "config.toml"), "--runs-dir", str(local.parent), "--run", "tiny",
                    "--data", str(data), "--set", f'submit.output_dir="{tmp_path / "local-output"}"'], check=True)
    assert result["submission"].read_bytes() == (local / "submission.csv").read_bytes()


def sections_of(mode: str) -> list[str]:
    return list(notebook_sections(notebook_from_percent(KERNEL_SOURCE.read_text(), mode=mode)))


def test_the_notebook_that_trains_trains_and_reports_and_the_training_kernel_only_trains():
    """The modes the test above does not execute: their sections, and what their cells run."""
    assert sections_of("full") == ["Setup: the package and the ImageNet weights", "The data",
                                   "Training both heads, and the time it takes", "Part 1: multi-label classification",
                                   "Part 2: semantic segmentation, and how both heads decide together",
                                   "Part 3: an adversarial attack on this run's own models", "Part 4: findings",
                                   "The submission"]
    assert sections_of("training") == ["Setup: the package and the ImageNet weights", "Training up to the refit"]
    full = "".join("".join(cell["source"]) for cell in notebook_from_percent(KERNEL_SOURCE.read_text())["cells"])
    assert '"run", "--until", "evaluate"' in full and "install-run" not in full and "--no-training" not in full
    training = "".join("".join(cell["source"]) for cell in
                       notebook_from_percent(KERNEL_SOURCE.read_text(), mode="training")["cells"])
    assert '"run", "--until", "refit"' in training and '"kernel", "pack-run"' in training
    assert "report_parts.classification_part" not in training
