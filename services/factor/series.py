"""The built-in kernels over a whole candle history: each factor's value at every hour, at once.

A backtest needs, for every hour t, the value the live stack computes on the crawler's file at t:
the newest ``num_candles`` rows ending at row t (the file starts at row ``max(0, t - num_candles + 1)``).
Recursive indicators depend on where the file starts (TA-Lib's ATR seeds Wilder's recursion with the
mean of the file's first n true ranges), so these are *exact-window* series, not whole-history ones:
``series[t]`` equals ``kernels.<kernel>(arrays[file window at t])`` (tests hold them to 1e-12 relative
at every hour). Rows are candles, not clock hours: a gap in a symbol's history shifts its window
exactly as it shifts the crawler's file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from services.factor.kernels import FUNDING_RATE, Arrays, _positive_int, _wilder_weights
from shared.plugins import Calculator

Series = Callable[[Arrays, int], np.ndarray]
"""(whole-history arrays, num_candles) -> one value per row."""


def window_starts(length: int, num_candles: int) -> np.ndarray:
    """Row index where the crawler's file at row t starts."""
    return np.maximum(np.arange(length) - num_candles + 1, 0)


def _tail(values: np.ndarray, n: int, num_candles: int, lag: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), n): the last n values ending at each of ``rows``, NaN where a value lies before the file's
    start (or less than ``lag`` rows after it, for values that read ``lag`` rows back)."""
    padded = np.concatenate([np.full(n - 1, np.nan), values])
    cells = rows[:, None] - (n - 1) + np.arange(n)[None, :]  # the row each cell holds
    first_ok = (window_starts(len(values), num_candles) + lag)[rows]
    return np.where(cells >= first_ok[:, None], sliding_window_view(padded, n)[rows], np.nan)


def _windows(values: np.ndarray, n: int, num_candles: int, lag: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's window of the last n values, split: (rows whose window lies inside its file, past ``lag``,
    and holds no NaN; their windows, (k, n); the other rows, whose windows ``_tail`` masks).

    Most rows are whole, and their sums are the plain row sums of the same contiguous values (the same bits
    as summing the masked block), without building the (rows, n) masks for them.
    """
    values = values.astype(np.float64, copy=False)
    length = len(values)
    t = np.arange(length)
    nan_before = np.r_[0, np.cumsum(np.isnan(values))]
    whole = (t - (n - 1) >= window_starts(length, num_candles) + lag)
    whole[whole] &= nan_before[t[whole] + 1] == nan_before[t[whole] - (n - 1)]
    rows = np.flatnonzero(whole)
    blocks = sliding_window_view(values, n)[rows - (n - 1)] if len(rows) else np.empty((0, n))  # n > length: none
    return rows, blocks, np.flatnonzero(~whole)


def _nan_sum(block: np.ndarray) -> np.ndarray:
    """Row sums skipping NaN; NaN where a row has none (pandas rolling(min_periods=1).sum())."""
    ok = ~np.isnan(block)
    out = np.where(ok, block, 0.0).sum(axis=1)
    return np.where(ok.any(axis=1), out, np.nan)


def _nan_mean(block: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(block)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, block, 0.0).sum(axis=1) / count, np.nan)


def _window_stat(values: np.ndarray, n: int, num_candles: int, lag: int, mean: bool) -> np.ndarray:
    """NaN-skipping rolling mean (or sum) of each row's window in its file."""
    values = values.astype(np.float64, copy=False)
    whole, blocks, rest = _windows(values, n, num_candles, lag)
    out = np.empty(len(values))
    out[whole] = blocks.sum(axis=1) / n if mean else blocks.sum(axis=1)
    if len(rest):
        block = _tail(values, n, num_candles, lag, rest)
        out[rest] = _nan_mean(block) if mean else _nan_sum(block)
    return out


def tail_mean(values: np.ndarray, n: int, num_candles: int, lag: int = 0) -> np.ndarray:
    """``kernels._tail_mean`` at every row."""
    return _window_stat(values, n, num_candles, lag, mean=True)


