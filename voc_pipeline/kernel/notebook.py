"""What the Kaggle notebook's cells call besides the command line: run a `voc-pipeline` command with its output
shown in the cell, and display a part rendered from the run's files (voc_pipeline.report_parts).

The notebook imports this once the wheel is installed, so its cells stay a few lines each and a reader of
the report sees what runs, not plumbing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

# Lines a reader of the report gains nothing from: TensorFlow's native log lines (absl's "I0000 00:00:..." and
# "2026-12-01 09:45:04.38: E tensorflow/..."), unfinished progress bars, notes that a stage is current, and
# Markdown table rows the stages print, which the parts below render as tables (each table once).
NATIVE_LOG = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:|WARNING: All log messages before absl|"
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] )")
PROGRESS_BAR = re.compile(r"\|.*((it|image|file)/s\]|s/it\])")


def worth_showing(line: str) -> bool:
    """Whether a line a command printed belongs in the notebook."""
    if not line.strip() or NATIVE_LOG.match(line) or line.startswith("| "):
        return False
    if PROGRESS_BAR.search(line) and "100%" not in line:
        return False
    return "is current in" not in line or "skipped" not in line


def voc_pipeline_cli(*words: str, environment: dict | None = None) -> None:
    """Run `voc-pipeline WORDS` as a user would, in this notebook's Python, showing its output as it comes.

    Raises:
        RuntimeError: the command failed; the message holds its last lines (every line, unfiltered).
    """
    process = subprocess.Popen([sys.executable, "-m", "voc_pipeline", *words], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, **(environment or {})})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if worth_showing(line):
            print(line.rstrip("\n"), flush=True)
    if process.wait():
        raise RuntimeError(f"`voc-pipeline {' '.join(words[:3])} ...` failed (exit {process.returncode}):\n"
                           + "".join(lines[-30:]))


def show(blocks) -> None:
    """Display a part: Markdown text, and each figure once, embedded, under its title."""
    from IPython.display import Image, Markdown, display

    for block in blocks:
        if isinstance(block, str):
            display(Markdown(block))
        else:
            display(Markdown(f"**{block.title}**"))
            display(Image(filename=str(block.path)))


def internet_available() -> bool:
    """Whether Keras could download ImageNet weights from here."""
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
        return True
    except OSError:
        return False
