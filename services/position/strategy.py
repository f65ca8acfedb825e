"""The strategy core as pure functions on frames: rules, multi-factor ranking, counts, sides, offsets.

No I/O: the live position service, a paper trader and a backtest call the same functions, the service
with one hour's frame, the backtest with a panel of thousands of hours (``HOUR``): every step is a
grouped, vectorised operation hour by hour, so one implementation serves both. The steps pass row
positions (``Rows`` of a ``Source``), not frames: a frame is built only when a caller reads one, so the
live hour pays for numpy arithmetic, not for pandas selections (issue 10). With the article's
strategy (``Strategy.article()``) every step is the article's own computation, so its selections and
positions are unchanged; sizing is ``select.size_side`` (Decimal, the article's rounding) and
``pick_sides`` holds the article's shortfall rule, generalised to two orderings.

Conventions (issue 9):
- A side's ordering puts the coins to short at the head and the coins to long at the tail.
- Rule ranks (method "first") and factor ranks (method "min") are over an hour's pool in universe order.
- One factor orders as the article's ``sort_values`` (numpy's quicksort: its tie order, hour by hour).
- Pre rules of kind rank/pct store their values as ``<column>_rank`` / ``<column>_pct`` in the pool
  (the article keeps ``Volume_fl_24_rank``); post rules add no column.
- With separate long and short rankings a coin may be picked on both sides; its targets net out.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property

import numpy as np
import pandas as pd

from services.position.select import finite, lot_positions
from shared.strategy import FactorSpec, FilterRule, Strategy, parse_rule

__all__ = [
    "HOUR", "Choice", "Choices", "Hour", "Hours", "Rows", "Source", "apply_rules", "candidate_pool",
    "candidate_rows", "choose", "choose_hours", "composite", "hour_keys", "hour_number", "hour_targets",
    "offset_targets", "parse_rule", "pick_sides", "rank_first", "rank_min",
    "rebalances", "resolve_count", "resolve_counts", "size_choice",
    "sort_order", "strategy_hour", "strategy_hours", "sum_targets",
]

_COMPARE: dict[str, Callable[[object, object], object]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}

HOUR = "_hour"
"""A panel's hour column. A frame with it holds many hours (0, 1, ... in row order, universe order inside
each hour); a frame without it is one hour. Every function here computes hour by hour either way, so the
live service (one hour) and the backtest (all its hours at once) run the same code."""


def hour_keys(frame: pd.DataFrame) -> np.ndarray:
    """Each row's hour: the panel's HOUR column, zeros for a one-hour frame."""
    if HOUR in frame.columns:
        return frame[HOUR].to_numpy(np.int64)
    return np.zeros(len(frame), np.int64)


def _starts(keys: np.ndarray) -> np.ndarray:
    """Each row's first row of its hour (keys non-decreasing)."""
    at = np.arange(len(keys))
    new = np.ones(len(keys), dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    return np.maximum.accumulate(np.where(new, at, 0))


def _stable_order(values: np.ndarray, keys: np.ndarray, ascending: bool) -> np.ndarray:
    """Rows by hour, then by value (descending: by -value), ties in row order. Each hour keeps its rows' places."""
    return np.lexsort((values if ascending else -values, keys))


def rank_first(values: np.ndarray, keys: np.ndarray, ascending: bool = True) -> np.ndarray:
    """Each hour's ranks, ties in row order: pandas' ``rank(method="first")``, hour by hour."""
    order = _stable_order(values, keys, ascending)
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values)) - _starts(keys) + 1
    return ranks


def rank_min(values: np.ndarray, keys: np.ndarray, ascending: bool = True) -> np.ndarray:
    """Each hour's ranks, ties sharing the lowest: pandas' ``rank(method="min")``, hour by hour."""
    order = _stable_order(values, keys, ascending)
    ordered = (values if ascending else -values)[order]
    starts, at = _starts(keys), np.arange(len(values))
    new = at == starts
    new[1:] |= ordered[1:] != ordered[:-1]
    ranks = np.empty(len(values))
    ranks[order] = np.maximum.accumulate(np.where(new, at, 0)) - starts + 1
    return ranks


