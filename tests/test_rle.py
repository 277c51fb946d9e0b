import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voc_pipeline.core.rle import RleError, encode_flags, encode_label_map, parse_runs, rle_decode, rle_encode


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([0, 1, 1, 0, 1], "2 2 5 1"),
        ([1, 1, 1], "1 3"),
        ([0, 0], ""),
        ([], ""),
        ([1], "1 1"),
        ([1, 0, 1, 0, 1], "1 1 3 1 5 1"),
        ([0, 0, 0, 1], "4 1"),
        ([True, False, True, True], "1 1 3 2"),
    ],
)
def test_encode_hand_computed(vector, expected):
    assert rle_encode(np.array(vector)) == expected


def test_encode_flattens_in_c_order():
    array = np.array([[0, 1], [1, 1]])
    # C order reads rows first: 0 1 1 1 -> one run from position 2.
    assert rle_encode(array) == "2 3"
    # Row-major and column-major reads differ here: 1 1 0 0 versus 1 0 1 0.
    asymmetric = np.array([[1, 1], [0, 0]])
    assert rle_encode(asymmetric) == "1 2"
    assert rle_encode(np.asfortranarray(asymmetric)) == "1 2"


def test_encode_rejects_non_binary_values():
    with pytest.raises(RleError, match=r"\[2\]"):
        rle_encode(np.array([0, 1, 2]))


@pytest.mark.parametrize(
    ("text", "shape", "expected"),
    [("2 2 5 1", 5, [0, 1, 1, 0, 1]), ("1 3", 3, [1, 1, 1]), ("", 2, [0, 0]), ("4 1", 4, [0, 0, 0, 1])],
)
def test_decode_hand_computed(text, shape, expected):
    decoded = rle_decode(text, shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("0 2", "below 1"),
        ("1 0", "length 0 is below 1"),
        ("1 3 2 2", "overlaps"),
        ("5 1 1 1", "overlaps or precedes"),
        ("1 a", "'a' is not"),
        ("1 -2", "'-2' is not"),
        ("1  2", "single spaces"),
        (" 1 2", "single spaces"),
        ("1\t2", "single spaces"),
        ("4 3", "outside a vector of length 5"),
    ],
)
def test_parse_runs_rejects_malformed_text(text, message):
    with pytest.raises(RleError, match=message):
        parse_runs(text, size=5)


def test_parse_runs_accepts_run_ending_at_last_position():
    starts, lengths = parse_runs("4 2", size=5)
    assert starts.tolist() == [4] and lengths.tolist() == [2]


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(0, 6), st.integers(0, 9)), elements=st.integers(0, 1)))
def test_decode_inverts_encode(array):
    np.testing.assert_array_equal(rle_decode(rle_encode(array), array.shape), array)


def stacked_reference(label_map, num_classes=20):
    return rle_encode(np.stack([label_map == class_number for class_number in range(1, num_classes + 1)]))


def test_label_map_stack_is_class_then_rows_then_columns():
    label_map = np.zeros((2, 3), dtype=np.uint8)
    label_map[0, 1] = 1  # plane 0, flat position 1 -> start 2
    label_map[1, 2] = 3  # plane 2 (offset 2 * 6 = 12), flat position 5 -> start 18
    label_map[1, 0] = 20  # plane 19 (offset 114), flat position 3 -> start 118
    assert encode_label_map(label_map) == "2 1 18 1 118 1"
    decoded = rle_decode(encode_label_map(label_map), (20, 2, 3))
    assert decoded[0, 0, 1] == 1 and decoded[2, 1, 2] == 1 and decoded[19, 1, 0] == 1
    assert decoded.sum() == 3


def test_label_map_runs_merge_across_plane_boundary():
    # The last pixel of plane 1 (class 1) and the first pixel of plane 2 (class 2) are adjacent in the stack.
    label_map = np.array([[2, 0], [0, 1]], dtype=np.uint8)
    assert encode_label_map(label_map) == stacked_reference(label_map) == "4 2"


def test_label_map_rejects_values_outside_classes():
    with pytest.raises(RleError, match=r"\[21\]"):
        encode_label_map(np.array([[0, 21]]))
    with pytest.raises(RleError, match="H x W"):
        encode_label_map(np.zeros((2, 2, 1), dtype=np.uint8))


@settings(max_examples=300, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.integers(0, 20)))
def test_label_map_encoding_equals_stacked_masks(label_map):
    assert encode_label_map(label_map) == stacked_reference(label_map)


@settings(max_examples=100, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.sampled_from([0, 1, 2, 3])))
def test_label_map_encoding_with_few_classes_merges_like_the_stack(label_map):
    assert encode_label_map(label_map, num_classes=3) == stacked_reference(label_map, num_classes=3)


def test_encode_flags_is_class_order():
    flags = np.zeros(20, dtype=np.int64)
    flags[[0, 14, 19]] = 1
    assert encode_flags(flags) == "1 1 15 1 20 1"
