"""Keeps TensorFlow quiet on import, as a notebook user expects.

TF 2.21 writes INFO lines from C++ (oneDNN notice, "Could not find cuda drivers")
to stderr before absl logging is initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot hide
them. tltf imports TensorFlow and Keras once with the stderr file descriptor
captured, then replays every captured line except those INFO lines. Errors and
warnings still reach the user. Set `TLTF_VERBOSE_TF=1` (or TF_CPP_MIN_LOG_LEVEL=0)
to see everything. Where TensorFlow was imported first, its import-time lines
are out before tltf runs, but its device discovery is still captured.
"""

import logging
import os
import re
import sys
import tempfile
import warnings

_INFO_LINE = re.compile(
    r"^(I\d{4} .*|E\d{4} .*failed call to cuInit.*"
    r"|WARNING: All log messages before absl::InitializeLog\(\).*)$"
)


def _import_quietly() -> None:
    if os.environ.get("TLTF_VERBOSE_TF") == "1":
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    # Imported before tltf (`import keras` first, as the keras.io recipe does),
    # TensorFlow has written its import-time lines already; its device
    # discovery ("failed call to cuInit") waits for the first op, unless it
    # has run: it runs here, captured. (A second discovery writes nothing.)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # No real stderr (some notebook frontends).
        saved = None
    with tempfile.TemporaryFile(mode="w+b") as capture:
        if saved is not None:
            os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf

            # Device discovery logs "failed call to cuInit" on machines without a
            # GPU; do it now, while stderr is captured.
            tf.config.list_physical_devices()
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                for line in capture.read().decode(errors="replace").splitlines():
                    if line.strip() and not _INFO_LINE.match(line):
                        print(line, file=sys.stderr)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_import_quietly()
logging.getLogger("tensorflow").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*is not one of .* input_shape.*")
