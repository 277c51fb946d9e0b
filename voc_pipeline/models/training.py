"""The one training recipe of the classifier and the segmenter: devices, phases, callbacks, checkpoints.

`train_model` builds a model under the distribution strategy, plans its phases from the config section
(`plan_phases`), fits them one after another keeping the best epoch, promotes that checkpoint to its
final name, draws the learning curves and returns the best model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from voc_pipeline.backbone_table import backbone, is_pretrained
from voc_pipeline.choices import MIXED_PRECISION_MODES
from voc_pipeline.config import TrainingSchedule
from voc_pipeline.errors import ConfigError, TrainingDivergedError
from voc_pipeline.files import write_text_atomic

logger = logging.getLogger(__name__)


def choose_strategy() -> tf.distribute.Strategy:
    """TPU if one is attached, MirroredStrategy over several GPUs, else the default (one device) strategy."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        logger.info("training on TPU %s", resolver.master())
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        pass
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    logger.info("training on %s", gpus[0].name if gpus else "the CPU")
    return tf.distribute.get_strategy()


def configure_precision(mode: str) -> str:
    """Set Keras's global dtype policy: mixed_float16 on GPU when mode is 'auto' or 'on', else float32."""
    if mode not in MIXED_PRECISION_MODES:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION_MODES)}, got {mode!r}")
    use_mixed = mode == "on" or (mode == "auto" and bool(tf.config.list_logical_devices("GPU")))
    policy = "mixed_float16" if use_mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow so that initialisation and shuffles repeat; with `deterministic`,
    also make TensorFlow pick deterministic kernels, so the same run gives the same bytes."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def set_backbone_trainable(model: keras.Model, trainable_fraction: float, keep_frozen: tuple[str, ...] = ()) -> int:
    """Unfreeze the top `trainable_fraction` of the backbone's layers, except layers of the `keep_frozen` classes.

    The phase's plan names those classes from the backbone table (`Backbone.frozen_when_fine_tuning`): batch
    norm for the batch-norm families. Frozen batch-norm layers run in inference mode in Keras 3, so their
    ImageNet statistics are kept while the convolutions around them adapt (small batches would otherwise
    wreck them). ConvNeXt's layer norm keeps no batch statistics, so nothing is kept frozen there.

    Returns:
        The number of backbone layers left trainable.
    """
    frozen_classes = tuple(getattr(keras.layers, name) for name in keep_frozen)
    backbone = model.get_layer("backbone")
    backbone.trainable = True
    backbone_layers = backbone.layers
    first_trainable = int(round(len(backbone_layers) * (1.0 - trainable_fraction)))
    for position, layer in enumerate(backbone_layers):
        layer.trainable = position >= first_trainable and not isinstance(layer, frozen_classes)
    return sum(layer.trainable for layer in backbone_layers)


# Batch-norm momentum when training from random initialisation. Keras's MobileNets use 0.999, whose
# moving statistics need thousands of steps to leave their initial values; a few hundred steps on a small
# data set would then be evaluated with statistics that never saw the data.
FROM_SCRATCH_BATCH_NORM_MOMENTUM = 0.9


def set_all_trainable(model: keras.Model) -> None:
    """Everything trainable, batch norm included (training from random initialisation)."""
    model.trainable = True
    for layer in model.get_layer("backbone").layers:
        layer.trainable = True
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, FROM_SCRATCH_BATCH_NORM_MOMENTUM)


def warmup_cosine(learning_rate: float, total_steps: int, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 1% to `learning_rate` over `warmup_steps`, then cosine decay to 1% of it."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.01, decay_steps=max(total_steps - warmup_steps, 1), alpha=0.01,
        warmup_target=learning_rate, warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="voc_pipeline")
