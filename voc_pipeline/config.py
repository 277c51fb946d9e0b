"""One typed, frozen configuration: dataclass defaults, then a TOML profile, then `--set` overrides.

The defaults are the baseline. A profile (`voc_pipeline/profiles/<name>.toml`) only overrides, and
`--set section.key=value` comes last. An unknown key or a value of the wrong type is an error that
names the key. Each stage saves the resolved configuration into its run folder before doing work.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.errors import ConfigError

PROFILES_DIR = Path(__file__).parent / "profiles"
# A run is a folder under runs_dir: a plain name, so that `--run ..` or `--run a/b` cannot write elsewhere.
RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@dataclass(frozen=True)
class DataConfig:
    # Empty means: find the folder holding train/train_set.csv under /kaggle/input, else ./data.
    root: str = ""
    # Share of the labelled images held out for early stopping, threshold tuning and reports.
    validation_fraction: float = 0.2
    # Folds for optional K-fold training and out-of-fold probabilities.
    num_folds: int = 5


@dataclass(frozen=True)
class ClassifierConfig:
    # mobilenet_v2 is the product's default; vgg16, resnet50v2, simple_cnn are baselines; efficientnetv2_s
    # is the stronger option for a GPU budget.
    backbone: str = "mobilenet_v2"
    # Square input side; MobileNetV2's ImageNet weights exist for 96, 128, 160, 192 and 224.
    image_size: int = 224
    # "imagenet", "none", or the path of the backbone's no-top weights file (offline Kaggle kernels).
    weights: str = "imagenet"
    # MobileNet alpha; smaller is faster and weaker.
    width_multiplier: float = 1.0
    # Dropout before the logits: the head overfits 600 images quickly otherwise.
    dropout: float = 0.2
    # bce, focal or asymmetric (down-weights the 19-to-1 negatives).
    loss: str = "bce"
    batch_size: int = 32
    # Epochs with the backbone frozen (pretrained weights), to fit the new head before touching the backbone.
    head_epochs: int = 5
    # Epochs fine-tuning the top of the backbone at a lower rate.
    finetune_epochs: int = 25
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    # Linear warm-up at the start of fine-tuning, so the unfrozen layers are not shocked by the head's gradients.
    warmup_epochs: int = 1
    # Share of the backbone's layers (from the top) that fine-tuning unfreezes; batch norm stays frozen.
    unfreeze_fraction: float = 0.5
    # AdamW weight decay.
    weight_decay: float = 1e-4
    # Epochs without validation improvement before stopping.
    patience: int = 6
    # Train one model per fold of data.num_folds and tune on out-of-fold probabilities (ensembled at prediction).
    kfold: bool = False
    # Average the probabilities of each image and its mirror image at prediction.
    flip_tta: bool = True


@dataclass(frozen=True)
class SegmenterConfig:
    # mobilenet (MobileNet v1, the product's default) or mobilenet_v2.
    backbone: str = "mobilenet"
    # Square input side; images are letterboxed into it. Must be divisible by the output stride.
    image_size: int = 320
    # Input size over ASPP's feature size: 16 (faster) or 8 (finer, heavier).
    output_stride: int = 16
    # "imagenet", "none", or the path of the backbone's no-top weights file.
    weights: str = "imagenet"
    # MobileNet alpha.
    width_multiplier: float = 1.0
    # Channels of the ASPP branches and of the decoder's 3x3 convolutions.
    aspp_filters: int = 256
    decoder_filters: int = 256
    # Small batches; batch norm in the pretrained backbone stays frozen, the head's learns from many pixels.
    batch_size: int = 8
    head_epochs: int = 5
    finetune_epochs: int = 30
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 2e-4
    warmup_epochs: int = 1
    # Share of backbone layers (from the top) unfrozen for fine-tuning; dense prediction benefits from all.
    unfreeze_fraction: float = 1.0
    weight_decay: float = 1e-4
    # Weight of the soft Dice term added to the cross-entropy (0 = cross-entropy only).
    dice_weight: float = 0.0
    # Random scale range of the training augmentation, relative to the letterboxed size.
    scale_range: tuple[float, ...] = (0.5, 1.5)
    patience: int = 8
    # Average the class probabilities of each image and its mirror image at prediction.
    flip_tta: bool = True
    # Validation images drawn as image / truth / prediction panels.
    overlay_images: int = 6


@dataclass(frozen=True)
class ThresholdConfig:
    # Step of the candidate threshold grid.
    grid_step: float = 0.01
    # Coordinate-ascent passes over the classes (it stops early when a pass changes nothing).
    rounds: int = 3


@dataclass(frozen=True)
class JointConfig:
    # Mask-area shares tried by the joint rule that adds a class the segmenter paints (chosen on validation).
    area_grid: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)


@dataclass(frozen=True)
class PredictConfig:
    # Images per prediction batch; memory stays bounded by one batch whatever the number of test images.
    batch_size: int = 16


@dataclass(frozen=True)
class SubmitConfig:
    # Where the final submission.csv is copied (Kaggle: /kaggle/working).
    output_dir: str = "submissions"
    # Delete everything in output_dir except submission.csv and the `keep` patterns (Kaggle's 500-file limit).
    prune_output: bool = False
    # Glob patterns of output_dir entries kept by pruning.
    keep: tuple[str, ...] = ("runs", "*.md", "*.png")


@dataclass(frozen=True)
class AttackConfig:
    # L-infinity budgets in pixel levels (0..255), smallest to largest.
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    # Iterations of PGD (FGSM is one step).
    pgd_steps: int = 10
    # Validation images attacked (one batch).
    num_images: int = 32
    # The class targeted attacks make appear (classifier) or paint everywhere (segmenter).
    target_class: str = "cat"
    # Bits per channel kept by the bit-depth-reduction defence.
    defence_bits: int = 4
    # Images drawn in the example panels.
    examples: int = 4


@dataclass(frozen=True)
class Config:
    # One seed for splits, augmentation and weight initialisation, so runs repeat.
    seed: int = 0
    # Name of the run folder under runs_dir; every stage reads and writes there.
    run_name: str = "default"
    # Parent folder of all run folders.
    runs_dir: str = "runs"
    # Mixed float16 precision: auto (on GPU only), on or off.
    mixed_precision: str = "auto"
    # TensorFlow op determinism: the same seed, machine and data give the same bytes out. Off on GPUs, where
    # some kernels (depthwise convolution gradients, segment reductions) have no deterministic version.
    deterministic: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)

    @property
    def run_dir(self) -> Path:
        """The folder this run's stages hand their files through."""
        return Path(self.runs_dir) / self.run_name


