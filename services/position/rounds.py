"""A round as the position service sees it: what arrived, whether it is complete, and its selection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from services.position.strategy import Choice, Hour, Rows, Source, candidate_rows, rebalances, strategy_hour
from shared.bus import Shard
from shared.config import SelectorConfig
from shared.messages import (
    Coverage,
    FactorResults,
    OffsetBook,
    Pick,
    RoundClosed,
    RoundOpen,
    Selection,
    Shortfall,
)

CONSOLIDATE_TABLES = 32


@dataclass
class RoundState:
    """Everything gathered for one run_time."""

    open: RoundOpen
    opened_at: float = field(default_factory=time.monotonic)
    tables: list[pa.Table] = field(default_factory=list)  # as received; converted once, at the end
    rows: dict[str, int] = field(default_factory=dict)  # symbol -> row in the concatenation of tables
    received_rows: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    closed_at: float | None = None
    progress_at: float | None = None  # when a result last accounted for a symbol not accounted for before
    last_ready_at: datetime | None = None
    shards: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    schema: pa.Schema | None = None  # the received tables' unified schema: each new one must fit it
    uniform: bool = True  # every table has the first one's schema: concatenated without promotion (5x cheaper)
    _combined: int = 0  # tables[:_combined] are each CONSOLIDATE_TABLES received tables in one chunk

    def __post_init__(self) -> None:
        self.universe = [s.symbol for s in self.open.symbols]
        self._members = {s: i for i, s in enumerate(self.universe)}  # symbol -> place in the universe
        # per place: its row in the concatenated tables (-1: none), and whether it is accounted for (a row or a
        # skip): the round's finish reads both as arrays, not symbol by symbol
        self._row_at = np.full(len(self.universe), -1, np.int64)
        self._accounted = np.zeros(len(self.universe), dtype=bool)
        # lot sizes, read when the round opens rather than when its last result arrives
        self.face_values: dict[str, Decimal] = {s.symbol: s.face_value for s in self.open.symbols if s.face_value}

    def foreign(self, body: FactorResults) -> str | None:
        """Why these results are not the sender's to give (None: they are): symbols outside this
        round's universe, or outside the sending shard's buckets."""
        named = [*body.symbols, *(k.symbol for k in body.skipped)]
        strangers = [s for s in named if s not in self._members]
        if strangers:
            return f"{len(strangers)} symbol(s) not in the round's universe: {', '.join(strangers[:5])}"
        shard = Shard.parse(body.shard)
        others = [s for s in named if not shard.owns(s)]
        if others:
            return f"{len(others)} symbol(s) of other shards: {', '.join(others[:5])}"
        return None

    def add_results(self, body: FactorResults, rows: pa.Table | None) -> list[str]:
        """Take what the body accounts for; returns the symbols already accounted for (first one wins)."""
        universe = self._members
        accounted_before = self._accounted.sum()  # progress is what this result accounts for, nothing else
        repeated = [s for s in [*body.symbols, *(k.symbol for k in body.skipped)]
                    if s in self.rows or s in self.skipped]
        self.shards.add(body.shard)
        if rows is not None:
            self.tables.append(rows)
            if self.schema is None:
                self.schema = rows.schema
            elif not self.schema.equals(rows.schema):
                self.uniform = False
                self.schema = pa.unify_schemas([self.schema, rows.schema], promote_options="permissive")
            for i, symbol in enumerate(body.symbols):
                if symbol in universe and symbol not in self.rows and symbol not in self.skipped:
                    self.rows[symbol] = self.received_rows + i
                    self._row_at[universe[symbol]] = self.received_rows + i
                    self._accounted[universe[symbol]] = True
            self.received_rows += rows.num_rows
            if len(self.tables) - self._combined >= CONSOLIDATE_TABLES:  # while waiting for the rest, not at the end
                fresh = pa.concat_tables(self.tables[self._combined:], promote_options=self._promote)
                self.tables[self._combined:] = [fresh.combine_chunks()]  # one chunk: a take over many is slow
                self._combined += 1
        for skip in body.skipped:
            if skip.symbol in universe and skip.symbol not in self.rows:
                self.skipped.setdefault(skip.symbol, f"{skip.reason}: {skip.detail}")
                self._accounted[universe[skip.symbol]] = True
        if self._accounted.sum() > accounted_before:
            self.progress_at = time.monotonic()
        if time.monotonic() > self.opened_at + self.open.expire_sec:  # after the crawler's deadline
            self.late.update(s for s in [*body.symbols, *(k.symbol for k in body.skipped)] if s in universe)
        self._note_ready(body.last_ready_at)
        return repeated

    def add_closed(self, body: RoundClosed) -> None:
        self.closed_at = time.monotonic()
        for symbol, why in body.missing.items():
            self.skipped.setdefault(symbol, f"no_candles: {why}")
            if symbol in self._members:
                self._accounted[self._members[symbol]] = True
        self._note_ready(body.last_ready_at)

    def _note_ready(self, t: datetime | None) -> None:
        if t is not None and (self.last_ready_at is None or t > self.last_ready_at):
            self.last_ready_at = t

    def factor_table(self) -> pa.Table | None:
        """Every received row, in universe order: one Arrow concat and take, no per-row work."""
        order = self._row_at[self._row_at >= 0]
        if not len(order):
            return None
        return pa.concat_tables(self.tables, promote_options=self._promote).take(pa.array(order))

    @property
    def _promote(self) -> str:
        return "none" if self.uniform else "permissive"

    def missing(self) -> list[str]:
        return [self.universe[i] for i in np.flatnonzero(~self._accounted).tolist()]

    def complete(self) -> bool:
        return len(self.rows) + len(self.skipped) >= len(self.universe) and not self.missing()

    def deadline(self, grace: float) -> float:
        """When to stop waiting: grace after the market closed the round (or after its expiry) and after the
        last result that accounted for a new symbol. Factor shards still delivering (thousands of symbols
        through slow plugins) are never cut off; silent ones are, grace after they fell silent. Each
        extension accounts for at least one more symbol, so no peer can hold a round open."""
        closed = self.closed_at if self.closed_at is not None else self.opened_at + self.open.expire_sec
        return max(closed, self.progress_at or closed) + grace


@dataclass(frozen=True)
class Previous:
    """The last published round: its summed signed targets (what an executor holds going into this
    round) and each offset's book (what an offset that does not rebalance keeps)."""

    run_time: datetime | None = None
    targets: dict[str, Decimal] = field(default_factory=dict)
    offsets: dict[int, OffsetBook] = field(default_factory=dict)

    @classmethod
    def of(cls, selection: Selection | None) -> Previous:
        if selection is None:
            return cls()
        return cls(selection.run_time, dict(selection.targets),
                   {int(o): book for o, book in selection.offsets.items()})