def _pandas_order(values: np.ndarray, ascending: bool) -> np.ndarray:
    """``sort_values(ascending=...)``'s row order (pandas' nargsort: numpy's quicksort, ties as it leaves them)."""
    if ascending:
        return values.argsort(kind="quicksort")
    return (len(values) - 1 - values[::-1].argsort(kind="quicksort"))[::-1]


def sort_order(values: np.ndarray, keys: np.ndarray, ascending: bool) -> np.ndarray:
    """Rows by hour, each hour in the order the article's ``sort_values`` gives it (quicksort: tie order is
    numpy's). An hour without ties has one sorted order, so only hours with ties are sorted one by one."""
    order = _stable_order(values, keys, ascending)
    if len(order) == 0:
        return order
    ordered, starts = values[order], _starts(keys)
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] = (ordered[1:] == ordered[:-1]) & (starts[1:] == starts[:-1])
    for start in np.unique(starts[tied]).tolist():
        end = int(np.searchsorted(keys, keys[start], side="right"))
        order[start:end] = start + _pandas_order(values[start:end], ascending)
    return order


class Source:
    """A pool read column by column once: the steps below select rows by position and build a frame only when
    one is asked for (on a live hour of ~200 rows each pandas selection cost more than the arithmetic).

    ``frame`` is the pool's frame, or (one hour, labelled 0..n-1) a function that builds it from ``columns``,
    the live shell's columns as read from Arrow.
    """

    def __init__(self, frame: pd.DataFrame | Callable[[], pd.DataFrame],
                 columns: Mapping[str, np.ndarray] | None = None):
        if isinstance(frame, pd.DataFrame):
            self._frame: pd.DataFrame | None = frame
            self._columns: dict[str, np.ndarray] = {}
            self.keys = hour_keys(frame)
        else:
            if not columns:
                raise ValueError("a Source built from columns needs at least one column")
            self._frame, self._build = None, frame
            self._columns = dict(columns)
            self.keys = np.zeros(len(next(iter(self._columns.values()))), np.int64)

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self._build()
        return self._frame

    @cached_property
    def labels(self) -> np.ndarray:
        """Each row's label in ``frame``."""
        return self.frame.index.to_numpy() if self._frame is not None else np.arange(len(self.keys))

    def column(self, name: str) -> np.ndarray:
        values = self._columns.get(name)
        if values is None:
            values = self._columns[name] = self.frame[name].to_numpy()
        return values

    def rows(self) -> Rows:
        return Rows(self, np.arange(len(self.keys)))


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows of a ``Source`` by position, with the columns the strategy added (aligned with ``at``).

    ``frame`` is the frame the pandas steps gave: the source's rows and columns, then the added ones
    (a name the source has is overwritten in place), labelled ``index`` or else the source's labels.
    """

    source: Source
    at: np.ndarray
    added: dict[str, np.ndarray] = field(default_factory=dict)
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.at)

    @property
    def keys(self) -> np.ndarray:
        return self.source.keys[self.at]

    def column(self, name: str) -> np.ndarray:
        values = self.added.get(name)
        return self.source.column(name)[self.at] if values is None else values

    def take(self, positions: np.ndarray, index: np.ndarray | None = None) -> Rows:
        """These rows at ``positions`` (an index or a mask)."""
        return Rows(self.source, self.at[positions], {k: v[positions] for k, v in self.added.items()}, index)

    def with_columns(self, columns: Mapping[str, np.ndarray]) -> Rows:
        return Rows(self.source, self.at, {**self.added, **columns}, self.index)

    @cached_property
    def frame(self) -> pd.DataFrame:
        frame = self.source.frame.take(self.at)
        if self.added:
            frame = frame.assign(**self.added)
        return frame if self.index is None else frame.set_axis(self.index)


def _rule_values(values: np.ndarray, keys: np.ndarray, how: str, ascending: bool) -> np.ndarray:
    if how == "val":
        return values
    ranks = rank_first(values, keys, ascending)
    return ranks / np.bincount(keys)[keys] if how == "pct" else ranks


def _rule(rows: Rows, rule: FilterRule, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(what one rule compares over each hour of ``rows``, which rows pass it)."""
    how, op, value = rule.parsed
    values = _rule_values(rows.column(rule.column).astype(float, copy=False), keys, how, rule.ascending)
    return values, np.asarray(_COMPARE[op](values, value))


