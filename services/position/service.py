"""Position service main loop.

Roles: SUB bound at ALPHABUS_FACTOR_IN (factor workers connect and publish
results), SUB connected to the market (``round.open``, ``round.closed``), PUB
bound at ALPHABUS_SELECTION_PUB (``selection`` for the recorder and
executors), ROUTER bound at ALPHABUS_SNAPSHOT (recent selections for late
joiners: the Clone pattern's snapshot).

The latest selection is kept on disk so that a restarted position service
still knows the previous targets (executors trade the change) and can answer
snapshots at once.

Every hour boundary gets a selection or a ``Missed`` entry on ``selection``:
the market's own (``round.missed``), a gap between consecutive rounds (nobody
gathered the hours between), or a round withheld by ``incomplete_round``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime
from pathlib import Path

import msgpack
import zmq

from services.alerts.watch import PositionWatch
from services.position.checks import MAX_TABLE_BYTES, BadResults, Rejects, TableCheck, fits
from services.position.missed import MAX_GAP_LISTED, MissedLog, gap_hours
from services.position.rounds import Pending, Previous, RoundState, build_selection
from services.position.shards import ShardWatch
from shared import bus, security
from shared.clock import parse_interval
from shared.config import SelectorConfig
from shared.durable import Outage, write_atomic
from shared.messages import (
    Envelope,
    FactorResults,
    Heartbeat,
    Missed,
    RoundClosed,
    RoundOpen,
    Selection,
    SnapshotEmpty,
    SnapshotRequest,
    decode,
    encode_unsequenced,
)
from shared.service import HeartbeatTimer, StopFlag
from shared.tables import IpcTables, table_to_ipc

log = logging.getLogger("position")
RETAINED_SELECTIONS = 48
STATE_FILE = Path("state") / "position_latest.msgpack"
MISSED_FILE = "position_missed.msgpack"


SAYS: dict[str, tuple[type, ...]] = {
    "market": (RoundOpen, RoundClosed, Missed, Heartbeat),
    "factor_in": (FactorResults, Heartbeat),
}
"""What each input socket's peers may say."""
HEARTBEATS = {"market": "market", "factor_in": "factor"}


