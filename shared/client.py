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
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import pandas as pd
import pyarrow as pa
import zmq

from shared import bus, security
from shared.messages import (
    Envelope,
    Header,
    Heartbeat,
    Missed,
    Selection,
    SnapshotRequest,
    encode_unsequenced,
)
from shared.tables import ipc_to_table

log = logging.getLogger("client")


@dataclass(frozen=True)
class SelectionUpdate:
    """One selection with its header and the article's three tables.

    The client reads and validates the tables as Arrow when the selection arrives (one with unreadable
    tables is dropped there); the pandas frames convert on first use. The recorder writes its files
    from the Arrow tables and never pays for the frames.
    """

    header: Header
    selection: Selection
    payloads: tuple

    @cached_property
    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The factor, long and short tables as sent."""
        factors, long, short = (ipc_to_table(p) for p in self.payloads)
        return factors, long, short

    @property
    def factor_table(self) -> pa.Table:
        return self.tables[0]

    @property
    def long_table(self) -> pa.Table:
        return self.tables[1]

    @property
    def short_table(self) -> pa.Table:
        return self.tables[2]

    @cached_property
    def factors(self) -> pd.DataFrame:
        return self.factor_table.to_pandas()

    @cached_property
    def long(self) -> pd.DataFrame:
        return self.long_table.to_pandas()

    @cached_property
    def short(self) -> pd.DataFrame:
        return self.short_table.to_pandas()

    @property
    def run_time(self) -> datetime:
        return self.selection.run_time


@dataclass(frozen=True)
class MissedUpdate:
    """An hour boundary without a selection, and why (``missed.reason``, ``missed.detail``)."""

    header: Header
    missed: Missed

    @property
    def run_time(self) -> datetime:
        return self.missed.run_time


class SelectionClient:
    """SUB to ``selection`` plus a DEALER for snapshots.

    By default only ever-newer selections are delivered (an executor wants the latest target).
    With ``history=True`` every selection is delivered once, even an older one that arrives
    late from a snapshot, and the first snapshot asks for everything after ``since`` (the
    recorder uses this to fill the rounds it missed while it was down).

    Hours without a selection arrive as ``MissedUpdate`` in history mode (or with
    ``deliver_missed = True``); otherwise they only advance the sequence, so an executor's loop
    sees selections alone.
    """

    deliver_missed: bool | None = None
    """None: deliver missed hours in history mode only."""

    def __init__(self, selection_pub: str | None = None, snapshot: str | None = None,
                 name: str = "client", ctx: zmq.Context | None = None, history: bool = False,
                 since: datetime | None = None, keys: Path | None = None, key_name: str | None = None,
                 stack: str | None = None):
        """``keys``: the folder holding the position service's public key (``position.key``) and this
        client's pair (``<key_name>.key_secret``; ``key_name`` defaults to $ALPHABUS_KEY_NAME, then ``name``);
        default $ALPHABUS_KEYS. ``stack``: accept only this stack's messages (default $ALPHABUS_STACK, else
        this process's stack, else any: the position service's key already proves who it is)."""
        self.ctx = ctx or bus.context()
        creds = security.client_keys(keys)
        key_name = key_name or os.environ.get(security.KEY_NAME_ENV) or name
        self.sub = bus.selection_subscriber(self.ctx, creds, key_name, selection_pub,
                                            topics=(bus.SELECTION, "hb.position"))
        self.dealer = bus.make_socket(self.ctx, zmq.DEALER)
        if creds:
            creds.connect_as(self.dealer, key_name, "selections")
        self.dealer.connect(snapshot or bus.endpoint("ALPHABUS_SNAPSHOT"))
        self.sender = bus.identity(name)
        self.stack = stack if stack is not None else os.environ.get(bus.STACK_ENV, bus.current_stack())
        self.history = history
        self.delivered: dict[str, int] = {}  # position sender -> newest selection seq delivered
        self.seen: set[tuple[str, int]] = set()  # (sender, seq) delivered, in history mode
        self.latest_run_time: datetime | None = since
        self.inbox = bus.Inbox(ordered=False, stack=self.stack)  # snapshot replies repeat updates: ordering is ours
        self._asked_at = 0.0
        self.request_snapshot()

    @classmethod
    def member(cls, workdir: Path, name: str, **kwargs) -> SelectionClient:
        """A client inside the stack of ``workdir`` (recorder, paper): joins its stack, keys made if absent."""
        bus.join_stack(workdir)
        keys = security.stack_keys(workdir)
        return cls(name=name, keys=keys.folder if keys else None, **kwargs)

    def request_snapshot(self) -> None:
        """Ask for the latest selection, or in history mode for all after the newest we have."""
        since = self.latest_run_time if self.history else None
        self.dealer.send_multipart(encode_unsequenced("snapshot", self.stack, self.sender,
                                                      SnapshotRequest(run_time=None, since=since)))
        self._asked_at = time.monotonic()

    def request_snapshot_after(self, seconds: float) -> None:
        """Ask again, unless a request went out within the last ``seconds``."""
        if time.monotonic() - self._asked_at > seconds:
            self.request_snapshot()

    def _accept(self, env: Envelope) -> SelectionUpdate | MissedUpdate | None:
        """The update to deliver, or None; never raises on what arrived (a bad selection is logged, dropped)."""
        if isinstance(env.body, Heartbeat):
            newest = env.body.state.get("selection_seq", 0)
            if isinstance(newest, int) and newest > self.delivered.get(env.header.sender, 0):
                self.request_snapshot_after(0.5)
            return None
        if isinstance(env.body, Missed):
            return self._accept_missed(env)
        if not isinstance(env.body, Selection):
            return None
        key = (env.header.sender, env.header.seq)
        newest = self.delivered.get(env.header.sender, 0)
        if key in self.seen or (not self.history and env.header.seq <= newest):
            return None  # already delivered (snapshot and update overlap), or older than what we have
        update = SelectionUpdate(env.header, env.body, tuple(env.payloads))
        try:  # read the tables now: an executor must not meet unreadable ones halfway through a round
            update.tables  # noqa: B018
        except Exception as e:  # Arrow raises several types on malformed tables
            log.warning("dropped selection %s (seq %d from %s): unreadable table(s): %s: %s",
                        env.body.run_time.isoformat(), env.header.seq, env.header.sender, type(e).__name__,
                        str(e)[:200])
            return None
        self.seen.add(key)
        self.delivered[env.header.sender] = max(newest, env.header.seq)
        if self.latest_run_time is None or env.body.run_time > self.latest_run_time:
            self.latest_run_time = env.body.run_time
        return update

    def _accept_missed(self, env: Envelope) -> MissedUpdate | None:
        """A missed hour takes its place in the sequence like a selection; delivered if asked for."""
        key = (env.header.sender, env.header.seq)
        newest = self.delivered.get(env.header.sender, 0)
        if key in self.seen or (not self.history and env.header.seq <= newest):
            return None
        self.seen.add(key)
        self.delivered[env.header.sender] = max(newest, env.header.seq)
        if self.latest_run_time is None or env.body.run_time > self.latest_run_time:
            self.latest_run_time = env.body.run_time
        wanted = self.history if self.deliver_missed is None else self.deliver_missed
        return MissedUpdate(env.header, env.body) if wanted else None  # type: ignore[arg-type]

    def poll(self, timeout_ms: int = 200) -> list[SelectionUpdate | MissedUpdate]:
        """Whatever arrived within timeout_ms, oldest first."""
        out: list[SelectionUpdate | MissedUpdate] = []
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

    def updates(self, timeout_s: float | None = None) -> Iterator[SelectionUpdate | MissedUpdate]:
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
