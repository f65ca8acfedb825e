"""Every message alphabus sends, and the one codec that puts them on a ZeroMQ socket.

A message is a multipart ZeroMQ message: the topic frame, a msgpack header
(schema version, kind, sender identity, per-topic sequence number, body), then
zero or more binary payload frames (Arrow IPC tables or raw feather files).
Bodies are frozen pydantic models and every body carries its round's
``run_time``. Nothing received is ever unpickled: decoding a frame that is not
a valid message raises ``BadMessage`` naming what was wrong.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import zmq
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

SCHEMA_VERSION = 1

# Bounds on what a peer can make a receiver hold: every list, map and string that comes off the wire.
MAX_SYMBOLS = 10_000
"""Most symbols a list or map in one message may hold (an exchange lists a few hundred)."""
MAX_OFFSETS = 24 * 366
"""Most offsets a selection may carry: a hold period of up to a year, one offset per hour."""
MAX_TEXT = 1_000
"""Free text from a peer (skip details, reasons) is clipped to this many characters."""
MAX_TOPIC_BYTES = 256
MAX_HEADER_BYTES = 16 * 2**20
"""A header frame above this is refused before msgpack parses it."""
MAX_PAYLOAD_FRAMES = 8
MAX_FUNDING_EVENTS = 5_000
"""Most funding events one Candles message carries (a symbol's hourly history over a 1500-candle file is 1500)."""
SYMBOL_PATTERN = r"^[A-Z0-9]{1,32}$"
"""A plain exchange ticker: nothing that could name a path (``../../etc/x``) or a topic prefix."""


def _clip(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


def _valid_shard(text: str) -> str:
    from shared.bus import Shard  # bus imports this module: import at use, the parse stays in one place

    return str(Shard.parse(text))


Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
Text = Annotated[str, BeforeValidator(_clip)]
ShardName = Annotated[str, StringConstraints(max_length=16), AfterValidator(_valid_shard)]
"""'K/N' with 0 <= K < N <= bus.BUCKETS."""


def _unique(symbols: list[str], what: str) -> None:
    seen: set[str] = set()
    dup = [s for s in symbols if s in seen or seen.add(s)]  # type: ignore[func-returns-value]
    if dup:
        raise ValueError(f"{what}: duplicate symbol(s) {', '.join(sorted(set(dup))[:5])}")


class BadMessage(Exception):
    """Bytes on a socket that are not a valid alphabus message."""


class Body(BaseModel):
    """Base of all message bodies."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]
    payload_frames: ClassVar[tuple[int, int]] = (0, MAX_PAYLOAD_FRAMES)
    """How many payload frames a message of this kind carries (least, most); decode enforces it."""
    run_time: AwareDatetime | None = Field(description="The round this message belongs to.")

    def payload_count(self) -> int | None:
        """The exact number of payload frames this body's content calls for (None: any in ``payload_frames``)."""
        return None


class SymbolSpec(BaseModel):
    """One tradable contract of the round, from the crawler's exginfo."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: Symbol
    face_value: Decimal | None = Field(description="Lot size, exact as the crawler wrote it.")
    price_tick: Decimal | None = None
    min_notional_value: Decimal | None = None


class RoundOpen(Body):
    """Market: a round starts; here is its universe and funding."""

    kind: ClassVar[str] = "round_open"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)
    run_time: AwareDatetime
    interval: str = Field(max_length=16)
    symbols: list[SymbolSpec] = Field(max_length=MAX_SYMBOLS)
    funding: dict[Symbol, float | None] = Field(max_length=MAX_SYMBOLS,
                                                description="Latest funding rate per symbol.")
    expire_sec: float = Field(ge=0, le=86_400, description="How long the market waits for ready files, from now.")

    @model_validator(mode="after")
    def _unique_symbols(self) -> RoundOpen:
        _unique([s.symbol for s in self.symbols], "symbols")
        return self


class RoundClosed(Body):
    """Market: no more candles will come for this round; these symbols never got theirs."""

    kind: ClassVar[str] = "round_closed"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)
    run_time: AwareDatetime
    missing: dict[Symbol, Text] = Field(max_length=MAX_SYMBOLS, description="Symbol -> why no candles were published.")
    last_ready_at: AwareDatetime | None = Field(description="When the round's last ready marker was seen.")


class CandleFile(BaseModel):
    """One symbol's ready candle file, and its funding events.

    Funding travels as two parallel lists rather than a list of pairs: validating them is several
    times faster, and a round validates one per symbol.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: Symbol
    path: str = Field(max_length=4096, description="The file the candles come from (to read, with by_path).")
    ready_at: AwareDatetime = Field(description="When the market saw the symbol's ready marker.")
    funding_times: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(
        [], max_length=MAX_FUNDING_EVENTS, description="The symbol's funding events inside the candle file's "
        "span: times in ms since the epoch, strictly increasing; sent when a configured plugin reads funding.")
    funding_rates: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        [], max_length=MAX_FUNDING_EVENTS, description="The events' rates, one per time.")

    @model_validator(mode="after")
    def _one_rate_per_increasing_time(self) -> CandleFile:
        times = self.funding_times
        if len(times) != len(self.funding_rates):
            raise ValueError(f"{len(times)} funding_times but {len(self.funding_rates)} funding_rates")
        if any(a >= b for a, b in itertools.pairwise(times)):
            raise ValueError("funding_times must be strictly increasing")
        return self


class Candles(Body):
    """Market: candle files whose ready markers appeared together, as the crawler wrote them.

    Payload: each file's feather bytes, in ``files`` order (one file per message, on its symbol's
    bucket topic, so a shard receives only its own bytes); or none with ``by_path``, when the
    factor workers share the crawler's filesystem and read the files themselves. Path messages
    are small, so the markers that appear within a few milliseconds travel as one message on
    ``bus.CANDLE_PATHS`` to every shard, and each shard computes the files it owns: a live round
    of thousands of symbols costs tens of messages, not thousands.
    """

    kind: ClassVar[str] = "candles"
    payload_frames: ClassVar[tuple[int, int]] = (0, MAX_PAYLOAD_FRAMES)
    run_time: AwareDatetime
    files: list[CandleFile] = Field(min_length=1, max_length=MAX_SYMBOLS)
    by_path: bool = Field(False, description="No payload: read each file at its ``path``.")

    @model_validator(mode="after")
    def _unique_files(self) -> Candles:
        _unique([f.symbol for f in self.files], "files")
        if not self.by_path and len(self.files) > MAX_PAYLOAD_FRAMES:
            raise ValueError(f"{len(self.files)} files' bytes in one message; at most {MAX_PAYLOAD_FRAMES}")
        return self

    def payload_count(self) -> int:
        return 0 if self.by_path else len(self.files)


class Skip(BaseModel):
    """A symbol left out of the round, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: Symbol
    reason: Literal["too_few_candles", "bad_data", "stale", "error", "no_candles"]
    detail: Text


class FactorResults(Body):
    """Factor worker: factor rows (payload: Arrow IPC table, one row per symbol) and skips."""

    kind: ClassVar[str] = "factor_results"
    payload_frames: ClassVar[tuple[int, int]] = (0, 1)
    run_time: AwareDatetime
    shard: ShardName = Field(description="The sending worker's shard, 'K/N'.")
    symbols: list[Symbol] = Field(max_length=MAX_SYMBOLS,
                                  description="Symbols whose rows are in the payload table, in order.")
    skipped: list[Skip] = Field([], max_length=MAX_SYMBOLS)
    last_ready_at: AwareDatetime | None = Field(description="Latest ready marker among these symbols.")
    compute_ms: float = Field(0.0, description="Time spent decoding and computing these symbols.")

    @model_validator(mode="after")
    def _each_symbol_once(self) -> FactorResults:
        _unique([*self.symbols, *(s.symbol for s in self.skipped)], "symbols and skipped")
        return self


class Pick(BaseModel):
    """One selected coin and its target position."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    symbol: Symbol = Field(description="Contract, e.g. 'BTCUSDT'.")
    close: float = Field(description="Close of the candle that just closed: the price the round sized at.")
    factor: float = Field(description="The value the coin was ranked by: its factor, or its side's composite.")
    factors: dict[str, float] = Field(
        {}, max_length=64, description="Every factor column -> value, and the side's composite column when it has one."
    )
    filters: dict[str, float] = Field(max_length=64, description="Filter column -> value.")
    position: Decimal = Field(description="Contracts on this side (unsigned), rounded to the lot size; exact.")
    pos_val: float = Field(description="position * close in USDT.")


class Shortfall(BaseModel):
    """How many coins each side wanted and got, when a side's pool was too small."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pool: int = Field(description="The pool after the common pre_filters (both sides' pool when they share one).")
    long_pool: int | None = Field(None, description="The long side's pool (after long_pre_filters).")
    short_pool: int | None = Field(None, description="The short side's pool (after short_pre_filters).")
    long_wanted: int
    long_got: int
    short_wanted: int
    short_got: int


class OffsetBook(BaseModel):
    """One offset's sub-portfolio after the round: it rebalances every hold_period hours, at its own hour."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rebalanced: bool = Field(description="True when this round was the offset's rebalance hour.")
    since: AwareDatetime | None = Field(description="The round its targets were chosen at; None before its first.")
    targets: dict[Symbol, Decimal] = Field(max_length=MAX_SYMBOLS,
                                           description="Symbol -> signed contracts this offset holds; exact.")


class Coverage(BaseModel):
    """What the round was built from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    expected: int
    received: int
    skipped: dict[Symbol, Text] = Field(max_length=MAX_SYMBOLS, description="Symbol -> reason it was left out.")
    missing: list[Symbol] = Field(max_length=MAX_SYMBOLS,
                                  description="Symbols nobody accounted for before the deadline.")
    late: list[Symbol] = Field(
        [], max_length=MAX_SYMBOLS,
        description="Symbols whose results came after the crawler's deadline (bmac_expire_sec), in the grace."
    )
    shards: list[str] = Field([], max_length=256,
                              description="Factor shards ('K/N') that reported for this round.")
    silent_shards: list[str] = Field([], max_length=256,
                                     description="Factor shards expected but not heard from this round.")


class Selection(Body):
    """Position: the round's target portfolio.

    Payload frames: the full factor table, the long table and the short table
    (Arrow IPC, the article's columns; ``position`` as exact decimal text).
    """

    kind: ClassVar[str] = "selection"
    payload_frames: ClassVar[tuple[int, int]] = (3, 3)
    run_time: AwareDatetime
    factor_column: str = Field(max_length=256, description="The column the picks were ranked by (the long side's "
                               "when the sides rank differently): the factor's, or the composite.")
    ranked_by: dict[Literal["long", "short"], Annotated[str, StringConstraints(max_length=256)]] = Field(
        {}, description="Each side's ranking column.")
    factor_columns: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        [], max_length=64, description="Every factor column ranked by, then the composite column(s).")
    hold_period: str = Field("1H", max_length=16, description="How long each offset holds its picks.")
    long: list[Pick] = Field(max_length=MAX_SYMBOLS)
    short: list[Pick] = Field(max_length=MAX_SYMBOLS)
    shortfall: Shortfall | None = None
    pool: int | None = Field(None, ge=0, description="Candidates after the NaN/inf filter, the lists and the "
                             "common pre_filters: the pool both sides are picked from (each side's own rules "
                             "may narrow it further; see shortfall).")
    coverage: Coverage
    incomplete: bool = Field(description="True when some symbols were missing at the deadline.")
    latency_ms: float | None = Field(None, description="Last ready marker to selection, milliseconds.")
    targets: dict[Symbol, Decimal] = Field(
        max_length=MAX_SYMBOLS,
        description="Symbol -> signed target contracts (long +, short -): every offset's targets added, exactly.")
    offsets: dict[Annotated[str, StringConstraints(pattern=r"^\d{1,4}$")], OffsetBook] = Field(
        {}, max_length=MAX_OFFSETS, description="Offset (hour in the hold period) -> its sub-portfolio.")
    previous_run_time: AwareDatetime | None = Field(description="The round the previous targets are from.")
    previous: dict[Symbol, Decimal] = Field(max_length=MAX_SYMBOLS,
                                            description="Symbol -> signed targets of the previous round.")
    changes: dict[Symbol, Decimal] = Field(
        max_length=MAX_SYMBOLS,
        description="Symbol -> target minus previous target, for every symbol in either; what to trade."
    )


class Heartbeat(Body):
    """Any service: I am alive; what I last did."""

    kind: ClassVar[str] = "heartbeat"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)
    service: str = Field(max_length=64)
    state: dict[Annotated[str, StringConstraints(max_length=64)], Any] = Field({}, max_length=64)


class SnapshotRequest(Body):
    """Client: send me the latest selection, or every retained one after ``since``."""

    kind: ClassVar[str] = "snapshot_request"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)
    since: AwareDatetime | None = None


class SnapshotEmpty(Body):
    """Position: there is no selection yet to send."""

    kind: ClassVar[str] = "snapshot_empty"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)


BODIES: dict[str, type[Body]] = {
    cls.kind: cls
    for cls in (RoundOpen, RoundClosed, Candles, FactorResults, Selection, Heartbeat, SnapshotRequest,
                SnapshotEmpty)
}


class Header(BaseModel):
    """The envelope of every message."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: Annotated[int, Field(description="Schema version.")] = SCHEMA_VERSION
    kind: str = Field(max_length=64)
    stack: str = Field(max_length=128, description="The stack this message belongs to: receivers drop others'.")
    sender: str = Field(max_length=256, description="The sending process incarnation, e.g. 'market@host:pid:t'.")
    seq: int = Field(ge=0, lt=2**63, description="Per sender and topic, from 1 (0: outside any sequence).")
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


def encode_unsequenced(topic: str, stack: str, sender: str, body: Body) -> list[Any]:
    """A request or reply outside any published sequence (seq 0): snapshot requests and empty answers."""
    return encode(topic, Header(kind=body.kind, stack=stack, sender=sender, seq=0, sent_at=datetime.now(UTC)), body)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _problems(e: ValidationError, limit: int = 3) -> str:
    """The first few errors, one line, without echoing the (possibly huge) input."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()[:limit]]
    more = e.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(frames: list[Any]) -> Envelope:
    """Frames -> Envelope; BadMessage says what is wrong with them (and nothing else is ever raised)."""
    if len(frames) < 2:
        raise BadMessage(f"expected at least 2 frames (topic, header), got {len(frames)}")
    if len(frames[0]) > MAX_TOPIC_BYTES or len(frames[1]) > MAX_HEADER_BYTES:
        raise BadMessage(f"topic of {len(frames[0])} or header of {len(frames[1])} bytes is over the limit "
                         f"({MAX_TOPIC_BYTES}, {MAX_HEADER_BYTES})")
    try:
        topic = bytes(frames[0]).decode()
        head = msgpack.unpackb(bytes(frames[1]))
    except Exception as e:  # msgpack raises several types (and StackError on deep nesting)
        raise BadMessage(f"undecodable topic or header: {type(e).__name__}: {_short(str(e))}") from None
    if not isinstance(head, dict):
        raise BadMessage(f"header is a {type(head).__name__}, not a map")
    if head.get("v") != SCHEMA_VERSION:
        raise BadMessage(f"schema version {_short(head.get('v'))}, this build speaks {SCHEMA_VERSION}")
    kind = head.get("kind")
    body_cls = BODIES.get(kind) if isinstance(kind, str) else None
    if body_cls is None:
        raise BadMessage(f"unknown message kind {_short(kind)} on topic {topic!r}")
    raw_body = head.pop("body", None)
    sender = head.get("sender")
    origin = f"{body_cls.kind} from {_short(sender) if isinstance(sender, str) else 'an unnamed sender'} " \
             f"on topic {_short(topic)}"
    if isinstance(raw_body, dict) and isinstance(raw_body.get("run_time"), str):
        origin += f" (round {_short(raw_body['run_time'], 40)})"
    try:
        header = Header.model_validate(head)
        body = body_cls.model_validate(raw_body)
    except ValidationError as e:
        raise BadMessage(f"invalid {origin}: {_problems(e)}") from None
    except Exception as e:  # a validator tripped on something stranger still: the message is bad all the same
        raise BadMessage(f"invalid {origin}: {type(e).__name__}: {_short(str(e))}") from None
    least, most = body_cls.payload_frames
    exact = body.payload_count()
    if exact is not None:
        least = most = exact
    if not least <= len(frames) - 2 <= most:
        raise BadMessage(f"{origin} has {len(frames) - 2} payload frame(s), expected "
                         f"{least if least == most else f'{least} to {most}'}")
    payloads = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames[2:]]
    return Envelope(topic, header, body, payloads)


def recv(socket: zmq.Socket) -> Envelope:
    """Receive one message without copying payload frames; BadMessage on garbage."""
    return decode(socket.recv_multipart(copy=False))


class Missed(Body):
    """An hour boundary that has no selection, and why: no hour is lost silently.

    The market sends it on ``round.missed`` for a round it could not run; the position service
    publishes it on ``selection`` (for executors and the recorder) for every hour without a
    selection, whoever noticed.
    """

    kind: ClassVar[str] = "missed"
    payload_frames: ClassVar[tuple[int, int]] = (0, 0)
    run_time: AwareDatetime
    reason: Literal["no_exginfo", "bad_exginfo", "market_down", "overwritten", "no_round", "withheld"] = Field(
        description="no_exginfo: the crawler's exginfo/funding markers did not appear within bmac_expire_sec; "
                    "bad_exginfo: they could not be read; market_down: the market was not running at the "
                    "boundary; overwritten: the crawler had already replaced the hour's files with a newer "
                    "hour's; no_round: no round was gathered for the hour (market or position down); "
                    "withheld: the round was incomplete and the policy is withhold.")
    detail: Text = Field(description="One sentence naming what was seen.")


BODIES[Missed.kind] = Missed
