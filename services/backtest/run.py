"""The backtest's thin shell: load, compute factors on a process pool, drive the hours, write the outputs.

The CLI parses options and calls ``run``; everything it computes is the pure code of the other modules.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.backtest import report
from services.backtest.engine import HourResult, Sides, Tape, build_tape, run_hours
from services.backtest.factors import (
    FactorJob,
    SymbolFactors,
    calculators,
    exact_rows,
    start_worker,
    symbol_factors,
    worker_factors,
)
from services.backtest.history import HOUR_MS, BadHistory, History, load_history
from services.factor.compute import NO_FUNDING
from services.factor.series import series_for_calculators
from services.recorder.files import SELECT_DROP_COLUMNS, write_csv_zip
from shared.book import PaperBook
from shared.clock import boundary_run_time, parse_interval, zone
from shared.config import SelectorConfig


@dataclass
class Options:
    data: Path
    out: Path
    start: str | None = None
    end: str | None = None
    fee_bps: float = 5.0
    slippage_bps: float = 0.0
    num_candles: int = 1500
    full_history: bool = False
    selections: bool = False  # also select_his/ and factor_his/ in the recorder's formats (large)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    sample_hours: int = 24  # --full-history: hours compared with the exact path


class Progress:
    """A bar on a terminal; on anything else a line every ``every`` seconds. Always on stderr."""

    def __init__(self, total: int, what: str, every: float = 10.0, stream=sys.stderr):
        self.total, self.what, self.every, self.stream = total, what, every, stream
        self.tty = stream.isatty()
        self.started = self.last = time.monotonic()

    def __call__(self, i: int) -> None:
        now = time.monotonic()
        done = i + 1
        if now - self.last < (0.2 if self.tty else self.every) and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if self.tty:
            filled = int(30 * done / self.total)
            end = "\n" if done == self.total else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {self.what} "
                              f"{rate:,.0f}/s{end}")
        else:
            self.stream.write(f"{done}/{self.total} {self.what} ({rate:,.0f}/s)\n")
        self.stream.flush()


def run_range(history: History, cfg: SelectorConfig, opts: Options) -> tuple[np.ndarray, list[str]]:
    """The run hours (ms) and the notes on a range clipped to the data; BadHistory if none is left."""
    interval, tz = parse_interval(cfg.interval), zone(cfg.timezone)
    if interval.total_seconds() != 3600:
        raise BadHistory(f"interval {cfg.interval!r}: the backtest runs hourly candles only")
    earliest = history.first_ms() + HOUR_MS  # the first candle's close
    latest = history.last_ms() + HOUR_MS
    default_start = min(history.first_ms() + opts.num_candles * HOUR_MS, latest)
    notes = []

    def when(text: str | None, default: int, name: str) -> int:
        if text is None:
            return default
        try:
            return round(boundary_run_time(text, interval, tz).timestamp() * 1000)
        except ValueError as e:
            raise BadHistory(f"--{name}: {e}") from None

    start, end = when(opts.start, default_start, "start"), when(opts.end, latest, "end")
    stamp = lambda ms: datetime.fromtimestamp(ms / 1000, tz).isoformat()  # noqa: E731
    if start > latest or end < earliest or start > end:
        raise BadHistory(f"--start {stamp(start)} to --end {stamp(end)} holds no hour of {history.source}, whose "
                         f"rounds run from {stamp(earliest)} to {stamp(latest)}")
    if start < earliest:
        notes.append(f"--start {stamp(start)} is before the data's first round; starting at {stamp(earliest)}")
        start = earliest
    if end > latest:
        notes.append(f"--end {stamp(end)} is after the data's last round; ending at {stamp(latest)}")
        end = latest
    return np.arange(start, end + 1, HOUR_MS, dtype=np.int64), notes


POOL_MIN_BUILTIN_SYMBOLS = 256
"""Built-in series cost ~5 ms a symbol; starting a pool's processes costs ~0.4 s: below this, one process wins."""


