"""What the dashboard shows, as plain functions on recorded rounds and the equity file (no sockets, no HTTP).

A round is the dict the recorder writes to ``selection_his/<stamp>.json`` (a selection's JSON, or
``{"run_time", "missed": true, "reason", "detail"}``); live updates are turned into the same dict, so the
page reads history and live rounds alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path

import pandas as pd

from shared.quantities import exposure, quantity_text

ROUNDS_SHOWN = 48
"""The dashboard keeps and lists this many of the newest rounds (two days of hours)."""


def round_status(record: Mapping) -> str:
    """``missed``, ``flagged`` (published with symbols missing) or ``ok``."""
    if record.get("missed"):
        return "missed"
    cov = record.get("coverage") or {}
    return "flagged" if record.get("incomplete") or cov.get("missing") or cov.get("silent_shards") else "ok"


def round_row(record: Mapping) -> dict:
    """One line of the rounds table: status, coverage and latency."""
    row = {"run_time": record["run_time"], "status": round_status(record)}
    if row["status"] == "missed":
        return {**row, "reason": record.get("reason", ""), "detail": record.get("detail", "")}
    cov = record["coverage"]
    return {**row, "received": cov["received"], "expected": cov["expected"], "skipped": len(cov["skipped"]),
            "missing": len(cov["missing"]), "silent_shards": cov.get("silent_shards", []),
            "late": len(cov.get("late", [])), "latency_ms": record.get("latency_ms"), "pool": record.get("pool"),
            "reason": f"{len(cov['missing'])} symbol(s) missing" if row["status"] == "flagged" else ""}


def pick_closes(record: Mapping) -> dict[str, float]:
    return {p["symbol"]: float(p["close"]) for p in [*record["long"], *record["short"]]}


def holdings(record: Mapping, lots: Mapping[str, Decimal | None], earlier: Mapping | None = None) -> dict:
    """The latest selection's targets by side with their values, this hour's trades and the exposure.

    Prices are the round's picks' closes; a coin it sells out of is valued at ``earlier``'s (the round
    before), the last close the selections carry for it."""
    closes = {**(pick_closes(earlier) if earlier else {}), **pick_closes(record)}
    targets = {s: Decimal(q) for s, q in record["targets"].items()}
    ex = exposure(targets, closes)

    def line(symbol: str, qty: Decimal) -> dict:
        close = closes.get(symbol)
        return {"symbol": symbol, "target": quantity_text(qty, lots.get(symbol), signed=True),
                "close": close, "value": float(qty) * close if close is not None else None}

    sides: dict[str, list[dict]] = {"long": [], "short": []}
    for symbol, qty in targets.items():
        if qty != 0:
            sides["long" if qty > 0 else "short"].append(line(symbol, qty))
    for side in sides.values():
        side.sort(key=lambda r: -abs(r["value"] or 0.0))
    trades = []
    for symbol, change in record["changes"].items():
        change = Decimal(change)
        if change != 0:
            close = closes.get(symbol)
            trades.append({"symbol": symbol, "trade": quantity_text(change, lots.get(symbol), signed=True),
                           "target": quantity_text(targets.get(symbol, Decimal(0)), lots.get(symbol), signed=True),
                           "value": float(change) * close if close is not None else None})
    trades.sort(key=lambda r: (-abs(r["value"] or 0.0), r["symbol"]))
    return {"run_time": record["run_time"], "previous_run_time": record.get("previous_run_time"),
            "long": sides["long"], "short": sides["short"], "trades": trades,
            "gross": ex.gross, "net": ex.net, "long_value": ex.long, "short_value": ex.short,
            "unpriced": list(ex.unpriced)}


def equity_curve(frame: pd.DataFrame) -> dict:
    """Equity per round and its drawdown from the running peak (both USDT), from ``equity.csv``."""
    equity = pd.to_numeric(frame["equity"], errors="coerce").astype(float)
    keep = equity.notna()
    times, equity = frame.loc[keep, "run_time"].astype(str).tolist(), equity[keep]
    drawdown = equity - equity.cummax().clip(lower=0.0)  # the capital itself is the first peak
    points = [{"run_time": t, "equity": round(float(e), 6), "drawdown": round(float(d), 6)}
              for t, e, d in zip(times, equity, drawdown, strict=True)]
    return {"points": points, "last": points[-1]["equity"] if points else None,
            "max_drawdown": round(float(drawdown.min()), 6) if points else None}


def read_equity(path: Path) -> dict | None:
    """The equity curve of a paper (or backtest) ``equity.csv``; None when absent or unreadable."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if not {"run_time", "equity"} <= set(frame.columns):
        return None
    return {**equity_curve(frame), "source": str(path)}


def recorded_rounds(folder: Path, limit: int = ROUNDS_SHOWN) -> list[dict]:
    """The newest ``limit`` rounds the recorder wrote, oldest first; unreadable files are skipped."""
    out = []
    for path in sorted(folder.glob("*.json"))[-limit:]:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "run_time" in record:
            out.append(record)
    return out


class Board:
    """The newest rounds, keyed by run_time, and a version that changes whenever one arrives (thread-safe:
    the selection client's thread adds, the web server reads)."""

    def __init__(self, rounds: Iterable[dict] = (), limit: int = ROUNDS_SHOWN):
        self.limit = limit
        self._lock = threading.Lock()
        self._rounds: dict[str, dict] = {}
        self.version = 0
        for record in rounds:
            self.add(record)

    def add(self, record: dict) -> None:
        with self._lock:
            self._rounds[record["run_time"]] = record
            for old in sorted(self._rounds)[:-self.limit]:
                del self._rounds[old]
            self.version += 1

    def newest_run_time(self) -> str | None:
        with self._lock:
            return max(self._rounds, default=None)

    def view(self, lots: Mapping[str, Decimal | None], equity: dict | None) -> dict:
        """Everything the page draws, newest round first."""
        with self._lock:
            rounds = [self._rounds[t] for t in sorted(self._rounds, reverse=True)]
            version = self.version
        rows = [round_row(r) for r in rounds]
        published = [r for r in rounds if not r.get("missed")]
        latest, earlier = [*published, None, None][:2]
        return {"version": version, "rounds": rows, "problems": [r for r in rows if r["status"] != "ok"],
                "latest": holdings(latest, lots, earlier) if latest else None,
                "latest_row": next((r for r in rows if r["status"] != "missed"), None), "equity": equity}
