"""Contract quantities and exposure as a trader reads them: pure functions shared by the terminal and the dashboard.

The crawler stores every lot size with the exginfo column's common scale (``0.100`` for a lot of 0.1), and
a position rounded to that lot keeps the scale (``1406.900``). A reader wants the lot's own decimals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal


def lot_decimals(lot: Decimal) -> int:
    """Decimal places of a lot size without its padding zeros: 0.100 -> 1, 0.001 -> 3, 100.000 -> 0."""
    exponent = lot.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def quantity_text(qty: Decimal, lot: Decimal | None = None, signed: bool = False) -> str:
    """``qty`` with its lot's decimals (``1406.9`` for a lot of 0.1, never ``1406.900``), exactly.

    Without a lot, the padding zeros go (``0.380`` -> ``0.38``). Never scientific notation. ``signed``
    writes a ``+`` before positive numbers (a trade or a signed target).
    """
    if lot is not None and lot.is_finite() and lot > 0:
        places = lot_decimals(lot)
        exact = qty.quantize(Decimal(1).scaleb(-places)) if qty.normalize().as_tuple().exponent >= -places else qty
    else:
        exact = qty.normalize()
    text = f"{exact:f}"
    if text.startswith("-0") and exact == 0:
        text = text[1:]
    return f"+{text}" if signed and exact > 0 else text


@dataclass(frozen=True)
class Exposure:
    """Signed targets valued at their closes, in USDT."""

    long: float
    short: float  # the short side's value, as a positive number
    unpriced: tuple[str, ...] = ()  # symbols held without a close to value them at

    @property
    def gross(self) -> float:
        return self.long + self.short

    @property
    def net(self) -> float:
        return self.long - self.short


def exposure(targets: Mapping[str, Decimal], closes: Mapping[str, float]) -> Exposure:
    """Long, short, gross and net value of signed targets (long +, short -) at ``closes``."""
    long = short = 0.0
    unpriced = []
    for symbol, qty in targets.items():
        close = closes.get(symbol)
        if close is None:
            if qty != 0:
                unpriced.append(symbol)
            continue
        value = float(qty) * close
        if value > 0:
            long += value
        else:
            short -= value
    return Exposure(long, short, tuple(unpriced))


def crawler_lots(cfg) -> dict[str, Decimal | None]:
    """The crawler's lot sizes (exginfo ``face_value``) of a config's ``bmac_dir``, for display only: empty
    when exginfo cannot be read (quantities then print without their padding zeros)."""
    from shared.bmac import BmacDir, lot_sizes
    from shared.config import resolve_bmac_dir

    try:
        return lot_sizes(BmacDir(resolve_bmac_dir(cfg), cfg.interval).read_exginfo())
    except Exception:  # showing a round must not fail over a file the market already judged
        return {}
