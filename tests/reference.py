"""The article's single-process program, transcribed as plain per-symbol pandas: the reference.

Factors and filters are written here from the article's formulas (not imported
from the plugins), and the position steps are the article's own code. Two
deliberate differences, both alphabus fixes that the tests also check:
symbols are visited in exginfo order (the article visits them in the order
their ready files appear, which only matters for exact ties), and a symbol
whose newest candle is not the one that just closed is left out.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import talib

DROP_COLS = ["open", "high", "low", "close_time", "volume", "trade_num", "taker_buy_base_asset_volume",
             "taker_buy_quote_asset_volume"]


def mtm_atr_mean(df: pd.DataFrame, n: int) -> pd.Series:
    mtm = df["close"].pct_change(n)
    atr = talib.ATR(df["high"].to_numpy(float), df["low"].to_numpy(float), df["close"].to_numpy(float),
                    timeperiod=n)
    atr_norm = atr / df["close"].rolling(window=n, min_periods=1).mean()
    return mtm.rolling(window=n, min_periods=1).mean() * atr_norm


def chg_pct_max(df: pd.DataFrame, n: int) -> pd.Series:
    return df["close"].pct_change(1).rolling(n).max()


def volume(df: pd.DataFrame, n: int) -> pd.Series:
    return df["quote_volume"].rolling(n, min_periods=1).sum()


def round_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    return Decimal(int(round(value / tick)) * tick)  # noqa: RUF046 (the article's code, verbatim)


def filiter_nan_inf(df_factor, factor_filter_cols):
    values = df_factor[factor_filter_cols].replace([np.inf, -np.inf], np.nan)
    return df_factor[~values.isna().any(axis=1)]


def filter_before(df1: pd.DataFrame):
    long_condition1 = df1["ChgPctMax_fl_24"].between(-1e100, 0.2, inclusive="both")
    df1 = df1.loc[long_condition1].copy()
    df1["Volume_fl_24_rank"] = df1.groupby("candle_begin_time")["Volume_fl_24"].rank(
        method="first", pct=False, ascending=False)
    long_condition2 = df1["Volume_fl_24_rank"].between(-1e100, 60, inclusive="both")
    return df1.loc[long_condition2]


def select_coin(df_factor: pd.DataFrame, factor_name, ascending, long_num, short_num):
    df_factor = df_factor.sort_values(factor_name, ascending=ascending, ignore_index=True)
    return df_factor.tail(long_num).copy(), df_factor.head(short_num).copy()


def assign_position(df_long, df_short, df_exg, capital_usdt, long_num, short_num):
    def pos(capital, close, face_value):
        return round_to_tick(Decimal(capital / close), face_value)

    long_coin_capital = capital_usdt / 2 / long_num
    df_long["position"] = df_long.apply(
        lambda r: pos(long_coin_capital, r["close"], df_exg.at[r["symbol"], "face_value"]), axis=1)
    df_long["pos_val"] = df_long["position"].astype(float) * df_long["close"]
    short_coin_capital = capital_usdt / 2 / short_num
    df_short["position"] = df_short.apply(
        lambda r: pos(short_coin_capital, r["close"], df_exg.at[r["symbol"], "face_value"]), axis=1)
    df_short["pos_val"] = df_short["position"].astype(float) * df_short["close"]
    return df_long, df_short


def article_round(bmac_dir: Path, run_time: datetime, back_hour: int = 120, reverse: bool = True,
                  long_num: int = 2, short_num: int = 8, min_candle_num: int = 999, capital_usdt: float = 1000):
    """(factor_his frame, long frame, short frame) as the article writes them for one round."""
    exg_dir, candle_dir = Path(bmac_dir) / "exginfo_1h", Path(bmac_dir) / "usdt_swap_1h"
    stamp = run_time.strftime("%Y%m%d_%H%M%S")
    df_exg = pd.read_feather(exg_dir / "exginfo.fea")
    symbol_list = list(df_exg["symbol"])
    df_exg = df_exg.set_index("symbol")
    factor_name = f"MtmAtrMean_bh_{back_hour}"
    results = []
    for sym in symbol_list:
        if not (candle_dir / f"{sym}_{stamp}.ready").exists():
            continue
        df = pd.read_feather(candle_dir / f"{sym}.fea")
        if len(df) < min_candle_num:
            continue
        if df["candle_begin_time"].iloc[-1] != run_time - timedelta(hours=1):
            continue
        df["symbol"] = sym
        df[factor_name] = mtm_atr_mean(df, back_hour)
        df["ChgPctMax_fl_24"] = chg_pct_max(df, 24)
        df["Volume_fl_24"] = volume(df, 24)
        results.append(df.iloc[-1])
    df_factor = pd.DataFrame(results).reset_index(drop=True)
    df_factor_all = df_factor.copy()
    df_factor = filiter_nan_inf(df_factor, [factor_name, "ChgPctMax_fl_24", "Volume_fl_24"])
    df_factor = filter_before(df_factor)
    df_long, df_short = select_coin(df_factor, factor_name, reverse, long_num, short_num)
    df_long, df_short = assign_position(df_long, df_short, df_exg, capital_usdt, long_num, short_num)
    drop = [c for c in DROP_COLS if c in df_factor_all.columns]
    return df_factor_all, df_long.drop(columns=drop), df_short.drop(columns=drop)


def article_config(bmac_dir: Path | str, **overrides) -> dict:
    """The article's factor_calc.json, pointing at bmac_dir."""
    cfg = {
        "interval": "1h", "bmac_dir": str(bmac_dir), "bmac_expire_sec": 30,
        "factor": ["MtmAtrMean", True, 120, 0, 1], "filters": [["ChgPctMax", 24], ["Volume", 24]],
        "long_num": 2, "short_num": 8, "min_candle_num": 999, "capital_usdt": 1000, "debug": False,
    }
    cfg.update(overrides)
    return cfg


