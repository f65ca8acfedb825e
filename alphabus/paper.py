"""``alphabus paper``: the reference order executor, a paper-trading subscriber to copy.

It receives each round's selection (latest-only, with a snapshot on start),
trades every symbol from what it holds to the round's signed target at the
round's close prices, and keeps:

    WORKDIR/paper/fills.csv     run_time, symbol, qty (signed), price, notional, fee
    WORKDIR/paper/equity.csv    run_time, equity, cash, gross, net, positions, pnl
    WORKDIR/paper/book.json     what it holds, so a restart carries on where it stopped

The accounting is ``shared.book`` (no I/O); this module is the files around it.
A real executor replaces ``trade_round`` with orders. It trades target minus
holdings, not the message's ``changes``: the two agree unless the executor
missed a round, which it then logs.

Crash safety: each round appends its rows to the two CSVs (fsynced), then
atomically replaces book.json, which records the round and the byte length of
each CSV it accounts for. A start (or a retry) cuts any CSV back to that
length, so rows of a round whose book was never written are dropped and the
round is applied again: after a kill -9 at any point, every fill is recorded
exactly once. A disk that refuses a write (full, read-only) keeps the round,
and later ones, queued in memory and retried each second, in order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from shared.book import EQUITY_COLUMNS, FILL_COLUMNS, PaperBook, decimal_text, trade_round
from shared.client import MissedUpdate, SelectionClient, SelectionUpdate
from shared.durable import RetryQueue, append_durable, write_atomic
from shared.service import HeartbeatTimer, StopFlag

log = logging.getLogger("paper")
LOGS = {"fills.csv": FILL_COLUMNS, "equity.csv": EQUITY_COLUMNS}


@dataclass(frozen=True)
class PaperRound:
    """What the executor takes from a selection."""

    run_time: datetime
    targets: dict[str, Decimal]
    changes: dict[str, Decimal]
    closes: dict[str, float]


def paper_round(update: SelectionUpdate) -> PaperRound:
    """Targets and the round's close of every symbol (factor table, then the picks)."""
    sel = update.selection
    factors = update.factors  # the client has decoded it already: a selection with unreadable tables is dropped
    closes = dict(zip(factors["symbol"], map(float, factors["close"]), strict=True)) \
        if "symbol" in factors and "close" in factors else {}
    closes.update({p.symbol: float(p.close) for p in [*sel.long, *sel.short]})
    return PaperRound(sel.run_time, dict(sel.targets), dict(sel.changes), closes)


def csv_bytes(columns: tuple[str, ...], rows: list[dict], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([[decimal_text(row[c]) for c in columns] for row in rows])
    return out.getvalue().encode()


class PaperExecutor:
    """Applies each new round once, in order, and records fills, equity and the book durably."""

    def __init__(self, workdir: Path, fee_bps: float = 0.0):
        self.dir = workdir / "paper"
        self.book, self.sizes = self._load(fee_bps)
        self.queue: RetryQueue[PaperRound] = RetryQueue(
            self._commit, lambda r: f"round {r.run_time.isoformat()}", log, f"the paper book in {self.dir}")
        try:
            self._trim(on_start=True)
        except OSError as e:  # a read-only disk: _commit trims again before it appends
            log.error("cannot repair %s at start: %s", self.dir, e)

    def _load(self, fee_bps: float) -> tuple[PaperBook, dict[str, int]]:
        path = self.dir / "book.json"
        if not path.exists():
            return PaperBook(fee_bps=fee_bps), dict.fromkeys(LOGS, 0)
        raw = json.loads(path.read_text())
        # A book written before lengths were recorded: trust the files as they are.
        sizes = raw.get("files") or {name: self._size(name) for name in LOGS}
        return PaperBook.from_dict(raw), sizes

    def _size(self, name: str) -> int:
        path = self.dir / name
        return path.stat().st_size if path.exists() else 0

    def _trim(self, on_start: bool = False) -> None:
        """Cut each CSV back to the length the book accounts for."""
        for name in LOGS:
            actual, booked = self._size(name), self.sizes[name]
            if actual > booked:
                os.truncate(self.dir / name, booked)
                if on_start:
                    log.warning("%s: dropped %d bytes written after the book (stopped mid-round); that round "
                                "is applied again", self.dir / name, actual - booked)
            elif actual < booked:
                log.error("%s is %d bytes, shorter than the %d the book accounts for: rows were removed outside "
                          "alphabus; appending after what is there", self.dir / name, actual, booked)
                self.sizes[name] = actual

    def on_selection(self, update: SelectionUpdate | MissedUpdate) -> None:
        if isinstance(update, SelectionUpdate):  # a missed hour leaves the holdings as they are
            self.on_round(paper_round(update))

    def on_round(self, paper: PaperRound) -> None:
        """Queue a round newer than anything applied or queued, and write what the disk takes."""
        newest = self.queue.items[-1].run_time if self.queue.items else self.book.last_run_time
        if newest is not None and paper.run_time <= newest:
            return  # already applied (a snapshot after a restart)
        self.queue.put(paper)
        self.queue.flush()

    def flush(self) -> None:
        """Retry rounds a full or read-only disk refused (paced to once a second)."""
        self.queue.flush()

    def _commit(self, paper: PaperRound) -> None:
        """Rows first, then the book that counts them; a crash in between leaves a tail ``_trim`` cuts."""
        book, outcome = trade_round(self.book, paper.run_time, paper.targets, paper.closes)
        stamp = paper.run_time.isoformat()
        self._trim()
        sizes = dict(self.sizes)
        try:
            for name, rows in (("fills.csv", outcome.fills), ("equity.csv", [outcome.equity])):
                if rows:
                    sizes[name] = append_durable(self.dir / name,
                                                 csv_bytes(LOGS[name], rows, header=sizes[name] == 0))
            text = json.dumps({**book.to_dict(), "files": sizes}, indent=1)
            write_atomic(self.dir / "book.json", lambda tmp: tmp.write_text(text), fsync=True)
        except OSError:
            with contextlib.suppress(OSError):  # cut what part of the round did land; else the retry does
                self._trim()
            raise
        before, self.book, self.sizes = self.book, book, sizes
        for symbol in outcome.unpriced:
            log.error("round %s: %s has no price ever seen; cannot trade it this round", stamp, symbol)
        expected = {s: c for s, c in paper.changes.items() if c != 0}
        if {f["symbol"]: f["qty"] for f in outcome.fills} != expected:
            log.warning("round %s: trades differ from the selection's changes (a missed round?): held %d symbols",
                        stamp, len(before.holdings))
        eq = outcome.equity
        log.info("round %s: %d fills, equity %.2f USDT (pnl %+.2f), gross %.2f, net %+.2f, %d positions",
                 stamp, len(outcome.fills), eq["equity"], eq["pnl"], eq["gross"], eq["net"], eq["positions"])


def main(workdir: Path, fee_bps: float = 0.0) -> int:
    stop = StopFlag()
    executor = PaperExecutor(workdir, fee_bps)
    alive = HeartbeatTimer(None, "paper")
    log.info("paper executor: book in %s, fee %.1f bps", executor.dir, executor.book.fee_bps)
    with SelectionClient.member(workdir, "paper") as client:
        while not stop:
            alive.tick()
            for update in client.poll(200):
                executor.on_selection(update)
            executor.flush()
    return 0
