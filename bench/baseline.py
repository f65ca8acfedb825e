"""The baseline: the article's single-process per-symbol pandas loop (``tests/reference.py``) on the same files.

burst: ``article_round`` timed as a whole, exactly as the tests use it.

live: the article busy-waits for ready files and computes each symbol as it appears, so once the
last marker is there it still has to read and compute that symbol, then run the cross-section
steps (frame of rows, NaN/inf filter, pre-filters, select, size) on the whole universe. The
reference does not expose its loop body, so ``symbol_row`` and ``cross_section`` below are
``article_round`` cut at that seam, built from the reference's own helpers, and the bench checks
that they pick the same coins as the stack each round.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd

from shared.bmac import BmacDir
from shared.messages import Selection
from tests.reference import (
    article_config,
    article_round,
    assign_position,
    chg_pct_max,
    filiter_nan_inf,
    filter_before,
    mtm_atr_mean,
    select_coin,
    volume,
)

CONFIG = article_config("")
_, REVERSE, BACK_HOUR = CONFIG["factor"][:3]
FACTOR = f"MtmAtrMean_bh_{BACK_HOUR}"
CHG, VOL = "ChgPctMax_fl_24", "Volume_fl_24"


@dataclass(frozen=True)
class Picks:
    """What a round decides: (symbol, position) on each side, in order."""

    long: tuple[tuple[str, Decimal], ...]
    short: tuple[tuple[str, Decimal], ...]

    @classmethod
    def of_frames(cls, long: pd.DataFrame, short: pd.DataFrame) -> Picks:
        side = lambda df: tuple((str(s), Decimal(p)) for s, p in zip(df["symbol"], df["position"], strict=True))  # noqa: E731
        return cls(side(long), side(short))

    @classmethod
    def of_selection(cls, sel: Selection) -> Picks:
        return cls(tuple((p.symbol, p.position) for p in sel.long), tuple((p.symbol, p.position) for p in sel.short))


def burst_baseline(bmac: BmacDir, run_time: datetime) -> tuple[float, Picks]:
    """Seconds for one whole ``article_round`` call, and what it picked."""
    t0 = time.perf_counter()
    _, long, short = article_round(bmac.root, run_time)
    return time.perf_counter() - t0, Picks.of_frames(long, short)


def symbol_row(bmac: BmacDir, symbol: str, run_time: datetime) -> pd.Series | None:
    """The article's loop body for one symbol: read its file, compute, keep the newest row (None: skipped)."""
    if not bmac.candle_ready(symbol, run_time).exists():
        return None
    df = pd.read_feather(bmac.candle_path(symbol))
    if len(df) < CONFIG["min_candle_num"] or df["candle_begin_time"].iloc[-1] != run_time - timedelta(hours=1):
        return None
    df["symbol"] = symbol
    df[FACTOR] = mtm_atr_mean(df, BACK_HOUR)
    df[CHG] = chg_pct_max(df, 24)
    df[VOL] = volume(df, 24)
    return df.iloc[-1]


def cross_section(rows: list[pd.Series], exginfo: pd.DataFrame) -> Picks:
    """The article's steps after the loop, on the whole universe: filter, rank, select, size."""
    df = filter_before(filiter_nan_inf(pd.DataFrame(rows).reset_index(drop=True), [FACTOR, CHG, VOL]))
    long, short = select_coin(df, FACTOR, REVERSE, CONFIG["long_num"], CONFIG["short_num"])
    long, short = assign_position(long, short, exginfo, CONFIG["capital_usdt"], CONFIG["long_num"],
                                  CONFIG["short_num"])
    return Picks.of_frames(long, short)


def queued_finish(arrivals: list[float], durations: list[float]) -> float:
    """When a one-at-a-time loop is done with the last arrival, counted from that arrival.

    Symbol i arrives at arrivals[i] and takes durations[i]; a loop slower than the arrivals falls
    behind, which the "last symbol alone" figure ignores.
    """
    done = 0.0
    for arrived, took in zip(arrivals, durations, strict=True):
        done = max(done, arrived) + took
    return max(0.0, done - arrivals[-1])


@dataclass(frozen=True)
class LiveBaseline:
    """The article's live tail, measured in parts (seconds)."""

    symbol: float  # read + compute one symbol: the median over the round's fully computed symbols
    cross_section: float  # frame of rows, filters, select, size on the whole universe
    queued: float  # if the loop cannot keep up with the arrivals: backlog at the last arrival + cross-section
    picks: Picks

    @property
    def total(self) -> float:
        return self.symbol + self.cross_section


def live_baseline(bmac: BmacDir, run_time: datetime, order: tuple[str, ...], spread_sec: float) -> LiveBaseline:
    """Run the article's loop in the order the markers appeared, timing each symbol and the cross-section.

    The "last symbol" is timed as the median of every fully computed symbol, so the figure does not
    depend on whether the shuffle happened to put a young (skipped) listing last.
    """
    exginfo = pd.read_feather(bmac.exginfo_dir / "exginfo.fea").set_index("symbol")  # read at round start
    rows: list[pd.Series] = []
    durations: list[float] = []
    computed: list[float] = []
    for symbol in order:
        t0 = time.perf_counter()
        row = symbol_row(bmac, symbol, run_time)
        durations.append(time.perf_counter() - t0)
        if row is not None:
            rows.append(row)
            computed.append(durations[-1])
    t0 = time.perf_counter()
    picks = cross_section(rows, exginfo)
    cross = time.perf_counter() - t0
    arrivals = [spread_sec * i / len(order) for i in range(len(order))]
    return LiveBaseline(statistics.median(computed), cross, queued_finish(arrivals, durations) + cross, picks)
