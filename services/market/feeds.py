"""Where a round's files come from: the crawler's directory, or the real data set replayed from memory."""

from __future__ import annotations

import io
import logging
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from services.market.watch import NewFiles
from shared.bmac import BmacDir, clean_exginfo, max_file_bytes, read_bounded
from shared.clock import ready_stamp

log = logging.getLogger("market")
RESCAN_SEC = 0.05
POLL_SEC = 0.002


class ExginfoCheck:
    """Cleans each round's exginfo; each problem is warned once per process, not once per round."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def __call__(self, exginfo: pd.DataFrame, source: str) -> pd.DataFrame:
        exginfo, problems = clean_exginfo(exginfo)
        for problem in problems:
            if problem not in self._warned and len(self._warned) < 10_000:
                self._warned.add(problem)
                log.warning("%s: %s", source, problem)
        return exginfo


class DirectoryFeed:
    """The crawler's directory: markers say what is ready, files are read as written."""

    def __init__(self, bmac: BmacDir):
        self.bmac = bmac
        self._new: NewFiles | None = None
        self._markers: NewFiles | None = None
        self._markers_tried = False
        self._check = ExginfoCheck()
        self._exginfo: tuple[bytes, pd.DataFrame] | None = None  # the file's bytes and their cleaned frame
        self.max_bytes = max_file_bytes()

    def marker_watch(self) -> NewFiles | None:
        """New files in the crawler's exginfo folder (its round markers), once the folder exists: the market
        polls this with its sockets, so a round starts the moment its marker appears, not at the next poll."""
        if not self._markers_tried and self.bmac.exginfo_dir.is_dir():
            self._markers_tried = True
            self._markers = NewFiles.open(self.bmac.exginfo_dir)
        return self._markers

    def wait_ready(self, run_time: datetime, timeout: float) -> set[str]:
        """Symbols whose marker appeared, as soon as one does (inotify), else by listing the directory.

        With inotify the directory is still listed every RESCAN_SEC while nothing happens, so an
        event lost (a full queue, a filesystem that sends none) costs at most that long.
        """
        if self._new is None and self.bmac.candle_dir.is_dir():
            self._new = NewFiles.open(self.bmac.candle_dir)
            return self.ready_candles(run_time)  # what appeared before the watch
        if self._new is None:
            time.sleep(min(timeout, POLL_SEC))
            return self.ready_candles(run_time)
        names = self._new.wait(min(timeout, RESCAN_SEC))
        if not names:
            return self.ready_candles(run_time)
        return self._ready_among(names, run_time)

    def more_ready(self, run_time: datetime, timeout: float) -> set[str]:
        """Symbols whose marker appears within ``timeout`` by the inotify watch alone: no listing, so a caller
        can gather markers in short waits (none without a watch; ``wait_ready`` still finds them)."""
        return self._ready_among(self._new.wait(timeout), run_time) if self._new is not None else set()

    @staticmethod
    def _ready_among(names: list[str], run_time: datetime) -> set[str]:
        suffix = f"_{ready_stamp(run_time)}.ready"
        return {n[: -len(suffix)] for n in names if n.endswith(suffix)}

    def describe(self) -> str:
        return f"the crawler's directory {self.bmac.root}"

    def awaited(self, run_time: datetime) -> list[tuple[str, Path]]:
        """What must exist before the round starts (exginfo and funding markers)."""
        return [("exginfo", self.bmac.exginfo_ready(run_time)), ("funding", self.bmac.funding_ready(run_time))]

    def exginfo(self, run_time: datetime) -> pd.DataFrame:
        """The cleaned exginfo; the same frame object while the file's bytes do not change.

        The crawler rewrites exginfo every hour, almost always unchanged: comparing the bytes costs far
        less than parsing and cleaning them (~8 ms on a round's path), and an unchanged frame lets the
        market reuse what it built from it (``Market._symbol_specs``).
        """
        data = read_bounded(self.bmac.exginfo_path, self.max_bytes)
        if self._exginfo is None or self._exginfo[0] != data:
            frame = self._check(pd.read_feather(io.BytesIO(data)), str(self.bmac.exginfo_dir))
            self._exginfo = (data, frame)
        return self._exginfo[1]

    def funding(self, run_time: datetime) -> pd.DataFrame:
        return self.bmac.read_funding()

    def candle_symbols(self) -> set[str]:
        return self.bmac.candle_symbols()

    def ready_candles(self, run_time: datetime) -> set[str]:
        return self.bmac.ready_candles(run_time)

    def candle_source(self, symbol: str) -> str:
        return str(self.bmac.candle_path(symbol))

    def candle(self, symbol: str) -> tuple[bytes, str]:
        """The file's bytes (empty if unreadable or over the size limit: the factor worker reports it,
        named by the source text) and its path."""
        path = self.bmac.candle_path(symbol)
        try:
            return read_bounded(path, self.max_bytes), str(path)
        except OSError as e:
            return b"", f"{path} ({e})"

    def why_missing(self, symbol: str, run_time: datetime) -> str:
        if not self.bmac.candle_path(symbol).exists():
            return f"no candle file {self.bmac.candle_path(symbol)}"
        return f"no ready marker {self.bmac.candle_ready(symbol, run_time).name} within bmac_expire_sec"


class ReplayFeed:
    """The real data set, hour after hour as fast as the stack goes, with no disk in between."""

    def __init__(self, data_dir: Path, tz: str, first_hour: int | None = None):
        from services.market.sim import ReplayMarket

        self.data_dir = data_dir
        self.market = ReplayMarket(data_dir, first_hour=first_hour, tz=tz)
        self._loaded: datetime | None = None
        self._files: dict[str, object] = {}
        self._check = ExginfoCheck()

    def describe(self) -> str:
        return f"a replay of {self.data_dir} ({self.market.hours} hours)"

    def run_time(self, k: int) -> datetime:
        return self.market.run_time(k)

    def awaited(self, run_time: datetime) -> list[tuple[str, Path]]:
        return []

    def marker_watch(self) -> None:
        return None

    def exginfo(self, run_time: datetime) -> pd.DataFrame:
        return self._check(self.market.exginfo(), str(self.data_dir))

    def funding(self, run_time: datetime) -> pd.DataFrame:
        return self.market.funding(self._hour_of(run_time))

    def _hour_of(self, run_time: datetime) -> int:
        return round((run_time - self.market.run_time(0)).total_seconds() / 3600)

    def _files_at(self, run_time: datetime) -> dict[str, object]:
        """The hour's candle files, serialised once per round."""
        if self._loaded != run_time:
            self._files, self._loaded = self.market.candle_files(self._hour_of(run_time)), run_time
        return self._files

    def candle_symbols(self) -> set[str]:
        return set(self.market.symbols)

    def ready_candles(self, run_time: datetime) -> set[str]:
        return set(self._files_at(run_time))

    def wait_ready(self, run_time: datetime, timeout: float) -> set[str]:
        return self.ready_candles(run_time)

    def candle_source(self, symbol: str) -> str:
        return f"{self.data_dir}:{symbol}"

    def candle(self, symbol: str) -> tuple[object, str]:
        return self._files[symbol], f"{self.candle_source(symbol)}@{self._loaded}"

    def why_missing(self, symbol: str, run_time: datetime) -> str:
        return "not listed yet in the replayed data"
