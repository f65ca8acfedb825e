"""``alphabus backtest`` on a small synthetic history with bad input, checked against plain pandas references:
the factors (TA-Lib and pandas on each hour's exact file), the selections (tests/strategy_reference.py) and
the accounting (a per-hour pandas walk written here). Series against the live kernels are in test_series.py,
against the live stack in test_backtest_live.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.backtest.history import clean_candles
from services.market.sim import SyntheticMarket
from shared.bmac import BadCandles, check_candle_table, funding_events, lot_sizes
from tests import reference
from tests.conftest import write_config
from tests.strategy_reference import reference_hours

REPO = Path(__file__).resolve().parent.parent
NUM_CANDLES, MIN_CANDLES, BACK = 160, 130, 24
FEE, SLIP = 5.0, 2.0


def _history(folder: Path) -> dict[str, pd.DataFrame]:
    """12 synthetic coins' long files with one of each kind of bad input; returns the frames as written."""
    market = SyntheticMarket(symbols=12, seed=3, history=330)
    frames = market.candles(0)
    exginfo = market.exginfo()
    folder.mkdir(parents=True)
    frames["SIM005USDT"] = pd.concat([frames["SIM005USDT"], frames["SIM005USDT"].iloc[[200]]])  # a duplicate hour
    frames["SIM006USDT"] = frames["SIM006USDT"].drop(index=[300, 301]).reset_index(drop=True)  # a 2-hour gap
    bad = frames["SIM007USDT"].copy()
    bad.loc[250, "close"] = 0.0  # a zero close
    frames["SIM007USDT"] = bad
    frames["SIM008USDT"] = frames["SIM008USDT"].iloc[:300].reset_index(drop=True)  # delisted before the end
    for symbol, df in frames.items():
        df.reset_index(drop=True).to_feather(folder / f"{symbol}.fea")
    exginfo[exginfo["symbol"] != "SIM010USDT"].reset_index(drop=True).to_feather(folder / "exginfo.fea")  # no rules
    times = frames["BTCUSDT"]["candle_begin_time"].iloc[::8]  # a funding event every 8 hours, random signs
    rng = np.random.default_rng(5)
    pd.DataFrame({"symbol": np.repeat(list(frames), len(times)),
                  "fundingRate": rng.normal(0, 3e-4, len(frames) * len(times)),
                  "time": np.tile(times.to_numpy(), len(frames))}).to_feather(folder / "funding.fea")
    return frames


