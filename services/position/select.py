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
    block = df[list(columns)]
    try:
        values = block.to_numpy(dtype=float)
    except (TypeError, ValueError):  # a plugin returned something other than numbers: not finite
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return df[np.isfinite(values).all(axis=1)]


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
