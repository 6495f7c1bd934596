"""Lock files that name their owner: one process per run folder, tuner project or head.

A lock is a file created with `O_EXCL` that records the host, the pid, a token of
the process and when it was taken. A lock whose process is gone is *stale* and is
taken over at once: its pid is dead on this host, or it names this process's pid
with another token (a restarted container that reuses pids). A lock of another
host cannot be checked: it is stale only once nobody touched it for `stale_s`
seconds (its owner touches it while it works, `Heartbeat`), or never when
`stale_s` is None.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

#: Seconds after which a lock that cannot be read (a process killed between
#: creating and writing it) is stale, when its owner cannot be checked otherwise.
UNREADABLE_STALE_S = 10.0

_TOKENS: dict[int, str] = {}


def owner_record() -> dict:
    """What this process writes into its locks: `host`, `pid` and `token`."""
    pid = os.getpid()  # read each time: a forked child is another owner
    token = _TOKENS.setdefault(pid, uuid.uuid4().hex)
    return {"host": socket.gethostname(), "pid": pid, "token": token}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (True if unknown)."""
    if os.name == "nt":
        return True  # os.kill would send it Ctrl-C: leave it to the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


class LockFile:
    """A lock file created with `O_EXCL` that names its owner (see the module).

    Args:
        path: str or PathLike. The lock file.
        stale_s: float or None. Seconds without a touch after which a lock of
            another host is abandoned; None: never. Defaults to 120.

    Example:

    >>> lock = LockFile("runs/first/.tltf-lock", stale_s=None)
    >>> if lock.acquire():
    ...     try:
    ...         work()
    ...     finally:
    ...         lock.release()
    """

    def __init__(self, path, stale_s: float | None = 120.0):
        self.path, self.stale_s = Path(path), stale_s

    def acquire(self) -> bool:
        """Creates the lock, taking over a stale one; False if it is held."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.break_if_stale():
                    return False
                continue
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with os.fdopen(fd, "w") as f:
                json.dump({**owner_record(), "since": since}, f)
            return True
        return False

    def owner(self) -> dict:
        """The owner the lock names (`host`, `pid`, `since`), or {} if unreadable."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def held_here(self) -> bool:
        """Whether this process holds the lock."""
        owner = self.owner()
        return {k: owner.get(k) for k in ("host", "pid", "token")} == owner_record()

    def is_stale(self) -> bool:
        """Whether the lock's owner is gone (see the module); False if no lock."""
        owner, me = self.owner(), owner_record()
        pid = owner.get("pid")
        if owner.get("host") == me["host"] and isinstance(pid, int) and pid > 0:
            if pid == me["pid"]:
                return owner.get("token") != me["token"]
            return not pid_alive(pid)
        limit = self.stale_s if owner else (self.stale_s or UNREADABLE_STALE_S)
        if limit is None:
            return False
        try:
            return time.time() - self.path.stat().st_mtime > limit
        except FileNotFoundError:
            return False

    def break_if_stale(self) -> bool:
        """Removes a stale lock; True if it was stale (or is gone)."""
        if self.path.exists() and not self.is_stale():
            return False
        moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            # Renaming is atomic: of several waiters, one moves the lock away.
            os.replace(self.path, moved)
            moved.unlink()
        return True

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if self.held_here():
            self.path.unlink(missing_ok=True)


class Heartbeat:
    """Touches a lock file every `interval` seconds while a block runs.

    Example:

    >>> with Heartbeat(lock.path, 5.0):
    ...     train()
    """

    def __init__(self, path: Path, interval: float):
        self.path, self.interval = Path(path), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
