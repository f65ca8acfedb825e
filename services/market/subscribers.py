"""Who is listening on the market's XPUB: lets a round wait until every shard is subscribed."""

from __future__ import annotations

from collections import Counter
from functools import cached_property

from shared.bus import BUCKETS, ROUND_OPEN

_BUCKET_TOPICS = [f"candle.{b:02x}." for b in range(BUCKETS)]
_RELEVANT = {t[:i] for t in [ROUND_OPEN, *_BUCKET_TOPICS] for i in range(len(t) + 1)}
"""The only prefixes that decide readiness; any other subscription is not counted (so not stored)."""


class Subscriptions:
    """Counts live subscriptions from XPUB_VERBOSER notifications; coverage is cached between changes.

    Only prefixes of the round and bucket topics are kept: whatever subscribers send, this holds at
    most a few thousand counters.
    """

    def __init__(self) -> None:
        self.prefixes: Counter[str] = Counter()

    def update(self, frame: bytes) -> None:
        if not frame:
            return
        prefix = frame[1:].decode(errors="replace")
        if prefix not in _RELEVANT:
            return
        if frame[0] == 1:
            self.prefixes[prefix] += 1
        elif frame[0] == 0 and self.prefixes[prefix] > 0:
            self.prefixes[prefix] -= 1
        else:
            return
        self.__dict__.pop("_live", None)
        self.__dict__.pop("_uncovered", None)

    @cached_property
    def _live(self) -> list[str]:
        return [p for p, n in self.prefixes.items() if n > 0]

    def _covers(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self._live)

    @cached_property
    def _uncovered(self) -> list[int]:
        return [b for b, topic in enumerate(_BUCKET_TOPICS) if not self._covers(topic)]

    def uncovered_buckets(self) -> list[int]:
        return list(self._uncovered)

    def has_position(self) -> bool:
        """Only the position service subscribes to round announcements."""
        return self._covers(ROUND_OPEN)

    def ready(self) -> bool:
        """The position service and a candle subscriber (factor shard) for every bucket."""
        return self.has_position() and not self._uncovered
