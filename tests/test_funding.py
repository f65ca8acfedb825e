"""Funding rates for plugins: the crawler's history file, the market's Candles messages, the aligned column.

References here are written from the semantics, independently of the services' code: a candle's
funding_rate is the rate of the event stamped at its close (candle_begin_time + 1h), else 0.0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather
import pytest
import zmq

from services.factor.compute import HOUR_MS, NO_FUNDING, PluginRows, candle_begin_ms, funding_column
from services.market.feeds import ReplayFeed
from services.market.service import Market
from services.market.sim import ReplayMarket, SyntheticMarket, write_hour
from shared import bus
from shared.bmac import BmacDir, funding_events, lot_sizes
from shared.config import FactorSpec, FilterSpec, load_config
from shared.messages import MAX_FUNDING_EVENTS, BadMessage, CandleFile, Candles, Header, decode, encode
from shared.plugins import Calculator, build_calculators, needs_funding
from shared.quantities import lot_decimals
from shared.service import StopFlag
from tests.conftest import write_config
from tests.test_factors import real_candles, synthetic_candles

FUNDING_RULES = [["ChgPctMax", 24, "val:<=0.2"], ["Volume", 24, "rank:<=60", False],
                 ["FundingRate", 24, "val:<=0.0003"]]


def merged(candles: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """The reference: a left merge of the events (``time``, ``rate``) on each candle's close, 0.0 where none."""
    close = candles["candle_begin_time"].dt.tz_convert("UTC") + pd.Timedelta(hours=1)
    right = events.assign(time=pd.to_datetime(events["time"], utc=True).dt.as_unit("us"))
    out = pd.DataFrame({"time": close.dt.as_unit("us")}).merge(right, on="time", how="left", validate="many_to_one")
    return out["rate"].fillna(0.0).to_numpy()


def column_of(candles: pd.DataFrame, funding) -> np.ndarray:
    return funding_column(candle_begin_ms(pa.Table.from_pandas(candles, preserve_index=False)), funding)


# -- alignment ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_alignment_on_synthetic_funding_equals_a_pandas_merge(seed):
    candles = synthetic_candles(400, seed)
    rng = np.random.default_rng(seed)
    close = candles["candle_begin_time"].dt.tz_convert("UTC") + pd.Timedelta(hours=1)
    on = close[rng.random(len(close)) < 0.2]
    off = close.iloc[::37] + pd.Timedelta(milliseconds=3)  # not at a close: pays nothing
    outside = pd.Series([close.iloc[0] - pd.Timedelta(hours=9), close.iloc[-1] + pd.Timedelta(hours=1)])
    times = pd.Series(pd.concat([on, off, outside]).sort_values().to_numpy())
    events = pd.DataFrame({"time": times, "rate": rng.normal(0.0001, 0.0003, len(times))})
    ms = times.dt.as_unit("ms").astype("int64").to_numpy()
    got = column_of(candles, (ms, events["rate"].to_numpy()))
    expected = merged(candles, events)
    np.testing.assert_array_equal(got, expected)
    assert (got != 0).sum() == len(on) > 0
    np.testing.assert_array_equal(column_of(candles, NO_FUNDING), np.zeros(len(candles)))


def _intervals(raw: pd.DataFrame) -> dict[str, int]:
    """Each symbol's most common hours between funding events."""
    gaps = raw.sort_values("timestamp").groupby("symbol")["timestamp"].diff().dropna()
    hours = (gaps / HOUR_MS).round().astype(int)
    return hours.groupby(raw.loc[hours.index, "symbol"]).agg(lambda h: h.mode().iloc[0]).to_dict()


