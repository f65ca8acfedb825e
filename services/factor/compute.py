"""One symbol's factor row from its candle file: the article's per-symbol loop body, guarded.

Two ways to compute the row, chosen once per worker:

* the plugin path (the reference, and the only way for users' own plugins): the
  whole candle frame through every ``signal``, then its newest row;
* the kernel path (``kernels.py``): when every configured plugin is a built-in
  one with a kernel, the newest values straight from the Arrow columns.

Both return the same one-row Arrow table: the newest candle's columns, then
``symbol``, then the factor and filter columns. A batch (``pool.compute_rows``)
takes each symbol's ``part`` under its own guard, then the builder's ``tables``
for all of them: both paths put the rows together at once (one array per column
for a run of rows of one layout) instead of a one-row table per symbol. The backtest's
exact path runs the plugin path's own steps on each hour's file
(``PluginRows.window_values``).

The plugins' own pandas calls are the cost users choose; what the path adds is
kept small: the frame is laid out from the Arrow columns directly
(``FrameLayout``, once per schema) and the newest row is read block by block
(``newest_values``), as numbers until the batch's rows become one table.

Funding events the market sent with the candles become a ``funding_rate``
column (``funding_column``) that plugins and kernels read (replacing a column
of that name in the file, if any); it is not part of the published row, which
keeps the crawler's columns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.arrays import DatetimeArray

from services.factor.kernels import FUNDING_RATE, Kernel, kernel_for, kernel_inputs
from shared.bmac import BadCandles, check_candle_table, max_file_bytes, read_candle_table
from shared.messages import Skip
from shared.plugins import Calculator, PluginError, reads_funding


class Skipped(Exception):
    """This symbol sits this round out; ``skip`` says why."""

    def __init__(self, skip: Skip):
        self.skip = skip
        super().__init__(f"{skip.symbol}: {skip.reason}: {skip.detail}")


_NAT = np.iinfo(np.int64).min
"""NaT as int64: what a null time reads as."""


def usable_table(data: bytes | memoryview | pa.Buffer, source: str, symbol: str, min_candle_num: int,
                 closed_candle_begin: datetime) -> pa.Table:
    """Decode and check; ``closed_candle_begin`` is the open time of the candle that just closed."""
    try:
        table = read_candle_table(data, source)
        times = check_candle_table(table, source)
    except BadCandles as e:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=str(e))) from None
    if table.num_rows < min_candle_num:
        raise Skipped(Skip(symbol=symbol, reason="too_few_candles",
                           detail=f"{table.num_rows} candles < min_candle_num {min_candle_num}"))
    kind = table.schema.field("candle_begin_time").type
    newest_value = int(times[-1])
    newest = table["candle_begin_time"][-1].as_py() if newest_value == _NAT else _time_as_py(newest_value, kind)
    if newest != closed_candle_begin:
        raise Skipped(Skip(symbol=symbol, reason="stale",
                           detail=f"newest candle opens {pd.Timestamp(newest)}, expected {closed_candle_begin}"))
    return table.replace_schema_metadata(None)


@lru_cache(maxsize=64)
def _time_as_py(value: int, kind: pa.DataType) -> Any:
    """A time column's value as ``as_py`` gives it (~5 us): a round's files share their newest time, so once."""
    return pa.array([value], pa.int64()).view(kind)[0].as_py()


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

Blocks = list[tuple[Any, np.ndarray]]
"""A frame's columns as pandas stores them: (2-D ndarray of one dtype, rows along axis 1, or a 1-D extension
array; the positions of its columns in the frame)."""


@lru_cache(maxsize=32)
def _pandas_tz(kind: pa.TimestampType) -> Any:
    """The tz object Arrow's own to_pandas gives this column type (zoneinfo UTC, not datetime.timezone.utc)."""
    return pa.array([], kind).to_pandas().dt.tz


@lru_cache(maxsize=4096)
def _symbol_column(symbol: str, rows: int) -> pd.api.extensions.ExtensionArray:
    """``df["symbol"] = symbol``'s column, made once per symbol and length (a string column costs ~0.3 ms)."""
    return pd.DataFrame({"symbol": symbol}, index=pd.RangeIndex(rows))["symbol"].array


