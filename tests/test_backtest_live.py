"""The backtest against the live stack: the same hours, the same factor rows, selections and positions.

Both sides run as a user runs them, from the command line: ``alphabus backtest --selections`` over the
whole real data set, and ``alphabus once --run-time T`` (the four services as real processes over
loopback TCP) for 20 hours spread over the range, each on a BMAC directory written as the crawler
would have written it at that hour (``write_hour``: every symbol's newest 1,500 candles). Their
recorder files must agree: symbols, candle columns, ranks, positions and sides to the character, the
factor and filter values to 1e-12 relative (the backtest computes built-ins on whole series, the live
factor service on kernels; ``test_series`` holds the two together at every hour).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from services.market.sim import ReplayMarket, write_hour
from shared.bmac import BmacDir
from shared.config import load_config
from tests.conftest import write_config
from tests.reference import recorded_round

HOURS = 20


def _alphabus(*args: str, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "alphabus", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"alphabus {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def _assert_same_text(backtest: pd.DataFrame, live: pd.DataFrame, floats: set[str], what: str) -> None:
    assert list(backtest.columns) == list(live.columns), f"{what}: columns {list(backtest.columns)}"
    assert backtest["symbol"].tolist() == live["symbol"].tolist(), f"{what}: symbols or their order differ"
    for column in live.columns:
        if column in floats:
            np.testing.assert_allclose(pd.to_numeric(backtest[column]).to_numpy(float),
                                       pd.to_numeric(live[column]).to_numpy(float),
                                       rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{what}: {column}")
        else:
            assert backtest[column].tolist() == live[column].tolist(), f"{what}: {column}"


@pytest.mark.slow
def test_backtest_equals_alphabus_once_on_hours_spread_over_the_data(tmp_path, real_data):
    market = ReplayMarket(real_data)  # hour 0 is candle 1500: the first file of 1500 candles
    picked = sorted({int(k) for k in np.linspace(0, market.hours - 1, HOURS)})
    bmac = BmacDir(tmp_path / "bmac", "1h")
    live_dir = write_config(tmp_path / "live", bmac.root)
    backtest_dir = write_config(tmp_path / "backtest", bmac.root)
    _alphabus("backtest", str(backtest_dir), "--data", str(real_data), "--selections", timeout=900)
    out = backtest_dir / "backtest"
    floats = set(load_config(live_dir).columns)

    for k in picked:
        run_time = write_hour(bmac, market, k)
        _alphabus("once", str(live_dir), "--run-time", run_time.isoformat(), timeout=300)
        live, mine = recorded_round(live_dir, run_time), recorded_round(out, run_time)
        assert len(live[0]) >= 90, f"{run_time}: only {len(live[0])} factor rows live"
        for name, backtest_frame, live_frame in zip(("factor_his", "long", "short"), mine, live, strict=True):
            _assert_same_text(backtest_frame, live_frame, floats, f"{run_time} {name}")
