"""Each symbol's factor and filter values at every backtested hour, from exactly the crawler's file then.

The file at row t holds the newest ``num_candles`` rows ending at t. A row gets values only where the
live factor worker would give it a row: the file holds at least ``min_candle_num`` candles and no zero
or NaN close (the live check rejects such a file), and no plugin failed on it.

* built-ins: ``services.factor.series`` (every row at once, held to the live kernels);
* a user's plugin: the live row builder (``compute.PluginRows``) on each file's slice;
* ``full_history``: a user's plugin once on the whole history (cheaper, and *not* what live computes for
  recursive indicators; the run measures and reports the difference on a sample of hours).

``symbol_factors`` is a plain function of picklable inputs so a process pool can run it per symbol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from services.backtest.history import HOUR_MS, SymbolHistory
from services.factor.compute import NO_FUNDING, Funding, PluginRows, Skipped, candle_frame, funding_column
from services.factor.kernels import FUNDING_RATE
from services.factor.series import series_for_calculators, window_starts
from shared.plugins import Calculator, PluginError, build_calculators
from shared.strategy import Strategy


@dataclass(frozen=True)
class FactorJob:
    """What a worker needs besides the symbol: the plugins (rebuilt in the worker) and the window rules."""

    strategy: Strategy
    workdir: Path | None
    num_candles: int
    min_candle_num: int
    first_run_ms: int
    last_run_ms: int
    full_history: bool = False


@dataclass
class SymbolFactors:
    symbol: str
    rows: np.ndarray  # row indices of the symbol's history that have a factor row
    values: dict[str, np.ndarray]  # column -> value at each of those rows
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> hours
    errors: list[str] = field(default_factory=list)  # the first few plugin errors, named


def calculators(job: FactorJob) -> list[Calculator]:
    return build_calculators(job.strategy.factor_specs, job.strategy.all_filters, job.workdir)


def candidate_rows(history: SymbolHistory, job: FactorJob) -> tuple[np.ndarray, dict[str, int]]:
    """Rows whose close falls in the run range and whose file the live worker would accept."""
    close_ms = history.begin_ms + HOUR_MS
    rows = np.flatnonzero((close_ms >= job.first_run_ms) & (close_ms <= job.last_run_ms))
    starts = window_starts(len(history.begin_ms), job.num_candles)[rows]
    short = rows - starts + 1 < job.min_candle_num
    bad_before = np.r_[0, np.cumsum(history.bad_close)]
    bad = (bad_before[rows + 1] - bad_before[starts]) > 0
    skipped = {"too_few_candles": int((short & ~bad).sum()), "bad_data": int(bad.sum())}
    return rows[~short & ~bad], {k: v for k, v in skipped.items() if v}


def _arrays(history: SymbolHistory, funding: Funding) -> dict[str, np.ndarray]:
    frame = history.frame
    arrays = {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64)
              for c in ("close", "high", "low", "quote_volume")}
    arrays[FUNDING_RATE] = funding_column(history.begin_ms, funding)
    return arrays


def history_table(history: SymbolHistory) -> pa.Table:
    """The symbol's whole history as the crawler's file would hold it (a file of every candle)."""
    return pa.Table.from_pandas(history.frame, preserve_index=False).replace_schema_metadata(None)


def whole_history(history: SymbolHistory, calcs: list[Calculator], funding: Funding) -> pd.DataFrame:
    """Every plugin once on the whole history (``--full-history``): PluginRows' frame, all rows kept."""
    df = candle_frame(history_table(history), history.symbol, funding_column(history.begin_ms, funding))
    for calc in calcs:
        df = calc(df)
    return df


def symbol_factors(history: SymbolHistory, funding: Funding, job: FactorJob,
                   calcs: list[Calculator] | None = None) -> SymbolFactors:
    """The symbol's factor values at its usable rows in the run range."""
    calcs = calculators(job) if calcs is None else calcs
    rows, skipped = candidate_rows(history, job)
    columns = [c.column for c in calcs]
    series = series_for_calculators(calcs)
    if series is not None:
        arrays = _arrays(history, funding)
        values = {col: fn(arrays, job.num_candles)[rows] for col, fn in zip(columns, series, strict=True)}
        return SymbolFactors(history.symbol, rows, values, skipped)
    if job.full_history:
        try:
            df = whole_history(history, calcs, funding)
        except PluginError as e:
            skipped["error"] = skipped.get("error", 0) + len(rows)
            return SymbolFactors(history.symbol, rows[:0], {c: np.empty(0) for c in columns}, skipped, [str(e)])
        values = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)[rows] for c in columns}
        return SymbolFactors(history.symbol, rows, values, skipped)
    return exact_rows(history, funding, job, calcs, rows, skipped)


def exact_rows(history: SymbolHistory, funding: Funding, job: FactorJob, calcs: list[Calculator],
               rows: np.ndarray, skipped: dict[str, int] | None = None) -> SymbolFactors:
    """The live row builder on each file's slice: the reference path, and the only one for a user's plugin.

    The builder live uses for a user's plugins (``row_builder``'s: the plugins, then the trailing built-ins
    by their kernels), through ``PluginRows.window_values``: the same plugins and row on the same candles,
    the symbol's frame laid out once instead of once per hour.
    """
    build = PluginRows(calcs, tail_kernels=True)
    starts = window_starts(len(history.begin_ms), job.num_candles)
    columns = [c.column for c in calcs]
    kept, found = [], []
    skipped, errors = dict(skipped or {}), []
    windows = [(int(starts[t]), t + 1) for t in rows.tolist()]
    for t, got in zip(rows.tolist(), build.window_values(history_table(history), history.symbol, funding, windows,
                                                          columns), strict=True):
        if isinstance(got, Skipped):
            skipped["error"] = skipped.get("error", 0) + 1
            if len(errors) < 3:
                errors.append(str(got))
            continue
        kept.append(t)
        found.append(got)
    table = np.array(found, dtype=np.float64).reshape(len(kept), len(columns))
    values = {c: table[:, k].copy() for k, c in enumerate(columns)}
    return SymbolFactors(history.symbol, np.array(kept, dtype=np.int64), values, skipped, errors)


# -- the process pool's side ---------------------------------------------------------------------------
_WORKER: dict[str, object] = {}


def start_worker(job: FactorJob) -> None:
    """Pool initializer: a user's plugins are loaded once per worker process (functions do not pickle)."""
    _WORKER["job"], _WORKER["calcs"] = job, calculators(job)


def worker_factors(args: tuple[SymbolHistory, Funding]) -> SymbolFactors:
    history, funding = args
    return symbol_factors(history, funding or NO_FUNDING, _WORKER["job"], _WORKER["calcs"])  # type: ignore[arg-type]
