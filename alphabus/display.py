"""Selections as readable terminal tables."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from shared.messages import Pick, Selection


def _side(title: str, picks: list[Pick], factor: str) -> list[str]:
    lines = [f"  {title} ({len(picks)})"]
    if not picks:
        return [*lines, "    (none)"]
    lines.append(f"    {'symbol':<14}{'close':>14}{factor:>26}{'position':>16}{'value USDT':>13}")
    for p in picks:
        lines.append(f"    {p.symbol:<14}{p.close:>14.6g}{p.factor:>26.6g}{p.position!s:>16}{p.pos_val:>13.2f}")
    return lines


def _skip_summary(skipped: dict[str, str]) -> str:
    reasons = Counter(why.split(":", 1)[0] for why in skipped.values())
    return ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))


def format_selection(sel: Selection) -> str:
    cov = sel.coverage
    head = (f"round {sel.run_time.isoformat()}  symbols {cov.received}/{cov.expected}"
            f"  skipped {len(cov.skipped)}{f' ({_skip_summary(cov.skipped)})' if cov.skipped else ''}"
            f"  missing {len(cov.missing)}")
    if sel.latency_ms is not None:
        head += f"  last ready -> selection {sel.latency_ms:.1f} ms"
    lines = [head]
    if sel.incomplete:
        lines.append(f"  INCOMPLETE: missing {', '.join(cov.missing)}")
    if sel.shortfall:
        s = sel.shortfall
        lines.append(f"  SHORTFALL: pool of {s.pool}; long {s.long_got}/{s.long_wanted}, "
                     f"short {s.short_got}/{s.short_wanted}")
    lines += _side("LONG", sel.long, sel.ranked_by.get("long", sel.factor_column))
    lines += _side("SHORT", sel.short, sel.ranked_by.get("short", sel.factor_column))
    if len(sel.offsets) > 1:  # the picks are one offset's; the portfolio is every offset's sum
        fresh = [o for o, book in sel.offsets.items() if book.rebalanced]
        lines.append(f"  OFFSETS: hold {sel.hold_period}, {len(sel.offsets)} offsets, rebalanced now: "
                     f"{', '.join(fresh) or 'none'}; the picks above are one offset's")
        lines += _targets(sel.targets)
    return "\n".join(lines)


def _targets(targets: dict[str, Decimal]) -> list[str]:
    lines = [f"  TARGETS ({len(targets)}, all offsets)"]
    if not targets:
        return [*lines, "    (none)"]
    return lines + [f"    {symbol:<14}{qty!s:>16}" for symbol, qty in targets.items()]
