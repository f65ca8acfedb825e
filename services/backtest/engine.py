"""The hourly driver: each hour's factor table, the live strategy core on it, and the shared paper book.

Per hour, exactly what the position service does in ``rounds.build_selection``: the factor rows in
universe (exginfo) order, ``candidate_pool``, symbols without a lot size left out, then the core
(``strategy_hours``: the same functions the service calls for its one hour, here given a panel of
many hours at once), the offsets' books carried from the previous hour. The book (``shared.book``,
the one ``alphabus paper`` keeps) then trades to the hour's targets at its closes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from services.backtest.factors import SymbolFactors
from services.backtest.history import HOUR_MS, History
from services.position.strategy import HOUR, candidate_pool, hour_keys, offset_targets, strategy_hours, sum_targets
from shared.bmac import lot_sizes
from shared.book import PaperBook, RoundOutcome, trade_round
from shared.clock import zone
from shared.config import SelectorConfig

ORDER, RUN_MS = "_universe_order", "_run_ms"


@dataclass
class Tape:
    """Every hour's factor rows, in run order then universe order, sliced per hour without copying."""

    frame: pd.DataFrame
    run_ms: np.ndarray  # one per hour of the run
    bounds: np.ndarray  # rows of hour i are frame[bounds[i]:bounds[i+1]]

    def factors(self, i: int) -> pd.DataFrame:
        """Hour i's factor table as the position service receives it."""
        part = self.frame.iloc[self.bounds[i]:self.bounds[i + 1]]
        return part.drop(columns=[ORDER, RUN_MS]).reset_index(drop=True)


def build_tape(history: History, factors: dict[str, SymbolFactors], columns: list[str], run_ms: np.ndarray) -> Tape:
    """The live factor rows: the file's newest candle, then ``symbol``, then the factor and filter columns."""
    parts, added = [], {"symbol": [], **{c: [] for c in columns}, ORDER: [], RUN_MS: []}
    for order, symbol in enumerate(history.universe):
        sf = factors.get(symbol)
        if sf is None or len(sf.rows) == 0:
            continue
        sh = history.symbols[symbol]
        parts.append(sh.frame.iloc[sf.rows])
        added["symbol"].append(np.full(len(sf.rows), symbol, dtype=object))
        for c in columns:
            added[c].append(sf.values[c])
        added[ORDER].append(np.full(len(sf.rows), order))
        added[RUN_MS].append(sh.begin_ms[sf.rows] + HOUR_MS)
    if parts:  # the added columns once for all symbols: inserting them into each symbol's frame cost more
        frame = pd.concat(parts, ignore_index=True).assign(**{c: np.concatenate(v) for c, v in added.items()})
        frame = frame.sort_values([RUN_MS, ORDER], kind="stable", ignore_index=True)
    else:
        frame = pd.DataFrame({"symbol": pd.Series([], dtype=str), "close": pd.Series([], dtype=float),
                              **{c: pd.Series([], dtype=float) for c in columns},
                              ORDER: pd.Series([], dtype=int), RUN_MS: pd.Series([], dtype=np.int64)})
    bounds = np.searchsorted(frame[RUN_MS].to_numpy(np.int64), np.r_[run_ms, run_ms[-1] + 1])
    return Tape(frame, run_ms, bounds)


@dataclass
class Prices:
    """Each symbol's close at each run hour (NaN: no usable candle then) and the hour its data ends."""

    symbols: list[str]
    close: np.ndarray  # (hours, symbols)
    last_run_ms: dict[str, int]
    column: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, history: History, run_ms: np.ndarray) -> Prices:
        symbols = list(history.symbols)
        close = np.full((len(run_ms), len(symbols)), np.nan)
        for j, s in enumerate(symbols):
            sh = history.symbols[s]
            at = np.searchsorted(run_ms, sh.begin_ms + HOUR_MS)
            inside = (at < len(run_ms)) & (run_ms[np.minimum(at, len(run_ms) - 1)] == sh.begin_ms + HOUR_MS)
            values = pd.to_numeric(sh.frame["close"], errors="coerce").to_numpy(np.float64)
            close[at[inside], j] = np.where(values[inside] > 0, values[inside], np.nan)
        last = {s: int(history.symbols[s].begin_ms[-1]) + HOUR_MS for s in symbols}
        return cls(symbols, close, last, {s: j for j, s in enumerate(symbols)})

    def at(self, i: int, symbols: set[str]) -> dict[str, float]:
        """The closes at hour i of those ``symbols`` that have one."""
        row = self.close[i].tolist()  # Python floats: a numpy scalar per lookup cost more than the whole row
        out = {}
        for s in symbols:
            j = self.column.get(s)
            if j is not None and math.isfinite(row[j]):
                out[s] = row[j]
        return out


def funding_at(history: History) -> dict[int, dict[str, float]]:
    """run_ms -> the rates settled then, by symbol (each event stamped at its hour)."""
    out: dict[int, dict[str, float]] = {}
    for symbol, (times, rates) in history.funding.items():
        for t, r in zip(times.tolist(), rates.tolist(), strict=True):
            out.setdefault(int(t), {})[symbol] = r
    return out


def _pool(factors: pd.DataFrame, strategy: SelectorConfig, face_values: dict[str, Decimal]) -> pd.DataFrame:
    """``build_selection``'s pool: candidate_pool, minus symbols the exchange gives no lot size."""
    pool = candidate_pool(factors, strategy)
    return pool[pool["symbol"].isin(face_values.keys()).to_numpy(dtype=bool)]


