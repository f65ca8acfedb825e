"""Built-in plugins against the article's formulas, on synthetic and real candles; plugin guards."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from shared.config import FactorSpec, FilterSpec
from shared.fracdiff import fdiff, fdiff_coef
from shared.plugins import Calculator, PluginError, build_calculators
from tests import reference as ref


def synthetic_candles(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({
        "candle_begin_time": pd.date_range("2024-01-01", periods=n, freq="h", tz="Asia/Hong_Kong"),
        "open": open_, "high": np.maximum(open_, close) * (1 + rng.uniform(0, 0.02, n)),
        "low": np.minimum(open_, close) * (1 - rng.uniform(0, 0.02, n)), "close": close,
        "volume": rng.lognormal(8, 1, n), "quote_volume": rng.lognormal(12, 1, n),
    })


def real_candles(real_data, symbols=("BTCUSDT", "DOGEUSDT", "ICPUSDT", "1000PEPEUSDT")) -> list[pd.DataFrame]:
    df = pd.read_parquet(real_data / "candles_top100.parquet")
    out = []
    for s in symbols:
        d = df[df["symbol"] == s].sort_values("timestamp").tail(1500)
        out.append(pd.DataFrame({
            "candle_begin_time": pd.to_datetime(d["timestamp"], unit="ms", utc=True).dt.tz_convert("Asia/Hong_Kong"),
            **{c: d[c].to_numpy() for c in ("open", "high", "low", "close", "volume", "quote_volume")},
        }).reset_index(drop=True))
    return out


def assert_close(actual: pd.Series, expected: pd.Series) -> None:
    np.testing.assert_allclose(actual.to_numpy(float), expected.to_numpy(float), rtol=1e-9, atol=0, equal_nan=True)


def check_plugins(df: pd.DataFrame, back_hour: int, n: int) -> None:
    calcs = build_calculators([FactorSpec.model_validate(["MtmAtrMean", True, back_hour, 0, 1])],
                              [FilterSpec.model_validate(["ChgPctMax", n]), FilterSpec.model_validate(["Volume", n])])
    out = df.copy()
    for c in calcs:
        out = c(out)
    assert_close(out[f"MtmAtrMean_bh_{back_hour}"], ref.mtm_atr_mean(df, back_hour))
    assert_close(out[f"ChgPctMax_fl_{n}"], ref.chg_pct_max(df, n))
    assert_close(out[f"Volume_fl_{n}"], ref.volume(df, n))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("back_hour, n", [(120, 24), (24, 6), (2, 1), (500, 72)])
def test_plugins_match_formulas_on_synthetic_candles(seed, back_hour, n):
    check_plugins(synthetic_candles(1500, seed), back_hour, n)


def test_plugins_match_formulas_on_real_candles(real_data):
    for df in real_candles(real_data):
        check_plugins(df, 120, 24)


def test_talib_atr_is_wilder_atr():
    """TA-Lib's ATR (the reference) equals Wilder's recursion written out, so ATR means what we think."""
    import talib

    df = synthetic_candles(400, 9)
    h, low, c, n = df["high"].to_numpy(), df["low"].to_numpy(), df["close"].to_numpy(), 14
    tr = np.maximum(h[1:] - low[1:], np.maximum(abs(h[1:] - c[:-1]), abs(low[1:] - c[:-1])))
    atr = np.full(len(c), np.nan)
    atr[n] = tr[:n].mean()
    for i in range(n + 1, len(c)):
        atr[i] = (atr[i - 1] * (n - 1) + tr[i - 1]) / n
    np.testing.assert_allclose(talib.ATR(h, low, c, timeperiod=n), atr, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("d", [0.3, 0.5, 1.7])
def test_fdiff_coefficients_are_the_binomial_series(d):
    expected = [(-1) ** k * math.gamma(d + 1) / (math.gamma(k + 1) * math.gamma(d - k + 1)) for k in range(10)]
    np.testing.assert_allclose(fdiff_coef(d, 10), expected, rtol=1e-12)


def test_fdiff_matches_the_fracdiff_docstring_examples():
    a = np.array([1, 2, 4, 7, 0])
    np.testing.assert_array_equal(fdiff(a), np.diff(a))
    np.testing.assert_allclose(fdiff(a, 0.5, window=3), [1.0, 1.5, 2.875, 4.75, -4.0])
    np.testing.assert_allclose(fdiff(a, 0.5, window=3, mode="valid"), [2.875, 4.75, -4.0])


def test_factor_with_diff_applies_add_diff():
    df = synthetic_candles(300, 4)
    calc = Calculator.for_factor(FactorSpec.model_validate(["MtmAtrMean", True, 24, 0.5, 1]))
    out = calc(df.copy())
    raw = ref.mtm_atr_mean(df, 24).to_numpy()
    diffed = np.convolve(raw, fdiff_coef(0.5, 10), mode="valid")
    expected = np.nan_to_num(np.concatenate([np.zeros(len(raw) - len(diffed)), diffed]), nan=0)
    np.testing.assert_allclose(out["MtmAtrMean_bh_24_diff_0.5"], expected, rtol=1e-9)


def _calc(signal) -> Calculator:
    return Calculator("X_fl_1", signal, (1,))


@pytest.mark.parametrize("signal, message", [
    (lambda df, p, name: 1 / 0, "ZeroDivisionError"),
    (lambda df, p, name: df.iloc[:-1].assign(**{name: 1.0}), "rows, expected"),
    (lambda df, p, name: df.assign(close=df["close"] * 2, **{name: 1.0}), "changed or dropped the last close"),
    (lambda df, p, name: df, "did not add its column"),
    (lambda df, p, name: 5, "not a DataFrame"),
])
def test_plugin_contract_violations_become_named_errors(signal, message):
    with pytest.raises(PluginError, match=message) as e:
        _calc(signal)(synthetic_candles(30, 1))
    assert "X_fl_1" in str(e.value)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [1, 6, 24, 120])
def test_pct_change_and_funding_plugins_match_their_formulas(seed, n):
    df = synthetic_candles(600, seed)
    rng = np.random.default_rng(seed)
    df["funding_rate"] = np.where(rng.random(len(df)) < 0.3, rng.normal(0.0001, 0.0003, len(df)), 0.0)
    out = df.copy()
    for calc in build_calculators(
            [FactorSpec.model_validate(["PctChange", True, n, 0, 1]),
             FactorSpec.model_validate(["FundingRate", False, n, 0, 1])],
            [FilterSpec.model_validate(["FundingRate", n]), FilterSpec.model_validate(["FundingRateMean", n])]):
        out = calc(out)
    close, rate = df["close"].to_numpy(), df["funding_rate"].to_numpy()
    change = np.r_[np.full(n, np.nan), close[n:] / close[:-n] - 1]
    window_sum = np.array([rate[max(0, i - n + 1): i + 1].sum() for i in range(len(rate))])
    window_len = np.minimum(np.arange(1, len(rate) + 1), n)
    assert_close(out[f"PctChange_bh_{n}"], pd.Series(change))
    np.testing.assert_allclose(out[f"FundingRate_bh_{n}"], window_sum, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(out[f"FundingRate_fl_{n}"], window_sum, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(out[f"FundingRateMean_fl_{n}"], window_sum / window_len, rtol=1e-9, atol=1e-15)


def test_pct_change_with_diff_applies_add_diff():
    df = synthetic_candles(300, 4)
    out = Calculator.for_factor(FactorSpec.model_validate(["PctChange", True, 24, 0.5, 1]))(df.copy())
    raw = (df["close"] / df["close"].shift(24) - 1).to_numpy()
    diffed = np.convolve(raw, fdiff_coef(0.5, 10), mode="valid")
    expected = np.nan_to_num(np.concatenate([np.zeros(len(raw) - len(diffed)), diffed]), nan=0)
    np.testing.assert_allclose(out["PctChange_bh_24_diff_0.5"], expected, rtol=1e-9)