class SelectionStore:
    """Recent selections as the exact frames sent; the newest also on disk for restarts.

    A disk that refuses the state file (full, read-only) never stops publishing: the failure is
    logged once per outage and the newest selection is written again each second until it sticks.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.frames: deque[tuple[Selection, list]] = deque(maxlen=RETAINED_SELECTIONS)
        self.unsaved = False
        self.outage = Outage(log, "position state")
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
        self.unsaved = self.path is not None
        self.save()

    def save(self) -> None:
        """Persist the newest selection if it is not on disk yet and no outage retry is pending."""
        if not self.unsaved or not self.outage.due():
            return
        sel, frames = self.frames[-1]
        try:
            write_atomic(self.path, lambda tmp: tmp.write_bytes(msgpack.packb([bytes(f) for f in frames])))
        except OSError as e:
            self.outage.failed(e, f"selection {sel.run_time.isoformat()} (still published and served)")
            return
        self.unsaved = False
        self.outage.recovered(f"saved selection {sel.run_time.isoformat()}")

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
        self.snapshot_inbox = bus.Inbox(ordered=False, stack="")  # any admitted client may ask
        self.shards = ShardWatch()
        self.store = SelectionStore(state_file)
        self.rounds: dict[datetime, RoundState] = {}
        self.pending = Pending()
        self.rejects = Rejects()
        self.check_table = TableCheck(cfg.columns)
        self.read_table = IpcTables()
        self.finished: set[datetime] = {self.store.latest.run_time} if self.store.latest else set()
        self.missed = MissedLog(state_file.parent / MISSED_FILE if state_file is not None else None)
        self.finished |= self.missed.run_times()
        self.interval = parse_interval(cfg.interval)
        self.late = 0
        self.reannounced: set[datetime] = set()  # published rounds a restarted market runs again: results expected
        self.late_logged: set[tuple[datetime, str]] = set()  # (round, shard) whose late results were logged
        self.watch = PositionWatch(cfg, self.store.latest,
                                   {"rejected": lambda: self.rejects.total, "late": lambda: self.late})

    # -- inputs -------------------------------------------------------------------------------
    def admissible(self, source: str, env: Envelope) -> bool:
        """Only the market announces, closes and gives up rounds; only shard workers send results. Each
        socket's peers are authenticated (CURVE), so the socket a message came in on says who sent it."""
        body = env.body
        allowed = SAYS[source]
        if isinstance(body, allowed) and (not isinstance(body, Heartbeat) or body.service == HEARTBEATS[source]):
            return True
        self.rejects(f"a {body.kind} on the {source} socket", env.header.sender,
                     f"only {' and '.join(c.kind for c in allowed)} messages are accepted there")
        return False

    def on_message(self, env: Envelope) -> None:
        body = env.body
        if isinstance(body, Heartbeat):
            self.watch.heard(env.header.sender)
            if body.service == "factor" and body.state.get("subscribed"):  # alive and listening to the market
                try:
                    shard = str(bus.Shard.parse(str(body.state.get("shard"))[:16]))
                except ValueError as e:
                    self.rejects("a factor heartbeat", env.header.sender, str(e))
                    return
                self.shards.heard(shard)
        elif isinstance(body, RoundOpen):
            if body.run_time in self.finished:
                if body.run_time not in self.reannounced:
                    log.info("round %s announced again (a restarted market?); already published, so it and its "
                             "results are ignored", body.run_time.isoformat())
                    self.reannounced = {*sorted(self.reannounced)[-7:], body.run_time}
                return
            if body.run_time in self.rounds:
                log.info("round %s announced again before it completed; gathering afresh",
                         body.run_time.isoformat())
            else:
                self.note_gap(body.run_time)
            state = self.rounds[body.run_time] = RoundState(open=body)
            for early in self.pending.pop(body.run_time):
                self._apply(state, early)
        elif isinstance(body, Missed):
            self.on_missed(env)
        elif isinstance(body, FactorResults | RoundClosed):
            state = self.rounds.get(body.run_time)
            if state is not None:
                self._apply(state, env)
            elif body.run_time in self.finished:
                if isinstance(body, FactorResults) and (body.symbols or body.skipped):
                    self.late += len(body.symbols) + len(body.skipped)
                    if body.run_time in self.reannounced or (body.run_time, body.shard) in self.late_logged:
                        return  # said once: at the announcement, or for this round and shard (counted in late)
                    self.late_logged = {*sorted(self.late_logged)[-63:], (body.run_time, body.shard)}
                    log.warning("round %s: results from shard %s after the round was published, dropped: %s "
                                "(said once per round and shard)", body.run_time.isoformat(), body.shard,
                                ", ".join(body.symbols[:10] + [s.symbol for s in body.skipped[:10]]))
            else:
                self._hold(env)

    def _hold(self, env: Envelope) -> None:
        """A message for a round not announced (yet): keep it, bounded, unless the round is in the past."""
        run_time = env.body.run_time
        newest = max(self.finished, default=None)
        if newest is not None and run_time < newest:
            why: str | None = f"round {run_time.isoformat()} is older than the last published {newest.isoformat()}"
        else:
            size = sum(memoryview(p).nbytes for p in env.payloads)
            why = self.pending.hold(run_time, env, size, time.monotonic())
        if why is not None:
            self.rejects(f"a {env.body.kind} for an unannounced round", env.header.sender,
                         f"round {run_time.isoformat()}: {why}")

    def _apply(self, state: RoundState, env: Envelope) -> None:
        body = env.body
        if isinstance(body, RoundClosed):
            state.add_closed(body)
            return
        if not isinstance(body, FactorResults):
            return
        try:
            rows = self._checked_rows(state, env)
        except BadResults as e:
            self.rejects("a factor result", env.header.sender,
                         f"round {body.run_time.isoformat()}, shard {body.shard}: {e}; its "
                         f"{len(body.symbols) + len(body.skipped)} symbol(s) stay missing")
            return
        self.shards.heard(body.shard)  # only an accepted result says the shard is alive
        repeated = state.add_results(body, rows)
        if repeated:
            self.rejects("symbols already accounted for", env.header.sender,
                         f"round {body.run_time.isoformat()}, shard {body.shard}: {', '.join(repeated[:5])}"
                         f"{'...' if len(repeated) > 5 else ''}; the first result for each is kept")

    def _checked_rows(self, state: RoundState, env: Envelope):
        """The result's table, validated and normalised (None: no rows); BadResults says what is wrong."""
        body: FactorResults = env.body  # type: ignore[assignment]
        problem = state.foreign(body)
        if problem:
            raise BadResults(problem)
        if not body.symbols:
            if env.payloads:
                raise BadResults("a table but no symbols")
            return None
        if not env.payloads:
            raise BadResults(f"no table for its {len(body.symbols)} symbol(s)")
        size = memoryview(env.payloads[0]).nbytes
        if size > MAX_TABLE_BYTES:
            raise BadResults(f"a table of {size} bytes, over the {MAX_TABLE_BYTES} limit")
        try:
            table = self.read_table(env.payloads[0])
        except Exception as e:  # Arrow raises several types on malformed bytes
            raise BadResults(f"unreadable table ({type(e).__name__}: {str(e)[:200]})") from None
        table = self.check_table(table, body.symbols)
        problem = fits(state.schema, table)
        if problem:
            raise BadResults(problem)
        return table

    def on_snapshot_request(self) -> None:
        frames = self.snapshot.recv_multipart()
        ident, env = frames[0], self.snapshot_inbox.decode(frames[1:], "snapshot request")
        if env is None:
            return
        if not isinstance(env.body, SnapshotRequest):
            log.warning("snapshot socket got a %s, not a snapshot_request", env.body.kind)
            return
        replies = self.snapshot_replies(env.body.since)
        for reply in replies:
            self.snapshot.send_multipart([ident, *reply], copy=False)
        if not replies:
            self.snapshot.send_multipart(
                [ident, *encode_unsequenced("snapshot", self.pub.stack, self.pub.sender,
                                            SnapshotEmpty(run_time=None))])

    def snapshot_replies(self, since: datetime | None) -> list[list]:
        """Selections and missed entries after ``since``, oldest first; with none, the latest
        selection and any missed hours after it (so a client's sequence catches up in full)."""
        selections = [(sel.run_time, frames) for sel, frames in self.store.frames]
        if since is None:
            latest = self.store.latest
            chosen = selections[-1:] + self.missed.after(latest.run_time if latest else None)
        else:
            chosen = [(t, f) for t, f in selections if t > since] + self.missed.after(since)
        return [frames for _, frames in sorted(chosen, key=lambda item: item[0])]

    # -- hours without a selection ------------------------------------------------------------
    def on_missed(self, env: Envelope) -> None:
        """The market could not run a round: record it for everyone, unless it was published after all."""
        body: Missed = env.body  # type: ignore[assignment]
        if env.topic != bus.ROUND_MISSED:
            self.rejects("a missed entry not from the market", env.header.sender, f"topic {env.topic!r}")
            return
        if body.run_time in self.finished:
            log.info("round %s: the market reports it missed (%s), but it was already dealt with; ignored",
                     body.run_time.isoformat(), body.reason)
            return
        self.note_gap(body.run_time)
        self.rounds.pop(body.run_time, None)
        self.record_missed(body.run_time, body.reason, body.detail)

    def note_gap(self, run_time: datetime) -> None:
        """Hours between the newest round known and a newer one that nobody announced are recorded missed."""
        known = self.finished | set(self.rounds)
        hours = gap_hours(known, run_time, self.interval)
        if not hours:
            return
        detail = (f"no round was gathered for this hour: the last before it was {max(known).isoformat()}, "
                  f"the next {run_time.isoformat()} (the market or the position service was down)")
        if len(hours) > MAX_GAP_LISTED:
            log.error("%d rounds from %s to %s MISSED (no_round); the newest %d are recorded one by one",
                      len(hours), hours[0].isoformat(), hours[-1].isoformat(), MAX_GAP_LISTED)
            hours = hours[-MAX_GAP_LISTED:]
        for t in hours:
            self.record_missed(t, "no_round", detail)

    def record_missed(self, run_time: datetime, reason: str, detail: str) -> None:
        """Publish an hour without a selection on ``selection``, keep it for snapshots, log it."""
        self.finished.add(run_time)
        missed = Missed(run_time=run_time, reason=reason, detail=detail)
        self.missed.add(missed, self.pub.send(bus.SELECTION, missed))
        self.watch.missed(missed)
        log.error("round %s MISSED (%s): %s", run_time.isoformat(), reason, detail)

    def shards_ready(self) -> bool:
        """Every expected factor shard has been heard since this start: results now reach this service."""
        expected = self.shards.expected()
        return bool(expected) and all(s in self.shards.last_heard for s in expected)

    # -- completing rounds --------------------------------------------------------------------
    def finish_due_rounds(self) -> None:
        now = time.monotonic()
        for run_time in sorted(self.rounds):
            state = self.rounds[run_time]
            if state.complete() or now >= state.deadline(self.cfg.round_grace_sec):
                del self.rounds[run_time]
                self.finished.add(run_time)
                try:
                    self.publish(state)
                except Exception:  # a bug, not a message: say so loudly, keep serving the next rounds
                    log.exception("round %s could not be built or published", run_time.isoformat())
        for run_time, count in self.pending.expire(now):
            log.warning("round %s: %d message(s) arrived but the market never announced it; dropped",
                        run_time.isoformat(), count)

    def publish(self, state: RoundState) -> None:
        """Build, send, then save and tell: nothing but the build stands between the last result and the wire."""
        began = time.perf_counter()
        policy = self.cfg.incomplete_round
        latest = self.store.latest
        previous = Previous.of(latest)
        built = build_selection(self.cfg, state, flag_incomplete=policy != "publish", previous=previous,
                                expected_shards=self.shards.expected())
        built_at = time.perf_counter()
        sel = built.selection
        cov = sel.coverage
        if cov.missing:
            log.warning("round %s INCOMPLETE: %d of %d symbols missing at the deadline (%s); silent shards: %s; "
                        "policy %s", sel.run_time.isoformat(), len(cov.missing), cov.expected,
                        ", ".join(cov.missing[:10]) + ("..." if len(cov.missing) > 10 else ""),
                        ", ".join(cov.silent_shards) or "none", policy)
            if policy == "withhold":
                self.record_missed(sel.run_time, "withheld", f"{len(cov.missing)} of {cov.expected} symbols "
                                   f"missing at the deadline ({', '.join(cov.missing[:10])}"
                                   f"{'...' if len(cov.missing) > 10 else ''}) and incomplete_round is withhold")
                return
        payloads = [table_to_ipc(built.factor_table), table_to_ipc(built.long_table),
                    table_to_ipc(built.short_table)]
        frames = self.pub.send(bus.SELECTION, sel, payloads)
        sent_at = time.perf_counter()
        self.store.add(sel, frames)  # the state file right after the send: a restart still knows this round
        self.watch.published(sel, built.factors, latest)
        log.debug("round %s: built in %.2f ms, encoded and sent in %.2f ms, saved and told in %.2f ms",
                  sel.run_time.isoformat(), (built_at - began) * 1000, (sent_at - built_at) * 1000,
                  (time.perf_counter() - sent_at) * 1000)
        short = sel.shortfall
        log.info("round %s: %d long, %d short, pool %d, symbols %d/%d%s%s, shards %s, latency %s",
                 sel.run_time.isoformat(), len(sel.long), len(sel.short),
                 sel.pool, cov.received, cov.expected,
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
            for sock, source in ((self.market, "market"), (self.factor_in, "factor_in")):
                while sock in events and sock.poll(0):
                    env = self.inbox.recv(sock)
                    if env is not None and self.admissible(source, env):
                        self.on_message(env)
            if self.snapshot in events:
                while self.snapshot.poll(0):
                    self.on_snapshot_request()
            self.finish_due_rounds()
            self.store.save()  # retries a state file the disk refused
            self.shards.check()
            self.watch.shards(self.shards.silent)
            latest = self.store.latest
            self.heartbeat.tick(latest.run_time if latest else None,
                                selection_seq=self.pub.last_seq(bus.SELECTION), late=self.late,
                                rejected=self.rejects.total, **self.inbox.counts(),
                                silent_shards=lambda: sorted(self.shards.silent), shards_ready=self.shards_ready,
                                gathering=lambda: [t.isoformat() for t in sorted(self.rounds)[-8:]])
        return 0


def main(cfg: SelectorConfig, workdir: Path) -> int:
    stop = StopFlag()
    bus.join_stack(workdir)
    keys = security.stack_keys(workdir)
    ctx = bus.context()
    factor_in = bus.make_socket(ctx, zmq.SUB)
    market = bus.make_socket(ctx, zmq.SUB)
    out = bus.make_socket(ctx, zmq.PUB)
    snapshot = bus.make_socket(ctx, zmq.ROUTER)
    if keys:
        keys.serve(factor_in, "factor_in")
        keys.serve(out, "selections")
        keys.serve(snapshot, "selections")
        keys.connect_as(market, "position", "market")
    addrs = {name: bus.endpoint(name) for name in ("ALPHABUS_FACTOR_IN", "ALPHABUS_MARKET_PUB",
                                                    "ALPHABUS_SELECTION_PUB", "ALPHABUS_SNAPSHOT")}
    factor_in.bind(bus.bind_address(addrs["ALPHABUS_FACTOR_IN"]))
    factor_in.setsockopt_string(zmq.SUBSCRIBE, "")
    out.bind(bus.bind_address(addrs["ALPHABUS_SELECTION_PUB"]))
    snapshot.bind(bus.bind_address(addrs["ALPHABUS_SNAPSHOT"]))
    market.connect(addrs["ALPHABUS_MARKET_PUB"])
    market.setsockopt_string(zmq.SUBSCRIBE, bus.ROUNDS)
    market.setsockopt_string(zmq.SUBSCRIBE, "hb.market")
    log.info("position: factor results in at %s, selections out at %s, snapshots at %s, market %s, stack %s, %s",
             addrs["ALPHABUS_FACTOR_IN"], addrs["ALPHABUS_SELECTION_PUB"], addrs["ALPHABUS_SNAPSHOT"],
             addrs["ALPHABUS_MARKET_PUB"], bus.current_stack(), "CURVE" if keys else "NOT AUTHENTICATED")
    try:
        return Position(cfg, factor_in, market, out, snapshot, stop, workdir / STATE_FILE).run()
    finally:
        bus.shutdown(ctx, factor_in, market, out, snapshot)