def compute_factors(history: History, job: FactorJob, workers: int,
                    say: Callable[[str], None]) -> dict[str, SymbolFactors]:
    """Every traded symbol's factors, a symbol per task on a pool of ``workers`` processes (built-ins as
    vectorised series, a user's plugins on each hour's file)."""
    symbols = history.universe
    items = [(history.symbols[s], history.funding.get(s, NO_FUNDING)) for s in symbols]
    calcs = calculators(job)
    builtin = series_for_calculators(calcs) is not None
    if workers <= 1 or len(items) < 2 or (builtin and len(items) < POOL_MIN_BUILTIN_SYMBOLS):
        tick = Progress(len(items), "symbols")
        out = {}
        for i, (sh, funding) in enumerate(items):
            out[sh.symbol] = symbol_factors(sh, funding, job, calcs)
            tick(i)
        return out
    if not builtin:
        say(f"user plugins: each hour's file through the plugins on {workers} processes"
            + (" (--full-history: once per symbol on its whole history)" if job.full_history else ""))
    tick = Progress(len(items), "symbols")
    out = {}
    with ProcessPoolExecutor(workers, initializer=start_worker, initargs=(job,)) as pool:
        for i, sf in enumerate(pool.map(worker_factors, items)):
            out[sf.symbol] = sf
            tick(i)
    return out


