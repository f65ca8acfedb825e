"""The plugin path's cheaper frame and row against Arrow's own conversions, and the factor pool's processes.

The frame a plugin gets must be the one ``pandas.read_feather`` gives the article (plus ``symbol`` and
``funding_rate``), the published row the one ``pa.Table.from_pandas`` made of the newest row, and a
pool's rows those of the service computing alone, whatever a pool process does (dies included).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.factor.compute import (
    FUNDING_RATE,
    HOUR_MS,
    KernelRows,
    PluginRows,
    Skipped,
    candle_begin_ms,
    candle_frame,
    frame_layout,
    funding_column,
    newest_row,
    newest_table,
    newest_values,
    plain,
    read_shared_file,
    row_builder,
)
from services.factor.pool import LOCAL_BATCH, RowPool, Task, compute_rows, default_workers
from services.market.sim import SyntheticMarket, write_hour
from shared import bus
from shared.bmac import BmacDir, max_file_bytes, read_candle_table
from shared.config import FactorSpec, FilterSpec, load_config
from shared.plugins import build_calculators
from tests.conftest import write_config
from tests.test_factors import real_candles, synthetic_candles

# Users' factor files as the article's users write them: TA-Lib, plain pandas that also leaves a helper
# column and changes a column the built-in Volume filter reads, df['symbol'], utils.diff.
USER_FACTORS = {
    "Cci": "import talib as ta\n\n\ndef signal(*args):\n    df, n, d_num, name = args\n"
           "    df[name] = ta.CCI(df['high'], df['low'], df['close'], timeperiod=n)\n    return df\n",
    "Roll": "def signal(*args):\n    df, n, d_num, name = args\n"
            "    mean = df['close'].rolling(n, min_periods=1).mean()\n    df['roll_mean'] = mean\n"
            "    df['quote_volume'] = df['quote_volume'] * 2\n"
            "    df[name] = (df['close'] - mean) / df['close'].rolling(n, min_periods=2).std()\n    return df\n",
    "Named": "def signal(*args):\n    df, n, d_num, name = args\n"
             "    df[name] = df['close'].pct_change(n) * (1 + len(df['symbol'].iat[-1]) / 100)\n    return df\n",
    "Diffed": "from utils.diff import add_diff\n\n\ndef signal(*args):\n    df, n, d_num, name = args\n"
              "    df[name] = df['close'].pct_change(n)\n    return add_diff(df, 0.5, name)\n",
}


def user_workdir(root: Path, **config) -> Path:
    (root / "factors").mkdir(parents=True, exist_ok=True)
    for name, code in USER_FACTORS.items():
        (root / "factors" / f"{name}.py").write_text(code)
    return write_config(root, root / "bmac", min_candle_num=100, **config)


def calculators(workdir: Path, factor: str, back_hour: int = 24):
    return build_calculators([FactorSpec.model_validate([factor, True, back_hour, 0, 1])],
                             [FilterSpec.model_validate(f) for f in (["ChgPctMax", 24], ["Volume", 24])], workdir)


def arrow_frame(table: pa.Table, symbol: str, rates: np.ndarray) -> pd.DataFrame:
    """The article's frame the generic way: Arrow's to_pandas, then two column inserts; names as Python strings."""
    df = table.to_pandas()
    df["symbol"] = symbol
    df[FUNDING_RATE] = rates
    df.columns = df.columns.astype(object)
    return df


def as_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)


@pytest.fixture(scope="module")
def sim_tables(tmp_path_factory) -> dict[str, pa.Table]:
    """Crawler files as the simulator writes them: microsecond zoned times, int64 and float64 columns."""
    bmac = BmacDir(tmp_path_factory.mktemp("bmac"), "1h")
    write_hour(bmac, SyntheticMarket(symbols=12, history=400), 3)
    return {s: read_candle_table(bmac.candle_path(s).read_bytes(), s) for s in sorted(bmac.candle_symbols())}


# -- the frame --------------------------------------------------------------------------------------------
def test_candle_frame_is_arrows_frame_on_crawler_files(sim_tables):
    for symbol, table in sim_tables.items():
        rates = np.linspace(0, 1e-3, table.num_rows)
        frame = candle_frame(table, symbol, rates)
        pd.testing.assert_frame_equal(frame, arrow_frame(table, symbol, rates))
        assert frame.columns.dtype == object


def test_candle_frame_is_arrows_frame_on_real_candles(real_data):
    for df in real_candles(real_data):
        table = as_table(df)
        zeros = np.zeros(table.num_rows)
        pd.testing.assert_frame_equal(candle_frame(table, "BTCUSDT", zeros), arrow_frame(table, "BTCUSDT", zeros))


@pytest.mark.parametrize("change", ["utc", "fixed_offset", "ms", "int32", "null_volume", "null_taker", "null_trades",
                                    "string", "symbol_column", "two_chunks"])
def test_candle_frame_is_arrows_frame_on_unusual_files(change):
    df = synthetic_candles(50, 1)
    table = as_table(df)
    times = table["candle_begin_time"]
    if change in ("utc", "fixed_offset", "ms"):
        kind = pa.timestamp("ms" if change == "ms" else "us", {"utc": "UTC", "fixed_offset": "+08:00"}.get(change,
                                                                                                          "Asia/Tokyo"))
        table = table.set_column(0, "candle_begin_time", times.cast(kind))
    elif change == "int32":
        table = table.append_column("trade_num", pa.array(np.arange(50, dtype=np.int32)))
    elif change == "null_volume":
        table = table.set_column(5, "volume", pa.array([None, *df["volume"].iloc[1:]], pa.float64()))
    elif change == "null_taker":  # the real data set's files: taker columns that are all null
        table = table.append_column("taker_buy_quote_asset_volume", pa.nulls(50, pa.float64()))
    elif change == "null_trades":  # an integer column with a null: Arrow makes it float, the generic way
        table = table.append_column("trade_num", pa.array([None, *range(1, 50)], pa.int64()))
    elif change == "string":
        table = table.append_column("note", pa.array(["x"] * 50))
    elif change == "symbol_column":  # a file's own symbol column is replaced where it stands, as df[...] = does
        table = table.add_column(1, "symbol", pa.array(["OLD"] * 50))
    else:
        table = pa.concat_tables([table.slice(0, 20), table.slice(20)])
    rates = np.full(50, 1e-4)
    pd.testing.assert_frame_equal(candle_frame(table, "XUSDT", rates), arrow_frame(table, "XUSDT", rates))


def test_window_frames_are_the_frames_of_the_slices_and_writes_stay_in_them(sim_tables):
    """The backtest's frames: copies of a window of the whole history's blocks, each equal to the frame of that
    slice of the file, whatever a plugin writes into one (in place included)."""
    symbol, table = next(iter(sim_tables.items()))
    rates = np.linspace(0, 1e-3, table.num_rows)
    layout = frame_layout(table.schema)
    whole = layout.blocks(table, symbol, rates)
    for start, stop in [(0, table.num_rows), (0, 37), (120, 300), (table.num_rows - 1, table.num_rows)]:
        frame = layout.frame(whole, (start, stop))
        expected = arrow_frame(table.slice(start, stop - start), symbol, rates[start:stop])
        pd.testing.assert_frame_equal(frame, expected)
        frame.loc[:, "close"] = -1.0  # in place, into the window's own block
        frame.iloc[0, 0] = pd.Timestamp("2000-01-01", tz="UTC")
        frame.loc[0, "symbol"] = "OTHER"
        frame[FUNDING_RATE] *= 2
    pd.testing.assert_frame_equal(layout.frame(whole), arrow_frame(table, symbol, rates))


# -- the row ----------------------------------------------------------------------------------------------
def from_pandas_row(df: pd.DataFrame) -> pa.Table:
    """The published row the generic way, as the service made it before."""
    row = df.iloc[[-1]].drop(columns=[FUNDING_RATE], errors="ignore")
    return pa.Table.from_pandas(row, preserve_index=False).replace_schema_metadata(None)


def test_newest_row_is_from_pandas_row_whatever_the_plugins_added(sim_tables):
    symbol, table = next(iter(sim_tables.items()))
    df = candle_frame(table, symbol, np.zeros(table.num_rows))
    df["F_bh_24"] = df["close"].pct_change(24)
    df["all_nan"] = np.nan  # must stay a double column holding null, not become a null column
    df["count"] = np.arange(len(df))
    df["flag"] = df["close"] > df["open"]
    df["label"] = "up"
    df["high"] = df["high"] * 2  # a plugin that changes a file column: the row shows the changed value
    df["trade_num"] = df["trade_num"] / 2  # ... or its type: the row says what it holds
    df["close_time"] = df["close_time"].astype(np.int32)  # ... a type its values fit: the file's type
    expected = from_pandas_row(df)
    row = newest_row(df, table.schema)
    assert row.schema.names == expected.schema.names
    for name in expected.schema.names:
        assert row[name].to_pylist() == expected[name].to_pylist(), name
        if name != "label":  # a plugin's text column is a string either way; symbol is large_string as before
            kind = table.schema.field(name).type if name == "close_time" else expected.schema.field(name).type
            assert row.schema.field(name).type == kind, name


def _mutated_frames(sim_tables) -> list[tuple[pd.DataFrame, pa.Schema, dict[str, float]]]:
    """Frames as plugins leave them, in a batch's order: runs that share a layout, and odd ones between."""
    out = []
    for i, (symbol, table) in enumerate(list(sim_tables.items())[:12]):
        df = candle_frame(table, symbol, np.zeros(table.num_rows))
        df["F_bh_24"] = df["close"].pct_change(24) if i % 5 else np.nan  # an all-NaN value now and then
        df["label"] = "up" if i != 5 else None  # text; and objects (all None), which are not plain
        if i in (3, 4):  # text in a number column: no double, so each row says what it holds, alone
            df["volume"] = "heavy"
        if i == 5:
            df["trade_num"] = df["trade_num"] + 0.25  # no longer the file's integers: the row says what it holds
        if i == 6:
            df.loc[len(df) - 1, "candle_begin_time"] = pd.NaT
        if i == 7:
            df["candle_begin_time"] = df["candle_begin_time"].dt.tz_convert("America/New_York")
        if i == 8:
            df["odd"] = pd.Series([{"a": 1}] * len(df), dtype=object)  # not plain: its row is made alone
        out.append((df, table.schema, {"K": float(i) if i != 2 else np.nan}))
    return out


