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
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from services.factor.kernels import FUNDING_RATE, Kernel, kernel_for, kernel_inputs
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


_FAST_NUMBERS = (pa.float32(), pa.float64(), pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                 pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())


@lru_cache(maxsize=32)
def _pandas_tz(kind: pa.TimestampType) -> Any:
    """The tz object Arrow's own to_pandas gives this column type (zoneinfo UTC, not datetime.timezone.utc)."""
    return pa.array([], kind).to_pandas().dt.tz


@lru_cache(maxsize=4096)
def _symbol_column(symbol: str, rows: int) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """``df["symbol"] = symbol``'s column, made once per symbol and length (a string column costs ~0.3 ms)."""
    return pd.DataFrame({"symbol": symbol}, index=pd.RangeIndex(rows))["symbol"].array


def candle_frame(table: pa.Table, symbol: str, funding_rate: np.ndarray) -> pd.DataFrame:
    """The frame the article's plugins get: ``pandas.read_feather``'s, plus ``symbol`` and ``funding_rate``.

    Built in one constructor from the Arrow columns (zero-copy for numbers) when every column is a number
    without nulls or a zoned timestamp, as the crawler writes them; Arrow's generic ``to_pandas`` and two
    column inserts cost ~3x as much. Any other file takes that generic way; both give equal frames.
    Column names are Python strings (an object Index, as pandas 2 gave the article): under pandas 3 an
    Arrow-backed Index rebuilds its hash table after every column a plugin adds, ~0.1-0.3 ms per lookup.
    """
    rows = table.num_rows
    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if column.null_count:
            break
        if kind in _FAST_NUMBERS:
            columns[name] = column.to_numpy()
        elif pa.types.is_timestamp(kind) and kind.tz:
            columns[name] = pd.DatetimeIndex(column.to_numpy()).tz_localize("UTC").tz_convert(_pandas_tz(kind))
        else:
            break
    else:
        if len(columns) == table.num_columns:  # no duplicate names
            columns["symbol"] = _symbol_column(symbol, rows)
            columns[FUNDING_RATE] = funding_rate
            return pd.DataFrame(columns, columns=pd.Index(list(columns), dtype=object))
    df = table.to_pandas()
    df["symbol"] = symbol
    df[FUNDING_RATE] = funding_rate
    df.columns = pd.Index(list(df.columns), dtype=object)
    return df


def _arrow_type(dtype: Any) -> pa.DataType | None:
    """A plugin's numeric column's Arrow type (so an all-NaN row stays a double, not a null); None: infer."""
    return pa.from_numpy_dtype(dtype) if isinstance(dtype, np.dtype) and dtype.kind in "fiub" else None


def newest_row(df: pd.DataFrame, file_schema: pa.Schema, extra: dict[str, float] | None = None) -> pa.Table:
    """The frame's last row as a one-row table, as ``pa.Table.from_pandas`` gives it (NaN becomes null) but
    ~5x cheaper: the file's columns keep the file's types, ``symbol`` is a large string, and the plugins'
    columns take the type of their value. ``extra``: columns set after the frame (by kernels), in order.
    ``funding_rate`` is the plugins' input, not published."""
    last = df.iloc[-1]
    names = [str(n) for n in last.index]
    values = dict(zip(names, last.tolist(), strict=True))
    kinds = {n: _arrow_type(d) for n, d in zip(names, df.dtypes, strict=True) if file_schema.get_field_index(n) < 0}
    values.update(extra or {})
    kinds.update(dict.fromkeys(extra or {}, pa.float64()))
    values.pop(FUNDING_RATE, None)
    arrays, fields = [], []
    for name, value in values.items():
        kind = pa.large_string() if name == "symbol" else kinds[name] if name in kinds else file_schema.field(name).type
        try:
            array = pa.array([value], kind, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
            array = pa.array([value], from_pandas=True)  # a plugin changed the column's type: say what it holds
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class PluginRows:
    """The article's way: every plugin on the whole frame, keep the newest row.

    ``tail_kernels``: built-in plugins after the last user plugin (the article's filters, after a user's
    factor) are computed by their kernels on the frame the plugins left, since no plugin reads their
    columns; an error there hands them back to the plugins, which then report it as they would.
    """

    def __init__(self, calculators: Sequence[Calculator], interval_ms: int = HOUR_MS, tail_kernels: bool = False):
        self.calculators = list(calculators)
        self.interval_ms = interval_ms
        split = len(self.calculators)
        while tail_kernels and split > 1 and self._kernel(self.calculators[split - 1]) is not None:
            split -= 1
        self.plugins = self.calculators[:split]
        self.tail = [(c.column, self._kernel(c)) for c in self.calculators[split:]]
        self.tail_inputs = sorted({col for c in self.calculators[split:] for col in kernel_inputs(c.name or "")})

    @staticmethod
    def _kernel(calc: Calculator) -> Kernel | None:
        return kernel_for(calc.kind, calc.name, calc.args) if calc.builtin else None

    def _tail_values(self, df: pd.DataFrame) -> dict[str, float] | None:
        try:
            arrays = {c: df[c].to_numpy(np.float64) for c in self.tail_inputs}
            return {column: kernel(arrays) for column, kernel in self.tail}  # type: ignore[misc]
        except Exception:  # a plugin left columns a built-in cannot read: the plugins say what is wrong
            return None

    def __call__(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> pa.Table:
        df = candle_frame(table, symbol, funding_column(candle_begin_ms(table), funding, self.interval_ms))
        try:
            for calc in self.plugins:
                df = calc(df)
            extra = self._tail_values(df) if self.tail else {}
            if extra is None:
                for calc in self.calculators[len(self.plugins):]:
                    df = calc(df)
                extra = {}
        except PluginError as e:
            raise Skipped(Skip(symbol=symbol, reason="error", detail=str(e))) from None
        return newest_row(df, table.schema, extra)


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
    """The fast kernels when every plugin has one; else the plugins, with kernels for the trailing built-ins
    when ``fast``. Returns a callable ``(table, symbol, funding) -> one-row table``."""
    return ((KernelRows.for_calculators(calculators, interval_ms) if fast else None)
            or PluginRows(calculators, interval_ms, tail_kernels=fast))


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