@lru_cache(maxsize=64)
def _range_index(rows: int) -> pd.RangeIndex:
    return pd.RangeIndex(rows)  # immutable: every frame of this length can share it


class FrameLayout:
    """Where a candle file's columns go in the plugins' frame, worked out once per file schema.

    The layout Arrow's ``to_pandas`` makes (one 2-D block per numeric dtype, one block per zoned time column),
    plus ``symbol`` and ``funding_rate``, built with pandas' block constructor: ~20x cheaper than the
    ``DataFrame`` constructor, which checks and copies every column. Column names are Python strings in one
    object Index shared by every frame (immutable; as pandas 2 gave the article): under pandas 3 an Arrow-backed
    Index rebuilds its hash table after every column a plugin adds, ~0.1-0.3 ms per lookup.
    """

    def __init__(self, schema: pa.Schema):
        names = [*schema.names, "symbol", FUNDING_RATE]
        self.columns = pd.Index(names, dtype=object)
        groups: dict[np.dtype, list[int]] = {}
        self.times: list[tuple[int, pd.DatetimeTZDtype]] = []
        for i, kind in enumerate(schema.types):
            if kind in _FAST_NUMBERS:
                groups.setdefault(np.dtype(kind.to_pandas_dtype()), []).append(i)
            else:  # _layout admits only numbers and zoned timestamps
                unit = kind.unit  # type: ignore[attr-defined]
                self.times.append((i, pd.DatetimeTZDtype(unit, _pandas_tz(kind))))
        self.symbol_at = len(schema)
        floats = groups.setdefault(np.dtype(np.float64), [])
        self.funding_row = len(floats)  # funding_rate is the float64 block's last row
        self.numbers = [(dtype, cols, np.array([*cols, len(schema) + 1] if dtype == np.float64 else cols))
                        for dtype, cols in groups.items()]

    def blocks(self, table: pa.Table, symbol: str, funding_rate: np.ndarray) -> Blocks | None:
        """The frame's blocks for the whole table, fresh arrays (plugins may write into them). Nulls in a float
        column are NaN, as Arrow's to_pandas makes them; None when another column holds nulls (to_pandas
        turns those into floats or objects: the generic way)."""
        rows = table.num_rows
        out: Blocks = []
        for dtype, cols, places in self.numbers:
            block = np.empty((len(places), rows), dtype)
            for k, i in enumerate(cols):
                column = table.column(i)
                if column.null_count and dtype.kind != "f":
                    return None
                block[k] = column.to_numpy()
            if dtype == np.float64:
                block[self.funding_row] = funding_rate
            out.append((block, places))
        for i, dtype in self.times:  # as Arrow's to_pandas builds a zoned column: epoch values, zoned dtype
            column = table.column(i)
            if column.null_count:
                return None
            epochs = column.to_numpy().view(f"M8[{dtype.unit}]").copy()
            out.append((DatetimeArray._simple_new(epochs, dtype=dtype), np.array([i])))  # pd.array checks: 13 us
        out.append((_symbol_column(symbol, rows).copy(), np.array([self.symbol_at])))
        return out

    def frame(self, blocks: Blocks, window: tuple[int, int] | None = None) -> pd.DataFrame:
        """The frame of ``blocks`` (taken as they are), or of a copy of their rows ``window`` = (start, stop)
        with a fresh RangeIndex: the frame the plugins get for that slice of the file, whatever they write."""
        if window is not None:
            start, stop = window
            blocks = [((a[:, start:stop] if a.ndim == 2 else a[start:stop]).copy(), places) for a, places in blocks]
        rows = blocks[0][0].shape[-1]
        return pd.api.internals.create_dataframe_from_blocks(blocks, index=_range_index(rows), columns=self.columns)


@lru_cache(maxsize=64)
def _layout_of(schema: pa.Schema) -> FrameLayout | None:
    names = schema.names
    if len(set(names)) != len(names) or "symbol" in names or FUNDING_RATE in names:
        return None
    if not all(k in _FAST_NUMBERS or (pa.types.is_timestamp(k) and k.tz) for k in schema.types):
        return None
    return FrameLayout(schema)


_LAST_LAYOUT: list[tuple[pa.Schema, FrameLayout | None]] = []


