"""`voc-pipeline bench ...`: figures printed side by side from one run on this machine."""

from __future__ import annotations

import time

import cv2
import numpy as np

from voc_pipeline.core.classes import NUM_CLASSES
from voc_pipeline.data.submission import make_test_frame, reference_submission_csv, submission_text
from voc_pipeline.errors import ConfigError


def check_counts(images: int | None, repeats: int) -> None:
    """--images and --repeats must each be at least 1 (a best of none, or a rate over no image, is no figure)."""
    for option, value in (("--images", images), ("--repeats", repeats)):
        if value is not None and value < 1:
            raise ConfigError(f"bench {option} {value}: give at least 1")


def voc_like_label_maps(count: int, seed: int = 0, height: int = 375, width: int = 500) -> list[np.ndarray]:
    """Label maps of VOC size with one to four filled ellipses of random classes each."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(count):
        label_map = np.zeros((height, width), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2)))
            cv2.ellipse(label_map, centre, axes, float(rng.uniform(0, 180)), 0, 360, int(rng.integers(1, NUM_CLASSES + 1)), -1)
        maps.append(label_map)
    return maps


def best_time(function, repeats: int) -> tuple[float, object]:
    """Lowest wall time of `repeats` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_submission(num_images: int = 750, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Time the run-based writer against the per-image, per-class reference writer on the same frame."""
    rng = np.random.default_rng(seed)
    label_maps = voc_like_label_maps(num_images, seed)
    flags = rng.integers(0, 2, size=(num_images, NUM_CLASSES))
    frame = make_test_frame(np.arange(num_images), flags, label_maps)
    fast_seconds, fast_text = best_time(lambda: submission_text(frame), repeats)
    reference_seconds, reference_text = best_time(lambda: reference_submission_csv(frame), repeats)
    if fast_text != reference_text:
        raise AssertionError("the fast writer's output differs from the reference writer's")
    figures = {"images": num_images, "fast_seconds": fast_seconds, "reference_seconds": reference_seconds,
               "speedup": reference_seconds / fast_seconds}
    print(f"submission writing, {num_images} images of 375 x 500, best of {repeats}:")
    print(f"  {'writer':<34}{'seconds':>10}{'images/s':>12}")
    print(f"  {'run-based (write_submission)':<34}{fast_seconds:>10.3f}{num_images / fast_seconds:>12.0f}")
    print(f"  {'per-image, per-class reference':<34}{reference_seconds:>10.3f}{num_images / reference_seconds:>12.0f}")
    print(f"  speed-up: {figures['speedup']:.1f}x; outputs identical byte for byte")
    return figures


def timed_fit(model, dataset, steps: int) -> float:
    """Seconds of `steps` training steps after one warm-up epoch of the same length."""
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - start


def training_figures(model, pipeline, steps: int, batch_size: int) -> dict[str, float]:
    """Training images/s through `pipeline` and on its first batch held in memory (the model alone)."""
    import tensorflow as tf

    in_memory = tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat()
    figures = {"train_pipeline_images_per_second": steps * batch_size / timed_fit(model, pipeline, steps),
               "train_in_memory_images_per_second": steps * batch_size / timed_fit(model, in_memory, steps)}
    figures["pipeline_overhead_fraction"] = 1.0 - figures["train_pipeline_images_per_second"] / figures["train_in_memory_images_per_second"]
    return figures


def prediction_rate(predict, images, batch_size: int) -> float:
    """Images/s of predict(images) after a warm-up call on one batch."""
    predict(images[:batch_size])
    start = time.perf_counter()
    predict(images)
    return len(images) / (time.perf_counter() - start)


def synthetic_train_split(num_images: int, seed: int):
    """VOC-sized random images with VOC-like masks and the labels those masks imply, as a train split."""
    from pathlib import Path

    from voc_pipeline.core.classes import CLASS_NAMES
    from voc_pipeline.data.competition import ImageSet

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8) for _ in range(num_images)]
    masks = voc_like_label_maps(num_images, seed)
    labels = np.stack([np.isin(np.arange(1, NUM_CLASSES + 1), np.unique(mask)) for mask in masks]).astype(np.int8)
    return ImageSet("bench", np.arange(num_images), images, masks, labels, CLASS_NAMES, Path("."))


def bench_head(config, head, num_images: int, steps: int) -> tuple[dict[str, float], object, object, object]:
    """Training images/s of `head`'s recipe (random weights: speed does not depend on them) through its input
    pipeline and on one batch held in memory; returns (figures, model, images, pipeline)."""
    import keras

    from voc_pipeline.models.training import seed_everything

    seed_everything(config.seed, config.deterministic)
    settings = head.settings(config)
    data = synthetic_train_split(num_images, config.seed)
    model = head.build(settings, weights="none")
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=head.loss(settings))
    pipeline = head.dataset(settings, data, np.arange(num_images), True, config.seed).repeat()
    return training_figures(model, pipeline, steps, settings.batch_size), model, data.images, pipeline


def bench_classifier(config, num_images: int = 128, steps: int = 8) -> dict[str, float]:
    """Classifier throughput at the configuration's backbone, image size and batch size, on VOC-sized images.

    Prints training images/s through the real input pipeline and on one batch already in memory (the
    model alone), the input pipeline alone, and prediction images/s; weights are random (speed does not
    depend on them).
    """
    from voc_pipeline.models.classifier import predict_probabilities
    from voc_pipeline.models.heads import CLASSIFIER

    settings, batch_size = config.classifier, config.classifier.batch_size
    figures, model, images, pipeline = bench_head(config, CLASSIFIER, num_images, steps)
    start = time.perf_counter()
    for _ in pipeline.take(steps):
        pass
    figures["input_pipeline_alone_images_per_second"] = steps * batch_size / (time.perf_counter() - start)
    figures["predict_images_per_second"] = prediction_rate(
        lambda chosen: predict_probabilities([model], chosen, batch_size, flip_tta=False), images, batch_size)
    print_figures(f"classifier {settings.backbone} at {settings.image_size} px, batch {batch_size}, "
                  f"source images 375 x 500, {steps} steps after a warm-up:", figures)
    return figures


def bench_segmenter(config, num_images: int = 64, steps: int = 6) -> dict[str, float]:
    """Segmenter throughput at the configuration's size on VOC-sized images: training through the input
    pipeline and on one in-memory batch, and prediction including the resize back to original sizes."""
    from voc_pipeline.models.heads import SEGMENTER
    from voc_pipeline.models.segmenter import predict_label_maps

    settings, batch_size = config.segmenter, config.segmenter.batch_size
    figures, model, images, _ = bench_head(config, SEGMENTER, num_images, steps)
    figures["predict_with_resize_back_images_per_second"] = prediction_rate(
        lambda chosen: predict_label_maps(model, chosen, settings.image_size, settings.output_stride, batch_size,
                                          flip_tta=False), images, batch_size)
    print_figures(f"segmenter on {settings.backbone} (output stride {settings.output_stride}) at "
                  f"{settings.image_size} px, batch {batch_size}, source images 375 x 500, {steps} steps after a warm-up:", figures)
    return figures


def print_figures(title: str, figures: dict[str, float]) -> None:
    """Print named figures under a title: rates as images/s, fractions as plain numbers."""
    print(title)
    for name, value in figures.items():
        if name.endswith("speedup_fraction"):
            print(f"  {'speed-up (batched / one at a time)':<46}{value:>10.1f}x")
        elif name.endswith("fraction"):
            print(f"  {name.replace('_', ' '):<46}{value:>10.3f}")
        else:
            print(f"  {name.replace('_', ' '):<46}{value:>10.1f} images/s")


def bench_predict(config, num_images: int = 48) -> dict[str, float]:
    """Test images/s of the batched predict + submit path next to the same models driven one image at a
    time (a batch of one, resize, per-class encode), as a notebook loop would do it.

    Models are freshly built at the configuration's sizes (random weights: speed does not depend on them).
    """
    import cv2

    from voc_pipeline.core.probability import sigmoid
    from voc_pipeline.core.thresholds import apply_thresholds
    from voc_pipeline.models.classifier import predict_probabilities
    from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER
    from voc_pipeline.models.segmenter import predict_label_maps, softmax

    rng = np.random.default_rng(config.seed)
    images = [rng.integers(0, 256, size=(int(rng.integers(300, 501)), int(rng.integers(300, 501)), 3), dtype=np.uint8)
              for _ in range(num_images)]
    ids = np.arange(num_images)
    classifier_settings, segmenter_settings = config.classifier, config.segmenter
    classifier = CLASSIFIER.build(classifier_settings, weights="none")
    segmenter = SEGMENTER.build(segmenter_settings, weights="none")
    thresholds = np.full(NUM_CLASSES, 0.5)
    batch_size = config.inference.batch_size

    def batched():
        flags = apply_thresholds(predict_probabilities([classifier], images, batch_size, flip_tta=False), thresholds)
        maps = predict_label_maps(segmenter, images, segmenter_settings.image_size, segmenter_settings.output_stride,
                                  batch_size, flip_tta=False)
        return submission_text(make_test_frame(ids, flags, maps))

    def one_at_a_time():
        flags, maps = [], []
        for image in images:
            resized = cv2.resize(image, (classifier_settings.image_size,) * 2, interpolation=cv2.INTER_AREA)
            probabilities = sigmoid(classifier.predict(resized[None], verbose=0))
            flags.append(apply_thresholds(probabilities, thresholds)[0])
            size = segmenter_settings.image_size
            scale = size / max(image.shape[:2])
            height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
            letterboxed = np.zeros((size, size, 3), np.uint8)
            letterboxed[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            logits = segmenter.predict(letterboxed[None], verbose=0)[0, :height, :width]
            probabilities_map = cv2.resize(softmax(logits), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            maps.append(probabilities_map.argmax(-1).astype(np.uint8))
        return reference_submission_csv(make_test_frame(ids, np.array(flags), maps))

    batched()  # warm-up: traces and compiles
    one_at_a_time_seconds, _ = best_time(one_at_a_time, 1)
    batched_seconds, _ = best_time(batched, 1)
    figures = {"batched_images_per_second": num_images / batched_seconds,
               "one_at_a_time_images_per_second": num_images / one_at_a_time_seconds}
    figures["speedup_fraction"] = figures["batched_images_per_second"] / figures["one_at_a_time_images_per_second"]
    print_figures(f"predict + submit, {num_images} test images of 300-500 px, classifier {classifier_settings.backbone} "
                  f"at {classifier_settings.image_size} px, segmenter {segmenter_settings.backbone} at "
                  f"{segmenter_settings.image_size} px, batch {batch_size}, no TTA:", figures)
    return figures


def bench_determinism(profile: str | None, assignments: tuple[str, ...], repeats: int = 2) -> dict[str, float]:
    """Training speed of the classifier and the segmenter with TensorFlow op determinism off and on.

    Op determinism is process-wide, so each measurement is `voc-pipeline bench classifier|segmenter` in a
    child process, off and on alternately so that a drift of the machine's speed hits both alike; the best
    of `repeats` runs of each is printed.
    """
    import json
    import subprocess
    import sys

    base = [sys.executable, "-m", "voc_pipeline", "--log-level", "ERROR", "bench"]
    options = [*(["--profile", profile] if profile else []), *(item for assignment in assignments for item in ("--set", assignment))]
    rates: dict[tuple[str, bool], float] = {}
    for _ in range(repeats):
        for model in ("classifier", "segmenter"):
            for deterministic in (False, True):
                command = [*base, model, *options, "--set", f"deterministic={str(deterministic).lower()}", "--json"]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                figures = json.loads(result.stdout.strip().splitlines()[-1])
                rate = figures["train_pipeline_images_per_second"]
                rates[model, deterministic] = max(rates.get((model, deterministic), 0.0), rate)
    print(f"training images/s through the input pipeline, best of {repeats} child processes each "
          f"(profile {profile or 'defaults'}):")
    print(f"  {'model':<12}{'determinism off':>18}{'determinism on':>18}{'cost':>10}")
    figures = {}
    for model in ("classifier", "segmenter"):
        off, on = rates[model, False], rates[model, True]
        figures[f"{model}_cost_fraction"] = 1.0 - on / off
        print(f"  {model:<12}{off:>18.1f}{on:>18.1f}{figures[f'{model}_cost_fraction']:>10.1%}")
    return figures


# Assumed sustained throughput of one T4 in mixed precision for these convolutional networks: between 5%
# and 15% of its 65 TFLOPS tensor-core peak (depthwise convolutions, batch norm and input pipelines keep
# real networks far from peak), and 1.8x for two of them under MirroredStrategy. An assumption, printed
# with every estimate as a range.
T4_FLOPS_RANGE = (3e12, 10e12)
TWO_T4_SPEEDUP = 1.8
COMPETITION_TRAIN_IMAGES, COMPETITION_TEST_IMAGES = 749, 750


def forward_flops(model, image_size: int) -> float:
    """Floating-point operations of one forward pass of one image_size square image (TensorFlow's profiler)."""
    import logging
    import re

    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    @tf.autograph.experimental.do_not_convert
    def forward(images):
        return model(images, training=False)

    graph = tf.function(forward).get_concrete_function(tf.TensorSpec((1, image_size, image_size, 3), tf.uint8)).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    # The profiler's FLOP counters call TensorFlow v1 graph functions, which log "From .../profiler/...: X is
    # deprecated" once per process through the "tensorflow" logger; the notebook's time-estimate cell would show
    # it to a reader who can do nothing about it. Those records, and only during the count, are dropped.
    profiler_deprecation = re.compile(r"[\\/]profiler[\\/].* is deprecated")

    def not_a_profiler_deprecation(record: logging.LogRecord) -> bool:
        return not profiler_deprecation.search(record.getMessage())

    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.addFilter(not_a_profiler_deprecation)
    try:
        return float(model_analyzer.profile(graph, options=options).total_float_ops)
    finally:
        tensorflow_logger.removeFilter(not_a_profiler_deprecation)


def measured_step_seconds(model, loss, batch: tuple[np.ndarray, np.ndarray]) -> float:
    """Seconds of one training step here, after a warm-up step (which traces and compiles)."""
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    model.train_on_batch(*batch)
    start = time.perf_counter()
    model.train_on_batch(*batch)
    return time.perf_counter() - start


def attack_flops(config, classifier_flops: float, segmenter_flops: float) -> float:
    """Floating-point operations of the attack stage: at every budget, FGSM (one step) and PGD (pgd_steps steps) on
    three classifier attacks and one segmenter attack. An attack of s steps costs about 4s + 1 forward passes (a
    forward pass at each of its s + 1 iterates, a backward pass of about twice that at s of them, and each iterate
    scored once more), and its result is predicted twice (with and without the defence)."""
    settings = config.attack
    passes = sum(4 * steps + 1 + 2 for steps in (1, settings.pgd_steps))
    return settings.num_images * len(settings.epsilons) * passes * (3 * classifier_flops + segmenter_flops)


def bench_estimate(config, predict_only: bool = False) -> dict[str, float]:
    """A measured training step of each head here, and an ESTIMATE of the profile's full run on Kaggle's two
    T4s from the heads' counted FLOPs (training = 3x forward, every planned epoch run, no early stop), the
    predictions, the refit on every image (refit_all) and the adversarial attack included.

    With `predict_only`, what a notebook predicting from a trained run runs: the test predictions and the attack
    (evaluate and submit load no model); nothing is trained or measured training."""
    from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER

    classifier_settings, segmenter_settings = config.classifier, config.segmenter
    rng = np.random.default_rng(config.seed)
    classifier = CLASSIFIER.build(classifier_settings, weights="none")
    segmenter = SEGMENTER.build(segmenter_settings, weights="none")
    figures = {"classifier_forward_gflops": forward_flops(classifier, classifier_settings.image_size) / 1e9,
               "segmenter_forward_gflops": forward_flops(segmenter, segmenter_settings.image_size) / 1e9}
    views = (2 if config.inference.classifier_flip_tta else 1) * (config.data.num_folds if classifier_settings.kfold else 1)
    segmenter_views = (2 if config.inference.segmenter_flip_tta else 1) * sum(scale ** 2 for scale in config.inference.segmenter_scales)
    attack = attack_flops(config, figures["classifier_forward_gflops"] * 1e9, figures["segmenter_forward_gflops"] * 1e9)
    if predict_only:
        flops = {"prediction (test)": (figures["classifier_forward_gflops"] * views + figures["segmenter_forward_gflops"]
                                       * segmenter_views) * 1e9 * COMPETITION_TEST_IMAGES,
                 "adversarial attack": attack}
        print(f"a notebook predicting from a trained run, at {classifier_settings.backbone} {classifier_settings.image_size} "
              f"px and a segmenter on {segmenter_settings.backbone} {segmenter_settings.image_size} px (no training):")
        return print_estimate(figures, flops)
    size, batch = classifier_settings.image_size, classifier_settings.batch_size
    figures["classifier_step_seconds_here"] = measured_step_seconds(
        classifier, CLASSIFIER.loss(classifier_settings),
        (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), (rng.random((batch, NUM_CLASSES)) < 0.1).astype("float32")))
    size, batch = segmenter_settings.image_size, segmenter_settings.batch_size
    figures["segmenter_step_seconds_here"] = measured_step_seconds(
        segmenter, SEGMENTER.loss(segmenter_settings),
        (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), rng.integers(0, NUM_CLASSES + 1, (batch, size, size))))

    fit_images = COMPETITION_TRAIN_IMAGES * (1 - config.data.validation_fraction)
    classifier_images = (COMPETITION_TRAIN_IMAGES * (config.data.num_folds - 1) if classifier_settings.kfold else fit_images)
    classifier_epochs = classifier_settings.head_epochs + classifier_settings.finetune_epochs
    segmenter_epochs = segmenter_settings.head_epochs + segmenter_settings.finetune_epochs
    # Each epoch also predicts its validation images once (K folds together validate every image once).
    classifier_validation = COMPETITION_TRAIN_IMAGES if classifier_settings.kfold else COMPETITION_TRAIN_IMAGES - fit_images
    flops = {
        "classifier training": figures["classifier_forward_gflops"] * 1e9 * classifier_epochs
                               * (3 * classifier_images + classifier_validation),
        "segmenter training": figures["segmenter_forward_gflops"] * 1e9 * segmenter_epochs
                              * (3 * fit_images + COMPETITION_TRAIN_IMAGES - fit_images),
        "prediction (validation and test)": (figures["classifier_forward_gflops"] * views + figures["segmenter_forward_gflops"]
                                             * segmenter_views * 2) * 1e9 * COMPETITION_TEST_IMAGES,
        "adversarial attack": attack,
    }
    # The refit runs at most every planned epoch (it stops at the epoch validation kept), on every labelled
    # image and with no validation pass; a K-fold classifier is not refit.
    if classifier_settings.refit_all and not classifier_settings.kfold:
        flops["classifier refit (every image)"] = (figures["classifier_forward_gflops"] * 1e9 * classifier_epochs
                                                   * 3 * COMPETITION_TRAIN_IMAGES)
    if segmenter_settings.refit_all:
        flops["segmenter refit (every image)"] = (figures["segmenter_forward_gflops"] * 1e9 * segmenter_epochs
                                                  * 3 * COMPETITION_TRAIN_IMAGES)
    # Each self-training round predicts the validation and test images once and trains both heads for its epochs on
    # at most every fit and test image (every test image pseudo-labelled: the upper bound); the self-trained models
    # then predict validation once more, to be compared with the first ones.
    rounds = config.self_training.rounds
    if rounds:
        images = fit_images + COMPETITION_TEST_IMAGES
        validation = COMPETITION_TRAIN_IMAGES - fit_images
        per_image = figures["classifier_forward_gflops"] * views + figures["segmenter_forward_gflops"] * segmenter_views
        flops["self-training (every test image pseudo-labelled)"] = 1e9 * (
            rounds * (figures["classifier_forward_gflops"] + figures["segmenter_forward_gflops"])
            * config.self_training.epochs * (3 * images + validation)
            + per_image * (rounds * (COMPETITION_TEST_IMAGES + validation) + validation))
    print(f"profile at {classifier_settings.backbone} {classifier_settings.image_size} px and a segmenter on "
          f"{segmenter_settings.backbone} {segmenter_settings.image_size} px:")
    print(f"  measured here: one training step {figures['classifier_step_seconds_here']:.2f} s (classifier, batch "
          f"{classifier_settings.batch_size}), {figures['segmenter_step_seconds_here']:.2f} s (segmenter, batch "
          f"{segmenter_settings.batch_size})")
    return print_estimate(figures, flops, "; every planned epoch run, no early stop, in the refit too")


