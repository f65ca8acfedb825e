"""The hourly driver: each hour's factor table, the live strategy core on it, and the shared paper book.

Per hour, exactly what the position service does in ``rounds.build_selection``: the factor rows in
universe (exginfo) order, ``candidate_pool``, symbols without a lot size left out, ``strategy_hour``
with the offsets' books carried from the previous hour. The book (``shared.book``, the one
``alphabus paper`` keeps) then trades to the hour's targets at its closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import numpy as np
import pandas as pd

from services.backtest.factors import SymbolFactors
from services.backtest.history import HOUR_MS, History
from services.position.strategy import candidate_pool, offset_targets, strategy_hour, sum_targets
from shared.bmac import lot_sizes
from shared.book import PaperBook, RoundOutcome, trade_round
from shared.clock import zone
from shared.config import SelectorConfig

ORDER, RUN_MS = "_universe_order", "_run_ms"


@dataclass
class HourResult:
    run_time: datetime
    long: pd.DataFrame
    short: pd.DataFrame
    targets: dict[str, Decimal]
    outcome: RoundOutcome


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
    parts = []
    for order, symbol in enumerate(history.universe):
        sf = factors.get(symbol)
        if sf is None or len(sf.rows) == 0:
            continue
        sh = history.symbols[symbol]
        part = sh.frame.iloc[sf.rows].reset_index(drop=True)
        part["symbol"] = symbol
        for c in columns:
            part[c] = sf.values[c]
        part[ORDER] = order
        part[RUN_MS] = sh.begin_ms[sf.rows] + HOUR_MS
        parts.append(part)
    if parts:
        frame = pd.concat(parts, ignore_index=True).sort_values([RUN_MS, ORDER], kind="stable", ignore_index=True)
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
        row = self.close[i]
        out = {}
        for s in symbols:
            j = self.column.get(s)
            if j is not None and np.isfinite(row[j]):
                out[s] = float(row[j])
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
    return pool[np.array([s in face_values for s in pool["symbol"].tolist()], dtype=bool)]


@dataclass
class Picks:
    """One hour's sized sides and what an offset rebalancing then holds."""

    long: pd.DataFrame
    short: pd.DataFrame
    fresh: dict[str, Decimal]


HourJob = tuple[pd.DataFrame, np.ndarray, list[datetime], SelectorConfig, dict[str, Decimal]]


def choose_hours(job: HourJob) -> list[Picks]:
    """A run of hours through ``strategy_hour`` (no offset depends on the hour before for its choice: the
    offsets are stepped afterwards, in order), so a process pool can take runs of hours side by side."""
    frame, bounds, run_times, cfg, face_values = job
    out = []
    for i, run_time in enumerate(run_times):
        # An own 100-row copy: a view would make each copy-on-write in the core copy the whole chunk's block.
        factors = frame.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True).copy()
        hour = strategy_hour(_pool(factors, cfg, face_values), face_values, cfg, cfg.capital_usdt, run_time, {})
        out.append(Picks(hour.long, hour.short, hour.fresh))
    return out


def hour_jobs(tape: Tape, cfg: SelectorConfig, face_values: dict[str, Decimal], run_times: list[datetime],
              chunk: int) -> Iterator[HourJob]:
    """``choose_hours``' inputs, ``chunk`` hours each, with only the columns the strategy reads."""
    keep = ["symbol", "close", *cfg.columns]
    for a in range(0, len(run_times), chunk):
        b = min(a + chunk, len(run_times))
        lo, hi = tape.bounds[a], tape.bounds[b]
        frame = tape.frame.iloc[lo:hi][keep]
        # Plain Python strings: pandas' Arrow-backed strings cost an Arrow take on every row selection, and
        # the core selects rows a dozen times an hour (values, hence selections, are the same either way).
        frame = frame.assign(symbol=frame["symbol"].astype(object))
        # Column labels too: a str-dtype column index makes every column lookup an Arrow search (~0.1 ms).
        frame.columns = pd.Index(frame.columns.tolist(), dtype=object)
        yield (frame, tape.bounds[a:b + 1] - lo, run_times[a:b], cfg, face_values)


def run_hours(history: History, tape: Tape, cfg: SelectorConfig, book: PaperBook,
              mapper: Callable = map, chunk: int = 64,
              progress: Callable[[int], None] | None = None) -> Iterator[HourResult]:
    """The hours in order: the strategy core (``mapper`` may be a process pool's map), the offsets
    stepped in order, then the book. ``progress`` is told each hour's index."""
    face_values: dict[str, Decimal] = {s: v for s, v in lot_sizes(history.exginfo).items() if v is not None}
    prices = Prices.of(history, tape.run_ms)
    funding = funding_at(history)
    tz = zone(cfg.timezone)
    run_times = [datetime.fromtimestamp(ms / 1000, tz) for ms in tape.run_ms.tolist()]
    held: dict[int, dict[str, Decimal]] = {}
    picks = (p for run in mapper(choose_hours, hour_jobs(tape, cfg, face_values, run_times, chunk)) for p in run)
    for i, (ms, run_time, hour) in enumerate(zip(tape.run_ms.tolist(), run_times, picks, strict=True)):
        held = offset_targets(held, run_time, cfg.period_hours, cfg.offset_list, hour.fresh)
        targets = sum_targets(held)
        closes = prices.at(i, set(targets) | set(book.holdings))
        delisted = {s for s in book.holdings if prices.last_run_ms.get(s, 0) < ms}
        carry = {s for s in book.holdings if s not in closes and s not in delisted}
        book, outcome = trade_round(book, run_time, targets, closes, funding=funding.get(ms),
                                    carry=carry, delisted=delisted)
        if progress is not None:
            progress(i)
        yield HourResult(run_time, hour.long, hour.short, targets, outcome)
