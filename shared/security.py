"""CURVE encryption and ZAP authentication for every alphabus socket (ZeroMQ's own, via ``zmq.auth``).

A stack's keys live in one folder (``WORKDIR/keys``; ``ALPHABUS_KEYS`` puts it elsewhere), every file
readable by its owner only::

    market.key, market.key_secret         the market's pair: its PUB is a CURVE server
    position.key, position.key_secret     the position service's pair: factor input, selections, snapshots
    factor.key, factor.key_secret         the shard workers' pair (client of the market and of position)
    recorder.key/_secret, paper.key/_secret, cli.key/_secret
                                          clients of the selections (``cli``: once, demo, bench, tests)
    admitted/<domain>/<name>.key          the client keys each server domain accepts

Domains (one per server role): ``market`` (the market's PUB: admits factor, position), ``factor_in`` (the
position's factor input: admits factor) and ``selections`` (the position's selections and snapshots:
admits recorder, paper, cli, market and every executor added with ``alphabus keys --client NAME``).
A server checks a connecting client's key against its domain's folder, re-read when the folder changes,
so an executor is admitted without a restart. A peer without an admitted key completes no handshake:
nothing it sends is read and nothing is sent to it. Refusals are logged once per peer, not per attempt.

``ALPHABUS_SECURITY=none`` turns all of this off (plain TCP, one loud warning): for measuring its cost.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("security")

SECURITY_ENV = "ALPHABUS_SECURITY"
KEYS_ENV = "ALPHABUS_KEYS"
KEY_NAME_ENV = "ALPHABUS_KEY_NAME"
KEYS_FOLDER = "keys"

SERVER_OF = {"market": "market", "factor_in": "position", "selections": "position"}
"""Each domain's server: whose key pair it presents."""

ADMITTED = {
    "market": ("factor", "position"),
    "factor_in": ("factor",),
    "selections": ("recorder", "paper", "cli", "market"),
}
"""Which of the stack's own clients each domain admits from the start."""

STACK_KEYS = ("market", "position", "factor", "recorder", "paper", "cli")


class KeyProblem(Exception):
    """A key folder or key file that cannot be used; the message says how to fix it."""


def enabled() -> bool:
    mode = os.environ.get(SECURITY_ENV, "curve").strip().lower()
    if mode not in ("curve", "none"):
        raise KeyProblem(f"{SECURITY_ENV}={mode!r}: use 'curve' (the default) or 'none'")
    return mode == "curve"


def _write_private(path: Path, text: str) -> None:
    """Owner-only file, written under a temporary name and renamed (never half a key)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _new_pair(folder: Path, name: str) -> None:
    """``name.key`` and ``name.key_secret`` in czmq's certificate format (what ``zmq.auth`` reads)."""
    public, secret = zmq.curve_keypair()
    banner = f"#   alphabus CURVE certificate '{name}'\n"
    _write_private(folder / f"{name}.key", f"{banner}curve\n    public-key = \"{public.decode()}\"\n")
    _write_private(folder / f"{name}.key_secret",
                   f"{banner}curve\n    public-key = \"{public.decode()}\"\n    secret-key = \"{secret.decode()}\"\n")


def _admit_file(folder: Path, domain: str, name: str) -> None:
    target = folder / "admitted" / domain
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(target / f"{name}.key", (folder / f"{name}.key").read_text())


def create_keys(folder: Path) -> bool:
    """The stack's key folder, made once: built aside and renamed into place, so concurrent first starts
    (compose starts every container at once) agree on one set. Returns True if this call made it."""
    if (folder / "position.key").exists():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    staging.mkdir(mode=0o700)
    try:
        for name in STACK_KEYS:
            _new_pair(staging, name)
        for domain, names in ADMITTED.items():
            for name in names:
                _admit_file(staging, domain, name)
        try:
            staging.rename(folder)
        except OSError:
            if (folder / "position.key").exists():
                return False  # another process made them first: use theirs
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("created the stack's CURVE keys in %s", folder)
    return True


