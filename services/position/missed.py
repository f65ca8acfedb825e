"""Hours without a selection, as published: kept so that late joiners and a restarted service know them.

Every hour boundary gets either a selection or a ``Missed`` entry with its reason. The position
service publishes both on ``selection``; this log keeps the recent missed entries as the exact
frames sent (snapshots replay them verbatim), and on disk so a restart neither forgets them nor
announces them twice.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path

import msgpack

from shared.clock import boundaries_between
from shared.durable import write_atomic
from shared.messages import Missed, decode

log = logging.getLogger("position")
RETAINED_MISSED = 48
MAX_GAP_LISTED = 24 * 31
"""A gap longer than this many intervals records only its newest hours (and says so in one line)."""


def gap_hours(known: set[datetime] | list[datetime], run_time: datetime, interval: timedelta) -> list[datetime]:
    """The boundaries between the newest known round and a newer ``run_time`` that nobody accounted for."""
    if not known:
        return []
    last = max(known)
    if run_time <= last:
        return []
    return boundaries_between(last, run_time, interval)


class MissedLog:
    """Recent Missed entries as (entry, frames sent); persisted as a msgpack list of frame lists."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: deque[tuple[Missed, list]] = deque(maxlen=RETAINED_MISSED)
        if path is None or not path.exists():
            return
        try:
            for frames in msgpack.unpackb(path.read_bytes()):
                env = decode(frames)
                if isinstance(env.body, Missed):
                    self.entries.append((env.body, frames))
        except Exception as e:  # a torn or foreign file: start empty, say so
            log.warning("ignoring unreadable missed-hours state %s: %s", path, e)
            self.entries.clear()

    def run_times(self) -> set[datetime]:
        return {m.run_time for m, _ in self.entries}

    def add(self, missed: Missed, frames: list) -> None:
        self.entries.append((missed, frames))
        if self.path is None:
            return
        data = msgpack.packb([[bytes(f) for f in fr] for _, fr in self.entries])
        try:
            write_atomic(self.path, lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            log.warning("cannot save %s (%s); missed hour %s is published and served all the same",
                        self.path, e, missed.run_time.isoformat())

    def after(self, t: datetime | None) -> list[tuple[datetime, list]]:
        return [(m.run_time, frames) for m, frames in self.entries if t is None or m.run_time > t]
