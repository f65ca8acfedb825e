"""Market service main loop.

Role: XPUB bound at ALPHABUS_MARKET_PUB. Each round it waits for the crawler's
exginfo and funding markers, announces the round (universe, lot sizes,
funding), then publishes each symbol's feather bytes the moment that symbol's
ready marker appears, so factor workers compute while the crawler still
writes. When a configured plugin may read funding, each symbol's funding
events inside its candle file's span travel with its candles. It owns the
clock: ``wall`` rounds start at wall-clock boundaries, ``follow`` rounds run
every hour the crawler writes, in order (the simulator's accelerated clock),
``--run-time`` runs one given round.

No hour is lost silently: a round the market cannot run (no exginfo in time, the
market down at the boundary, files the crawler already overwrote) is announced
as ``Missed`` with its reason, and the last hour run is kept in
``WORKDIR/state/market.json`` so a restarted market knows what it missed. When
the position service restarts before the latest round's selection came back,
the market announces that round again and re-sends its candles.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import zmq

from services.alerts.watch import MarketWatch
from services.market.feeds import DirectoryFeed, ReplayFeed
from services.market.subscribers import Subscriptions
from shared import bus, security
from shared.bmac import BmacDir, FundingEvents, first_candle_begin_ms, funding_events, lot_sizes
from shared.clock import boundaries_between, latest_boundary, next_boundary, parse_interval, ready_stamp, zone
from shared.config import SelectorConfig, resolve_bmac_dir
from shared.durable import write_atomic
from shared.messages import (
    MAX_FUNDING_EVENTS,
    CandleFile,
    Candles,
    Envelope,
    Heartbeat,
    Missed,
    RoundClosed,
    RoundOpen,
    Selection,
    SymbolSpec,
)
from shared.plugins import needs_funding
from shared.service import POLL_MS, HeartbeatTimer, StopFlag

log = logging.getLogger("market")
Clock = Literal["wall", "follow"]
REJOIN_WAIT_SEC = 3.0
LOST_AFTER_SEC = 2.0
"""After announcing a round, how long before a position heartbeat that knows nothing of it means it was lost."""
MARKER_WAIT_MS = 200
"""Between looks at the crawler's exginfo folder while its inotify watch is on: a marker wakes the market at
once, so this only bounds what a lost event costs. Each wake-up costs ~0.1-0.3 ms of CPU on a small VM; at
the 10-20 ms of a listing loop that was ~15 ms of CPU a second spent waiting for the next hour."""
GATHER_SEC = 0.004
"""Paths mode: at most one candle message per this long. A marker after a quiet spell goes at once; markers
that come faster are gathered until GATHER_SEC has passed since the last message, and a round's last
GATHER_UNTIL_LEFT markers never wait. A live round of 2000 markers over a second then costs
~250 messages instead of 2000, each of which costs every service a wake-up; 200 markers 5 ms apart go one by one."""
GATHER_UNTIL_LEFT = 16
"""The last markers of a round are not gathered: each goes at once, so the factor layer computes them as
they come and has only the round's last file left to compute when it arrives."""
MAX_PATHS_PER_MESSAGE = 256
REPLAY_IN_FLIGHT = 4
REPLAY_STALL_SEC = 30.0
STATE_FILE = "market.json"
MAX_MISSED_LISTED = 24 * 31
"""A market down longer than this many intervals records the newest ones and logs the rest as one line."""


def _decimal_or_none(value):
    from decimal import Decimal

    return value if isinstance(value, Decimal) and value.is_finite() else None


def _funding(df) -> dict[str, float | None]:
    """Latest funding rate per symbol (the file may hold history, oldest first)."""
    if df.empty or "symbol" not in df or "fundingRate" not in df:
        return {}
    latest = df.drop_duplicates("symbol", keep="last")
    return {str(s): (None if not math.isfinite(r) else float(r))
            for s, r in zip(latest["symbol"].tolist(), latest["fundingRate"].tolist(), strict=True)}


