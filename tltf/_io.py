"""Atomic file writes: every file tltf writes goes through here.

A file is written to a temporary name in the same folder and then moved over the
target with `os.replace`, which is atomic on POSIX and Windows. A crash or a
SIGKILL mid-write leaves the previous file intact (plus, at worst, a hidden
`.<name>.*.tmp` file that the next write of that file does not depend on, and
that `sweep_tmp_files` removes). Keras writes `.keras` and `.weights.h5` files in
place, so a kill during `model.save` would otherwise destroy the last good file.

A full disk raises `DiskFullError`, naming the file; the previous file is kept.
A folder (`atomic_dir`) replaces only a folder that tltf wrote, never a user's.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tltf.errors import ConfigError, DiskFullError

#: The names `atomic_path` gives its temporary files: `.<name>.<8 random>.tmp<suffix>`.
TMP_FILE_PATTERN = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>(\.\w+)*)")


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
    except Exception as error:
        if is_disk_full(error):
            raise DiskFullError(disk_full_message(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def is_disk_full(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the disk or quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):  # h5py and TF drop the errno
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(path: str | os.PathLike) -> str:
    """The message of a `DiskFullError` while writing `path`."""
    return (
        f"The disk is full: tltf could not write {str(path)!r} (no space left on "
        "device). The previous version of that file, if any, is kept. Free some "
        "disk space or choose a folder on another disk, then run again (an "
        "interrupted run continues with --resume)."
    )


def sweep_tmp_files(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files a killed `atomic_path` left in a folder tree.

    Only files named as `atomic_path` names them (`.<name>.<8 random>.tmp<suffix>`,
    the suffix being the target's own) are removed: a user's file stays.

    Args:
        folder: str or PathLike. The folder, searched with its subfolders.

    Returns:
        The removed files.

    Example:

    >>> sweep_tmp_files("runs/flowers")
    [PosixPath('runs/flowers/.best.keras.k3j_2x9a.tmp.keras')]
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        match = TMP_FILE_PATTERN.fullmatch(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if not match["suffix"] or not match["name"].endswith(match["suffix"]):
            continue  # atomic_path keeps the suffix of the target (tltf's have one)
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _not_replaceable(path: Path, what: str) -> ConfigError:
    """The error for a path that holds something of the user's."""
    kind = "folder" if path.is_dir() else "file"
    return ConfigError(
        f"Expected {str(path)!r} to be a new path or a {what} that tltf wrote. "
        f"Received: an existing {kind} that tltf did not write; tltf never replaces "
        f"it. Choose another path, or move {str(path)!r} away first."
    )


def check_replaceable(
    path: str | os.PathLike,
    marker: str | None = None,
    recognise: Callable[[Path], bool] | None = None,
    what: str = "folder",
) -> None:
    """Raises unless `atomic_dir` may replace what is at `path`.

    Nothing of the user's may be lost: `path` may be absent, an empty folder, a
    folder holding the file `marker` (which `atomic_dir` writes into every folder
    it makes), or a folder that `recognise` accepts (one tltf wrote before it
    wrote markers).

    Args:
        path: str or PathLike. The destination.
        marker: str or None. The marker file's name. Defaults to None (no marker).
        recognise: callable or None. `recognise(folder) -> bool`. Defaults to None.
        what: str. What tltf writes there, for the message, e.g. "SavedModel
            export". Defaults to "folder".

    Raises:
        ConfigError: `path` is a file, or a folder that tltf did not write.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and (
        not any(path.iterdir())
        or (marker is not None and (path / marker).is_file())
        or (recognise is not None and recognise(path))
    ):
        return
    raise _not_replaceable(path, what)


def check_file_replaceable(
    path: str | os.PathLike, recognise: Callable[[Path], bool], what: str
) -> None:
    """Raises unless a file that tltf writes at a path a user names may go there.

    Nothing of the user's may be lost: `path` may be absent, or a file that
    `recognise` accepts as one of the kind tltf writes there (its predictions,
    report, table, figure or model export), as `check_replaceable` accepts a
    bare SavedModel folder. A folder is never replaced by a file.

    Args:
        path: str or PathLike. The destination file.
        recognise: callable. `recognise(file) -> bool`; it must not raise.
        what: str. What tltf writes there, for the message, e.g. "predictions
            file".

    Raises:
        ConfigError: `path` is a folder, or a file that tltf did not write.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() and recognise(path):
        return
    raise _not_replaceable(path, what)


def _head(path: Path, size: int = 65536) -> bytes:
    """The first `size` bytes of a file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def csv_header(path: Path) -> list[str]:
    """The first line of a CSV file as its column names ([] if unreadable)."""
    first = _head(path).split(b"\n", 1)[0].decode("utf-8", errors="replace")
    try:
        return next(csv.reader([first.rstrip("\r")]), [])
    except csv.Error:
        return []


def csv_table(first_column: str) -> Callable[[Path], bool]:
    """Recognises a CSV table tltf writes by its first column (`block`,
    `candidate`): the `recognise` of `check_file_replaceable` for it."""
    return lambda path: csv_header(path)[:1] == [first_column]


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_matplotlib_png(path: Path) -> bool:
    """A PNG that Matplotlib wrote (its tEXt chunk names it): a figure.

    Every figure tltf writes is one; a photo or a drawing of the user's, as a
    rule, is not.
    """
    head = _head(path, 4096)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Matplotlib" in head


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    marker: str | None = None,
    recognise: Callable[[Path], bool] | None = None,
    what: str = "folder",
) -> Iterator[Path]:
    """Yields a temporary folder next to `path`; renames it to `path` on success.

    An existing `path` is replaced only if `check_replaceable` allows it (an
    empty folder, or one tltf wrote: it holds `marker`, or `recognise` accepts
    it), checked on entry, before any work, and again at the swap. It is swapped
    out only after the new folder is complete (the old one is then deleted). On
    an exception the temporary folder is removed and `path` is left untouched.

    Args:
        path: str or PathLike. The destination folder.
        marker: str or None. An empty file of this name is written into the new
            folder: the proof that tltf wrote it. Defaults to None.
        recognise: callable or None. Accepts an existing folder tltf wrote
            without a marker. Defaults to None.
        what: str. What the folder is, for the error message. Defaults to
            "folder".

    Raises:
        ConfigError: `path` exists and tltf did not write it.
        DiskFullError: the disk is full.

    Example:

    >>> with atomic_dir("export/flowers", marker=".tltf-savedmodel") as tmp:
    ...     model.export(str(tmp))
    """
    path = Path(path)
    check_replaceable(path, marker, recognise, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    )
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
    try:
        yield tmp
        if marker is not None:
            (tmp / marker).write_bytes(b"")
        check_replaceable(path, marker, recognise, what)
        if path.exists() or path.is_symlink():
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
    except Exception as error:
        if is_disk_full(error):
            raise DiskFullError(disk_full_message(path)) from None
        raise
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


def atomic_write_csv(path: str | os.PathLike, rows, columns) -> Path:
    """Writes dict rows as CSV (a header of `columns`, then one line each) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


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
