"""Funding paid over the last back_hour candles, as a factor to rank by (with the article's optional
fractional difference). ``funding_rate`` is the rate settled at each candle's close, 0.0 where none was."""

import pandas as pd

from utils.diff import add_diff


def signal(*args):
    df: pd.DataFrame = args[0]
    n = args[1]
    diff_num = args[2]
    factor_name = args[3]

    df[factor_name] = df["funding_rate"].rolling(n, min_periods=1).sum()

    if diff_num > 0:
        return add_diff(df, diff_num, factor_name)
    return df
