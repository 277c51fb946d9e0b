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

from voc_pipeline.backbone_table import CLASSIFIER_BACKBONES, SEGMENTER_BACKBONES, backbone
from voc_pipeline.choices import CLASSIFIER_LOSSES, DEFENCE_BITS, MIXED_PRECISION_MODES, OUTPUT_STRIDES, PIXEL_LEVELS
from voc_pipeline.config_view import unwrapped
from voc_pipeline.core.classes import CLASS_NAMES
from voc_pipeline.errors import ConfigError, VocPipelineError

PROFILES_DIR = Path(__file__).parent / "profiles"
# A run is a folder under runs_dir: a plain name, so that `--run ..` or `--run a/b` cannot write elsewhere.
RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (each item, for a list); None leaves that side open."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_inclusive)

    def describe(self) -> str:
        def number(value: float) -> str:
            return str(int(value)) if float(value).is_integer() else f"{value:g}"

        low = None if self.low is None else number(self.low)
        high = None if self.high is None else number(self.high)
        if high is None:
            return f"{'at least' if self.low_inclusive else 'more than'} {low}"
        if low is None:
            return f"{'at most' if self.high_inclusive else 'less than'} {high}"
        return f"{'[' if self.low_inclusive else '('}{low}, {high}{']' if self.high_inclusive else ')'}"


def bounded(default=dataclasses.MISSING, low: float | None = None, high: float | None = None, *, low_inclusive: bool = True,
            high_inclusive: bool = True):
    """A numeric field with the range of values it accepts, checked when the configuration is built (no
    default: each configuration that inherits the field gives its own, with `default_for`)."""
    return field(default=default, metadata={"range": Range(low, high, low_inclusive, high_inclusive)})


def one_of(default, *choices):
    """A field that accepts only the listed values."""
    return field(default=default, metadata={"choices": choices})


FRACTION = {"low": 0, "high": 1}
# Epochs, images and filters beyond these are typing mistakes, not experiments.
MANY = 100_000


@dataclass(frozen=True)
class DataConfig:
    # Empty means: find the folder holding train/train_set.csv under /kaggle/input, else ./data.
    root: str = ""
    # Share of the labelled images held out for early stopping, threshold tuning and reports.
    validation_fraction: float = bounded(0.2, 0, 1, low_inclusive=False, high_inclusive=False)
    # Folds for optional K-fold training and out-of-fold probabilities.
    num_folds: int = bounded(5, 2, 100)


@dataclass(frozen=True, kw_only=True)
class TrainingSchedule:
    """The training recipe both heads share (voc_pipeline.models.training); its keys sit flat in the
    [classifier] and [segmenter] sections. Fields without a default here get one from each head."""

    # "imagenet", "none", or the path of the backbone's no-top weights file (offline Kaggle kernels); for a
    # keras-hub encoder (DINOv2, SegFormer), its preset's name (downloaded where there is internet) or folder.
    weights: str = "imagenet"
    # MobileNet alpha; smaller is faster and weaker.
    width_multiplier: float = bounded(1.0, 0, 4, low_inclusive=False)
    # Images per training step.
    batch_size: int = bounded(low=1, high=4096)
    # Epochs with the backbone frozen (pretrained weights), to fit the new head before touching the backbone.
    head_epochs: int = bounded(5, 0, MANY)
    # Epochs fine-tuning the backbone at a lower rate.
    finetune_epochs: int = bounded(low=0, high=MANY)
    # Peak learning rate of the head phase (and of the single phase from random weights).
    head_learning_rate: float = bounded(1e-3, 0, 10, low_inclusive=False)
    # Peak learning rate of fine-tuning: lower, so the pretrained features are adapted, not erased.
    finetune_learning_rate: float = bounded(low=0, high=10, low_inclusive=False)
    # Linear warm-up at the start of fine-tuning, so the unfrozen layers are not shocked by the head's gradients.
    warmup_epochs: int = bounded(1, 0, MANY)
    # Share of the backbone's layers (from the top) that fine-tuning unfreezes; batch norm stays frozen
    # (ConvNeXt's layer norm keeps no batch statistics and trains).
    unfreeze_fraction: float = bounded(**FRACTION)
    # Fine-tuning rate of each backbone stage over the stage above it (1.0: one rate for all; 0.7-0.9 keeps the
    # early, generic stages nearer ImageNet). Needs a backbone with stages (taps in the backbone table).
    layerwise_lr_decay: float = bounded(1.0, 0, 1, low_inclusive=False)
    # AdamW weight decay.
    weight_decay: float = bounded(1e-4, 0, 1)
    # Epochs without validation improvement before stopping.
    patience: int = bounded(low=1, high=MANY)
    # After tune, train the final model again on fit + validation images for the epochs validation chose, and
    # predict with it (stage refit; a K-fold classifier already uses every image and stays as it is).
    refit_all: bool = False
    # Keep the whole encoder frozen and train the head alone on its features, computed once per run for every
    # training image and its mirror image and cached (a DINOv2 encoder's head then trains in seconds an epoch).
    freeze_backbone: bool = False
    # Probability that a training image gets the objects of another training image pasted on it, at a random scale
    # and place (copy-paste, Ghiasi et al. 2021): the mask takes the pasted pixels, the flags the classes still
    # visible. 0 trains as before; validation images are never pasted nor pasted from.
    copy_paste: float = bounded(0.0, **FRACTION)


