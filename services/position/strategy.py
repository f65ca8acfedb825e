"""The strategy core as pure functions on frames: rules, multi-factor ranking, counts, sides, offsets.

No I/O: the live position service, a paper trader and a backtest call the same functions. With the
article's strategy (``Strategy.article()``) every step is the article's own computation, so its
selections and positions are unchanged; sizing is ``select.size_side`` (Decimal, the article's
rounding) and ``pick_sides`` holds the article's shortfall rule, generalised to two orderings.

Conventions (issue 9):
- A side's ordering puts the coins to short at the head and the coins to long at the tail.
- Rule ranks (method "first") and factor ranks (method "min") are over a pool in universe order.
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
    "Choice", "Hour", "apply_rules", "candidate_pool", "choose", "composite", "hour_number", "offset_targets",
    "order_side", "parse_rule", "pick_sides", "post_filter", "rebalances", "resolve_count", "rule_mask",
    "rule_values", "side_targets", "size_choice", "strategy_hour", "sum_targets",
]

_COMPARE: dict[str, Callable[[object, object], object]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}


def rule_values(pool: pd.DataFrame, column: str, how: str, ascending: bool = True) -> pd.Series:
    """What a rule compares: the raw column (val), its rank over the pool (rank) or rank / pool size (pct)."""
    if how == "val":
        return pool[column]
    return pool[column].rank(method="first", ascending=ascending, pct=how == "pct")


def rule_mask(pool: pd.DataFrame, column: str, how: str, op: str, value: float, ascending: bool = True) -> np.ndarray:
    """Which rows of the pool pass one rule."""
    return np.asarray(_COMPARE[op](rule_values(pool, column, how, ascending).to_numpy(dtype=float), value))


def apply_rules(pool: pd.DataFrame, rules: Sequence[FilterRule]) -> pd.DataFrame:
    """Pre rules in order, each computed over what the previous ones kept (the article ranks Volume after the cut)."""
    for rule in rules:
        how, op, value = rule.parsed
        values = rule_values(pool, rule.column, how, rule.ascending)
        if how != "val":
            pool = pool.copy(deep=False)  # copy-on-write: the new column never reaches the caller's frame
            pool[f"{rule.column}_{how}"] = values
        pool = pool.loc[_COMPARE[op](values, value)]
    return pool


def post_filter(picks: pd.DataFrame, pool: pd.DataFrame, rules: Sequence[FilterRule]) -> pd.DataFrame:
    """Drop picks failing any rule, each rule computed over the whole pool the picks came from (no replacement).

    ``picks`` is indexed by the pool's labels.
    """
    if not rules or picks.empty:
        return picks
    keep = np.ones(len(pool), dtype=bool)
    for rule in rules:
        how, op, value = rule.parsed
        keep &= rule_mask(pool, rule.column, how, op, value, rule.ascending)
    passed = pd.Series(keep, index=pool.index)
    return picks.loc[passed.reindex(picks.index).to_numpy(dtype=bool)]


def composite(pool: pd.DataFrame, factors: Sequence[FactorSpec]) -> pd.Series:
    """Weighted sum of each factor's rank over the pool (method "min", in the factor's direction).

    Weights are normalised to sum 1 (a zero sum is refused by the config); a zero-weight factor is
    skipped. The terms are added in config order, so equal inputs give bit-equal scores.
    """
    total = sum(f.weight for f in factors)
    score = pd.Series(0.0, index=pool.index)
    for f in factors:
        if f.weight == 0:
            continue
        score = score + (f.weight / total) * pool[f.column].rank(method="min", ascending=f.reverse)
    return score


def order_side(pool: pd.DataFrame, factors: Sequence[FactorSpec], composite_column: str | None) -> pd.DataFrame:
    """The pool ordered head = short, tail = long; index labels are the pool's.

    One factor: the article's ``sort_values(column, ascending=reverse)``. Several: the composite,
    stored as ``composite_column``, sorted ascending and stably (ties stay in universe order).
    """
    if len(factors) == 1:
        return pool.sort_values(factors[0].column, ascending=factors[0].reverse)
    if composite_column is None:
        raise ValueError("several factors need a composite column name")
    pool = pool.copy(deep=False)  # copy-on-write, as in apply_rules
    pool[composite_column] = composite(pool, factors)
    return pool.sort_values(composite_column, ascending=True, kind="mergesort")


def resolve_count(spec: int | float, pool_size: int) -> int:
    """A whole number is that many coins; a fraction f of a pool of n is max(1, ceil(f * n)), 0 for no pool.

    The product is taken in decimal, as the user wrote f: 0.07 of 100 coins is 7, not ceil(7.000000000000001) = 8.
    """
    if isinstance(spec, float):
        return 0 if pool_size == 0 else max(1, math.ceil(Decimal(repr(spec)) * pool_size))
    return spec


def pick_sides(long_ordered: pd.DataFrame, short_ordered: pd.DataFrame, long_wanted: int, short_wanted: int,
               shared_pool: bool) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(long, short, shortfall): the tail of the long ordering, the head of the short ordering.

    When both sides choose from one pool that holds fewer than long_wanted + short_wanted coins,
    the article's head and tail would overlap (a coin both long and short); each side instead gets
    its proportional share, rounded down. Separate pools: each side takes what its pool has.
    """
    if shared_pool:
        n, wanted = len(long_ordered), long_wanted + short_wanted
        if n >= wanted:
            n_long, n_short = long_wanted, short_wanted
        else:
            n_long, n_short = n * long_wanted // wanted, n * short_wanted // wanted
    else:
        n_long, n_short = min(long_wanted, len(long_ordered)), min(short_wanted, len(short_ordered))
    short = short_ordered.head(n_short)  # copy-on-write: no defensive copies needed
    long = long_ordered.tail(n_long) if n_long else long_ordered.iloc[0:0]
    return long, short, n_long < long_wanted or n_short < short_wanted


