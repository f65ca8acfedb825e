"""The mean funding_rate over the last n candles (hours without a funding event count as 0.0)."""


def signal(*args):
    df = args[0]
    n = args[1]
    factor_name = args[2]
    df[factor_name] = df["funding_rate"].rolling(n, min_periods=1).mean()
    return df
