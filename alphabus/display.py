"""Selections as terminal tables a trader reads at a glance: the round, the picks, this hour's trades, exposure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from decimal import Decimal

from shared.messages import Pick, Selection
from shared.quantities import exposure, quantity_text

Lots = Mapping[str, Decimal | None]


def _side(title: str, picks: list[Pick], factor: str, lots: Lots, sign: int) -> list[str]:
    """One side's picks; the short side's positions and values carry their minus sign."""
    lines = [f"  {title} ({len(picks)})"]
    if not picks:
        return [*lines, "    (none)"]
    lines.append(f"    {'symbol':<14}{'close':>14}{factor:>26}{'position':>16}{'value USDT':>13}")
    for p in picks:
        qty = quantity_text(sign * p.position, lots.get(p.symbol))
        lines.append(f"    {p.symbol:<14}{p.close:>14.6g}{p.factor:>26.6g}{qty:>16}{sign * p.pos_val:>13.2f}")
    return lines


def _skip_summary(skipped: dict[str, str]) -> str:
    reasons = Counter(why.split(":", 1)[0] for why in skipped.values())
    return ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))


def _head(sel: Selection) -> str:
    cov = sel.coverage
    head = (f"round {sel.run_time.isoformat()}  symbols {cov.received}/{cov.expected}"
            f"  skipped {len(cov.skipped)}{f' ({_skip_summary(cov.skipped)})' if cov.skipped else ''}"
            f"  missing {len(cov.missing)}")
    if sel.pool is not None:
        head += f"  pool {sel.pool} after filters"
    if sel.latency_ms is not None:
        head += f"  last ready -> selection {sel.latency_ms:.1f} ms"
    return head


def closes_of(sel: Selection, factor_closes: Mapping[str, float] | None = None) -> dict[str, float]:
    """The round's close of every symbol it knows: the factor table's (all rows), then the picks'."""
    closes = dict(factor_closes or {})
    closes.update({p.symbol: p.close for p in [*sel.long, *sel.short]})
    return closes


def _exposure_line(sel: Selection, closes: Mapping[str, float]) -> str:
    ex = exposure(sel.targets, closes)
    line = (f"  EXPOSURE gross {ex.gross:.2f} USDT  net {ex.net:+.2f} USDT  "
            f"(long {ex.long:.2f}, short -{ex.short:.2f})")
    if ex.unpriced:
        line += f"; {len(ex.unpriced)} held without a close this round: {', '.join(ex.unpriced[:5])}"
    return line


def _trades(sel: Selection, lots: Lots, closes: Mapping[str, float]) -> list[str]:
    """This hour's trades: target minus previous target, signed (buy +, sell -), the largest in USDT first."""
    trades = {s: q for s, q in sel.changes.items() if q != 0}
    since = f" since {sel.previous_run_time.isoformat()}" if sel.previous_run_time else " (first round: from flat)"
    lines = [f"  TRADES this hour ({len(trades)}){since}"]
    if not trades:
        return [*lines, "    (none: the targets did not change)"]
    lines.append(f"    {'symbol':<14}{'trade':>16}{'value USDT':>13}{'target':>16}")
    values = {s: float(q) * closes[s] if s in closes else None for s, q in trades.items()}
    for symbol in sorted(trades, key=lambda s: (-abs(values[s] or 0.0), s)):
        lot = lots.get(symbol)
        value = f"{values[symbol]:+.2f}" if values[symbol] is not None else "n/a"
        lines.append(f"    {symbol:<14}{quantity_text(trades[symbol], lot, signed=True):>16}{value:>13}"
                     f"{quantity_text(sel.targets.get(symbol, Decimal(0)), lot, signed=True):>16}")
    return lines


def format_selection(sel: Selection, lots: Lots | None = None, factor_closes: Mapping[str, float] | None = None) -> str:
    """The round as the terminal shows it. ``lots``: symbol -> lot size (positions with the lot's decimals);
    ``factor_closes``: every symbol's close this round (values targets held by other offsets)."""
    lots = lots or {}
    cov = sel.coverage
    lines = [_head(sel)]
    if sel.incomplete:
        more = f" and {len(cov.missing) - 10} more (selection_his has them all)" if len(cov.missing) > 10 else ""
        lines.append(f"  INCOMPLETE: {len(cov.missing)} missing at the deadline: {', '.join(cov.missing[:10])}{more}")
    if sel.shortfall:
        s = sel.shortfall
        lines.append(f"  SHORTFALL: pool of {s.pool}; long {s.long_got}/{s.long_wanted}, "
                     f"short {s.short_got}/{s.short_wanted}")
    lines += _side("LONG", sel.long, sel.ranked_by.get("long", sel.factor_column), lots, 1)
    lines += _side("SHORT", sel.short, sel.ranked_by.get("short", sel.factor_column), lots, -1)
    if len(sel.offsets) > 1:  # the picks are one offset's; the portfolio is every offset's sum
        fresh = [o for o, book in sel.offsets.items() if book.rebalanced]
        lines.append(f"  OFFSETS: hold {sel.hold_period}, {len(sel.offsets)} offsets, rebalanced now: "
                     f"{', '.join(fresh) or 'none'}; the picks above are one offset's")
        lines += _targets(sel.targets, lots)
    closes = closes_of(sel, factor_closes)
    lines.append(_exposure_line(sel, closes))
    lines += _trades(sel, lots, closes)
    return "\n".join(lines)


def _targets(targets: dict[str, Decimal], lots: Lots) -> list[str]:
    lines = [f"  TARGETS ({len(targets)}, all offsets)"]
    if not targets:
        return [*lines, "    (none)"]
    return lines + [f"    {symbol:<14}{quantity_text(qty, lots.get(symbol), signed=True):>16}"
                    for symbol, qty in targets.items()]


def show(update, lots: Lots | None = None) -> str:
    """A client's ``SelectionUpdate`` as text, every symbol's close taken from the round's factor table."""
    factors = update.factors
    closes = dict(zip(factors["symbol"].astype(str), factors["close"].astype(float), strict=True)) \
        if {"symbol", "close"} <= set(factors.columns) else {}
    return format_selection(update.selection, lots, closes)
