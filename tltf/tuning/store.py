"""The project folder's locks and the stage-1 store.

`project_lock` holds a project for one search; `HeadStore` keeps stage 1 (weights
and a JSON record) per head key in `<project>/tltf_heads/`, with atomic writes and
lock files so that distributed workers can share it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import keras

from tltf._io import atomic_save_weights, atomic_write_json
from tltf.errors import ConfigError
from tltf.locks import Heartbeat, LockFile

HEADS_DIR = "tltf_heads"
PROJECT_LOCK = "tltf_project.lock"
#: What a project folder holds once a search has started in it: tltf's lock
#: (written first) and stage-1 store, keras-tuner's oracle and tuner state.
_PROJECT_ENTRIES = (PROJECT_LOCK, HEADS_DIR, "oracle.json", "tuner0.json")


def check_project_folder(directory, project_name) -> Path:
    """The project folder `directory/project_name`, once it is known that a
    search may write there (and, with `overwrite=True`, empty it).

    Nothing of the user's may be lost: the folder may be absent, empty, or a
    project that a search wrote (tltf's lock or stage-1 store, keras-tuner's
    oracle, or its `trial_*` folders).

    Raises:
        ConfigError: `directory` or the project is a file, or the project is a
            folder of the user's.
    """
    project = Path(directory) / str(project_name)
    for path in (*reversed(project.parents), project):
        if path.exists() and not path.is_dir():
            what = (
                f"the tuning project {str(path)!r}"
                if path == project
                else f"{str(path)!r}, where tune() writes its project {str(project)!r},"
            )
            raise ConfigError(
                f"Expected {what} to be a folder. Received: a file; tltf never "
                "replaces it. Pass another directory= or project_name=."
            )
    if not project.is_dir() or not any(project.iterdir()):
        return project
    names = {child.name for child in project.iterdir()}
    if names & set(_PROJECT_ENTRIES) or any(
        name.startswith("trial_") and (project / name).is_dir() for name in names
    ):
        return project
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise ConfigError(
        f"Expected the tuning project {str(project)!r} to be a new or empty folder, "
        f"or a search's project. Received: a folder of other files ({shown}); "
        "tltf never writes into it or empties it (overwrite=True). Pass another "
        "directory= or project_name=."
    )


# -- lock files --------------------------------------------------------------------
@contextlib.contextmanager
def project_lock(project_dir, stale_s: float = 120.0, heartbeat_s: float = 5.0):
    """Holds a tuner project folder for one search while the block runs.

    Two searches on one project without keras-tuner's chief/worker mode would
    each run every trial, unaware of each other. `tune` takes this lock,
    `<project>/tltf_project.lock` (see `LockFile`), around a search that is not
    distributed; chief and workers share the project and take none.

    Args:
        project_dir: str or PathLike. The project folder (created if missing).
        stale_s: float. See `LockFile`. Defaults to 120.
        heartbeat_s: float. How often the lock is touched. Defaults to 5.

    Yields:
        The lock file's path.

    Raises:
        ConfigError: Another process that still runs holds the project.

    Example:

    >>> with project_lock("tltf_tuning/tune"):
    ...     tuner.search(train, validation_data=val)
    """
    project = Path(project_dir)
    project.mkdir(parents=True, exist_ok=True)
    lock = LockFile(project / PROJECT_LOCK, stale_s)
    if not lock.acquire():
        owner = lock.owner()
        raise ConfigError(
            f"Expected one search at a time in project {str(project)!r}. Received: "
            f"a second one, while process {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')!r} searches it (lock {lock.path}). Two "
            "searches on one project would each run every trial. Wait for it to "
            "finish, use another project_name or directory, or run both in "
            "keras-tuner's chief/worker mode (KERASTUNER_TUNER_ID, "
            "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; see docs/tuning.md). "
            "If that process is gone, delete the lock file."
        )
    try:
        with Heartbeat(lock.path, heartbeat_s):
            yield lock.path
    finally:
        lock.release()


# -- the stage-1 store -----------------------------------------------------------
class HeadStore:
    """Stage-1 results (model weights and a JSON record), one per head key.

    Files live in `<project>/tltf_heads/`: `<key>.weights.h5` (the whole model at
    the end of stage 1: head trained, base unchanged) and `<key>.json` (its
    history and who trained it), both written atomically (temporary file, then
    `os.replace`); the JSON is written last and marks the entry complete.

    Concurrent workers (keras-tuner's distributed mode, on a shared file system)
    coordinate with a lock file `<key>.lock` (a `LockFile`): the first worker
    trains, the others wait for the record and load it. The owner touches the
    lock every `heartbeat_s` seconds; the lock of a worker that died is taken
    over, at once if it ran on this host, else once it is older than `stale_s`.
    If a lock is taken over wrongly, two workers train the same head; each write
    is still atomic, so the files stay valid.

    Args:
        directory: str or PathLike. The folder.
        stale_s: float. A lock not refreshed for this long is abandoned.
            Defaults to 120.
        heartbeat_s: float. How often the owner refreshes its lock. Defaults to 5.
        poll_s: float. How often a waiting worker looks again. Defaults to 0.5.
    """

    def __init__(self, directory, stale_s=120.0, heartbeat_s=5.0, poll_s=0.5):
        self.directory = Path(directory)
        self.stale_s, self.heartbeat_s, self.poll_s = stale_s, heartbeat_s, poll_s

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """The weights, record and lock paths of a key."""
        d = self.directory
        return d / f"{key}.weights.h5", d / f"{key}.json", d / f"{key}.lock"

    def record(self, key: str) -> dict | None:
        """The completed record of a key, or None."""
        path = self.paths(key)[1]
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def obtain(
        self, key: str, train: Callable[[], dict], load: Callable[[Path], None]
    ) -> tuple[dict, bool]:
        """Loads the stage 1 of `key`, or trains and stores it.

        Args:
            key: str. The head key.
            train: Called (holding the lock) when no record exists. It trains and
                returns a JSON-able record; it must then write the weights with
                `save_weights`.
            load: Called with the weights path when a record exists.

        Returns:
            `(record, reused)`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        weights, _, lock_path = self.paths(key)
        lock = LockFile(lock_path, self.stale_s)
        while True:
            found = self.record(key)
            if found is not None and weights.exists():
                load(weights)
                return found, True
            if not lock.acquire():
                time.sleep(self.poll_s)
                continue
            try:
                # Re-check: another worker may have finished between our look and
                # our lock.
                found = self.record(key)
                if found is not None and weights.exists():
                    load(weights)
                    return found, True
                with Heartbeat(lock_path, self.heartbeat_s):
                    record = train()
                atomic_write_json(self.paths(key)[1], record)
                return record, False
            finally:
                lock.release()

    def save_weights(self, key: str, model: keras.Model) -> Path:
        """Writes a model's weights for `key` atomically."""
        return atomic_save_weights(model, self.paths(key)[0])
