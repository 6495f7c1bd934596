"""Where base weights come from: ImageNet downloads, an offline directory, files.

`weights="imagenet"` keeps Keras's own download and cache (`~/.keras/models`). tltf
only looks in an offline weights directory first (the `weights_dir` argument, else
`$TLTF_WEIGHTS_DIR`), and turns a failed download into an error that names the
exact file to place and where.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

import keras
from keras.src.utils import file_utils

from tltf.bases.registry import OFFLINE_BASE_HINT
from tltf.errors import WeightsError

WEIGHTS_DIR_ENV = "TLTF_WEIGHTS_DIR"


def resolve_weights_dir(weights_dir: str | os.PathLike | None) -> Path | None:
    """The offline weights directory: the argument, else `$TLTF_WEIGHTS_DIR`."""
    value = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


@contextlib.contextmanager
def offline_first(weights_dir: Path | None, what: str) -> Iterator[None]:
    """Routes Keras's weight downloads through the offline directory.

    Inside the context, every `get_file(fname, origin)` that a Keras Applications
    constructor makes first looks for `weights_dir / fname`. Only when that file is
    absent does Keras's real download (and cache) run. A failed download raises a
    `WeightsError` that names the file and where to place it.

    Args:
        weights_dir: Path or None. The offline directory.
        what: str. What is being loaded, for the error message.
    """
    real_get_file = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        name = fname or Path(urllib.parse.urlparse(origin or "").path).name
        if weights_dir is not None and (weights_dir / name).is_file():
            return str(weights_dir / name)
        try:
            return real_get_file(fname, origin, *args, **kwargs)
        except Exception as error:  # Keras raises a bare Exception on URL errors.
            place = weights_dir or f"${WEIGHTS_DIR_ENV} (or {_keras_cache_dir()})"
            raise WeightsError(
                f"Could not download the ImageNet weights of {what}: {name} from "
                f"{origin} ({error.__class__.__name__}: {error}). If this machine is "
                f"offline, download that URL elsewhere and place the file at "
                f"{place}/{name}, or pass `weights_dir=` / set ${WEIGHTS_DIR_ENV} to "
                "the folder holding it. For random weights, pass weights=None "
                f"(`--weights none` in tltf train and tune). {OFFLINE_BASE_HINT}"
            ) from None

    file_utils.get_file = get_file
    keras.utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = real_get_file
        keras.utils.get_file = real_get_file


def load_weights_file(model: keras.Model, path: str | os.PathLike, what: str) -> None:
    """Loads a weights file into `model`, with a clear error on a mismatch."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {str(path)!r} does not exist. Expected weights='imagenet', "
            "None, or the path of a weights file for this architecture (on the "
            "command line: `--weights imagenet`, `none` or a path)."
        )
    try:
        with warnings.catch_warnings():
            # A mismatched file makes Keras warn once per layer before it fails;
            # the error below says it once.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            warnings.filterwarnings("ignore", message=".*(?i:mismatch|skipping)")
            model.load_weights(str(path))
    except Exception as error:
        raise WeightsError(
            f"The weights file {str(path)!r} does not match {what} "
            f"({error.__class__.__name__}: {str(error).splitlines()[0][:300]}). "
            "Check that it was saved from the same architecture, width and "
            "include_top=False, or use weights='imagenet' / None."
        ) from None
