"""One scenario: a fresh stack on one universe size, factor and shard count, a warm-up hour, then measured rounds.

Burst and live rounds alternate in the same stack, and each round's hour is then run by the
original program on the same files, so slow patches of a noisy machine hit both alike:

* burst: alphabus from the exginfo marker to ``select_his/<ts>_long.csv.zip`` written; the
  original on the same directory, from its step 1 to ``save_selected`` done, in its own process.
* live: alphabus from the last candle marker to the same file. The original busy-waits for the
  markers and computes each symbol as it appears, so it is given the round's files hard-linked into
  a directory of its own and the markers are created there again, in the same order over the
  same spread; its figure runs from that last marker to ``save_selected`` done.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.baseline import OriginalProgram, Picks, install_plugins
from bench.feed import Feed, Started, mark_spread
from bench.procs import cpu_delta_ms, cpu_snapshot
from bench.stack import FIRST_ROUND_TIMEOUT, BenchError, BenchStack
from bench.stats import ratio, summary
from shared.bmac import BmacDir
from tests.conftest import write_config


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table and the JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Factor:
    """The factor a scenario runs: its label in the table and what it changes in the article's factor_calc.json."""

    label: str
    config: dict[str, object]  # overrides of the article's factor_calc.json (none: the article's strategy)
    plugin: bool = False  # a user's file from bench/plugins (shipped into the work directory's factors/)


@dataclass
class Measured:
    """One mode's rounds in one scenario (times in ms)."""

    stack: list[float] = field(default_factory=list)  # to select_his/<ts>_long.csv.zip written
    published: list[float] = field(default_factory=list)  # to the selection at an outside subscriber
    latency_field: list[float] = field(default_factory=list)  # the selection's own latency_ms
    original: list[float] = field(default_factory=list)
    original_hour: list[float] = field(default_factory=list)  # burst: the original's step 1 to step 7 done
    cpu: dict[str, list[float]] = field(default_factory=dict)  # service -> CPU ms per round
    mismatches: list[str] = field(default_factory=list)  # run_times where the stack and the original differ
    incomplete: list[str] = field(default_factory=list)

    def add_cpu(self, used: dict[str, float]) -> None:
        for name, ms in {**used, "stack": sum(used.values())}.items():
            self.cpu.setdefault(name, []).append(ms)

    def report(self) -> dict[str, object]:
        return {
            "stack_ms": summary(self.stack),
            "published_ms": summary(self.published),
            "selection_latency_ms": summary(self.latency_field),
            "original_ms": summary(self.original),
            "original_hour_ms": summary(self.original_hour),
            "ratio": ratio(self.original, self.stack),
            "cpu_ms_per_round": {name: summary(v) for name, v in self.cpu.items()},
            "selection_mismatches": self.mismatches,
            "incomplete_rounds": self.incomplete,
        }


@dataclass(frozen=True)
class Original:
    """The original program and its two work directories for one scenario (same config as the stack's)."""

    program: OriginalProgram
    burst_workdir: Path  # reads the feed's own directory
    live_workdir: Path  # reads ``shadow``, where the bench replays the markers
    shadow: BmacDir

    @classmethod
    def beside(cls, program: OriginalProgram, root: Path, feed: Feed, config: dict[str, object]) -> Original:
        shadow = BmacDir(root / "shadow-bmac", feed.bmac.interval)
        return cls(program, write_config(root / "burst", feed.bmac.root, **config),
                   write_config(root / "live", shadow.root, **config), shadow)

    def run(self, feed: Feed, mode: str, start: Started, into: Measured) -> Picks:
        """The original program on the round's hour (the stack is idle by now): its time goes into ``into``."""
        if mode == "burst":
            hour = self.program.hour(self.burst_workdir, start.run_time)
            into.original.append((hour.selected - hour.began) * 1000)
            into.original_hour.append((hour.finished - hour.began) * 1000)
            return hour.picks
        feed.mirror(self.shadow, start)
        self.program.ask(self.live_workdir, start.run_time)
        last = mark_spread(self.shadow, start.run_time, start.order, time.perf_counter(), feed.spread_sec)
        hour = self.program.answer()
        into.original.append((hour.selected - last) * 1000)
        return hour.picks


