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


def finite(values: np.ndarray | pd.Series) -> np.ndarray:
    """Which values are finite numbers (a plugin may return anything: what is not a number is not finite)."""
    try:
        floats = values.to_numpy(dtype=float) if isinstance(values, pd.Series) else np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        floats = np.asarray(pd.to_numeric(values, errors="coerce"), dtype=float)
    return np.isfinite(floats)


def drop_non_finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows whose factor and filter values are all finite (the article's nan/inf filter)."""
    keep = np.ones(len(df), dtype=bool)
    for column in columns:  # column by column: no intermediate frame (the backtest calls this every hour)
        keep &= finite(df[column])
    return df if keep.all() else df[keep]  # copy-on-write: the same rows need no new frame


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """The article's rounding: to the nearest multiple of tick, halves to even, exact decimals."""
    return Decimal(round(value / tick) * tick)


def target_position(capital: float, close: float, face_value: Decimal) -> Decimal:
    return round_to_tick(Decimal(capital / close), face_value)


def lot_positions(symbols: Sequence[str], closes: Sequence[float], capital: float, count: int | np.ndarray,
                  face_values: Mapping[str, Decimal]) -> tuple[np.ndarray, np.ndarray]:
    """(position, pos_val) of each coin: ``capital`` split evenly over ``count`` coins, rounded to its lot size
    (the article's assign_position). ``count`` is one number, or one per coin (each coin's hour's count)."""
    if len(symbols) == 0 or (np.ndim(count) == 0 and count == 0):
        return np.array([], dtype=object), np.array([], dtype=float)
    coin_capital = np.broadcast_to(capital / 2 / np.asarray(count, dtype=float), len(symbols)).tolist()
    position = [target_position(each, close, face_values[symbol])
                for each, symbol, close in zip(coin_capital, symbols, closes, strict=True)]
    return (np.array(position, dtype=object),
            np.array([float(p) * c for p, c in zip(position, closes, strict=True)], dtype=float))


def size_side(side: pd.DataFrame, capital: float, count: int | np.ndarray,
              face_values: Mapping[str, Decimal]) -> pd.DataFrame:
    """``side`` with each coin's ``position`` and ``pos_val`` (``lot_positions``)."""
    # plain lists: iterating Arrow-backed columns goes element by element
    position, pos_val = lot_positions(side["symbol"].tolist(), side["close"].tolist(), capital, count, face_values)
    return side.assign(position=position, pos_val=pos_val)
