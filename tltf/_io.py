"""Atomic file writes: every file tltf writes goes through here.

A file is written to a temporary name in the same folder and then moved over the
target with `os.replace`, which is atomic on POSIX and Windows. A crash or a
SIGKILL mid-write leaves the previous file intact (plus, at worst, a hidden
`.<name>.*.tmp` file that the next write of that file does not depend on).
Keras writes `.keras` and `.weights.h5` files in place, so a kill during
`model.save` would otherwise destroy the last good file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to `path`; moves it over `path` on success.

    The temporary name keeps the target's suffix (Keras checks `.keras` and
    `.weights.h5` suffixes). On an exception the temporary file is removed and
    `path` is left untouched.

    Example:

    >>> with atomic_path("run/model.keras") as tmp:
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = (
        "".join(path.suffixes[-2:])
        if path.name.endswith(".weights.h5")
        else path.suffix
    )
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary folder next to `path`; renames it to `path` on success.

    With `replace=True` an existing folder at `path` is swapped out only after the
    new one is complete (the old one is then deleted). On an exception the
    temporary folder is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    )
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
    try:
        yield tmp
        if path.exists():
            if not replace:
                raise FileExistsError(path)
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.name}.", suffix=".old", dir=path.parent
                )
            )
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes UTF-8 text to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Writes `obj` as JSON to `path` atomically (serialized before anything is written)."""
    return atomic_write_text(
        path, json.dumps(obj, indent=indent, default=_default) + "\n"
    )


def atomic_save_model(model, path: str | os.PathLike) -> Path:
    """Saves a Keras model (`.keras`) atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def atomic_save_weights(model, path: str | os.PathLike) -> Path:
    """Saves a Keras model's weights (`.weights.h5`) atomically."""
    with atomic_path(path) as tmp:
        tmp.unlink()  # h5py refuses to overwrite some empty files
        model.save_weights(tmp)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError:
        pass


def _default(value):
    # numpy scalars and arrays, Paths.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
