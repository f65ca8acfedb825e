"""alphabus sim: the crawler's exact on-disk format, reproducible synthetic hours, the real-data replay."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from filters import ChgPctMax
from services.market.sim import ReplayMarket, SyntheticMarket, run, write_hour
from shared.bmac import CANDLE_COLUMNS, EXGINFO_COLUMNS, BmacDir
from shared.clock import ready_stamp

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "binance_usdm_1h"
HK = ZoneInfo("Asia/Hong_Kong")
HOUR = timedelta(hours=1)
DECIMALS = ("price_tick", "face_value", "min_notional_value")
FLOATS = [c for c in CANDLE_COLUMNS if c not in ("candle_begin_time", "close_time", "trade_num")]


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket()


@pytest.fixture(scope="module")
def replay() -> ReplayMarket:
    if not DATA.is_dir():
        pytest.skip(f"the real data set {DATA} is absent (see ../shared/data/README.md; CI has it)")
    return ReplayMarket(DATA)


def check_candles(df: pd.DataFrame, run_time: datetime) -> None:
    """The crawler's schema and the invariants every reader relies on."""
    assert tuple(df.columns) == CANDLE_COLUMNS
    assert df["candle_begin_time"].dtype == pd.DatetimeTZDtype("us", "Asia/Hong_Kong")
    assert all(df[c].dtype == np.float64 for c in FLOATS)
    assert df["close_time"].dtype == np.int64 and df["trade_num"].dtype == np.int64
    begin = df["candle_begin_time"]
    assert begin.iloc[-1] == run_time - HOUR  # the candle that just closed
    assert (begin.diff().iloc[1:] == HOUR).all()  # increasing, hourly, no duplicates
    assert (df["close_time"] == begin.astype("int64") // 1000 + 3_599_999).all()
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    assert (df["close"] > 0).all()


def check_exginfo_file(path: Path) -> pd.DataFrame:
    """decimal128 columns of one fixed scale that read back as Decimal, as the crawler writes them."""
    schema = feather.read_table(path).schema
    exginfo = pd.read_feather(path)
    assert tuple(exginfo.columns) == EXGINFO_COLUMNS
    for column in DECIMALS:
        assert pa.types.is_decimal(schema.field(column).type)
        values = exginfo[column].tolist()
        assert all(isinstance(v, Decimal) for v in values)
        assert len({v.as_tuple().exponent for v in values}) == 1
        assert schema.field(column).type.scale == -values[0].as_tuple().exponent
    return exginfo


def assert_frames_equal(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert list(a) == list(b)
    for symbol in a:
        pd.testing.assert_frame_equal(a[symbol], b[symbol])


# -- synthetic market ---------------------------------------------------------------------------------
def test_written_files_are_the_crawlers_format(tmp_path, market):
    bmac = BmacDir(tmp_path, "1h")
    run_time = write_hour(bmac, market, 0)
    assert run_time == datetime(2024, 1, 1, tzinfo=HK)
    assert {p.name for p in bmac.exginfo_dir.glob("*.ready")} == {
        "exginfo_20240101_000000.ready", "funding_20240101_000000.ready"}
    assert {p.name for p in bmac.candle_dir.glob("*.ready")} == {
        f"{s}_20240101_000000.ready" for s in market.symbols}
    for symbol in market.symbols:
        check_candles(pd.read_feather(bmac.candle_path(symbol)), run_time)

    exginfo = check_exginfo_file(bmac.exginfo_dir / "exginfo.fea")
    assert exginfo["symbol"].tolist() == market.symbols
    assert set(exginfo["contract_type"]) == {"PERPETUAL"} and set(exginfo["status"]) == {"TRADING"}
    assert (exginfo["base_asset"] + "USDT").tolist() == market.symbols
    lots = dict(zip(exginfo["symbol"], exginfo["face_value"], strict=True))
    assert lots["BTCUSDT"] == Decimal("0.001") and str(lots["BTCUSDT"]) == "0.001"
    assert {Decimal("0.001"), Decimal("100")} <= set(lots.values())  # BTC-like to tiny prices

    funding = pd.read_feather(bmac.exginfo_dir / "funding.fea")
    assert list(funding.columns) == ["symbol", "fundingRate", "time"]
    assert funding["fundingRate"].dtype == np.float64 and (funding["fundingRate"].abs() < 0.001).all()
    assert isinstance(funding["time"].dtype, pd.DatetimeTZDtype) and (funding["time"] == run_time).all()
    assert funding["symbol"].tolist() == market.symbols


def test_prices_and_volumes_look_like_a_market(market):
    frames = market.candles(0)
    closes = np.array([df["close"].iloc[-1] for df in frames.values()])
    volumes = np.array([df["quote_volume"].median() for df in frames.values()])
    assert closes.min() < 0.01 and closes.max() > 10_000
    assert volumes.max() / volumes.min() > 100
    for df in frames.values():
        assert (df["open"].iloc[1:].to_numpy() == df["close"].iloc[:-1].to_numpy()).all()
        assert (df["taker_buy_base_asset_volume"] < df["volume"]).all() and (df["trade_num"] >= 1).all()
        typical = (df["high"] + df["low"] + df["close"]) / 3
        np.testing.assert_allclose(df["quote_volume"], df["volume"] * typical, rtol=1e-9)


def test_same_seed_gives_the_same_hours_in_any_order(market):
    other = SyntheticMarket(seed=7)
    late = other.candles(5)
    far = other.candles(1200)  # moves other's window past the first blocks
    assert_frames_equal(other.candles(0), market.candles(0))
    assert_frames_equal(late, market.candles(5))
    assert_frames_equal(far, SyntheticMarket(seed=7).candles(1200))
    pd.testing.assert_frame_equal(other.funding(5), market.funding(5))
    different = SyntheticMarket(seed=8).candles(0)["SIM005USDT"]["close"]
    assert not different.equals(market.candles(0)["SIM005USDT"]["close"])


def test_another_process_rebuilds_hour_k(tmp_path, market):
    code = ("import sys; from services.market.sim import SyntheticMarket, write_hour; "
            "from shared.bmac import BmacDir; write_hour(BmacDir(sys.argv[1], '1h'), SyntheticMarket(), 5)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO, timeout=60)
    bmac = BmacDir(tmp_path, "1h")
    for symbol, df in market.candles(5).items():
        pd.testing.assert_frame_equal(pd.read_feather(bmac.candle_path(symbol)), df)
    pd.testing.assert_frame_equal(bmac.read_exginfo(), market.exginfo())
    pd.testing.assert_frame_equal(bmac.read_funding(), market.funding(5))


@pytest.mark.parametrize("k", [0, 3])  # 0 -> 1 crosses a generated block's boundary
def test_history_never_changes(market, k):
    before, after = market.candles(k), market.candles(k + 1)
    for symbol, old in before.items():
        new = after[symbol]
        kept = old.iloc[1:] if len(old) == market.history else old  # a young listing grows instead
        assert len(new) == len(kept) + 1
        pd.testing.assert_frame_equal(new.iloc[:-1].reset_index(drop=True), kept.reset_index(drop=True))


def test_young_listings_and_pumps_at_hour_zero(market):
    frames = market.candles(0)
    rows = {s: len(df) for s, df in frames.items()}
    young = sorted((n, s) for s, n in rows.items() if n < 999)
    assert 0 < len(young) <= len(rows) // 5
    assert all(n == market.history for n in rows.values() if n >= 999)
    youngest_rows, youngest = young[0]
    assert len(market.candles(999 - youngest_rows)[youngest]) == 999  # crosses min_candle_num later

    column = "ChgPctMax_fl_24"
    pumped = [s for s, df in frames.items() if ChgPctMax.signal(df, 24, column)[column].iloc[-1] > 0.2]
    assert 0 < len(pumped) < len(frames) // 4


def test_start_must_be_an_aware_hour():
    with pytest.raises(ValueError, match="timezone-aware"):
        SyntheticMarket(start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="hour boundary"):
        SyntheticMarket(start=datetime(2024, 1, 1, 0, 30, tzinfo=HK))


# -- writing ------------------------------------------------------------------------------------------
class RecordingBmac(BmacDir):
    """Records the order of candle writes and checks exginfo and funding were ready before any."""

    def __init__(self, root: Path):
        super().__init__(root, "1h")
        self.order: list[str] = []

    def write_candles(self, symbol, df, run_time, previous=None):
        assert self.exginfo_ready(run_time).exists() and self.funding_ready(run_time).exists()
        self.order.append(symbol)
        super().write_candles(symbol, df, run_time, previous)


def test_write_hour_replaces_markers_and_spreads_symbols(tmp_path):
    market = SyntheticMarket(symbols=8, history=48)
    bmac = RecordingBmac(tmp_path)
    write_hour(bmac, market, 0)
    assert bmac.order == sorted(market.symbols)
    before = pd.read_feather(bmac.candle_path("BTCUSDT"))

    bmac.order.clear()
    started = time.monotonic()
    run_time = write_hour(bmac, market, 1, spread_sec=0.2, order_seed=3)
    assert time.monotonic() - started >= 0.2 * 7 / 8
    assert sorted(bmac.order) == sorted(market.symbols) and bmac.order != sorted(market.symbols)
    stamp = ready_stamp(run_time)
    markers = {f"{s}_{stamp}.ready" for s in market.symbols}
    assert {p.name for p in bmac.candle_dir.glob("*.ready")} == markers
    expected = {f"{name}_{stamp}.ready" for name in ("exginfo", "funding")}
    assert {p.name for p in bmac.exginfo_dir.glob("*.ready")} == expected
    after = pd.read_feather(bmac.candle_path("BTCUSDT"))
    pd.testing.assert_frame_equal(after.iloc[:-1].reset_index(drop=True),
                                  before.iloc[1:].reset_index(drop=True))


def test_run_writes_hours_on_an_accelerated_clock(tmp_path, caplog):
    bmac = BmacDir(tmp_path, "1h")
    bmac.candle_dir.mkdir(parents=True)
    stale = bmac.candle_dir / "OLDUSDT_20240101_050000.ready"
    stale.write_text("a previous sim's marker")
    caplog.set_level(logging.INFO, logger="sim")
    started = time.monotonic()
    assert run(tmp_path, symbols=6, history=48, hours=3, hour_seconds=0.2, spread_sec=0.05) == 0
    assert time.monotonic() - started >= 0.4
    assert not stale.exists()
    market = SyntheticMarket(symbols=6, history=48)
    assert bmac.ready_candles(market.run_time(2)) == set(market.symbols)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sim hour")]
    assert len(lines) == 3
    assert lines[1].startswith("sim hour 2024-01-01T01:00:00+08:00: wrote 6 symbols in ")


def test_run_stops_when_asked(tmp_path):
    bmac = BmacDir(tmp_path, "1h")
    stop_at = ready_stamp(SyntheticMarket().run_time(1))
    assert run(tmp_path, symbols=4, history=24, hour_seconds=0.01, spread_sec=0,
               stop=lambda: bmac.latest_exginfo_stamp() == stop_at) == 0
    assert bmac.latest_exginfo_stamp() == stop_at


# -- replay of real data ------------------------------------------------------------------------------
def test_replay_hour_zero(replay):
    run_time = replay.run_time(0)
    frames = replay.candles(0)
    assert len(frames) == 98 and "ICPUSDT" in frames  # candles without rules: written, the market says so
    assert replay.untraded == {"PUMPUSDT": "SETTLING", "SOMIUSDT": "SETTLING"}  # the crawler does not fetch them
    assert not set(replay.untraded) & set(frames) and not set(replay.untraded) & set(replay.symbols)
    for df in frames.values():
        assert len(df) == replay.history
        check_candles(df, run_time)
        assert df[["taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]].isna().all().all()
    source = pd.read_parquet(DATA / ReplayMarket.CANDLES, filters=[("symbol", "==", "BTCUSDT")])
    row = source[source["timestamp"] == int((run_time - HOUR).timestamp() * 1000)].iloc[0]
    btc = frames["BTCUSDT"].iloc[-1]
    assert (btc["close"], btc["quote_volume"]) == (row["close"], row["quote_volume"])
    assert btc["trade_num"] == row["trades"]
    assert btc["close_time"] == row["close_time"]


def test_replay_runs_to_the_end_of_the_data(replay):
    assert replay.hours == 4497 - replay.history + 1
    last = replay.run_time(replay.hours - 1)
    check_candles(replay.candles(replay.hours - 1)["BTCUSDT"], last)
    with pytest.raises(IndexError):
        replay.run_time(replay.hours)


def test_replay_exginfo_is_the_exchanges_rules(tmp_path, replay):
    bmac = BmacDir(tmp_path, "1h")
    run_time = write_hour(bmac, ReplayMarket(DATA, history=24, first_hour=24), 0)
    exginfo = check_exginfo_file(bmac.exginfo_dir / "exginfo.fea")
    # 99 symbols have rules; the crawler keeps only TRADING ones (PUMPUSDT and SOMIUSDT were SETTLING)
    assert len(exginfo) == 97 and not {"ICPUSDT", "PUMPUSDT", "SOMIUSDT"} & set(exginfo["symbol"])
    assert bmac.candle_ready("ICPUSDT", run_time).exists()  # candles without rules: a real case
    btc = exginfo.set_index("symbol").loc["BTCUSDT"]
    assert btc["face_value"] == Decimal("0.001") and btc["price_tick"] == Decimal("0.1")
    assert btc["min_notional_value"] == Decimal("100") and btc["base_asset"] == "BTC"
    rules = pd.read_csv(DATA / ReplayMarket.EXGINFO)
    rules = rules[rules["status"] == "TRADING"]
    np.testing.assert_allclose(exginfo["face_value"].astype(float), rules["stepSize"])
    np.testing.assert_allclose(exginfo["price_tick"].astype(float), rules["tickSize"])
    assert exginfo["status"].tolist() == rules["status"].tolist()


def test_replay_funding_comes_from_the_file(replay):
    """The crawler's history file: the events of the last ``history`` hours up to run_time, oldest first,
    each stamped at its hour (the data set's times are a few ms after it)."""
    assert replay.funding(0).empty  # the funding file starts in 2026-01, after hour 0
    events = pd.read_parquet(DATA / ReplayMarket.FUNDING)
    for k in (replay.hours - 1, replay.hours - 700):
        run = pd.Timestamp(replay.run_time(k))
        hour = pd.to_datetime(events["timestamp"], unit="ms", utc=True).dt.floor("h")
        kept = events[(hour <= run) & (hour > run - pd.Timedelta(hours=replay.history))].assign(hour=hour)
        expected = kept.sort_values(["hour", "symbol"]).reset_index(drop=True)
        funding = replay.funding(k)
        assert len(funding) == len(expected) > 0 and funding["time"].is_monotonic_increasing
        assert funding["symbol"].tolist() == expected["symbol"].tolist()
        np.testing.assert_array_equal(funding["fundingRate"], expected["funding_rate"])
        assert (funding["time"] == expected["hour"]).all()


def test_run_replays_until_the_data_ends(tmp_path, replay, caplog):
    caplog.set_level(logging.INFO, logger="sim")
    first = 4497 - 2  # three hours left
    assert run(tmp_path, history=24, replay=DATA, first_hour=first, hour_seconds=0.01, spread_sec=0) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sim hour")]
    assert len(lines) == 3 and "wrote 98 symbols" in lines[-1]  # 100 in the data, 2 of them SETTLING
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not replayed")]
    assert said and "PUMPUSDT (status SETTLING in the exchange info)" in said[0]
    assert any("replay data ends after 3 hours" in r.getMessage() for r in caplog.records)


def test_a_restarted_sim_resumes_after_the_newest_hour(tmp_path):
    from services.market.sim import run

    run(tmp_path, symbols=5, hours=2, hour_seconds=0, spread_sec=0)
    assert BmacDir(tmp_path, "1h").latest_exginfo_stamp() == SyntheticMarket(5).run_time(1).strftime("%Y%m%d_%H%M%S")
    run(tmp_path, symbols=5, hours=4, hour_seconds=0, spread_sec=0)  # hours 2 and 3, not 0 to 3 again
    bmac = BmacDir(tmp_path, "1h")
    assert bmac.latest_exginfo_stamp() == SyntheticMarket(5).run_time(3).strftime("%Y%m%d_%H%M%S")
    assert len(pd.read_feather(bmac.candle_path("BTCUSDT"))) == 1500