def test_alignment_on_real_funding_equals_a_pandas_merge(real_data):
    """8h, 4h and 1h symbols of the data set: the replay's history file, read as the market reads it,
    aligned by the worker, equals the raw events floored to their hour and merged on the candles' closes."""
    raw = pd.read_parquet(real_data / ReplayMarket.FUNDING).dropna(subset=["funding_rate"])
    ordered = raw.sort_values(["symbol", "timestamp"])
    hourly = ordered[ordered.groupby("symbol")["timestamp"].diff() < 1.5 * HOUR_MS]["symbol"]
    intervals = _intervals(raw)
    chosen = {h: next(s for s, i in sorted(intervals.items()) if i == h) for h in (8, 4)}
    chosen[1] = sorted(hourly.unique())[0]  # a coin that moved to hourly funding
    replay = ReplayMarket(real_data)
    events = funding_events(replay.funding(replay.hours - 1))
    symbols = tuple(chosen.values())
    for symbol, candles in zip(symbols, real_candles(real_data, symbols=symbols), strict=True):
        mine = raw[raw["symbol"] == symbol]
        hour = pd.to_datetime(mine["timestamp"] - mine["timestamp"] % HOUR_MS, unit="ms", utc=True)
        expected = merged(candles, pd.DataFrame({"time": hour, "rate": mine["funding_rate"].to_numpy()}))
        got = column_of(candles, events[symbol])
        np.testing.assert_array_equal(got, expected, err_msg=symbol)
        assert (got != 0).sum() > 100, symbol


def test_funding_events_reads_the_crawlers_file():
    tz = "Asia/Hong_Kong"
    t = pd.Timestamp("2024-01-01 08:00", tz=tz)
    df = pd.DataFrame({
        "symbol": ["AUSDT", "BUSDT", "AUSDT", "AUSDT", "BUSDT", "AUSDT"],
        "fundingRate": [0.1, 0.2, np.nan, 0.3, 0.4, 0.5],
        "time": [t, t, t + pd.Timedelta(hours=1), t + pd.Timedelta(hours=2), t + pd.Timedelta(hours=1), t],
    })
    events = funding_events(df)
    ms = int(t.timestamp() * 1000)
    a_times, a_rates = events["AUSDT"]
    assert a_times.tolist() == [ms, ms + 2 * HOUR_MS]  # the NaN row is dropped
    assert a_rates.tolist() == [0.5, 0.3]  # of two rows at one time the later row wins
    assert events["BUSDT"][0].tolist() == [ms, ms + HOUR_MS] and events["BUSDT"][1].tolist() == [0.2, 0.4]
    naive = df.assign(time=df["time"].dt.tz_localize(None))
    assert funding_events(naive, tz)["AUSDT"][0].tolist() == a_times.tolist()  # naive: the crawler's zone
    assert funding_events(df.iloc[:0]) == {} and funding_events(pd.DataFrame({"x": [1]})) == {}


# -- the plugins' frame -------------------------------------------------------------------------------
def test_plugins_see_funding_rate_and_the_published_row_does_not(tmp_path):
    """A user's plugin reads funding_rate and adds a column of its own: the row keeps its column, not funding's."""
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "Carry.py").write_text(
        "def signal(df, n, name):\n"
        "    df['carry_debug'] = df['funding_rate'].cumsum()\n"
        "    df[name] = df['funding_rate'].tail(n).sum()\n"
        "    return df\n")
    calcs = build_calculators([FactorSpec.model_validate(["MtmAtrMean", True, 24, 0, 1])],
                              [FilterSpec.model_validate(["Carry", 8])], tmp_path)
    assert needs_funding([FactorSpec.model_validate(["MtmAtrMean", True, 24, 0, 1])],
                         [FilterSpec.model_validate(["Carry", 8])], tmp_path)
    candles = synthetic_candles(100, 3)
    table = pa.Table.from_pandas(candles, preserve_index=False).replace_schema_metadata(None)
    close_ms = candle_begin_ms(table) + HOUR_MS
    funding = (close_ms[::2], np.linspace(-0.001, 0.002, len(close_ms[::2])))
    row = PluginRows(calcs)(table, "XUSDT", funding).to_pandas()
    assert "funding_rate" not in row.columns and "carry_debug" in row.columns
    rates = np.zeros(len(candles))
    rates[::2] = funding[1]
    assert row["Carry_fl_8"].iloc[0] == pytest.approx(rates[-8:].sum(), rel=1e-12, abs=1e-18)
    assert row["carry_debug"].iloc[0] == pytest.approx(rates.sum(), rel=1e-12, abs=1e-18)
    article = build_calculators([FactorSpec.model_validate(["MtmAtrMean", True, 120, 0, 1])],
                                [FilterSpec.model_validate(f) for f in (["ChgPctMax", 24], ["Volume", 24])])
    assert list(PluginRows(article)(table, "XUSDT", funding).column_names) == [
        *candles.columns, "symbol", "MtmAtrMean_bh_120", "ChgPctMax_fl_24", "Volume_fl_24"]  # the article's