class LayerwiseAdamW(keras.optimizers.Adam):
    """AdamW whose step for each variable is the learning rate times that variable's multiplier (layer-wise
    learning-rate decay); the decoupled weight decay follows the same scaled rate, as in AdamW.

    Args:
        rate_multipliers: variable path -> multiplier; variables not listed (the head) take 1.0.
        decoupled_weight_decay: AdamW's weight decay (applied here, per variable, instead of by the base class,
            which would use the unscaled rate).
    """

    def __init__(self, learning_rate=0.001, rate_multipliers: dict[str, float] | None = None,
                 decoupled_weight_decay: float = 0.0, **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.rate_multipliers = dict(rate_multipliers or {})
        self.decoupled_weight_decay = decoupled_weight_decay

    def build(self, var_list):
        super().build(var_list)
        self._multipliers = [float(self.rate_multipliers.get(variable.path, 1.0)) for variable in var_list]

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers[self._get_variable_index(variable)]
        rate = keras.ops.cast(learning_rate, variable.dtype) * multiplier
        if self.decoupled_weight_decay:
            self.assign_sub(variable, variable * keras.ops.cast(self.decoupled_weight_decay, variable.dtype) * rate)
        super().update_step(gradient, variable, rate)

    def get_config(self):
        return {**super().get_config(), "rate_multipliers": self.rate_multipliers,
                "decoupled_weight_decay": self.decoupled_weight_decay}


def stage_rate_multipliers(model: keras.Model, backbone: str, layer_decay: float) -> dict[str, float]:
    """Variable path -> learning-rate multiplier: `layer_decay` for the backbone's top stage, its square for
    the stage below, and so on down to the stem's; the head keeps the full rate (it is not listed)."""
    from voc_pipeline.models.backbones import stage_of_each_layer

    network = model.get_layer("backbone")
    stages = stage_of_each_layer(network, backbone)
    top = max(stages.values())
    multipliers: dict[str, float] = {}
    for layer in network.layers:
        for variable in layer.weights:
            if variable.path in multipliers:
                raise RuntimeError(f"two backbone variables share the path {variable.path!r}; layer-wise rates need "
                                   f"unique paths")
            multipliers[variable.path] = layer_decay ** (top - stages[layer.name] + 1)
    return multipliers


def phase_optimizer(model: keras.Model, schedule: TrainingSchedule, phase: Phase,
                    learning_rate: keras.optimizers.schedules.LearningRateSchedule) -> keras.optimizers.Optimizer:
    """AdamW with the section's weight decay at `learning_rate`; LayerwiseAdamW for a phase with layer-wise decay."""
    if phase.layer_decay == 1.0:
        return keras.optimizers.AdamW(learning_rate, weight_decay=schedule.weight_decay)
    multipliers = stage_rate_multipliers(model, schedule.backbone, phase.layer_decay)
    logger.info("phase %s: layer-wise learning rates, x%.3g (top backbone stage) to x%.3g (stem's stage)",
                phase.name, max(multipliers.values()), min(multipliers.values()))
    return LayerwiseAdamW(learning_rate, rate_multipliers=multipliers, decoupled_weight_decay=schedule.weight_decay)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and remembers where."""

    def __init__(self):
        super().__init__()
        self.where: tuple[int, int, float] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


@dataclass
class Phase:
    """One call to fit: which layers train, at what learning rate, for how many epochs."""

    name: str
    epochs: int
    learning_rate: float
    warmup_epochs: int
    trainable_fraction: float | None  # None: everything trainable (random initialisation)
    layer_decay: float = 1.0  # each backbone stage's rate over the stage above it (1.0: one rate for all)
    keep_frozen: tuple[str, ...] = ()  # Keras layer classes that stay frozen in the unfrozen share


def plan_phases(schedule: TrainingSchedule) -> list[Phase]:
    """Two phases for pretrained weights (frozen backbone, then fine-tune the top); one for random weights.

    The head phase freezes the whole backbone. Fine-tuning unfreezes the top `unfreeze_fraction` of its
    layers except those the backbone table keeps frozen for its family (batch norm, whose ImageNet statistics
    stay; ConvNeXt's layer norm has none and trains with its blocks). With `layerwise_lr_decay` below 1,
    fine-tuning gives each backbone stage that factor of the rate of the stage above it (`stage_rate_multipliers`).

    Args:
        schedule: the `classifier` or `segmenter` configuration section (backbone, weights, epochs, learning
            rates, warm-up, unfreeze fraction and layer-wise decay).
    """
    if schedule.freeze_backbone:
        return [Phase("head", schedule.head_epochs, schedule.head_learning_rate, 0, 0.0)]
    if not is_pretrained(schedule.weights):
        return [Phase("full", schedule.head_epochs + schedule.finetune_epochs, schedule.head_learning_rate,
                      schedule.warmup_epochs, None)]
    phases = [Phase("head", schedule.head_epochs, schedule.head_learning_rate, 0, 0.0)]
    if schedule.finetune_epochs > 0:
        phases.append(Phase("finetune", schedule.finetune_epochs, schedule.finetune_learning_rate, schedule.warmup_epochs,
                            schedule.unfreeze_fraction, schedule.layerwise_lr_decay,
                            backbone(schedule.backbone).frozen_when_fine_tuning))
    return phases


def refit_phases(phases: list[Phase], history: list[dict], monitor: str) -> list[Phase]:
    """The phases of a refit on every image: each planned phase cut to the epochs it had run by the epoch whose
    model training kept (the first best `monitor`, as ModelCheckpoint keeps it); phases it never reached go.

    Each phase keeps its peak rate, warm-up and decay, its cosine spread over its own (shorter) length.

    Raises:
        ValueError: no epoch of `history` has a finite `monitor`.
    """
    scored = [record for record in sorted(history, key=lambda record: record["epoch"])
              if monitor in record and math.isfinite(float(record[monitor]))]
    if not scored:
        raise ValueError(f"no epoch of the training history has a finite {monitor}: there is no chosen epoch to refit to")
    best = max(scored, key=lambda record: float(record[monitor]))["epoch"]
    counts = {phase.name: sum(1 for record in history if record["phase"] == phase.name and record["epoch"] <= best)
              for phase in phases}
    return [dataclasses.replace(phase, epochs=counts[phase.name]) for phase in phases if counts[phase.name] > 0]


class RecordHistory(keras.callbacks.Callback):
    """Appends each finished epoch to `records` and rewrites the history CSV, so an interrupted run keeps it."""

    def __init__(self, records: list[dict], path: Path, phase: str):
        super().__init__()
        self.records, self.path, self.phase = records, path, phase

    def on_epoch_end(self, epoch, logs=None):
        self.records[:] = [record for record in self.records if record["epoch"] != epoch + 1]
        self.records.append({"epoch": epoch + 1, "phase": self.phase, **{key: float(value) for key, value in (logs or {}).items()}})
        write_history(self.records, self.path)


def damaged_state(state_dir: Path, history_path: Path, checkpoint_path: Path) -> str | None:
    """What is damaged in an interrupted training's saved state, or None when every file is whole.

    Keras writes its per-epoch backup (BackupAndRestore) and the best checkpoint in place, so a kill -9
    while it writes leaves a cut HDF5, JSON or .keras file; resuming from it would fail deep inside
    Keras or h5py. Each file is opened the way its reader opens it, without loading any model.
    """
    for path in sorted(state_dir.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.name.endswith((".h5", ".h5.bkp")):
                with h5py.File(path, "r") as weights:
                    weights.visit(lambda name: None)
            elif path.name.endswith((".json", ".json.bkp")):
                json.loads(path.read_text())
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            return f"{path.relative_to(state_dir.parent)} is cut or unreadable ({str(error).splitlines()[0][:120]})"
    try:
        if history_path.exists():
            pd.read_csv(history_path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        return f"{history_path.name} is cut or unreadable ({error})"
    if checkpoint_path.exists():
        try:
            with zipfile.ZipFile(checkpoint_path) as archive:
                if archive.testzip() is not None:
                    return f"{checkpoint_path.name} is cut or unreadable (a damaged member)"
        except (zipfile.BadZipFile, OSError) as error:
            return f"{checkpoint_path.name} is cut or unreadable ({error})"
    return None


def resumable_state(state_dir: Path, identity: dict, history_path: Path, checkpoint_path: Path) -> list[dict]:
    """The history of an interrupted training with the same `identity`, or [] after clearing stale state.

    Starting afresh also deletes an earlier training's best checkpoint, so a training in which no epoch
    finishes can never promote a model it did not train. A state with a damaged file (a kill during
    Keras's in-place backup) is said to be damaged and discarded the same way.
    """
    identity_path = state_dir / "identity.json"
    if state_dir.exists() and identity_path.exists() and history_path.exists():
        damage = damaged_state(state_dir, history_path, checkpoint_path)
        if damage:
            logger.warning("the interrupted training's saved state in %s is damaged (%s), probably by a kill while "
                           "it was written; starting this training afresh", state_dir, damage)
        elif json.loads(identity_path.read_text()) == identity:
            records = pd.read_csv(history_path).to_dict("records")
            logger.info("resuming an interrupted training from %s (%d epochs done)", state_dir, len(records))
            return records
    if state_dir.exists():
        shutil.rmtree(state_dir)
    checkpoint_path.unlink(missing_ok=True)
    history_path.unlink(missing_ok=True)
    state_dir.mkdir(parents=True)
    write_text_atomic(identity_path, json.dumps(identity))
    return []


def clear_resume_point(model: keras.Model) -> None:
    """Forget where BackupAndRestore told fit to resume, so that it does not leak into the next phase.

    Keras 3 (3.0 to 3.15 at least) passes the resume epoch through the private `Model._initial_epoch`; a Keras
    without it fails here, loudly, instead of starting a later phase at a wrong epoch.
    """
    if not hasattr(model, "_initial_epoch"):
        raise RuntimeError(f"Keras {keras.__version__} has no Model._initial_epoch, through which BackupAndRestore "
                           "resumed training in Keras 3.0 to 3.15: voc_pipeline.models.training needs updating for it")
    model._initial_epoch = None


def apply_freezing(model: keras.Model, phase: Phase) -> dict:
    """Make trainable what `phase` trains; returns what that is (the phase's facts, for the report)."""
    if "backbone" not in {layer.name for layer in model.layers}:
        # A head trained alone on its frozen encoder's cached features (voc_pipeline.models.features).
        model.trainable = True
        logger.info("phase %s: the head alone, on the frozen encoder's cached features", phase.name)
        return {"phase": phase.name, "epochs": phase.epochs, "learning_rate": phase.learning_rate,
                "warmup_epochs": phase.warmup_epochs, "trainable_backbone_layers": 0, "backbone_layers": None,
                "keep_frozen": []}
    layers = len(model.get_layer("backbone").layers)
    if phase.trainable_fraction is None:
        set_all_trainable(model)
        trainable = layers
    else:
        trainable = set_backbone_trainable(model, phase.trainable_fraction, phase.keep_frozen)
    logger.info("phase %s: %d of the backbone's %d layers trainable%s", phase.name, trainable, layers,
                f", {', '.join(phase.keep_frozen)} kept frozen" if phase.keep_frozen else "")
    return {"phase": phase.name, "epochs": phase.epochs, "learning_rate": phase.learning_rate,
            "warmup_epochs": phase.warmup_epochs, "trainable_backbone_layers": trainable, "backbone_layers": layers,
            "keep_frozen": list(phase.keep_frozen)}


def fit_in_phases(model: keras.Model, compile_model, phases: list[Phase], train_data: tf.data.Dataset,
                  validation_data: tf.data.Dataset, steps_per_epoch: int, checkpoint_path: Path,
                  history_path: Path, monitor: str, mode: str, patience: int, identity: dict | None = None,
                  facts: list[dict] | None = None) -> list[dict]:
    """Train through `phases`, keeping the best epoch (by `monitor`) at `checkpoint_path`.

    An interrupted training resumes: each epoch backs up the model and optimizer (Keras BackupAndRestore)
    and each finished phase leaves its weights, in a state folder beside the checkpoint that is removed
    when training completes. A state folder made for another `identity` (another configuration) is
    discarded rather than resumed.

    Args:
        compile_model: called as compile_model(model, learning_rate_schedule, phase) after each phase's freezing.
        validation_data: None trains every epoch of every phase and keeps the last (a refit on every image).
        monitor, mode: the validation quantity that picks the best checkpoint and stops early.
        identity: what must match for a resume (e.g. the configuration); None resumes any state.
        facts: if given, one dict per phase is appended to it: what that phase trained (the report's facts).

    Returns:
        One history dict per epoch, with its phase name.

    Raises:
        TrainingDivergedError: the loss became non-finite; the best checkpoint so far is kept.
    """
    state_dir = checkpoint_path.parent / f"{checkpoint_path.stem}_state"
    records = resumable_state(state_dir, identity or {}, history_path, checkpoint_path)
    if validation_data is None:
        # Nothing to choose an epoch by (a refit on every image): every epoch runs and the last one is kept.
        checkpoint = keras.callbacks.ModelCheckpoint(str(checkpoint_path))
        stopping = []
    else:
        best = [record[monitor] for record in records if monitor in record and math.isfinite(record[monitor])]
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(checkpoint_path), monitor=monitor, mode=mode, save_best_only=True,
            initial_value_threshold=(max(best) if mode == "max" else min(best)) if best and checkpoint_path.exists() else None)
        stopping = [keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience)]
    guard = StopOnNonFiniteLoss()
    epoch = 0
    for index, phase in enumerate(phases):
        if phase.epochs <= 0:
            continue
        trained = apply_freezing(model, phase)
        if facts is not None:
            facts.append(trained)
        finished_weights = state_dir / f"phase{index}_{phase.name}.weights.h5"
        phase_epochs = [record["epoch"] for record in records if record["phase"] == phase.name]
        if finished_weights.exists():
            model.load_weights(finished_weights)
            epoch = max(phase_epochs, default=epoch)
            logger.info("phase %s already finished before the interruption; skipping it", phase.name)
            continue
        schedule = warmup_cosine(phase.learning_rate, phase.epochs * steps_per_epoch, phase.warmup_epochs * steps_per_epoch)
        compile_model(model, schedule, phase)
        callbacks = [keras.callbacks.BackupAndRestore(str(state_dir / f"phase{index}_{phase.name}_backup")), guard,
                     checkpoint, *stopping, RecordHistory(records, history_path, phase.name)]
        # shuffle=False: the input pipeline shuffles the training set itself; Keras ignores the flag for a
        # tf.data.Dataset and warns when it is left at its default.
        model.fit(train_data, validation_data=validation_data, initial_epoch=epoch, epochs=epoch + phase.epochs,
                  callbacks=callbacks, verbose=2, shuffle=False)
        clear_resume_point(model)
        if guard.where:
            where = f"epoch {guard.where[0]}, batch {guard.where[1]}"
            kept = f"the last good checkpoint is kept at {checkpoint_path}" if checkpoint_path.exists() else "no epoch finished cleanly, so there is no checkpoint"
            raise TrainingDivergedError(f"training stopped: the loss became {guard.where[2]} at {where} of phase "
                                        f"{phase.name}; {kept}. Lower the learning rate or check the data.")
        model.save_weights(finished_weights)
        epoch = max([record["epoch"] for record in records], default=epoch)
    if not checkpoint_path.exists():
        raise TrainingDivergedError(f"no checkpoint was written to {checkpoint_path}: did any epoch run?")
    shutil.rmtree(state_dir, ignore_errors=True)
    return records


def write_history(records: list[dict], path: Path) -> None:
    """The per-epoch history as CSV, written atomically."""
    write_text_atomic(path, pd.DataFrame(records).to_csv(index=False))


def promote_checkpoint(checkpoint_path: Path, final_path: Path) -> Path:
    """Move the best checkpoint to its final name (one atomic rename on the same file system)."""
    final_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_path.replace(final_path)
    return final_path


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be smaller)."""
    return max(1, int(np.ceil(num_examples / batch_size)))