def _apply_rules(rows: Rows, rules: Sequence[FilterRule]) -> Rows:
    for rule in rules:
        values, passed = _rule(rows, rule, rows.keys)
        how = rule.parsed[0]
        if how != "val":
            rows = rows.with_columns({f"{rule.column}_{how}": values})
        rows = rows.take(passed)
    return rows


def apply_rules(pool: pd.DataFrame, rules: Sequence[FilterRule]) -> pd.DataFrame:
    """Pre rules in order, each computed over what the previous ones kept (the article ranks Volume after the cut)."""
    return _apply_rules(Source(pool).rows(), rules).frame


def _post_keep(pool: Rows, rules: Sequence[FilterRule]) -> np.ndarray:
    """Which rows of the pool pass every post rule, each computed over the whole pool."""
    keep = np.ones(len(pool), dtype=bool)
    keys = pool.keys
    for rule in rules:
        keep &= _rule(pool, rule, keys)[1]
    return keep


def _composite(values: Sequence[np.ndarray], keys: np.ndarray, factors: Sequence[FactorSpec]) -> np.ndarray:
    total = sum(f.weight for f in factors)
    score = np.zeros(len(keys))
    for f, column in zip(factors, values, strict=True):
        if f.weight == 0:
            continue
        score = score + (f.weight / total) * rank_min(column, keys, f.reverse)
    return score


def composite(pool: pd.DataFrame, factors: Sequence[FactorSpec]) -> pd.Series:
    """Weighted sum of each factor's rank over the hour's pool (method "min", in the factor's direction).

    Weights are normalised to sum 1 (a zero sum is refused by the config); a zero-weight factor is
    skipped. The terms are added in config order, so equal inputs give bit-equal scores.
    """
    values = [pool[f.column].to_numpy(dtype=float) for f in factors]
    return pd.Series(_composite(values, hour_keys(pool), factors), index=pool.index)


def _order_side(pool: Rows, factors: Sequence[FactorSpec], composite_column: str | None) -> tuple[Rows, np.ndarray]:
    """(the pool, with the composite when there is one; its positions ordered head = short, tail = long)."""
    keys = pool.keys
    if len(factors) == 1:
        values = pool.column(factors[0].column)
        if values.dtype.kind not in "if":  # ints stay ints: numpy's quicksort may leave ties otherwise as floats
            values = values.astype(float)
        return pool, sort_order(values, keys, factors[0].reverse)
    if composite_column is None:
        raise ValueError("several factors need a composite column name")
    score = _composite([pool.column(f.column).astype(float, copy=False) for f in factors], keys, factors)
    return pool.with_columns({composite_column: score}), _stable_order(score, keys, True)


def resolve_count(spec: int | float, pool_size: int) -> int:
    """A whole number is that many coins; a fraction f of a pool of n is max(1, ceil(f * n)), 0 for no pool.

    The product is taken in decimal, as the user wrote f: 0.07 of 100 coins is 7, not ceil(7.000000000000001) = 8.
    """
    if isinstance(spec, float):
        return 0 if pool_size == 0 else max(1, math.ceil(Decimal(repr(spec)) * pool_size))
    return spec


def resolve_counts(spec: int | float, pool_sizes: np.ndarray) -> np.ndarray:
    """``resolve_count`` for each hour's pool size (computed once per distinct size)."""
    if not isinstance(spec, float):
        return np.full(len(pool_sizes), spec, dtype=np.int64)
    if len(pool_sizes) == 1:  # the live hour: np.unique costs more than the one count
        return np.array([resolve_count(spec, int(pool_sizes[0]))], dtype=np.int64)
    sizes, inverse = np.unique(pool_sizes, return_inverse=True)
    return np.array([resolve_count(spec, n) for n in sizes.tolist()], dtype=np.int64)[inverse]


def _positions(keys: np.ndarray) -> np.ndarray:
    """Each row's place in its hour, from 0."""
    return np.arange(len(keys)) - _starts(keys)


