"""A fresh stack of the four services on loopback, watched by an outside SelectionClient in the bench process."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import zmq

from alphabus.launcher import Services, loopback_endpoints, stack_client, start_stack
from bench.procs import cpu_snapshot, descendants, memory_mb
from services.market.watch import NewFiles
from services.recorder.files import history_paths
from shared.client import SelectionClient, SelectionUpdate
from tests.conftest import write_config

FIRST_ROUND_TIMEOUT = 180.0  # process start, imports, --await-subscribers, then a cold first round
ROUND_TIMEOUT = 90.0  # the stack gives up on a round after bmac_expire_sec (30) + round_grace_sec (2)


class BenchError(RuntimeError):
    """The stack did not deliver a round; the message says what was observed."""


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while services start, so they inherit it as their stderr.

    ``Services`` starts children with the bench's own stderr; their log lines belong in a file the
    bench can count warnings in, not between its progress lines.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class BenchStack:
    """Four services as processes over TCP (``clock="follow"``) on one BMAC dir, plus an outside subscriber."""

    def __init__(self, workdir: Path, bmac_root: Path, shards: int, market_args: tuple[str, ...] = (),
                 workers: int | None = None, **config: object):
        """``config``: overrides of the article's factor_calc.json (none by default); ``workers``: processes per
        factor shard (None: the factor service's default)."""
        self.market_args = market_args
        self.workdir = write_config(workdir, bmac_root, **config)
        self.log_path = workdir / "services.log"
        self.shards = shards
        self.endpoints = loopback_endpoints()
        workers_env = {} if workers is None else {"ALPHABUS_FACTOR_WORKERS": str(workers)}
        self.services = Services({**self.endpoints, "ALPHABUS_LOG_LEVEL": "WARNING", **workers_env})
        self.client: SelectionClient | None = None

    def __enter__(self) -> BenchStack:
        # Subscribe before the stack starts: the market holds its first round until everyone listens.
        self.client = stack_client(self.workdir, self.endpoints, "bench")
        try:
            with _stderr_to(self.log_path):
                start_stack(self.services, self.workdir, shards=self.shards, clock="follow",
                            market_args=self.market_args)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.services.stop()

    def pids(self) -> dict[str, int]:
        """Each service's process and those it started (``factor-0/1``: its first worker): what a round costs."""
        out = {}
        for name, p in self.services.procs.items():
            out[name] = p.pid
            out.update({f"{name}/{i}": child for i, child in enumerate(descendants(p.pid), 1)})
        return out

    def _check_alive(self, what: str) -> None:
        exited = self.services.exited()
        if exited:
            raise BenchError(f"{what}: service(s) exited: {exited} (see {self.log_path})")

    def wait_selection(self, run_time: datetime, timeout: float = ROUND_TIMEOUT) -> tuple[SelectionUpdate, float]:
        """The selection for run_time and the perf_counter() right after the client handed it over."""
        assert self.client is not None, "use BenchStack as a context manager"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for update in self.client.poll(50):
                if update.selection.run_time == run_time:
                    return update, time.perf_counter()
            self._check_alive(f"round {run_time.isoformat()}")
        raise BenchError(f"no selection for {run_time.isoformat()} within {timeout:.0f}s")

    def watch_round(self, run_time: datetime) -> NewFiles | None:
        """An inotify watch on ``select_his``, opened before the round starts (None without inotify), so
        ``wait_round`` learns when the round's file appeared even if the bench looks later."""
        folder = history_paths(self.workdir, run_time)["long"].parent
        folder.mkdir(parents=True, exist_ok=True)  # the recorder makes it too; the watch needs it now
        return NewFiles.open(folder)

    def wait_round(self, run_time: datetime, timeout: float = ROUND_TIMEOUT,
                   watch: NewFiles | None = None) -> tuple[SelectionUpdate, float, float]:
        """The selection for run_time, when the outside client had it, and when the recorder's
        ``select_his/<ts>_long.csv.zip`` appeared (written atomically, so there means written).

        Both are waited for in one poll that wakes on either: the client's sockets, and an inotify watch
        on ``select_his`` (``watch``, from ``watch_round`` before the round started; else opened here)
        that names the file as the recorder renames it into place. Polling for them every millisecond
        cost the bench ~0.1 ms of CPU a wake on a 2-core machine the stack needs both cores of. Without
        inotify the folder is looked at every millisecond. The watch is closed here.
        """
        assert self.client is not None, "use BenchStack as a context manager"
        long = history_paths(self.workdir, run_time)["long"]
        late = watch is None
        if late:
            watch = self.watch_round(run_time)
        poller = zmq.Poller()
        for sock in (self.client.sub, self.client.dealer):
            poller.register(sock, zmq.POLLIN)
        if watch is not None:
            poller.register(watch.fd, zmq.POLLIN)
        got: tuple[SelectionUpdate, float] | None = None
        written: float | None = time.perf_counter() if late and long.exists() else None  # before the watch began
        deadline = time.monotonic() + timeout
        try:
            while got is None or written is None:
                ready = dict(poller.poll(50 if watch is not None else 1))
                if watch is not None and watch.fd in ready and long.name in watch.read() and written is None:
                    written = time.perf_counter()
                if got is None and (self.client.sub in ready or self.client.dealer in ready):
                    for update in self.client.poll(0):
                        if update.selection.run_time == run_time:
                            got = update, time.perf_counter()
                if written is None and (watch is None or not ready) and long.exists():
                    written = time.perf_counter()  # no inotify, or an event lost: the late look
                if time.monotonic() > deadline:
                    raise BenchError(f"round {run_time.isoformat()}: no " + ("selection" if got is None else long.name)
                                     + f" within {timeout:.0f}s")
                self._check_alive(f"round {run_time.isoformat()}")
        finally:
            if watch is not None:
                watch.close()
        return got[0], got[1], written

    def wait_recorded(self, run_time: datetime, timeout: float = ROUND_TIMEOUT) -> None:
        """Wait until the recorder has written the round's files: the stack is idle again after that."""
        paths = history_paths(self.workdir, run_time).values()
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in paths):
            self._check_alive(f"recording {run_time.isoformat()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the recorder did not write {run_time.isoformat()} within {timeout:.0f}s")
            time.sleep(0.005)

    def wait_idle(self, window: float = 0.2, busy_below: float = 0.1, timeout: float = 60.0) -> None:
        """Wait until the services together use less than ``busy_below`` of one core over ``window`` seconds.

        A round cut at its deadline leaves a factor shard computing results nobody will use; the
        next round, the original program and the CPU-per-round figure must not overlap that work.
        """
        pids = self.pids()
        deadline = time.monotonic() + timeout
        before = sum(cpu_snapshot(pids).values())
        while time.monotonic() < deadline:
            time.sleep(window)
            after = sum(cpu_snapshot(pids).values())
            if after - before < busy_below * window:
                return
            before = after
        raise BenchError(f"the services were still busy {timeout:.0f}s after the round")

    def memory(self) -> dict[str, dict[str, float]]:
        """VmHWM, VmRSS and Pss in MB of each running service and of the processes it started."""
        out = {}
        for name, pid in self.pids().items():
            try:
                out[name] = memory_mb(pid)
            except OSError:  # exited
                pass
        return out

    def log_problems(self, keep: int = 10, width: int = 300) -> dict[str, object]:
        """WARNING and ERROR lines the services logged: counts and the first few lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        warnings = [line for line in lines if " WARNING " in line]
        errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
        first = [line if len(line) <= width else line[:width] + "..." for line in (errors + warnings)[:keep]]
        return {"warnings": len(warnings), "errors": len(errors), "first": first}
