"""The competition's fixed class list and label values, in one place."""

from voc_pipeline.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)

# Label 0 in a mask is background; label k (1..20) is CLASS_NAMES[k - 1].
BACKGROUND_LABEL = 0

# The VOC devkit marks object borders as 255 ("void"). The competition's packaging turned void into
# background; the segmenter's loss ignores this value where the data keeps it.
VOID_LABEL = 255

# Images per class in the competition's 749 training images, in class order (COMPETITION.md).
COMPETITION_TRAIN_CLASS_COUNTS: tuple[int, ...] = (
    47, 39, 55, 48, 42, 38, 63, 45, 69, 30, 48, 43, 42, 47, 207, 43, 27, 44, 40, 51,
)


def class_index(name: str) -> int:
    """Return the 0-based index of a class name, or raise a ConfigError listing the valid names."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ConfigError(
            f"unknown class {name!r}; expected one of: {', '.join(CLASS_NAMES)}"
        ) from None
