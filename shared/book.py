"""Paper accounting with no I/O: trade a book to each round's targets at its closes, charge fees,
mark to market. ``alphabus paper`` and ``alphabus backtest`` both step this one book.

    book = PaperBook(fee_bps=4, slippage_bps=1)
    for run_time, targets, closes, rates in rounds:
        book, outcome = trade_round(book, run_time, targets, closes, funding=rates)
        outcome.fills, outcome.equity     # rows for fills.csv and equity.csv

Each round, in this order: holdings are marked to the round's closes (close-to-close PnL), funding
settled at run_time is paid on what was held into it (notional at the close times the rate: a long
pays a positive rate, a short receives it), then every symbol is traded from its holding to its
target at its close, paying the fee and the slippage on the traded notional. A symbol the caller
names in ``carry`` (no data this hour) keeps its holding and its last price; one named in
``delisted`` is closed at its last price whatever its target.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.quantities import exposure

FILL_COLUMNS = ("run_time", "symbol", "qty", "price", "notional", "fee")
EQUITY_COLUMNS = ("run_time", "equity", "cash", "gross", "net", "positions", "pnl")


@dataclass(frozen=True)
class PaperBook:
    """Holdings (exact contracts) and cash, marked to the latest close seen of each symbol."""

    fee_bps: float = 0.0
    slippage_bps: float = 0.0
    holdings: dict[str, Decimal] = field(default_factory=dict)
    cash: float = 0.0
    prices: dict[str, float] = field(default_factory=dict)
    last_run_time: datetime | None = None
    last_equity: float = 0.0
    fees: float = 0.0  # paid so far (fee and slippage), in USDT
    funding: float = 0.0  # paid so far (negative: received)

    def equity(self) -> float:
        return _equity(self.cash, self.holdings, self.prices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fee_bps": self.fee_bps, "slippage_bps": self.slippage_bps, "fees": self.fees,
            "funding": self.funding, "cash": self.cash, "last_equity": self.last_equity,
            "last_run_time": self.last_run_time.isoformat() if self.last_run_time else None,
            "holdings": {s: str(q) for s, q in self.holdings.items()}, "prices": self.prices,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PaperBook:
        return cls(fee_bps=raw["fee_bps"], slippage_bps=raw.get("slippage_bps", 0.0), fees=raw.get("fees", 0.0),
                   funding=raw.get("funding", 0.0), cash=raw["cash"], last_equity=raw["last_equity"],
                   holdings={s: Decimal(q) for s, q in raw["holdings"].items()}, prices=raw["prices"],
                   last_run_time=datetime.fromisoformat(raw["last_run_time"]) if raw["last_run_time"] else None)


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: fill rows and the equity row (FILL_COLUMNS, EQUITY_COLUMNS, plus the
    backtest's extra keys), the symbols that could not be traded because no price was ever seen for
    them, and the held symbols carried untraded (named by the caller: no data this hour)."""

    fills: list[dict[str, Any]]
    equity: dict[str, Any]
    unpriced: list[str]
    carried: list[str] = field(default_factory=list)


def _equity(cash: float, holdings: Mapping[str, Decimal], prices: Mapping[str, float]) -> float:
    return cash + sum(float(q) * prices[s] for s, q in holdings.items())


def trade_round(book: PaperBook, run_time: datetime, targets: Mapping[str, Decimal], closes: Mapping[str, float],
                funding: Mapping[str, float] | None = None, carry: Collection[str] = (),
                delisted: Collection[str] = ()) -> tuple[PaperBook, RoundOutcome]:
    """Mark, settle funding, trade every symbol from its holding to its target at its close; a new book,
    the old untouched. ``funding``: rates of the events settled at run_time, by symbol."""
    prices = {**book.prices, **closes}
    holdings = dict(book.holdings)
    cash = book.cash
    stamp = run_time.isoformat()
    funding_paid = 0.0
    for symbol, rate in (funding or {}).items():
        if symbol in holdings and symbol in prices and math.isfinite(rate):
            funding_paid += float(holdings[symbol]) * prices[symbol] * rate
    cash -= funding_paid
    fills, unpriced, carried = [], [], []
    fees = traded = 0.0
    for symbol in sorted(set(targets) | set(holdings)):
        target = Decimal(0) if symbol in delisted else targets.get(symbol, Decimal(0))
        qty = target - holdings.get(symbol, Decimal(0))
        if qty == 0:
            continue
        if symbol in carry and symbol not in delisted and symbol in holdings:
            carried.append(symbol)
            continue
        if symbol not in prices:
            unpriced.append(symbol)
            continue
        price = prices[symbol]
        notional = float(qty) * price
        fee = abs(notional) * book.fee_bps / 1e4
        slippage = abs(notional) * book.slippage_bps / 1e4
        cash -= notional + fee + slippage
        fees += fee + slippage
        traded += abs(notional)
        held = holdings.get(symbol, Decimal(0)) + qty
        if held == 0:
            holdings.pop(symbol, None)
        else:
            holdings[symbol] = held
        fills.append({"run_time": stamp, "symbol": symbol, "qty": qty, "price": price, "notional": notional,
                      "fee": fee, "slippage": slippage, "delisted": symbol in delisted})
    equity = tidy(_equity(cash, holdings, prices))  # as equity.csv writes it, so the book and the file agree exactly
    after = replace(book, holdings=holdings, cash=cash, prices=prices, last_run_time=run_time,
                    fees=book.fees + fees, funding=book.funding + funding_paid, last_equity=equity)
    held = exposure(holdings, prices)
    row = {"run_time": stamp, "equity": equity, "cash": cash, "gross": held.gross, "net": held.net,
           "positions": len(holdings), "pnl": equity - book.last_equity, "long": held.long, "short": held.short,
           "fees": fees, "funding": funding_paid, "turnover": traded}
    return after, RoundOutcome(fills, row, unpriced, carried)


SIGNIFICANT = 15
"""Digits a float keeps in the CSVs: enough for any price or balance, too few for binary noise."""


def tidy(value: float) -> float:
    """The float that ``decimal_text`` writes."""
    return float(f"{value:.{SIGNIFICANT}g}")


def decimal_text(value: object) -> str:
    """A CSV cell: floats as plain decimals of 15 significant digits (``-63.041599999999995`` is
    ``-63.0416``, never ``1e-05``), Decimals as plain text, anything else as ``str``."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.{SIGNIFICANT}g}"
        if "e" not in text:  # %g's plain form has no trailing zeros: already the answer (the CSVs' hot path)
            return "0" if text == "-0" else text
        value = Decimal(text)
    elif not isinstance(value, Decimal):
        return str(value)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
