"""Which factor shards exist and which are alive, from their heartbeats and results."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("position")
SILENT_AFTER_SEC = 3.0
FORGET_AFTER_SEC = 600.0


class ShardWatch:
    """Shards are named 'K/N'. Hearing any shard of N makes all N expected."""

    def __init__(self, silent_after: float = SILENT_AFTER_SEC, forget_after: float = FORGET_AFTER_SEC):
        self.silent_after = silent_after
        self.forget_after = forget_after
        self.last_heard: dict[str, float] = {}
        self.expected_since: dict[str, float] = {}
        self.silent: set[str] = set()

    def heard(self, shard: str) -> None:
        self.last_heard[shard] = time.monotonic()
        if shard in self.silent:
            self.silent.discard(shard)
            log.info("factor shard %s is back", shard)

    def expected(self) -> list[str]:
        """Every K of the newest N heard (a reconfigured count replaces the old one)."""
        recent = {s: t for s, t in self.last_heard.items() if time.monotonic() - t < self.forget_after}
        if not recent:
            return []
        newest = max(recent, key=recent.__getitem__)
        n = int(newest.split("/")[1])
        return [f"{k}/{n}" for k in range(n)]

    def check(self) -> None:
        """Log a shard going quiet within seconds, not at the next round's deadline."""
        now = time.monotonic()
        for shard in self.expected():
            quiet = now - self.last_heard.get(shard, self.expected_since.setdefault(shard, now))
            if quiet > self.silent_after and shard not in self.silent:
                self.silent.add(shard)
                if shard in self.last_heard:
                    log.warning("factor shard %s silent for %.1fs: no heartbeat since then", shard, quiet)
                else:
                    log.warning("factor shard %s has never been heard from (its siblings have)", shard)