# The keys of a training section that only stage refit reads: changing them must not retrain the first models.
REFIT_KEYS = ("refit_all",)


def default_for(name: str, default):
    """A TrainingSchedule field with this head's default; its range stays the one declared in TrainingSchedule."""
    return field(default=default, metadata=TrainingSchedule.__dataclass_fields__[name].metadata)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(TrainingSchedule):
    # mobilenet_v2 is the product's default; vgg16, resnet50v2, simple_cnn are baselines; efficientnetv2_s
    # and convnext_tiny/small/base (the best public solution's choice) are the stronger options for a GPU budget;
    # dinov2_small/base (keras-hub, self-supervised) the strongest encoders, frozen with freeze_backbone.
    backbone: str = one_of("mobilenet_v2", *CLASSIFIER_BACKBONES)
    # Square input side; MobileNetV2's ImageNet weights exist for 96, 128, 160, 192 and 224.
    image_size: int = bounded(224, 32, 2048)
    # Dropout before the logits: the head overfits 600 images quickly otherwise.
    dropout: float = bounded(0.2, 0, 1, high_inclusive=False)
    # bce, focal or asymmetric (down-weights the 19-to-1 negatives).
    loss: str = one_of("bce", *CLASSIFIER_LOSSES)
    # A classifier's batch: 32 images of 224 px fit a T4 with room to spare.
    batch_size: int = default_for("batch_size", 32)
    # Fine-tuning epochs: the classifier converges in fewer than the segmenter.
    finetune_epochs: int = default_for("finetune_epochs", 25)
    finetune_learning_rate: float = default_for("finetune_learning_rate", 1e-4)
    # The top half: a classifier's low-level ImageNet features transfer as they are.
    unfreeze_fraction: float = default_for("unfreeze_fraction", 0.5)
    patience: int = default_for("patience", 6)
    # Train one model per fold of data.num_folds and tune on out-of-fold probabilities (ensembled at prediction).
    kfold: bool = False


