"""Run the four services as child processes: ``stack`` (until Ctrl-C) and ``once`` (one round).

Children never outlive the launcher: it stops them on exit, on SIGTERM and SIGINT, and the kernel
sends them SIGTERM should the launcher itself die without a goodbye (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType

from shared.config import SelectorConfig

log = logging.getLogger("alphabus")
ENDPOINT_VARS = ("ALPHABUS_MARKET_PUB", "ALPHABUS_FACTOR_IN", "ALPHABUS_SELECTION_PUB", "ALPHABUS_SNAPSHOT")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

RESTART_FIRST_SEC = 0.5
RESTART_MAX_SEC = 30.0
RESTART_STABLE_SEC = 30.0
"""A child that ran this long before exiting starts its backoff again from RESTART_FIRST_SEC."""


class UsageError(Exception):
    """A user's mistake found after parsing (it needs the disk, the config or the ports): one sentence, exit 2."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so every ``with Services`` and ``finally`` runs."""


def raise_on_termination() -> None:
    """Make SIGTERM (and a closed terminal's SIGHUP) unwind the stack instead of killing this process outright."""
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_endpoints() -> dict[str, str]:
    """Fresh loopback endpoints, so a stack never collides with another on this machine.

    The probe sockets stay open until all four ports are chosen, so the four are distinct.
    """
    with ExitStack() as held:
        ports = []
        for _ in ENDPOINT_VARS:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return {name: f"tcp://127.0.0.1:{port}" for name, port in zip(ENDPOINT_VARS, ports, strict=True)}


def port_free(address: str) -> bool:
    """Whether a ZeroMQ socket could bind this address now (ZeroMQ sets SO_REUSEADDR; so does the probe).

    Raises ValueError for an address that cannot be bound at all (bad host or port).
    """
    if not address.startswith("tcp://"):
        return True
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    host = "" if host in ("*", "0.0.0.0") else host.strip("[]")
    if not port.isdigit():
        raise ValueError(f"{address!r} has no port number")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise ValueError(f"{address!r} cannot be bound here: {e.strerror or e}") from None
    return True


