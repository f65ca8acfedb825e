"""Medians with their spread: one number per figure, plus how far single rounds strayed from it."""

from __future__ import annotations

import statistics


def summary(values: list[float]) -> dict[str, object]:
    """Median, min, max and every value (rounded), or Nones when no round produced the figure."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values), "values": [round(v, 3) for v in values]}


def ratio(original: list[float], stack: list[float]) -> float | None:
    """Original median over stack median: how many times faster the stack is, measured in the same run."""
    if not original or not stack or statistics.median(stack) <= 0:
        return None
    return round(statistics.median(original) / statistics.median(stack), 2)