@dataclass(frozen=True, kw_only=True)
class SegmenterConfig(TrainingSchedule):
    # mobilenet (MobileNet v1, the product's default), mobilenet_v2, another backbone the table
    # (voc_pipeline.backbone_table) gives taps for, dinov2_small/base or segformer_b0..b5 (keras-hub).
    backbone: str = one_of("mobilenet", *SEGMENTER_BACKBONES)
    # Square input side; images are letterboxed into it. Must be divisible by the output stride.
    image_size: int = bounded(320, 32, 2048)
    # Input size over ASPP's feature size: 16 (faster) or 8 (finer, heavier).
    output_stride: int = one_of(16, *OUTPUT_STRIDES)
    # Channels of the ASPP branches: the capacity of the context module.
    aspp_filters: int = bounded(256, 1, 4096)
    # Channels of the decoder's 3x3 convolutions.
    decoder_filters: int = bounded(256, 1, 4096)
    # Small batches; batch norm in the pretrained backbone stays frozen, the head's learns from many pixels.
    batch_size: int = default_for("batch_size", 8)
    finetune_epochs: int = default_for("finetune_epochs", 30)
    finetune_learning_rate: float = default_for("finetune_learning_rate", 2e-4)
    # Dense prediction benefits from adapting every layer.
    unfreeze_fraction: float = default_for("unfreeze_fraction", 1.0)
    patience: int = default_for("patience", 8)
    # Weight of the soft Dice term added to the cross-entropy (0 = cross-entropy only).
    dice_weight: float = bounded(0.0, 0, 100)
    # Weight of the class-presence term (0 = none): the binary cross-entropy of each image's classes pooled from
    # the pixel probabilities (core.presence) against the classes its mask holds.
    presence_weight: float = bounded(0.0, 0, 100)
    # Random scale range of the training augmentation, relative to the letterboxed size.
    scale_range: tuple[float, ...] = bounded((0.5, 1.5), 0, 8, low_inclusive=False)
    # Validation images drawn as image / truth / prediction panels.
    overlay_images: int = bounded(6, 0, 100)


@dataclass(frozen=True)
class ThresholdConfig:
    # Step of the candidate threshold grid.
    grid_step: float = bounded(0.01, 0, 0.5, low_inclusive=False, high_inclusive=False)
    # Coordinate-ascent passes over the classes (it stops early when a pass changes nothing).
    rounds: int = bounded(3, 1, 1000)


@dataclass(frozen=True)
class JointConfig:
    # Mask-area shares tried by the joint rule that adds a class the segmenter paints (chosen on validation).
    area_grid: tuple[float, ...] = bounded((0.005, 0.01, 0.02, 0.05, 0.1), **FRACTION)
    # Try fusing the classifier's probability with the segmenter's evidence (kept only if it wins cross-validated).
    fusion: bool = True
    # Try the segmenter's class presences (its pixel probabilities pooled per class) as the flags' source (kept only
    # if they win cross-validated).
    presence: bool = True
    # An accepted class whose mask covers less than this share of the image counts as missing for the fallback.
    tiny_mask_fraction: float = bounded(0.002, **FRACTION)
    # Validation images with the lowest scores, drawn in the report with both heads' outputs.
    worst_images: int = bounded(6, 0, 100)


@dataclass(frozen=True)
class InferenceConfig:
    # Images per prediction batch; memory stays bounded by one batch whatever the number of test images.
    batch_size: int = bounded(16, 1, 4096)
    # Average the classifier's probabilities of each image and its mirror image.
    classifier_flip_tta: bool = True
    # Average the segmenter's probabilities of each image and its mirror image.
    segmenter_flip_tta: bool = True
    # Scales (of segmenter.image_size) at which the segmenter predicts, probabilities averaged at each image's
    # size; 1.0 must be one of them: tune keeps the several scales only if they beat 1.0 alone on validation.
    segmenter_scales: tuple[float, ...] = bounded((0.75, 1.0, 1.25), 0.25, 4)


@dataclass(frozen=True)
class SelfTrainingConfig:
    # Rounds of self-training on the test images (0: off). Each round pseudo-labels the test images where both
    # heads agree confidently and trains both heads on, from where they are, on the fit + pseudo-labelled images;
    # the result is kept only if it beats the first models on validation (whose images never take part).
    rounds: int = bounded(0, 0, 10)
    # Epochs of each round, for each head; validation picks the kept epoch as in the first training.
    epochs: int = bounded(5, 1, MANY)
    # Each round's peak learning rate, as a share of the head's first-training rate (its last phase's).
    learning_rate_scale: float = bounded(0.3, 0, 10, low_inclusive=False)
    # A test image is pseudo-labelled when the heads agree on its main class and both are at least as confident as
    # the threshold at which this share of such validation images had that class right.
    image_precision: float = bounded(0.8, **FRACTION)
    # Within a pseudo-labelled image, a pixel keeps the segmenter's label when its probability is at least the
    # threshold at which this share of validation pixels were right; the others are ignored by the loss.
    pixel_precision: float = bounded(0.9, **FRACTION)


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
    epsilons: tuple[float, ...] = bounded((1.0, 2.0, 4.0, 8.0, 16.0), *PIXEL_LEVELS)
    # Iterations of PGD (FGSM is one step).
    pgd_steps: int = bounded(10, 1, 10_000)
    # Validation images attacked (one batch).
    num_images: int = bounded(32, 1, 10_000)
    # The class targeted attacks make appear (classifier) or paint everywhere (segmenter).
    target_class: str = one_of("cat", *CLASS_NAMES)
    # Bits per channel kept by the bit-depth-reduction defence.
    defence_bits: int = bounded(4, *DEFENCE_BITS)
    # Images drawn in the example panels.
    examples: int = bounded(4, 0, 100)


