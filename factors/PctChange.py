"""Plain momentum: the close's change over back_hour candles (with the article's optional fractional difference)."""

import pandas as pd

from utils.diff import add_diff


def signal(*args):
    df: pd.DataFrame = args[0]
    n = args[1]
    diff_num = args[2]
    factor_name = args[3]

    df[factor_name] = df["close"].pct_change(n)

    if diff_num > 0:
        return add_diff(df, diff_num, factor_name)
    return df
