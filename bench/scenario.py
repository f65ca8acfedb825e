"""One scenario: a fresh stack on one universe size and shard count, a warm-up hour, then measured rounds.

Burst and live rounds alternate in the same stack, and each round's baseline runs right after it
on the same files, so slow patches of a noisy machine hit stack and baseline alike.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.baseline import Picks, burst_baseline, live_baseline
from bench.feed import Feed, Started
from bench.procs import cpu_delta_ms, cpu_snapshot
from bench.stack import FIRST_ROUND_TIMEOUT, BenchError, BenchStack
from bench.stats import ratio, summary


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table and the JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    """One mode's rounds in one scenario (times in ms)."""

    stack: list[float] = field(default_factory=list)
    latency_field: list[float] = field(default_factory=list)  # the selection's own latency_ms
    baseline: list[float] = field(default_factory=list)
    baseline_parts: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # service -> CPU ms per round
    mismatches: list[str] = field(default_factory=list)  # run_times where stack and baseline picked differently
    incomplete: list[str] = field(default_factory=list)

    def add_cpu(self, used: dict[str, float]) -> None:
        for name, ms in {**used, "stack": sum(used.values())}.items():
            self.cpu.setdefault(name, []).append(ms)

    def add_part(self, name: str, ms: float) -> None:
        self.baseline_parts.setdefault(name, []).append(ms)

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {
            "stack_ms": summary(self.stack),
            "selection_latency_ms": summary(self.latency_field),
            "baseline_ms": summary(self.baseline),
            "ratio": ratio(self.baseline, self.stack),
            "cpu_ms_per_round": {name: summary(v) for name, v in self.cpu.items()},
            "selection_mismatches": self.mismatches,
            "incomplete_rounds": self.incomplete,
        }
        out.update({f"baseline_{name}_ms": summary(v) for name, v in self.baseline_parts.items()})
        return out


def _round(stack: BenchStack, feed: Feed, mode: str, into: Measured, baseline: bool = True) -> None:
    """Start one round, wait for its selection at the outside subscriber, then run the baseline on its files.

    CPU per round runs from just before the round start until the recorder has written the round
    and the services are idle again, so it includes work a deadline left unfinished.
    """
    pids = stack.pids()
    before = cpu_snapshot(pids)
    start: Started = feed.burst() if mode == "burst" else feed.live()
    update, received = stack.wait_selection(start.run_time)
    stack.wait_recorded(start.run_time)
    stack.wait_idle()
    into.add_cpu(cpu_delta_ms(before, cpu_snapshot(pids)))
    sel = update.selection
    into.stack.append((received - (start.started if mode == "burst" else start.last_ready)) * 1000)
    if sel.latency_ms is not None:
        into.latency_field.append(sel.latency_ms)
    if sel.incomplete or sel.coverage.missing:
        into.incomplete.append(sel.run_time.isoformat())
    if baseline and _baseline(feed, mode, start, into) != Picks.of_selection(sel):
        into.mismatches.append(sel.run_time.isoformat())


def _baseline(feed: Feed, mode: str, start: Started, into: Measured) -> Picks:
    """The article's loop on the round's files (the stack is idle by now): its time goes into ``into``."""
    if mode == "burst":
        seconds, picks = burst_baseline(feed.bmac, start.run_time)
        into.baseline.append(seconds * 1000)
        return picks
    live = live_baseline(feed.bmac, start.run_time, start.order, feed.spread_sec)
    into.baseline.append(live.total * 1000)
    into.add_part("symbol", live.symbol * 1000)
    into.add_part("cross_section", live.cross_section * 1000)
    into.add_part("queued", live.queued * 1000)
    return live.picks


def run_scenario(feed: Feed, workdir: Path, size: int, shards: int, rounds: int,
                 config: dict[str, object] | None = None, baseline: bool = True) -> dict[str, object]:
    """A fresh stack, a warm-up hour (its first round pays for imports and caches), then burst/live pairs.

    ``config``: overrides of the article's factor_calc.json for the stack. ``baseline``: time the article's
    pandas loop beside each round and compare picks; only meaningful when the stack runs the article's strategy.
    """
    modes = {"burst": Measured(), "live": Measured()}
    out: dict[str, object] = {"size": size, "shards": shards, "rounds": rounds, "error": None}
    feed.forget_round()
    stack = BenchStack(workdir, feed.bmac.root, shards, **(config or {}))
    try:
        with stack:
            warm = feed.burst()
            stack.wait_selection(warm.run_time, FIRST_ROUND_TIMEOUT)
            stack.wait_recorded(warm.run_time)
            stack.wait_idle()
            progress(f"{size} symbols, {shards} shard(s): warm-up round done; measuring")
            for i in range(rounds):
                for mode, measured in modes.items():
                    _round(stack, feed, mode, measured, baseline)
                progress(f"{size} symbols, {shards} shard(s): round {i + 1}/{rounds}: burst "
                         f"{modes['burst'].stack[-1]:.0f} ms, live {modes['live'].stack[-1]:.1f} ms")
            memory = stack.memory()
            out["memory_mb"] = memory
            out["stack_memory_mb"] = {f"{key}_sum": round(sum(m.get(key, 0.0) for m in memory.values()), 1)
                                      for key in ("vmhwm", "vmrss", "pss")}
    except BenchError as e:
        out["error"] = str(e)
        progress(f"{size} symbols, {shards} shard(s): FAILED: {e}")
    out.update({mode: m.report() for mode, m in modes.items()})
    out["service_log"] = stack.log_problems()
    return out