def _round(stack: BenchStack, feed: Feed, mode: str, into: Measured, original: Original | None) -> None:
    """Start one round, time it to its select_his file, then run the original on the same hour.

    CPU per round runs from just before the round start until the recorder has written the round
    and the services are idle again, so it includes work a deadline left unfinished.
    """
    pids = stack.pids()
    before = cpu_snapshot(pids)
    watch = stack.watch_round(feed.next_run_time())
    start: Started = feed.burst() if mode == "burst" else feed.live()
    update, published, written = stack.wait_round(start.run_time, watch=watch)
    stack.wait_recorded(start.run_time)
    stack.wait_idle()
    into.add_cpu(cpu_delta_ms(before, cpu_snapshot(pids)))
    sel = update.selection
    began = start.started if mode == "burst" else start.last_ready
    into.stack.append((written - began) * 1000)
    into.published.append((published - began) * 1000)
    if sel.latency_ms is not None:
        into.latency_field.append(sel.latency_ms)
    if sel.incomplete or sel.coverage.missing:
        into.incomplete.append(sel.run_time.isoformat())
    if original is not None and original.run(feed, mode, start, into) != Picks.of_selection(sel):
        into.mismatches.append(sel.run_time.isoformat())


def run_scenario(feed: Feed, workdir: Path, size: int, shards: int, rounds: int, factor: Factor | None = None,
                 program: OriginalProgram | None = None, workers: int | None = None) -> dict[str, object]:
    """A fresh stack, a warm-up hour (its first round pays for imports and caches), then burst/live pairs.

    ``factor``: what the stack (and the original) compute, by default the article's strategy.
    ``program``: run the original program beside each round and compare picks (None: stack figures alone).
    ``workers``: processes per factor shard (None: the factor service's default, cores / shards).
    """
    factor = factor or Factor("builtin", {})
    modes = {"burst": Measured(), "live": Measured()}
    out: dict[str, object] = {"size": size, "factor": factor.label, "shards": shards, "rounds": rounds,
                              "error": None}
    what = f"{size} symbols, {factor.label}, {shards} shard(s)"
    feed.forget_round()
    stack = BenchStack(workdir / "stack", feed.bmac.root, shards, workers=workers, **factor.config)
    if factor.plugin:
        install_plugins(workdir / "stack" / "factors")
    original = Original.beside(program, workdir / "original", feed, factor.config) if program else None
    try:
        with stack:
            warm = feed.burst()
            stack.wait_selection(warm.run_time, FIRST_ROUND_TIMEOUT)
            stack.wait_recorded(warm.run_time)
            stack.wait_idle()
            if original is not None:
                original.run(feed, "burst", warm, Measured())  # its first hour of this config, untimed
            progress(f"{what}: warm-up round done; measuring")
            for i in range(rounds):
                for mode, measured in modes.items():
                    _round(stack, feed, mode, measured, original)
                b, li = modes["burst"], modes["live"]
                vs = (f" (original {b.original[-1]:.0f} ms, {li.original[-1]:.0f} ms)" if original else "")
                progress(f"{what}: round {i + 1}/{rounds}: burst {b.stack[-1]:.0f} ms, live {li.stack[-1]:.1f} ms"
                         + vs)
            memory = stack.memory()
            out["memory_mb"] = memory
            out["stack_memory_mb"] = {f"{key}_sum": round(sum(m.get(key, 0.0) for m in memory.values()), 1)
                                      for key in ("vmhwm", "vmrss", "pss")}
    except BenchError as e:
        out["error"] = str(e)
        progress(f"{what}: FAILED: {e}")
    out.update({mode: m.report() for mode, m in modes.items()})
    out["service_log"] = stack.log_problems()
    return out
