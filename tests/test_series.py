"""The history series (services/factor/series.py) against the live kernels on each hour's exact file.

At every row t the series must equal the kernel applied to the newest ``num_candles`` rows ending at t
(the crawler's file then): 1e-12 relative, funding sums (which can cancel to ~0) also 1e-15 absolute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.factor import kernels, series
from services.factor.compute import funding_column
from services.factor.kernels import FUNDING_RATE

CALLS = [("factors", "MtmAtrMean", (120, 0)), ("factors", "MtmAtrMean", (7, 0)), ("factors", "PctChange", (24, 0)),
         ("factors", "FundingRate", (8, 0)), ("filters", "ChgPctMax", (24,)), ("filters", "Volume", (24,)),
         ("filters", "FundingRate", (8,)), ("filters", "FundingRateMean", (16,))]


def _arrays(df: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {c: df[c].to_numpy(np.float64) for c in ("close", "high", "low", "quote_volume")}
    begin = np.arange(len(df), dtype=np.int64) * 3_600_000
    events = begin[rng.random(len(df)) < 0.2] + 3_600_000
    arrays[FUNDING_RATE] = funding_column(begin, (events, rng.normal(0, 1e-4, len(events))))
    return arrays


def assert_series_equal_kernels(arrays: dict[str, np.ndarray], num_candles: int, every: int = 1) -> int:
    checked = 0
    for kind, name, args in CALLS:
        whole = series.series_for(kind, name, args)(arrays, num_candles)
        kernel = kernels.kernel_for(kind, name, args)
        assert whole is not None and kernel is not None
        for t in range(0, len(whole), every):
            lo = max(0, t - num_candles + 1)
            expected = kernel({c: v[lo:t + 1] for c, v in arrays.items()})
            if np.isnan(expected):
                assert np.isnan(whole[t]), (name, args, num_candles, t)
                continue
            tol = 1e-15 if "Funding" in name else 0.0
            assert whole[t] == pytest.approx(expected, rel=1e-12, abs=tol), (name, args, num_candles, t)
            checked += 1
    return checked


@pytest.mark.parametrize("num_candles", [1500, 300, 121, 40])
def test_series_equal_the_live_kernels_at_every_hour_on_real_candles(real_data, num_candles):
    df = pd.read_parquet(real_data / "candles_top100.parquet", filters=[("symbol", "==", "SOLUSDT")])
    df = df.sort_values("timestamp").iloc[:1900]  # past num_candles, so the file slides
    every = 1 if num_candles < 1500 else 3
    assert assert_series_equal_kernels(_arrays(df, np.random.default_rng(num_candles)), num_candles, every) > 1000


def test_series_on_a_history_shorter_than_the_file_and_with_nan_volumes():
    rng = np.random.default_rng(1)
    n = 260
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    df = pd.DataFrame({"close": close, "high": close * 1.01, "low": close * 0.99,
                       "quote_volume": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(1e5, 1e6, n))})
    assert assert_series_equal_kernels(_arrays(df, rng), 1500) > 1000  # never slides: one file from row 0
    assert assert_series_equal_kernels(_arrays(df, rng), 150) > 1000
    assert assert_series_equal_kernels(_arrays(df.iloc[:100], rng), 1500) > 100  # fewer rows than some windows


def test_series_refuse_what_only_a_plugin_computes():
    assert series.series_for("factors", "MtmAtrMean", (120, 0.5)) is None  # a fractional difference
    assert series.series_for("filters", "Volume", (2.5,)) is None
    assert series.series_for("factors", "BenchCci", (10, 0)) is None