def stack_endpoints(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The four endpoints of a stack on this host.

    One set explicitly (``ALPHABUS_*``) must be free: else UsageError, at once. When a default port is
    taken (another stack with defaults), all defaulted endpoints move together to free loopback ports,
    so this stack shares no socket with the other one; the move is logged.
    """
    from shared.bus import DEFAULT_ENDPOINTS, bind_address

    environ = os.environ if environ is None else environ
    explicit = {v: environ[v] for v in ENDPOINT_VARS if environ.get(v)}
    for var, address in explicit.items():
        try:
            free = port_free(bind_address(address))
        except ValueError as e:
            raise UsageError(f"{var}={address}: {e}; set {var} to an endpoint such as tcp://127.0.0.1:5701") from None
        if not free:
            raise UsageError(f"{address} ({var}) is already in use on this host (another stack?); "
                             f"set {var} to a free endpoint or stop the process that holds it")
    defaults = {v: DEFAULT_ENDPOINTS[v] for v in ENDPOINT_VARS if v not in explicit}
    taken = [a for a in defaults.values() if not port_free(bind_address(a))]
    if not taken:
        return {**explicit, **defaults}
    fresh = {v: a for v, a in loopback_endpoints().items() if v in defaults}
    log.warning("default endpoint(s) %s already in use on this host (another stack?); this stack uses %s",
                ", ".join(taken), " ".join(f"{v}={a}" for v, a in fresh.items()))
    return {**explicit, **fresh}


def restart_delay(failures: int, first: float = RESTART_FIRST_SEC, cap: float = RESTART_MAX_SEC) -> float:
    """Exponential backoff: first, 2 first, 4 first, ... up to cap, for the n-th quick exit in a row (from 0)."""
    return min(cap, first * 2.0 ** min(failures, 32))


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


_PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's prctl, loaded in the parent (loading it between fork and exec is not safe); None if absent."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl, parent: int) -> None:
    """Runs in the child before exec: SIGTERM from the kernel when the launcher dies, even by SIGKILL."""
    if prctl is None:  # not Linux: the launcher's own cleanup still applies
        return
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM while children are being stopped, so a second Ctrl-C cannot orphan one."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Services:
    """Child processes running ``alphabus <service> ...``; stopped (TERM, then KILL) on exit."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        self.argv[name] = [sys.executable, "-m", "alphabus", *args]
        self.restart(name)
        return self.procs[name]

    def restart(self, name: str) -> None:
        prctl, parent = _prctl(), os.getpid()
        self.procs[name] = subprocess.Popen(self.argv[name], env=self.env,
                                            preexec_fn=lambda: _die_with_parent(prctl, parent))

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> None:
        with _signals_held():
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


def stack_client(workdir: Path, endpoints: dict[str, str], name: str):
    """The launcher's own selection client (``once``, ``demo``): the stack's ``cli`` key, made if absent."""
    from shared import bus, security
    from shared.client import SelectionClient

    keys = security.stack_keys(workdir)
    return SelectionClient(endpoints["ALPHABUS_SELECTION_PUB"], endpoints["ALPHABUS_SNAPSHOT"], name=name,
                           keys=keys.folder if keys else None, key_name="cli", stack=bus.stack_identity(workdir))


def start_stack(services: Services, workdir: Path, *, shards: int = 1, clock: str = "wall",
                market_args: Sequence[str] = ()) -> None:
    """Downstream first, market last: each service is listening before anything flows to it.

    Every process is on this host, so the workers read the crawler's files themselves (--send paths).
    """
    from shared import security

    security.stack_keys(workdir)  # made once here, before the services that share them start
    wd = str(workdir)
    services.start("position", ["position", wd])
    services.start("recorder", ["recorder", wd])
    for k in range(shards):
        services.start(f"factor-{k}", ["factor", wd, "--shard", f"{k}/{shards}"])
    services.start("market", ["market", wd, "--clock", clock, "--send", "paths", *market_args])


class Supervisor:
    """Restarts children that exit, each after an exponential backoff, with one log line per restart."""

    def __init__(self, services: Services):
        self.services = services
        now = time.monotonic()
        self.started = {name: now for name in services.procs}
        self.failures: dict[str, int] = {}
        self.due: dict[str, float] = {}

    def tick(self, now: float) -> None:
        for name, code in self.services.exited().items():
            if name in self.due:
                continue
            ran = now - self.started[name]
            n = self.failures[name] = self.failures.get(name, -1) + 1 if ran < RESTART_STABLE_SEC else 0
            delay = restart_delay(n)
            self.due[name] = now + delay
            log.error("%s %s after %.1fs; restarting it in %.1fs (restart %d in a row)",
                      name, _exit_text(code), ran, delay, n + 1)
        for name, when in list(self.due.items()):
            if now >= when:
                del self.due[name]
                self.started[name] = now
                self.services.restart(name)


class PortClaim:
    """A host-wide lock from choosing a stack's ports until its services listen on them, so two stacks
    started at the same moment cannot both pick the free defaults."""

    PATH = Path(tempfile.gettempdir()) / "alphabus-stack-ports.lock"

    def __init__(self) -> None:
        self._file = self.PATH.open("a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing drops the lock


def _await_listening(services: Services, endpoints: dict[str, str], stop, timeout: float = 60.0) -> dict[str, int]:
    """Wait until every TCP endpoint is bound by a child; returns the children that exited meanwhile."""
    from shared.bus import bind_address

    addresses = [bind_address(a) for a in endpoints.values() if a.startswith("tcp://")]
    deadline = time.monotonic() + timeout
    while not stop and time.monotonic() < deadline:
        if services.exited():
            return services.exited()
        if not any(port_free(a) for a in addresses):
            return {}
        time.sleep(0.1)
    if not stop:
        log.warning("the services have not bound all their endpoints after %.0fs", timeout)
    return {}


def run_stack(workdir: Path, clock: str = "wall", shards: int = 1) -> int:
    """All four services until Ctrl-C or SIGTERM; a service that dies is restarted with backoff.

    ``clock``: ``wall``, ``follow`` or ``auto`` (``choose_clock``).

    A service that cannot start at all (its port taken, its config bad) stops the stack at once.
    """
    from shared.service import StopFlag, setup_logging

    setup_logging("stack")
    if clock == "auto":
        from shared.config import load_config

        clock = choose_clock(load_config(workdir), clock)
    stop = StopFlag()
    claim = PortClaim()
    try:
        endpoints = stack_endpoints()
        with Services(endpoints) as services:
            start_stack(services, workdir, shards=shards, clock=clock)
            failed = _await_listening(services, endpoints, stop)
            claim.release()
            if failed:
                name, code = next(iter(failed.items()))
                log.error("%s %s while starting (its message is above); stopping the stack", name, _exit_text(code))
                return 2 if code == 2 else 1
            log.info("stack running: %s (Ctrl-C stops it); endpoints %s", ", ".join(services.procs),
                     " ".join(f"{v}={a}" for v, a in endpoints.items()))
            supervisor = Supervisor(services)
            while not stop:
                time.sleep(0.2)
                if not stop:
                    supervisor.tick(time.monotonic())
    finally:
        claim.release()
    log.info("stack stopped")
    return 0


def choose_clock(cfg: SelectorConfig, asked: str, now: datetime | None = None) -> str:
    """``--clock auto``: follow a crawler whose newest hour is not the wall clock's (the simulator writes
    simulated hours; a replay, past ones), else the wall clock. The choice is logged with how to override it."""
    from shared.bmac import BmacDir
    from shared.clock import latest_boundary, parse_interval, zone
    from shared.config import resolve_bmac_dir

    if asked != "auto":
        return asked
    tz, interval = zone(cfg.timezone), parse_interval(cfg.interval)
    wall = latest_boundary(now or datetime.now(tz), interval)
    stamp = BmacDir(resolve_bmac_dir(cfg), cfg.interval).latest_exginfo_stamp()
    if stamp is None:
        log.info("clock: wall (rounds at each %s boundary): the crawler has written no hour yet; for the "
                 "simulator or a replay give --clock follow", cfg.interval)
        return "wall"
    newest = datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=tz)
    if abs(newest - wall) > interval:
        log.info("clock: follow (a round whenever the crawler writes a newer hour): its newest hour %s is not "
                 "the wall clock's %s, as with the simulator or a replay; give --clock wall to override",
                 newest.isoformat(), wall.isoformat())
        return "follow"
    log.info("clock: wall (rounds at each %s boundary): the crawler's newest hour %s keeps to the wall clock; "
             "give --clock follow to override", cfg.interval, newest.isoformat())
    return "wall"


def debug_run_time(cfg: SelectorConfig) -> datetime:
    """The article's debug round: ``next_run_time - 1 interval``, the boundary that just closed."""
    from shared.clock import latest_boundary, parse_interval, zone

    return latest_boundary(datetime.now(zone(cfg.timezone)), parse_interval(cfg.interval))


def run_once(workdir: Path, cfg: SelectorConfig, run_time: datetime | None = None, shards: int = 1) -> int:
    """The article's debug mode: one round through the four services as processes, printed, then exit.

    SIGTERM and SIGINT stop every child before this returns (raised as Terminated / KeyboardInterrupt).
    """
    from alphabus.display import show
    from services.recorder.files import history_paths
    from shared.quantities import crawler_lots
    from shared.service import setup_logging

    setup_logging("once")
    raise_on_termination()
    target = run_time or debug_run_time(cfg)
    if cfg.debug:
        log.info("debug: true in factor_calc.json: one round, then exit (the article's debug mode)")
    log.info("one round for run_time %s", target.isoformat())
    endpoints = loopback_endpoints()
    timeout = cfg.bmac_expire_sec + cfg.round_grace_sec + 60
    with Services(endpoints) as services:
        client = stack_client(workdir, endpoints, "once")
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
    print(show(update, crawler_lots(cfg)))
    for p in paths.values():
        print(f"wrote {p}")
    return 0
