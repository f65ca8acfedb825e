"""Wake the market the moment the crawler writes a ready marker (Linux inotify), instead of polling.

Polling a directory of thousands of files every few milliseconds costs a core and adds latency;
inotify hands over the names of new files as they are created. Where it is unavailable (another
OS, a network filesystem that sends no events) the market falls back to listing the directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import select
import struct
from pathlib import Path

log = logging.getLogger("market")

_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length


@functools.cache
def _libc() -> ctypes.CDLL:
    """Found once: ``find_library`` runs ``ldconfig`` in a child process (4 ms idle, tens under load)."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NewFiles:
    """Names of files created in (or moved into) one directory since the last read."""

    def __init__(self, directory: Path):
        libc = _libc()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CREATE | _IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch failed for {directory}")
        self.fd = fd

    @classmethod
    def open(cls, directory: Path) -> NewFiles | None:
        try:
            return cls(directory)
        except (OSError, AttributeError) as e:
            log.info("no inotify on %s (%s); listing the directory instead", directory, e)
            return None

    def wait(self, timeout: float) -> list[str]:
        """New names, waiting up to timeout seconds for the first; [] on timeout."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return self.read() if readable else []

    def read(self) -> list[str]:
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _, _, _, size = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                names.append(os.fsdecode(data[offset: offset + size].rstrip(b"\0")))
                offset += size

    def close(self) -> None:
        os.close(self.fd)
