"""Every message alphabus sends, and the one codec that puts them on a ZeroMQ socket.

A message is a multipart ZeroMQ message: the topic frame, a msgpack header
(schema version, kind, sender identity, per-topic sequence number, body), then
zero or more binary payload frames (Arrow IPC tables or raw feather files).
Bodies are frozen pydantic models and every body carries its round's
``run_time``. Nothing received is ever unpickled: decoding a frame that is not
a valid message raises ``BadMessage`` naming what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import zmq
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class BadMessage(Exception):
    """Bytes on a socket that are not a valid alphabus message."""


class Body(BaseModel):
    """Base of all message bodies."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]
    run_time: AwareDatetime | None = Field(description="The round this message belongs to.")


class SymbolSpec(BaseModel):
    """One tradable contract of the round, from the crawler's exginfo."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: str
    face_value: Decimal | None = Field(description="Lot size, exact as the crawler wrote it.")
    price_tick: Decimal | None = None
    min_notional_value: Decimal | None = None


class RoundOpen(Body):
    """Market: a round starts; here is its universe and funding."""

    kind: ClassVar[str] = "round_open"
    run_time: AwareDatetime
    interval: str
    symbols: list[SymbolSpec]
    funding: dict[str, float | None] = Field(description="Latest funding rate per symbol.")
    expire_sec: float = Field(description="How long the market waits for ready files, from now.")


class RoundClosed(Body):
    """Market: no more candles will come for this round; these symbols never got theirs."""

    kind: ClassVar[str] = "round_closed"
    run_time: AwareDatetime
    missing: dict[str, str] = Field(description="Symbol -> why no candles were published.")
    last_ready_at: AwareDatetime | None = Field(description="When the round's last ready marker was seen.")


class Candles(Body):
    """Market: one symbol's candle file, as the crawler wrote it.

    Payload: the feather bytes; or none with ``by_path``, when the factor workers share the
    crawler's filesystem and read the file themselves (nothing large crosses the socket).
    """

    kind: ClassVar[str] = "candles"
    run_time: AwareDatetime
    symbol: str
    path: str = Field(description="The file the bytes came from (to read, with by_path).")
    ready_at: AwareDatetime = Field(description="When the market saw the symbol's ready marker.")
    by_path: bool = Field(False, description="No payload: read the file at ``path``.")


class Skip(BaseModel):
    """A symbol left out of the round, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: str
    reason: Literal["too_few_candles", "bad_data", "stale", "error", "no_candles"]
    detail: str


class FactorResults(Body):
    """Factor worker: factor rows (payload: Arrow IPC table, one row per symbol) and skips."""

    kind: ClassVar[str] = "factor_results"
    run_time: AwareDatetime
    shard: str
    symbols: list[str] = Field(description="Symbols whose rows are in the payload table, in order.")
    skipped: list[Skip] = []
    last_ready_at: AwareDatetime | None = Field(description="Latest ready marker among these symbols.")
    compute_ms: float = Field(0.0, description="Time spent decoding and computing these symbols.")


class Pick(BaseModel):
    """One selected coin and its target position."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: str = Field(description="Contract, e.g. 'BTCUSDT'.")
    close: float = Field(description="Close of the candle that just closed: the price the round sized at.")
    factor: float = Field(description="The factor value the coin was ranked by.")
    filters: dict[str, float] = Field(description="Filter column -> value.")
    position: Decimal = Field(description="Contracts on this side (unsigned), rounded to the lot size; exact.")
    pos_val: float = Field(description="position * close in USDT.")


class Shortfall(BaseModel):
    """How many coins each side wanted and got, when the pool was too small."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pool: int
    long_wanted: int
    long_got: int
    short_wanted: int
    short_got: int


