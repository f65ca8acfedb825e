"""The live path's cheaper steps give what the plain ones gave (issue 10).

- ``IpcTables`` reads a stream of one-schema tables as ``ipc_to_table`` does, sharing one schema object;
  anything unusual is read the plain way, and garbage still raises.
- ``TableCheck`` remembers what a schema's columns are, but checks every table's values.
- ``build_selection`` builds the published sides in Arrow: the client gets the frames the pandas
  round trip gave (every received column, then the strategy's, position as exact text).
- The market wakes the moment the crawler writes a round marker, not at its next poll.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest

from services.market.feeds import DirectoryFeed
from services.market.sim import SyntheticMarket
from services.position.checks import BadResults, TableCheck
from services.position.rounds import RoundState, build_selection
from services.recorder.files import SELECT_DROP_COLUMNS
from shared.bmac import BmacDir, lot_sizes
from shared.config import parse_config
from shared.messages import FactorResults, RoundOpen, SymbolSpec
from shared.tables import IpcTables, frame_to_ipc, ipc_to_frame, ipc_to_table, table_to_ipc
from tests.reference import article_config

FACTOR, FILTERS = "MtmAtrMean_bh_120", ["ChgPctMax_fl_24", "Volume_fl_24"]
NUMERIC = [FACTOR, *FILTERS]


def _row(symbol: str, close: float, **extra) -> pa.Table:
    when = pa.array([datetime(2025, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="Asia/Hong_Kong"))
    return pa.table({"candle_begin_time": when, "close": [close], "symbol": pa.array([symbol], pa.large_string()),
                     **{c: [1.5] for c in NUMERIC}, **extra})


def test_ipc_tables_read_what_ipc_to_table_reads_and_share_one_schema():
    read = IpcTables()
    tables = [read(table_to_ipc(_row(f"S{i}USDT", 1.0 + i))) for i in range(5)]
    for i, table in enumerate(tables):
        assert table.equals(ipc_to_table(table_to_ipc(_row(f"S{i}USDT", 1.0 + i))))
    assert len(read._schemas) == 1  # one schema decoded for all five, so comparing them is free
    other = read(table_to_ipc(_row("XUSDT", 2.0, extra=[7])))  # a new schema is decoded, not confused
    assert other.column_names[-1] == "extra" and other["extra"].to_pylist() == [7] and len(read._schemas) == 2


def test_ipc_tables_read_dictionaries_the_plain_way_and_refuse_garbage():
    read = IpcTables()
    coded = _row("AUSDT", 1.0).set_column(2, "symbol", pa.array(["AUSDT"]).dictionary_encode())
    assert read(table_to_ipc(coded)).equals(ipc_to_table(table_to_ipc(coded)))
    good = table_to_ipc(_row("AUSDT", 1.0)).to_pybytes()
    read(good)
    cuts = [good[:n] for n in range(0, len(good), 8)] + [b"\xff" * 64, good[:200] + bytes(len(good) - 200)]
    for data in cuts:  # whatever the plain reader refuses, this refuses; whatever it reads, this reads alike
        try:
            plain = ipc_to_table(data)
        except Exception:  # Arrow raises several types; the position service turns each into one log line
            with pytest.raises(Exception):  # noqa: B017
                read(data)
        else:
            assert read(data).equals(plain)


def test_table_check_remembers_columns_but_checks_every_row():
    check = TableCheck(NUMERIC)
    first = check(_row("AUSDT", 2.0).replace_schema_metadata({"pandas": "{}"}), ["AUSDT"])
    assert first.schema.metadata is None and first.schema.field("symbol").type == pa.large_string()
    with pytest.raises(BadResults, match="close"):  # same schema, remembered: the values are still checked
        check(_row("BUSDT", float("nan")), ["BUSDT"])
    with pytest.raises(BadResults, match="row 0"):
        check(_row("BUSDT", 2.0), ["CUSDT"])
    narrow = _row("AUSDT", 2.0).set_column(2, "symbol", pa.array(["AUSDT"], pa.string()))
    assert check(narrow, ["AUSDT"]).schema.field("symbol").type == pa.large_string()
    no_factor = _row("AUSDT", 2.0).drop_columns([FACTOR])
    for _ in range(2):  # a remembered bad schema is refused again, with the same sentence
        with pytest.raises(BadResults, match=f"missing column.*{FACTOR}"):
            check(no_factor, ["AUSDT"])
    with pytest.raises(BadResults, match="not a number"):
        check(_row("AUSDT", 2.0).set_column(3, FACTOR, pa.array(["x"])), ["AUSDT"])
    huge = _row("AUSDT", 2.0).set_column(1, "close", pa.array([2**62 + 1]))  # no float holds it: refused, not raised
    with pytest.raises(BadResults, match="cannot be read"):
        check(huge, ["AUSDT"])


def _gathered_round(symbols: int) -> tuple[RoundState, object]:
    cfg = parse_config(article_config("/nonexistent"))
    market = SyntheticMarket(symbols=symbols, seed=5, history=30)
    run_time = market.run_time(0)
    exginfo = market.exginfo()
    sizes = lot_sizes(exginfo)
    state = RoundState(open=RoundOpen(run_time=run_time, interval="1h", expire_sec=30, funding={},
                                      symbols=[SymbolSpec(symbol=s, face_value=sizes[s]) for s in exginfo["symbol"]]))
    for i, (symbol, frame) in enumerate(sorted(market.candles(0).items())):
        row = pa.Table.from_pandas(frame.iloc[[-1]].assign(symbol=symbol), preserve_index=False)
        values = pa.table({FACTOR: [0.01 * ((i * 7) % 13)], FILTERS[0]: [0.05], FILTERS[1]: [1000.0 + i]})
        row = pa.Table.from_arrays([*row.columns, *values.columns], names=[*row.column_names, *values.column_names])
        state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=[symbol], last_ready_at=None),
                          TableCheck(cfg.columns)(row, [symbol]))
    return state, cfg


def test_published_sides_are_the_frames_the_pandas_round_trip_gave():
    state, cfg = _gathered_round(40)
    built = build_selection(cfg, state, flag_incomplete=True)
    received = state.factor_table().to_pandas()
    for side, table in (("long", built.long_table), ("short", built.short_table)):
        picks = getattr(built.selection, side)
        assert picks, f"no {side} picks to compare"
        got = ipc_to_frame(table_to_ipc(table))
        rows = received.set_index("symbol").loc[[p.symbol for p in picks]].reset_index()
        expected = rows[received.columns].assign(Volume_fl_24_rank=got["Volume_fl_24_rank"].to_numpy(),
                                                 position=[str(p.position) for p in picks],
                                                 pos_val=[p.pos_val for p in picks])
        via_pandas = ipc_to_frame(frame_to_ipc(expected))
        pd.testing.assert_frame_equal(got, via_pandas, check_dtype=False)
        assert got.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in got]).to_csv(index=False) == \
            via_pandas.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in via_pandas]).to_csv(index=False)
        assert [Decimal(v) for v in got["position"]] == [p.position for p in picks]


def test_market_wakes_when_the_crawler_writes_a_round_marker(tmp_path):
    """pump() returns as the marker appears, long before its timeout; the ready marker is then seen."""
    import zmq

    from services.market.service import Market
    from shared.service import StopFlag

    bmac = BmacDir(tmp_path / "bmac", "1h")
    bmac.exginfo_dir.mkdir(parents=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.bind("inproc://hotpath-market")
    try:
        market = Market(parse_config(article_config(str(bmac.root))), sock, StopFlag(), 0.0)
        assert isinstance(market.feed, DirectoryFeed)
        run_time = datetime(2025, 1, 1, 9, tzinfo=UTC) + timedelta(hours=1)
        marker = bmac.exginfo_ready(run_time)
        market.pump(0)  # the watch starts with the first pump
        writer = threading.Timer(0.2, lambda: marker.write_text("now"))
        writer.start()
        began = time.monotonic()
        market.pump(20_000)
        waited = time.monotonic() - began
        writer.join()
        assert marker.exists() and waited < 10, f"pump waited {waited:.1f}s for a marker written after 0.2s"
    finally:
        sock.close(linger=0)
        ctx.term()