@dataclass
class Sides:
    """A run of hours' sized sides as panels (HOUR-keyed), an hour cut out only when asked for."""

    long: pd.DataFrame
    short: pd.DataFrame
    run_times: list[datetime]

    def __post_init__(self) -> None:
        hours = np.arange(len(self.run_times) + 1)
        self._bounds = {side: np.searchsorted(hour_keys(frame), hours)
                        for side, frame in (("long", self.long), ("short", self.short))}

    def hour(self, side: str, i: int) -> pd.DataFrame:
        """Hour i's side as ``strategy_hour`` returns it (indexed by position in the hour's ordering)."""
        lo, hi = self._bounds[side][i:i + 2]
        return (self.long if side == "long" else self.short).iloc[lo:hi].drop(columns=HOUR)

    def records(self) -> list[dict[str, Any]]:
        """selections.csv's rows: hour by hour, the long picks then the short, each side in its order."""
        columns = {side: list(zip(*(frame[c].tolist() for c in ("symbol", "close", "position", "pos_val")),
                                  strict=True))
                   for side, frame in (("long", self.long), ("short", self.short))}
        rows = []
        for i, run_time in enumerate(self.run_times):
            stamp = run_time.isoformat()
            for side in ("long", "short"):
                lo, hi = self._bounds[side][i:i + 2]
                rows.extend({"run_time": stamp, "side": side, "symbol": symbol, "close": close, "position": position,
                             "pos_val": pos_val} for symbol, close, position, pos_val in columns[side][lo:hi])
        return rows


@dataclass
class Picks:
    """One hour's sized sides and what an offset rebalancing then holds."""

    sides: Sides
    i: int
    fresh: dict[str, Decimal]

    @property
    def long(self) -> pd.DataFrame:
        return self.sides.hour("long", self.i)

    @property
    def short(self) -> pd.DataFrame:
        return self.sides.hour("short", self.i)


@dataclass
class HourResult:
    run_time: datetime
    picks: Picks
    targets: dict[str, Decimal]
    outcome: RoundOutcome

    @property
    def long(self) -> pd.DataFrame:
        return self.picks.long

    @property
    def short(self) -> pd.DataFrame:
        return self.picks.short


HourJob = tuple[pd.DataFrame, np.ndarray, list[datetime], SelectorConfig, dict[str, Decimal]]


def choose_hours(job: HourJob) -> list[Picks]:
    """A run of hours through ``strategy_hours`` as one panel (no hour's choice depends on another's: the
    offsets, which do, are stepped afterwards, in order)."""
    frame, bounds, run_times, cfg, face_values = job
    hours = len(run_times)
    panel = frame.reset_index(drop=True)  # unique labels: the core finds picks in their pools by label
    panel[HOUR] = np.repeat(np.arange(hours), np.diff(bounds))
    chosen = strategy_hours(_pool(panel, cfg, face_values), face_values, cfg, cfg.capital_usdt, hours)
    sides = Sides(chosen.long, chosen.short, run_times)
    return [Picks(sides, i, fresh) for i, fresh in enumerate(chosen.fresh)]


def hour_jobs(tape: Tape, cfg: SelectorConfig, face_values: dict[str, Decimal], run_times: list[datetime],
              chunk: int) -> Iterator[HourJob]:
    """``choose_hours``' inputs, ``chunk`` hours each, with only the columns the strategy reads."""
    keep = ["symbol", "close", *cfg.columns]
    for a in range(0, len(run_times), chunk):
        b = min(a + chunk, len(run_times))
        lo, hi = tape.bounds[a], tape.bounds[b]
        frame = tape.frame.iloc[lo:hi][keep]
        # Plain Python strings and column labels, as the position service's frame has them
        # (rounds._strategy_frame): Arrow-backed strings cost an Arrow take or search on every selection.
        frame = frame.assign(symbol=frame["symbol"].astype(object))
        frame.columns = pd.Index(frame.columns.tolist(), dtype=object)
        yield (frame, tape.bounds[a:b + 1] - lo, run_times[a:b], cfg, face_values)


def run_hours(history: History, tape: Tape, cfg: SelectorConfig, book: PaperBook, chunk: int = 1024,
              progress: Callable[[int], None] | None = None) -> Iterator[HourResult]:
    """The hours in order: the strategy core on ``chunk`` hours at a time, the offsets stepped hour by hour,
    then the book. ``progress`` is told each hour's index."""
    face_values: dict[str, Decimal] = {s: v for s, v in lot_sizes(history.exginfo).items() if v is not None}
    prices = Prices.of(history, tape.run_ms)
    funding = funding_at(history)
    tz = zone(cfg.timezone)
    run_times = [datetime.fromtimestamp(ms / 1000, tz) for ms in tape.run_ms.tolist()]
    held: dict[int, dict[str, Decimal]] = {}
    period, offsets = cfg.period_hours, cfg.offset_list  # properties that parse the config: once, not hourly
    picks = (p for run in map(choose_hours, hour_jobs(tape, cfg, face_values, run_times, chunk)) for p in run)
    for i, (ms, run_time, hour) in enumerate(zip(tape.run_ms.tolist(), run_times, picks, strict=True)):
        held = offset_targets(held, run_time, period, offsets, hour.fresh)
        targets = sum_targets(held)
        closes = prices.at(i, set(targets) | set(book.holdings))
        delisted = {s for s in book.holdings if prices.last_run_ms.get(s, 0) < ms}
        carry = {s for s in book.holdings if s not in closes and s not in delisted}
        book, outcome = trade_round(book, run_time, targets, closes, funding=funding.get(ms),
                                    carry=carry, delisted=delisted)
        if progress is not None:
            progress(i)
        yield HourResult(run_time, hour, targets, outcome)
