"""The strategy core as pure functions on frames: rules, multi-factor ranking, counts, sides, offsets.

No I/O: the live position service, a paper trader and a backtest call the same functions, the service
with one hour's frame, the backtest with a panel of thousands of hours (``HOUR``): every step is a
grouped, vectorised operation hour by hour, so one implementation serves both. With the article's
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
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import numpy as np
import pandas as pd

from services.position.select import drop_non_finite, size_side
from shared.strategy import FactorSpec, FilterRule, Strategy, parse_rule

__all__ = [
    "HOUR", "Choice", "Choices", "Hour", "Hours", "apply_rules", "candidate_pool", "choose", "choose_hours",
    "composite", "hour_keys", "hour_number", "hour_targets", "offset_targets", "order_side", "parse_rule",
    "pick_sides", "post_filter", "rank_first", "rank_min", "rebalances", "resolve_count", "resolve_counts",
    "rule_mask", "rule_values", "side_targets", "size_choice", "sort_order", "strategy_hour", "strategy_hours",
    "sum_targets",
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


def rule_values(pool: pd.DataFrame, column: str, how: str, ascending: bool = True) -> np.ndarray:
    """What a rule compares: the raw column (val), its rank over the hour's pool (rank) or rank / pool size (pct)."""
    values = pool[column].to_numpy(dtype=float)
    if how == "val":
        return values
    keys = hour_keys(pool)
    ranks = rank_first(values, keys, ascending)
    return ranks / np.bincount(keys)[keys] if how == "pct" else ranks


def rule_mask(pool: pd.DataFrame, column: str, how: str, op: str, value: float, ascending: bool = True) -> np.ndarray:
    """Which rows of the pool pass one rule."""
    return np.asarray(_COMPARE[op](rule_values(pool, column, how, ascending), value))


def apply_rules(pool: pd.DataFrame, rules: Sequence[FilterRule]) -> pd.DataFrame:
    """Pre rules in order, each computed over what the previous ones kept (the article ranks Volume after the cut)."""
    for rule in rules:
        how, op, value = rule.parsed
        values = rule_values(pool, rule.column, how, rule.ascending)
        if how != "val":
            pool = pool.copy(deep=False)  # copy-on-write: the new column never reaches the caller's frame
            pool[f"{rule.column}_{how}"] = values
        pool = pool[_COMPARE[op](values, value)]
    return pool


def post_filter(picks: pd.DataFrame, pool: pd.DataFrame, rules: Sequence[FilterRule]) -> pd.DataFrame:
    """Drop picks failing any rule, each rule computed over the whole pool the picks came from (no replacement).

    ``picks`` is indexed by the pool's labels (unique, across a panel's hours too).
    """
    if not rules or picks.empty:
        return picks
    keep = np.ones(len(pool), dtype=bool)
    for rule in rules:
        how, op, value = rule.parsed
        keep &= rule_mask(pool, rule.column, how, op, value, rule.ascending)
    return picks[keep[pool.index.get_indexer(picks.index)]]


def composite(pool: pd.DataFrame, factors: Sequence[FactorSpec]) -> pd.Series:
    """Weighted sum of each factor's rank over the hour's pool (method "min", in the factor's direction).

    Weights are normalised to sum 1 (a zero sum is refused by the config); a zero-weight factor is
    skipped. The terms are added in config order, so equal inputs give bit-equal scores.
    """
    keys = hour_keys(pool)
    total = sum(f.weight for f in factors)
    score = np.zeros(len(pool))
    for f in factors:
        if f.weight == 0:
            continue
        score = score + (f.weight / total) * rank_min(pool[f.column].to_numpy(dtype=float), keys, f.reverse)
    return pd.Series(score, index=pool.index)


def order_side(pool: pd.DataFrame, factors: Sequence[FactorSpec], composite_column: str | None) -> pd.DataFrame:
    """Each hour's pool ordered head = short, tail = long; index labels are the pool's.

    One factor: the article's ``sort_values(column, ascending=reverse)``. Several: the composite,
    stored as ``composite_column``, sorted ascending and stably (ties stay in universe order).
    """
    keys = hour_keys(pool)
    if len(factors) == 1:
        values = pool[factors[0].column].to_numpy()
        if values.dtype.kind not in "if":  # ints stay ints: numpy's quicksort may leave ties otherwise as floats
            values = values.astype(float)
        return pool.iloc[sort_order(values, keys, factors[0].reverse)]
    if composite_column is None:
        raise ValueError("several factors need a composite column name")
    score = composite(pool, factors)
    pool = pool.copy(deep=False)  # copy-on-write, as in apply_rules
    pool[composite_column] = score
    return pool.iloc[_stable_order(score.to_numpy(), keys, True)]


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
    sizes, inverse = np.unique(pool_sizes, return_inverse=True)
    return np.array([resolve_count(spec, n) for n in sizes.tolist()], dtype=np.int64)[inverse]


