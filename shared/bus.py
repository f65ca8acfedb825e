"""ZeroMQ plumbing shared by every service: endpoints, topics, shards, sending and sequence checks.

Topology (the long-lived side binds):
  market   PUB  binds ALPHABUS_MARKET_PUB    topics ``round.open``, ``round.closed``,
                                             ``candle.<bucket>.<SYMBOL>`` (a file's bytes),
                                             ``candles`` (paths, to every shard), ``hb.market``
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
import weakref
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zmq

from shared.messages import BadMessage, Body, Envelope, Header, decode, encode
from shared.security import Keys
from shared.security import close as close_security

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
ROUND_MISSED = "round.missed"  # the market could not run a round: the position service records it
SELECTION = "selection"
CANDLE_PATHS = "candles"
"""Candle files sent by path, many symbols a message, to every shard (no bucket prefix matches it)."""


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
            k, n = (int(x) for x in text.split("/", 2)) if len(text) <= 16 else ()
        except ValueError:
            raise ValueError(f"shard {text!r} is not like '0/2'") from None
        if not 0 <= k < n <= BUCKETS:
            raise ValueError(f"shard {text!r}: need 0 <= K < N <= {BUCKETS}")
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
        """Subscription prefixes: the publisher filters, so the worker only receives its own symbols' bytes
        (and every path message, of which it computes its own symbols)."""
        if self.count == 1:
            return ["candle.", CANDLE_PATHS]
        return [f"candle.{b:02x}." for b in self.buckets()] + [CANDLE_PATHS]


# -- sending and receiving ----------------------------------------------------------------------


STACK_ENV = "ALPHABUS_STACK"
_stack = ""


def join_stack(workdir: Path) -> str:
    """Make this process a member of the work directory's stack (``ALPHABUS_STACK`` names it explicitly,
    for hosts that do not share one path); every message it sends carries it and foreign ones are dropped."""
    global _stack
    _stack = stack_identity(workdir)
    return _stack


def stack_identity(workdir: Path) -> str:
    """``ALPHABUS_STACK``, else the work directory (which holds the config) names its stack: its folder name
    and a hash of its absolute path."""
    if os.environ.get(STACK_ENV):
        return os.environ[STACK_ENV]
    path = str(Path(workdir).resolve())
    digest = hashlib.blake2b(path.encode(), digest_size=4).hexdigest()
    return f"{Path(path).name[:40]}-{digest}"


def current_stack() -> str:
    """This process's stack ("" until ``join_stack``: then nothing is dropped as foreign)."""
    return _stack


def identity(service: str) -> str:
    """Unique per process incarnation, so a restarted sender is a new sequence, not a duplicate."""
    return f"{service}@{pysocket.gethostname()}:{os.getpid()}:{int(time.time() * 1000) % 10**9}"


class Publisher:
    """Stamps every message with this sender's identity and a per-topic sequence number."""

    def __init__(self, socket: zmq.Socket, sender: str, stack: str | None = None):
        self.socket = socket
        self.sender = sender
        self.stack = current_stack() if stack is None else stack
        self._seq: dict[str, int] = defaultdict(int)

    def send(self, topic: str, body: Body, payloads: list | tuple = ()) -> list:
        """Send and return the frames sent (a snapshot server replays them verbatim)."""
        self._seq[topic] += 1
        header = Header(kind=body.kind, stack=self.stack, sender=self.sender, seq=self._seq[topic],
                        sent_at=datetime.now(UTC))
        frames = encode(topic, header, body, payloads)
        self.socket.send_multipart(frames, copy=False)
        return frames

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)


MAX_SEQUENCES = 4096
"""Senders x topics remembered for ordering; the oldest is forgotten first (peers cannot grow it)."""


@dataclass
class SequenceCheck:
    """Per (sender, topic) ordering: drops duplicates and stale messages, counts gaps."""

    last: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    gaps: int = 0
    duplicates: int = 0

    def accept(self, env: Envelope) -> bool:
        key = (env.header.sender, env.topic)
        prev = self.last.get(key)
        if prev is None and len(self.last) >= MAX_SEQUENCES:
            self.last.popitem(last=False)
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
        self.last.move_to_end(key)
        return True


