"""Position service main loop.

Roles: SUB bound at ALPHABUS_FACTOR_IN (factor workers connect and publish
results), SUB connected to the market (``round.open``, ``round.closed``), PUB
bound at ALPHABUS_SELECTION_PUB (``selection`` for the recorder and
executors), ROUTER bound at ALPHABUS_SNAPSHOT (recent selections for late
joiners: the Clone pattern's snapshot).

The latest selection is kept on disk so that a restarted position service
still knows the previous targets (executors trade the change) and can answer
snapshots at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime
from pathlib import Path

import msgpack
import zmq

from services.position.rounds import Previous, RoundState, build_selection
from services.position.shards import ShardWatch
from shared import bus
from shared.config import SelectorConfig
from shared.messages import (
    Envelope,
    FactorResults,
    Heartbeat,
    RoundClosed,
    RoundOpen,
    Selection,
    SnapshotEmpty,
    SnapshotRequest,
    decode,
    encode_unsequenced,
)
from shared.service import HeartbeatTimer, StopFlag
from shared.tables import frame_to_ipc, ipc_to_table, table_to_ipc

log = logging.getLogger("position")
PENDING_TTL_SEC = 600.0
RETAINED_SELECTIONS = 48
STATE_FILE = Path("state") / "position_latest.msgpack"


def _as_text(side):
    """Decimal positions travel as their exact text."""
    side = side.copy()
    side["position"] = side["position"].map(str).astype(object)
    return side


class SelectionStore:
    """Recent selections as the exact frames sent; the newest also on disk for restarts."""

    def __init__(self, path: Path | None):
        self.path = path
        self.frames: deque[tuple[Selection, list]] = deque(maxlen=RETAINED_SELECTIONS)
        if path is not None and path.exists():
            try:
                frames = msgpack.unpackb(path.read_bytes())
                env = decode(frames)
                if isinstance(env.body, Selection):
                    self.frames.append((env.body, frames))
                    log.info("restored the latest selection %s from %s", env.body.run_time.isoformat(), path)
            except Exception as e:
                log.warning("ignoring unreadable position state %s: %s", path, e)

    @property
    def latest(self) -> Selection | None:
        return self.frames[-1][0] if self.frames else None

    def add(self, selection: Selection, frames: list) -> None:
        self.frames.append((selection, frames))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(msgpack.packb([bytes(f) for f in frames]))
            tmp.replace(self.path)

    def since(self, t: datetime | None) -> list[list]:
        if t is None:
            return [self.frames[-1][1]] if self.frames else []
        return [frames for sel, frames in self.frames if sel.run_time > t]


class Position:
    def __init__(self, cfg: SelectorConfig, factor_in: zmq.Socket, market: zmq.Socket,
                 out: zmq.Socket, snapshot: zmq.Socket, stop: StopFlag, state_file: Path | None):
        self.cfg = cfg
        self.factor_in, self.market, self.out, self.snapshot, self.stop = factor_in, market, out, snapshot, stop
        self.pub = bus.Publisher(out, bus.identity("position"))
        self.heartbeat = HeartbeatTimer(self.pub, "position")
        self.inbox = bus.Inbox()
        self.snapshot_inbox = bus.Inbox(ordered=False)
        self.shards = ShardWatch()
        self.store = SelectionStore(state_file)
        self.rounds: dict[datetime, RoundState] = {}
        self.pending: dict[datetime, list[tuple[float, Envelope]]] = {}
        self.finished: set[datetime] = {self.store.latest.run_time} if self.store.latest else set()
        self.late = 0

    # -- inputs -------------------------------------------------------------------------------
    def on_message(self, env: Envelope) -> None:
        body = env.body
        if isinstance(body, Heartbeat):
            if body.service == "factor" and body.state.get("subscribed"):  # alive and listening to the market
                self.shards.heard(str(body.state["shard"]))
        elif isinstance(body, RoundOpen):
            if body.run_time in self.finished:
                log.info("round %s announced again (a restarted market?); already published, ignored",
                         body.run_time.isoformat())
                return
            if body.run_time in self.rounds:
                log.info("round %s announced again before it completed; gathering afresh",
                         body.run_time.isoformat())
            state = self.rounds[body.run_time] = RoundState(open=body)
            for _, early in self.pending.pop(body.run_time, []):
                self._apply(state, early)
        elif isinstance(body, FactorResults | RoundClosed):
            if isinstance(body, FactorResults):
                self.shards.heard(body.shard)
            state = self.rounds.get(body.run_time)
            if state is not None:
                self._apply(state, env)
            elif body.run_time in self.finished:
                if isinstance(body, FactorResults) and (body.symbols or body.skipped):
                    self.late += len(body.symbols) + len(body.skipped)
                    log.warning("round %s: results from shard %s after the round was published, dropped: %s",
                                body.run_time.isoformat(), body.shard,
                                ", ".join(body.symbols + [s.symbol for s in body.skipped]))
            else:
                self.pending.setdefault(body.run_time, []).append((time.monotonic(), env))

    def _apply(self, state: RoundState, env: Envelope) -> None:
        body = env.body
        if isinstance(body, FactorResults):
            rows = None
            if env.payloads:
                try:
                    rows = ipc_to_table(env.payloads[0])
                except Exception as e:
                    self.inbox.bad_messages += 1
                    log.warning("round %s: unreadable factor table from shard %s (%s); its %d symbols "
                                "stay missing", body.run_time.isoformat(), body.shard, e, len(body.symbols))
                    body = body.model_copy(update={"symbols": []})
            state.add_results(body, rows)
        elif isinstance(body, RoundClosed):
            state.add_closed(body)

    def on_snapshot_request(self) -> None:
        frames = self.snapshot.recv_multipart()
        ident, env = frames[0], self.snapshot_inbox.decode(frames[1:], "snapshot request")
        if env is None:
            return
        if not isinstance(env.body, SnapshotRequest):
            log.warning("snapshot socket got a %s, not a snapshot_request", env.body.kind)
            return
        replies = self.store.since(env.body.since)
        for reply in replies:
            self.snapshot.send_multipart([ident, *reply], copy=False)
        if not replies:
            self.snapshot.send_multipart(
                [ident, *encode_unsequenced("snapshot", self.pub.sender, SnapshotEmpty(run_time=None))])

    # -- completing rounds --------------------------------------------------------------------
    def finish_due_rounds(self) -> None:
        now = time.monotonic()
        for run_time in sorted(self.rounds):
            state = self.rounds[run_time]
            if state.complete() or now >= state.deadline(self.cfg.round_grace_sec):
                del self.rounds[run_time]
                self.finished.add(run_time)
                self.publish(state)
        for run_time in [t for t, items in self.pending.items() if now - items[0][0] > PENDING_TTL_SEC]:
            log.warning("round %s: results arrived but the market never announced it; dropped",
                        run_time.isoformat())
            del self.pending[run_time]

    def publish(self, state: RoundState) -> None:
        policy = self.cfg.incomplete_round
        latest = self.store.latest
        previous = Previous(latest.run_time, dict(latest.targets)) if latest else Previous()
        built = build_selection(self.cfg, state, flag_incomplete=policy != "publish", previous=previous,
                                expected_shards=self.shards.expected())
        sel = built.selection
        cov = sel.coverage
        if cov.missing:
            log.warning("round %s INCOMPLETE: %d of %d symbols missing at the deadline (%s); silent shards: %s; "
                        "policy %s", sel.run_time.isoformat(), len(cov.missing), cov.expected,
                        ", ".join(cov.missing[:10]) + ("..." if len(cov.missing) > 10 else ""),
                        ", ".join(cov.silent_shards) or "none", policy)
            if policy == "withhold":
                return
        payloads = [table_to_ipc(built.factor_table), frame_to_ipc(_as_text(built.long)),
                    frame_to_ipc(_as_text(built.short))]
        self.store.add(sel, self.pub.send(bus.SELECTION, sel, payloads))
        short = sel.shortfall
        log.info("round %s: %d long, %d short, pool %d, symbols %d/%d%s%s, shards %s, latency %s",
                 sel.run_time.isoformat(), len(sel.long), len(sel.short),
                 short.pool if short else len(built.factors), cov.received, cov.expected,
                 f", {len(cov.skipped)} skipped" if cov.skipped else "",
                 f", SHORTFALL long {short.long_got}/{short.long_wanted} short {short.short_got}/{short.short_wanted}"
                 if short else "", ",".join(cov.shards) or "none",
                 f"{sel.latency_ms:.1f} ms" if sel.latency_ms is not None else "n/a")

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        poller = zmq.Poller()
        for s in (self.factor_in, self.market, self.snapshot):
            poller.register(s, zmq.POLLIN)
        while not self.stop:
            timeout = 200
            if self.rounds:
                soonest = min(s.deadline(self.cfg.round_grace_sec) for s in self.rounds.values())
                timeout = max(0, min(timeout, int((soonest - time.monotonic()) * 1000) + 1))
            events = dict(poller.poll(timeout))
            for sock in (self.market, self.factor_in):
                while sock in events and sock.poll(0):
                    env = self.inbox.recv(sock)
                    if env is not None:
                        self.on_message(env)
            if self.snapshot in events:
                while self.snapshot.poll(0):
                    self.on_snapshot_request()
            self.finish_due_rounds()
            self.shards.check()
            latest = self.store.latest
            self.heartbeat.tick(latest.run_time if latest else None,
                                selection_seq=self.pub.last_seq(bus.SELECTION), late=self.late,
                                **self.inbox.counts(),
                                silent_shards=sorted(self.shards.silent))
        return 0


def main(cfg: SelectorConfig, workdir: Path) -> int:
    stop = StopFlag()
    ctx = bus.context()
    factor_in = ctx.socket(zmq.SUB)
    factor_in.setsockopt(zmq.RCVHWM, 0)
    market = ctx.socket(zmq.SUB)
    out = ctx.socket(zmq.PUB)
    snapshot = ctx.socket(zmq.ROUTER)
    addrs = {name: bus.endpoint(name) for name in ("ALPHABUS_FACTOR_IN", "ALPHABUS_MARKET_PUB",
                                                    "ALPHABUS_SELECTION_PUB", "ALPHABUS_SNAPSHOT")}
    factor_in.bind(bus.bind_address(addrs["ALPHABUS_FACTOR_IN"]))
    factor_in.setsockopt_string(zmq.SUBSCRIBE, "")
    out.bind(bus.bind_address(addrs["ALPHABUS_SELECTION_PUB"]))
    snapshot.bind(bus.bind_address(addrs["ALPHABUS_SNAPSHOT"]))
    market.connect(addrs["ALPHABUS_MARKET_PUB"])
    market.setsockopt_string(zmq.SUBSCRIBE, bus.ROUNDS)
    market.setsockopt_string(zmq.SUBSCRIBE, "hb.market")
    log.info("position: factor results in at %s, selections out at %s, snapshots at %s, market %s",
             addrs["ALPHABUS_FACTOR_IN"], addrs["ALPHABUS_SELECTION_PUB"], addrs["ALPHABUS_SNAPSHOT"],
             addrs["ALPHABUS_MARKET_PUB"])
    try:
        return Position(cfg, factor_in, market, out, snapshot, stop, workdir / STATE_FILE).run()
    finally:
        bus.close_all(factor_in, market, out, snapshot)
        ctx.term()