def frame_layout(schema: pa.Schema) -> FrameLayout | None:
    """The layout for files of this schema, or None where only Arrow's generic conversion will do (a column
    that is not a number or a zoned time, a duplicate name, a column named ``symbol`` or ``funding_rate``).
    Every file of a round has the same schema: comparing it with the last one's costs 0.1 us, hashing 11 us."""
    if _LAST_LAYOUT and _LAST_LAYOUT[0][0].equals(schema):
        return _LAST_LAYOUT[0][1]
    layout = _layout_of(schema)
    _LAST_LAYOUT[:] = [(schema, layout)]
    return layout


def candle_frame(table: pa.Table, symbol: str, funding_rate: np.ndarray) -> pd.DataFrame:
    """The frame the article's plugins get: ``pandas.read_feather``'s, plus ``symbol`` and ``funding_rate``.

    Laid out directly (``FrameLayout``) when every column is a number (nulls only in floats) or a zoned time, as
    the crawler writes them; any other file takes Arrow's generic ``to_pandas``; both give equal frames.
    """
    layout = frame_layout(table.schema)
    blocks = layout.blocks(table, symbol, funding_rate) if layout is not None else None
    if layout is not None and blocks is not None:
        return layout.frame(blocks)
    df = table.to_pandas()
    df["symbol"] = symbol
    df[FUNDING_RATE] = funding_rate
    df.columns = pd.Index(list(df.columns), dtype=object)
    return df


def _arrow_type(dtype: Any) -> pa.DataType | None:
    """A plugin's numeric column's Arrow type (so an all-NaN row stays a double, not a null); None: infer."""
    return pa.from_numpy_dtype(dtype) if isinstance(dtype, np.dtype) and dtype.kind in "fiub" else None


@lru_cache(maxsize=64)
def _file_types(schema: pa.Schema) -> dict[str, pa.DataType]:
    return dict(zip(schema.names, schema.types, strict=True))


def _cast_or_keep(value: pa.Array, kind: pa.DataType) -> pa.Array:
    """A file column a plugin gave another numeric type: the file's type where the value fits it exactly,
    else the value's own type (2.5 stays 2.5, not a truncated 2)."""
    try:
        return value.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return value


