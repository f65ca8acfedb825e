"""Test helpers: a real stack of service processes on loopback, driven hour by hour."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import zmq

from alphabus.launcher import Services, loopback_endpoints, start_stack
from services.recorder.files import history_paths
from shared import bus, security
from shared.bmac import BmacDir
from shared.client import SelectionClient
from tests.conftest import write_config


class StackRun:
    """Four services as processes over TCP, a BMAC dir and a work dir; the test writes the hours."""

    def __init__(self, root: Path, shards: int = 1, market_args: tuple[str, ...] = (), **config):
        self.bmac = BmacDir(root / "bmac", "1h")
        self.workdir = write_config(root / "work", root / "bmac", **config)
        self.endpoints = loopback_endpoints()
        self.services = Services(self.endpoints)
        self.shards = shards
        self.market_args = market_args
        self.killed: set[str] = set()

    def __enter__(self) -> StackRun:
        start_stack(self.services, self.workdir, shards=self.shards, clock="follow", market_args=self.market_args)
        return self

    def __exit__(self, *exc) -> None:
        self.services.stop()

    @property
    def stack_id(self) -> str:
        return bus.stack_identity(self.workdir)

    def insider(self, kind: int, name: str, domain: str, address: str) -> zmq.Socket:
        """A socket holding one of the stack's own keys (``name``): a peer that got past authentication,
        e.g. a buggy worker, for tests of what the services make of its messages."""
        sock = zmq.Context.instance().socket(kind)
        keys = security.stack_keys(self.workdir)
        if keys:
            keys.connect_as(sock, name, domain)
        sock.connect(address)
        return sock

    def client(self, name: str = "test") -> SelectionClient:
        """An executor's client of this stack, with the stack's ``cli`` key."""
        keys = security.stack_keys(self.workdir)
        return SelectionClient(self.endpoints["ALPHABUS_SELECTION_PUB"], self.endpoints["ALPHABUS_SNAPSHOT"],
                               name=name, keys=keys.folder if keys else None, key_name="cli")

    def open_round(self, market, k: int):
        """Write what starts hour k (exginfo, funding) but no candle yet; return run_time, previous, frames."""
        run_time, previous = market.run_time(k), market.run_time(k - 1) if k else None
        frames = market.candles(k)
        self.bmac.write_exginfo(market.exginfo(), run_time, previous)
        self.bmac.write_funding(market.funding(k), run_time, previous)
        return run_time, previous, frames

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no flushing, as a crash."""
        proc = self.services.procs[name]
        proc.kill()
        proc.wait(10)
        self.killed.add(name)

    def restart(self, name: str) -> None:
        self.services.restart(name)
        self.killed.discard(name)

    def crashed(self) -> dict[str, int]:
        return {n: c for n, c in self.services.exited().items() if n not in self.killed}

    def wait_for_round(self, run_time: datetime, timeout: float = 60.0) -> dict:
        """The recorded selection JSON of run_time, once the recorder has written it."""
        path = history_paths(self.workdir, run_time)["selection"]
        wait_for_file(path, timeout, lambda: not self.crashed() or f"exited: {self.crashed()}")
        return json.loads(path.read_text())


def wait_for_file(path: Path, timeout: float, healthy=lambda: True) -> None:
    """Poll for a file that is written atomically; ``healthy`` returns True or says what went wrong."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        status = healthy()
        assert status is True, status
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.05)


def children_named(parent: int, word: str) -> list[int]:
    """Live children of ``parent`` with ``word`` as one of their arguments, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == parent and word.encode() in argv:
            found.append(int(entry.name))
    return found
