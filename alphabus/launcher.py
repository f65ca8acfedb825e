"""Run the four services as child processes: ``stack`` (until Ctrl-C) and ``once`` (one round)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared.config import SelectorConfig

log = logging.getLogger("alphabus")
ENDPOINT_VARS = ("ALPHABUS_MARKET_PUB", "ALPHABUS_FACTOR_IN", "ALPHABUS_SELECTION_PUB", "ALPHABUS_SNAPSHOT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_endpoints() -> dict[str, str]:
    """Fresh loopback endpoints, so a stack never collides with another on this machine."""
    return {name: f"tcp://127.0.0.1:{free_port()}" for name in ENDPOINT_VARS}


class Services:
    """Child processes running ``alphabus <service> ...``; stopped (TERM, then KILL) on exit."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        argv = [sys.executable, "-m", "alphabus", *args]
        self.argv[name] = argv
        self.procs[name] = subprocess.Popen(argv, env=self.env)
        return self.procs[name]

    def restart(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(self.argv[name], env=self.env)

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, timeout)
                p.kill()
                p.wait()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_stack(services: Services, workdir: Path, *, shards: int = 1, clock: str = "wall",
                market_args: Sequence[str] = ()) -> None:
    """Downstream first, market last: each service is listening before anything flows to it.

    Every process is on this host, so the workers read the crawler's files themselves (--send paths).
    """
    wd = str(workdir)
    services.start("position", ["position", wd])
    services.start("recorder", ["recorder", wd])
    for k in range(shards):
        services.start(f"factor-{k}", ["factor", wd, "--shard", f"{k}/{shards}"])
    services.start("market", ["market", wd, "--clock", clock, "--send", "paths", *market_args])


def run_stack(workdir: Path, clock: str = "wall", shards: int = 1) -> int:
    """All four services until Ctrl-C or SIGTERM; a service that dies is restarted."""
    from shared.service import StopFlag, setup_logging

    setup_logging("stack")
    stop = StopFlag()
    with Services() as services:
        start_stack(services, workdir, shards=shards, clock=clock)
        log.info("stack running: %s (Ctrl-C stops it)", ", ".join(services.procs))
        while not stop:
            time.sleep(0.2)
            for name, code in services.exited().items():
                log.error("%s exited with code %s; restarting it", name, code)
                services.restart(name)
    log.info("stack stopped")
    return 0


def run_once(workdir: Path, cfg: SelectorConfig, run_time: str | None = None, shards: int = 1) -> int:
    """The article's debug mode: one round through the four services as processes, printed, then exit."""
    from datetime import datetime

    from alphabus.display import format_selection
    from services.recorder.files import history_paths
    from shared.client import SelectionClient
    from shared.clock import latest_boundary, parse_interval, parse_run_time, zone
    from shared.service import setup_logging

    setup_logging("once")
    tz = zone(cfg.timezone)
    target = (parse_run_time(run_time, tz) if run_time
              else latest_boundary(datetime.now(tz), parse_interval(cfg.interval)))
    log.info("one round for run_time %s", target.isoformat())
    endpoints = loopback_endpoints()
    timeout = cfg.bmac_expire_sec + cfg.round_grace_sec + 60
    with Services(endpoints) as services:
        client = SelectionClient(endpoints["ALPHABUS_SELECTION_PUB"], endpoints["ALPHABUS_SNAPSHOT"], name="once")
        try:
            start_stack(services, workdir, shards=shards,
                        market_args=["--run-time", target.isoformat(), "--await-subscribers", "60"])
            deadline = time.monotonic() + timeout
            update = None
            while update is None and time.monotonic() < deadline:
                update = next((u for u in client.poll(100) if u.selection.run_time == target), None)
                if services.exited().get("market", 0) != 0:
                    log.error("the market service gave up on run_time %s (see its message above)",
                              target.isoformat())
                    return 1
                if update is None:
                    client.request_snapshot_after(1.0)
        finally:
            client.close()
        if update is None:
            log.error("no selection for %s within %.0fs", target.isoformat(), timeout)
            return 1
        paths = history_paths(workdir, target)
        while not all(p.exists() for p in paths.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not all(p.exists() for p in paths.values()):
            log.error("the recorder did not write %s", ", ".join(str(p) for p in paths.values()))
            return 1
    print(format_selection(update.selection))
    for p in paths.values():
        print(f"wrote {p}")
    return 0