@dataclass(frozen=True)
class Config:
    # One seed for splits, augmentation and weight initialisation, so runs repeat (NumPy takes 0 .. 2**32 - 1).
    seed: int = bounded(0, 0, 2**32 - 1)
    # Name of the run folder under runs_dir; every stage reads and writes there.
    run_name: str = "default"
    # Parent folder of all run folders.
    runs_dir: str = "runs"
    # Mixed float16 precision: auto (on GPU only), on or off.
    mixed_precision: str = one_of("auto", *MIXED_PRECISION_MODES)
    # TensorFlow op determinism: the same seed, machine and data give the same bytes out. Off on GPUs, where
    # some kernels (depthwise convolution gradients, segment reductions) have no deterministic version.
    deterministic: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
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
    from voc_pipeline.files import read_text_file  # names a folder, a gzip or non-UTF-8 file as what it is

    try:
        return tomllib.loads(read_text_file(path, "a TOML profile", error_type=ConfigError))
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
    if expected is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # `--set submit.output_dir=2024`: TOML reads 2024 as a number; a text key takes it as text
    if expected is str and isinstance(value, float):
        raise ConfigError(f"{key}: expected text, got the number {value!r}; quote it to keep it as typed, "
                          f"e.g. --set '{key}=\"{value}\"'")
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


def check_declared_values(section: Any, prefix: str = "") -> None:
    """Every field's value against its declared range or choices; the error names key, value and range."""
    for item in dataclasses.fields(section):
        key, value = f"{prefix}{item.name}", getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            check_declared_values(value, f"{key}.")
        elif "range" in item.metadata:
            allowed = item.metadata["range"]
            for number in value if isinstance(value, tuple) else (value,):
                if not allowed.contains(number):
                    shown = f"{list(value)} holds {number!r}" if isinstance(value, tuple) else repr(value)
                    raise ConfigError(f"{key} = {shown}, outside its range {allowed.describe()}")
        elif "choices" in item.metadata and value not in item.metadata["choices"]:
            raise ConfigError(f"{key} = {value!r} is not one of: {', '.join(map(str, item.metadata['choices']))}")


def check_encoder(name: str, section) -> None:
    """What a backbone's row asks of its section: the input side a ViT's patches divide, the weights a keras-hub
    encoder takes (a preset, a preset folder or none, never VOC-trained ones), no fine-tuning of a frozen encoder."""
    from voc_pipeline.backbone_table import refuse_voc_trained

    row = backbone(section.backbone)
    try:
        refuse_voc_trained(section.weights)
    except VocPipelineError as error:
        raise ConfigError(f"{name}.weights: {error}") from None
    if row.fixed_size and section.image_size % row.size_multiple:
        raise ConfigError(f"{name}.image_size {section.image_size} is not a multiple of {row.size_multiple}, as "
                          f"{row.name} needs (e.g. {max(1, section.image_size // row.size_multiple) * row.size_multiple})")
    if row.from_keras_hub and section.weights == "imagenet":
        raise ConfigError(f"{name}.weights = 'imagenet': {row.name} has no ImageNet weights of keras.applications; its "
                          f"pretrained weights are the keras-hub preset {row.preset!r}: set {name}.weights to it (or "
                          f"to a local preset folder, or none)")
    head = row.classifier_head if name == "classifier" else row.segmenter_head
    if section.freeze_backbone and head == "tokens" and section.copy_paste:
        raise ConfigError(f"{name}.copy_paste = {section.copy_paste} needs augmented images each epoch, and "
                          f"{name}.freeze_backbone trains {row.name}'s head on features cached once from the unaugmented "
                          f"images: set one of them off")
    if section.freeze_backbone and section.finetune_epochs:
        raise ConfigError(f"{name}.freeze_backbone keeps the encoder frozen, and {name}.finetune_epochs = "
                          f"{section.finetune_epochs} would fine-tune it: set one of them off (finetune_epochs=0)")


