"""One symbol's factor row from its candle file: the article's per-symbol loop body, guarded.

Two ways to compute the row, chosen once per worker:

* the plugin path (the reference, and the only way for users' own plugins): the
  whole candle frame through every ``signal``, then its newest row;
* the kernel path (``kernels.py``): when every configured plugin is a built-in
  one with a kernel, the newest values straight from the Arrow columns.

Both return the same one-row Arrow table: the newest candle's columns, then
``symbol``, then the factor and filter columns.

Funding events the market sent with the candles become a ``funding_rate``
column (``funding_column``) that plugins and kernels read (replacing a column
of that name in the file, if any); it is not part of the published row, which
keeps the crawler's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from services.factor.kernels import FUNDING_RATE, Kernel, kernel_for
from shared.bmac import BadCandles, check_candle_table, max_file_bytes, read_candle_table
from shared.messages import Skip
from shared.plugins import Calculator, PluginError, reads_funding


class Skipped(Exception):
    """This symbol sits this round out; ``skip`` says why."""

    def __init__(self, skip: Skip):
        self.skip = skip
        super().__init__(f"{skip.symbol}: {skip.reason}: {skip.detail}")


def _usable_table(data: bytes | memoryview, source: str, symbol: str, min_candle_num: int,
                  closed_candle_begin: datetime) -> pa.Table:
    """Decode and check; ``closed_candle_begin`` is the open time of the candle that just closed."""
    try:
        table = read_candle_table(data, source)
        check_candle_table(table, source)
    except BadCandles as e:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=str(e))) from None
    if table.num_rows < min_candle_num:
        raise Skipped(Skip(symbol=symbol, reason="too_few_candles",
                           detail=f"{table.num_rows} candles < min_candle_num {min_candle_num}"))
    newest = table["candle_begin_time"][-1].as_py()
    if newest != closed_candle_begin:
        raise Skipped(Skip(symbol=symbol, reason="stale",
                           detail=f"newest candle opens {pd.Timestamp(newest)}, expected {closed_candle_begin}"))
    return table.replace_schema_metadata(None)


HOUR_MS = 3_600_000
Funding = tuple[np.ndarray, np.ndarray]
"""One symbol's funding events: times (ms since the epoch, strictly increasing) and rates."""
NO_FUNDING: Funding = (np.empty(0, np.int64), np.empty(0, np.float64))


def candle_begin_ms(table: pa.Table) -> np.ndarray:
    """candle_begin_time as int64 ms since the epoch, whatever unit the file stores."""
    return table["candle_begin_time"].to_numpy().astype("datetime64[ms]").astype(np.int64)


def funding_column(begin_ms: np.ndarray, funding: Funding, interval_ms: int = HOUR_MS) -> np.ndarray:
    """Each candle's funding rate: that of the event whose time is the candle's close (begin + interval), else 0.0.

    A funding event is settled at an hour boundary and the crawler stamps it there, so the candle that
    closes at that instant is the one that pays it; every other candle pays nothing.
    """
    times, rates = funding
    out = np.zeros(len(begin_ms), dtype=np.float64)
    if len(times) and len(begin_ms):
        close = begin_ms + interval_ms
        at = np.minimum(np.searchsorted(times, close), len(times) - 1)
        hit = times[at] == close
        out[hit] = rates[at[hit]]
    return out


