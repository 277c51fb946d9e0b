"""The benchmarks' counting, as the notebook's time-estimate cell shows it."""

import subprocess
import sys
import textwrap

import pytest

# Every Python warning of the count itself is shown (imports and the model's build come before).
COUNT_FLOPS = textwrap.dedent("""
    import warnings

    from voc_pipeline.bench import forward_flops
    from voc_pipeline.models.classifier import build_classifier

    model = build_classifier("simple_cnn", 32, weights="none")
    warnings.simplefilter("always")
    print(forward_flops(model, 32))
""")


@pytest.mark.slow
def test_counting_flops_prints_no_deprecation_notice():
    """The notebook shows what `bench estimate` prints (stdout and stderr); TensorFlow's profiler must not add
    its once-per-process deprecation notice (a log record, not a Python warning). A fresh process, as the
    notebook's; Python's warnings are shown too."""
    result = subprocess.run([sys.executable, "-c", COUNT_FLOPS],
                            capture_output=True, text=True, timeout=300, check=True)
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) > 0
