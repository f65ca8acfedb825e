"""The fast path (built-in kernels) against the plugin path (the reference), on synthetic and real candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from services.factor.compute import KernelRows, PluginRows, row_builder
from services.factor.kernels import atr_last
from shared.config import FactorSpec, FilterSpec
from shared.plugins import Calculator, build_calculators
from tests.test_factors import real_candles, synthetic_candles


def calculators(back_hour: int, n: int, d_num: float = 0) -> list[Calculator]:
    return build_calculators(FactorSpec.model_validate(["MtmAtrMean", True, back_hour, d_num, 1]),
                             [FilterSpec.model_validate(["ChgPctMax", n]), FilterSpec.model_validate(["Volume", n])])


def assert_same_row(df: pd.DataFrame, back_hour: int, n: int) -> None:
    calcs = calculators(back_hour, n)
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    slow, fast = PluginRows(calcs)(table, "XUSDT"), KernelRows.for_calculators(calcs)(table, "XUSDT")
    assert fast.schema == slow.schema
    fast_df, slow_df = fast.to_pandas(), slow.to_pandas()
    computed = [c.column for c in calcs]
    for name in computed:
        np.testing.assert_allclose(fast_df[name], slow_df[name], rtol=1e-9, atol=0, equal_nan=True, err_msg=name)
    pd.testing.assert_frame_equal(fast_df.drop(columns=computed), slow_df.drop(columns=computed))
    pd.testing.assert_series_equal(fast_df.dtypes, slow_df.dtypes)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("back_hour, n", [(120, 24), (24, 6), (1, 1), (2, 3), (500, 72), (7, 100)])
@pytest.mark.parametrize("length", [1500, 300, 130, 40, 3])
def test_kernels_equal_plugins_on_synthetic_candles(seed, back_hour, n, length):
    assert_same_row(synthetic_candles(length, seed), back_hour, n)


def test_kernels_equal_plugins_on_real_candles(real_data):
    for df in real_candles(real_data, symbols=("BTCUSDT", "ETHUSDT", "DOGEUSDT", "ICPUSDT", "1000PEPEUSDT",
                                                "XRPUSDT", "SOLUSDT", "TRUMPUSDT")):
        for back_hour, n in [(120, 24), (24, 6), (72, 48)]:
            assert_same_row(df, back_hour, n)


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
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "Volume.py").write_text(
        "def signal(*args):\n    df, n, name = args\n    df[name] = df['volume'].rolling(n).sum()\n    return df\n")
    mine = build_calculators(FactorSpec.model_validate(["MtmAtrMean", True, 120, 0, 1]),
                             [FilterSpec.model_validate(["Volume", 24])], tmp_path)
    assert isinstance(row_builder(mine), PluginRows)  # the user's own Volume runs as written
