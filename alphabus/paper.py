"""``alphabus paper``: the reference order executor, a paper-trading subscriber to copy.

It receives each round's selection (latest-only, with a snapshot on start),
trades every symbol from what it holds to the round's signed target at the
round's close prices, and keeps:

    WORKDIR/paper/fills.csv     run_time, symbol, qty (signed), price, notional, fee
    WORKDIR/paper/equity.csv    run_time, equity, cash, gross, net, positions, pnl
    WORKDIR/paper/book.json     what it holds, so a restart carries on where it stopped

A real executor replaces ``PaperBook.apply`` with orders. It trades target
minus holdings, not the message's ``changes``: the two agree unless the
executor missed a round, which it then logs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd

from services.recorder.files import write_atomic
from shared.client import SelectionClient, SelectionUpdate
from shared.service import HeartbeatTimer, StopFlag

log = logging.getLogger("paper")


@dataclass
class PaperBook:
    """Simulated holdings and cash, marked to the latest close of each symbol."""

    fee_bps: float = 0.0
    holdings: dict[str, Decimal] = field(default_factory=dict)
    cash: float = 0.0
    prices: dict[str, float] = field(default_factory=dict)
    last_run_time: datetime | None = None
    last_equity: float = 0.0

    def equity(self) -> float:
        return self.cash + sum(float(q) * self.prices[s] for s, q in self.holdings.items())

    def apply(self, targets: dict[str, Decimal], closes: dict[str, float]) -> list[dict]:
        """Trade every symbol to its target at its close; returns the fills."""
        self.prices.update(closes)
        fills = []
        for symbol in sorted(set(targets) | set(self.holdings)):
            qty = targets.get(symbol, Decimal(0)) - self.holdings.get(symbol, Decimal(0))
            if qty == 0:
                continue
            if symbol not in self.prices:
                log.error("%s: no price ever seen; cannot trade it this round", symbol)
                continue
            price = self.prices[symbol]
            notional = float(qty) * price
            fee = abs(notional) * self.fee_bps / 1e4
            self.cash -= notional + fee
            held = self.holdings.get(symbol, Decimal(0)) + qty
            if held == 0:
                self.holdings.pop(symbol, None)
            else:
                self.holdings[symbol] = held
            fills.append({"symbol": symbol, "qty": qty, "price": price, "notional": notional, "fee": fee})
        return fills

    def to_json(self) -> str:
        return json.dumps({
            "fee_bps": self.fee_bps, "cash": self.cash, "last_equity": self.last_equity,
            "last_run_time": self.last_run_time.isoformat() if self.last_run_time else None,
            "holdings": {s: str(q) for s, q in self.holdings.items()}, "prices": self.prices,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PaperBook:
        raw = json.loads(text)
        return cls(fee_bps=raw["fee_bps"], cash=raw["cash"], last_equity=raw["last_equity"],
                   holdings={s: Decimal(q) for s, q in raw["holdings"].items()}, prices=raw["prices"],
                   last_run_time=datetime.fromisoformat(raw["last_run_time"]) if raw["last_run_time"] else None)


class PaperExecutor:
    """Applies each new selection once and records fills and equity."""

    def __init__(self, workdir: Path, fee_bps: float = 0.0):
        self.dir = workdir / "paper"
        self.dir.mkdir(parents=True, exist_ok=True)
        book = self.dir / "book.json"
        self.book = PaperBook.from_json(book.read_text()) if book.exists() else PaperBook(fee_bps=fee_bps)

    def _append(self, name: str, rows: list[dict]) -> None:
        path = self.dir / name
        old = pd.read_csv(path, dtype=str) if path.exists() else None
        new = pd.DataFrame(rows).astype(str)
        both = new if old is None else pd.concat([old, new], ignore_index=True)
        write_atomic(path, lambda tmp: both.to_csv(tmp, index=False))

    def on_selection(self, update: SelectionUpdate) -> None:
        sel = update.selection
        if self.book.last_run_time is not None and sel.run_time <= self.book.last_run_time:
            return  # already applied (a snapshot after a restart)
        closes = dict(zip(update.factors["symbol"], update.factors["close"].astype(float), strict=True)) \
            if "symbol" in update.factors else {}
        closes.update({p.symbol: p.close for p in [*sel.long, *sel.short]})
        before = dict(self.book.holdings)
        fills = self.book.apply(sel.targets, closes)
        expected = {s: c for s, c in sel.changes.items() if c != 0}
        traded = {f["symbol"]: f["qty"] for f in fills}
        if traded != expected:
            log.warning("round %s: trades differ from the selection's changes (a missed round?): held %d symbols",
                        sel.run_time.isoformat(), len(before))
        equity = self.book.equity()
        pnl = equity - self.book.last_equity
        self.book.last_equity, self.book.last_run_time = equity, sel.run_time
        gross = sum(abs(float(q)) * self.book.prices[s] for s, q in self.book.holdings.items())
        net = sum(float(q) * self.book.prices[s] for s, q in self.book.holdings.items())
        stamp = sel.run_time.isoformat()
        if fills:
            self._append("fills.csv", [{"run_time": stamp, **f} for f in fills])
        self._append("equity.csv", [{"run_time": stamp, "equity": equity, "cash": self.book.cash, "gross": gross,
                                     "net": net, "positions": len(self.book.holdings), "pnl": pnl}])
        write_atomic(self.dir / "book.json", lambda tmp: tmp.write_text(self.book.to_json()))
        log.info("round %s: %d fills, equity %.2f USDT (pnl %+.2f), gross %.2f, net %+.2f, %d positions",
                 stamp, len(fills), equity, pnl, gross, net, len(self.book.holdings))


def main(workdir: Path, fee_bps: float = 0.0) -> int:
    stop = StopFlag()
    executor = PaperExecutor(workdir, fee_bps)
    alive = HeartbeatTimer(None, "paper")
    log.info("paper executor: book in %s, fee %.1f bps", executor.dir, executor.book.fee_bps)
    with SelectionClient(name="paper") as client:
        while not stop:
            alive.tick()
            for update in client.poll(200):
                executor.on_selection(update)
    return 0