class PluginRows:
    """The article's way: every plugin on the whole frame, keep the newest row."""

    def __init__(self, calculators: Sequence[Calculator], interval_ms: int = HOUR_MS):
        self.calculators = list(calculators)
        self.interval_ms = interval_ms

    def __call__(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> pa.Table:
        df = table.to_pandas()
        df["symbol"] = symbol
        df[FUNDING_RATE] = funding_column(candle_begin_ms(table), funding, self.interval_ms)
        try:
            for calc in self.calculators:
                df = calc(df)
        except PluginError as e:
            raise Skipped(Skip(symbol=symbol, reason="error", detail=str(e))) from None
        row = df.iloc[[-1]].drop(columns=[FUNDING_RATE], errors="ignore")  # plugins' input, not published
        return pa.Table.from_pandas(row, preserve_index=False).replace_schema_metadata(None)


class KernelRows:
    """The fast path: the newest factor values straight from the columns."""

    def __init__(self, columns: list[str], kernels: list[Kernel], funding: bool = False, interval_ms: int = HOUR_MS):
        """``funding``: some kernel reads the funding_rate column, so it is aligned for each symbol."""
        self.columns, self.kernels = columns, kernels
        self.funding, self.interval_ms = funding, interval_ms
        self._added = [pa.field("symbol", pa.large_string()), *(pa.field(c, pa.float64()) for c in columns)]

    @classmethod
    def for_calculators(cls, calculators: Sequence[Calculator], interval_ms: int = HOUR_MS) -> KernelRows | None:
        """Only when every plugin is a built-in one with a kernel (a user's file always runs as written)."""
        kernels = [kernel_for(c.kind, c.name, c.args) if c.builtin else None for c in calculators]
        if any(k is None for k in kernels):
            return None
        return cls([c.column for c in calculators], kernels,  # type: ignore[arg-type]
                   funding=reads_funding(calculators), interval_ms=interval_ms)

    def __call__(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> pa.Table:
        arrays = {c: table[c].to_numpy() for c in ("close", "high", "low", "quote_volume")}
        if self.funding:
            arrays[FUNDING_RATE] = funding_column(candle_begin_ms(table), funding, self.interval_ms)
        row = table.slice(table.num_rows - 1, 1)
        added = [pa.array([symbol], pa.large_string())]
        added += [pa.array([kernel(arrays)], pa.float64(), from_pandas=True) for kernel in self.kernels]
        return pa.Table.from_arrays([*row.columns, *added], schema=pa.schema([*row.schema, *self._added]))


def row_builder(calculators: Sequence[Calculator], fast: bool = True,
                interval_ms: int = HOUR_MS) -> PluginRows | KernelRows:
    return ((KernelRows.for_calculators(calculators, interval_ms) if fast else None)
            or PluginRows(calculators, interval_ms))


def read_shared_file(path: str, symbol: str, limit: int | None = None) -> pa.Buffer:
    """A candle file on the crawler's filesystem, memory-mapped (the market sent only its path).

    Only ``<SYMBOL>.fea`` of the symbol named is read (a message cannot point a worker at any other
    file), and only under the size limit.
    """
    limit = max_file_bytes() if limit is None else limit
    if Path(path).name != f"{symbol}.fea":
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path[:300]}: not {symbol}'s candle file"))
    try:
        with pa.memory_map(path) as f:
            if f.size() > limit:
                raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path}: {f.size()} bytes, over the "
                                   f"{limit / 2**20:g} MiB file size limit (ALPHABUS_MAX_FILE_MB); not read"))
            return f.read_buffer()
    except OSError as e:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path}: cannot read ({e})")) from None


def check_size(data: bytes | memoryview | pa.Buffer, source: str, symbol: str, limit: int) -> None:
    """Candle bytes that came over the socket obey the same limit as files read by path."""
    size = memoryview(data).nbytes if not isinstance(data, pa.Buffer) else data.size
    if size > limit:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{source}: {size} bytes, over the "
                           f"{limit / 2**20:g} MiB file size limit (ALPHABUS_MAX_FILE_MB)"))


def factor_row(data: bytes | memoryview, source: str, symbol: str, build: PluginRows | KernelRows,
               min_candle_num: int, closed_candle_begin: datetime, funding: Funding = NO_FUNDING) -> pa.Table:
    """The newest candle's row with every factor and filter column, as a one-row table."""
    table = _usable_table(data, source, symbol, min_candle_num, closed_candle_begin)
    return build(table, symbol, funding)


