"""The built-in plugins' newest values, computed directly: the fast path.

Only the newest candle's row is ever published, so these compute that one
value from arrays instead of whole columns. They reproduce the plugins'
pandas and TA-Lib arithmetic (tests hold them to 1e-9 relative on synthetic
and real candles over a grid of parameters, funding sums, which can cancel to
~0, also to 1e-15 absolute); the plugins stay the reference
and the way users add factors. TA-Lib's ATR is Wilder's recursion seeded with
the mean of the first n true ranges; its newest value is a weighted sum of the
seed and the later true ranges, which is what ``atr_last`` evaluates.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

Arrays = dict[str, np.ndarray]
FUNDING_RATE = "funding_rate"
"""The column the factor worker aligns funding events into (see ``compute.funding_column``)."""


@lru_cache(maxsize=64)
def _wilder_weights(n: int, steps: int) -> tuple[float, np.ndarray]:
    """ATR_last = seed * a**steps + sum(w * TR of the last ``steps`` candles), a = (n - 1) / n."""
    a = (n - 1) / n
    return a**steps, (a ** np.arange(steps - 1, -1, -1, dtype=np.float64)) / n


def atr_last(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> float:
    """TA-Lib ATR(n) at the last candle (NaN while fewer than n + 1 candles)."""
    length = len(close)
    if length <= n:
        return np.nan
    prev = close[:-1]
    tr = np.maximum(high[1:] - low[1:], np.maximum(np.abs(high[1:] - prev), np.abs(low[1:] - prev)))
    seed = tr[:n].sum() / n
    steps = length - 1 - n
    if steps == 0:
        return float(seed)
    decay, weights = _wilder_weights(n, steps)
    return float(seed * decay + weights @ tr[n:])


def _tail_mean(values: np.ndarray, n: int) -> float:
    """pandas rolling(n, min_periods=1).mean() at the last element: NaN-skipping."""
    window = values[-n:]
    if window.dtype == np.float64:
        total = window.sum()
        if total == total:  # no NaN in the window: the same sum of the same values, without the masked copy
            return float(total / len(window))
    ok = ~np.isnan(window)
    count = int(ok.sum())
    return float(window[ok].sum() / count) if count else np.nan


def mtm_atr_mean(a: Arrays, n: int) -> float:
    """MtmAtrMean: rolling mean of pct_change(n), times ATR(n) over the rolling mean close."""
    close = a["close"]
    if close.dtype == np.float64 and len(close) >= 2 * n:  # every one of the last n has its base n back
        mtm = close[-n:] / close[-2 * n:-n] - 1
    else:
        start = max(len(close) - n, 0)
        idx = np.arange(start, len(close))
        mtm = np.full(len(idx), np.nan)
        has_base = idx >= n
        mtm[has_base] = close[idx[has_base]] / close[idx[has_base] - n] - 1
    return _tail_mean(mtm, n) * (atr_last(a["high"], a["low"], close, n) / _tail_mean(close, n))


def chg_pct_max(a: Arrays, n: int) -> float:
    """ChgPctMax: the largest one-candle return of the last n (rolling(n).max(), so n full values)."""
    close = a["close"]
    if len(close) < n + 1:
        return np.nan
    tail = close[-(n + 1):]
    pct = tail[1:] / tail[:-1] - 1
    if pct.dtype == np.float64:  # max is NaN exactly when some value is
        top = pct.max()
        return float(top) if top == top else np.nan
    return np.nan if np.isnan(pct).any() else float(pct.max())


def _tail_sum(values: np.ndarray, n: int) -> float:
    """pandas rolling(n, min_periods=1).sum() at the last element: NaN-skipping, NaN when all are."""
    window = values[-n:]
    if window.dtype == np.float64:
        total = window.sum()
        if total == total:  # no NaN in the window: the same sum of the same values, without the masked copy
            return float(total)
    ok = ~np.isnan(window)
    return float(window[ok].sum()) if ok.any() else np.nan


def volume(a: Arrays, n: int) -> float:
    """Volume: quote volume summed over the last n candles (rolling(n, min_periods=1).sum())."""
    return _tail_sum(a["quote_volume"], n)


def pct_change(a: Arrays, n: int) -> float:
    """PctChange: the close's change over n candles (pct_change(n); NaN while fewer than n + 1 candles)."""
    close = a["close"]
    return float(close[-1] / close[-1 - n] - 1) if len(close) > n else np.nan


def funding_sum(a: Arrays, n: int) -> float:
    """FundingRate: funding_rate summed over the last n candles (rolling(n, min_periods=1).sum())."""
    return _tail_sum(a[FUNDING_RATE], n)


def funding_mean(a: Arrays, n: int) -> float:
    """FundingRateMean: funding_rate averaged over the last n candles (rolling(n, min_periods=1).mean())."""
    return _tail_mean(a[FUNDING_RATE], n)


Kernel = Callable[[Arrays], float]
_FACTORS: dict[str, Callable[[Arrays, int], float]] = {
    "MtmAtrMean": mtm_atr_mean, "PctChange": pct_change, "FundingRate": funding_sum}
_FILTERS: dict[str, Callable[[Arrays, int], float]] = {
    "ChgPctMax": chg_pct_max, "Volume": volume, "FundingRate": funding_sum, "FundingRateMean": funding_mean}


_INPUTS: dict[str, tuple[str, ...]] = {
    "MtmAtrMean": ("close", "high", "low"), "PctChange": ("close",), "ChgPctMax": ("close",),
    "Volume": ("quote_volume",), "FundingRate": (FUNDING_RATE,), "FundingRateMean": (FUNDING_RATE,)}


def kernel_inputs(name: str) -> tuple[str, ...]:
    """The columns a built-in plugin's kernel reads (so a caller fetches only those)."""
    return _INPUTS[name]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def kernel_for(kind: str, name: str, args: tuple) -> Kernel | None:
    """The fast kernel for a built-in plugin call, or None where only the plugin can compute it
    (a fractional difference, a parameter that is not a positive whole number)."""
    if kind == "factors" and name in _FACTORS:
        back_hour, d_num = args
        fn = _FACTORS[name]
        return (lambda a: fn(a, back_hour)) if d_num == 0 and _positive_int(back_hour) else None
    if kind == "filters" and name in _FILTERS and _positive_int(args[0]):
        fn, n = _FILTERS[name], args[0]
        return lambda a: fn(a, n)
    return None