def target_changes(targets: dict[str, Decimal], previous: dict[str, Decimal]) -> dict[str, Decimal]:
    """Target minus previous target for every symbol in either (a symbol leaving goes to zero)."""
    symbols = list(targets) + [s for s in previous if s not in targets]
    return {s: targets.get(s, Decimal(0)) - previous.get(s, Decimal(0)) for s in symbols}


def offset_books(hour: Hour, previous: Previous, run_time: datetime, period_hours: int) -> dict[str, OffsetBook]:
    """Each offset's targets after the round, with when it last chose them (None: never yet)."""
    books = {}
    for o, targets in hour.offsets.items():
        now = rebalances(run_time, period_hours, o)
        before = previous.offsets.get(o)
        since = run_time if now else before.since if before is not None else None
        books[str(o)] = OffsetBook(rebalanced=now, since=since, targets=targets)
    return books


@dataclass(frozen=True)
class Built:
    selection: Selection
    factor_table: pa.Table  # the factors as received, plus composite columns: published without another conversion
    long_table: pa.Table  # each side as published: every received column, then the strategy's (position as text)
    short_table: pa.Table
    hour: Hour
    read: Source  # symbol, close, the factor and filter columns: what the strategy read
    composites: dict[str, np.ndarray]  # each composite column over the received rows (NaN outside its pool)

    @cached_property
    def factors(self) -> pd.DataFrame:
        """What the strategy read, and the composites (built when asked for: after the selection is sent)."""
        return self.read.frame.assign(**self.composites) if self.composites else self.read.frame

    @property
    def long(self) -> pd.DataFrame:
        """The sized side over the columns read, plus what the strategy added."""
        return self.hour.long

    @property
    def short(self) -> pd.DataFrame:
        return self.hour.short


