"""Replay of the real data set through the stack at full speed: rounds per second, each round checked.

Timed pass: ``alphabus market --replay`` feeds the stack from the data set in memory (the bytes the
crawler would write, no disk in between), as fast as selections come back; the bench's outside
subscriber times the rounds from the first selection to the last. Check pass, untimed and with no
stack running: each hour is written to a directory and ``article_round`` computed alone on it must
pick the same coins.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from bench.baseline import Picks
from bench.scenario import progress
from bench.stack import FIRST_ROUND_TIMEOUT, ROUND_TIMEOUT, BenchError, BenchStack
from bench.stats import summary
from services.market.sim import ReplayMarket, write_hour
from shared.bmac import BmacDir
from shared.messages import Selection
from tests.reference import article_round

FIRST = 1500  # the first hour with 1500 candles of history


def _timed_pass(data_dir: Path, market: ReplayMarket, root: Path, rounds: int,
                config: dict[str, object]) -> tuple[dict[str, object], dict[int, Selection]]:
    """A fresh stack whose market replays hours FIRST.. ; the first selection starts the clock."""
    stack = BenchStack(root / "replay-work", root / "unused", shards=1,
                       market_args=("--replay", str(data_dir), "--first-hour", str(FIRST),
                                    "--hours", str(rounds + 1)), **config)
    hour = {market.run_time(k): k for k in range(rounds + 1)}
    selections: dict[int, Selection] = {}
    arrivals: list[float] = []
    with stack:
        assert stack.client is not None
        deadline = time.monotonic() + FIRST_ROUND_TIMEOUT
        while market.run_time(rounds) not in {s.run_time for s in selections.values()}:
            if time.monotonic() > deadline:
                raise BenchError(f"replay: {len(selections)} of {rounds + 1} selections arrived")
            for update in stack.client.poll(50):
                selections[hour[update.selection.run_time]] = update.selection
                arrivals.append(time.perf_counter())
                deadline = time.monotonic() + ROUND_TIMEOUT
        log = stack.log_problems()
    elapsed = arrivals[-1] - arrivals[0]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return {
        "rounds": len(arrivals) - 1, "elapsed_s": round(elapsed, 3),
        "rounds_per_s": round((len(arrivals) - 1) / elapsed, 2),
        "ms_between_selections": summary(gaps), "service_log": log,
    }, selections


def _check_pass(market: ReplayMarket, root: Path, selections: dict[int, Selection]) -> list[str]:
    """Run_times whose stack selection differs from ``article_round`` computed alone on that hour."""
    bmac = BmacDir(root / "replay-check", "1h")
    differ = []
    for k, sel in selections.items():
        run_time = write_hour(bmac, market, k)
        if run_time != sel.run_time:
            differ.append(f"{sel.run_time.isoformat()} arrived for hour {run_time.isoformat()}")
            continue
        _, long, short = article_round(bmac.root, run_time)
        if Picks.of_frames(long, short) != Picks.of_selection(sel):
            differ.append(run_time.isoformat())
    return differ


def run_replay(data_dir: Path, root: Path, rounds: int, config: dict[str, object] | None = None,
               check: bool = True) -> dict[str, object]:
    """The replay figure, or why there is none. ``config``: overrides of the article's config; ``check``: compare
    each round with the article's program (only for the article's strategy)."""
    if not (data_dir / ReplayMarket.CANDLES).exists():
        return {"skipped": f"real data set not present at {data_dir}"}
    market = ReplayMarket(data_dir, first_hour=FIRST)
    progress(f"replay of {data_dir} ({len(market.symbols)} symbols): {rounds} rounds at full speed")
    try:
        out, selections = _timed_pass(data_dir, market, root, rounds, config or {})
    except BenchError as e:
        progress(f"replay FAILED: {e}")
        return {"rounds": rounds, "error": str(e)}
    out["symbols"] = len(market.symbols)
    out["mismatches"] = _check_pass(market, root, selections) if check else []
    out["checked"] = len(selections) if check else 0
    out["error"] = None
    progress(f"replay: {out['rounds_per_s']} rounds/s, "
             + (f"{len(out['mismatches'])} of {len(selections)} rounds differ from the article's loop" if check
                else "not compared (not the article's strategy)"))
    return out
