"""The fast path (built-in kernels) against the plugin path (the reference), on synthetic and real candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.factor.compute import HOUR_MS, NO_FUNDING, Funding, KernelRows, PluginRows, row_builder
from services.factor.kernels import atr_last
from services.market.sim import ReplayMarket
from shared.bmac import funding_events
from shared.config import FactorSpec, FilterSpec
from shared.plugins import Calculator, build_calculators
from tests.test_factors import real_candles, synthetic_candles


def calculators(back_hour: int, n: int, d_num: float = 0) -> list[Calculator]:
    """Every built-in plugin: several factors (MtmAtrMean twice, PctChange, FundingRate) and every filter."""
    factors = {f.column: f for f in (FactorSpec.model_validate(spec) for spec in (
        ["MtmAtrMean", True, back_hour, d_num, 1], ["MtmAtrMean", False, n, d_num, 2],
        ["PctChange", True, back_hour, d_num, 1], ["FundingRate", False, n, d_num, 1]))}
    filters = [FilterSpec.model_validate([name, n]) for name in ("ChgPctMax", "Volume", "FundingRate",
                                                                  "FundingRateMean")]
    return build_calculators(list(factors.values()), filters)


FUNDING_COLUMNS = ("FundingRate_bh_", "FundingRate_fl_", "FundingRateMean_fl_")


def assert_same_row(df: pd.DataFrame, back_hour: int, n: int, funding: Funding = NO_FUNDING) -> None:
    calcs = calculators(back_hour, n)
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    kernel_rows = row_builder(calcs)
    assert isinstance(kernel_rows, KernelRows)  # several built-in factors never fall back to the plugins
    slow, fast = PluginRows(calcs)(table, "XUSDT", funding), kernel_rows(table, "XUSDT", funding)
    assert fast.schema == slow.schema and "funding_rate" not in slow.column_names
    fast_df, slow_df = fast.to_pandas(), slow.to_pandas()
    computed = [c.column for c in calcs]
    for name in computed:
        # A funding sum can cancel to ~0, where pandas' running window sum and a direct sum differ in the last
        # bits of 1e-4-sized rates: 1e-15 absolute is 1e-11 of a typical rate.
        atol = 1e-15 if name.startswith(FUNDING_COLUMNS) else 0
        np.testing.assert_allclose(fast_df[name], slow_df[name], rtol=1e-9, atol=atol, equal_nan=True, err_msg=name)
    pd.testing.assert_frame_equal(fast_df.drop(columns=computed), slow_df.drop(columns=computed))
    pd.testing.assert_series_equal(fast_df.dtypes, slow_df.dtypes)


def synthetic_funding(df: pd.DataFrame, seed: int) -> Funding:
    """Events at candle closes every 8, then 4, then 1 hours (an exchange changing a coin's interval), plus
    events off the hour and outside the file's span that must match no candle."""
    rng = np.random.default_rng([seed, 99])
    begin = df["candle_begin_time"].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    close = begin + HOUR_MS
    third = len(close) // 3
    on = np.r_[close[:third][::8], close[third:2 * third][::4], close[2 * third:]]
    off = close[::50] + 1_234  # a stamp the crawler would never write: no candle closes then
    outside = np.array([begin[0] - 5 * HOUR_MS, close[-1] + 3 * HOUR_MS])
    times = np.unique(np.r_[on, off, outside])
    return times, rng.normal(0.0001, 0.0003, len(times))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("back_hour, n", [(120, 24), (24, 6), (1, 1), (2, 3), (500, 72), (7, 100)])
@pytest.mark.parametrize("length", [1500, 300, 130, 40, 3])
def test_kernels_equal_plugins_on_synthetic_candles(seed, back_hour, n, length):
    df = synthetic_candles(length, seed)
    assert_same_row(df, back_hour, n, synthetic_funding(df, seed))


@pytest.mark.parametrize("gap", ["nan_volume", "all_nan_volume", "inf_high"])
def test_kernels_equal_plugins_where_a_window_holds_nan_or_inf(gap):
    """The kernels sum and average directly where a window holds no NaN; a NaN sends them the NaN-skipping
    way, as the plugins' pandas skips it."""
    df = synthetic_candles(300, 3)
    last = df.index[-24:]
    if gap == "nan_volume":
        df.loc[last[3:8], "quote_volume"] = np.nan
    elif gap == "all_nan_volume":
        df.loc[last, "quote_volume"] = np.nan
    else:
        df.loc[last[5], "high"] = np.inf
    assert_same_row(df, 120, 24)
    assert_same_row(df, 6, 24)


def test_kernels_equal_plugins_without_funding_events():
    assert_same_row(synthetic_candles(300, 5), 120, 24)


def test_kernels_equal_plugins_on_real_candles(real_data):
    events = funding_events(ReplayMarket(real_data).funding(ReplayMarket(real_data).hours - 1))
    for df, symbol in zip(real_candles(real_data, symbols=SYMBOLS), SYMBOLS, strict=True):
        for back_hour, n in [(120, 24), (24, 6), (72, 48)]:
            assert_same_row(df, back_hour, n, events.get(symbol, NO_FUNDING))


SYMBOLS = ("BTCUSDT", "ETHUSDT", "DOGEUSDT", "ICPUSDT", "1000PEPEUSDT", "XRPUSDT", "SOLUSDT", "TRUMPUSDT",
           "1000BONKUSDT", "PIPPINUSDT")


def test_atr_kernel_equals_talib():
    import talib

    for seed, n in [(1, 14), (2, 120), (3, 1), (4, 999)]:
        df = synthetic_candles(1500, seed)
        h, low, c = (df[k].to_numpy() for k in ("high", "low", "close"))
        np.testing.assert_allclose(atr_last(h, low, c, n), talib.ATR(h, low, c, timeperiod=n)[-1], rtol=1e-12)
    assert np.isnan(atr_last(h[:10], low[:10], c[:10], 10))


def test_user_plugins_and_fractional_differences_take_the_plugin_path(tmp_path):
    assert isinstance(row_builder(calculators(120, 24)), KernelRows)
    assert isinstance(row_builder(calculators(120, 24), fast=False), PluginRows)
    assert isinstance(row_builder(calculators(120, 24, d_num=0.5)), PluginRows)
    pct = build_calculators([FactorSpec.model_validate(["PctChange", True, 24, 0.5, 1])], [])
    assert isinstance(row_builder(pct), PluginRows)  # the fractional difference only the plugin computes
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "Volume.py").write_text(
        "def signal(*args):\n    df, n, name = args\n    df[name] = df['volume'].rolling(n).sum()\n    return df\n")
    mine = build_calculators([FactorSpec.model_validate(["MtmAtrMean", True, 120, 0, 1])],
                             [FilterSpec.model_validate(["Volume", 24])], tmp_path)
    assert isinstance(row_builder(mine), PluginRows)  # the user's own Volume runs as written