def _side_masks(long_keys: np.ndarray, short_keys: np.ndarray, long_wanted: int | np.ndarray,
                short_wanted: int | np.ndarray, shared_pool: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pick_sides`` on the orderings' hour keys: (long rows, short rows, shortfall per hour)."""
    long_wanted, short_wanted = np.atleast_1d(long_wanted), np.atleast_1d(short_wanted)
    hours = max(len(long_wanted), len(short_wanted))
    long_size = np.bincount(long_keys, minlength=hours)
    if shared_pool:
        n, wanted = long_size, long_wanted + short_wanted
        enough, share = n >= wanted, np.maximum(wanted, 1)
        n_long = np.where(enough, long_wanted, n * long_wanted // share)
        n_short = np.where(enough, short_wanted, n * short_wanted // share)
    else:
        n_long = np.minimum(long_wanted, long_size)
        n_short = np.minimum(short_wanted, np.bincount(short_keys, minlength=hours))
    return (_positions(long_keys) >= (long_size - n_long)[long_keys], _positions(short_keys) < n_short[short_keys],
            (n_long < long_wanted) | (n_short < short_wanted))


def pick_sides(long_ordered: pd.DataFrame, short_ordered: pd.DataFrame, long_wanted: int | np.ndarray,
               short_wanted: int | np.ndarray, shared_pool: bool) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(long, short, shortfall per hour): each hour's tail of the long ordering and head of the short ordering.

    The counts wanted are one number or one per hour. When both sides choose from one pool that
    holds fewer than long_wanted + short_wanted coins, the article's head and tail would overlap (a
    coin both long and short); each side instead gets its proportional share, rounded down.
    Separate pools: each side takes what its pool has.
    """
    long, short, shortfall = _side_masks(hour_keys(long_ordered), hour_keys(short_ordered), long_wanted,
                                         short_wanted, shared_pool)
    return long_ordered[long], short_ordered[short], shortfall  # copy-on-write: no defensive copies


def candidate_rows(rows: Rows, strategy: Strategy) -> Rows:
    """Rows that may enter the pool: black list out, white list only (when set), every column finite."""
    keep = np.ones(len(rows), dtype=bool)
    if strategy.black_list or strategy.white_list:
        symbols = rows.column("symbol").tolist()
        if strategy.black_list:
            black = set(strategy.black_list)
            keep &= np.array([s not in black for s in symbols], dtype=bool)
        if strategy.white_list:
            white = set(strategy.white_list)
            keep &= np.array([s in white for s in symbols], dtype=bool)
    for column in strategy.columns:
        keep &= finite(rows.column(column))
    return rows if keep.all() else rows.take(keep)


def candidate_pool(factors: pd.DataFrame, strategy: Strategy) -> pd.DataFrame:
    """``candidate_rows`` of a frame."""
    pool = candidate_rows(Source(factors).rows(), strategy)
    return factors if len(pool) == len(factors) else pool.frame  # copy-on-write: the same rows need no new frame


@dataclass(frozen=True)
class _Sized:
    """Sized sides as rows; each frame is built when first read."""

    long_rows: Rows
    short_rows: Rows

    @property
    def long(self) -> pd.DataFrame:
        return self.long_rows.frame

    @property
    def short(self) -> pd.DataFrame:
        return self.short_rows.frame


@dataclass(frozen=True)
class _Chosen(_Sized):
    """A choice's rows and its pools'; each frame is built when first read (the live service reads the rows)."""

    long_pool_rows: Rows
    short_pool_rows: Rows

    @property
    def long_pool(self) -> pd.DataFrame:
        return self.long_pool_rows.frame

    @property
    def short_pool(self) -> pd.DataFrame:
        return self.short_pool_rows.frame


@dataclass(frozen=True)
class Choice(_Chosen):
    """One round's unsized picks and the pools they were chosen from.

    ``long``/``short`` are indexed by position in their side's ordering (the article's
    ``ignore_index``); the pools are in universe order, with the rule columns and the composite.
    ``shortfall``: a side got fewer picks than wanted because its pool was too small (picks that
    post rules drop are not a shortfall). ``pool``: the size of the pool after the common rules.
    """

    long_wanted: int
    short_wanted: int
    shortfall: bool
    pool: int


@dataclass(frozen=True)
class Choices(_Chosen):
    """Many hours' ``Choice`` at once: the frames are panels (with HOUR; picks indexed by position in their
    hour's ordering), the counts, shortfalls and pool sizes are arrays with one entry per hour."""

    long_wanted: np.ndarray
    short_wanted: np.ndarray
    shortfall: np.ndarray
    pool: np.ndarray

    def one(self) -> Choice:
        """The only hour of a one-hour choice (frames without HOUR)."""
        return Choice(long_rows=self.long_rows, short_rows=self.short_rows, long_pool_rows=self.long_pool_rows,
                      short_pool_rows=self.short_pool_rows, long_wanted=int(self.long_wanted[0]),
                      short_wanted=int(self.short_wanted[0]), shortfall=bool(self.shortfall[0]),
                      pool=int(self.pool[0]))


def choose_hours(pool: pd.DataFrame | Rows, strategy: Strategy, hours: int = 1) -> Choices:
    """Pre rules, each side's rules, ranking, counts, sides, post rules, for ``hours`` hours at once.

    ``pool`` is ``candidate_pool``'s output (minus anything the shell cannot size) with a unique index:
    one hour, or a panel of ``hours`` hours (an hour may have no rows); or ``candidate_rows``' output.
    Every step selects rows by position; the frames are built from them when read.
    """
    common = _apply_rules(pool if isinstance(pool, Rows) else Source(pool).rows(), strategy.pre_filters)
    long_pool = _apply_rules(common, strategy.long_pre_filters)
    short_pool = _apply_rules(common, strategy.short_pre_filters)
    long_pool, long_order = _order_side(long_pool, strategy.long_factor_list, strategy.composite_column("long"))
    if strategy.shared_ranking:  # one pool (no side rules), one ordering, one composite
        short_pool, short_order = long_pool, long_order
    else:
        short_pool, short_order = _order_side(short_pool, strategy.short_factor_list,
                                              strategy.composite_column("short"))
    long_wanted = resolve_counts(strategy.long_num, np.bincount(long_pool.keys, minlength=hours))
    short_wanted = resolve_counts(strategy.short_num, np.bincount(short_pool.keys, minlength=hours))
    long_keys, short_keys = long_pool.keys[long_order], short_pool.keys[short_order]
    long, short, shortfall = _side_masks(long_keys, short_keys, long_wanted, short_wanted, strategy.shared_pool)
    long &= _post_keep(long_pool, [*strategy.post_filters, *strategy.long_post_filters])[long_order]
    short &= _post_keep(short_pool, [*strategy.post_filters, *strategy.short_post_filters])[short_order]
    return Choices(long_rows=long_pool.take(long_order[long], _positions(long_keys)[long]),
                   short_rows=short_pool.take(short_order[short], _positions(short_keys)[short]),
                   long_pool_rows=long_pool, short_pool_rows=short_pool, long_wanted=long_wanted,
                   short_wanted=short_wanted, shortfall=shortfall, pool=np.bincount(common.keys, minlength=hours))


def choose(pool: pd.DataFrame, strategy: Strategy) -> Choice:
    """One hour's ``choose_hours``: who is long and who is short."""
    return choose_hours(pool, strategy).one()


def _size_rows(choice: Choice | Choices, capital: float, face_values: Mapping[str, Decimal]) -> tuple[Rows, Rows]:
    sides = []
    for rows, wanted in ((choice.long_rows, choice.long_wanted), (choice.short_rows, choice.short_wanted)):
        count = wanted[rows.keys] if isinstance(wanted, np.ndarray) else wanted
        position, pos_val = lot_positions(rows.column("symbol").tolist(), rows.column("close").tolist(), capital,
                                          count, face_values)
        sides.append(rows.with_columns({"position": position, "pos_val": pos_val}))
    return sides[0], sides[1]


def size_choice(choice: Choice | Choices, capital: float,
                face_values: Mapping[str, Decimal]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sides sized with ``capital``: each pick gets capital / 2 / its hour's wanted, rounded to its lot size."""
    long, short = _size_rows(choice, capital, face_values)
    return long.frame, short.frame


def hour_targets(long: Rows, short: Rows, hours: int) -> list[dict[str, Decimal]]:
    """Each hour's signed contracts: long +, short -; a coin on both sides nets out."""
    targets: list[dict[str, Decimal]] = [{} for _ in range(hours)]
    for hour, symbol, position in zip(long.keys.tolist(), long.column("symbol").tolist(),
                                      long.column("position").tolist(), strict=True):
        targets[hour][symbol] = targets[hour].get(symbol, Decimal(0)) + position
    for hour, symbol, position in zip(short.keys.tolist(), short.column("symbol").tolist(),
                                      short.column("position").tolist(), strict=True):
        targets[hour][symbol] = targets[hour].get(symbol, Decimal(0)) - position
    return targets


def hour_number(run_time: datetime) -> int:
    """Whole hours since 1970-01-01T00:00Z (run_time must be timezone-aware)."""
    return int(run_time.timestamp()) // 3600


def rebalances(run_time: datetime, period_hours: int, offset: int) -> bool:
    """Offset o trades at run_time t when (hours since the epoch of t - o) is a multiple of the period."""
    return (hour_number(run_time) - offset) % period_hours == 0


def offset_targets(held: Mapping[int, Mapping[str, Decimal]], run_time: datetime, period_hours: int,
                   offsets: Iterable[int], fresh: Mapping[str, Decimal]) -> dict[int, dict[str, Decimal]]:
    """Each offset's targets after run_time: ``fresh`` for an offset rebalancing now, else what it held.

    An offset that has never rebalanced holds nothing (cold start).
    """
    return {o: dict(fresh) if rebalances(run_time, period_hours, o) else dict(held.get(o, {})) for o in offsets}


def sum_targets(per_offset: Mapping[int, Mapping[str, Decimal]]) -> dict[str, Decimal]:
    """The portfolio: every offset's signed targets added, exactly (a symbol netting to zero stays, at 0)."""
    total: dict[str, Decimal] = {}
    for targets in per_offset.values():
        for symbol, qty in targets.items():
            total[symbol] = total.get(symbol, Decimal(0)) + qty
    return total


@dataclass(frozen=True)
class Hours(_Sized):
    """Many hours chosen and sized at once: panels of sized sides, and each hour's fresh targets."""

    choice: Choices
    fresh: list[dict[str, Decimal]]  # what an offset rebalancing in hour i holds


def strategy_hours(pool: pd.DataFrame | Rows, face_values: Mapping[str, Decimal], strategy: Strategy,
                   capital_usdt: float, hours: int = 1) -> Hours:
    """Choose and size ``hours`` hours at ``capital_usdt / len(offsets)`` (lot rounding per offset).

    No hour's choice depends on another's: the offsets, which do, are stepped afterwards, hour by hour.
    """
    choice = choose_hours(pool, strategy, hours)
    long, short = _size_rows(choice, capital_usdt / len(strategy.offset_list), face_values)
    return Hours(long_rows=long, short_rows=short, choice=choice, fresh=hour_targets(long, short, hours))


@dataclass(frozen=True)
class Hour(_Sized):
    """One hour of a strategy: the choice, its sides sized at one offset's capital, and the book after it."""

    choice: Choice
    fresh: dict[str, Decimal]  # what an offset rebalancing this hour holds
    offsets: dict[int, dict[str, Decimal]]
    targets: dict[str, Decimal]


def strategy_hour(pool: pd.DataFrame | Rows, face_values: Mapping[str, Decimal], strategy: Strategy,
                  capital_usdt: float, run_time: datetime, held: Mapping[int, Mapping[str, Decimal]]) -> Hour:
    """One hour's ``strategy_hours``, then the offsets stepped and summed."""
    one = strategy_hours(pool, face_values, strategy, capital_usdt)
    per_offset = offset_targets(held, run_time, strategy.period_hours, strategy.offset_list, one.fresh[0])
    return Hour(long_rows=one.long_rows, short_rows=one.short_rows, choice=one.choice.one(), fresh=one.fresh[0],
                offsets=per_offset, targets=sum_targets(per_offset))