def print_estimate(figures: dict[str, float], flops: dict[str, float], assumption: str = "") -> dict[str, float]:
    """Print the forward passes' size and each part's hours on Kaggle's two T4s from its FLOPs; adds the hours to
    `figures` (estimated_hours_<part>_low/_high) and returns it."""
    slow, fast = (flops_per_second * TWO_T4_SPEEDUP for flops_per_second in T4_FLOPS_RANGE)
    print(f"  forward pass: classifier {figures['classifier_forward_gflops']:.1f} GFLOPs, segmenter "
          f"{figures['segmenter_forward_gflops']:.1f} GFLOPs per image")
    print(f"  ESTIMATE on Kaggle's two T4s (assumed {T4_FLOPS_RANGE[0] / 1e12:.0f} to {T4_FLOPS_RANGE[1] / 1e12:.0f} TFLOPS "
          f"sustained per T4, {TWO_T4_SPEEDUP}x for two{assumption}; start-up and data loading not counted):")
    for name, total in [*flops.items(), ("total", sum(flops.values()))]:
        key = "estimated_hours_" + "_".join(name.split(" (")[0].split())
        figures[key + "_low"], figures[key + "_high"] = total / fast / 3600, total / slow / 3600
        low, high = figures[key + "_low"], figures[key + "_high"]
        span = f"{low:>6.2f} to {high:.2f} h" if high >= 1 else f"{low * 60:>6.1f} to {high * 60:.1f} min"
        print(f"    {name:<34}{span}")
    return figures


