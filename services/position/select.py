"""The article's position layer as pure functions on frames: filter, rank, select, size.

Each function reproduces the article's code exactly (same pandas calls, same
Decimal rounding) except for three documented fixes: the long and short sides
never share a coin when the pool is small, an empty side is an empty frame
rather than a crash, and (upstream, in the factor service) a symbol whose
newest candle is not the one that just closed never reaches the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd

from shared.config import PreFilterRule


def drop_non_finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows whose factor and filter values are all finite (the article's nan/inf filter)."""
    block = df[list(columns)]
    try:
        values = block.to_numpy(dtype=float)
    except (TypeError, ValueError):  # a plugin returned something other than numbers: not finite
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return df[np.isfinite(values).all(axis=1)]


def apply_pre_filters(df: pd.DataFrame, rules: Sequence[PreFilterRule]) -> pd.DataFrame:
    """Apply the rules in order, each to what the previous ones kept.

    A rank rule ranks over the surviving pool with method 'first' and keeps the
    rank as ``<column>_rank``. The article ranks per ``candle_begin_time``; every
    row of a pool shares it (stale symbols are left out upstream), so ranking
    over the pool is the same computation.
    """
    for rule in rules:
        if rule.rank is not None:
            df = df.copy()
            rank_col = f"{rule.column}_rank"
            df[rank_col] = df[rule.column].rank(method="first", pct=False,
                                                ascending=rule.rank == "ascending")
            values = df[rank_col]
        else:
            values = df[rule.column]
        lo = -np.inf if rule.min is None else rule.min
        hi = np.inf if rule.max is None else rule.max
        df = df.loc[values.between(lo, hi, inclusive="both")]
    return df


@dataclass(frozen=True)
class Sides:
    long: pd.DataFrame
    short: pd.DataFrame
    pool: int
    shortfall: bool


def select_sides(pool: pd.DataFrame, factor: str, ascending: bool, long_num: int, short_num: int) -> Sides:
    """Sort by the factor; short the head, long the tail.

    When the pool holds fewer than long_num + short_num coins the article's
    head and tail overlap, so a coin could be both long and short. Here each
    side instead gets its proportional share of the pool (rounded down) and the
    selection reports the shortfall.
    """
    ordered = pool.sort_values(factor, ascending=ascending, ignore_index=True)
    n, wanted = len(ordered), long_num + short_num
    if n >= wanted:
        n_long, n_short = long_num, short_num
    else:
        n_long, n_short = n * long_num // wanted, n * short_num // wanted
    short = ordered.head(n_short).copy()
    long = ordered.tail(n_long).copy() if n_long else ordered.iloc[0:0].copy()
    return Sides(long=long, short=short, pool=n, shortfall=n < wanted)


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """The article's rounding: to the nearest multiple of tick, halves to even, exact decimals."""
    return Decimal(round(value / tick) * tick)


def target_position(capital: float, close: float, face_value: Decimal) -> Decimal:
    return round_to_tick(Decimal(capital / close), face_value)


def size_side(side: pd.DataFrame, capital: float, count: int, face_values: Mapping[str, Decimal]) -> pd.DataFrame:
    """Split ``capital`` evenly over ``count`` coins and round each to its lot size (article's assign_position)."""
    side = side.copy()
    if side.empty or count == 0:
        side["position"] = pd.Series([], dtype=object, index=side.index)
        side["pos_val"] = pd.Series([], dtype=float, index=side.index)
        return side
    coin_capital = capital / 2 / count
    side["position"] = [
        target_position(coin_capital, close, face_values[symbol])
        for symbol, close in zip(side["symbol"], side["close"], strict=True)
    ]
    side["pos_val"] = side["position"].astype(float) * side["close"]
    return side
