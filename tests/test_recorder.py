"""The recorder's files: its own CSV text is pandas' ``to_csv`` byte for byte; the client reads tables as Arrow."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.recorder.files import SELECT_DROP_COLUMNS, _csv_column, csv_text, history_paths, write_round
from services.recorder.service import record
from shared.client import SelectionUpdate
from shared.messages import Coverage, Header, Pick, Selection
from shared.tables import frame_to_ipc, ipc_to_frame, table_to_ipc

HK = ZoneInfo("Asia/Hong_Kong")
RUN = datetime(2024, 3, 1, 13, tzinfo=HK)
US = 10**6

FLOATS = [0.0, -0.0, 1.5, -2.25, 0.1, 1 / 3, 1e-4, 9.999e-5, 1e-5, 1.5e-300, 5e-324, 1e15, 1e16, 123456789.123,
          2.0**53, 1.7976931348623157e308, float("inf"), float("-inf"), float("nan"), None, 30698479.994905893]
TEXTS = ["SIMUSDT", "", None, "a,b", 'say "hi"', "two\nlines", "tab\there", "  spaced ", "ünïcode", "'single'"]


def _grid(rows: int, seed: int) -> dict[str, pa.Array]:
    """Every kind of column a round's tables hold, with the awkward values, ``rows`` long."""
    rng = np.random.default_rng(seed)
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), rows)]  # noqa: E731
    hours = rng.integers(0, 24 * 400, rows)
    return {
        "candle_begin_time": pa.array(hours * 3600 * US, pa.timestamp("us", tz="Asia/Hong_Kong")),
        "utc_time": pa.array(hours * 3600 * 1000, pa.timestamp("ms", tz="UTC")),
        "ny_time": pa.array(hours * 3600 * US + 1_800 * US, pa.timestamp("us", tz="America/New_York")),
        "close": pa.array(pick(FLOATS), pa.float64()),
        "random": pa.array(rng.standard_normal(rows) * 10.0 ** rng.integers(-12, 12, rows)),
        "whole": pa.array(rng.integers(-(2**62), 2**62, rows), pa.int64()),
        "small": pa.array(rng.integers(0, 100, rows), pa.int32()),
        "flag": pa.array(rng.integers(0, 2, rows).astype(bool)),
        "symbol": pa.array(pick(TEXTS), pa.large_string()),
        "position": pa.array(pick(["10.150", "0.004", "1100.000", None]), pa.string()),
        "single": pa.array(rng.standard_normal(rows).astype(np.float32)),
    }


@pytest.mark.parametrize("rows", [0, 1, 7, 200])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csv_text_is_pandas_to_csv_byte_for_byte(rows, seed):
    table = pa.table(_grid(rows, seed))
    assert all(_csv_column(c) is not None for c in table.columns), "every column here takes the fast path"
    assert csv_text(table) == table.to_pandas().to_csv(index=False)


@pytest.mark.parametrize("column", [
    pa.array([1, None, 3], pa.int64()),  # pandas makes these floats: 1.0
    pa.array([True, None, False]),
    pa.array([0, 86_400 * US, 2 * 86_400 * US], pa.timestamp("us")),  # naive midnights: pandas writes dates only
    pa.array([0, 1, None], pa.timestamp("us", tz="UTC")),  # sub-second and missing
    pa.array([0, 3600 * 10**9, 0], pa.timestamp("ns", tz="Asia/Hong_Kong")),
    pa.array([-2_208_988_800 * US, 0, 0], pa.timestamp("us", tz="Asia/Hong_Kong")),  # 1900: offset in seconds (LMT)
    pa.array(["a", "b", "a"]).dictionary_encode(),
    pa.array([Decimal("1.10"), Decimal("2"), None], pa.decimal128(10, 2)),
])
def test_csv_text_hands_other_types_to_pandas_and_matches_it(column):
    table = pa.table({"symbol": ["A", "B", "C"], "close": [1.0, 2.0, 3.0], "odd": column})
    assert _csv_column(table["odd"]) is None
    assert csv_text(table) == table.to_pandas().to_csv(index=False)


def _selection() -> Selection:
    pick = Pick(symbol="AUSDT", close=24.639, factor=0.03, filters={}, position=Decimal("10.150"), pos_val=250.1)
    return Selection(run_time=RUN, factor_column="f", long=[pick], short=[],
                     coverage=Coverage(expected=2, received=2, skipped={}, missing=[]), incomplete=False,
                     targets={"AUSDT": Decimal("10.150")}, previous_run_time=None, previous={},
                     changes={"AUSDT": Decimal("10.150")})


def _side(rows: int) -> pa.Table:
    grid = _grid(rows, 5)
    candles = {c: pa.array(np.linspace(1.0, 2.0, rows)) for c in SELECT_DROP_COLUMNS if c not in ("close_time",
                                                                                                 "trade_num")}
    return pa.table({**grid, **candles, "close_time": pa.array(range(rows), pa.int64()),
                     "trade_num": pa.array(range(rows), pa.int64())})


def test_write_round_writes_what_pandas_wrote_from_the_decoded_frames(tmp_path):
    """The files are those the recorder wrote through pandas before: same member name, same text."""
    factors, long, short = _side(200), _side(2), _side(8)
    paths = write_round(tmp_path, _selection(), factors, long, short)
    assert paths == history_paths(tmp_path, RUN)
    for name, table, drop in (("long", long, True), ("short", short, True), ("factor", factors, False)):
        frame = ipc_to_frame(table_to_ipc(table))
        if drop:
            frame = frame.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in frame.columns])
        old = tmp_path / f"old_{name}.csv.zip"
        frame.to_csv(old, index=False, compression={"method": "zip", "archive_name": paths[name].name[:-4]})
        with zipfile.ZipFile(paths[name]) as new_zip, zipfile.ZipFile(old) as old_zip:
            assert new_zip.namelist() == [paths[name].name[:-4]] == old_zip.namelist()
            assert new_zip.read(new_zip.namelist()[0]) == old_zip.read(old_zip.namelist()[0])
        pd.testing.assert_frame_equal(pd.read_csv(paths[name]), pd.read_csv(old))
    assert not any(c in pd.read_csv(paths["long"]).columns for c in SELECT_DROP_COLUMNS)


def _update(frame: pd.DataFrame) -> SelectionUpdate:
    header = Header(kind="selection", stack="s", sender="position@x", seq=1, sent_at=datetime.now(UTC))
    return SelectionUpdate(header, _selection(), tuple([frame_to_ipc(frame)] * 3))


FRAME = pd.DataFrame({"symbol": ["AUSDT", "BUSDT"], "close": [1.5, 2.5],
                      "t": pd.date_range("2024-01-01", periods=2, freq="h", tz="Asia/Hong_Kong")})


def test_selection_update_reads_arrow_at_once_and_pandas_only_when_asked():
    frame = FRAME
    update = _update(frame)
    assert [t.num_rows for t in update.tables] == [2, 2, 2]
    assert update.long_table.column_names == ["symbol", "close", "t"]
    assert "factors" not in vars(update) and "long" not in vars(update)  # no frame built yet
    pd.testing.assert_frame_equal(update.long, frame)
    assert update.factors is update.factors  # converted once


def test_the_recorder_writes_a_round_without_building_frames(tmp_path):
    update = _update(FRAME)
    record(tmp_path, update)
    assert not {"factors", "long", "short"} & set(vars(update)), "the recorder converted a table to pandas"
    assert pd.read_csv(history_paths(tmp_path, RUN)["long"])["symbol"].tolist() == ["AUSDT", "BUSDT"]