def tail_sum(values: np.ndarray, n: int, num_candles: int) -> np.ndarray:
    """``kernels._tail_sum`` at every row."""
    return _window_stat(values, n, num_candles, 0, mean=False)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """TR of each row against the previous close (NaN at row 0, which has none)."""
    prev = close[:-1]
    tr = np.maximum(high[1:] - low[1:], np.maximum(np.abs(high[1:] - prev), np.abs(low[1:] - prev)))
    return np.concatenate([[np.nan], tr])


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, num_candles: int) -> np.ndarray:
    """``kernels.atr_last`` on the file at every row: Wilder's recursion restarting where each file starts.

    While the file starts at row 0 (t < num_candles) the recursion runs forward from its seed; once the
    file slides, every row has the same number of steps, so the weighted sum is one correlation.
    """
    length = len(close)
    out = np.full(length, np.nan)
    tr = true_range(high, low, close)
    if length <= n:
        return out
    a = (n - 1) / n
    fixed_end = min(length, num_candles)  # rows whose file starts at row 0
    value = tr[1:n + 1].sum() / n
    if n < fixed_end:
        out[n] = value
    for t in range(n + 1, fixed_end):
        value = value * a + tr[t] / n
        out[t] = value
    steps = num_candles - 1 - n
    if length <= num_candles or steps < 0:
        return out
    t = np.arange(num_candles, length)
    starts = t - num_candles + 1
    seeds = sliding_window_view(tr[1:], n).sum(axis=1) / n  # seeds[s] = mean of tr[s+1 .. s+n]
    seed = seeds[starts]
    if steps == 0:
        out[t] = seed
        return out
    decay, weights = _wilder_weights(n, steps)
    tail = np.correlate(tr[n + 1:], weights, mode="valid")  # tail[m] = weights @ tr[m+n+1 .. m+n+steps]
    out[t] = seed * decay + tail[starts]
    return out


def mtm_atr_mean(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    """``kernels.mtm_atr_mean`` at every row."""
    close = a["close"]
    mtm = np.full(len(close), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero close: the live check skips those hours
        mtm[n:] = close[n:] / close[:-n] - 1
    momentum = tail_mean(mtm, n, num_candles, lag=n)
    return momentum * (atr(a["high"], a["low"], close, n, num_candles) / tail_mean(close, n, num_candles))


def chg_pct_max(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    """``kernels.chg_pct_max`` at every row: NaN until the file holds n + 1 candles or if any change is NaN."""
    close = a["close"]
    pct = np.full(len(close), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct[1:] = close[1:] / close[:-1] - 1
    whole, blocks, _ = _windows(pct, n, num_candles, lag=1)  # the others hold a NaN or lack n changes: NaN
    out = np.full(len(close), np.nan)
    out[whole] = blocks.max(axis=1)
    return out


def pct_change(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    """``kernels.pct_change`` at every row."""
    close = a["close"]
    out = np.full(len(close), np.nan)
    t = np.arange(n, len(close))
    ok = t - n >= window_starts(len(close), num_candles)[n:]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[t[ok]] = close[t[ok]] / close[t[ok] - n] - 1
    return out


def volume(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    return tail_sum(a["quote_volume"], n, num_candles)


def funding_sum(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    return tail_sum(a[FUNDING_RATE], n, num_candles)


def funding_mean(a: Arrays, n: int, num_candles: int) -> np.ndarray:
    return tail_mean(a[FUNDING_RATE], n, num_candles)


_FACTORS: dict[str, Callable[[Arrays, int, int], np.ndarray]] = {
    "MtmAtrMean": mtm_atr_mean, "PctChange": pct_change, "FundingRate": funding_sum}
_FILTERS: dict[str, Callable[[Arrays, int, int], np.ndarray]] = {
    "ChgPctMax": chg_pct_max, "Volume": volume, "FundingRate": funding_sum, "FundingRateMean": funding_mean}


def series_for(kind: str, name: str, args: tuple) -> Series | None:
    """The history version of ``kernels.kernel_for``'s kernel, or None where only the plugin can compute it."""
    if kind == "factors" and name in _FACTORS:
        back_hour, d_num = args
        fn = _FACTORS[name]
        return (lambda a, w: fn(a, back_hour, w)) if d_num == 0 and _positive_int(back_hour) else None
    if kind == "filters" and name in _FILTERS and _positive_int(args[0]):
        fn, n = _FILTERS[name], args[0]
        return lambda a, w: fn(a, n, w)
    return None


def series_for_calculators(calculators: Sequence[Calculator]) -> list[Series] | None:
    """One series per calculator when every one is a built-in with a kernel (else the plugins must run)."""
    found = [series_for(c.kind, c.name, c.args) if c.builtin and c.kind else None for c in calculators]
    return None if any(s is None for s in found) else found  # type: ignore[return-value]