def test_a_multi_factor_strategy_of_built_ins_takes_the_kernel_path():
    """What the factor worker builds for a strategy with several factors, side lists and rules: every column
    the strategy needs, all on the fast path."""
    from shared.config import parse_config
    from tests.reference import article_config

    cfg = parse_config(article_config(
        "/unused", factor=[["MtmAtrMean", True, 120, 0, 1], ["PctChange", False, 24, 0, 1]],
        short_factors=[["MtmAtrMean", True, 24, 0, 1]], post_filters=[["FundingRateMean", 24, "val:<=0.0005"]],
        long_num=0.1, short_num=3))
    build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters))
    assert isinstance(build, KernelRows) and build.funding
    assert build.columns == cfg.columns == ["MtmAtrMean_bh_120", "PctChange_bh_24", "MtmAtrMean_bh_24",
                                            "ChgPctMax_fl_24", "Volume_fl_24", "FundingRateMean_fl_24"]
    df = synthetic_candles(400, 2)
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    slow = PluginRows(build_calculators(cfg.factor_specs, cfg.all_filters))(table, "XUSDT", synthetic_funding(df, 2))
    fast = build(table, "XUSDT", synthetic_funding(df, 2))
    for column in cfg.columns:
        np.testing.assert_allclose(fast[column].to_numpy(), slow[column].to_numpy(), rtol=1e-9, atol=1e-15)
