"""A candle history for the backtest: every symbol's candles in the crawler's columns, exchange rules, funding.

Three layouts are read:

* the real data set (``../shared/data/binance_usdm_1h``), through the replay's own loader
  (``services.market.sim.ReplayMarket``), so the backtest and the live replay see the same frames;
* a BMAC directory (``usdt_swap_1h/<SYMBOL>.fea``, ``exginfo_1h/exginfo.fea`` and ``funding.fea``);
* a folder of ``<SYMBOL>.fea`` files holding long histories with ``exginfo.fea`` (and optionally
  ``funding.fea``) beside them.

Bad input is named and survived: duplicate hours keep the later row, a gap stays a gap (the crawler's
file would not hold the hour either), a zero, infinite or NaN close stays and every hour whose file holds it is
skipped as the live factor worker skips it, a symbol with no exchange info is not traded (as live).
Each problem is one sentence in ``History.problems`` and counted in the stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.bmac import (
    CANDLE_COLUMNS,
    REQUIRED_CANDLE_COLUMNS,
    BmacDir,
    FundingEvents,
    bad_closes,
    clean_exginfo,
    funding_events,
)
from shared.errors import UserMistake

HOUR_MS = 3_600_000


class BadHistory(UserMistake):
    """The history cannot be used at all (no candles, no exchange info): one sentence saying why."""


@dataclass
class SymbolHistory:
    """One symbol's candles, oldest first, unique hours; ``bad_close`` marks rows the live check rejects."""

    symbol: str
    frame: pd.DataFrame  # the crawler's columns, as its feather file holds them
    begin_ms: np.ndarray  # candle_begin_time, ms since the epoch
    bad_close: np.ndarray  # close NaN, infinite or <= 0


@dataclass
class History:
    symbols: dict[str, SymbolHistory]
    exginfo: pd.DataFrame  # the crawler's exginfo columns, cleaned as the market cleans them
    funding: FundingEvents
    source: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def universe(self) -> list[str]:
        """Symbols the market would announce (exginfo order) that have candles."""
        return [s for s in self.exginfo["symbol"].astype(str) if s in self.symbols]

    def first_ms(self) -> int:
        return min(int(h.begin_ms[0]) for h in self.symbols.values())

    def last_ms(self) -> int:
        return max(int(h.begin_ms[-1]) for h in self.symbols.values())


def _note(problems: list[str], counts: dict[str, int], kind: str, text: str, n: int = 1) -> None:
    problems.append(text)
    counts[kind] = counts.get(kind, 0) + n


def _stamp(ms: int, tz: str) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").tz_convert(tz))


