"""TensorFlow's native log lines (absl's format, written by its C++ runtime), kept out of a user's terminal.

TensorFlow 2.20+ writes some start-up lines before its own logging reads TF_CPP_MIN_LOG_LEVEL, so besides
setting the level the command line filters the process's stderr through a pipe while a command runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

# TensorFlow's native start-up and kernel-selection lines (absl's format), which a user cannot act on.
NATIVE_LOG_LINE = re.compile(rb"(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "
                             rb"[\w.]+:\d+\]|To enable the following instructions: )")
NATIVE_LOG_STARTS = (b"WARNING: All log messages", b"I0000", b"W0000", b"E0000", b"To enable the following")


def forward_without_native_logs(source: int, destination: int) -> None:
    """Copy bytes from `source` to `destination` until EOF, dropping TensorFlow's native log lines.

    Text is forwarded as soon as it cannot be the start of such a line, so progress bars that redraw
    with carriage returns keep appearing as they are drawn.
    """
    pending = b""
    while chunk := os.read(source, 65536):
        pending += chunk
        while pending:
            cut = min((index for index in (pending.find(b"\n"), pending.find(b"\r")) if index >= 0), default=-1)
            if cut < 0:
                if not any(start.startswith(pending[:len(start)]) for start in NATIVE_LOG_STARTS):
                    os.write(destination, pending)
                    pending = b""
                break
            segment, pending = pending[:cut + 1], pending[cut + 1:]
            if not NATIVE_LOG_LINE.match(segment):
                os.write(destination, segment)
    if pending and not NATIVE_LOG_LINE.match(pending):
        os.write(destination, pending)


@contextlib.contextmanager
def quiet_tensorflow(log_level: str):
    """Keep TensorFlow's native log lines out of the output, unless the user set TF_CPP_MIN_LOG_LEVEL or asked
    for --log-level DEBUG: the level is set before TensorFlow is imported, and since TensorFlow 2.20+ writes
    some lines before its logging reads it, those are also filtered from the process's stderr."""
    if log_level == "DEBUG" or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    logging.getLogger("absl").setLevel(logging.ERROR)
    read_end, write_end = os.pipe()
    original = os.dup(2)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=forward_without_native_logs, args=(read_end, original), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the forwarder drains it and stops
        forwarder.join(timeout=10)
        os.close(read_end)
        os.close(original)
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]