def test_only_configs_that_may_read_funding_get_it(tmp_path):
    article = [FactorSpec.model_validate(["MtmAtrMean", True, 120, 0, 1])], [FilterSpec.model_validate(["Volume", 24])]
    assert not needs_funding(*article)
    assert needs_funding(article[0], [FilterSpec.model_validate(["FundingRateMean", 24])])
    assert needs_funding([FactorSpec.model_validate(["FundingRate", True, 24, 0, 1])], [])
    (tmp_path / "factors").mkdir()
    (tmp_path / "factors" / "MtmAtrMean.py").write_text("def signal(df, *a):\n    return df\n")
    assert needs_funding(*article, tmp_path)  # a user's own code may read funding_rate
    assert Calculator.for_factor(article[0][0], tmp_path).builtin is False


# -- the simulator's history file ---------------------------------------------------------------------
def test_the_sim_appends_each_hour_to_the_funding_history(tmp_path):
    """The crawler's way: each hour's file is the previous one plus this hour's rows, at most ``history`` hours."""
    market = SyntheticMarket(symbols=6, seed=3, history=4)
    bmac = BmacDir(tmp_path, "1h")
    previous = None
    for k in range(7):
        run_time = write_hour(bmac, market, k)
        written = bmac.read_funding()
        this_hour = written[written["time"] == run_time]
        assert this_hour["symbol"].tolist() == market.symbols and len(this_hour) == 6
        if previous is not None:
            appended = pd.concat([previous, this_hour], ignore_index=True)
            keep = appended["time"] > run_time - pd.Timedelta(hours=4)
            pd.testing.assert_frame_equal(written, appended[keep].reset_index(drop=True))
        assert written["time"].nunique() == min(k + 1, 4) and written["time"].is_monotonic_increasing
        previous = written
    pd.testing.assert_frame_equal(SyntheticMarket(symbols=6, seed=3, history=4).funding(6), previous)


def test_the_replays_funding_history_is_bounded(real_data):
    replay = ReplayMarket(real_data, history=48)
    k = replay.hours - 1
    funding = replay.funding(k)
    run_time = pd.Timestamp(replay.run_time(k))
    assert len(funding) > 0 and (funding["time"] <= run_time).all()
    assert (funding["time"] > run_time - pd.Timedelta(hours=48)).all()
    assert (funding["time"].dt.minute == 0).all() and (funding["time"].dt.second == 0).all()


# -- the Candles message ------------------------------------------------------------------------------
def _candles(**funding) -> Candles:
    now = datetime.now(UTC)
    return Candles(run_time=now, files=[CandleFile(symbol="XUSDT", path="x", ready_at=now, **funding)])


