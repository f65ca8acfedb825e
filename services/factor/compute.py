"""One symbol's factor row from its candle file: the article's per-symbol loop body, guarded."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from shared.bmac import BadCandles, check_candles, decode_candles
from shared.messages import Skip
from shared.plugins import Calculator, PluginError


class Skipped(Exception):
    """This symbol sits this round out; ``skip`` says why."""

    def __init__(self, skip: Skip):
        self.skip = skip
        super().__init__(f"{skip.symbol}: {skip.reason}: {skip.detail}")


def factor_row(
    data: bytes | memoryview,
    source: str,
    symbol: str,
    calculators: Sequence[Calculator],
    min_candle_num: int,
    closed_candle_begin: datetime,
) -> pd.DataFrame:
    """The newest candle's row with every factor and filter column, as a one-row frame.

    ``closed_candle_begin`` is the open time of the candle that just closed
    (run_time - interval); a file whose newest candle is older is stale.
    """
    try:
        df = decode_candles(data, source)
        check_candles(df, source)
    except BadCandles as e:
        raise Skipped(Skip(symbol=symbol, reason="bad_data", detail=str(e))) from None
    if len(df) < min_candle_num:
        raise Skipped(Skip(symbol=symbol, reason="too_few_candles",
                           detail=f"{len(df)} candles < min_candle_num {min_candle_num}"))
    newest = df["candle_begin_time"].iat[-1]
    if newest != closed_candle_begin:
        raise Skipped(Skip(symbol=symbol, reason="stale",
                           detail=f"newest candle opens {newest}, expected {closed_candle_begin}"))
    df["symbol"] = symbol
    try:
        for calc in calculators:
            df = calc(df)
    except PluginError as e:
        raise Skipped(Skip(symbol=symbol, reason="error", detail=str(e))) from None
    return df.iloc[[-1]]
