"""Receive validated selections: the helper an order executor is written with.

    from shared.client import SelectionClient

    with SelectionClient() as client:          # endpoints from ALPHABUS_* or the defaults
        for update in client.updates():        # the latest selection at once, then each new one
            sel = update.selection             # a typed, validated Selection
            for pick in sel.long: ...          # symbol, close, position (exact Decimal), pos_val

It follows the ZeroMQ Guide's Clone pattern: subscribe first, then ask the
position service for its latest selection, and drop anything not newer than
what was already delivered. Heartbeats carry the position service's latest
selection number, so a selection lost in transit is fetched again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import pandas as pd
import zmq

from shared import bus
from shared.messages import (
    Envelope,
    Header,
    Heartbeat,
    Selection,
    SnapshotRequest,
    encode_unsequenced,
)
from shared.tables import ipc_to_frame

log = logging.getLogger("client")


@dataclass(frozen=True)
class SelectionUpdate:
    """One selection with its header; the article's tables decode on first use."""

    header: Header
    selection: Selection
    payloads: tuple

    @cached_property
    def factors(self) -> pd.DataFrame:
        return ipc_to_frame(self.payloads[0])

    @cached_property
    def long(self) -> pd.DataFrame:
        return ipc_to_frame(self.payloads[1])

    @cached_property
    def short(self) -> pd.DataFrame:
        return ipc_to_frame(self.payloads[2])


class SelectionClient:
    """SUB to ``selection`` plus a DEALER for snapshots.

    By default only ever-newer selections are delivered (an executor wants the latest target).
    With ``history=True`` every selection is delivered once, even an older one that arrives
    late from a snapshot, and the first snapshot asks for everything after ``since`` (the
    recorder uses this to fill the rounds it missed while it was down).
    """

    def __init__(self, selection_pub: str | None = None, snapshot: str | None = None,
                 name: str = "client", ctx: zmq.Context | None = None, history: bool = False,
                 since: datetime | None = None):
        self.ctx = ctx or bus.context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.connect(selection_pub or bus.endpoint("ALPHABUS_SELECTION_PUB"))
        self.sub.setsockopt_string(zmq.SUBSCRIBE, bus.SELECTION)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, "hb.position")
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(snapshot or bus.endpoint("ALPHABUS_SNAPSHOT"))
        self.sender = bus.identity(name)
        self.history = history
        self.delivered: dict[str, int] = {}  # position sender -> newest selection seq delivered
        self.seen: set[tuple[str, int]] = set()  # (sender, seq) delivered, in history mode
        self.latest_run_time: datetime | None = since
        self.inbox = bus.Inbox(ordered=False)  # snapshot replies repeat updates: ordering is ours
        self._asked_at = 0.0
        self.request_snapshot()

    def request_snapshot(self) -> None:
        """Ask for the latest selection, or in history mode for all after the newest we have."""
        since = self.latest_run_time if self.history else None
        self.dealer.send_multipart(encode_unsequenced("snapshot", self.sender,
                                                      SnapshotRequest(run_time=None, since=since)))
        self._asked_at = time.monotonic()

    def request_snapshot_after(self, seconds: float) -> None:
        """Ask again, unless a request went out within the last ``seconds``."""
        if time.monotonic() - self._asked_at > seconds:
            self.request_snapshot()

    def _accept(self, env: Envelope) -> SelectionUpdate | None:
        if isinstance(env.body, Heartbeat):
            newest = int(env.body.state.get("selection_seq", 0))
            if newest > self.delivered.get(env.header.sender, 0):
                self.request_snapshot_after(0.5)
            return None
        if not isinstance(env.body, Selection):
            return None
        key = (env.header.sender, env.header.seq)
        newest = self.delivered.get(env.header.sender, 0)
        if key in self.seen or (not self.history and env.header.seq <= newest):
            return None  # already delivered (snapshot and update overlap), or older than what we have
        self.seen.add(key)
        self.delivered[env.header.sender] = max(newest, env.header.seq)
        if self.latest_run_time is None or env.body.run_time > self.latest_run_time:
            self.latest_run_time = env.body.run_time
        return SelectionUpdate(env.header, env.body, tuple(env.payloads))

    def poll(self, timeout_ms: int = 200) -> list[SelectionUpdate]:
        """Whatever arrived within timeout_ms, oldest first."""
        out: list[SelectionUpdate] = []
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.dealer, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        for sock in (self.dealer, self.sub):
            while sock in events and sock.poll(0):
                env = self.inbox.recv(sock)
                update = self._accept(env) if env is not None else None
                if update is not None:
                    out.append(update)
        return out

    def updates(self, timeout_s: float | None = None) -> Iterator[SelectionUpdate]:
        """Yield selections as they come; stop after timeout_s without one (None: never)."""
        last = time.monotonic()
        while timeout_s is None or time.monotonic() - last < timeout_s:
            for update in self.poll():
                last = time.monotonic()
                yield update

    def close(self) -> None:
        bus.close_all(self.sub, self.dealer)

    def __enter__(self) -> SelectionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