def candidate_pool(factors: pd.DataFrame, strategy: Strategy) -> pd.DataFrame:
    """Rows that may enter the pool: black list out, white list only (when set), every column finite."""
    symbols = factors["symbol"]
    keep = ~symbols.isin(strategy.black_list)
    if strategy.white_list:
        keep &= symbols.isin(strategy.white_list)
    return drop_non_finite(factors.loc[keep], strategy.columns)


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


def _by_position(picks: pd.DataFrame, ordered: pd.DataFrame) -> pd.DataFrame:
    return picks.set_axis(ordered.index.get_indexer(picks.index))


def choose(pool: pd.DataFrame, strategy: Strategy) -> Choice:
    """Pre rules, each side's rules, ranking, counts, sides, post rules: who is long and who is short.

    ``pool`` is ``candidate_pool``'s output (minus anything the shell cannot size), with a unique index.
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
    long_wanted = resolve_count(strategy.long_num, len(long_pool))
    short_wanted = resolve_count(strategy.short_num, len(short_pool))
    long, short, shortfall = pick_sides(long_ordered, short_ordered, long_wanted, short_wanted,
                                        strategy.shared_pool)
    long = post_filter(long, long_pool, [*strategy.post_filters, *strategy.long_post_filters])
    short = post_filter(short, short_pool, [*strategy.post_filters, *strategy.short_post_filters])
    return Choice(long=_by_position(long, long_ordered), short=_by_position(short, short_ordered),
                  long_pool=long_pool, short_pool=short_pool, long_wanted=long_wanted, short_wanted=short_wanted,
                  shortfall=shortfall, pool=len(common))


def size_choice(choice: Choice, capital: float, face_values: Mapping[str, Decimal]) -> tuple[pd.DataFrame,
                                                                                              pd.DataFrame]:
    """Both sides sized with ``capital``: each pick gets capital / 2 / wanted, rounded to its lot size."""
    return (size_side(choice.long, capital, choice.long_wanted, face_values),
            size_side(choice.short, capital, choice.short_wanted, face_values))


def side_targets(long: pd.DataFrame, short: pd.DataFrame) -> dict[str, Decimal]:
    """Signed contracts: long +, short -; a coin on both sides nets out."""
    targets: dict[str, Decimal] = {}
    for symbol, position in zip(long["symbol"].tolist(), long["position"].tolist(), strict=True):
        targets[symbol] = targets.get(symbol, Decimal(0)) + position
    for symbol, position in zip(short["symbol"].tolist(), short["position"].tolist(), strict=True):
        targets[symbol] = targets.get(symbol, Decimal(0)) - position
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
    """Choose, size at ``capital_usdt / len(offsets)`` (lot rounding per offset), step the offsets, sum."""
    offsets = strategy.offset_list
    choice = choose(pool, strategy)
    long, short = size_choice(choice, capital_usdt / len(offsets), face_values)
    fresh = side_targets(long, short)
    per_offset = offset_targets(held, run_time, strategy.period_hours, offsets, fresh)
    return Hour(choice=choice, long=long, short=short, fresh=fresh, offsets=per_offset,
                targets=sum_targets(per_offset))