def available_profiles() -> list[str]:
    """Names of the TOML profiles shipped with the package."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.toml"))


def load_profile(name: str) -> dict[str, Any]:
    """Read a shipped profile by name, or a TOML file by path."""
    path = Path(name)
    if path.suffix != ".toml":
        path = PROFILES_DIR / f"{name}.toml"
        if not path.exists():
            raise ConfigError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")
    if not path.exists():
        raise ConfigError(f"profile file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"profile {path} is not valid TOML: {error}") from None


def _coerce(key: str, value: Any, expected: Any) -> Any:
    """Check `value` against the field type `expected`; lists become tuples, ints may become floats."""
    origin = typing.get_origin(expected)
    if origin is tuple:
        item_type = typing.get_args(expected)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(f"{key}[{index}]", item, item_type) for index, item in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError("; ".join(errors))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_overrides(config: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of a config dataclass with nested `overrides` applied, checking keys and types."""
    hints = typing.get_type_hints(type(config))
    known = {item.name for item in dataclasses.fields(config)}
    changes = {}
    for name, value in overrides.items():
        key = f"{prefix}{name}"
        if name not in known:
            raise ConfigError(f"unknown configuration key {key!r}; known keys here: {', '.join(sorted(known))}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: is a section; set its keys as {key}.<name>=value")
            changes[name] = apply_overrides(current, value, prefix=f"{key}.")
        else:
            changes[name] = _coerce(key, value, hints[name])
    return dataclasses.replace(config, **changes)


