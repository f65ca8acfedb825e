"""Paper accounting with no I/O: trade a book to each round's targets at its closes, charge fees,
mark to market. ``alphabus paper`` wraps it in files; a backtest can step it over recorded rounds.

    book = PaperBook(fee_bps=4)
    for run_time, targets, closes in rounds:
        book, outcome = trade_round(book, run_time, targets, closes)
        outcome.fills, outcome.equity     # rows for fills.csv and equity.csv
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

FILL_COLUMNS = ("run_time", "symbol", "qty", "price", "notional", "fee")
EQUITY_COLUMNS = ("run_time", "equity", "cash", "gross", "net", "positions", "pnl")


@dataclass(frozen=True)
class PaperBook:
    """Holdings (exact contracts) and cash, marked to the latest close seen of each symbol."""

    fee_bps: float = 0.0
    holdings: dict[str, Decimal] = field(default_factory=dict)
    cash: float = 0.0
    prices: dict[str, float] = field(default_factory=dict)
    last_run_time: datetime | None = None
    last_equity: float = 0.0

    def equity(self) -> float:
        return self.cash + sum(float(q) * self.prices[s] for s, q in self.holdings.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "fee_bps": self.fee_bps, "cash": self.cash, "last_equity": self.last_equity,
            "last_run_time": self.last_run_time.isoformat() if self.last_run_time else None,
            "holdings": {s: str(q) for s, q in self.holdings.items()}, "prices": self.prices,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PaperBook:
        return cls(fee_bps=raw["fee_bps"], cash=raw["cash"], last_equity=raw["last_equity"],
                   holdings={s: Decimal(q) for s, q in raw["holdings"].items()}, prices=raw["prices"],
                   last_run_time=datetime.fromisoformat(raw["last_run_time"]) if raw["last_run_time"] else None)


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: fill rows and the equity row (FILL_COLUMNS, EQUITY_COLUMNS), and the
    symbols that could not be traded because no price was ever seen for them."""

    fills: list[dict[str, Any]]
    equity: dict[str, Any]
    unpriced: list[str]


def trade_round(book: PaperBook, run_time: datetime, targets: dict[str, Decimal],
                closes: dict[str, float]) -> tuple[PaperBook, RoundOutcome]:
    """Trade every symbol from its holding to its target at its close; a new book, the old untouched."""
    prices = {**book.prices, **closes}
    holdings = dict(book.holdings)
    cash = book.cash
    stamp = run_time.isoformat()
    fills, unpriced = [], []
    for symbol in sorted(set(targets) | set(holdings)):
        qty = targets.get(symbol, Decimal(0)) - holdings.get(symbol, Decimal(0))
        if qty == 0:
            continue
        if symbol not in prices:
            unpriced.append(symbol)
            continue
        price = prices[symbol]
        notional = float(qty) * price
        fee = abs(notional) * book.fee_bps / 1e4
        cash -= notional + fee
        held = holdings.get(symbol, Decimal(0)) + qty
        if held == 0:
            holdings.pop(symbol, None)
        else:
            holdings[symbol] = held
        fills.append({"run_time": stamp, "symbol": symbol, "qty": qty, "price": price, "notional": notional,
                      "fee": fee})
    after = replace(book, holdings=holdings, cash=cash, prices=prices, last_run_time=run_time)
    equity = after.equity()
    after = replace(after, last_equity=equity)
    values = [float(q) * prices[s] for s, q in holdings.items()]
    row = {"run_time": stamp, "equity": equity, "cash": cash, "gross": sum(abs(v) for v in values),
           "net": sum(values), "positions": len(holdings), "pnl": equity - book.last_equity}
    return after, RoundOutcome(fills, row, unpriced)