def test_a_batch_of_rows_is_each_frame_own_row(sim_tables):
    """``PluginRows.tables`` puts a batch's rows into few tables; joined, they hold exactly what each frame's
    own ``newest_row`` holds: values, nulls and types, rows that take no common type included."""
    frames = _mutated_frames(sim_tables)
    parts = [newest_values(df, schema, extra) for df, schema, extra in frames]
    parts = [p if plain(p) else newest_table([p]) for p in parts]
    assert not plain(newest_values(*frames[8][:2]))
    tables = PluginRows.tables(parts, [str(df["symbol"].iat[-1]) for df, _, _ in frames])
    assert [t.num_rows for t in tables] == [3, 2, 1, 1, 1, 1, 3]  # runs of one layout: 0-2, 3-4, 9-11
    alone = [newest_row(df, schema, extra) for df, schema, extra in frames]
    join = lambda ts: pa.concat_tables(ts, promote_options="permissive")  # noqa: E731
    for batched, expected in ((join([tables[0], *tables[2:]]), join([*alone[:3], *alone[5:]])),
                              (tables[1], join(alone[3:5]))):
        assert batched.schema == expected.schema
        assert batched.to_pylist() == expected.to_pylist()
    assert tables[1]["volume"].type == pa.string()  # not the file's double: text, as each row alone says
    assert tables[0]["trade_num"].type == pa.int64() and tables[2]["trade_num"].type == pa.float64()