def _roundtrip(body: dict) -> CandleFile:
    header = Header(kind="candles", stack="", sender="t", seq=1, sent_at=datetime.now(UTC))
    frames = encode("candle.00.XUSDT", header, _candles())
    import msgpack

    head = msgpack.unpackb(frames[1])
    head["body"]["files"][0].update(body)
    return decode([frames[0], msgpack.packb(head), b""]).body.files[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("body, problem", [
    ({"funding_times": [1, 2], "funding_rates": [0.1]}, "2 funding_times but 1 funding_rates"),
    ({"funding_times": [2, 2], "funding_rates": [0.1, 0.2]}, "strictly increasing"),
    ({"funding_times": [1], "funding_rates": [float("nan")]}, "funding_rates.0"),
    ({"funding_times": [-1], "funding_rates": [0.1]}, "funding_times.0"),
    ({"funding_times": list(range(MAX_FUNDING_EVENTS + 1)), "funding_rates": [0.0] * (MAX_FUNDING_EVENTS + 1)},
     "funding_times"),
])
def test_bad_funding_in_a_candles_message_is_refused_by_name(body, problem):
    with pytest.raises(BadMessage, match=problem):
        _roundtrip(body)


def test_funding_survives_the_wire():
    got = _roundtrip({"funding_times": [3_600_000, 7_200_000], "funding_rates": [0.0001, -0.00025]})
    assert got.funding_times == [3_600_000, 7_200_000] and got.funding_rates == [0.0001, -0.00025]
    assert _roundtrip({}).funding_times == []


# -- the market sends each symbol's funding with its candles ------------------------------------------
def _received_candles(market: Market, sub: zmq.Socket, run_time: datetime) -> dict[str, CandleFile]:
    market.wait_for_subscribers(5)
    assert market.run_round(run_time)
    out = {}
    while sub.poll(2000):
        env = decode(sub.recv_multipart())
        if isinstance(env.body, Candles):
            out.update((f.symbol, f) for f in env.body.files)
        elif env.topic == bus.ROUND_CLOSED:
            break
    return out


def _expected_span(history: pd.DataFrame, frames: dict[str, pd.DataFrame] | None, symbol: str,
                   run_time: datetime) -> tuple[list[int], list[float]]:
    """The symbol's events from its first candle's close (when the file was read) to run_time."""
    mine = history[history["symbol"] == symbol]
    when = pd.to_datetime(mine["time"], utc=True)
    keep = when <= pd.Timestamp(run_time)
    if frames is not None:
        first = frames[symbol]["candle_begin_time"].iloc[0] + pd.Timedelta(hours=1)
        keep &= when >= first
    times = (when[keep].astype("int64") // 1000).tolist()  # datetime64[us] -> ms
    return times, mine.loc[keep, "fundingRate"].tolist()


@pytest.mark.parametrize("send_paths", [False, True])
def test_the_market_sends_funding_in_the_files_span(tmp_path, pub_sub, send_paths):
    pub, sub = pub_sub
    market = SyntheticMarket(symbols=12, seed=4, history=30)
    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, market, 44)  # the file holds the last 30 hours of funding, as the candles do
    workdir = write_config(tmp_path / "work", bmac.root, min_candle_num=10, pre_filters=FUNDING_RULES)
    got = _received_candles(Market(load_config(workdir), pub, StopFlag(), 0, send_paths=send_paths,
                                   workdir=workdir), sub, run_time)
    frames, history = market.candles(44), market.funding(44)
    assert set(got) == set(market.symbols)
    for symbol, body in got.items():
        times, rates = _expected_span(history, None if send_paths else frames, symbol, run_time)
        assert body.funding_times == times and body.funding_rates == rates and len(times) == 30


def test_the_article_gets_no_funding_and_the_replay_feed_sends_it(tmp_path, pub_sub, real_data):
    pub, sub = pub_sub
    workdir = write_config(tmp_path / "work", tmp_path / "unused", pre_filters=FUNDING_RULES)
    feed = ReplayFeed(real_data, "Asia/Hong_Kong", first_hour=4000)
    run_time = feed.run_time(0)
    got = _received_candles(Market(load_config(workdir), pub, StopFlag(), 0, feed, workdir=workdir), sub, run_time)
    replay = ReplayMarket(real_data, first_hour=4000)
    frames, history = replay.candles(0), replay.funding(0)
    carried = 0
    for symbol, body in got.items():
        times, rates = _expected_span(history, frames, symbol, run_time)
        assert body.funding_times == times and body.funding_rates == rates
        carried += len(times) > 0
    assert carried > 90
    article = write_config(tmp_path / "article", tmp_path / "unused")
    feed = ReplayFeed(real_data, "Asia/Hong_Kong", first_hour=4000)
    got = _received_candles(Market(load_config(article), pub, StopFlag(), 0, feed, workdir=article), sub, run_time)
    assert got and all(b.funding_times == [] for b in got.values())  # the article's plugins read no funding


def test_the_market_trims_funding_to_the_files_span_and_the_cap(tmp_path, pub_sub):
    workdir = write_config(tmp_path / "work", tmp_path / "unused", pre_filters=FUNDING_RULES)
    market = Market(load_config(workdir), pub_sub[0], StopFlag(), 0, workdir=workdir)
    candles = synthetic_candles(50, 1)
    sink = pa.BufferOutputStream()
    pa.feather.write_feather(pa.Table.from_pandas(candles, preserve_index=False), sink)
    data = sink.getvalue().to_pybytes()
    begin = candle_begin_ms(pa.Table.from_pandas(candles, preserve_index=False))
    run_ms = int(begin[-1]) + HOUR_MS
    run_time = datetime.fromtimestamp(run_ms / 1000, UTC)
    times = np.arange(begin[0] - 10 * HOUR_MS, run_ms + 5 * HOUR_MS, HOUR_MS)  # before, inside and after the file
    market.funding = {"XUSDT": (times, np.arange(len(times)) * 1e-6)}
    in_span = [int(t) for t in times if begin[0] + HOUR_MS <= t <= run_ms]
    got = market._funding_for(run_time, "XUSDT", data)
    assert got["funding_times"] == in_span and len(in_span) == 50
    assert got["funding_rates"] == [(t - times[0]) / HOUR_MS * 1e-6 for t in in_span]
    assert market._funding_for(run_time, "XUSDT", None)["funding_times"] == [int(t) for t in times if t <= run_ms]
    assert market._funding_for(run_time, "YUSDT", data) == {}
    many = np.arange(run_ms - 2 * MAX_FUNDING_EVENTS * HOUR_MS, run_ms + 1, HOUR_MS)
    market.funding = {"XUSDT": (many, np.zeros(len(many)))}
    capped = market._funding_for(run_time, "XUSDT", None)["funding_times"]
    assert capped == many[-MAX_FUNDING_EVENTS:].tolist()  # the newest events, at most the bound


# -- a real stack -------------------------------------------------------------------------------------
def _reference_funding_sum(history: pd.DataFrame, run_time: datetime, n: int) -> pd.Series:
    """FundingRate_fl_n from the simulator's file: each symbol's rates stamped in the last n hours."""
    when = pd.to_datetime(history["time"], utc=True)
    recent = history[(when <= pd.Timestamp(run_time)) & (when > pd.Timestamp(run_time) - pd.Timedelta(hours=n))]
    return recent.groupby("symbol")["fundingRate"].sum()


def _recorded_factors(workdir: Path, run_time: datetime) -> pd.DataFrame:
    return pd.read_csv(workdir / "factor_his" / run_time.strftime("coin_%Y%m%d_%H%M%S.csv.zip")).set_index("symbol")


def _check_funding_round(workdir: Path, market: SyntheticMarket, k: int) -> None:
    run_time = market.run_time(k)
    recorded = _recorded_factors(workdir, run_time)
    assert "funding_rate" not in recorded.columns
    expected = _reference_funding_sum(market.funding(k), run_time, 24).loc[recorded.index]
    assert len(recorded) > 30 and (expected.abs() > 0).all()
    np.testing.assert_allclose(recorded["FundingRate_fl_24"], expected, rtol=1e-9, atol=1e-15)
    selection = json.loads((workdir / "selection_his" / run_time.strftime("%Y%m%d_%H%M%S.json")).read_text())
    picks = [p["symbol"] for p in selection["long"] + selection["short"]]
    assert picks and (expected.loc[picks] <= 0.0003).all()  # the rule held


def test_once_on_the_simulator_records_the_funding_filter(tmp_path):
    """Candle bytes over the socket (the default), funding alongside."""
    market = SyntheticMarket(symbols=40, seed=5, history=300)
    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, market, 60)  # sixty hours of funding history behind it
    workdir = write_config(tmp_path / "work", bmac.root, min_candle_num=100, pre_filters=FUNDING_RULES)
    out = subprocess.run([sys.executable, "-m", "alphabus", "once", str(workdir), "--run-time", run_time.isoformat()],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "ALPHABUS_SEND": "bytes"})
    assert out.returncode == 0, out.stderr
    _check_funding_round(workdir, market, 60)
    _check_printed_trades(out.stdout, market)


