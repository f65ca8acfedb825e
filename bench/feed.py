"""The crawler's side: one market's hours written into one BMAC directory, in the orders the bench measures.

``services.market.sim.write_hour`` always writes exginfo first and each candle file just before its
marker. The bench needs two other orders, built from the same ``BmacDir`` writers:

* burst: every candle file and marker, then funding, then LAST exginfo. In follow mode the market
  starts a round when a newer exginfo marker appears, so creating that marker is the round start.
* live: the candle files first (no markers; the market reads a file only once its marker is
  there, so this does not change what the stack sees), then funding and exginfo (round start),
  then the markers alone, evenly over ``spread_sec``. Writing a 2000-symbol hour of feather files
  takes ~10 s here, so writing files between the markers could not fit in one second.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.market.sim import Market
from shared.bmac import EXGINFO, FUNDING, BmacDir


@dataclass(frozen=True)
class Started:
    """A round the feed started: its run_time and perf_counter() stamps in the bench process."""

    run_time: datetime
    started: float  # the exginfo marker was just created
    last_ready: float  # the last candle marker was just created (burst: before the round started)
    order: tuple[str, ...]  # the order the candle markers appeared in


@dataclass(frozen=True)
class _Hour:
    k: int
    run_time: datetime
    previous: datetime | None  # whose ready markers to replace (no glob over thousands of files)


def _mark(path: Path) -> float:
    """Create a ready marker as the crawler does (its text is the wall time) and return when it was done."""
    path.write_text(str(datetime.now().astimezone()))
    return time.perf_counter()


def mark_spread(bmac: BmacDir, run_time: datetime, order: Sequence[str], started: float, spread_sec: float) -> float:
    """Create the candle markers in ``order``, evenly over ``spread_sec`` from ``started``; when the last was done."""
    last_ready = started
    for i, symbol in enumerate(order):
        delay = started + spread_sec * i / len(order) - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        last_ready = _mark(bmac.candle_ready(symbol, run_time))
    return last_ready


class Feed:
    """Writes hour 0, 1, 2, ... of ``market`` into ``bmac``; each hour's frames are generated once."""

    def __init__(self, bmac: BmacDir, market: Market, spread_sec: float = 1.0, seed: int = 0):
        self.bmac = bmac
        bmac.root.mkdir(parents=True, exist_ok=True)  # the market warns while the crawler's directory is absent
        self.market = market
        self.spread_sec = spread_sec
        self.seed = seed
        self.next_k = 0
        self.last_run_time: datetime | None = None

    def next_run_time(self) -> datetime:
        """The run_time of the round the next ``burst`` or ``live`` starts."""
        return self.market.run_time(self.next_k)

    def _advance(self) -> _Hour:
        k = self.next_k
        self.next_k += 1
        return _Hour(k, self.market.run_time(k), self.market.run_time(k - 1) if k > 0 else None)

    def _write_candles(self, hour: _Hour, marked: bool) -> list[str]:
        """Generate and write the hour's candle files (with their markers when ``marked``); returns their
        symbols, sorted. The frames are freed here, before the round starts: freeing 2000 of them takes the
        bench process 10-40 ms, which it must not spend while it waits for the round's files."""
        frames = self.market.candles(hour.k)
        symbols = sorted(frames)
        for symbol in symbols:
            self.bmac.write_candles(symbol, frames[symbol], hour.run_time if marked else None, hour.previous)
        return symbols

    def _start_round(self, hour: _Hour) -> float:
        """Funding (file and marker), the exginfo file, then the exginfo marker: the round start."""
        self.bmac.write_funding(self.market.funding(hour.k), hour.run_time, hour.previous)
        self.bmac.write_exginfo(self.market.exginfo(), None, hour.previous)
        self.last_run_time = hour.run_time
        return _mark(self.bmac.exginfo_ready(hour.run_time))

    def burst(self) -> Started:
        """Every candle file and marker present when the round starts."""
        hour = self._advance()
        order = self._write_candles(hour, marked=True)
        last_ready = time.perf_counter()
        return Started(hour.run_time, self._start_round(hour), last_ready, tuple(order))

    def live(self) -> Started:
        """The round starts, then the candle markers appear in a seeded random order over spread_sec."""
        hour = self._advance()
        order = self._write_candles(hour, marked=False)  # unmarked: the order they are written in does not show
        random.Random(self.seed * 1_000_003 + hour.k).shuffle(order)
        started = self._start_round(hour)
        last_ready = mark_spread(self.bmac, hour.run_time, order, started, self.spread_sec)
        return Started(hour.run_time, started, last_ready, tuple(order))

    def mirror(self, into: BmacDir, start: Started) -> None:
        """The round's files, hard-linked into a fresh ``into`` with exginfo and funding marked ready and no
        candle marker yet: the same files for a second program to see appear (``mark_spread``)."""
        shutil.rmtree(into.root, ignore_errors=True)
        into.candle_dir.mkdir(parents=True)
        into.exginfo_dir.mkdir(parents=True)
        for symbol in start.order:
            os.link(self.bmac.candle_path(symbol), into.candle_path(symbol))
        for name in (EXGINFO, FUNDING):
            os.link(self.bmac.exginfo_dir / f"{name}.fea", into.exginfo_dir / f"{name}.fea")
        _mark(into.funding_ready(start.run_time))
        _mark(into.exginfo_ready(start.run_time))

    def forget_round(self) -> None:
        """Remove the newest exginfo marker, so a freshly started market waits for the next hour
        instead of starting a round on what a previous stack already saw."""
        if self.last_run_time is not None:
            self.bmac.exginfo_ready(self.last_run_time).unlink(missing_ok=True)
