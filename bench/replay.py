"""Replay of the real data set through the stack at full speed: rounds per second, each round checked.

Timed pass: ``write_hour(ReplayMarket)`` hour after hour as fast as possible, waiting for each
selection before writing the next hour (the crawler's writing is part of the figure: it is what
feeds the stack). Check pass, untimed and with no stack running: each hour is written again
into a second directory and ``article_round`` computed alone on it must pick the same coins.
Keeping the check out of the timed pass means the stack never gets a pause to catch up in.
"""

from __future__ import annotations

import time
from pathlib import Path

from alphabus.sim import ReplayMarket, write_hour
from bench.baseline import Picks
from bench.scenario import progress
from bench.stack import FIRST_ROUND_TIMEOUT, BenchError, BenchStack
from bench.stats import summary
from shared.bmac import BmacDir
from shared.messages import Selection
from tests.reference import article_round


def _timed_pass(market: ReplayMarket, root: Path, rounds: int) -> tuple[dict[str, object], dict[int, Selection]]:
    """A fresh stack; hour 0 warms it up; hours 1..rounds are timed."""
    bmac = BmacDir(root / "replay-bmac", "1h")
    writes, waits, selections = [], [], {}
    stack = BenchStack(root / "replay-work", bmac.root, shards=1)
    with stack:
        warm = write_hour(bmac, market, 0)
        stack.wait_selection(warm, FIRST_ROUND_TIMEOUT)
        stack.wait_recorded(warm)
        stack.wait_idle()
        began = time.perf_counter()
        for k in range(1, rounds + 1):
            t0 = time.perf_counter()
            run_time = write_hour(bmac, market, k)
            t1 = time.perf_counter()
            update, received = stack.wait_selection(run_time)
            writes.append((t1 - t0) * 1000)
            waits.append((received - t1) * 1000)
            selections[k] = update.selection
        elapsed = time.perf_counter() - began
    return {
        "rounds": rounds, "elapsed_s": round(elapsed, 3), "rounds_per_s": round(rounds / elapsed, 2),
        "write_hour_ms": summary(writes), "wait_after_write_ms": summary(waits),
        "service_log": stack.log_problems(),
    }, selections


def _check_pass(market: ReplayMarket, root: Path, selections: dict[int, Selection]) -> list[str]:
    """Run_times whose stack selection differs from ``article_round`` computed alone on that hour."""
    bmac = BmacDir(root / "replay-check", "1h")
    differ = []
    for k, sel in selections.items():
        run_time = write_hour(bmac, market, k)
        _, long, short = article_round(bmac.root, run_time)
        if Picks.of_frames(long, short) != Picks.of_selection(sel):
            differ.append(run_time.isoformat())
    return differ


def run_replay(data_dir: Path, root: Path, rounds: int) -> dict[str, object]:
    """The replay figure, or why there is none."""
    if not (data_dir / ReplayMarket.CANDLES).exists():
        return {"skipped": f"real data set not present at {data_dir}"}
    market = ReplayMarket(data_dir)
    progress(f"replay of {data_dir} ({len(market.symbols)} symbols): {rounds} rounds at full speed")
    try:
        out, selections = _timed_pass(market, root, rounds)
    except BenchError as e:
        progress(f"replay FAILED: {e}")
        return {"rounds": rounds, "error": str(e)}
    out["symbols"] = len(market.symbols)
    out["mismatches"] = _check_pass(market, root, selections)
    out["checked"] = len(selections)
    out["error"] = None
    progress(f"replay: {out['rounds_per_s']} rounds/s, {len(out['mismatches'])} of {len(selections)} rounds "
             "differ from the article's loop")
    return out