def _check_printed_trades(stdout: str, market: SyntheticMarket) -> None:
    """What ``once`` prints: this hour's trades, signed, each quantity with its own lot's decimals."""
    assert "TRADES this hour" in stdout and "EXPOSURE gross" in stdout, stdout
    lots = lot_sizes(market.exginfo())
    trades = re.findall(r"^ {4}(\w+USDT) +([+-]\d+(?:\.\d+)?) +[+-]\d+\.\d\d +([+-]?\d+(?:\.\d+)?)$", stdout, re.M)
    assert trades, stdout
    for symbol, trade, target in trades:
        places = lot_decimals(lots[symbol])
        for text in (trade, target):
            assert len(text.partition(".")[2]) == places, f"{symbol} {text}: lot {lots[symbol]}"


def test_a_stack_sending_paths_records_the_funding_filter(tmp_path):
    """Only the candle file's path over the socket; funding still travels in the message."""
    from tests.stack import StackRun

    market = SyntheticMarket(symbols=40, seed=6, history=300)
    with StackRun(tmp_path, market_args=("--send", "paths"), min_candle_num=100, pre_filters=FUNDING_RULES) as stack:
        for k in (60, 61):
            stack.wait_for_round(write_hour(stack.bmac, market, k))
            _check_funding_round(stack.workdir, market, k)


