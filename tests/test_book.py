"""The shared paper book's backtest cases, each against numbers worked out by hand: slippage, funding
(longs pay positive rates), a held symbol with no data carried, a delisted one closed at its last price,
and the CSV text of its floats. test_backtest.py checks the whole walk against a pandas reference."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.book import PaperBook, decimal_text, tidy, trade_round

T0 = datetime(2024, 1, 1, tzinfo=datetime.now().astimezone().tzinfo)


def test_funding_slippage_carry_and_delisting():
    book = PaperBook(fee_bps=5, slippage_bps=2, cash=1000.0, last_equity=1000.0)
    book, out = trade_round(book, T0, {"AAA": Decimal(2), "BBB": Decimal(-4)}, {"AAA": 100.0, "BBB": 50.0})
    costs = (200 + 200) * 7 / 1e4
    assert out.equity["fees"] == pytest.approx(costs) and out.equity["turnover"] == 400
    assert book.cash == pytest.approx(1000 - 200 + 200 - costs)
    assert [f["slippage"] for f in out.fills] == pytest.approx([200 * 2 / 1e4, 200 * 2 / 1e4])

    # Hour 2: AAA up 10, BBB down 5 (the short gains 20); rates +1e-3 on both: the long pays, the short receives.
    book, out = trade_round(book, T0 + timedelta(hours=1), {"AAA": Decimal(2), "BBB": Decimal(-4)},
                            {"AAA": 110.0, "BBB": 45.0}, funding={"AAA": 1e-3, "BBB": 1e-3, "ZZZ": 1.0})
    paid = 2 * 110 * 1e-3 - 4 * 45 * 1e-3
    assert out.equity["funding"] == pytest.approx(paid) and out.fills == []
    assert out.equity["pnl"] == pytest.approx(20 + 20 - paid)
    assert book.funding == pytest.approx(paid)

    # Hour 3: no data for AAA (carried, untraded, last price kept) though the target dropped it.
    book, out = trade_round(book, T0 + timedelta(hours=2), {"BBB": Decimal(-4)}, {"BBB": 45.0}, carry={"AAA"})
    assert out.carried == ["AAA"] and out.fills == [] and book.holdings["AAA"] == 2
    assert out.equity["pnl"] == pytest.approx(0)

    # Hour 4: BBB delisted: closed at its last price whatever the target; AAA back and sold at its close.
    book, out = trade_round(book, T0 + timedelta(hours=3), {"BBB": Decimal(-4)}, {"AAA": 90.0}, delisted={"BBB"})
    assert {f["symbol"]: (f["qty"], f["price"], f["delisted"]) for f in out.fills} == {
        "AAA": (Decimal(-2), 90.0, False), "BBB": (Decimal(4), 45.0, True)}
    assert book.holdings == {}
    assert out.equity["pnl"] == pytest.approx(-40 - (180 + 180) * 7 / 1e4)
    assert book.equity() == pytest.approx(1000 + (20 + 20 - paid) - 40 - (400 + 360) * 7 / 1e4)


def test_csv_text_is_decimal_not_float_noise():
    assert decimal_text(-63.041599999999995) == "-63.0416"
    assert decimal_text(1e-05) == "0.00001" and decimal_text(1000.0) == "1000" and decimal_text(-0.0) == "0"
    assert decimal_text(Decimal("12.500")) == "12.5" and decimal_text(Decimal("1E+1")) == "10"
    assert decimal_text(0.1 + 0.2) == "0.3" and tidy(0.1 + 0.2) == 0.3
    assert decimal_text(True) == "True" and decimal_text("AAA") == "AAA"


@settings(max_examples=2000, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_is_the_15_digit_decimal_written_plainly(value):
    """The fast path (%g's own text when it has no exponent) against the definition: the 15-significant-digit
    decimal, written with no exponent and no trailing zeros."""
    text = format(Decimal(f"{value:.15g}"), "f")
    text = text.rstrip("0").rstrip(".") if "." in text else text
    assert decimal_text(value) == ("0" if text in ("-0", "") else text)
