"""Loading the competition layout: the loader's round trip and its errors, where the data root is found, and
the stratified splits."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.data.competition import (
    DataError,
    find_data_root,
    labels_from_mask,
    load_competition_data,
    load_split,
)
from voc_pipeline.data.splits import load_splits, make_splits, positions_of, save_splits


def test_demo_data_round_trips_through_the_loader(demo_root):
    train, test = load_competition_data(demo_root, show_progress=False)
    assert len(train) == 24 and len(test) == 8
    assert train.class_names == CLASS_NAMES and train.labels.shape == (24, 20) and train.labels.dtype == np.int8
    assert (test.labels == -1).all() and test.masks is None
    for image, mask, labels in zip(train.images, train.masks, train.labels):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        np.testing.assert_array_equal(labels_from_mask(mask), labels)
    assert len({image.shape for image in train.images}) > 1, "demo image sizes should vary"


def test_subset_selects_by_position(demo_root):
    train = load_split(demo_root, "train", show_progress=False)
    part = train.subset(np.array([3, 1]))
    assert part.ids.tolist() == [3, 1] and part.images[0] is train.images[3] and part.masks[1] is train.masks[1]


def break_csv(root, edit):
    path = root / "train" / "train_set.csv"
    frame = pd.read_csv(path)
    edit(frame).to_csv(path, index=False)


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda root: shutil.rmtree(root / "train"), r"train is missing"),
        (lambda root: (root / "train" / "train_set.csv").unlink(), r"train_set.csv is missing"),
        (lambda root: break_csv(root, lambda f: f.drop(columns=["cow"])), r"columns must be Id then the 20 classes"),
        (lambda root: break_csv(root, lambda f: f[["Id", *reversed(CLASS_NAMES)]]), r"columns must be"),
        (lambda root: break_csv(root, lambda f: f.assign(cat=f["cat"].astype(float).where(f.index != 2))), r"row 4 has an empty or NaN"),
        (lambda root: break_csv(root, lambda f: f.assign(dog=f["dog"].where(f.index != 1, 2))), r"Id 1, class dog: value 2"),
        (lambda root: break_csv(root, lambda f: f.assign(Id=0)), r"unique integers"),
        (lambda root: (root / "train" / "img" / "train_5.npy").unlink(), r"1 image arrays .* missing, first: .*train_5.npy"),
        (lambda root: (root / "train" / "seg" / "train_6.npy").unlink(), r"train_6.npy is missing"),
        (lambda root: np.save(root / "train" / "img" / "train_2.npy", np.zeros((8, 8, 3), np.float32)),
         r"train_2.npy: expected a uint8 H x W x 3 image, got dtype float32"),
        (lambda root: np.save(root / "train" / "img" / "train_2.npy", np.zeros((8, 8), np.uint8)),
         r"train_2.npy: .* shape \(8, 8\)"),
        (lambda root: np.save(root / "train" / "seg" / "train_3.npy", np.zeros((5, 5), np.uint8)),
         r"train_3.npy: mask shape \(5, 5\) differs"),
        (lambda root: np.save(root / "train" / "seg" / "train_3.npy",
                              np.full(np.load(root / "train" / "seg" / "train_3.npy").shape, 30, np.uint8)),
         r"train_3.npy: mask values \[30\] are outside"),
        (lambda root: np.save(root / "train" / "seg" / "train_3.npy",
                              np.zeros(np.load(root / "train" / "seg" / "train_3.npy").shape, np.float64)),
         r"train_3.npy: expected an integer H x W label map, got dtype float64"),
        (lambda root: np.save(root / "train" / "img" / "train_4.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
         r"train_4.npy holds an object array, which cannot be loaded without pickle"),
        (lambda root: (root / "train" / "img" / "train_4.npy").write_bytes(
            (root / "train" / "img" / "train_4.npy").read_bytes()[:100]), r"train_4.npy is not a valid .npy"),
    ],
)
def test_loader_errors_name_the_file_and_the_problem(data, breaker, message):
    breaker(data)
    with pytest.raises(DataError, match=message):
        load_split(data, "train", show_progress=False)


def test_test_split_accepts_minus_one_labels_and_refuses_other_values(data):
    path = data / "test" / "test_set.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "cat"] = 5
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"Id 0, class cat: value 5 is not one of \(-1, 0, 1\)"):
        load_split(data, "test", show_progress=False)


def test_void_is_accepted_and_label_disagreement_is_a_warning(data, caplog):
    mask_path = data / "train" / "seg" / "train_0.npy"
    mask = np.load(mask_path)
    mask[0, :] = 255
    np.save(mask_path, mask)
    break_csv(data, lambda frame: frame.assign(bottle=frame["bottle"].where(frame.index != 1, 1 - frame["bottle"])))
    with caplog.at_level(logging.INFO):
        train = load_split(data, "train", show_progress=False)
    assert train.masks[0][0, 0] == 255
    assert "1 masks keep void (255) pixels" in caplog.text
    assert "1 images have CSV labels that disagree with their masks (ids [1])" in caplog.text


def test_find_data_root_prefers_explicit_then_kaggle_then_local(tmp_path, demo_root, monkeypatch):
    assert find_data_root(demo_root) == demo_root
    with pytest.raises(DataError, match="does not exist"):
        find_data_root(tmp_path / "nowhere")
    for mount in ("old/slug", "new/competitions/slug"):
        kaggle_input = tmp_path / mount.split("/")[0]
        competition = tmp_path / mount
        (competition / "train").mkdir(parents=True)
        (competition / "train" / "train_set.csv").write_text("Id\n")
        assert find_data_root(None, kaggle_input=kaggle_input) == competition
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="pass --data PATH"):
        find_data_root(None, kaggle_input=tmp_path / "absent")
    shutil.copytree(demo_root, tmp_path / "data")
    assert find_data_root(None, kaggle_input=tmp_path / "absent").resolve() == (tmp_path / "data").resolve()


def test_splits_are_stratified_deterministic_and_disjoint(demo_root, tmp_path):
    train = load_split(demo_root, "train", show_progress=False)
    first = make_splits(train.ids, train.labels, 0.25, 3, seed=5)
    again = make_splits(train.ids, train.labels, 0.25, 3, seed=5)
    other = make_splits(train.ids, train.labels, 0.25, 3, seed=6)
    np.testing.assert_array_equal(first.validation_ids, again.validation_ids)
    assert first.validation_ids.tolist() != other.validation_ids.tolist()
    assert set(first.train_ids).isdisjoint(first.validation_ids)
    assert sorted([*first.train_ids, *first.validation_ids]) == sorted(train.ids)
    assert sorted(np.concatenate(first.fold_validation_ids).tolist()) == sorted(train.ids.tolist())
    # The most frequent class (person) appears in both parts of the holdout split.
    person = CLASS_NAMES.index("person")
    labels_of = lambda ids: train.labels[positions_of(train.ids, ids)]  # noqa: E731
    assert labels_of(first.train_ids)[:, person].sum() > 0 and labels_of(first.validation_ids)[:, person].sum() > 0
    save_splits(first, tmp_path / "splits.json")
    loaded = load_splits(tmp_path / "splits.json")
    np.testing.assert_array_equal(loaded.train_ids, first.train_ids)
    assert [fold.tolist() for fold in loaded.fold_validation_ids] == [fold.tolist() for fold in first.fold_validation_ids]


def test_positions_of_names_unknown_ids():
    with pytest.raises(ValueError, match=r"\[9\]"):
        positions_of(np.array([1, 2, 3]), np.array([2, 9]))


def test_a_disagreement_between_csv_and_masks_is_warned_about_once_per_command(demo_root, tmp_path, caplog):

    from voc_pipeline.data.competition import load_competition_data, summarize

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    frame = pd.read_csv(root / "train" / "train_set.csv", index_col="Id")
    frame.iloc[0] = 1 - frame.iloc[0]
    frame.to_csv(root / "train" / "train_set.csv")
    with caplog.at_level(logging.WARNING):
        train, _ = load_competition_data(root, show_progress=False)
        summary = summarize(train)
    assert summary["label_mask_disagreements"] == 1
    assert sum("disagree with their masks" in record.getMessage() for record in caplog.records) == 1