def add_client(folder: Path, name: str, domains: tuple[str, ...] = ("selections",)) -> Path:
    """A key pair for an outside client (an executor), admitted to ``domains``; returns its secret file."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise KeyProblem(f"client name {name!r}: use letters, digits, '-' and '_'")
    if not (folder / f"{name}.key_secret").exists():
        _new_pair(folder, name)
    for domain in domains:
        _admit_file(folder, domain, name)
    return folder / f"{name}.key_secret"


def keys_folder(workdir: Path | None) -> Path | None:
    """``ALPHABUS_KEYS``, else ``WORKDIR/keys``."""
    env = os.environ.get(KEYS_ENV)
    if env:
        return Path(env)
    return workdir / KEYS_FOLDER if workdir is not None else None


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyProblem(f"cannot read the CURVE key {path}: {e}; create the stack's keys with "
                        f"'alphabus keys WORKDIR' (or a client's with 'alphabus keys WORKDIR --client NAME')") from None


@dataclass(frozen=True)
class Keys:
    """One stack's key folder; applies CURVE to sockets as server or client of a domain."""

    folder: Path

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = _load(self.folder / f"{name}.key_secret")
        if secret is None:
            raise KeyProblem(f"{self.folder / (name + '.key_secret')} holds no secret key")
        return public, secret

    def public(self, name: str) -> bytes:
        return _load(self.folder / f"{name}.key")[0]

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make ``sock`` a CURVE server of ``domain``: only that domain's admitted keys get through."""
        public, secret = self.pair(SERVER_OF[domain])
        _gate(sock.context, self.folder)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_server = True
        sock.zap_domain = domain.encode()
        watch(sock, f"{domain} server")

    def connect_as(self, sock: zmq.Socket, name: str, domain: str) -> None:
        """Make ``sock`` a CURVE client named ``name`` that only talks to ``domain``'s true server."""
        public, secret = self.pair(name)
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_serverkey = self.public(SERVER_OF[domain])
        watch(sock, f"{name} -> {domain}")


_warned_off = False


def _off() -> bool:
    global _warned_off
    if enabled():
        return False
    if not _warned_off:
        log.warning("%s=none: sockets are NOT authenticated or encrypted; any local process can talk to "
                    "this service", SECURITY_ENV)
        _warned_off = True
    return True


def stack_keys(workdir: Path) -> Keys | None:
    """A stack member's keys (``ALPHABUS_KEYS`` or ``WORKDIR/keys``, made on first start), or None with
    security off."""
    if _off():
        return None
    folder = keys_folder(workdir)
    assert folder is not None
    create_keys(folder)
    return Keys(folder)


def client_keys(folder: Path | None) -> Keys | None:
    """An outside client's keys: ``folder``, else ``ALPHABUS_KEYS`` (never created: they are handed out)."""
    if _off():
        return None
    folder = folder or keys_folder(None)
    if folder is None or not folder.is_dir():
        raise KeyProblem(f"no CURVE keys{f' at {folder}' if folder else ''}: set {KEYS_ENV} to the folder "
                         f"holding position.key and this client's NAME.key_secret (made by 'alphabus keys "
                         f"WORKDIR --client NAME')")
    return Keys(folder)


# -- the server side: one ZAP handler per process ------------------------------------------------


