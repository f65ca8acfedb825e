"""``--compare-live``: the backtest's selections against the live stack's recorded ones, hour by hour.

The CLI replays the hours through the four services (the market's in-memory replay) into a scratch
work directory; this compares what the recorder wrote (``selection_his/*.json``) with ``selections.csv``:
an hour is identical when both hold the same symbols on the same sides with the same positions.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd

from services.recorder.files import history_paths

Sides = dict[str, dict[str, Decimal]]


def backtest_sides(selections_csv: Path) -> dict[str, Sides]:
    """run_time (ISO) -> side -> symbol -> position, from the backtest's selections.csv."""
    df = pd.read_csv(selections_csv, dtype=str, keep_default_na=False)
    out: dict[str, Sides] = {}
    for row in df.itertuples(index=False):
        out.setdefault(row.run_time, {"long": {}, "short": {}})[row.side][row.symbol] = Decimal(row.position)
    return out


def live_sides(selection: dict) -> Sides:
    return {side: {p["symbol"]: Decimal(str(p["position"])) for p in selection[side]} for side in ("long", "short")}


def _brief(sides: Sides) -> str:
    return "; ".join(f"{side} {', '.join(f'{s} {q}' for s, q in picks.items()) or '-'}"
                     for side, picks in sides.items())


def compare(live_workdir: Path, backtest: dict[str, Sides], run_times: list) -> dict[str, object]:
    """Hours identical / compared, and the first few that differ. A live round that missed symbols (a stack
    too slow for the replay: coverage says so) is counted apart, not compared: it saw other inputs."""
    identical, compared, incomplete, differ = 0, 0, [], []
    for run_time in run_times:
        path = history_paths(live_workdir, run_time)["selection"]
        mine = backtest.get(run_time.isoformat(), {"long": {}, "short": {}})
        if not path.exists():
            incomplete.append(f"{run_time.isoformat()}: not recorded by the live stack")
            continue
        selection = json.loads(path.read_text())
        coverage = selection["coverage"]
        if coverage["missing"] or selection.get("incomplete"):
            incomplete.append(f"{run_time.isoformat()}: live round had {coverage['received']} of "
                              f"{coverage['expected']} symbols")
            continue
        compared += 1
        if live_sides(selection) == mine:
            identical += 1
        else:
            differ.append(f"{run_time.isoformat()}: live {_brief(live_sides(selection))} | backtest {_brief(mine)}")
    return {"identical": identical, "compared": compared, "live_incomplete": len(incomplete),
            "incomplete": incomplete[:10], "differ": differ[:10]}
