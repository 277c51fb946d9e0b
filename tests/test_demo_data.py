import numpy as np
import pytest

from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.data.competition import load_competition_data
from voc_pipeline.data.demo import class_appearance, write_demo_data
from voc_pipeline.data.submission import score_submission, validate_submission


def test_every_class_has_its_own_appearance():
    appearances = {class_appearance(index) for index in range(NUM_CLASSES)}
    assert len(appearances) == NUM_CLASSES
    assert len({(shape, colour) for shape, colour, _ in appearances}) == NUM_CLASSES


def test_demo_data_is_deterministic_by_seed(tmp_path):
    first = write_demo_data(tmp_path / "a", num_train=6, num_test=3, seed=1)
    again = write_demo_data(tmp_path / "b", num_train=6, num_test=3, seed=1)
    other = write_demo_data(tmp_path / "c", num_train=6, num_test=3, seed=2)
    for name in ("train/img/train_4.npy", "train/seg/train_4.npy", "test/img/test_2.npy", "solution.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "train/img/train_4.npy").read_bytes() != (other / "train/img/train_4.npy").read_bytes()


def test_demo_images_hold_objects_whose_colour_matches_their_class(demo_root):
    train, _ = load_competition_data(demo_root, show_progress=False)
    assert train.labels.sum(1).min() >= 1 and train.labels.sum(1).max() <= 3
    for image, mask in zip(train.images, train.masks):
        for class_number in np.unique(mask[mask > 0]):
            _, colour, striped = class_appearance(int(class_number) - 1)
            pixels = image[mask == class_number].astype(np.float64)
            dominant = int(np.argmax(colour))
            # The class colour's dominant channel stays the brightest on average, stripes or not.
            assert pixels.mean(0).argmax() == dominant


def test_demo_solution_is_valid_and_scores_itself_perfectly(demo_root):
    assert validate_submission(demo_root / "solution.csv", demo_root).valid
    assert score_submission(demo_root / "solution.csv", demo_root / "solution.csv", demo_root)["score"] == 1.0


def test_demo_refuses_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="at least 2 training"):
        write_demo_data(tmp_path / "x", num_train=1, num_test=1)