@pytest.fixture(scope="module")
def backtest(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    frames = _history(root / "data")
    workdir = write_config(root / "work", root / "unused", min_candle_num=MIN_CANDLES,
                           factor=["MtmAtrMean", True, BACK, 0, 1])
    run = subprocess.run([sys.executable, "-m", "alphabus", "backtest", str(workdir), "--data", str(root / "data"),
                          "--num-candles", str(NUM_CANDLES), "--fee-bps", str(FEE), "--slippage-bps", str(SLIP),
                          "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return root, workdir, frames, run


def _one_per_hour(df: pd.DataFrame) -> pd.DataFrame:
    """Time order, the later row of a duplicated hour kept."""
    df = df.sort_values("candle_begin_time", kind="stable")
    return df.drop_duplicates("candle_begin_time", keep="last").reset_index(drop=True)


def _reference_factors(frames: dict[str, pd.DataFrame], universe: list[str]) -> dict[pd.Timestamp, pd.DataFrame]:
    """Each hour's factor table from plain pandas/TA-Lib on the newest NUM_CANDLES rows, as the article computes."""
    rows: dict[pd.Timestamp, list[dict]] = {}
    for symbol in universe:
        df = _one_per_hour(frames[symbol])
        for t in range(MIN_CANDLES - 1, len(df)):
            window = df.iloc[max(0, t - NUM_CANDLES + 1): t + 1].reset_index(drop=True)
            if not (window["close"] > 0).all():
                continue  # the live check rejects this file
            last = window.iloc[-1]
            rows.setdefault(last["candle_begin_time"] + pd.Timedelta(hours=1), []).append({
                "symbol": symbol, "close": last["close"],
                f"MtmAtrMean_bh_{BACK}": reference.mtm_atr_mean(window, BACK).iloc[-1],
                "ChgPctMax_fl_24": reference.chg_pct_max(window, 24).iloc[-1],
                "Volume_fl_24": reference.volume(window, 24).iloc[-1]})
    return {t: pd.DataFrame(r) for t, r in rows.items()}


def test_selections_match_the_pandas_references_hour_by_hour(backtest):
    root, workdir, frames, _ = backtest
    exginfo = pd.read_feather(root / "data" / "exginfo.fea")
    universe = [s for s in exginfo["symbol"] if s in frames]
    by_hour = _reference_factors(frames, universe)
    cfg = json.loads((workdir / "factor_calc.json").read_text())
    lots = {s: v for s, v in lot_sizes(exginfo).items() if v is not None}
    selections = pd.read_csv(workdir / "backtest" / "selections.csv", dtype=str, keep_default_na=False)
    first = pd.Timestamp(selections["run_time"].iloc[0])
    ref = reference_hours({t: f for t, f in by_hour.items() if t >= first}, lots, cfg)
    assert len(ref) > 150
    mine = {t: g for t, g in selections.groupby("run_time")}
    compared = 0
    for run_time, hour in ref.items():
        got = mine.get(run_time.isoformat())
        for side, frame in (("long", hour.long), ("short", hour.short)):
            picked = got[got["side"] == side] if got is not None else got
            expected = list(zip(frame["symbol"], map(Decimal, frame["position"]), strict=True))
            actual = [] if picked is None else list(zip(picked["symbol"], map(Decimal, picked["position"]),
                                                        strict=True))
            assert actual == expected, f"{run_time} {side}"
        compared += 1
    assert compared == len(ref) and compared >= len(mine)


def _reference_equity(hours: list[str], selections: pd.DataFrame, frames: dict[str, pd.DataFrame],
                      funding: pd.DataFrame, capital: float) -> pd.DataFrame:
    """A plain per-hour walk: trade to targets at the close (fee + slippage on |traded notional|), close-to-close
    PnL, funding = held notional * rate (long pays a positive rate), a held symbol with no candle is carried,
    one whose data has ended is closed at its last close."""
    closes, last_seen = {}, {}
    for s, df in frames.items():
        df = _one_per_hour(df)
        at = df["candle_begin_time"] + pd.Timedelta(hours=1)
        closes[s] = pd.Series(df["close"].to_numpy(), index=at).where(lambda x: x > 0).dropna()
        last_seen[s] = at.max()
    events = funding_events(funding)
    rates = {(s, t): r for s, (ts, rs) in events.items() for t, r in zip(ts.tolist(), rs.tolist(), strict=True)}
    picks_by_hour = dict(tuple(selections.groupby("run_time")))
    held: dict[str, float] = {}
    price: dict[str, float] = {}
    cash, out = capital, []
    for run_time in hours:
        t = pd.Timestamp(run_time)
        ms = int(t.timestamp() * 1000)
        picks = picks_by_hour.get(run_time, selections.iloc[0:0])
        targets: dict[str, float] = {}
        for side, symbol, position in zip(picks["side"], picks["symbol"], picks["position"], strict=True):
            targets[symbol] = targets.get(symbol, 0.0) + float(Decimal(position)) * (1 if side == "long" else -1)
        now = {s: float(c[t]) for s, c in closes.items() if t in c.index}
        price.update(now)
        paid = sum(q * price[s] * rates.get((s, ms), 0.0) for s, q in held.items())
        fees = 0.0
        for s in sorted(set(targets) | set(held)):
            gone = last_seen[s] < t
            if s in held and s not in now and not gone:
                continue  # carried
            qty = (0.0 if gone else targets.get(s, 0.0)) - held.get(s, 0.0)
            if qty == 0:
                continue
            fees += abs(qty * price[s]) * (FEE + SLIP) / 1e4
            cash -= qty * price[s]
            held[s] = held.get(s, 0.0) + qty
        cash -= fees + paid
        held = {s: q for s, q in held.items() if q != 0}
        out.append({"run_time": run_time, "equity": cash + sum(q * price[s] for s, q in held.items()),
                    "fees": fees, "funding": paid})
    return pd.DataFrame(out)


def test_equity_matches_a_pandas_walk_and_the_stats_count_the_bad_input(backtest):
    root, workdir, frames, run = backtest
    out = workdir / "backtest"
    selections = pd.read_csv(out / "selections.csv", dtype=str, keep_default_na=False)
    equity = pd.read_csv(out / "equity.csv")
    funding = pd.read_feather(root / "data" / "funding.fea")
    ref = _reference_equity(equity["run_time"].tolist(), selections, frames, funding, 1000.0)
    np.testing.assert_allclose(equity["equity"].to_numpy(), ref["equity"], rtol=1e-9)
    np.testing.assert_allclose(equity["fees"].to_numpy(), ref["fees"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(equity["funding"].to_numpy(), ref["funding"], rtol=1e-9, atol=1e-12)
    assert (ref["funding"] != 0).sum() > 10  # funding was really paid and received

    stats = json.loads((out / "stats.json").read_text())
    bad = stats["bad_input"]
    assert bad["duplicate_hours"] == 1 and bad["missing_hours"] == 2 and bad["bad_prices"] == 1
    assert bad["no_exginfo"] == 1 and bad["skipped_bad_data"] > 0
    assert any("SIM010USDT" in p for p in stats["problems"])
    assert stats["hours"] == len(equity) and stats["final_equity"] == pytest.approx(equity["equity"].iloc[-1])
    peak = np.maximum.accumulate(np.r_[1000.0, equity["equity"]])[1:]
    assert stats["max_drawdown"] == pytest.approx((equity["equity"] / peak - 1).min())
    hourly = equity["pnl"] / 1000
    assert stats["sharpe"] == pytest.approx(hourly.mean() / hourly.std() * np.sqrt(24 * 365), rel=1e-9)
    assert stats["fees_paid"] == pytest.approx(equity["fees"].sum())
    for name in ("trades.csv", "report.png", "report.html"):
        assert (out / name).stat().st_size > 0
    assert "-63.041599999999995" not in (out / "trades.csv").read_text()
    text = (out / "trades.csv").read_text() + (out / "equity.csv").read_text()
    numbers = [c for c in text.replace("\n", ",").split(",") if c.replace(".", "").replace("-", "").isdigit()]
    digits = [len(c.replace("-", "").replace(".", "").lstrip("0")) for c in numbers]
    assert len(numbers) > 1000 and max(digits) <= 15  # decimal text of at most 15 significant digits
    assert re.search(r"\d[eE][+-]?\d", text) is None  # no exponents
    assert "max drawdown" in run.stdout and "Sharpe" in run.stdout


def test_a_range_outside_the_data_is_one_sentence_and_exit_2(backtest):
    root, workdir, _, _ = backtest
    run = subprocess.run([sys.executable, "-m", "alphabus", "backtest", str(workdir), "--data", str(root / "data"),
                          "--start", "2030-01-01T00:00:00", "--out", str(root / "out2")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "holds no hour of" in run.stderr and run.stderr.count("\n") == 1
    run = subprocess.run([sys.executable, "-m", "alphabus", "backtest", str(workdir), "--data", str(root / "nope")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no such folder" in run.stderr


@pytest.mark.parametrize("close", [0.0, -1.0, np.nan, np.inf, -np.inf, 1e-300, 1e300])
def test_the_backtest_marks_the_closes_the_live_check_rejects(close):
    """A file holding such a close is skipped live; the backtest must skip exactly the hours whose file holds it."""
    df = SyntheticMarket(symbols=1, seed=3, history=40).candles(0)["BTCUSDT"].reset_index(drop=True)
    df.loc[30, "close"] = close
    problems: list[str] = []
    history = clean_candles(df, "BTCUSDT", "Asia/Hong_Kong", problems, {})
    try:
        check_candle_table(pa.Table.from_pandas(df, preserve_index=False), "BTCUSDT.fea")
        rejected = False
    except BadCandles as e:
        rejected = "close(s) NaN, infinite or <= 0" in str(e)
    assert history is not None and rejected == bool(history.bad_close[30]) == (bool(problems))
    assert rejected == (not (0 < close < np.inf)) and history.bad_close.sum() == int(rejected)