class Coverage(BaseModel):
    """What the round was built from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    expected: int
    received: int
    skipped: dict[str, str] = Field(description="Symbol -> reason it was left out.")
    missing: list[str] = Field(description="Symbols nobody accounted for before the deadline.")
    late: list[str] = Field(
        [], description="Symbols whose results came after the crawler's deadline (bmac_expire_sec), in the grace."
    )
    shards: list[str] = Field([], description="Factor shards ('K/N') that reported for this round.")
    silent_shards: list[str] = Field([], description="Factor shards expected but not heard from this round.")


class Selection(Body):
    """Position: the round's target portfolio.

    Payload frames: the full factor table, the long table and the short table
    (Arrow IPC, the article's columns; ``position`` as exact decimal text).
    """

    kind: ClassVar[str] = "selection"
    run_time: AwareDatetime
    factor_column: str
    long: list[Pick]
    short: list[Pick]
    shortfall: Shortfall | None = None
    coverage: Coverage
    incomplete: bool = Field(description="True when some symbols were missing at the deadline.")
    latency_ms: float | None = Field(None, description="Last ready marker to selection, milliseconds.")
    targets: dict[str, Decimal] = Field(description="Symbol -> signed target contracts (long +, short -).")
    previous_run_time: AwareDatetime | None = Field(description="The round the previous targets are from.")
    previous: dict[str, Decimal] = Field(description="Symbol -> signed targets of the previous round.")
    changes: dict[str, Decimal] = Field(
        description="Symbol -> target minus previous target, for every symbol in either; what to trade."
    )


class Heartbeat(Body):
    """Any service: I am alive; what I last did."""

    kind: ClassVar[str] = "heartbeat"
    service: str
    state: dict[str, Any] = {}


class SnapshotRequest(Body):
    """Client: send me the latest selection, or every retained one after ``since``."""

    kind: ClassVar[str] = "snapshot_request"
    since: AwareDatetime | None = None


class SnapshotEmpty(Body):
    """Position: there is no selection yet to send."""

    kind: ClassVar[str] = "snapshot_empty"


BODIES: dict[str, type[Body]] = {
    cls.kind: cls
    for cls in (RoundOpen, RoundClosed, Candles, FactorResults, Selection, Heartbeat, SnapshotRequest,
                SnapshotEmpty)
}


class Header(BaseModel):
    """The envelope of every message."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Annotated[int, Field(description="Schema version.")] = SCHEMA_VERSION
    kind: str
    sender: str
    seq: int
    sent_at: datetime


@dataclass(frozen=True)
class Envelope:
    """One received message: topic, header, typed body and payload frames."""

    topic: str
    header: Header
    body: Body
    payloads: list[Any] = field(default_factory=list)


def json_schema() -> dict[str, Any]:
    """The wire contract as JSON Schema: the header and every message body, by kind."""
    return {
        "schema_version": SCHEMA_VERSION,
        "frames": ["topic (utf-8)", "header (msgpack: the header fields plus 'body')", "payload frames..."],
        "header": Header.model_json_schema(),
        "bodies": {kind: cls.model_json_schema() for kind, cls in BODIES.items()},
    }


def encode(topic: str, header: Header, body: Body, payloads: list[Any] | tuple[Any, ...] = ()) -> list[Any]:
    head = header.model_dump(mode="json")
    head["body"] = body.model_dump(mode="json")
    return [topic.encode(), msgpack.packb(head), *payloads]


def encode_unsequenced(topic: str, sender: str, body: Body) -> list[Any]:
    """A request or reply outside any published sequence (seq 0): snapshot requests and empty answers."""
    return encode(topic, Header(kind=body.kind, sender=sender, seq=0, sent_at=datetime.now(UTC)), body)


def decode(frames: list[Any]) -> Envelope:
    """Frames -> Envelope; BadMessage says what is wrong with them."""
    if len(frames) < 2:
        raise BadMessage(f"expected at least 2 frames (topic, header), got {len(frames)}")
    try:
        topic = bytes(frames[0]).decode()
        head = msgpack.unpackb(bytes(frames[1]))
    except Exception as e:
        raise BadMessage(f"undecodable topic or header: {type(e).__name__}: {e}") from None
    if not isinstance(head, dict):
        raise BadMessage(f"header is a {type(head).__name__}, not a map")
    if head.get("v") != SCHEMA_VERSION:
        raise BadMessage(f"schema version {head.get('v')!r}, this build speaks {SCHEMA_VERSION}")
    body_cls = BODIES.get(head.get("kind"))  # type: ignore[arg-type]
    if body_cls is None:
        raise BadMessage(f"unknown message kind {head.get('kind')!r} on topic {topic!r}")
    raw_body = head.pop("body", None)
    try:
        header = Header.model_validate(head)
        body = body_cls.model_validate(raw_body)
    except ValidationError as e:
        raise BadMessage(f"invalid {body_cls.kind} on topic {topic!r}: {e}") from None
    payloads = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames[2:]]
    return Envelope(topic, header, body, payloads)


def recv(socket: zmq.Socket) -> Envelope:
    """Receive one message without copying payload frames; BadMessage on garbage."""
    return decode(socket.recv_multipart(copy=False))