def bench_run_dataset(config) -> dict[str, float]:
    """The size of the dataset `kernel build --trained` uploads for a run of this profile: each head's saved model
    (built at the profile's sizes with random weights: the same number of weights), times the models the run keeps
    (one per fold, and the refit's), plus what carrying a run adds besides models (its records, decisions, curves)."""
    import tempfile
    from pathlib import Path

    from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER

    classifier_settings, segmenter_settings = config.classifier, config.segmenter
    counts = {"classifier": (config.data.num_folds if classifier_settings.kfold else 1)
                            + (1 if classifier_settings.refit_all and not classifier_settings.kfold else 0),
              "segmenter": 1 + (1 if segmenter_settings.refit_all else 0)}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="voc-pipeline-bench-") as folder:
        for head in (CLASSIFIER, SEGMENTER):
            path = Path(folder) / f"{head.name}.keras"
            head.build(head.settings(config), weights="none").save(path)
            sizes[head.name] = path.stat().st_size
    figures = {f"{name}_model_megabytes": size / 1e6 for name, size in sizes.items()}
    figures["models_megabytes"] = sum(sizes[name] * counts[name] for name in sizes) / 1e6
    print(f"a trained run's dataset for this profile (classifier {classifier_settings.backbone} "
          f"{classifier_settings.image_size} px, segmenter on {segmenter_settings.backbone}):")
    for name in sizes:
        print(f"  {name}: {counts[name]} model{'s' if counts[name] > 1 else ''} of {sizes[name] / 1e6:.1f} MB")
    print(f"  models in all: {figures['models_megabytes']:.1f} MB, plus about {CARRIED_SMALL_FILES_MEGABYTES:g} MB of "
          f"records, decisions, validation predictions and figures")
    return figures