# -- plugins and kernels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", list(USER_FACTORS))
def test_user_plugins_give_the_whole_file_result(tmp_path, sim_tables, factor):
    """Kernels for the built-in filters after a user's factor, cheaper frame and row: the same row as every
    plugin called on the Arrow library's frame (1e-9 relative for the kernels' columns, exact elsewhere)."""
    workdir = user_workdir(tmp_path)
    calcs = calculators(workdir, factor)
    build = row_builder(calcs)
    assert isinstance(build, PluginRows) and [c for c, _ in build.tail] == ["ChgPctMax_fl_24", "Volume_fl_24"]
    for symbol, table in sim_tables.items():
        times = candle_begin_ms(table)[::8] + HOUR_MS
        funding = (times, np.linspace(-1e-4, 3e-4, len(times)))
        df = arrow_frame(table, symbol, funding_column(candle_begin_ms(table), funding))
        for calc in calcs:
            df = calc(df)
        expected, row = from_pandas_row(df), build(table, symbol, funding)
        assert row.schema.names == expected.schema.names
        for name in expected.schema.names:
            if name in ("ChgPctMax_fl_24", "Volume_fl_24"):
                np.testing.assert_allclose(row[name].to_numpy(), expected[name].to_numpy(), rtol=1e-9, err_msg=name)
            else:
                assert row[name].to_pylist() == expected[name].to_pylist(), (symbol, name)