class _Repeats:
    """Log a kind of problem the first time, then once a minute how often it recurred: a peer that sends
    the same bad message in a loop cannot flood the log (or fill the disk through it)."""

    KINDS = 256
    EVERY_SEC = 60.0

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.since_summary = 0
        self.next_summary = 0.0

    def note(self, message: str) -> None:
        kind = message[:72]
        if kind not in self.seen and len(self.seen) < self.KINDS:
            self.seen[kind] = 0
            self.next_summary = self.next_summary or time.monotonic() + self.EVERY_SEC
            log.warning("%s", message)
            return
        self.seen[kind] = self.seen.get(kind, 0) + 1
        self.since_summary += 1
        now = time.monotonic()
        if now >= self.next_summary:
            self.next_summary = now + self.EVERY_SEC
            log.warning("%d more bad message(s) like those above dropped (latest: %s)", self.since_summary,
                        message[:300])
            self.since_summary = 0


class Inbox:
    """Every receiving socket's front door: garbage and other stacks' messages are logged and counted,
    never raised. ``stack`` None means this process's stack; "" accepts any (a client following whichever
    stack its keys admit it to)."""

    def __init__(self, ordered: bool = True, stack: str | None = None):
        self.sequence = SequenceCheck() if ordered else None
        self.stack = current_stack() if stack is None else stack
        self.bad_messages = 0
        self.foreign = 0
        self._foreign_logged: set[str] = set()
        self._bad = _Repeats()
        _inboxes.add(self)

    def decode(self, frames: list, what: str = "message") -> Envelope | None:
        try:
            env = decode(frames)
        except BadMessage as e:
            self.bad_messages += 1
            self._bad.note(f"dropped a bad {what}: {e}")
            return None
        if self.stack and env.header.stack != self.stack:
            self._drop_foreign(env)
            return None
        if self.sequence is not None and not self.sequence.accept(env):
            return None
        return env

    def _drop_foreign(self, env: Envelope) -> None:
        self.foreign += 1
        if env.header.stack not in self._foreign_logged and len(self._foreign_logged) < 64:
            self._foreign_logged.add(env.header.stack)
            log.warning("dropped a %s from %s of another stack %r (this is %r); two stacks share an endpoint?",
                        env.header.kind, env.header.sender, env.header.stack, self.stack)

    def recv(self, socket: zmq.Socket) -> Envelope | None:
        return self.decode(socket.recv_multipart(copy=False))

    def counts(self) -> dict[str, int]:
        seq = self.sequence or SequenceCheck()
        return {"bad_messages": self.bad_messages, "gaps": seq.gaps, "duplicates": seq.duplicates,
                "foreign": self.foreign}


_inboxes: weakref.WeakSet[Inbox] = weakref.WeakSet()


def inbox_counts() -> dict[str, int]:
    """Every live inbox's counts added up: what this process dropped (its metrics read it when scraped)."""
    total: Counter[str] = Counter()
    for inbox in list(_inboxes):
        total.update(inbox.counts())
    return dict(total)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, os.environ[name], default)
        return default


MAX_MESSAGE_BYTES = _env_int("ALPHABUS_MAX_MSG_MB", 64) * 2**20
"""ZMQ_MAXMSGSIZE on every socket: a peer sending a larger frame is disconnected, not buffered."""

SEND_HWM = _env_int("ALPHABUS_SNDHWM", 5000)
"""Messages queued per peer before a PUB drops for that peer: what a subscriber that never reads can cost
(candles as paths: ~2 MB; as bytes, 5000 files). A full round of 2000 symbols fits twice."""

RECV_HWM = _env_int("ALPHABUS_RCVHWM", 20000)


def context() -> zmq.Context:
    return zmq.Context.instance()


def make_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket with alphabus's bounds: message size and send/receive queues are never unlimited."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, RECV_HWM)
    return sock


def selection_subscriber(ctx: zmq.Context, keys: Keys | None, name: str,
                         address: str | None = None, topics: tuple[str, ...] = (SELECTION,)) -> zmq.Socket:
    """A SUB to the position service's selections, as the stack's client ``name`` when keys are on."""
    sock = make_socket(ctx, zmq.SUB)
    if keys:
        keys.connect_as(sock, name, "selections")
    sock.connect(address or endpoint("ALPHABUS_SELECTION_PUB"))
    for topic in topics:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    return sock


def close_all(*sockets: zmq.Socket) -> None:
    for s in sockets:
        s.close(linger=200)


def shutdown(ctx: zmq.Context, *sockets: zmq.Socket, linger: int = 200) -> None:
    """A service's ``finally``: close its sockets, stop its authenticator, terminate the context."""
    for s in sockets:
        s.close(linger=linger)
    close_security(ctx)
    ctx.term()
