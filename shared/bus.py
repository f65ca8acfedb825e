"""ZeroMQ plumbing shared by every service: endpoints, topics, shards, sending and sequence checks.

Topology (the long-lived side binds):
  market   PUB  binds ALPHABUS_MARKET_PUB    topics ``round.open``, ``round.closed``,
                                             ``candle.<bucket>.<SYMBOL>``, ``hb.market``
  factor   PUB  connects to ALPHABUS_FACTOR_IN (position's bound SUB)   topics ``factor.<shard>``, ``hb.factor``
  position PUB  binds ALPHABUS_SELECTION_PUB topics ``selection``, ``hb.position``
  position ROUTER binds ALPHABUS_SNAPSHOT    answers SnapshotRequest with the latest selection
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket as pysocket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import zmq

from shared.messages import BadMessage, Body, Envelope, Header, decode, encode

log = logging.getLogger(__name__)

BUCKETS = 256
"""Symbols hash into this many buckets; a shard owns a contiguous range of them."""

DEFAULT_ENDPOINTS = {
    "ALPHABUS_MARKET_PUB": "tcp://127.0.0.1:5701",
    "ALPHABUS_FACTOR_IN": "tcp://127.0.0.1:5702",
    "ALPHABUS_SELECTION_PUB": "tcp://127.0.0.1:5703",
    "ALPHABUS_SNAPSHOT": "tcp://127.0.0.1:5704",
}


def endpoint(name: str) -> str:
    """An endpoint from the environment, else the single-host default."""
    return os.environ.get(name, DEFAULT_ENDPOINTS[name])


def bind_address(address: str) -> str:
    """What to bind for an address others connect to: the same port on every interface in containers."""
    if os.environ.get("ALPHABUS_BIND_ALL") == "1" and address.startswith("tcp://"):
        return "tcp://*:" + address.rsplit(":", 1)[1]
    return address


# -- topics -------------------------------------------------------------------------------------

ROUNDS = "round."  # the position service subscribes to both round topics
ROUND_OPEN = "round.open"
ROUND_CLOSED = "round.closed"
SELECTION = "selection"


def bucket_of(symbol: str) -> int:
    """Stable across processes and hosts (unlike the salted built-in hash)."""
    return int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "big") % BUCKETS


def candle_topic(symbol: str) -> str:
    return f"candle.{bucket_of(symbol):02x}.{symbol}"


def factor_topic(shard: str) -> str:
    return f"factor.{shard}"


def heartbeat_topic(service: str) -> str:
    return f"hb.{service}"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: owns the buckets b with b * count // BUCKETS == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            k, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r} is not like '0/2'") from None
        if not 0 <= k < n:
            raise ValueError(f"shard {text!r}: need 0 <= K < N")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        return f"{self.index}of{self.count}"

    def buckets(self) -> list[int]:
        return [b for b in range(BUCKETS) if b * self.count // BUCKETS == self.index]

    def owns(self, symbol: str) -> bool:
        return bucket_of(symbol) * self.count // BUCKETS == self.index

    def candle_prefixes(self) -> list[str]:
        """Subscription prefixes: the publisher filters, so the worker only receives its own symbols."""
        if self.count == 1:
            return ["candle."]
        return [f"candle.{b:02x}." for b in self.buckets()]


# -- sending and receiving ----------------------------------------------------------------------


def identity(service: str) -> str:
    """Unique per process incarnation, so a restarted sender is a new sequence, not a duplicate."""
    return f"{service}@{pysocket.gethostname()}:{os.getpid()}:{int(time.time() * 1000) % 10**9}"


class Publisher:
    """Stamps every message with this sender's identity and a per-topic sequence number."""

    def __init__(self, socket: zmq.Socket, sender: str):
        self.socket = socket
        self.sender = sender
        self._seq: dict[str, int] = defaultdict(int)

    def send(self, topic: str, body: Body, payloads: list | tuple = ()) -> list:
        """Send and return the frames sent (a snapshot server replays them verbatim)."""
        self._seq[topic] += 1
        header = Header(kind=body.kind, sender=self.sender, seq=self._seq[topic], sent_at=datetime.now(UTC))
        frames = encode(topic, header, body, payloads)
        self.socket.send_multipart(frames, copy=False)
        return frames

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)


@dataclass
class SequenceCheck:
    """Per (sender, topic) ordering: drops duplicates and stale messages, counts gaps."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)
    gaps: int = 0
    duplicates: int = 0

    def accept(self, env: Envelope) -> bool:
        key = (env.header.sender, env.topic)
        prev = self.last.get(key)
        seq = env.header.seq
        if prev is not None and seq <= prev:
            self.duplicates += 1
            log.warning("dropped duplicate or out-of-order %s seq %d from %s (last %d)",
                        env.topic, seq, env.header.sender, prev)
            return False
        if prev is not None and seq > prev + 1:
            self.gaps += seq - prev - 1
            log.warning("gap on %s from %s: %d message(s) lost before seq %d",
                        env.topic, env.header.sender, seq - prev - 1, seq)
        self.last[key] = seq
        return True


class Inbox:
    """Every receiving socket's front door: garbage is logged and counted, never raised."""

    def __init__(self, ordered: bool = True):
        self.sequence = SequenceCheck() if ordered else None
        self.bad_messages = 0

    def decode(self, frames: list, what: str = "message") -> Envelope | None:
        try:
            env = decode(frames)
        except BadMessage as e:
            self.bad_messages += 1
            log.warning("dropped a bad %s: %s", what, e)
            return None
        if self.sequence is not None and not self.sequence.accept(env):
            return None
        return env

    def recv(self, socket: zmq.Socket) -> Envelope | None:
        return self.decode(socket.recv_multipart(copy=False))

    def counts(self) -> dict[str, int]:
        seq = self.sequence or SequenceCheck()
        return {"bad_messages": self.bad_messages, "gaps": seq.gaps, "duplicates": seq.duplicates}


def context() -> zmq.Context:
    return zmq.Context.instance()


def close_all(*sockets: zmq.Socket) -> None:
    for s in sockets:
        s.close(linger=200)