def _positions(keys: np.ndarray) -> np.ndarray:
    """Each row's place in its hour, from 0."""
    return np.arange(len(keys)) - _starts(keys)


def pick_sides(long_ordered: pd.DataFrame, short_ordered: pd.DataFrame, long_wanted: int | np.ndarray,
               short_wanted: int | np.ndarray, shared_pool: bool) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(long, short, shortfall per hour): each hour's tail of the long ordering and head of the short ordering.

    The counts wanted are one number or one per hour. When both sides choose from one pool that
    holds fewer than long_wanted + short_wanted coins, the article's head and tail would overlap (a
    coin both long and short); each side instead gets its proportional share, rounded down.
    Separate pools: each side takes what its pool has.
    """
    long_wanted, short_wanted = np.atleast_1d(long_wanted), np.atleast_1d(short_wanted)
    hours = max(len(long_wanted), len(short_wanted))
    long_keys, short_keys = hour_keys(long_ordered), hour_keys(short_ordered)
    long_size = np.bincount(long_keys, minlength=hours)
    if shared_pool:
        n, wanted = long_size, long_wanted + short_wanted
        enough, share = n >= wanted, np.maximum(wanted, 1)
        n_long = np.where(enough, long_wanted, n * long_wanted // share)
        n_short = np.where(enough, short_wanted, n * short_wanted // share)
    else:
        n_long = np.minimum(long_wanted, long_size)
        n_short = np.minimum(short_wanted, np.bincount(short_keys, minlength=hours))
    short = short_ordered[_positions(short_keys) < n_short[short_keys]]  # copy-on-write: no defensive copies
    long = long_ordered[_positions(long_keys) >= (long_size - n_long)[long_keys]]
    return long, short, (n_long < long_wanted) | (n_short < short_wanted)


def candidate_pool(factors: pd.DataFrame, strategy: Strategy) -> pd.DataFrame:
    """Rows that may enter the pool: black list out, white list only (when set), every column finite."""
    symbols = factors["symbol"]
    if strategy.black_list:
        factors = factors[~symbols.isin(strategy.black_list).to_numpy(dtype=bool)]
    if strategy.white_list:
        factors = factors[factors["symbol"].isin(strategy.white_list).to_numpy(dtype=bool)]
    return drop_non_finite(factors, strategy.columns)


@dataclass(frozen=True)
class Choice:
    """One round's unsized picks and the pools they were chosen from.

    ``long``/``short`` are indexed by position in their side's ordering (the article's
    ``ignore_index``); the pools are in universe order, with the rule columns and the composite.
    ``shortfall``: a side got fewer picks than wanted because its pool was too small (picks that
    post rules drop are not a shortfall). ``pool``: the size of the pool after the common rules.
    """

    long: pd.DataFrame
    short: pd.DataFrame
    long_pool: pd.DataFrame
    short_pool: pd.DataFrame
    long_wanted: int
    short_wanted: int
    shortfall: bool
    pool: int


@dataclass(frozen=True)
class Choices:
    """Many hours' ``Choice`` at once: the frames are panels (with HOUR; picks indexed by position in their
    hour's ordering), the counts, shortfalls and pool sizes are arrays with one entry per hour."""

    long: pd.DataFrame
    short: pd.DataFrame
    long_pool: pd.DataFrame
    short_pool: pd.DataFrame
    long_wanted: np.ndarray
    short_wanted: np.ndarray
    shortfall: np.ndarray
    pool: np.ndarray

    def one(self) -> Choice:
        """The only hour of a one-hour choice (frames without HOUR)."""
        return Choice(long=self.long, short=self.short, long_pool=self.long_pool, short_pool=self.short_pool,
                      long_wanted=int(self.long_wanted[0]), short_wanted=int(self.short_wanted[0]),
                      shortfall=bool(self.shortfall[0]), pool=int(self.pool[0]))


def _by_position(picks: pd.DataFrame, ordered: pd.DataFrame) -> pd.DataFrame:
    at = ordered.index.get_indexer(picks.index)
    return picks.set_axis(_positions(hour_keys(ordered))[at])