def test_a_replayed_stack_records_funding_from_the_real_data(tmp_path, real_data):
    from alphabus.launcher import Services, loopback_endpoints, start_stack
    from services.recorder.files import history_paths
    from tests.stack import wait_for_file

    first, hours = 4000, 2
    workdir = write_config(tmp_path / "work", tmp_path / "unused", pre_filters=FUNDING_RULES,
                           filters=[["ChgPctMax", 24], ["Volume", 24], ["FundingRateMean", 72]])
    replay = ReplayMarket(real_data, first_hour=first)
    with Services(loopback_endpoints()) as services:
        start_stack(services, workdir, market_args=["--replay", str(real_data), "--first-hour", str(first),
                                                    "--hours", str(hours)])
        assert services.procs["market"].wait(120) == 0
        wait_for_file(history_paths(workdir, replay.run_time(hours - 1))["selection"], 30)
    for k in range(hours):
        run_time = replay.run_time(k)
        recorded = _recorded_factors(workdir, run_time)
        history = replay.funding(k)
        expected = _reference_funding_sum(history, run_time, 24).reindex(recorded.index, fill_value=0.0)
        assert (expected != 0).sum() > 50
        np.testing.assert_allclose(recorded["FundingRate_fl_24"], expected, rtol=1e-9, atol=1e-15)
        mean = _reference_funding_sum(history, run_time, 72).reindex(recorded.index, fill_value=0.0) / 72
        np.testing.assert_allclose(recorded["FundingRateMean_fl_72"], mean, rtol=1e-9, atol=1e-15)


def test_reference_helpers_agree_on_an_hourly_file():
    """The stack tests' reference and the alignment reference describe the same column."""
    market = SyntheticMarket(symbols=3, seed=1, history=50)
    k = 49
    candles, history = market.candles(k), market.funding(k)
    for symbol, df in candles.items():
        events = history[history["symbol"] == symbol].rename(columns={"fundingRate": "rate"})[["time", "rate"]]
        column = merged(df, events)
        assert column[-24:].sum() == pytest.approx(
            _reference_funding_sum(history, market.run_time(k), 24)[symbol], rel=1e-12)
