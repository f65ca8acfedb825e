"""Which factor shards exist and which are alive, from their heartbeats and results."""

from __future__ import annotations

import logging
import time

from shared.bus import Shard

log = logging.getLogger("position")
SILENT_AFTER_SEC = 3.0
FORGET_AFTER_SEC = 600.0
MAX_TRACKED = 512
"""Shard names remembered at most (N <= 256, so one full count always fits); the stalest go first."""


class ShardWatch:
    """Shards are named 'K/N'. Hearing any shard of N makes all N expected.

    Every name is parsed (a bad one is refused with ValueError) and the state stays bounded whatever
    peers send: at most MAX_TRACKED names heard, and only the current count's shards expected.
    """

    def __init__(self, silent_after: float = SILENT_AFTER_SEC, forget_after: float = FORGET_AFTER_SEC):
        self.silent_after = silent_after
        self.forget_after = forget_after
        self.last_heard: dict[str, float] = {}
        self.expected_since: dict[str, float] = {}
        self.silent: set[str] = set()

    def heard(self, shard: str) -> None:
        shard = str(Shard.parse(shard))
        self.last_heard.pop(shard, None)
        self.last_heard[shard] = time.monotonic()  # dicts keep insertion order: the stalest come first
        while len(self.last_heard) > MAX_TRACKED:
            del self.last_heard[next(iter(self.last_heard))]
        if shard in self.silent:
            self.silent.discard(shard)
            log.info("factor shard %s is back", shard)

    def expected(self) -> list[str]:
        """Every K of the newest N heard (a reconfigured count replaces the old one)."""
        recent = {s: t for s, t in self.last_heard.items() if time.monotonic() - t < self.forget_after}
        if not recent:
            return []
        newest = max(recent, key=recent.__getitem__)
        n = Shard.parse(newest).count
        return [f"{k}/{n}" for k in range(n)]

    def check(self) -> None:
        """Log a shard going quiet within seconds, not at the next round's deadline."""
        now = time.monotonic()
        expected = self.expected()
        for gone in set(self.expected_since).difference(expected):
            del self.expected_since[gone]
        self.silent.intersection_update(expected)
        for shard in expected:
            quiet = now - self.last_heard.get(shard, self.expected_since.setdefault(shard, now))
            if quiet > self.silent_after and shard not in self.silent:
                self.silent.add(shard)
                if shard in self.last_heard:
                    log.warning("factor shard %s silent for %.1fs: no heartbeat since then", shard, quiet)
                else:
                    log.warning("factor shard %s has never been heard from (its siblings have)", shard)