def choose_hours(pool: pd.DataFrame, strategy: Strategy, hours: int = 1) -> Choices:
    """Pre rules, each side's rules, ranking, counts, sides, post rules, for ``hours`` hours at once.

    ``pool`` is ``candidate_pool``'s output (minus anything the shell cannot size) with a unique index:
    one hour, or a panel of ``hours`` hours (an hour may have no rows).
    """
    common = apply_rules(pool, strategy.pre_filters)
    long_pool = apply_rules(common, strategy.long_pre_filters)
    short_pool = apply_rules(common, strategy.short_pre_filters)
    long_col, short_col = strategy.composite_column("long"), strategy.composite_column("short")
    long_ordered = order_side(long_pool, strategy.long_factor_list, long_col)
    if strategy.shared_ranking:
        short_ordered = long_ordered
    else:
        short_ordered = order_side(short_pool, strategy.short_factor_list, short_col)
    if long_col is not None:  # the pools carry the composite too, for factor_his
        long_pool = long_ordered.loc[long_pool.index]
    if short_col is not None:
        short_pool = short_ordered.loc[short_pool.index]
    long_wanted = resolve_counts(strategy.long_num, np.bincount(hour_keys(long_pool), minlength=hours))
    short_wanted = resolve_counts(strategy.short_num, np.bincount(hour_keys(short_pool), minlength=hours))
    long, short, shortfall = pick_sides(long_ordered, short_ordered, long_wanted, short_wanted,
                                        strategy.shared_pool)
    long = post_filter(long, long_pool, [*strategy.post_filters, *strategy.long_post_filters])
    short = post_filter(short, short_pool, [*strategy.post_filters, *strategy.short_post_filters])
    return Choices(long=_by_position(long, long_ordered), short=_by_position(short, short_ordered),
                   long_pool=long_pool, short_pool=short_pool, long_wanted=long_wanted, short_wanted=short_wanted,
                   shortfall=shortfall, pool=np.bincount(hour_keys(common), minlength=hours))


def choose(pool: pd.DataFrame, strategy: Strategy) -> Choice:
    """One hour's ``choose_hours``: who is long and who is short."""
    return choose_hours(pool, strategy).one()


def size_choice(choice: Choice | Choices, capital: float,
                face_values: Mapping[str, Decimal]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sides sized with ``capital``: each pick gets capital / 2 / its hour's wanted, rounded to its lot size."""
    sides = []
    for side, wanted in ((choice.long, choice.long_wanted), (choice.short, choice.short_wanted)):
        count = wanted[hour_keys(side)] if isinstance(wanted, np.ndarray) else wanted
        sides.append(size_side(side, capital, count, face_values))
    return sides[0], sides[1]


def hour_targets(long: pd.DataFrame, short: pd.DataFrame, hours: int) -> list[dict[str, Decimal]]:
    """Each hour's signed contracts: long +, short -; a coin on both sides nets out."""
    targets: list[dict[str, Decimal]] = [{} for _ in range(hours)]
    for hour, symbol, position in zip(hour_keys(long).tolist(), long["symbol"].tolist(), long["position"].tolist(),
                                      strict=True):
        targets[hour][symbol] = targets[hour].get(symbol, Decimal(0)) + position
    for hour, symbol, position in zip(hour_keys(short).tolist(), short["symbol"].tolist(),
                                      short["position"].tolist(), strict=True):
        targets[hour][symbol] = targets[hour].get(symbol, Decimal(0)) - position
    return targets


def side_targets(long: pd.DataFrame, short: pd.DataFrame) -> dict[str, Decimal]:
    """One hour's signed contracts: long +, short -; a coin on both sides nets out."""
    return hour_targets(long, short, 1)[0]


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
class Hours:
    """Many hours chosen and sized at once: panels of sized sides, and each hour's fresh targets."""

    choice: Choices
    long: pd.DataFrame
    short: pd.DataFrame
    fresh: list[dict[str, Decimal]]  # what an offset rebalancing in hour i holds


def strategy_hours(pool: pd.DataFrame, face_values: Mapping[str, Decimal], strategy: Strategy, capital_usdt: float,
                   hours: int = 1) -> Hours:
    """Choose and size ``hours`` hours at ``capital_usdt / len(offsets)`` (lot rounding per offset).

    No hour's choice depends on another's: the offsets, which do, are stepped afterwards, hour by hour.
    """
    choice = choose_hours(pool, strategy, hours)
    long, short = size_choice(choice, capital_usdt / len(strategy.offset_list), face_values)
    return Hours(choice=choice, long=long, short=short, fresh=hour_targets(long, short, hours))


@dataclass(frozen=True)
class Hour:
    """One hour of a strategy: the choice, its sides sized at one offset's capital, and the book after it."""

    choice: Choice
    long: pd.DataFrame
    short: pd.DataFrame
    fresh: dict[str, Decimal]  # what an offset rebalancing this hour holds
    offsets: dict[int, dict[str, Decimal]]
    targets: dict[str, Decimal]


def strategy_hour(pool: pd.DataFrame, face_values: Mapping[str, Decimal], strategy: Strategy, capital_usdt: float,
                  run_time: datetime, held: Mapping[int, Mapping[str, Decimal]]) -> Hour:
    """One hour's ``strategy_hours``, then the offsets stepped and summed."""
    one = strategy_hours(pool, face_values, strategy, capital_usdt)
    per_offset = offset_targets(held, run_time, strategy.period_hours, strategy.offset_list, one.fresh[0])
    return Hour(choice=one.choice.one(), long=one.long, short=one.short, fresh=one.fresh[0], offsets=per_offset,
                targets=sum_targets(per_offset))