@dataclass
class Announced:
    """The latest round as announced, enough to announce it again to a restarted position service."""

    open: RoundOpen
    deadline: float  # monotonic: when the market stops waiting for the crawler
    published: list[str] = field(default_factory=list)
    closed: RoundClosed | None = None
    announced_at: float = field(default_factory=time.monotonic)
    lost_since: float | None = None  # when a position heartbeat first showed it knows nothing of this round


class Market:
    def __init__(self, cfg: SelectorConfig, sock: zmq.Socket, stop: StopFlag, await_subscribers: float,
                 feed: DirectoryFeed | ReplayFeed | None = None, send_paths: bool = False,
                 state_dir: Path | None = None, progress: zmq.Socket | None = None, workdir: Path | None = None):
        """``state_dir``: where the last hour run is kept; ``progress``: a SUB to the position service's
        selections and heartbeats (how the market knows a round came back, or a restarted position
        service needs it again); ``workdir``: whose plugins may read funding."""
        self.cfg = cfg
        self.tz = zone(cfg.timezone)
        self.interval = parse_interval(cfg.interval)
        self.bmac = BmacDir(resolve_bmac_dir(cfg), cfg.interval)
        self.feed = feed or DirectoryFeed(self.bmac)
        self.send_paths = send_paths
        self.sock = sock
        self.pub = bus.Publisher(sock, bus.identity("market"))
        self.heartbeat = HeartbeatTimer(self.pub, "market")
        self.subs = Subscriptions()
        self.stop = stop
        self.await_subscribers = await_subscribers
        self.last_run_time: datetime | None = None
        self._orphans_logged: set[str] = set()
        self._stamp_parsed: tuple[str, datetime] | None = None
        self._specs: tuple[pd.DataFrame, list[SymbolSpec]] | None = None  # an exginfo frame and its specs
        self.state_path = state_dir / STATE_FILE if state_dir is not None else None
        self.progress = progress
        self.progress_inbox = bus.Inbox(ordered=False)
        self.poller = zmq.Poller()  # built once: pump() runs between every batch of ready markers
        self._markers_polled = False
        for s in (sock, progress):
            if s is not None:
                self.poller.register(s, zmq.POLLIN)
        self.current: Announced | None = None
        self.answered: set[datetime] = set()  # rounds whose selection (or missed entry) came back
        self.send_funding = needs_funding(cfg.factor_specs, cfg.all_filters, workdir)
        self.funding: FundingEvents = {}  # the latest round's funding history, per symbol
        self.watch = MarketWatch(None if isinstance(self.feed, ReplayFeed) else cfg)  # history is not news
        if isinstance(self.feed, ReplayFeed):
            log.info("rounds from %s", self.feed.describe())
            return
        log.info("reading the crawler's directory %s (bmac_dir %r, interval %s, timezone %s)",
                 self.bmac.root, cfg.bmac_dir, cfg.interval, cfg.timezone)
        if not self.bmac.root.is_dir():
            log.warning("bmac_dir %s does not exist (yet); waiting for the crawler to write it", self.bmac.root)

    # -- waiting ------------------------------------------------------------------------------
    def pump(self, timeout_ms: int = POLL_MS) -> None:
        """Serve subscription notifications, the position service's progress and heartbeats for up to timeout_ms;
        return early when the crawler writes a round marker (callers then look at the files again)."""
        markers = self.feed.marker_watch()
        if markers is not None and not self._markers_polled:
            self.poller.register(markers.fd, zmq.POLLIN)
            self._markers_polled = True
        ready = dict(self.poller.poll(timeout_ms))
        if markers is not None and markers.fd in ready:
            markers.read()  # only the wake-up matters
        if self.sock in ready:
            while True:
                try:
                    self.subs.update(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        if self.progress is not None and self.progress in ready:
            while self.progress.poll(0):
                env = self.progress_inbox.recv(self.progress)
                if env is not None:
                    self.on_progress(env)
        self.heartbeat.tick(self.last_run_time, subscribed=self.subs.ready)

    # -- a restarted position service ---------------------------------------------------------
    def on_progress(self, env: Envelope) -> None:
        """Selections and missed entries coming back, and the position service's heartbeats."""
        body = env.body
        if isinstance(body, Selection | Missed):
            self.answered.add(body.run_time)
            if len(self.answered) > 64:
                self.answered = set(sorted(self.answered)[-32:])
        elif isinstance(body, Heartbeat) and body.service == "position":
            self.check_position(body)

    def check_position(self, beat: Heartbeat) -> None:
        """Announce the latest round again when the position service neither published it nor is gathering
        it: it restarted (or its round subscription was not yet in place) after the announcement.

        Its heartbeat says what it last published (``run_time``) and which rounds it gathers. The check
        waits LOST_AFTER_SEC after an announcement (still in flight), then until the position service
        hears every shard (or REJOIN_WAIT_SEC), so the recomputed results reach it; at most once per
        REJOIN_WAIT_SEC.
        """
        cur = self.current
        if cur is None or cur.open.run_time in self.answered or not self.subs.has_position():
            return
        run_time = cur.open.run_time
        knows = (beat.run_time is not None and beat.run_time >= run_time) or \
            run_time.isoformat() in (beat.state.get("gathering") or [])
        now = time.monotonic()
        if knows or now - cur.announced_at < LOST_AFTER_SEC:
            cur.lost_since = None
            return
        cur.lost_since = cur.lost_since or now
        if not beat.state.get("shards_ready") and now - cur.lost_since < REJOIN_WAIT_SEC:
            return
        log.warning("round %s: the position service has neither published nor gathers it (it restarted?); "
                    "announcing the round again and re-sending %d candle file(s)%s", run_time.isoformat(),
                    len(cur.published), " and its close" if cur.closed else "")
        cur.announced_at, cur.lost_since = now, None
        self.pub.send(bus.ROUND_OPEN, cur.open.model_copy(
            update={"expire_sec": max(0.0, cur.deadline - now)}))
        self._publish_candles(run_time, cur.published, dict.fromkeys(cur.published, datetime.now(UTC)))
        if cur.closed is not None:
            self.pub.send(bus.ROUND_CLOSED, cur.closed)

    # -- hours that cannot run ----------------------------------------------------------------
    def missed(self, run_time: datetime, reason: str, detail: str) -> None:
        """Say an hour has no round, and why: the position service records it for everyone."""
        log.error("round %s MISSED (%s): %s", run_time.isoformat(), reason, detail)
        self.pub.send(bus.ROUND_MISSED, Missed(run_time=run_time, reason=reason, detail=detail))

    def missed_hours(self, hours: list[datetime], reason: str, detail: str) -> None:
        if len(hours) > MAX_MISSED_LISTED:
            log.error("%d rounds from %s to %s MISSED (%s): %s; the newest %d are recorded one by one",
                      len(hours), hours[0].isoformat(), hours[-1].isoformat(), reason, detail, MAX_MISSED_LISTED)
            hours = hours[-MAX_MISSED_LISTED:]
        for t in hours:
            self.missed(t, reason, detail)

    def restore(self) -> None:
        """The last hour a previous incarnation ran, so the hours it was down are not lost silently."""
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            raw = json.loads(self.state_path.read_text())
            self.last_run_time = datetime.fromisoformat(raw["last_run_time"]).astimezone(self.tz)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable market state %s: %s", self.state_path, e)
            return
        log.info("the last round run before this start was %s (%s)", self.last_run_time.isoformat(), self.state_path)

    def remember(self, run_time: datetime) -> None:
        """Persist the last hour dealt with (run or recorded missed); a disk that refuses is logged, not fatal."""
        self.last_run_time = run_time
        if self.state_path is None:
            return
        text = json.dumps({"last_run_time": run_time.isoformat()})
        try:
            write_atomic(self.state_path, lambda tmp: tmp.write_text(text))
        except OSError as e:
            log.warning("cannot save the market state %s (%s); a restart may not know the hours it missed",
                        self.state_path, e)

    def marker_wait_ms(self, listing_ms: int) -> int:
        """How long to wait for a round marker: MARKER_WAIT_MS when its folder's inotify watch wakes the
        market, else ``listing_ms`` (the folder is listed at that pace)."""
        return MARKER_WAIT_MS if self.feed.marker_watch() is not None else listing_ms

    def wait_until(self, wall: datetime) -> bool:
        while not self.stop and datetime.now(UTC) < wall:
            self.pump(min(200, max(1, int((wall - datetime.now(UTC)).total_seconds() * 1000))))
        return not self.stop

    def wait_for_file(self, path: Path, deadline: float) -> bool:
        while not self.stop:
            if path.exists():
                return True
            if time.monotonic() > deadline:
                return False
            self.pump(min(self.marker_wait_ms(POLL_MS), max(1, int((deadline - time.monotonic()) * 1000) + 1)))
        return False

    def wait_for_subscribers(self, limit: float) -> None:
        """Hold a round until the position service and every shard listen, so nothing is sent into the void.

        A restarting service gets up to ``limit`` seconds; a shard that stays down costs each round
        that much, and its symbols are then reported missing.
        """
        if self.subs.ready():
            return
        deadline = time.monotonic() + limit
        while not self.stop and not self.subs.ready() and time.monotonic() < deadline:
            self.pump(20)
        if not self.subs.ready():
            missing = self.subs.uncovered_buckets()
            log.warning("starting without a full audience: round subscriber %s, %d of %d candle buckets "
                        "unsubscribed", "present" if self.subs.has_position() else "ABSENT",
                        len(missing), bus.BUCKETS)

    def next_follow_time(self) -> datetime | None:
        """Follow mode: the hour after the last one run, once the crawler has written it.

        Every hour is run in order. An hour whose marker the crawler has already replaced with a
        newer hour's (the market was down or slow) is recorded missed: its files no longer hold it.
        On the very first start (nothing run before) the newest hour is the first.
        """
        while not self.stop:
            stamp = self.bmac.latest_exginfo_stamp()
            if stamp is not None:
                newest = self._stamp_time(stamp)
                if self.last_run_time is None:
                    return newest
                if newest > self.last_run_time:
                    hours = [*boundaries_between(self.last_run_time, newest, self.interval), newest]
                    gone = []
                    for t in hours:
                        if self.bmac.exginfo_ready(t).exists():
                            break
                        gone.append(t)
                    if gone:
                        self.missed_hours(gone, "overwritten", f"the crawler had already written hour "
                                          f"{newest.isoformat()} over this hour's files (the market was down "
                                          "or behind); computing on them would use the wrong candles")
                        self.remember(gone[-1])
                    if len(gone) < len(hours):
                        return hours[len(gone)]
                    continue
            self.pump(self.marker_wait_ms(20))
        return None

    def _stamp_time(self, stamp: str) -> datetime:
        """A marker's stamp as a time, parsed once per new stamp (``strptime`` is most of an idle look)."""
        if self._stamp_parsed is None or self._stamp_parsed[0] != stamp:
            self._stamp_parsed = (stamp, datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=self.tz))
        return self._stamp_parsed[1]

    def catch_up_wall(self, now: datetime) -> datetime | None:
        """Wall mode after a restart: hours since the last run are missed; the latest boundary still
        runs (late) while the crawler's deadline for it has not passed. Returns it, or None."""
        if self.last_run_time is None:
            return None
        latest = latest_boundary(now, self.interval)
        if latest <= self.last_run_time:
            return None
        late = (now - latest).total_seconds()
        runnable = late <= self.cfg.bmac_expire_sec
        down = boundaries_between(self.last_run_time, latest, self.interval) + ([] if runnable else [latest])
        if down:
            self.missed_hours(down, "market_down", f"the market was not running at the boundary (its last "
                              f"round before this start was {self.last_run_time.isoformat()})")
            self.remember(down[-1])
        return latest if runnable else None

    # -- one round ----------------------------------------------------------------------------
    def run_round(self, run_time: datetime) -> bool:
        """Announce and feed one round. Returns False when the crawler never delivered exginfo."""
        started = time.monotonic()
        deadline = started + self.cfg.bmac_expire_sec
        for what, path in self.feed.awaited(run_time):
            if not self.wait_for_file(path, deadline):
                if not self.stop:
                    self.watch.late(run_time, f"the crawler's {what} marker did not appear within bmac_expire_sec="
                                    f"{self.cfg.bmac_expire_sec:g}s")
                    self.missed(run_time, "no_exginfo", f"the crawler's {what} marker {path} did not appear "
                                f"within bmac_expire_sec={self.cfg.bmac_expire_sec:g}s")
                return False
        try:
            exginfo = self.feed.exginfo(run_time)
            history = self.feed.funding(run_time)
            funding = _funding(history)
            self.funding = funding_events(history, self.cfg.timezone) if self.send_funding else {}
            specs = self._symbol_specs(exginfo)
        except Exception as e:
            self.missed(run_time, "bad_exginfo", f"cannot read exginfo/funding from {self.feed.describe()}: "
                        f"{type(e).__name__}: {e}")
            return False
        universe = [s.symbol for s in specs]
        self.watch.announced(run_time, universe)
        self._log_orphans(set(universe))
        remaining = max(0.0, deadline - time.monotonic())
        announced = RoundOpen(run_time=run_time, interval=self.cfg.interval, symbols=specs,
                              funding={s: funding.get(s) for s in universe}, expire_sec=remaining)
        self.current = Announced(announced, deadline)
        self.pub.send(bus.ROUND_OPEN, announced)
        pending = set(universe)
        last_ready_at: datetime | None = None
        ready = self.feed.ready_candles(run_time) & pending
        sent = -math.inf  # when the last candle message went (monotonic)
        while not self.stop:
            seen = dict.fromkeys(ready, datetime.now(UTC))
            if ready and self.batch_paths and len(pending) - len(ready) > GATHER_UNTIL_LEFT:
                self._gather(run_time, seen, pending, min(sent + GATHER_SEC, deadline))
            if seen:
                last_ready_at = max(seen.values())
                symbols = sorted(seen)
                self._publish_candles(run_time, symbols, seen)
                sent = time.monotonic()
                self.current.published.extend(symbols)
                pending -= seen.keys()
            if not pending or time.monotonic() > deadline:
                break
            self.pump(0)
            ready = self.feed.wait_ready(run_time, max(0.0, deadline - time.monotonic())) & pending
        missing = {s: self.feed.why_missing(s, run_time) for s in sorted(pending)}
        if missing and not self.stop:
            self.watch.late(run_time, f"{len(missing)} of {len(universe)} symbols' candles not ready within "
                            f"bmac_expire_sec={self.cfg.bmac_expire_sec:g}s: {', '.join(list(missing)[:10])}")
        self.current.closed = RoundClosed(run_time=run_time, missing=missing, last_ready_at=last_ready_at)
        self.pub.send(bus.ROUND_CLOSED, self.current.closed)
        log.info("round %s: %d symbols published, %d missing%s, %.0f ms from exginfo to last ready",
                 run_time.isoformat(), len(universe) - len(pending), len(pending),
                 f" ({', '.join(list(missing)[:5])}{'...' if len(missing) > 5 else ''})" if missing else "",
                 (time.monotonic() - started) * 1000)
        return True

    def _symbol_specs(self, exginfo: pd.DataFrame) -> list[SymbolSpec]:
        """The round's contracts; built again only when the feed hands over another exginfo frame."""
        if self._specs is not None and self._specs[0] is exginfo:
            return self._specs[1]
        specs = self._build_specs(exginfo)
        self._specs = (exginfo, specs)
        return specs

    def _build_specs(self, exginfo: pd.DataFrame) -> list[SymbolSpec]:
        sizes = lot_sizes(exginfo)
        specs = []
        for row in exginfo.itertuples(index=False):
            symbol = str(row.symbol)
            specs.append(SymbolSpec(
                symbol=symbol,
                face_value=sizes[symbol],
                price_tick=_decimal_or_none(getattr(row, "price_tick", None)),
                min_notional_value=_decimal_or_none(getattr(row, "min_notional_value", None)),
            ))
            if sizes[symbol] is None:
                log.warning("%s: exginfo has no usable face_value; it cannot be sized this round", symbol)
        return specs

    def _funding_for(self, run_time: datetime, symbol: str, data: object | None) -> dict[str, list]:
        """The symbol's funding events inside its candle file's span (from the first candle's close to
        run_time, the newest one's), at most MAX_FUNDING_EVENTS of the newest. With paths the file is
        not read here, so only run_time bounds them: the factor values come out the same."""
        events = self.funding.get(symbol)
        if events is None:
            return {}
        times, rates = events
        first = first_candle_begin_ms(data) if data else None  # type: ignore[arg-type]
        lo_ms = first + int(self.interval.total_seconds() * 1000) if first is not None else None
        hi = int(np.searchsorted(times, round(run_time.timestamp() * 1000), side="right"))
        lo = max(hi - MAX_FUNDING_EVENTS, 0 if lo_ms is None else int(np.searchsorted(times, lo_ms, side="left")))
        return {"funding_times": times[lo:hi].tolist(), "funding_rates": rates[lo:hi].tolist()} if hi > lo else {}

    @property
    def batch_paths(self) -> bool:
        """Candles go as paths, many a message (the factor workers read the crawler's files themselves)."""
        return self.send_paths and isinstance(self.feed, DirectoryFeed)

    def _gather(self, run_time: datetime, seen: dict[str, datetime], pending: set[str], until: float) -> None:
        """Add to ``seen`` (symbol -> when its marker was seen) the markers that appear until ``until``
        (monotonic); return at once when nothing else is pending (the round's last marker) or a message is full."""
        while len(seen) < min(len(pending), MAX_PATHS_PER_MESSAGE) and not self.stop:
            left = until - time.monotonic()
            if left <= 0:
                break
            more = self.feed.more_ready(run_time, left) & pending  # type: ignore[union-attr]
            now = datetime.now(UTC)
            seen.update((symbol, now) for symbol in more if symbol not in seen)

    def _publish_candles(self, run_time: datetime, symbols: list[str], seen: dict[str, datetime]) -> None:
        """Send the symbols' candle files: paths, many a message; or each file's bytes on its bucket topic."""
        if self.batch_paths:
            for i in range(0, len(symbols), MAX_PATHS_PER_MESSAGE):
                files = [CandleFile(symbol=symbol, path=self.feed.candle_source(symbol), ready_at=seen[symbol],
                                    **self._funding_for(run_time, symbol, None))
                         for symbol in symbols[i: i + MAX_PATHS_PER_MESSAGE]]
                self.pub.send(bus.CANDLE_PATHS, Candles(run_time=run_time, files=files, by_path=True))
            return
        for symbol in symbols:
            data, source = self.feed.candle(symbol)
            if not data:
                log.error("%s: ready marker present but the file is unreadable: %s", symbol, source)
            file = CandleFile(symbol=symbol, path=source, ready_at=seen[symbol],
                              **self._funding_for(run_time, symbol, data))
            self.pub.send(bus.candle_topic(symbol), Candles(run_time=run_time, files=[file]), [data])

    def _log_orphans(self, universe: set[str]) -> None:
        orphans = self.feed.candle_symbols() - universe
        new = orphans - self._orphans_logged
        for symbol in sorted(new):
            log.warning("%s: candle file %s has no exginfo row; it is not traded", symbol,
                        self.feed.candle_source(symbol))
        self._orphans_logged |= new

    # -- the loop -----------------------------------------------------------------------------
    def replay(self, progress: zmq.Socket, hours: int | None, in_flight: int = REPLAY_IN_FLIGHT) -> int:
        """Rounds back to back, at most ``in_flight`` ahead of the selections coming back."""
        assert isinstance(self.feed, ReplayFeed)
        total = min(hours or self.feed.market.hours, self.feed.market.hours)
        done: set[datetime] = set()
        inbox = bus.Inbox(ordered=False)

        def wait_for_selections(until: int) -> None:
            """Collect returning selections until at most ``until`` rounds are outstanding."""
            stalled = time.monotonic() + REPLAY_STALL_SEC
            while not self.stop and published - len(done) > until:
                if progress.poll(5):
                    env = inbox.recv(progress)
                    if env is not None and isinstance(env.body, Selection | Missed):
                        done.add(env.body.run_time)
                elif time.monotonic() > stalled:
                    log.warning("replay: no selection for %ss; going on", REPLAY_STALL_SEC)
                    return
                self.pump(0)

        started = time.monotonic()
        published = 0
        for k in range(total):
            wait_for_selections(in_flight - 1)
            if self.stop:
                break
            run_time = self.feed.run_time(k)
            self.run_round(run_time)
            self.last_run_time, published = run_time, published + 1
        wait_for_selections(0)
        elapsed = time.monotonic() - started
        log.info("replay: %d rounds in %.2fs, %.1f rounds/s", len(done), elapsed, len(done) / elapsed)
        return 0

    def run(self, clock: Clock, run_time: datetime | None) -> int:
        """``run_time``: one round, not remembered (a debug run is not the stack's clock)."""
        self.wait_for_subscribers(self.await_subscribers)
        if run_time is not None:
            ok = self.run_round(run_time)
            return 0 if ok else 1
        self.restore()
        late = self.catch_up_wall(datetime.now(self.tz)) if clock == "wall" else None
        while not self.stop:
            if late is not None:
                t, late = late, None
                log.info("round %s runs late: the market started after its boundary", t.isoformat())
            elif clock == "follow":
                t = self.next_follow_time()
                if t is None:
                    break
            else:
                t = next_boundary(datetime.now(self.tz), self.interval)
                if self.last_run_time is not None and t <= self.last_run_time:
                    t = self.last_run_time + self.interval
                log.info("next round %s (crawler marker %s)", t.isoformat(), ready_stamp(t))
                if not self.wait_until(t.astimezone(UTC)):
                    break
            self.wait_for_subscribers(min(REJOIN_WAIT_SEC, self.await_subscribers))
            self.run_round(t)
            if not self.stop:  # a round cut short by a stop runs again after a restart
                self.remember(t)
        return 0


