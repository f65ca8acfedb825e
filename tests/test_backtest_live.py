"""The backtest against the live stack: the same hours, the same factor rows, selections and positions.

The live side is the four services as real processes over loopback TCP, fed a BMAC directory that the
test writes hour by hour as the crawler would (``write_hour`` of the real data set), for hours spread
over the whole range (the market follows the crawler's markers and skips the hours between).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from services.backtest.engine import build_tape, choose_hours
from services.backtest.factors import FactorJob, calculators, symbol_factors
from services.backtest.history import load_history
from services.factor.compute import NO_FUNDING
from services.market.sim import ReplayMarket, write_hour
from shared.bmac import lot_sizes
from shared.config import load_config
from tests.reference import as_written, recorded_round
from tests.stack import StackRun

HOURS = 20


@pytest.mark.slow
def test_backtest_equals_the_live_stack_on_hours_spread_over_the_data(tmp_path, real_data):
    market = ReplayMarket(real_data)  # hour 0 is candle 1500: the first file of 1500 candles
    picked = sorted({int(k) for k in np.linspace(0, market.hours - 1, HOURS)})
    live = {}
    with StackRun(tmp_path) as stack:
        for k in picked:
            run_time = write_hour(stack.bmac, market, k)
            live[k] = stack.wait_for_round(run_time, 180)
    workdir = stack.workdir

    cfg = load_config(workdir)
    history = load_history(real_data, cfg.timezone)
    run_ms = np.array([round(market.run_time(k).timestamp() * 1000) for k in range(market.hours)], dtype=np.int64)
    job = FactorJob(cfg, workdir, 1500, cfg.min_candle_num, int(run_ms[0]), int(run_ms[-1]))
    calcs = calculators(job)
    factors = {s: symbol_factors(history.symbols[s], history.funding.get(s, NO_FUNDING), job, calcs)
               for s in history.universe}
    tape = build_tape(history, factors, [c.column for c in calcs], run_ms)
    face_values = {s: v for s, v in lot_sizes(history.exginfo).items() if v is not None}
    float_columns = {c.column for c in calcs}

    for k in picked:
        run_time = market.run_time(k)
        live_factors, live_long, live_short = recorded_round(workdir, run_time)
        mine = as_written(tape.factors(k))
        assert list(mine.columns) == list(live_factors.columns), run_time
        assert mine["symbol"].tolist() == live_factors["symbol"].tolist(), run_time  # universe order
        for column in mine.columns:
            if column in float_columns:  # the factor values: 1e-12 relative
                np.testing.assert_allclose(pd.to_numeric(mine[column]).to_numpy(float),
                                           pd.to_numeric(live_factors[column]).to_numpy(float),
                                           rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{run_time} {column}")
            else:  # the candle's own columns, as text: exact
                assert mine[column].tolist() == live_factors[column].tolist(), f"{run_time} {column}"

        lo, hi = tape.bounds[k], tape.bounds[k + 1]
        keep = ["symbol", "close", *cfg.columns]
        (picks,) = choose_hours((tape.frame.iloc[lo:hi][keep], np.array([0, hi - lo]), [run_time], cfg, face_values))
        sel = live[k]
        for side, frame, recorded in (("long", picks.long, live_long), ("short", picks.short, live_short)):
            assert frame["symbol"].tolist() == [p["symbol"] for p in sel[side]], f"{run_time} {side}"
            assert frame["symbol"].tolist() == recorded["symbol"].tolist(), f"{run_time} {side}"
            assert [str(p) for p in frame["position"]] == recorded["position"].tolist(), f"{run_time} {side}"
        assert picks.fresh == {s: Decimal(str(q)) for s, q in sel["targets"].items()}, run_time
