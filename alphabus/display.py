"""Selections as readable terminal tables."""

from __future__ import annotations

from collections import Counter

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
    lines += _side("LONG", sel.long, sel.factor_column)
    lines += _side("SHORT", sel.short, sel.factor_column)
    return "\n".join(lines)