# -- the pool ---------------------------------------------------------------------------------------------
def test_default_workers_divides_the_cores_among_shards(monkeypatch):
    monkeypatch.delenv("ALPHABUS_FACTOR_WORKERS", raising=False)
    assert default_workers(1) >= default_workers(2) >= default_workers(10**6) == 1
    monkeypatch.setenv("ALPHABUS_FACTOR_WORKERS", "3")
    assert default_workers(2) == 3
    monkeypatch.setenv("ALPHABUS_FACTOR_WORKERS", "two")
    with pytest.raises(ValueError, match="ALPHABUS_FACTOR_WORKERS='two' is not a positive whole number"):
        default_workers(1)


def bmac_tasks(tmp_path: Path, symbols: int = 16) -> tuple[list[Task], object]:
    bmac = BmacDir(tmp_path / "bmac", "1h")
    market = SyntheticMarket(symbols=symbols, history=300)
    run_time = write_hour(bmac, market, 2)
    names = sorted(bmac.candle_symbols())
    tasks = [Task(s, str(bmac.candle_path(s)), None) for s in names[: symbols // 2]]
    tasks += [Task(s, str(bmac.candle_path(s)), bmac.candle_path(s).read_bytes()) for s in names[symbols // 2:]]
    return tasks, run_time - timedelta(hours=1)


def rows_by_symbol(rows) -> dict[str, dict]:
    table = pa.concat_tables(rows.tables) if rows.tables else None
    return {s: {k: v[0] for k, v in table.slice(i, 1).to_pydict().items()} for i, s in enumerate(rows.symbols)}


def odd_batch(tmp_path: Path) -> tuple[list[Task], object]:
    """A batch as a round may bring it: crawler files (by path and as bytes) with, among them, files of two other
    schemas (a text column, an int32 column), a stale file, garbage, a wrong name, a missing file, a large one."""
    tasks, closed_begin = bmac_tasks(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    base = pd.read_feather(tasks[0].source)
    frames = {"NOTEUSDT": base.assign(note="x"), "WIDEUSDT": base.assign(wide=np.arange(len(base), dtype=np.int32)),
              "STALEUSDT": base.iloc[:-1], "BIGUSDT": pd.concat([base] * 40, ignore_index=True)}
    for name, df in frames.items():
        df.to_feather(odd / f"{name}.fea")
    (odd / "JUNKUSDT.fea").write_bytes(b"\x00garbage" * 50)
    extra = [Task(n, str(odd / f"{n}.fea"), None) for n in ("NOTEUSDT", "STALEUSDT", "JUNKUSDT", "BIGUSDT")]
    extra += [Task("WIDEUSDT", "WIDEUSDT", (odd / "WIDEUSDT.fea").read_bytes()), Task("NOTEUSDT", str(odd), None),
              Task("GONEUSDT", str(odd / "GONEUSDT.fea"), None), Task("XUSDT", tasks[1].source, None)]
    return [*tasks[:3], extra[0], extra[0], *tasks[3:6], *extra[1:], *tasks[6:]], closed_begin


def test_a_batch_on_the_kernel_path_gives_each_symbols_plugin_row_and_skip(tmp_path):
    """compute_rows puts a batch's kernel rows together at once (a table per run of one file schema): the rows,
    in order, and the skips the plugin path gives symbol by symbol (1e-9 relative for the kernels' columns),
    and exactly what the kernel path gives one symbol at a time."""
    tasks, closed_begin = odd_batch(tmp_path)
    workdir = write_config(tmp_path / "work", tmp_path / "bmac", min_candle_num=100)
    cfg = load_config(workdir)
    calcs = build_calculators(cfg.factor_specs, cfg.all_filters, workdir)
    kernel_rows, plugin_rows = row_builder(calcs), row_builder(calcs, fast=False)
    assert isinstance(kernel_rows, KernelRows) and isinstance(plugin_rows, PluginRows)
    limit = os.path.getsize(tmp_path / "odd" / "BIGUSDT.fea") - 1  # every other file is far smaller
    batch = compute_rows(tasks, kernel_rows, cfg.min_candle_num, closed_begin, limit)
    alone = [compute_rows([t], kernel_rows, cfg.min_candle_num, closed_begin, limit) for t in tasks]
    plugins = [compute_rows([t], plugin_rows, cfg.min_candle_num, closed_begin, limit) for t in tasks]
    assert batch.symbols == [s for r in plugins for s in r.symbols] == [s for r in alone for s in r.symbols]
    assert [s.model_dump() for s in batch.skipped] == [s.model_dump() for r in plugins for s in r.skipped]
    assert [s.reason for s in batch.skipped] == ["stale", "bad_data", "bad_data", "bad_data", "bad_data", "bad_data"]
    assert "over the" in batch.skipped[2].detail and "cannot read" in batch.skipped[4].detail
    assert len(batch.tables) == 5  # crawler files, the text column's two rows, crawler files, int32 column, crawler
    assert all(column.num_chunks == 1 for table in batch.tables for column in table.columns)  # a batch a table
    got = pa.concat_tables(batch.tables, promote_options="default")
    one_by_one = pa.concat_tables([t for r in alone for t in r.tables], promote_options="default")
    assert got.equals(one_by_one) and got.schema.equals(one_by_one.schema, check_metadata=True)
    expected = pa.concat_tables([t for r in plugins for t in r.tables], promote_options="default")
    assert got.schema == expected.schema and got.column_names[-2:] == ["note", "wide"]  # as one-row tables promote
    for name in expected.schema.names:
        if name in kernel_rows.columns:
            np.testing.assert_allclose(got[name].to_numpy(), expected[name].to_numpy(), rtol=1e-9, err_msg=name)
        else:
            assert got[name].to_pylist() == expected[name].to_pylist(), name


def test_read_shared_file_reads_files_and_names_the_rest_as_the_memory_map_does(tmp_path):
    """A regular file is read at once; a missing file, a directory and a file over the limit are left to the
    memory map, so their skips say what they said; a path to another symbol's file is refused."""
    good = tmp_path / "AUSDT.fea"
    good.write_bytes(b"x" * 1000)
    (tmp_path / "DIRUSDT.fea").mkdir()
    assert bytes(read_shared_file(str(good), "AUSDT", 1000)) == good.read_bytes()
    with pytest.raises(Skipped, match=r"1000 bytes, over the .* MiB file size limit"):
        read_shared_file(str(good), "AUSDT", 999)
    for name, path in [("GONEUSDT", f"{tmp_path}/GONEUSDT.fea"), ("DIRUSDT", f"{tmp_path}/DIRUSDT.fea"),
                       ("AUSDT", f"{good}/.")]:  # pathlib names the last one AUSDT.fea; opening it fails
        try:
            with pa.memory_map(path) as f:
                f.read_buffer()
        except OSError as e:
            expected = f"{path}: cannot read ({e})"
        with pytest.raises(Skipped) as caught:
            read_shared_file(path, name, 1000)
        assert caught.value.skip.reason == "bad_data" and caught.value.skip.detail == expected
    for path in (str(good), f"{good}/..", f"{tmp_path}/AUSDT.fea.gz"):
        with pytest.raises(Skipped, match="not AUSDT's candle file" if path != str(good) else "not BUSDT's"):
            read_shared_file(path, "AUSDT" if path != str(good) else "BUSDT", 1000)


FATAL = ("import os\n\n\ndef signal(*args):\n    df, n, d_num, name = args\n"
         "    if (os.environ.get('FATAL_SYMBOL') == df['symbol'].iat[-1]\n"
         "            and os.getpid() != int(os.environ['SERVICE_PID'])):\n"
         "        os._exit(3)\n"
         "    df[name] = df['close'].pct_change(n)\n    return df\n")
"""A factor that kills any process but the service's computing $FATAL_SYMBOL: shows who computed it."""


def test_a_pool_gives_the_rows_of_one_process_and_survives_its_processes_dying(tmp_path):
    """Two processes (this one and one pool process) with the users' plugins; a plugin that kills its
    process costs that process's share of the round, reported as skipped, and a replacement serves the next."""
    (tmp_path / "factors").mkdir()
    (tmp_path / "factors" / "Fatal.py").write_text(FATAL)
    tasks, closed_begin = bmac_tasks(tmp_path)
    three = [["Roll", True, 24, 0, 1], ["Named", False, 12, 0, 1], ["Diffed", True, 6, 0, 1]]
    for factor in (three, ["Fatal", True, 24, 0, 1]):
        workdir = user_workdir(tmp_path, factor=factor, long_num=0.1, short_num=0.1)
        cfg = load_config(workdir)
        build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir))
        alone = compute_rows(tasks, build, cfg.min_candle_num, closed_begin, max_file_bytes())
        assert len(alone.symbols) == len(tasks) and not alone.skipped
        if factor is three:
            pool = RowPool(cfg, workdir, build, 2, True, HOUR_MS, max_file_bytes())
            try:
                assert pool.wait_started(120)
                pooled = pool.compute(tasks, closed_begin)
                assert {pool.share(s) for s in pooled.symbols} == {0, 1}  # both processes computed some
                assert rows_by_symbol(pooled) == rows_by_symbol(alone) and not pooled.skipped
                assert {"roll_mean", "Named_bh_12", "Diffed_bh_6"} <= set(pooled.tables[0].column_names)
            finally:
                pool.close()
    # Fatal: the pool process dies on one of its symbols; the service process computes the same symbol fine
    pool = RowPool(cfg, workdir, build, 2, True, HOUR_MS, max_file_bytes())
    try:
        victim = next(t.symbol for t in tasks if pool.share(t.symbol) == 1)
        os.environ["SERVICE_PID"] = str(os.getpid())
        os.environ["FATAL_SYMBOL"] = victim
        pool._replace(pool.procs[0])  # a process started after the variables are set, so it sees them
        assert pool.wait_started(120)
        dying = pool.compute(tasks, closed_begin)
        lost = {t.symbol for t in tasks if pool.share(t.symbol) == 1}
        assert {s.symbol for s in dying.skipped} == lost and all("died" in s.detail for s in dying.skipped)
        assert set(dying.symbols) == {t.symbol for t in tasks} - lost
        assert rows_by_symbol(dying) == {s: r for s, r in rows_by_symbol(alone).items() if s not in lost}
        del os.environ["FATAL_SYMBOL"]
        pool._replace(pool.procs[0])
        assert pool.wait_started(120)
        pool.procs[0].process.kill()  # killed between rounds: its share is computed here, and it is replaced
        pool.procs[0].process.join()
        killed = pool.compute(tasks, closed_begin)
        assert rows_by_symbol(killed) == rows_by_symbol(alone) and not killed.skipped
        after = pool.compute(tasks, closed_begin)
        assert rows_by_symbol(after) == rows_by_symbol(alone) and not after.skipped
        assert pool.restarts == 4
    finally:
        os.environ.pop("FATAL_SYMBOL", None)
        os.environ.pop("SERVICE_PID", None)
        pool.close()
    assert all(not p.process.is_alive() for p in pool.procs)


def test_a_live_trickle_is_computed_in_the_service_process_and_bigger_batches_by_the_pool(tmp_path, monkeypatch):
    """A batch of one or two symbols (live candles arriving apart) skips the pool process's round trip, whatever
    their hashes; a bigger batch is split by hash as before (the pool process dies on its symbol: only then)."""
    (tmp_path / "factors").mkdir()
    (tmp_path / "factors" / "Fatal.py").write_text(FATAL)
    tasks, closed_begin = bmac_tasks(tmp_path)
    workdir = user_workdir(tmp_path, factor=["Fatal", True, 24, 0, 1], long_num=0.1, short_num=0.1)
    cfg = load_config(workdir)
    build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir))
    victim = next(t for t in tasks if bus.bucket_of(t.symbol) % 2 == 1)
    others = [t for t in tasks if t is not victim]
    monkeypatch.setenv("SERVICE_PID", str(os.getpid()))
    monkeypatch.setenv("FATAL_SYMBOL", victim.symbol)
    pool = RowPool(cfg, workdir, build, 2, True, HOUR_MS, max_file_bytes())
    try:
        assert pool.wait_started(120) and pool.share(victim.symbol) == 1
        for batch in ([victim], [others[0], victim]):
            assert len(batch) <= LOCAL_BATCH
            rows = pool.compute(batch, closed_begin)
            alone = compute_rows(batch, build, cfg.min_candle_num, closed_begin, max_file_bytes())
            assert rows.symbols == [t.symbol for t in batch] and not rows.skipped
            assert rows_by_symbol(rows) == rows_by_symbol(alone)
        assert pool.restarts == 0 and pool.procs[0].process.is_alive()
        bigger = pool.compute([victim, *others[:LOCAL_BATCH]], closed_begin)
        assert [s.symbol for s in bigger.skipped] == [victim.symbol] and "died" in bigger.skipped[0].detail
        assert bigger.symbols == [t.symbol for t in others[:LOCAL_BATCH]] and pool.restarts == 1
    finally:
        pool.close()


@pytest.mark.parametrize("newest", ["nat", "ns", "other_zone"])
def test_newest_row_reads_times_as_from_pandas_does(sim_tables, newest):
    symbol, table = next(iter(sim_tables.items()))
    df = candle_frame(table, symbol, np.zeros(table.num_rows))
    if newest == "nat":
        df.loc[len(df) - 1, "candle_begin_time"] = pd.NaT
    elif newest == "ns":
        df["candle_begin_time"] = df["candle_begin_time"].dt.as_unit("ns")
    else:
        df["candle_begin_time"] = df["candle_begin_time"].dt.tz_convert("America/New_York")
    expected, row = from_pandas_row(df), newest_row(df, table.schema)
    assert row["candle_begin_time"].to_pylist() == expected["candle_begin_time"].to_pylist()
    assert row.schema.field("candle_begin_time").type == table.schema.field("candle_begin_time").type


@pytest.mark.parametrize("file", ["crawler", "null_taker", "string_column"])
@pytest.mark.parametrize("factor", [*USER_FACTORS, "Failing"])
def test_window_values_are_the_live_rows_of_each_slice(tmp_path, sim_tables, factor, file):
    """The backtest's exact path gives, for every window, exactly the values the live builder's row holds for
    that slice of the file (or the same skip), for every user plugin and for a file the generic way reads."""
    workdir = user_workdir(tmp_path)
    (workdir / "factors" / "Failing.py").write_text(
        "def signal(*args):\n    df, n, d_num, name = args\n"
        "    if len(df) % 7 == 0:\n        raise ValueError('seven')\n"
        "    df[name] = df['close'].diff(n)\n    return df\n")
    calcs = calculators(workdir, factor)
    build = PluginRows(calcs, tail_kernels=True)
    columns = [c.column for c in calcs]
    symbol, table = list(sim_tables.items())[1]
    if file == "null_taker":
        table = table.set_column(table.schema.get_field_index("taker_buy_quote_asset_volume"),
                                 "taker_buy_quote_asset_volume", pa.nulls(table.num_rows, pa.float64()))
    elif file == "string_column":
        table = table.append_column("note", pa.array(["x"] * table.num_rows))
    assert (frame_layout(table.schema) is None) == (file == "string_column")
    times = candle_begin_ms(table)[::5] + HOUR_MS
    funding = (times, np.linspace(-1e-4, 3e-4, len(times)))
    windows = [(max(0, t - 99), t + 1) for t in range(60, table.num_rows, 9)]
    skips = 0
    for (start, stop), got in zip(windows, build.window_values(table, symbol, funding, windows, columns),
                                  strict=True):
        try:
            row = build(table.slice(start, stop - start), symbol, funding)
        except Skipped as e:
            assert isinstance(got, Skipped) and str(got) == str(e)
            skips += 1
            continue
        expected = [np.nan if v is None else v for v in (row[c][0].as_py() for c in columns)]
        np.testing.assert_array_equal(got, expected, err_msg=str((start, stop)))
    assert (skips > 0) == (factor == "Failing")


def test_rows_whose_columns_cannot_join_are_skipped_by_name_and_the_batch_goes_on(tmp_path):
    """An int64 close beside float64 ones joins as float64 (pandas' concat does the same); a column that is text
    in one file and a number in another cannot join: that file's symbol is skipped as bad_data naming the
    column, and the others' rows stay in order (a combine that raised stopped the whole batch, and the service)."""
    tasks, closed_begin = bmac_tasks(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    base = pd.read_feather(tasks[0].source)
    frames = {"INTUSDT": base.assign(close=(base["close"] * 1000).round().astype("int64"), note=1.5),
              "TEXTUSDT": base.assign(note="x")}
    for name, df in frames.items():
        df.to_feather(odd / f"{name}.fea")
    batch = [*tasks[:4], *(Task(n, str(odd / f"{n}.fea"), None) for n in frames), *tasks[4:8]]
    workdir = write_config(tmp_path / "work", tmp_path / "bmac", min_candle_num=100)
    cfg = load_config(workdir)
    build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir))
    rows = compute_rows(batch, build, cfg.min_candle_num, closed_begin, max_file_bytes())
    table = rows.combined()
    assert table is not None and table.num_rows == len(rows.symbols) == len(batch) - 1
    assert [s.symbol for s in rows.skipped] == ["TEXTUSDT"] and rows.skipped[0].reason == "bad_data"
    assert "note" in rows.skipped[0].detail
    assert table.schema.field("close").type == pa.float64() and table.schema.field("note").type == pa.float64()
    got = dict(zip(rows.symbols, table["close"].to_pylist(), strict=True))
    assert got["INTUSDT"] == float(frames["INTUSDT"]["close"].iloc[-1])
    for task in tasks[:8]:  # every crawler file's row is its own
        assert got[task.symbol] == pd.read_feather(task.source)["close"].iloc[-1]