def parse_assignment(assignment: str) -> dict[str, Any]:
    """Turn `section.key=value` into a nested override dict; the value is read as TOML, else a string."""
    key, separator, raw_value = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    try:
        value = tomllib.loads(f"value = {raw_value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw_value.strip()
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def build_config(profile: str | None = None, assignments: list[str] | tuple[str, ...] = (),
                 base: Config | None = None) -> Config:
    """Resolve the configuration: defaults (or `base`), then the profile, then each assignment in order."""
    config = base or Config()
    if profile:
        config = apply_overrides(config, load_profile(profile))
    for assignment in assignments:
        config = apply_overrides(config, parse_assignment(assignment))
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    """Range checks that types alone cannot express."""
    if not 0.0 < config.data.validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction must be between 0 and 1, got {config.data.validation_fraction}")
    if config.data.num_folds < 2:
        raise ConfigError(f"data.num_folds must be at least 2, got {config.data.num_folds}")
    if config.mixed_precision not in ("auto", "on", "off"):
        raise ConfigError(f"mixed_precision must be auto, on or off, got {config.mixed_precision!r}")
    if not 0.0 < config.thresholds.grid_step < 0.5:
        raise ConfigError(f"thresholds.grid_step must be between 0 and 0.5, got {config.thresholds.grid_step}")
    if not 0.0 <= config.classifier.unfreeze_fraction <= 1.0:
        raise ConfigError(f"classifier.unfreeze_fraction must be between 0 and 1, got {config.classifier.unfreeze_fraction}")
    for section in ("classifier", "segmenter"):
        for key in ("image_size", "batch_size"):
            if getattr(getattr(config, section), key) < 1:
                raise ConfigError(f"{section}.{key} must be positive, got {getattr(getattr(config, section), key)}")
    segmenter = config.segmenter
    if segmenter.image_size % segmenter.output_stride:
        raise ConfigError(f"segmenter.image_size {segmenter.image_size} is not divisible by segmenter.output_stride "
                          f"{segmenter.output_stride}")
    if len(segmenter.scale_range) != 2 or not 0 < segmenter.scale_range[0] <= segmenter.scale_range[1]:
        raise ConfigError(f"segmenter.scale_range must be [low, high] with 0 < low <= high, got {list(segmenter.scale_range)}")
    attack = config.attack
    if any(not 0 <= epsilon <= 255 for epsilon in attack.epsilons) or not attack.epsilons:
        raise ConfigError(f"attack.epsilons must be pixel levels between 0 and 255, got {list(attack.epsilons)}")
    if attack.target_class not in CLASS_NAMES:
        raise ConfigError(f"attack.target_class {attack.target_class!r} is not a class; expected one of: {', '.join(CLASS_NAMES)}")
    if not 1 <= attack.defence_bits <= 8:
        raise ConfigError(f"attack.defence_bits must be between 1 and 8, got {attack.defence_bits}")
    if not re.fullmatch(RUN_NAME_PATTERN, config.run_name):
        raise ConfigError(f"run name {config.run_name!r} is not a plain folder name: use letters, digits, '.', '_' "
                          f"and '-', starting with a letter or digit (no path separators, no '..')")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The configuration as nested plain dicts, tuples as lists (TOML- and JSON-ready)."""
    result = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            result[item.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            result[item.name] = list(value)
        else:
            result[item.name] = value
    return result


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: Config) -> str:
    """Serialise the resolved configuration as TOML that `load_profile` reads back to the same config."""
    plain = config_to_dict(config)
    lines = [f"{key} = {_toml_value(value)}" for key, value in plain.items() if not isinstance(value, dict)]
    for section, values in plain.items():
        if isinstance(values, dict):
            lines.append("")
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None)
    return "\n".join(lines) + "\n"