def main(cfg: SelectorConfig, workdir: Path, clock: Clock = "wall", run_time: datetime | None = None,
         await_subscribers: float = 10.0, replay: Path | None = None, first_hour: int | None = None,
         hours: int | None = None, send_paths: bool = False) -> int:
    stop = StopFlag()
    bus.join_stack(workdir)
    keys = security.stack_keys(workdir)
    ctx = bus.context()
    sock = bus.make_socket(ctx, zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    if keys:
        keys.serve(sock, "market")
    address = bus.endpoint("ALPHABUS_MARKET_PUB")
    sock.bind(bus.bind_address(address))
    log.info("market PUB bound at %s, stack %s, %s (%s)", address, bus.current_stack(),
             "CURVE" if keys else "NOT AUTHENTICATED", f"replaying {replay}" if replay
             else f"clock {clock}, candles sent as {'paths on a shared filesystem' if send_paths else 'bytes'}")
    progress = None
    try:
        if replay is None:  # selections and heartbeats coming back: a restarted position service is served
            progress = bus.selection_subscriber(ctx, keys, "market", topics=(bus.SELECTION, "hb.position"))
            return Market(cfg, sock, stop, await_subscribers, send_paths=send_paths, state_dir=workdir / "state",
                          progress=progress, workdir=workdir).run(clock, run_time)
        progress = bus.selection_subscriber(ctx, keys, "market")  # selections coming back pace the replay
        market = Market(cfg, sock, stop, await_subscribers, ReplayFeed(replay, cfg.timezone, first_hour),
                        workdir=workdir)
        market.wait_for_subscribers(await_subscribers)
        return market.replay(progress, hours)
    finally:
        sock.close(linger=2000)
        bus.shutdown(ctx, *([progress] if progress is not None else []), linger=0)
