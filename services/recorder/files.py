"""The article's output files, written atomically, plus the selection itself.

    factor_his/coin_<YYYYmmdd_HHMMSS>.csv.zip     every factor row of the round (plus a several-factor
                                                  strategy's composite column(s), empty outside the pool)
    select_his/<YYYYmmdd_HHMMSS>_long.csv.zip     the long side, minus the raw candle columns
    select_his/<YYYYmmdd_HHMMSS>_short.csv.zip    the short side, likewise
    selection_his/<YYYYmmdd_HHMMSS>.json          alphabus's addition: the whole Selection message
                                                  (coverage, shortfall, flags) as JSON

The CSV text is pandas' ``to_csv(index=False)`` of the round's tables, byte for byte; the recorder
formats the received Arrow tables itself (``csv_text``), because building a pandas frame and
writing it through pandas cost more than the rest of the round's path from selection to file.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

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


def write_text_zip(text: str, path: Path) -> None:
    """``text`` as the one member of a zip archive, named as pandas names it from the final path."""
    archive = path.name[: -len(".zip")]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(archive, text.encode("utf-8"))

    write_atomic(path, write)


def write_csv_zip(df: pd.DataFrame, path: Path) -> None:
    write_text_zip(df.to_csv(index=False), path)


def _csv_column(column: pa.ChunkedArray) -> list[str] | None:
    """A column's cells as pandas' ``to_csv`` writes them; None for a type this does not format as pandas does
    (nullable integers and booleans, naive or sub-second timestamps, anything else rarer)."""
    kind = column.type
    if pa.types.is_float64(kind) or pa.types.is_float32(kind):  # pandas: numpy's str, NaN and null empty
        values = column.to_numpy()
        text = values.astype(str)
        text[np.isnan(values)] = ""
        return text.tolist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ["" if v is None else v for v in column.to_pylist()]
    if column.null_count:
        return None
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(str).tolist()
    if pa.types.is_boolean(kind):
        return ["True" if v else "False" for v in column.to_pylist()]
    if pa.types.is_timestamp(kind) and kind.tz is not None and kind.unit != "ns":
        instants, which = np.unique(column.to_numpy(), return_inverse=True)  # a round's rows share an hour or few
        try:
            stamps = pa.array(instants, kind).to_pylist()
        except (OverflowError, ValueError):  # beyond Python's datetime: pandas' problem to write or refuse
            return None
        if all(t.microsecond == 0 and t.utcoffset().total_seconds() % 60 == 0 for t in stamps):
            text = [t.isoformat(sep=" ") for t in stamps]
            return [text[i] for i in which.tolist()]
    return None


def csv_text(table: pa.Table) -> str:
    """``table.to_pandas().to_csv(index=False)``, the same text, without the frame (tests hold it to that)."""
    columns = [_csv_column(c) for c in table.columns]
    if not columns or any(c is None for c in columns):
        return table.to_pandas().to_csv(index=False)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=os.linesep)  # pandas' dialect: ',', '"', QUOTE_MINIMAL
    writer.writerow(table.column_names)
    writer.writerows(zip(*columns, strict=True))
    return out.getvalue()


def _selected(side: pa.Table) -> pa.Table:
    return side.drop_columns([c for c in SELECT_DROP_COLUMNS if c in side.column_names])


def write_round(workdir: str | Path, selection: Selection, factors: pa.Table,
                long: pa.Table, short: pa.Table) -> dict[str, Path]:
    """The round's files, selections first as in the article; the JSON last marks the round complete."""
    paths = history_paths(workdir, selection.run_time)
    write_text_zip(csv_text(_selected(long)), paths["long"])
    write_text_zip(csv_text(_selected(short)), paths["short"])
    write_text_zip(csv_text(factors), paths["factor"])
    write_atomic(paths["selection"],
                 lambda tmp: tmp.write_text(selection.model_dump_json(indent=1), encoding="utf-8"))
    return paths
