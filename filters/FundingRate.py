"""Funding paid over the last n candles: the sum of the funding_rate column (a funding-carry filter).

``funding_rate`` is the rate of the funding event settled at each candle's close, 0.0 where none was.
"""


def signal(*args):
    df = args[0]
    n = args[1]
    factor_name = args[2]
    df[factor_name] = df["funding_rate"].rolling(n, min_periods=1).sum()
    return df