def recorded_round(workdir: Path, run_time: datetime) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The recorder's three CSV files for run_time, read as text columns."""
    stamp = run_time.strftime("%Y%m%d_%H%M%S")
    read = lambda p: pd.read_csv(p, dtype=str, keep_default_na=False)  # noqa: E731
    return (read(Path(workdir) / "factor_his" / f"coin_{stamp}.csv.zip"),
            read(Path(workdir) / "select_his" / f"{stamp}_long.csv.zip"),
            read(Path(workdir) / "select_his" / f"{stamp}_short.csv.zip"))


def as_written(df: pd.DataFrame) -> pd.DataFrame:
    """A frame as its CSV text would read back: what the article's to_csv would have written."""
    import io

    return pd.read_csv(io.StringIO(df.to_csv(index=False)), dtype=str, keep_default_na=False)


def assert_same_round(workdir: Path, run_time: datetime, expected=None, **article_kwargs) -> None:
    """Recorded files equal the article's output: selections to the character, factor rows in any order."""
    if expected is None:
        expected = article_round(Path(article_kwargs.pop("bmac_dir")), run_time, **article_kwargs)
    ref_factors, ref_long, ref_short = (as_written(f) for f in expected)
    factors, long, short = recorded_round(workdir, run_time)
    assert_text_frames_match(long, ref_long, f"{run_time} long")
    assert_text_frames_match(short, ref_short, f"{run_time} short")
    key = lambda f: f.sort_values("symbol", ignore_index=True)  # noqa: E731
    assert_text_frames_match(key(factors), key(ref_factors), f"{run_time} factors")


EXACT_COLUMNS = {"symbol", "candle_begin_time", "position", "trade_num", "close_time"}


def assert_text_frames_match(actual: pd.DataFrame, expected: pd.DataFrame, what: str) -> None:
    """Same columns and rows; floats to 1e-9 relative, everything else (symbols, positions) exact."""
    assert list(actual.columns) == list(expected.columns), f"{what}: columns differ"
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
    for col in expected.columns:
        a, e = actual[col], expected[col]
        if col in EXACT_COLUMNS or col.endswith("_rank"):
            assert a.tolist() == e.tolist(), f"{what}: column {col} differs"
            continue
        np.testing.assert_allclose(pd.to_numeric(a).to_numpy(float), pd.to_numeric(e).to_numpy(float),
                                   rtol=1e-9, atol=0, equal_nan=True, err_msg=f"{what}: column {col}")
