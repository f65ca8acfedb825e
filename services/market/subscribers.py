"""Who is listening on the market's XPUB: lets a round wait until every shard is subscribed."""

from __future__ import annotations

from collections import Counter

from shared.bus import BUCKETS, ROUND_OPEN


class Subscriptions:
    """Counts live subscriptions from XPUB_VERBOSER notifications."""

    def __init__(self) -> None:
        self.prefixes: Counter[str] = Counter()

    def update(self, frame: bytes) -> None:
        if not frame:
            return
        prefix = frame[1:].decode(errors="replace")
        if frame[0] == 1:
            self.prefixes[prefix] += 1
        elif frame[0] == 0 and self.prefixes[prefix] > 0:
            self.prefixes[prefix] -= 1

    def _covers(self, topic: str) -> bool:
        return any(n > 0 and topic.startswith(p) for p, n in self.prefixes.items())

    def uncovered_buckets(self) -> list[int]:
        return [b for b in range(BUCKETS) if not self._covers(f"candle.{b:02x}.")]

    def has_position(self) -> bool:
        """Only the position service subscribes to round announcements."""
        return self._covers(ROUND_OPEN)

    def ready(self) -> bool:
        """The position service and a candle subscriber (factor shard) for every bucket."""
        return self.has_position() and not self.uncovered_buckets()
