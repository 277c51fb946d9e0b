"""A frozen encoder's features, computed once per run and cached, and the head trained on them.

With `freeze_backbone`, a token head (a DINOv2 classifier or segmenter) never changes its encoder, so each
training image's features, and its mirror image's, are computed once and the head trains on them: an epoch
then costs the head's few layers, not the encoder's forward pass. The model splits where the head begins
(`HEAD_BOUNDARY`): the encoder part (raw uint8 in, the pooled tokens or the patch grid out) and the head part
(a new input of those features, then the same layer objects, so training the head trains the model's own
layers). The features are float16 arrays in the run folder (`features/`), written batch by batch into
memory-mapped files, under a key of everything they depend on (the encoder's weights, the images and their
size, the head), so a changed encoder or changed images compute them again and nothing stale is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from voc_pipeline.data.competition import fingerprint
from voc_pipeline.files import atomic_directory
from voc_pipeline.models.input_pipeline import AUTOTUNE, prediction_dataset, segmentation_dataset, with_example_seeds

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
# The layer whose output a token head reads: the features that are cached.
HEAD_BOUNDARY = {"classifier": "pool", "segmenter": "patch_grid"}


def split_at_head(model: keras.Model, head: str) -> tuple[keras.Model, keras.Model]:
    """(encoder part: the model's input -> the features the head reads; head part: those features -> the model's
    output), sharing the model's layers. The head must be a chain of layers after its boundary."""
    boundary = model.get_layer(HEAD_BOUNDARY[head])
    encoder = keras.Model(model.input, boundary.output, name=f"{model.name}_encoder")
    names = [layer.name for layer in model.layers]
    features = keras.Input(boundary.output.shape[1:], name="features")
    outputs = features
    for layer in model.layers[names.index(boundary.name) + 1:]:
        outputs = layer(outputs)
    return encoder, keras.Model(features, outputs, name=f"{model.name}_head")


def weights_digest(model: keras.Model) -> str:
    """A hash of a model's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}\0{value.shape}\0{value.dtype}\0".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedFeatures:
    """The features of some images and of their mirror images (float16, memory-mapped), with their targets: the
    class flags, or the letterboxed masks (mirrored ones for the mirror images)."""

    features: np.ndarray
    flipped: np.ndarray
    targets: np.ndarray
    flipped_targets: np.ndarray
    folder: Path


def feature_key(encoder: keras.Model, head: str, data, image_size: int) -> str:
    """Everything the cached features depend on, as one hash."""
    identity = {"encoder": weights_digest(encoder), "head": head, "image_size": image_size,
                "data": fingerprint(data.root, data.name), "ids": np.asarray(data.ids).tolist()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def image_batches(head: str, data, positions: np.ndarray, image_size: int, batch_size: int, flip: bool):
    """(uint8 images as the model sees them at evaluation, their targets) batch by batch, mirrored with `flip`."""
    if head == "classifier":
        images = prediction_dataset([data.images[position] for position in positions], image_size, batch_size, flip)
        for start, batch in zip(range(0, len(positions), batch_size), images.as_numpy_iterator()):
            yield batch, np.asarray(data.labels[positions[start:start + batch_size]], dtype=np.float32)
        return
    for images, masks in segmentation_dataset(data.images, data.masks, positions, image_size, batch_size,
                                              training=False).as_numpy_iterator():
        yield (images[:, :, ::-1], masks[:, :, ::-1]) if flip else (images, masks)


def cached_features(encoder: keras.Model, head: str, data, image_size: int, batch_size: int,
                    run_dir: Path) -> CachedFeatures:
    """The encoder's features of every image of `data` and of their mirror images, in its order: from the run's cache,
    or computed now and cached. The K folds of a pretrained encoder share one set; a set for other weights or other
    images replaces the head's earlier one."""
    key = feature_key(encoder, head, data, image_size)
    folder = Path(run_dir) / FEATURES_DIR / f"{head}-{key[:16]}"
    if not (folder / "key.json").is_file():
        for stale in (Path(run_dir) / FEATURES_DIR).glob(f"{head}-*"):
            shutil.rmtree(stale)
        compute_features(encoder, head, data, np.arange(len(data.ids)), image_size, batch_size, folder, key)
    else:
        logger.info("%s features of %d images and their mirror images: reused from %s", head, len(data.ids), folder)
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
              for name in ("features", "flipped", "targets", "flipped_targets")}
    return CachedFeatures(**arrays, folder=folder)


def compute_features(encoder, head, data, positions, image_size, batch_size, folder: Path, key: str) -> None:
    """Write the features, batch by batch, into memory-mapped float16 files; the folder appears only once whole."""
    shape = tuple(encoder.output.shape[1:])
    with atomic_directory(folder, overwrite=True) as target:
        for name, flip in (("", False), ("flipped", True)):
            features = np.lib.format.open_memmap(target / f"{name or 'features'}.npy", "w+", np.float16,
                                                 (len(positions), *shape))
            targets = None
            start = 0
            for images, batch_targets in image_batches(head, data, positions, image_size, batch_size, flip):
                if targets is None:
                    targets = np.lib.format.open_memmap(target / f"{name + '_' if name else ''}targets.npy", "w+",
                                                        batch_targets.dtype, (len(positions), *batch_targets.shape[1:]))
                features[start:start + len(images)] = encoder.predict_on_batch(images).astype(np.float16)
                targets[start:start + len(images)] = batch_targets
                start += len(images)
            features.flush()
            targets.flush()
            del features, targets
        (target / "key.json").write_text(json.dumps({"key": key, "images": len(positions)}))
    logger.info("%s features of %d images and their mirror images computed into %s", head, len(positions), folder)


def feature_dataset(cached: CachedFeatures, positions: np.ndarray, batch_size: int, training: bool,
                    seed: int) -> tf.data.Dataset:
    """Batches of (features, targets) of the images at `positions`: in training shuffled, each example its mirror
    image's features half the time (the flip augmentation the cache allows); in evaluation the plain ones in order."""
    count = len(positions)

    def load(index, use_flipped):
        def fetch(index, use_flipped):
            features, targets = (cached.flipped, cached.flipped_targets) if use_flipped else (cached.features, cached.targets)
            return np.asarray(features[index], dtype=np.float32), np.asarray(targets[index])

        features, targets = tf.numpy_function(fetch, [index, use_flipped],
                                              [tf.float32, tf.as_dtype(cached.targets.dtype)])
        features.set_shape(cached.features.shape[1:])
        targets.set_shape(cached.targets.shape[1:])
        return features, targets

    indices = tf.data.Dataset.from_tensor_slices(np.asarray(positions, dtype=np.int64))
    if training:
        indices = with_example_seeds(indices.shuffle(count, seed=seed, reshuffle_each_iteration=True), seed)
        pairs = indices.map(lambda index, seed_pair: (index, tf.random.stateless_uniform([], seed_pair) < 0.5))
    else:
        pairs = indices.map(lambda index: (index, tf.constant(False)))
    return pairs.map(load, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
