"""The article's non-finite filter and sizing as pure functions on frames.

Each function reproduces the article's code exactly (same pandas calls, same Decimal rounding),
except that an empty side is an empty frame rather than a crash. Ranking and picking the sides
is ``services.position.strategy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import numpy as np
import pandas as pd


def drop_non_finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows whose factor and filter values are all finite (the article's nan/inf filter)."""
    finite = np.ones(len(df), dtype=bool)
    for column in columns:  # column by column: no intermediate frame (the backtest calls this every hour)
        try:
            values = df[column].to_numpy(dtype=float)
        except (TypeError, ValueError):  # a plugin returned something other than numbers: not finite
            values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
        finite &= np.isfinite(values)
    return df[finite]


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """The article's rounding: to the nearest multiple of tick, halves to even, exact decimals."""
    return Decimal(round(value / tick) * tick)


def target_position(capital: float, close: float, face_value: Decimal) -> Decimal:
    return round_to_tick(Decimal(capital / close), face_value)


def size_side(side: pd.DataFrame, capital: float, count: int | np.ndarray,
              face_values: Mapping[str, Decimal]) -> pd.DataFrame:
    """Split ``capital`` evenly over ``count`` coins and round each to its lot size (article's assign_position).

    ``count`` is one number, or one per row (a panel of hours: each row's hour's count).
    """
    side = side.copy(deep=False)  # copy-on-write: the new columns never reach the caller's frame
    if side.empty or (np.ndim(count) == 0 and count == 0):
        side["position"] = pd.Series([], dtype=object, index=side.index)
        side["pos_val"] = pd.Series([], dtype=float, index=side.index)
        return side
    coin_capital = np.broadcast_to(capital / 2 / np.asarray(count, dtype=float), len(side)).tolist()
    closes = side["close"].tolist()  # plain lists: iterating Arrow-backed columns goes element by element
    position = [target_position(each, close, face_values[symbol])
                for each, symbol, close in zip(coin_capital, side["symbol"].tolist(), closes, strict=True)]
    side["position"] = np.array(position, dtype=object)
    side["pos_val"] = np.array([float(p) * c for p, c in zip(position, closes, strict=True)], dtype=float)
    return side
