"""One factor service's rows computed on every core it is given: the service process and a pool of workers.

A round's symbols are split by the stable symbol hash (``bus.bucket_of``), so each symbol always
lands on the same worker (whatever a worker keeps between rounds stays useful). Share 0 is computed
in the service process itself while the pool's processes compute theirs, so ``workers`` = N uses
N processes in all and ``workers`` = 1 is the plain in-process loop.

A batch of at most ``LOCAL_BATCH`` symbols (a live round's candles arrive one or two at a time) is
computed in the service process whatever its hashes: a pool process's round trip (pickle, pipe, its
wake-up, the rows back as Arrow IPC) costs more than a kernel row and most of a plugin row. Nothing a
worker keeps between rounds is needed for a correct row (today: only caches), so the hash rule is
about where such caches stay warm, not about results. When the service falls behind, its batches grow
and the pool takes its shares again.

A pool process runs ``serve`` and talks to the service over a pipe: it receives a round's tasks and
answers with its rows as one Arrow IPC table plus its skips. A process that dies (a plugin's C code
crashing, the OOM killer, a kill) costs only its own symbols of that round, reported as skipped with
the reason; a replacement is started at once and serves the next round. A pool process that hangs
inside a plugin stalls the round, as a hanging plugin would stall the single-process service.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import pyarrow as pa

from services.factor.compute import (
    NO_FUNDING,
    Funding,
    KernelRows,
    PluginRows,
    Skipped,
    check_size,
    read_shared_file,
    row_builder,
    usable_table,
)
from shared import bus
from shared.config import SelectorConfig
from shared.messages import Skip
from shared.plugins import build_calculators
from shared.tables import ipc_to_table, table_to_ipc

log = logging.getLogger("factor")
WORKERS_ENV = "ALPHABUS_FACTOR_WORKERS"
LOCAL_BATCH = 2
"""Batches of at most this many symbols are computed in the service process (see the module docstring)."""


@dataclass(frozen=True)
class Task:
    """One symbol's candles for one round: a path to read (``data`` None) or the file's bytes."""

    symbol: str
    source: str
    data: bytes | None
    funding_times: tuple[int, ...] = ()
    funding_rates: tuple[float, ...] = ()

    def funding(self) -> Funding:
        if not self.funding_times:
            return NO_FUNDING
        return np.asarray(self.funding_times, np.int64), np.asarray(self.funding_rates, np.float64)


@dataclass
class Rows:
    """What a round's symbols give: rows (tables of one or more rows, in ``symbols`` order; files of another
    schema give tables of other columns, so ``combined`` puts them together) and skips."""

    tables: list[pa.Table]
    symbols: list[str]
    skipped: list[Skip]

    def combined(self) -> pa.Table | None:
        """The rows as one table, columns promoted as the position service promotes them (an int64 close
        beside float64 ones becomes float64, as pandas' concat makes it). A table whose columns cannot join
        the others' (text where the others hold numbers) has its symbols moved to ``skipped`` by name, so
        one odd file never costs the batch."""
        if not self.tables:
            return None
        try:
            return pa.concat_tables(self.tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
        kept: list[pa.Table] = []
        symbols: list[str] = []
        schema: pa.Schema | None = None
        start = 0
        for table in self.tables:
            names, start = self.symbols[start: start + table.num_rows], start + table.num_rows
            try:
                schema = table.schema if schema is None else pa.unify_schemas([schema, table.schema],
                                                                              promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                self.skipped += [Skip(symbol=symbol, reason="bad_data", detail=f"its file's columns do not join "
                                      f"the other files' ({type(e).__name__}: {e})") for symbol in names]
                continue
            kept.append(table)
            symbols += names
        self.tables, self.symbols = kept, symbols
        return pa.concat_tables(kept, promote_options="permissive") if kept else None


def default_workers(shard_count: int = 1) -> int:
    """$ALPHABUS_FACTOR_WORKERS, else this process's cores divided among the shards (at least 1).

    With the compose default of 2 shards on 2 cores each shard is one process; one shard on 2 cores
    gets 2. A bad value is a user mistake and raises ValueError with a sentence that names it.
    """
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{WORKERS_ENV}={raw!r} is not a positive whole number of worker processes")
        return int(raw)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, shard_count))


def compute_rows(tasks: Sequence[Task], build: PluginRows | KernelRows, min_candle_num: int,
                 closed_begin: datetime, max_file_bytes: int) -> Rows:
    """Every task's row or skip; one symbol's failure never stops the others. Each symbol's part is computed
    under its own guard; the batch's rows are then put together at once (``build.tables``)."""
    parts: list = []  # what build.part gives: one-row tables (plugins) or rows and values (kernels)
    symbols: list[str] = []
    skipped: list[Skip] = []
    for task in tasks:
        try:
            if task.data is None:
                data: bytes | pa.Buffer = read_shared_file(task.source, task.symbol, max_file_bytes)
            else:
                data = task.data
                check_size(data, task.source, task.symbol, max_file_bytes)
            table = usable_table(data, task.source, task.symbol, min_candle_num, closed_begin)
            parts.append(build.part(table, task.symbol, task.funding()))
            symbols.append(task.symbol)
        except Skipped as s:
            skipped.append(s.skip)
        except Exception as e:  # never let one symbol stop the worker
            log.exception("%s failed", task.symbol)
            skipped.append(Skip(symbol=task.symbol, reason="error", detail=f"{type(e).__name__}: {e}"))
    return Rows(build.tables(parts, symbols), symbols, skipped)


def serve(conn: Connection, cfg: SelectorConfig, workdir: Path, fast: bool, interval_ms: int,
          max_file_bytes: int) -> None:
    """A pool process: build the row builder once, then answer rounds until the service closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle; it closes our pipe
    build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir), fast=fast,
                        interval_ms=interval_ms)
    try:
        conn.send("ready")
    except OSError:  # the service stopped while we started
        return
    while True:
        try:
            closed_begin, tasks = conn.recv()
        except (EOFError, OSError):
            return
        rows = compute_rows(tasks, build, cfg.min_candle_num, closed_begin, max_file_bytes)
        table = rows.combined()
        try:
            conn.send((rows.symbols, [s.model_dump() for s in rows.skipped],
                       table_to_ipc(table).to_pybytes() if table is not None else b""))
        except (BrokenPipeError, OSError):  # the service stopped while we computed
            return


class _Process:
    """One pool process and the service's end of its pipe."""

    def __init__(self, index: int, args: tuple) -> None:
        self.index = index
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds ZeroMQ sockets
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(target=serve, args=(child, *args), name=f"factor-pool-{index}",
                                                daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def check_ready(self) -> bool:
        """Has it said "ready" yet? Never waits: until then the service computes this process's share."""
        try:
            if not self.ready and self.conn.poll(0):
                self.ready = self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False
        return self.ready

    def stop(self, timeout: float = 5.0) -> None:
        self.conn.close()  # the process sees EOF and returns
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)


class RowPool:
    """A round's rows from ``workers`` processes (this one included); see the module docstring."""

    def __init__(self, cfg: SelectorConfig, workdir: Path, build: PluginRows | KernelRows, workers: int,
                 fast: bool, interval_ms: int, max_file_bytes: int) -> None:
        self.cfg, self.build, self.workers, self.max_file_bytes = cfg, build, max(1, workers), max_file_bytes
        self._args = (cfg, Path(workdir), fast, interval_ms, max_file_bytes)
        self.restarts = 0
        self.procs = [_Process(i, self._args) for i in range(1, self.workers)]

    def wait_started(self, timeout: float) -> bool:
        """Wait until every pool process is ready (tests and benches; the service itself never waits)."""
        deadline = time.monotonic() + timeout
        while not all(proc.check_ready() for proc in self.procs):
            if time.monotonic() > deadline or any(p.process.exitcode is not None for p in self.procs):
                return False
            time.sleep(0.02)
        return True

    def share(self, symbol: str) -> int:
        """Which process computes this symbol: stable across rounds, restarts and hosts."""
        return bus.bucket_of(symbol) % self.workers

    def compute(self, tasks: Sequence[Task], closed_begin: datetime) -> Rows:
        if len(tasks) <= LOCAL_BATCH:  # a live trickle: the round trip to a pool process costs more than it saves
            return compute_rows(tasks, self.build, self.cfg.min_candle_num, closed_begin, self.max_file_bytes)
        shares: list[list[Task]] = [[] for _ in range(self.workers)]
        for task in tasks:
            shares[self.share(task.symbol)].append(task)
        sent: list[_Process] = []
        for proc in self.procs:
            own = shares[proc.index]
            if not own:
                continue
            if not proc.check_ready():  # still starting (or never started): this process computes its share
                shares[0].extend(own)
                if proc.process.exitcode is not None:
                    log.error("factor pool process %d exited before it was ready (exit code %s); its symbols are "
                              "computed here; starting a replacement", proc.index, proc.process.exitcode)
                    self._replace(proc)
                continue
            try:
                proc.conn.send((closed_begin, own))
                sent.append(proc)
            except (OSError, ValueError):
                shares[0].extend(own)  # the pipe broke before the round reached it: nothing was computed yet
                self._replace(proc)
        out = compute_rows(shares[0], self.build, self.cfg.min_candle_num, closed_begin, self.max_file_bytes)
        for proc in sent:
            self._collect(proc, shares[proc.index], out)
        return out

    def _collect(self, proc: _Process, own: list[Task], out: Rows) -> None:
        try:
            wait([proc.conn, proc.process.sentinel])
            symbols, skipped, ipc = proc.conn.recv()  # data sent before a death is still read
        except (EOFError, OSError):
            proc.process.join(1.0)
            why = f"factor pool process {proc.index} died (exit code {proc.process.exitcode}) computing this symbol"
            log.error("%s and %d others; starting a replacement", why, len(own) - 1)
            out.skipped.extend(Skip(symbol=t.symbol, reason="error", detail=why) for t in own)
            self._replace(proc)
            return
        out.skipped.extend(Skip.model_validate(s) for s in skipped)
        if ipc:
            out.tables.append(ipc_to_table(ipc))
            out.symbols.extend(symbols)

    def _replace(self, proc: _Process) -> None:
        proc.stop(timeout=1.0)
        self.restarts += 1
        self.procs[self.procs.index(proc)] = _Process(proc.index, self._args)  # serves once it says "ready"

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