class _Admissions:
    """The admitted client keys of each domain, re-read when a domain's folder changes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[str, tuple[float, frozenset[bytes]]] = {}

    def admits(self, domain: str, z85_key: bytes) -> bool:
        path = self.folder / "admitted" / domain
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return False
        cached = self._cache.get(domain)
        if cached is None or cached[0] != mtime:
            cached = (mtime, frozenset(zmq.auth.load_certificates(path)))
            self._cache[domain] = cached
        return z85_key in cached[1]


class _Refusals:
    """Log each refused peer once, then count; bounded whatever peers do."""

    LIMIT = 1024

    def __init__(self) -> None:
        self.logged: set[tuple[str, ...]] = set()
        self.count = 0
        self._lock = threading.Lock()

    def refuse(self, key: tuple[str, ...], message: str, *args: object) -> None:
        with self._lock:
            self.count += 1
            if key in self.logged:
                return
            if len(self.logged) >= self.LIMIT:
                if len(self.logged) == self.LIMIT:
                    log.warning("more than %d distinct peers refused; no longer logging each", self.LIMIT)
                    self.logged.add(("(limit)",))
                return
            self.logged.add(key)
        log.warning(message, *args)


refusals = _Refusals()


class _Gatekeeper(ThreadAuthenticator):
    """zmq.auth's ZAP handler, admitting by domain folder and logging each refused peer once."""

    def __init__(self, context: zmq.Context, folder: Path):
        super().__init__(context, log=logging.getLogger("security.zap"))
        self.admissions = _Admissions(folder)
        self._peer = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        z85_key = zmq.utils.z85.encode(client_key)
        if self.admissions.admits(domain, z85_key):
            return True, b"OK"
        refusals.refuse(("zap", domain, self._peer, z85_key.decode()),
                        "refused a client at %s on %s: its CURVE key %s is not admitted (add it with "
                        "'alphabus keys WORKDIR --client NAME')", self._peer, domain, z85_key.decode())
        return False, b"key not admitted"


_gates: dict[int, _Gatekeeper] = {}
_gates_lock = threading.Lock()


def _gate(ctx: zmq.Context, folder: Path) -> _Gatekeeper:
    """One ZAP handler per context, started before the first CURVE server socket binds."""
    with _gates_lock:
        gate = _gates.get(id(ctx))
        if gate is None:
            gate = _gates[id(ctx)] = _Gatekeeper(ctx, folder)
            gate.start()
        return gate


# -- handshake failures: peers with no key or the wrong server key --------------------------------

_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security handshake failed (no CURVE key, or not this stack's key)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "peer's key not admitted",
}


class _HandshakeWatch(threading.Thread):
    """Reads the monitor events of every watched socket and logs failed handshakes, once per socket and
    reason (a refused peer retries every few hundred milliseconds; one line says it, a count follows)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="handshake-watch")
        self.lock = threading.Lock()
        self.monitors: dict[zmq.Socket, str] = {}

    def add(self, monitor: zmq.Socket, what: str) -> None:
        with self.lock:
            self.monitors[monitor] = what

    def run(self) -> None:
        while True:
            with self.lock:
                monitors = dict(self.monitors)
            if not monitors:
                time.sleep(0.1)
                continue
            poller = zmq.Poller()
            for m in monitors:
                poller.register(m, zmq.POLLIN)
            try:
                ready = dict(poller.poll(100))
            except zmq.ZMQError:  # the context is terminating: let it
                for m in monitors:
                    m.close(0)
                return
            for m in ready:
                self._read(m, monitors[m])

    def _read(self, monitor: zmq.Socket, what: str) -> None:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            with self.lock:
                self.monitors.pop(monitor, None)
            monitor.close(0)
            return
        reason = _FAILED.get(event["event"])
        if reason is not None:
            endpoint = event["endpoint"].decode("utf-8", "replace")
            refusals.refuse(("handshake", what, endpoint, reason), "%s at %s: %s", what, endpoint, reason)


_watch: _HandshakeWatch | None = None


def watch(sock: zmq.Socket, what: str) -> None:
    """Log this socket's failed handshakes (in a background thread of this process)."""
    global _watch
    with _gates_lock:
        if _watch is None:
            _watch = _HandshakeWatch()
            _watch.start()
    _watch.add(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH), what)


def close(ctx: zmq.Context) -> None:
    """Stop this context's ZAP handler (before ``ctx.term()``)."""
    with _gates_lock:
        gate = _gates.pop(id(ctx), None)
    if gate is not None:
        gate.stop()