# What a carried run holds besides models, measured on the demo's run (splits, manifests, histories, decisions,
# validation predictions and figures): a few megabytes, growing with the number of validation images.
CARRIED_SMALL_FILES_MEGABYTES = 2


def bench_features(config, num_images: int = 32) -> dict[str, float]:
    """What caching a frozen encoder's features buys, for each head of the profile that trains on them: images/s of
    the feature extraction (done once per run, for every training image and its mirror image), head epochs/s on the
    cached features, and the end-to-end training of the same model with the encoder frozen (its forward pass in
    every step), here; then both trainings' time for the profile's epochs on the competition's images. Random
    weights: the speed does not depend on them."""
    import keras

    from voc_pipeline.models.features import split_at_head
    from voc_pipeline.models.heads import CLASSIFIER, SEGMENTER
    from voc_pipeline.models.training import seed_everything

    seed_everything(config.seed, config.deterministic)
    figures: dict[str, float] = {}
    fit_images = COMPETITION_TRAIN_IMAGES * (1 - config.data.validation_fraction)
    for head in (CLASSIFIER, SEGMENTER):
        settings = head.settings(config)
        if not head.trains_on_cached_features(settings):
            print(f"{head.name} {settings.backbone}: does not train on cached features (freeze_backbone with a token "
                  f"head, e.g. dinov2_small); skipped")
            continue
        data = synthetic_train_split(num_images, config.seed)
        batch = settings.batch_size
        model = head.build(settings, weights="none")
        encoder, head_model = split_at_head(model, head.name)
        images = next(iter(head.dataset(settings, data, np.arange(num_images), False, config.seed).unbatch()
                           .batch(num_images)))[0].numpy()
        encoder.predict_on_batch(images[:batch])  # traces
        start = time.perf_counter()
        features = np.concatenate([encoder.predict_on_batch(images[index:index + batch])
                                   for index in range(0, num_images, batch)])
        extraction = num_images / (time.perf_counter() - start)
        targets = next(iter(head.dataset(settings, data, np.arange(num_images), False, config.seed).unbatch()
                            .batch(num_images)))[1].numpy()
        head_model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=head.loss(settings))
        cached = tf_dataset(features.astype(np.float16).astype(np.float32), targets, batch)
        head_rate = num_images / timed_epoch(head_model, cached)
        model.get_layer("backbone").trainable = False
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=head.loss(settings))
        end_to_end_rate = num_images / timed_epoch(model, tf_dataset(images, targets, batch))
        epochs = settings.head_epochs
        cached_seconds = 2 * COMPETITION_TRAIN_IMAGES / extraction + epochs * fit_images / head_rate
        end_to_end_seconds = epochs * fit_images / end_to_end_rate
        figures |= {f"{head.name}_extraction_images_per_second": extraction,
                    f"{head.name}_head_epochs_per_second": head_rate / fit_images,
                    f"{head.name}_end_to_end_epochs_per_second": end_to_end_rate / fit_images,
                    f"{head.name}_speedup": end_to_end_seconds / cached_seconds}
        print(f"{head.name} on {settings.backbone} at {settings.image_size} px, batch {batch}, {num_images} VOC-sized "
              f"images, random weights, here:")
        print(f"  feature extraction (once):         {extraction:8.2f} images/s")
        print(f"  head on cached features:           {head_rate / fit_images:8.3f} epochs/s of {fit_images:.0f} images")
        print(f"  end to end, encoder frozen:        {end_to_end_rate / fit_images:8.4f} epochs/s")
        print(f"  {epochs} epochs on {COMPETITION_TRAIN_IMAGES} images: cached {cached_seconds / 60:.1f} min (extracting "
              f"{2 * COMPETITION_TRAIN_IMAGES} images and their mirrors included), end to end {end_to_end_seconds / 60:.1f} "
              f"min: {figures[f'{head.name}_speedup']:.1f}x faster")
    return figures


def tf_dataset(inputs: np.ndarray, targets: np.ndarray, batch_size: int):
    """Batches of (inputs, targets) held in memory."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(batch_size)


def timed_epoch(model, dataset) -> float:
    """Seconds of one epoch of `dataset` after a warm-up epoch (which traces and compiles)."""
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start