def _strategy_frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """The columns the strategy read, as plain numpy-backed pandas (symbols as Python strings, labels too).

    Converting the candle columns as well doubled the strategy's time, and pandas' Arrow-backed strings
    cost more than plain objects in every index and column operation on a frame this small.
    """
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) if c == "symbol" else v for c, v in arrays.items()})
    frame.columns = pd.Index(list(arrays), dtype=object)
    return frame


def _received_rows(side: Rows) -> np.ndarray:
    """The side's rows in the received table (the strategy frame's labels are its row numbers)."""
    return side.source.labels[side.at]


def _side_tables(table: pa.Table, sides: tuple[Rows, ...]) -> list[pa.Table]:
    """Each side as the article's frame has it: the picks' received rows with every column, then the columns the
    strategy added (rule ranks, composite, position as exact text, pos_val), built in Arrow (converting the
    whole frame back from pandas cost more than the strategy itself); one take for all sides."""
    rows = table.take(pa.array(np.concatenate([_received_rows(side) for side in sides]), pa.int64()))
    out, start = [], 0
    for side in sides:
        part = rows.slice(start, len(side))
        start += len(side)
        for column, values in side.added.items():
            if column in part.column_names:
                continue
            array = (pa.array([str(v) for v in values.tolist()], pa.string()) if column == "position"
                     else pa.Array.from_pandas(values))
            part = part.append_column(column, array)
        out.append(part)
    return out


def _picks(side: Rows, ranked_by: str, factors: list[str], filters: list[str]) -> list[Pick]:
    columns = {c: side.column(c).tolist() for c in dict.fromkeys(["symbol", "close", ranked_by, "position",
                                                                  "pos_val", *factors, *filters])}
    return [
        Pick(symbol=columns["symbol"][i], close=columns["close"][i], factor=columns[ranked_by][i],
             factors={f: columns[f][i] for f in factors}, filters={f: columns[f][i] for f in filters},
             position=columns["position"][i], pos_val=columns["pos_val"][i])
        for i in range(len(side))
    ]


def _composites(cfg: SelectorConfig, choice: Choice, read: list[str], rows: int) -> dict[str, np.ndarray]:
    """factor_his gets each composite column: its value over the side's pool, empty for rows outside it."""
    out = {}
    for side, pool in (("long", choice.long_pool_rows), ("short", choice.short_pool_rows)):
        column = cfg.composite_column(side)
        if column is None or column in read or column in out:
            continue
        values = np.full(rows, np.nan)
        values[_received_rows(pool)] = pool.column(column)
        out[column] = values
    return out


def build_selection(cfg: SelectorConfig, state: RoundState, flag_incomplete: bool,
                    previous: Previous | None = None, expected_shards: list[str] | None = None) -> Built:
    """The strategy on the gathered rows: candidate pool, rules, ranking, sides, sizing per offset, the books.

    With the article's config these are the article's steps 4-6 (nan/inf filter, pre-filters, select, size).
    """
    universe = state.universe
    run_time = state.open.run_time
    table = state.factor_table()
    if table is None:  # every symbol skipped or missing: empty sides, with the columns, as promised
        table = pa.table({"symbol": pa.array([], pa.large_string()),
                          **{c: pa.array([], pa.float64()) for c in ["close", *cfg.columns]}})
    columns = list(dict.fromkeys(["symbol", "close", *cfg.columns]))
    arrays = {c: table[c].to_numpy() for c in columns}  # the strategy's frame only when asked for (after the send)
    source = Source(lambda: _strategy_frame(arrays), arrays)
    face_values = state.face_values
    skipped = dict(state.skipped)
    pool = candidate_rows(source.rows(), cfg)
    unsizable = [s for s in pool.column("symbol").tolist() if s not in face_values]
    if unsizable:
        for symbol in unsizable:
            skipped[symbol] = "bad_data: exginfo has no face_value"
        pool = pool.take(np.array([s in face_values for s in pool.column("symbol").tolist()], dtype=bool))
    previous = previous or Previous()
    held = {o: book.targets for o, book in previous.offsets.items()}
    hour = strategy_hour(pool, face_values, cfg, cfg.capital_usdt, run_time, held)
    choice, long, short = hour.choice, hour.long_rows, hour.short_rows
    composites = _composites(cfg, choice, columns, table.num_rows)
    factor_table = table
    for column, values in composites.items():
        factor_table = factor_table.append_column(column, pa.array(values, pa.float64()))
    ranked_by = {side: cfg.composite_column(side) or factor_list[0].column
                 for side, factor_list in (("long", cfg.long_factor_list), ("short", cfg.short_factor_list))}
    filters = cfg.filter_columns
    missing = state.missing()
    now = datetime.now(UTC)
    selection = Selection(
        run_time=run_time,
        factor_column=ranked_by["long"],
        ranked_by=ranked_by,
        factor_columns=[*cfg.factor_columns, *cfg.composite_columns],
        hold_period=cfg.hold_period,
        long=_picks(long, ranked_by["long"], _side_factors(cfg, "long"), filters),
        short=_picks(short, ranked_by["short"], _side_factors(cfg, "short"), filters),
        shortfall=Shortfall(pool=choice.pool, long_pool=len(choice.long_pool_rows),
                            short_pool=len(choice.short_pool_rows), long_wanted=choice.long_wanted,
                            long_got=len(long), short_wanted=choice.short_wanted,
                            short_got=len(short)) if choice.shortfall else None,
        pool=choice.pool,
        coverage=Coverage(expected=len(universe), received=len(state.rows), skipped=skipped, missing=missing,
                          late=sorted(state.late), shards=sorted(state.shards),
                          silent_shards=[s for s in expected_shards or [] if s not in state.shards]),
        incomplete=bool(missing) and flag_incomplete,
        latency_ms=(now - state.last_ready_at).total_seconds() * 1000 if state.last_ready_at else None,
        targets=hour.targets,
        offsets=offset_books(hour, previous, run_time, cfg.period_hours),
        previous_run_time=previous.run_time,
        previous=previous.targets,
        changes=target_changes(hour.targets, previous.targets),
    )
    long_table, short_table = _side_tables(table, (long, short))
    return Built(selection, factor_table, long_table, short_table, hour, source, composites)


