"""The article's output files, written atomically, plus the selection itself.

    factor_his/coin_<YYYYmmdd_HHMMSS>.csv.zip     every factor row of the round (plus a several-factor
                                                  strategy's composite column(s), empty outside the pool)
    select_his/<YYYYmmdd_HHMMSS>_long.csv.zip     the long side, minus the raw candle columns
    select_his/<YYYYmmdd_HHMMSS>_short.csv.zip    the short side, likewise
    selection_his/<YYYYmmdd_HHMMSS>.json          alphabus's addition: the whole Selection message
                                                  (coverage, shortfall, flags) as JSON
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from shared.durable import write_atomic
from shared.messages import Selection

# The article's save_selected drops these; a source without some of them (the real data set has no
# taker columns) simply has less to drop.
SELECT_DROP_COLUMNS = (
    "open", "high", "low", "close_time", "volume", "trade_num", "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)


def history_paths(workdir: str | Path, run_time: datetime) -> dict[str, Path]:
    workdir = Path(workdir)
    return {
        "long": workdir / "select_his" / run_time.strftime("%Y%m%d_%H%M%S_long.csv.zip"),
        "short": workdir / "select_his" / run_time.strftime("%Y%m%d_%H%M%S_short.csv.zip"),
        "factor": workdir / "factor_his" / run_time.strftime("coin_%Y%m%d_%H%M%S.csv.zip"),
        "selection": workdir / "selection_his" / run_time.strftime("%Y%m%d_%H%M%S.json"),
    }


def write_csv_zip(df: pd.DataFrame, path: Path) -> None:
    archive = path.name[: -len(".zip")]  # what pandas would name it from the final path
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False,
                                             compression={"method": "zip", "archive_name": archive}))


def _selected(side: pd.DataFrame) -> pd.DataFrame:
    return side.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in side.columns])


def write_round(workdir: str | Path, selection: Selection, factors: pd.DataFrame,
                long: pd.DataFrame, short: pd.DataFrame) -> dict[str, Path]:
    """The round's files, selections first as in the article; the JSON last marks the round complete."""
    paths = history_paths(workdir, selection.run_time)
    write_csv_zip(_selected(long), paths["long"])
    write_csv_zip(_selected(short), paths["short"])
    write_csv_zip(factors, paths["factor"])
    write_atomic(paths["selection"],
                 lambda tmp: tmp.write_text(selection.model_dump_json(indent=1), encoding="utf-8"))
    return paths
