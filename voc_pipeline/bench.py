"""`voc-pipeline bench ...`: figures printed side by side from one run on this machine."""

from __future__ import annotations

import time

import cv2
import numpy as np

from voc_pipeline.classes import NUM_CLASSES
from voc_pipeline.submission import make_test_frame, reference_submission_csv, submission_text


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
