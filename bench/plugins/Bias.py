"""A user's factor file as the community writes them, in plain pandas: the bias (乖离率) of the close.

The close against its n-hour moving average, through a helper column that the file removes again.
Shipped for ``python -m bench``: copied into the stack's work directory ``factors/`` and into the
original program's ``factors`` package, so both run this very file.
"""

import pandas as pd

from utils.diff import add_diff


def signal(*args):
    # Bias 乖离率: close / MA(n) - 1.
    df: pd.DataFrame = args[0]
    n = args[1]
    diff_num = args[2]
    factor_name = args[3]

    df["ma"] = df["close"].rolling(n, min_periods=1).mean()
    df[factor_name] = df["close"] / df["ma"] - 1
    del df["ma"]

    if diff_num > 0:
        return add_diff(df, diff_num, factor_name)
    return df
