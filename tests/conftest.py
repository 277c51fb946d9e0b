"""Shared fixtures: the synthetic demo data set and, when present, the real VOC sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from voc_pipeline.demo_data import write_demo_data

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo data set in the competition layout (read-only for tests: copy before breaking it)."""
    return write_demo_data(tmp_path_factory.mktemp("demo") / "data", num_train=24, num_test=8, seed=3)


@pytest.fixture
def voc_sample() -> Path:
    """The real VOC2012 sample beside the checkout; the test is skipped where it is absent."""
    if not (VOC_SAMPLE / "VOC2012" / "JPEGImages").is_dir():
        pytest.skip(f"{VOC_SAMPLE} is absent")
    return VOC_SAMPLE
