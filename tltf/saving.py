"""Loading `.keras` (and legacy `.h5`) models safely: `load_model` and `as_model`.

It sits below `model` and `bases` so that both can load files without importing
each other.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import keras

# Keras has no public form of this scope; `keras.saving.load_model(safe_mode=True)`
# alone is overridden by Keras's process-wide unsafe-deserialization switch.
from keras.src.saving.serialization_lib import SafeModeScope

from tltf.errors import ConfigError, ModelError

#: The suffixes of the model files `load_model` reads: Keras 3's `.keras`
#: archive and the legacy HDF5 file of Keras 2 (`model.save("m.h5")`).
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
LEGACY_SUFFIXES = (".h5", ".hdf5")


def as_model(model: keras.Model | str | os.PathLike) -> keras.Model:
    """A keras.Model as given, or loaded (safely) from the path of a `.keras` file."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not isinstance(model, keras.Model):
        raise ModelError(
            "Expected a keras.Model or the path of a .keras file. Received: "
            f"{type(model).__name__}"
        )
    return model


def load_model(path: str | os.PathLike, **kwargs) -> keras.Model:
    """Loads a `.keras` model, always with `safe_mode=True`.

    A legacy HDF5 model (`.h5` or `.hdf5`, as Keras 2 saved them) loads too, also
    in safe mode, and uncompiled unless `compile=True` is passed: a Keras 2
    training config names optimizer arguments (`lr`) that Keras 3 rejects.
    tltf's layers are registered on import, so no `custom_objects` are needed.
    Safe mode is forced for the whole load, also when Keras's global switch for
    unsafe deserialization is on, so no code stored in the file (a Lambda layer's
    function, say) ever runs. A missing, truncated or unsafe file, or one that
    names an unknown class or function, raises a `ModelError` that says so, and
    the file is left untouched.

    Args:
        path: str or PathLike. The `.keras` (or `.h5`, `.hdf5`) file.
        **kwargs: Passed to `keras.saving.load_model`, except `safe_mode`.

    Returns:
        The model.

    Example:

    >>> model = tltf.load_model("runs/flowers/best.keras")
    """
    if kwargs.pop("safe_mode", True) is not True:
        raise ConfigError("tltf only loads models with safe_mode=True.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"Model file {str(path)!r} does not exist.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(
            f"{str(path)!r} is not a valid .keras file (it is truncated or not a "
            "zip archive). Re-export it, or use the run's last good checkpoint."
        )
    if path.suffix.lower() in LEGACY_SUFFIXES:
        kwargs.setdefault("compile", False)
    try:
        with SafeModeScope(True):
            return keras.saving.load_model(path, safe_mode=True, **kwargs)
    except TypeError as error:
        # Keras reports an unknown or invalid object as a TypeError that wraps
        # the real cause, several levels deep.
        raise ModelError(_deserialization_problem(path, error)) from None
    except ValueError as error:
        message = str(error)
        if "Lambda" in message or "safe_mode" in message:
            raise ModelError(
                f"{str(path)!r} holds a Lambda layer or other arbitrary code, which "
                "tltf refuses to load (safe_mode=True). Rebuild the model with "
                "registered layers instead of Lambda layers."
            ) from None
        raise ModelError(
            f"Could not load {str(path)!r}: {message.splitlines()[0]}"
        ) from None
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ModelError(
            f"Could not load {str(path)!r} ({error.__class__.__name__}: {error}). The "
            "file may be truncated; use the last good checkpoint."
        ) from None


_UNKNOWN_OBJECT = re.compile(
    r"Could not locate (class|function) '([^']*)'"
    r"(?:.*?Full object config: \{'module': '([^']*)')?",
    re.DOTALL,
)


_BAD_CLASS = re.compile(r"<class '([^']+)'> could not be deserialized")


def _deserialization_problem(path: Path, error: BaseException) -> str:
    """One message for Keras's nested deserialization errors: what, where, the fix."""
    chain = [error]
    while chain[-1].__context__ is not None and len(chain) < 50:
        chain.append(chain[-1].__context__)
    cause = str(chain[-1]).strip()
    unknown = _UNKNOWN_OBJECT.search(cause)
    if unknown:
        kind, name, module = unknown.groups()
        qualified = f"{module}.{name}" if module else name
        return (
            f"Could not load {str(path)!r}: it names the {kind} {qualified!r}, which "
            "is not a registered Keras object; tltf did not import or run it. If it "
            "is your own layer or function, import the module that registers it "
            "(@keras.saving.register_keras_serializable) before loading; otherwise "
            "re-export the model from the code that built it."
        )
    classes = [m.group(1) for e in chain for m in [_BAD_CLASS.search(str(e))] if m]
    where = f" of {classes[-1].rsplit('.', 1)[-1]!r}" if classes else ""
    reason = cause.rsplit("Exception encountered:", 1)[-1].strip().splitlines()
    return (
        f"Could not load {str(path)!r}: the saved config{where} is invalid: "
        f"{reason[0] if reason else type(chain[-1]).__name__}. The file was edited "
        "or written by other code; re-export the model from the code that built it."
    )
