"""Writes that survive a kill -9 and a full or read-only disk: the one place for how alphabus persists.

- ``write_atomic``: a whole file under a temporary name, then renamed; a reader never sees half a file.
- ``append_durable``: bytes appended to a log file and fsynced; the caller records the new length.
- ``Outage``: a failing disk is logged once per outage (path and errno text) and retried at a pace.
- ``RetryQueue``: work that must be written in order is kept in memory, bounded, until the disk takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
RETRY_SEC = 1.0
MAX_QUEUED = 48  # two days of hourly rounds


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a power cut, not only a crash, keeps it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None], fsync: bool = False) -> None:
    """Write into a temporary name, then rename: a reader never sees half a file.

    With ``fsync`` the data is on disk before the rename, and the rename before returning.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if fsync:  # the file is in place: a caller must not take this for a failed write
            with contextlib.suppress(OSError):
                fsync_dir(path.parent)
    except OSError as e:
        raise _named(e, path) from e
    finally:
        with contextlib.suppress(OSError):  # a read-only disk holds no temporary file of ours
            tmp.unlink(missing_ok=True)


def append_durable(path: Path, data: bytes) -> int:
    """Append ``data`` and fsync it; returns the file's new length in bytes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            return f.tell()
    except OSError as e:
        raise _named(e, path) from e


def _named(e: OSError, path: Path) -> OSError:
    """The same error, naming the file when the call that raised it did not (write, flush, close)."""
    return e if e.filename else OSError(e.errno, e.strerror or str(e), str(path))


def describe_os_error(e: OSError) -> str:
    """``path: [Errno 28] No space left on device``, whatever raised it."""
    where = e.filename or "?"
    return f"{where}: [Errno {e.errno}] {os.strerror(e.errno) if e.errno else e}"


class Outage:
    """Tracks one writer's disk trouble: logs the start once (and again only if the errno changes),
    the end once, and says when the next retry is due."""

    def __init__(self, log: logging.Logger, what: str, retry_sec: float = RETRY_SEC):
        self.log, self.what, self.retry_sec = log, what, retry_sec
        self.since: float | None = None
        self.errno: int | None = None
        self.next_try = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def due(self) -> bool:
        return not self.down or time.monotonic() >= self.next_try

    def failed(self, e: OSError, keeping: str) -> None:
        now = time.monotonic()
        self.next_try = now + self.retry_sec
        if self.since is None or e.errno != self.errno:
            self.since = self.since if self.since is not None else now
            self.errno = e.errno
            self.log.error("cannot write %s: %s; keeping %s in memory, retrying every %.0f s",
                           self.what, describe_os_error(e), keeping, self.retry_sec)

    def recovered(self, done: str) -> None:
        if self.since is not None:
            self.log.warning("%s writable again after %.0f s: %s", self.what, time.monotonic() - self.since, done)
        self.since, self.errno = None, None


class RetryQueue(Generic[T]):
    """Items written strictly in order; one that fails on the disk (OSError) stays first in line.

    Any other exception is a bug or bad data, not the disk: that item is logged and dropped so it
    cannot block the rest. Beyond ``limit`` items the oldest is dropped with an error line.
    """

    def __init__(self, write: Callable[[T], None], describe: Callable[[T], str], log: logging.Logger,
                 what: str, limit: int = MAX_QUEUED, retry_sec: float = RETRY_SEC):
        self.write, self.describe, self.log, self.limit = write, describe, log, limit
        self.items: deque[T] = deque()
        self.outage = Outage(log, what, retry_sec)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: T) -> None:
        self.items.append(item)
        if len(self.items) > self.limit:
            lost = self.items.popleft()
            self.dropped += 1
            self.log.error("%s: more than %d waiting for the disk; %s dropped from memory and NOT written",
                           self.outage.what, self.limit, self.describe(lost))

    def flush(self) -> int:
        """Write what is queued, oldest first, unless waiting out an outage; returns how many were written."""
        if not self.items or not self.outage.due():
            return 0
        written = 0
        while self.items:
            item = self.items[0]
            try:
                self.write(item)
            except OSError as e:
                self.outage.failed(e, f"{len(self.items)} queued, oldest {self.describe(item)}")
                return written
            except Exception:
                self.log.exception("%s: writing %s failed; dropped", self.outage.what, self.describe(item))
            else:
                written += 1
            self.items.popleft()
        self.outage.recovered(f"wrote {written} queued")
        return written
