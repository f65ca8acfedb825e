"""A user's factor file as the community writes them: TA-Lib's CCI (commodity channel index) of the candles.

Shipped for ``python -m bench``: copied into the stack's work directory ``factors/`` and into the
original program's ``factors`` package, so both run this very file.
"""

import pandas as pd
import talib as ta

from utils.diff import add_diff


def signal(*args):
    # CCI 顺势指标: how far the typical price strays from its n-hour mean, in mean deviations.
    df: pd.DataFrame = args[0]
    n = args[1]
    diff_num = args[2]
    factor_name = args[3]

    df[factor_name] = ta.CCI(df["high"], df["low"], df["close"], timeperiod=n)

    if diff_num > 0:
        return add_diff(df, diff_num, factor_name)
    return df
