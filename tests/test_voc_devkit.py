import numpy as np
import pandas as pd
import pytest
from PIL import Image

from voc_pipeline.data.competition import labels_from_mask, load_competition_data
from voc_pipeline.data.submission import score_submission, validate_submission
from voc_pipeline.data.voc_devkit import convert_devkit
from voc_pipeline.errors import DataError, OutputExistsError

VOC_PALETTE = [value for index in range(256) for value in ((index * 37) % 256, (index * 91) % 256, (index * 13) % 256)]


def write_pair(devkit, voc_id, mask, rng):
    height, width = mask.shape
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(devkit / "JPEGImages" / f"{voc_id}.jpg")
    palette_image = Image.fromarray(mask, mode="P")
    palette_image.putpalette(VOC_PALETTE)
    palette_image.save(devkit / "SegmentationClass" / f"{voc_id}.png")


@pytest.fixture
def tiny_devkit(tmp_path):
    """A VOCdevkit/VOC2012 folder with six pairs: classes 1..6, a void border on each object."""
    devkit = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (devkit / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_00000{index}" for index in range(6)]
    for index, voc_id in enumerate(ids):
        mask = np.zeros((10 + index, 12), dtype=np.uint8)
        mask[2:6, 3:8] = 255
        mask[3:5, 4:7] = index + 1
        write_pair(devkit, voc_id, mask, rng)
    (devkit / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (devkit / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    return devkit


def test_conversion_writes_the_competition_layout(tiny_devkit, tmp_path):
    output = convert_devkit(tiny_devkit.parent, tmp_path / "converted", test_fraction=0.34)
    train, test = load_competition_data(output, show_progress=False)
    assert len(train) + len(test) == 6 and len(test) >= 1
    id_map = pd.read_csv(output / "voc_ids.csv")
    assert sorted(id_map["voc_id"]) == [f"2007_00000{index}" for index in range(6)]
    train_voc_ids = id_map[id_map["split"] == "train"].set_index("Id")["voc_id"]
    for image_id, image, mask, labels in zip(train.ids, train.images, train.masks, train.labels):
        index = int(train_voc_ids[image_id][-1])
        assert image.shape == (10 + index, 12, 3) and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, index + 1}, "void must become background"
        assert labels.tolist() == labels_from_mask(mask).tolist() and labels.sum() == 1 and labels[index] == 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_a_conversion_without_a_test_split_is_refused(tiny_devkit, tmp_path, fraction):
    with pytest.raises(DataError, match="--test-fraction must be between 0 and 1"):
        convert_devkit(tiny_devkit, tmp_path / "converted", test_fraction=fraction)
    assert not (tmp_path / "converted").exists()


def test_a_split_that_leaves_no_test_image_is_refused(tiny_devkit, tmp_path):
    # Six images of six different classes: stratification at 0.1 holds out none of them.
    with pytest.raises(DataError, match="leaves 6 train and 0 test images"):
        convert_devkit(tiny_devkit, tmp_path / "converted", test_fraction=0.1)


def test_keep_void_keeps_the_border(tiny_devkit, tmp_path):
    output = convert_devkit(tiny_devkit, tmp_path / "converted", test_fraction=0.34, keep_void=True)
    train, _ = load_competition_data(output, show_progress=False)
    assert (train.masks[0] == 255).any()
    assert train.labels[0].sum() == 1


def test_test_fraction_holds_out_images_with_a_solution(tiny_devkit, tmp_path):
    output = convert_devkit(tiny_devkit, tmp_path / "converted", test_fraction=0.34, keep_void=True)
    train, test = load_competition_data(output, show_progress=False)
    # Every class here has a single image, so stratification can only approximate the fraction.
    assert len(test) in (2, 3) and len(train) + len(test) == 6 and (test.labels == -1).all()
    report = validate_submission(output / "solution.csv", output)
    assert report.valid, report.problems
    # The solution scores itself perfectly, and void borders count as background in it.
    assert score_submission(output / "solution.csv", output / "solution.csv", output)["score"] == 1.0
    rows = pd.read_csv(output / "solution.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 2 * len(test)


def test_ids_file_selects_images(tiny_devkit, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("2007_000002\n2007_000005\n")
    output = convert_devkit(tiny_devkit, tmp_path / "converted", ids_file=ids_file, test_fraction=0.5)
    assert sorted(pd.read_csv(output / "voc_ids.csv")["voc_id"]) == ["2007_000002", "2007_000005"]
    train, test = load_competition_data(output, show_progress=False)
    assert len(train) == len(test) == 1 and train.labels.argmax(1).tolist()[0] in (2, 5)


def test_conversion_errors_name_the_file(tiny_devkit, tmp_path):
    (tiny_devkit / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(DataError, match="2007_000003.jpg is missing"):
        convert_devkit(tiny_devkit, tmp_path / "converted")
    assert not (tmp_path / "converted").exists(), "nothing half-written is left behind"
    Image.new("RGB", (12, 13)).save(tiny_devkit / "JPEGImages" / "2007_000003.jpg")
    Image.new("RGB", (12, 13)).save(tiny_devkit / "SegmentationClass" / "2007_000003.png")
    with pytest.raises(DataError, match="2007_000003.png: expected a palette"):
        convert_devkit(tiny_devkit, tmp_path / "converted")
    with pytest.raises(DataError, match="no JPEGImages"):
        convert_devkit(tiny_devkit / "ImageSets", tmp_path / "x")


def test_existing_output_is_not_overwritten_without_force(tiny_devkit, tmp_path):
    output = convert_devkit(tiny_devkit, tmp_path / "converted", test_fraction=0.34)
    with pytest.raises(OutputExistsError, match="--force"):
        convert_devkit(tiny_devkit, output, test_fraction=0.34)
    convert_devkit(tiny_devkit, output, test_fraction=0.34, overwrite=True)


@pytest.mark.slow
def test_real_voc_sample_converts_and_loads(voc_sample, tmp_path):
    output = convert_devkit(voc_sample, tmp_path / "voc", test_fraction=0.2, seed=0)
    train, test = load_competition_data(output, show_progress=False)
    assert len(train) + len(test) == 437 and 80 <= len(test) <= 95
    assert all(image.shape[2] == 3 and max(image.shape[:2]) <= 500 for image in train.images)
    assert all(set(np.unique(mask)) <= set(range(21)) for mask in train.masks), "void removed"
    assert train.labels.sum(1).min() >= 1
    assert validate_submission(output / "solution.csv", output).valid
