"""What is worth an alert, as plain functions of what the services already know (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

from shared.alerts import Alert
from shared.messages import Missed, Selection

LISTED = 10
"""Symbols named in one alert; the rest are counted."""
MAX_SERVICES = 512


def _names(symbols: Iterable[str]) -> str:
    symbols = list(symbols)
    more = f" and {len(symbols) - LISTED} more" if len(symbols) > LISTED else ""
    return ", ".join(symbols[:LISTED]) + more


def incomplete(sel: Selection) -> Alert | None:
    cov = sel.coverage
    if not cov.missing:
        return None
    silent = f"; silent shards: {', '.join(cov.silent_shards)}" if cov.silent_shards else ""
    return Alert("round_incomplete", f"round {sel.run_time.isoformat()}: {len(cov.missing)} of {cov.expected} "
                 f"symbols missing at the deadline ({_names(cov.missing)}){silent}; published "
                 f"{'flagged incomplete' if sel.incomplete else 'as it is'}", sel.run_time,
                 {"missing": cov.missing, "expected": cov.expected, "silent_shards": cov.silent_shards})


def missed(entry: Missed) -> Alert:
    return Alert("round_missed", f"round {entry.run_time.isoformat()} has no selection ({entry.reason}): "
                 f"{entry.detail}", entry.run_time, {"reason": entry.reason})


def prices(changes: Iterable[str], closes: Mapping[str, float], previous: Selection | None) -> dict[str, float]:
    """A price for every changed symbol: this round's close, else the previous round's (a symbol leaving)."""
    held = {p.symbol: p.close for p in (*previous.long, *previous.short)} if previous is not None else {}
    return {s: closes.get(s, held.get(s, 0.0)) for s in changes}


def large_changes(changes: Mapping[str, Decimal], price: Mapping[str, float], capital: float,
                  fraction: float) -> list[tuple[str, Decimal, float]]:
    """(symbol, change in contracts, its value) for each change worth more than fraction * capital, largest
    first. A symbol without a price is not judged."""
    limit = fraction * capital
    found = [(s, d, abs(float(d)) * price.get(s, 0.0)) for s, d in changes.items()]
    return sorted([c for c in found if c[2] > limit], key=lambda c: -c[2])


def target_change(sel: Selection, price: Mapping[str, float], capital: float, fraction: float) -> Alert | None:
    large = large_changes(sel.changes, price, capital, fraction)
    if not large:
        return None
    listed = ", ".join(f"{s} {d:+} ({v:,.0f} USDT)" for s, d, v in large[:LISTED])
    return Alert("target_change", f"round {sel.run_time.isoformat()}: {len(large)} target change(s) above "
                 f"{fraction:g} of capital ({fraction * capital:,.0f} USDT): {listed}", sel.run_time,
                 {"changes": {s: str(d) for s, d, _ in large}, "limit_usdt": fraction * capital})


def listings(before: set[str] | None, after: set[str], run_time: datetime) -> list[Alert]:
    """Symbols that entered or left the exchange's list since the round before (none on the first)."""
    if before is None:
        return []
    alerts = []
    listed, delisted = sorted(after - before), sorted(before - after)
    if listed:
        alerts.append(Alert("symbol_listed", f"round {run_time.isoformat()}: {len(listed)} new in exginfo: "
                            f"{_names(listed)}", run_time, {"symbols": listed}))
    if delisted:
        alerts.append(Alert("symbol_delisted", f"round {run_time.isoformat()}: {len(delisted)} gone from exginfo: "
                            f"{_names(delisted)}", run_time, {"symbols": delisted}))
    return alerts


def crawler_late(run_time: datetime, what: str) -> Alert:
    return Alert("crawler_late", f"round {run_time.isoformat()}: {what}", run_time)


def shards_silent(shards: list[str]) -> Alert:
    return Alert("shard_silent", f"factor shard(s) {', '.join(shards)} silent: no heartbeat for seconds; their "
                 "symbols will be missing from the next round", None, {"shards": shards})


def position_restarted(last: datetime) -> Alert:
    return Alert("service_restarted", f"the position service started again; its last selection was "
                 f"{last.isoformat()}", None, {"service": "position"})


class Incarnations:
    """Each sender's identity (``service@host:pid:start``) by service name: a new one is a restart.

    The first identity heard for a name is not a restart (this process may have started after it).
    """

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def heard(self, sender: str) -> Alert | None:
        name = sender.split("@", 1)[0]
        before = self.known.get(name)
        if before == sender:
            return None
        if before is None and len(self.known) >= MAX_SERVICES:
            return None
        self.known[name] = sender
        if before is None:
            return None
        return Alert("service_restarted", f"{name} started again: was {before}, now {sender}", None,
                     {"service": name, "before": before, "now": sender})