def check_self_training(config: Config) -> None:
    """Self-training continues the first models on the fit part and validation chooses; refit_all (no validation
    left), a K-fold classifier (no single model to continue) and heads on cached features (the test images have
    none) do not fit that."""
    if not config.self_training.rounds:
        return
    for name in ("classifier", "segmenter"):
        section = getattr(config, name)
        if section.refit_all:
            raise ConfigError(f"self_training.rounds = {config.self_training.rounds} keeps validation out to choose "
                              f"the self-trained models, and {name}.refit_all trains on it: set one of them off")
        row = backbone(section.backbone)
        if section.freeze_backbone and (row.classifier_head if name == "classifier" else row.segmenter_head) == "tokens":
            raise ConfigError(f"self_training.rounds = {config.self_training.rounds} trains on augmented test images, and "
                              f"{name}.freeze_backbone trains {row.name}'s head on features cached from the train images "
                              f"only: set one of them off")
    if config.classifier.kfold:
        raise ConfigError(f"self_training.rounds = {config.self_training.rounds} continues one classifier, and "
                          f"classifier.kfold trains one per fold: set one of them off")


def validate_config(config: Config) -> None:
    """Each field against its range or choices, then the checks that involve several fields."""
    check_declared_values(config)
    for name in ("classifier", "segmenter"):
        section = getattr(config, name)
        if section.head_epochs + section.finetune_epochs < 1:
            raise ConfigError(f"{name}.head_epochs + {name}.finetune_epochs must be at least 1 (no epoch would train), "
                              f"got {section.head_epochs} + {section.finetune_epochs}")
        if section.layerwise_lr_decay != 1.0 and not backbone(section.backbone).taps:
            raise ConfigError(f"{name}.layerwise_lr_decay = {section.layerwise_lr_decay} needs a backbone with stages, "
                              f"and {name}.backbone {section.backbone!r} has none in the backbone table; use one of "
                              f"{', '.join(SEGMENTER_BACKBONES)} or leave it at 1.0")
        check_encoder(name, section)
    segmenter = config.segmenter
    if not backbone(segmenter.backbone).fixed_size and segmenter.image_size % segmenter.output_stride:
        raise ConfigError(f"segmenter.image_size {segmenter.image_size} is not divisible by segmenter.output_stride "
                          f"{segmenter.output_stride}")
    if len(segmenter.scale_range) != 2 or segmenter.scale_range[0] > segmenter.scale_range[1]:
        raise ConfigError(f"segmenter.scale_range must be [low, high] with low <= high, got {list(segmenter.scale_range)}")
    if 1.0 not in config.inference.segmenter_scales:
        raise ConfigError(f"inference.segmenter_scales must include 1.0 (the scale the others are compared with), "
                          f"got {list(config.inference.segmenter_scales)}")
    check_self_training(config)
    if not config.attack.epsilons:
        raise ConfigError("attack.epsilons must list at least one budget")
    if not re.fullmatch(RUN_NAME_PATTERN, config.run_name):
        raise ConfigError(f"run name {config.run_name!r} is not a plain folder name: use letters, digits, '.', '_' "
                          f"and '-', starting with a letter or digit (no path separators, no '..')")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The configuration as nested plain dicts, tuples as lists (TOML- and JSON-ready)."""
    config = unwrapped(config)
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


def training_settings(section: Any) -> dict[str, Any]:
    """A classifier or segmenter section as a plain dict without REFIT_KEYS: what identifies its first training."""
    return {key: value for key, value in config_to_dict(section).items() if key not in REFIT_KEYS}


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