def full_history_gap(history: History, factors: dict[str, SymbolFactors], job: FactorJob,
                     sample_hours: int) -> dict[str, Any]:
    """The largest difference of --full-history's values from the exact path, over a sample of hours."""
    calcs = calculators(job)
    worst_abs, worst_rel, where, compared = 0.0, 0.0, None, 0
    for symbol, sf in factors.items():
        if len(sf.rows) == 0:
            continue
        picks = np.unique(np.linspace(0, len(sf.rows) - 1, min(sample_hours, len(sf.rows))).astype(int))
        exact = exact_rows(history.symbols[symbol], history.funding.get(symbol, NO_FUNDING), job, calcs,
                           sf.rows[picks])
        index = {int(r): k for k, r in enumerate(sf.rows.tolist())}
        for c, values in exact.values.items():
            mine = np.array([sf.values[c][index[int(r)]] for r in exact.rows])
            both = np.isfinite(mine) & np.isfinite(values)
            compared += int(both.sum())
            if not both.any():
                continue
            diff = np.abs(mine[both] - values[both])
            rel = diff / np.maximum(np.abs(values[both]), 1e-300)
            k = int(diff.argmax())
            if diff[k] > worst_abs:
                worst_abs, where = float(diff[k]), f"{symbol} {c}"
            worst_rel = max(worst_rel, float(rel.max()))
    return {"values_compared": compared, "max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "worst": where}


def write_recorder_files(out: Path, tape: Tape, i: int, result: HourResult) -> None:
    """select_his/ and factor_his/ as the recorder names and writes them (columns as the hour's rows hold)."""
    stamp = result.run_time
    full = tape.factors(i)
    for side, frame in (("long", result.long), ("short", result.short)):
        rows = full.iloc[pd.Index(full["symbol"]).get_indexer(frame["symbol"])].reset_index(drop=True)
        for column in [c for c in frame.columns if c not in full.columns]:  # rule ranks, position, pos_val
            rows[column] = frame[column].to_numpy()
        rows = rows.drop(columns=[c for c in SELECT_DROP_COLUMNS if c in rows.columns])
        (out / "select_his").mkdir(parents=True, exist_ok=True)
        write_csv_zip(rows, out / "select_his" / stamp.strftime(f"%Y%m%d_%H%M%S_{side}.csv.zip"))
    (out / "factor_his").mkdir(parents=True, exist_ok=True)
    write_csv_zip(full, out / "factor_his" / stamp.strftime("coin_%Y%m%d_%H%M%S.csv.zip"))


def run(workdir: Path, cfg: SelectorConfig, opts: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole backtest; returns stats.json's content (also written, with every other output, to opts.out)."""
    t0 = time.perf_counter()
    history = load_history(opts.data, cfg.timezone, cfg.interval)
    run_ms, notes = run_range(history, cfg, opts)
    for text in notes:
        say(text)
    job = FactorJob(cfg, workdir, opts.num_candles, cfg.min_candle_num, int(run_ms[0]), int(run_ms[-1]),
                    opts.full_history)
    t_load = time.perf_counter()
    factors = compute_factors(history, job, opts.workers, say)
    t_factors = time.perf_counter()
    columns = [c.column for c in calculators(job)]
    tape = build_tape(history, factors, columns, run_ms)
    opts.out.mkdir(parents=True, exist_ok=True)
    book = PaperBook(fee_bps=opts.fee_bps, slippage_bps=opts.slippage_bps, cash=cfg.capital_usdt,
                     last_equity=cfg.capital_usdt)
    equity_rows, trades, carried = [], [], []
    runs: list[Sides] = []  # each run of hours' picks, in order
    tick = Progress(len(run_ms), "hours")
    # The hours in this process: with the panel core a process pool (as before) was no faster on 2 cores
    # (real data, 2,998 hours: 1.3-1.8 s with one, 1.0-1.4 s without; shipping the rows costs what it saves).
    for i, result in enumerate(run_hours(history, tape, cfg, book, progress=tick)):
        equity_rows.append(result.outcome.equity)
        trades.extend(result.outcome.fills)
        carried.extend(f"{result.run_time.isoformat()} {s}" for s in result.outcome.carried)
        if not runs or runs[-1] is not result.picks.sides:
            runs.append(result.picks.sides)
        if opts.selections:
            write_recorder_files(opts.out, tape, i, result)
    selections = [row for run in runs for row in run.records()]
    t_hours = time.perf_counter()
    equity = report.equity_frame(equity_rows, cfg.capital_usdt)
    report.write_csv(opts.out / "equity.csv", report.EQUITY_COLUMNS, equity.to_dict("records"))
    report.write_csv(opts.out / "trades.csv", report.TRADE_COLUMNS, trades)
    report.write_csv(opts.out / "selections.csv", report.SELECTION_COLUMNS, selections)
    summary = report.stats(equity, cfg.capital_usdt)
    skipped: dict[str, int] = {}
    for sf in factors.values():
        for k, v in sf.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    summary["bad_input"] = {**history.counts, **{f"skipped_{k}": v for k, v in skipped.items()},
                            "held_without_data": len(carried)}
    summary["problems"] = history.problems[:200] + notes + [f"held without data, carried: {c}" for c in carried[:50]]
    summary["delisted_closed"] = [f"{f['run_time']} {f['symbol']} at {f['price']}" for f in trades if f["delisted"]]
    summary["plugin_errors"] = [e for sf in factors.values() for e in sf.errors][:20]
    summary["config"] = {"fee_bps": opts.fee_bps, "slippage_bps": opts.slippage_bps, "num_candles": opts.num_candles,
                         "capital_usdt": cfg.capital_usdt, "data": str(opts.data), "full_history": opts.full_history}
    if opts.full_history and series_for_calculators(calculators(job)) is None:
        summary["full_history_gap"] = gap = full_history_gap(history, factors, job, opts.sample_hours)
        say(f"--full-history: plugins ran once on each whole history, NOT on each hour's file as live does; "
            f"largest difference from the exact path over {gap['values_compared']} sampled values: "
            f"{gap['max_abs_diff']:.3g} absolute, {gap['max_rel_diff']:.3g} relative ({gap['worst']})")
    summary["timing_s"] = {"load": round(t_load - t0, 3), "factors": round(t_factors - t_load, 3),
                           "hours": round(t_hours - t_factors, 3), "total": round(t_hours - t0, 3),
                           "hours_per_s": round(len(run_ms) / max(t_hours - t0, 1e-9), 1)}
    report.write_json(opts.out / "stats.json", summary)
    if len(equity):
        report.picture(equity, cfg.capital_usdt, opts.out / "report.png", opts.out / "report.html",
                       {k: v for k, v in summary.items() if not isinstance(v, dict | list)})
    say(report.table(summary))
    if history.problems or carried:
        say(f"bad input: {summary['bad_input']} (see stats.json's problems)")
    say(f"outputs in {opts.out}")
    return summary
