"""Factor service main loop.

Role: SUB connected to the market (``round.closed`` and its shard's ``candle.<bucket>.``
prefixes, so the publisher filters), XPUB connected to the position service's
bound SUB. It subscribes upstream only once the position service's
subscription has reached it, so no result is computed for nobody.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import zmq

from services.factor.compute import PluginRows, row_builder
from services.factor.pool import RowPool, Task
from shared import bus, metrics, security
from shared.bmac import max_file_bytes
from shared.clock import parse_interval
from shared.config import SelectorConfig
from shared.messages import Candles, Envelope, FactorResults, RoundClosed
from shared.plugins import build_calculators
from shared.service import HeartbeatTimer, StopFlag
from shared.tables import table_to_ipc

log = logging.getLogger("factor")
BATCH = 64
CHUNK_PER_PROCESS = 128
"""Symbols each of a shard's processes computes before the shard sends what it has: a big round's results
flow while the rest computes (the position service's deadline counts from the last result), and the
position service takes them in while the factor layer is still busy."""
MAX_TALLIES = 16
"""Rounds tallied at once; a round whose close never comes is forgotten after this many newer ones."""


class RoundTally:
    """Per-round counts for the one summary line a round gets."""

    def __init__(self) -> None:
        self.rows = 0
        self.skipped: dict[str, int] = defaultdict(int)
        self.compute_ms = 0.0


class FactorWorker:
    def __init__(self, cfg: SelectorConfig, workdir: Path, shard: bus.Shard,
                 sub: zmq.Socket, out: zmq.Socket, stop: StopFlag, fast: bool = True, workers: int = 1):
        self.cfg = cfg
        self.shard = shard
        self.interval = parse_interval(cfg.interval)
        interval_ms = int(self.interval.total_seconds() * 1000)
        self.build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir), fast=fast,
                                 interval_ms=interval_ms)
        log.info("factor rows by the %s", "built-in kernels (fast path)" if not isinstance(
            self.build, PluginRows) else "plugins' signal functions")
        self.sub, self.out, self.stop = sub, out, stop
        self.pub = bus.Publisher(out, bus.identity(f"factor-{shard.label}"))
        self.heartbeat = HeartbeatTimer(self.pub, "factor")
        self.inbox = bus.Inbox()
        self.subscribed = False
        self.tallies: dict[datetime, RoundTally] = defaultdict(RoundTally)
        self.last_run_time: datetime | None = None
        self.pool = RowPool(cfg, workdir, self.build, workers, fast, interval_ms,
                            max_file_bytes())
        log.info("factor shard %s computes on %d process(es) (--workers)", shard, self.pool.workers)

    def _on_downstream(self) -> None:
        while True:
            try:
                self.out.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        if not self.subscribed:
            for prefix in [bus.ROUND_CLOSED, *self.shard.candle_prefixes()]:
                self.sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
            self.subscribed = True
            log.info("position service is listening; subscribed to shard %s (%d candle prefixes)",
                     self.shard, len(self.shard.candle_prefixes()))

    def _drain(self) -> list[Envelope]:
        batch: list[Envelope] = []
        while len(batch) < BATCH and self.sub.poll(0):
            env = self.inbox.recv(self.sub)
            if env is not None:
                batch.append(env)
        return batch

    def _tasks(self, env: Envelope) -> list[Task]:
        """The message's files this shard owns (a paths message goes to every shard)."""
        body: Candles = env.body  # type: ignore[assignment]
        datas = [None] * len(body.files) if body.by_path else env.payloads  # decode checked one frame per file
        return [Task(f.symbol, f.path, None if data is None else bytes(data), tuple(f.funding_times),
                     tuple(f.funding_rates))
                for f, data in zip(body.files, datas, strict=True) if self.shard.owns(f.symbol)]

    def _compute(self, candles: list[Envelope]) -> None:
        by_round: dict[datetime, list[Envelope]] = defaultdict(list)
        for env in candles:
            by_round[env.body.run_time].append(env)
        for run_time, envs in by_round.items():
            tasks = list({task.symbol: task for env in envs for task in self._tasks(env)}.values())  # once each
            ready_at = {f.symbol: f.ready_at for env in envs for f in env.body.files}
            chunk = CHUNK_PER_PROCESS * self.pool.workers
            for i in range(0, len(tasks), chunk):  # none: a paths message with none of this shard's symbols
                self._send_rows(run_time, tasks[i: i + chunk], ready_at)
                self._beat()  # alive while a big round computes

    def _send_rows(self, run_time: datetime, tasks: list[Task], ready_at: dict[str, datetime]) -> None:
        """Compute the tasks' rows and send them (and their skips) as one result."""
        t0 = time.perf_counter()
        result = self.pool.compute(tasks, run_time - self.interval)
        table = result.combined()
        symbols, skipped = result.symbols, result.skipped
        for s in skipped:
            level = logging.DEBUG if s.reason == "too_few_candles" else logging.WARNING
            log.log(level, "round %s: skipped %s: %s: %s", run_time.isoformat(), s.symbol, s.reason, s.detail)
        compute_ms = (time.perf_counter() - t0) * 1000
        payloads = [table_to_ipc(table)] if table is not None else []
        self.pub.send(bus.factor_topic(self.shard.label), FactorResults(
            run_time=run_time, shard=str(self.shard), symbols=symbols, skipped=skipped,
            last_ready_at=max(ready_at[t.symbol] for t in tasks), compute_ms=compute_ms), payloads)
        while len(self.tallies) >= MAX_TALLIES and run_time not in self.tallies:
            del self.tallies[min(self.tallies)]
        tally = self.tallies[run_time]
        tally.rows += len(symbols)
        tally.compute_ms += compute_ms
        for s in skipped:
            tally.skipped[s.reason] += 1
        self.last_run_time = run_time

    def _on_round_closed(self, body: RoundClosed) -> None:
        if body.run_time not in self.tallies:  # nothing of ours this round: say so, or we look silent
            self.pub.send(bus.factor_topic(self.shard.label), FactorResults(
                run_time=body.run_time, shard=str(self.shard), symbols=[], skipped=[], last_ready_at=None))
        tally = self.tallies.pop(body.run_time, RoundTally())
        metrics.factor_round(tally.compute_ms, tally.rows, sum(tally.skipped.values()))
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(tally.skipped.items())) or "none skipped"
        log.info("round %s: shard %s computed %d symbols (%s) in %.1f ms",
                 body.run_time.isoformat(), self.shard, tally.rows, skipped, tally.compute_ms)

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.out, zmq.POLLIN)
        while not self.stop:
            events = dict(poller.poll(200))
            if self.out in events:
                self._on_downstream()
            if self.sub in events:
                batch = self._drain()
                self._compute([e for e in batch if isinstance(e.body, Candles)])
                for env in batch:
                    if isinstance(env.body, RoundClosed):
                        self._on_round_closed(env.body)
            self._beat()
        return 0

    def _beat(self) -> None:
        self.heartbeat.tick(self.last_run_time, shard=str(self.shard), subscribed=self.subscribed,
                            **self.inbox.counts())