def _side_factors(cfg: SelectorConfig, side: str) -> list[str]:
    """What a pick reports in ``factors``: every factor column, and its side's composite."""
    composite = cfg.composite_column(side)
    return [*cfg.factor_columns, *([composite] if composite else [])]


PENDING_ROUNDS = 3
PENDING_MESSAGES = 1024
PENDING_BYTES = 16 * 2**20
PENDING_TTL_SEC = 60.0


@dataclass
class _Held:
    since: float
    messages: list = field(default_factory=list)
    nbytes: int = 0


class Pending:
    """Results and closes for rounds not announced yet (the market's SUB can lag the factor's), bounded.

    At most PENDING_ROUNDS rounds, each at most PENDING_MESSAGES messages and PENDING_BYTES of payload,
    each kept PENDING_TTL_SEC: whatever a peer sends for rounds that never open, this is all it holds.
    When full, a nearer round displaces the furthest one (the next real round is the nearest).
    """

    def __init__(self, rounds: int = PENDING_ROUNDS, messages: int = PENDING_MESSAGES,
                 nbytes: int = PENDING_BYTES, ttl: float = PENDING_TTL_SEC):
        self.max_rounds, self.max_messages, self.max_bytes, self.ttl = rounds, messages, nbytes, ttl
        self.held: dict[datetime, _Held] = {}

    def hold(self, run_time: datetime, message: object, size: int, now: float) -> str | None:
        """Keep ``message``; or say why not (it is then dropped)."""
        held = self.held.get(run_time)
        if held is None:
            if len(self.held) >= self.max_rounds:
                furthest = max(self.held)
                if run_time > furthest:
                    return f"already holding {len(self.held)} unannounced rounds, all nearer"
                del self.held[furthest]
            held = self.held[run_time] = _Held(now)
        if len(held.messages) >= self.max_messages or held.nbytes + size > self.max_bytes:
            return (f"the round's buffer is full ({len(held.messages)} messages, {held.nbytes} bytes; "
                    f"limits {self.max_messages}, {self.max_bytes})")
        held.messages.append(message)
        held.nbytes += size
        return None

    def pop(self, run_time: datetime) -> list:
        held = self.held.pop(run_time, None)
        return held.messages if held else []

    def expire(self, now: float) -> list[tuple[datetime, int]]:
        """Drop rounds held longer than the TTL; returns them with their message counts."""
        old = [(t, len(h.messages)) for t, h in self.held.items() if now - h.since > self.ttl]
        for t, _ in old:
            del self.held[t]
        return old