def _one_value(value: Any, kind: pa.DataType | None) -> pa.Array:
    if isinstance(value, np.generic):
        value = value.item()
    try:
        return pa.array([value], kind, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
        return pa.array([value], from_pandas=True)  # a plugin changed the column's type: say what it holds


class NewestValues(NamedTuple):
    """A frame's last row, block by block as pandas stores it (``df._mgr``, as ``DataFrame.iloc`` reads a row),
    before it becomes Arrow: the rows of many frames with one ``key`` become one table together."""

    key: tuple  # the file's schema, the frame's column names, each block's (dtype, kind, places), extra names
    blocks: list[Any]  # per block: numbers, its last values (1-D array); zoned times, int64 epochs; else values
    extra: list[Any]


def _block_kind(dtype: Any) -> str:
    """How a block's last values are kept and converted: ``number`` (numpy numbers and booleans), ``time``
    (naive or zoned datetimes, kept as int64 epochs), ``text`` (pandas strings) or ``other``."""
    if isinstance(dtype, np.dtype):
        return "number" if dtype.kind in "fiub" else "time" if dtype.kind == "M" else "other"
    return "time" if isinstance(dtype, pd.DatetimeTZDtype) else "text" if isinstance(dtype, pd.StringDtype) else "other"


def newest_values(df: pd.DataFrame, file_schema: pa.Schema, extra: dict[str, float] | None = None) -> NewestValues:
    """The frame's last row as ``newest_table`` reads it; ``extra``: columns set after the frame (by kernels)."""
    layout, blocks = [], []
    for block in df._mgr.blocks:
        values, places = block.values, tuple(block.mgr_locs.as_array.tolist())
        kind = _block_kind(values.dtype)
        layout.append((values.dtype, kind, places))
        if kind == "number":
            blocks.append(values[:, -1].copy())
        elif kind == "time":  # epochs: no Timestamp object (~10 us)
            epochs = values.asi8
            blocks.append(epochs[:, -1].tolist() if values.ndim == 2 else [int(epochs[-1])])
        else:
            blocks.append([values[-1]] if values.ndim == 1 else [values[k, -1] for k in range(len(places))])
    extra = extra or {}
    return NewestValues((file_schema, tuple(str(n) for n in df.columns), tuple(layout), tuple(extra)), blocks,
                        list(extra.values()))


def plain(values: NewestValues) -> bool:
    """Only numbers, times and text: rows that ``newest_table`` converts many at a time without a failure of
    one row's own (anything else goes through ``newest_row`` alone, under that symbol's guard)."""
    return all(kind != "other" for _, kind, _ in values.key[2])


class _Mixed(Exception):
    """Rows whose values do not take one Arrow type together: they are converted one at a time."""


def _times(epochs: list[int], dtype: Any, kind: pa.DataType | None, one: bool) -> pa.Array:
    """A time column's newest values, as ``pa.Table.from_pandas`` makes them (NaT is null)."""
    unit = np.datetime_data(dtype)[0] if isinstance(dtype, np.dtype) else dtype.unit
    values = np.array(epochs, np.int64)
    if kind is not None and pa.types.is_timestamp(kind) and kind.unit == unit:
        nat = values == _NAT
        return pa.array(values, pa.int64(), mask=nat if nat.any() else None).view(kind)
    tz = getattr(dtype, "tz", None)
    return _objects([pd.NaT if e == _NAT else pd.Timestamp(e, unit=unit, tz=tz) for e in epochs], kind, one)


def _objects(values: list[Any], kind: pa.DataType | None, one: bool) -> pa.Array:
    if one:
        return _one_value(values[0], kind)
    try:
        return pa.array([v.item() if isinstance(v, np.generic) else v for v in values], kind, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
        raise _Mixed from None


def newest_table(rows: Sequence[NewestValues]) -> pa.Table:
    """Rows of one ``key`` as one table, each as ``pa.Table.from_pandas`` gives a frame's last row (NaN becomes
    null) but ~10x cheaper: the file's columns keep the file's types, ``symbol`` is a large string, and the
    plugins' columns take the type of their value. ``funding_rate`` is the plugins' input, not published.

    Rows whose values take no one type together (a time that one row's file unit holds and another's does
    not) are converted one at a time, as a lone row is: the table holds what each row holds."""
    try:
        return _rows_table(rows, len(rows) == 1)
    except _Mixed:
        return pa.concat_tables([_rows_table([row], True) for row in rows], promote_options="permissive")


def _rows_table(rows: Sequence[NewestValues], one: bool) -> pa.Table:
    file_schema, names, layout, extra_names = rows[0].key
    file_types = _file_types(file_schema)
    arrays: list[pa.Array | None] = [None] * len(names)
    for b, (dtype, block_kind, places) in enumerate(layout):
        if block_kind == "number":
            n = len(rows)  # one array for the block (its columns one after another), sliced: ~1 us a column
            last = pa.array(np.array([row.blocks[b] for row in rows]).ravel(order="F"), from_pandas=True)
            for k, place in enumerate(places):
                column, kind = last.slice(k * n, n), file_types.get(names[place])
                # the file's type where every value fits it exactly; else the values' own type, which is also
                # what the rows alone become once joined (an int64 row beside a float64 one joins as float64)
                arrays[place] = column if kind is None or kind == column.type else _cast_or_keep(column, kind)
            continue
        for k, place in enumerate(places):
            name = names[place]
            kind = pa.large_string() if name == "symbol" else file_types.get(name, _arrow_type(dtype))
            values = [row.blocks[b][k] for row in rows]
            if block_kind == "time":
                arrays[place] = _times(values, dtype, kind, one)
            else:
                arrays[place] = _objects(values, kind, one)
    keep = [i for i, n in enumerate(names) if n != FUNDING_RATE]
    columns, out_names = [arrays[i] for i in keep], [names[i] for i in keep]
    if extra_names:
        extra = pa.array([value for j in range(len(extra_names)) for value in (row.extra[j] for row in rows)],
                         pa.float64(), from_pandas=True)
        columns += [extra.slice(j * len(rows), len(rows)) for j in range(len(extra_names))]
        out_names += extra_names
    return pa.Table.from_arrays(columns, names=out_names)


def newest_row(df: pd.DataFrame, file_schema: pa.Schema, extra: dict[str, float] | None = None) -> pa.Table:
    """The frame's last row as a one-row table (``newest_table`` of one frame)."""
    return newest_table([newest_values(df, file_schema, extra)])


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

    def _apply(self, df: pd.DataFrame, symbol: str) -> tuple[pd.DataFrame, dict[str, float]]:
        """Every plugin on the frame (the tail by its kernels): the frame they leave and the kernels' values."""
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
        return df, extra

    def part(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> NewestValues | pa.Table:
        """The symbol's newest values, which ``tables`` puts together with the batch's others; a frame the
        plugins left with columns of other kinds becomes its one-row table here, under the symbol's guard."""
        df, extra = self._frame(table, symbol, funding)
        values = newest_values(df, table.schema, extra)
        return values if plain(values) else newest_table([values])

    @staticmethod
    def tables(parts: Sequence[NewestValues | pa.Table], symbols: Sequence[str]) -> list[pa.Table]:
        """The rows of ``parts`` (in order) as few tables as their keys allow (``KernelRows.tables``'
        counterpart): one ``newest_table`` per run of equal keys instead of a table per symbol."""
        out: list[pa.Table] = []
        for _, run in groupby(parts, key=lambda part: part.key if isinstance(part, NewestValues) else id(part)):
            rows = list(run)
            out += rows if isinstance(rows[0], pa.Table) else [newest_table(rows)]
        return out

    def _frame(self, table: pa.Table, symbol: str, funding: Funding) -> tuple[pd.DataFrame, dict[str, float]]:
        return self._apply(candle_frame(table, symbol, funding_column(candle_begin_ms(table), funding,
                                                                      self.interval_ms)), symbol)

    def __call__(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> pa.Table:
        df, extra = self._frame(table, symbol, funding)
        return newest_row(df, table.schema, extra)

    def window_values(self, table: pa.Table, symbol: str, funding: Funding, windows: Iterable[tuple[int, int]],
                      columns: Sequence[str]) -> Iterator[list[float] | Skipped]:
        """The backtest's exact path: for each window (start, stop) of a symbol's whole history, ``columns``'
        values in the row ``self(table.slice(start, stop - start), symbol, funding)`` gives (NaN for null), or
        the Skipped it raises. The history's blocks are laid out once; each window's frame copies their rows."""
        layout = frame_layout(table.schema)
        whole = None if layout is None else \
            layout.blocks(table, symbol, funding_column(candle_begin_ms(table), funding, self.interval_ms))
        for start, stop in windows:
            try:
                if layout is None or whole is None:  # a file only Arrow's generic conversion reads
                    row = self(table.slice(start, stop - start), symbol, funding)
                    yield [_number(row[c][0].as_py()) for c in columns]
                    continue
                df, extra = self._apply(layout.frame(whole, (start, stop)), symbol)
            except Skipped as e:
                yield e
                continue
            yield [extra[c] if c in extra else _number(df[c].iat[-1]) for c in columns]


def _number(value: Any) -> float:
    """A published value as the backtest holds it: null (None, NaN, NA) is NaN."""
    return np.nan if value is None or pd.isna(value) else float(value)


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

    def part(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> KernelPart:
        """The newest row and the kernels' values; raises what a kernel raises (that symbol's error)."""
        arrays = {c: table[c].to_numpy() for c in ("close", "high", "low", "quote_volume")}
        if self.funding:
            arrays[FUNDING_RATE] = funding_column(candle_begin_ms(table), funding, self.interval_ms)
        return table.slice(table.num_rows - 1, 1), [_published_double(kernel(arrays)) for kernel in self.kernels]

    def tables(self, parts: Sequence[KernelPart], symbols: Sequence[str]) -> list[pa.Table]:
        """The rows of ``parts`` (in order) with ``symbol`` and the kernels' columns, as few tables as their
        files' schemas allow: a row whose file columns differ starts another table, which the caller
        concatenates (``promote_options="default"``) as it did one-row tables. One concat and one array per
        added column for a batch instead of a table per symbol (~50 us each); contiguous columns, so the
        published message is a record batch per table, not per row (64 rows: 11 KB and 45 us to write and
        read, against 76 KB and 0.9 ms)."""
        out: list[pa.Table] = []
        start = 0
        for stop in range(1, len(parts) + 1):
            if stop < len(parts) and parts[stop][0].schema.equals(parts[start][0].schema):
                continue
            run = parts[start:stop]
            rows = pa.concat_tables([row for row, _ in run]).combine_chunks()  # one record batch, not one a row
            added = [pa.array(symbols[start:stop], pa.large_string())]
            added += [pa.array([values[k] for _, values in run], pa.float64(), from_pandas=True)
                      for k in range(len(self.kernels))]
            out.append(pa.Table.from_arrays([*rows.columns, *added], schema=pa.schema([*rows.schema, *self._added])))
            start = stop
        return out

    def __call__(self, table: pa.Table, symbol: str, funding: Funding = NO_FUNDING) -> pa.Table:
        return self.tables([self.part(table, symbol, funding)], [symbol])[0]


KernelPart = tuple[pa.Table, list[float | None]]
"""One symbol's share of a batch on the kernel path: its newest row (a one-row table) and its kernels' values."""


def _published_double(value: Any) -> float | None:
    """A kernel's value as its double column holds it: a float as it is (NaN is null once in an array), anything
    else converted here as one value, so a value Arrow refuses fails its own symbol."""
    return value if isinstance(value, float) else pa.array([value], pa.float64(), from_pandas=True)[0].as_py()


def row_builder(calculators: Sequence[Calculator], fast: bool = True,
                interval_ms: int = HOUR_MS) -> PluginRows | KernelRows:
    """The fast kernels when every plugin has one; else the plugins, with kernels for the trailing built-ins
    when ``fast``. Returns a callable ``(table, symbol, funding) -> one-row table``."""
    return ((KernelRows.for_calculators(calculators, interval_ms) if fast else None)
            or PluginRows(calculators, interval_ms, tail_kernels=fast))


def read_shared_file(path: str, symbol: str, limit: int | None = None) -> bytes | pa.Buffer:
    """A candle file on the crawler's filesystem (the market sent only its path).

    Only ``<SYMBOL>.fea`` of the symbol named is read (a message cannot point a worker at any other
    file), and only under the size limit. A regular file is read at once (``_read_regular``); anything
    else is memory-mapped, which reads it or names what is wrong as it always did.
    """
    limit = max_file_bytes() if limit is None else limit
    name = f"{symbol}.fea"
    if os.path.basename(path) != name and Path(path).name != name:  # the plain name first: pathlib costs 2 us
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path[:300]}: not {symbol}'s candle file"))
    data = _read_regular(path, limit)
    if data is not None:
        return data
    try:
        with pa.memory_map(path) as f:
            if f.size() > limit:
                raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path}: {f.size()} bytes, over the "
                                   f"{limit / 2**20:g} MiB file size limit (ALPHABUS_MAX_FILE_MB); not read"))
            return f.read_buffer()
    except OSError as e:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{path}: cannot read ({e})")) from None


_ONE_READ = 2**30
"""Files up to this size are read in one read(2) (Linux gives at most ~2 GiB a call)."""


def _read_regular(path: str, limit: int) -> bytes | None:
    """A regular file's bytes when it is within ``limit``, in one read: ~30 us a file cheaper than mapping it
    (mmap, page faults, munmap). None for anything else: a file that is missing, over the limit or not
    regular (a FIFO is opened without blocking, then left to the memory map as before)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > min(limit, _ONE_READ):
            return None
        return os.read(fd, st.st_size)  # a file that shrank meanwhile reads short and is unreadable
    except OSError:
        return None
    finally:
        os.close(fd)


def check_size(data: bytes | memoryview | pa.Buffer, source: str, symbol: str, limit: int) -> None:
    """Candle bytes that came over the socket obey the same limit as files read by path."""
    size = memoryview(data).nbytes if not isinstance(data, pa.Buffer) else data.size
    if size > limit:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=f"{source}: {size} bytes, over the "
                           f"{limit / 2**20:g} MiB file size limit (ALPHABUS_MAX_FILE_MB)"))


def factor_row(data: bytes | memoryview | pa.Buffer, source: str, symbol: str, build: PluginRows | KernelRows,
               min_candle_num: int, closed_candle_begin: datetime, funding: Funding = NO_FUNDING) -> pa.Table:
    """The newest candle's row with every factor and filter column, as a one-row table."""
    table = usable_table(data, source, symbol, min_candle_num, closed_candle_begin)
    return build(table, symbol, funding)