def main(cfg: SelectorConfig, workdir: Path, shard: bus.Shard, fast: bool = True, workers: int = 1) -> int:
    """``workers``: processes computing this shard's rows, this one included (see ``pool.default_workers``)."""
    stop = StopFlag()
    bus.join_stack(workdir)
    keys = security.stack_keys(workdir)
    ctx = bus.context()
    sub = bus.make_socket(ctx, zmq.SUB)
    out = bus.make_socket(ctx, zmq.XPUB)
    out.setsockopt(zmq.XPUB_VERBOSER, 1)
    if keys:
        keys.connect_as(sub, "factor", "market")
        keys.connect_as(out, "factor", "factor_in")
    market, position = bus.endpoint("ALPHABUS_MARKET_PUB"), bus.endpoint("ALPHABUS_FACTOR_IN")
    sub.connect(market)
    out.connect(position)
    log.info("factor shard %s: SUB connected to market %s, results to position %s, stack %s, %s", shard, market,
             position, bus.current_stack(), "CURVE" if keys else "NOT AUTHENTICATED")
    worker: FactorWorker | None = None
    try:
        worker = FactorWorker(cfg, workdir, shard, sub, out, stop, fast, workers)
        return worker.run()
    finally:
        if worker is not None:
            worker.pool.close()
        bus.shutdown(ctx, sub, out)