def clean_candles(df: pd.DataFrame, symbol: str, tz: str, problems: list[str],
                  counts: dict[str, int]) -> SymbolHistory | None:
    """Sorted, one row per hour, with its problems named; None (and a problem) when unusable."""
    missing = [c for c in REQUIRED_CANDLE_COLUMNS if c not in df.columns]
    if missing:
        _note(problems, counts, "unusable_symbols", f"{symbol}: no column(s) {', '.join(missing)}; not traded")
        return None
    if df.empty:
        _note(problems, counts, "unusable_symbols", f"{symbol}: no candles; not traded")
        return None
    times = pd.to_datetime(df["candle_begin_time"])
    if times.dt.tz is None:
        times = times.dt.tz_localize(tz)
    df = df.assign(candle_begin_time=times)
    ms = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    if (ms[1:] < ms[:-1]).any():  # the crawler's and the data set's files are in order: no copy for them
        order = np.argsort(ms, kind="stable")
        df, ms = df.iloc[order].reset_index(drop=True), ms[order]
    else:
        df = df.reset_index(drop=True)
    dup = np.r_[ms[1:] == ms[:-1], False]  # a row followed by one of the same hour: the later one is kept
    if dup.any():
        _note(problems, counts, "duplicate_hours", f"{symbol}: {int(dup.sum())} duplicate hour(s), first "
              f"{_stamp(int(ms[np.argmax(dup)]), tz)}; the later row of each is kept", int(dup.sum()))
        df, ms = df.loc[~dup].reset_index(drop=True), ms[~dup]
    steps = np.diff(ms)
    gaps = steps > HOUR_MS
    if gaps.any():
        hours = int((steps[gaps] // HOUR_MS - 1).sum())
        _note(problems, counts, "missing_hours", f"{symbol}: {hours} missing hour(s) in {int(gaps.sum())} gap(s), "
              f"first after {_stamp(int(ms[np.argmax(gaps)]), tz)}; no round has it then (nor would live)", hours)
    close = pd.to_numeric(df["close"], errors="coerce").to_numpy(np.float64)
    bad = bad_closes(close)
    if bad.any():
        _note(problems, counts, "bad_prices", f"{symbol}: {int(bad.sum())} zero, infinite or NaN close(s), first at "
              f"{_stamp(int(ms[np.argmax(bad)]), tz)}; every hour whose file holds one skips {symbol} "
              f"(the live check rejects that file)", int(bad.sum()))
    columns = [c for c in CANDLE_COLUMNS if c in df.columns]
    return SymbolHistory(symbol, df[columns], ms, bad)


def _read_feather(path: Path, problems: list[str], counts: dict[str, int]) -> pd.DataFrame | None:
    try:
        return pd.read_feather(path)
    except Exception as e:
        _note(problems, counts, "unusable_symbols", f"{path}: unreadable ({type(e).__name__}: {e}); not traded")
        return None


def load_history(path: Path, tz: str, interval: str = "1h") -> History:
    """The history at ``path`` in any of the three layouts; BadHistory if none fits."""
    path = Path(path)
    if not path.is_dir():
        raise BadHistory(f"--data {path}: no such folder")
    problems: list[str] = []
    counts: dict[str, int] = {}
    if all((path / name).is_file() for name in ("candles_top100.parquet", "exchangeinfo_top100.csv")):
        frames, exginfo, funding = _dataset(path, tz)
    else:
        bmac = BmacDir(path, interval)
        folder, rules = (bmac.candle_dir, bmac.exginfo_dir) if bmac.candle_dir.is_dir() else (path, path)
        if not (rules / "exginfo.fea").is_file():
            raise BadHistory(f"--data {path}: neither the data set's candles_top100.parquet nor a candle folder with "
                             f"{rules / 'exginfo.fea'}; give ../shared/data/binance_usdm_1h, a BMAC directory or "
                             "a folder of <SYMBOL>.fea files with exginfo.fea beside them")
        exginfo = pd.read_feather(rules / "exginfo.fea")
        funding = funding_events(pd.read_feather(rules / "funding.fea"), tz) if (rules / "funding.fea").is_file() \
            else {}
        frames = {}
        for file in sorted(folder.glob("*.fea")):
            if file.stem in ("exginfo", "funding"):
                continue
            df = _read_feather(file, problems, counts)
            if df is not None:
                frames[file.stem] = df
    exginfo, dropped = clean_exginfo(exginfo)
    for text in dropped:
        _note(problems, counts, "bad_exginfo_rows", text)
    symbols = {}
    for symbol, df in frames.items():
        cleaned = clean_candles(df, symbol, tz, problems, counts)
        if cleaned is not None:
            symbols[symbol] = cleaned
    if not symbols:
        raise BadHistory(f"--data {path}: no usable candles")
    listed = set(exginfo["symbol"].astype(str))
    for symbol in sorted(set(symbols) - listed):
        _note(problems, counts, "no_exginfo", f"{symbol}: candles but no exchange info; not traded (as live)")
    return History(symbols, exginfo.reset_index(drop=True), funding, str(path), problems, counts)


def _dataset(path: Path, tz: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, FundingEvents]:
    """The real data set through the replay's loader: every candle of every symbol, all funding events."""
    from services.market.sim import ReplayMarket

    everything = 10**9  # a file long enough to hold the whole history
    market = ReplayMarket(path, history=everything, first_hour=1, tz=tz)
    last = market.hours - 1
    return market.candles(last), market.exginfo(), funding_events(market.funding(last), tz)
