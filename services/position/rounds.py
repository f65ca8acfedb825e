"""A round as the position service sees it: what arrived, whether it is complete, and its selection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa

from services.position.strategy import Choice, Hour, candidate_pool, rebalances, strategy_hour
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
    last_ready_at: datetime | None = None
    shards: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    schema: pa.Schema | None = None  # the received tables' unified schema: each new one must fit it
    _combined: int = 0  # tables[:_combined] are each CONSOLIDATE_TABLES received tables in one chunk

    def __post_init__(self) -> None:
        self.universe = [s.symbol for s in self.open.symbols]
        self._members = set(self.universe)

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
        repeated = [s for s in [*body.symbols, *(k.symbol for k in body.skipped)]
                    if s in self.rows or s in self.skipped]
        self.shards.add(body.shard)
        if rows is not None:
            self.tables.append(rows)
            if self.schema is None:
                self.schema = rows.schema
            elif not self.schema.equals(rows.schema):
                self.schema = pa.unify_schemas([self.schema, rows.schema], promote_options="permissive")
            for i, symbol in enumerate(body.symbols):
                if symbol in universe and symbol not in self.rows and symbol not in self.skipped:
                    self.rows[symbol] = self.received_rows + i
            self.received_rows += rows.num_rows
            if len(self.tables) - self._combined >= CONSOLIDATE_TABLES:  # while waiting for the rest, not at the end
                fresh = pa.concat_tables(self.tables[self._combined:], promote_options="permissive")
                self.tables[self._combined:] = [fresh.combine_chunks()]  # one chunk: a take over many is slow
                self._combined += 1
        for skip in body.skipped:
            if skip.symbol in universe and skip.symbol not in self.rows:
                self.skipped.setdefault(skip.symbol, f"{skip.reason}: {skip.detail}")
        if time.monotonic() > self.opened_at + self.open.expire_sec:  # after the crawler's deadline
            self.late.update(s for s in [*body.symbols, *(k.symbol for k in body.skipped)] if s in universe)
        self._note_ready(body.last_ready_at)
        return repeated

    def add_closed(self, body: RoundClosed) -> None:
        self.closed_at = time.monotonic()
        for symbol, why in body.missing.items():
            self.skipped.setdefault(symbol, f"no_candles: {why}")
        self._note_ready(body.last_ready_at)

    def _note_ready(self, t: datetime | None) -> None:
        if t is not None and (self.last_ready_at is None or t > self.last_ready_at):
            self.last_ready_at = t

    def factor_table(self) -> pa.Table | None:
        """Every received row, in universe order: one Arrow concat and take, no per-row work."""
        order = [self.rows[s] for s in self.universe if s in self.rows]
        if not order:
            return None
        return pa.concat_tables(self.tables, promote_options="permissive").take(pa.array(order))

    def missing(self) -> list[str]:
        return [s for s in self.universe if s not in self.rows and s not in self.skipped]

    def complete(self) -> bool:
        return len(self.rows) + len(self.skipped) >= len(self.universe) and not self.missing()

    def deadline(self, grace: float) -> float:
        """When to stop waiting: grace after the market closed the round, or after its expiry."""
        if self.closed_at is not None:
            return self.closed_at + grace
        return self.opened_at + self.open.expire_sec + grace


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
    factors: pd.DataFrame  # symbol, close, the factor and filter columns (and composites): what the strategy read
    long: pd.DataFrame  # the sized sides over those columns, plus what the strategy added
    short: pd.DataFrame
    factor_table: pa.Table  # the factors as received, plus composite columns: published without another conversion
    long_table: pa.Table  # each side as published: every received column, then the strategy's (position as text)
    short_table: pa.Table


def _strategy_frame(table: pa.Table, columns: list[str]) -> pd.DataFrame:
    """The columns the strategy reads, as plain numpy-backed pandas (symbols as Python strings, labels too).

    Converting the candle columns as well doubled the strategy's time, and pandas' Arrow-backed strings
    cost more than plain objects in every index and column operation on a frame this small.
    """
    columns = list(dict.fromkeys(columns))
    frame = pd.DataFrame({c: pd.Series(table[c].to_numpy(), dtype=object) if c == "symbol" else table[c].to_numpy()
                          for c in columns})
    frame.columns = pd.Index(columns, dtype=object)
    return frame


def _side_table(table: pa.Table, row_of: dict[str, int], side: pd.DataFrame) -> pa.Table:
    """A side as the article's frame has it: the picks' received rows with every column, then the columns the
    strategy added (rule ranks, composite, position as exact text, pos_val), built in Arrow: converting the
    whole frame back from pandas cost more than the strategy itself."""
    rows = table.take(pa.array([row_of[s] for s in side["symbol"].tolist()], pa.int64()))
    for column in side.columns:
        if column in rows.column_names:
            continue
        values = side[column]
        array = (pa.array([str(v) for v in values.tolist()], pa.string()) if column == "position"
                 else pa.Array.from_pandas(values.to_numpy()))
        rows = rows.append_column(column, array)
    return rows


def _picks(side: pd.DataFrame, ranked_by: str, factors: list[str], filters: list[str]) -> list[Pick]:
    columns = {c: side[c].tolist() for c in dict.fromkeys(["symbol", "close", ranked_by, "position", "pos_val",
                                                           *factors, *filters])}
    return [
        Pick(symbol=columns["symbol"][i], close=columns["close"][i], factor=columns[ranked_by][i],
             factors={f: columns[f][i] for f in factors}, filters={f: columns[f][i] for f in filters},
             position=columns["position"][i], pos_val=columns["pos_val"][i])
        for i in range(len(side))
    ]


def _with_composites(table: pa.Table, factors: pd.DataFrame, cfg: SelectorConfig,
                     choice: Choice) -> tuple[pa.Table, pd.DataFrame]:
    """factor_his gets each composite column: its value over the side's pool, empty for rows outside it."""
    for side, pool in (("long", choice.long_pool), ("short", choice.short_pool)):
        column = cfg.composite_column(side)
        if column is None or column in factors.columns:
            continue
        values = pool[column].reindex(factors.index).to_numpy(dtype=float)
        factors = factors.assign(**{column: values})
        table = table.append_column(column, pa.array(values, pa.float64()))
    return table, factors


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
    received = table
    factors = _strategy_frame(table, ["symbol", "close", *cfg.columns])
    face_values: dict[str, Decimal] = {s.symbol: s.face_value for s in state.open.symbols if s.face_value}
    skipped = dict(state.skipped)
    pool = candidate_pool(factors, cfg)
    unsizable = np.array([s not in face_values for s in pool["symbol"].tolist()], dtype=bool)
    for symbol in pool.loc[unsizable, "symbol"]:
        skipped[symbol] = "bad_data: exginfo has no face_value"
    previous = previous or Previous()
    held = {o: book.targets for o, book in previous.offsets.items()}
    hour = strategy_hour(pool[~unsizable], face_values, cfg, cfg.capital_usdt, run_time, held)
    choice, long, short = hour.choice, hour.long, hour.short
    table, factors = _with_composites(table, factors, cfg, choice)
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
        shortfall=Shortfall(pool=choice.pool, long_pool=len(choice.long_pool), short_pool=len(choice.short_pool),
                            long_wanted=choice.long_wanted, long_got=len(long), short_wanted=choice.short_wanted,
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
    row_of = {s: i for i, s in enumerate(factors["symbol"].tolist())}
    return Built(selection, factors, long, short, table, _side_table(received, row_of, long),
                 _side_table(received, row_of, short))


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
