"""The article's output files, written atomically.

    factor_his/coin_<YYYYmmdd_HHMMSS>.csv.zip     every factor row of the round
    select_his/<YYYYmmdd_HHMMSS>_long.csv.zip     the long side, minus the raw candle columns
    select_his/<YYYYmmdd_HHMMSS>_short.csv.zip    the short side, likewise
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pandas as pd

# The article's save_selected drops these; a source without some of them (the real data set has no
# taker columns) simply has less to drop.
SELECT_DROP_COLUMNS = (
    "open", "high", "low", "close_time", "volume", "trade_num", "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)


def history_paths(workdir: str | Path, run_time: datetime) -> dict[str, Path]:
    workdir = Path(workdir)
    return {
        "factor": workdir / "factor_his" / run_time.strftime("coin_%Y%m%d_%H%M%S.csv.zip"),
        "long": workdir / "select_his" / run_time.strftime("%Y%m%d_%H%M%S_long.csv.zip"),
        "short": workdir / "select_his" / run_time.strftime("%Y%m%d_%H%M%S_short.csv.zip"),
    }


def write_csv_zip(df: pd.DataFrame, path: Path) -> None:
    """to_csv into a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.to_csv(tmp, index=False, compression={"method": "zip", "archive_name": path.name[: -len(".zip")]})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_round(workdir: str | Path, run_time: datetime, factors: pd.DataFrame,
                long: pd.DataFrame, short: pd.DataFrame) -> dict[str, Path]:
    """Write the round's three files; the selection files first, as the article does."""
    paths = history_paths(workdir, run_time)
    write_csv_zip(long.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in long.columns]), paths["long"])
    write_csv_zip(short.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in short.columns]), paths["short"])
    write_csv_zip(factors, paths["factor"])
    return paths
