"""Market service main loop.

Role: XPUB bound at ALPHABUS_MARKET_PUB. Each round it waits for the crawler's
exginfo and funding markers, announces the round (universe, lot sizes,
funding), then publishes each symbol's feather bytes the moment that symbol's
ready marker appears, so factor workers compute while the crawler still
writes. It owns the clock: ``wall`` rounds start at wall-clock boundaries,
``follow`` rounds start when the crawler writes a newer exginfo marker (the
simulator's accelerated clock), ``--run-time`` runs one given round.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import zmq

from services.market.feeds import DirectoryFeed, ReplayFeed
from services.market.subscribers import Subscriptions
from shared import bus
from shared.bmac import BmacDir, lot_sizes
from shared.clock import next_boundary, parse_interval, ready_stamp, zone
from shared.config import SelectorConfig, resolve_bmac_dir
from shared.messages import Candles, RoundClosed, RoundOpen, SymbolSpec
from shared.service import POLL_MS, HeartbeatTimer, StopFlag

log = logging.getLogger("market")
Clock = Literal["wall", "follow"]
REJOIN_WAIT_SEC = 3.0
REPLAY_IN_FLIGHT = 4
REPLAY_STALL_SEC = 30.0


def _decimal_or_none(value):
    from decimal import Decimal

    return value if isinstance(value, Decimal) and value.is_finite() else None


def _funding(df) -> dict[str, float | None]:
    """Latest funding rate per symbol (the file may hold history, oldest first)."""
    if df.empty or "symbol" not in df or "fundingRate" not in df:
        return {}
    latest = df.groupby("symbol", sort=False)["fundingRate"].last()
    return {str(s): (None if not math.isfinite(r) else float(r)) for s, r in latest.items()}


class Market:
    def __init__(self, cfg: SelectorConfig, sock: zmq.Socket, stop: StopFlag, await_subscribers: float,
                 feed: DirectoryFeed | ReplayFeed | None = None, send_paths: bool = False):
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
        if isinstance(self.feed, ReplayFeed):
            log.info("rounds from %s", self.feed.describe())
            return
        log.info("reading the crawler's directory %s (bmac_dir %r, interval %s, timezone %s)",
                 self.bmac.root, cfg.bmac_dir, cfg.interval, cfg.timezone)
        if not self.bmac.root.is_dir():
            log.warning("bmac_dir %s does not exist (yet); waiting for the crawler to write it", self.bmac.root)

    # -- waiting ------------------------------------------------------------------------------
    def pump(self, timeout_ms: int = POLL_MS) -> None:
        """Serve subscription notifications and heartbeats for up to timeout_ms."""
        if self.sock.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    self.subs.update(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        self.heartbeat.tick(self.last_run_time, subscribed=self.subs.ready)

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
            self.pump()
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
        """Follow mode: the crawler's newest exginfo marker, if newer than the last round."""
        while not self.stop:
            stamp = self.bmac.latest_exginfo_stamp()
            if stamp is not None:
                t = datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=self.tz)
                if self.last_run_time is None or t > self.last_run_time:
                    return t
            self.pump(20)
        return None

    # -- one round ----------------------------------------------------------------------------
    def run_round(self, run_time: datetime) -> bool:
        """Announce and feed one round. Returns False when the crawler never delivered exginfo."""
        started = time.monotonic()
        deadline = started + self.cfg.bmac_expire_sec
        for what, path in self.feed.awaited(run_time):
            if not self.wait_for_file(path, deadline):
                if not self.stop:
                    log.error("round %s skipped: the crawler's %s marker %s did not appear within "
                              "bmac_expire_sec=%gs", run_time.isoformat(), what, path, self.cfg.bmac_expire_sec)
                return False
        try:
            exginfo = self.feed.exginfo(run_time)
            funding = _funding(self.feed.funding(run_time))
            specs = self._symbol_specs(exginfo)
        except Exception as e:
            log.error("round %s skipped: cannot read exginfo/funding from %s: %s: %s",
                      run_time.isoformat(), self.feed.describe(), type(e).__name__, e)
            return False
        universe = [s.symbol for s in specs]
        self._log_orphans(set(universe))
        remaining = max(0.0, deadline - time.monotonic())
        self.pub.send(bus.ROUND_OPEN, RoundOpen(run_time=run_time, interval=self.cfg.interval, symbols=specs,
                                           funding={s: funding.get(s) for s in universe},
                                           expire_sec=remaining))
        pending = set(universe)
        last_ready_at: datetime | None = None
        ready = self.feed.ready_candles(run_time) & pending
        while not self.stop:
            for symbol in sorted(ready):
                self._publish_candles(run_time, symbol)
            if ready:
                pending -= ready
                last_ready_at = datetime.now(UTC)
            if not pending or time.monotonic() > deadline:
                break
            self.pump(0)
            ready = self.feed.wait_ready(run_time, max(0.0, deadline - time.monotonic())) & pending
        missing = {s: self.feed.why_missing(s, run_time) for s in sorted(pending)}
        self.pub.send(bus.ROUND_CLOSED, RoundClosed(run_time=run_time, missing=missing, last_ready_at=last_ready_at))
        log.info("round %s: %d symbols published, %d missing%s, %.0f ms from exginfo to last ready",
                 run_time.isoformat(), len(universe) - len(pending), len(pending),
                 f" ({', '.join(list(missing)[:5])}{'...' if len(missing) > 5 else ''})" if missing else "",
                 (time.monotonic() - started) * 1000)
        return True

    def _symbol_specs(self, exginfo) -> list[SymbolSpec]:
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

    def _publish_candles(self, run_time: datetime, symbol: str) -> None:
        now = datetime.now(UTC)
        if self.send_paths and isinstance(self.feed, DirectoryFeed):
            self.pub.send(bus.candle_topic(symbol), Candles(run_time=run_time, symbol=symbol, ready_at=now,
                                                            path=self.feed.candle_source(symbol), by_path=True))
            return
        data, source = self.feed.candle(symbol)
        if not data:
            log.error("%s: ready marker present but the file is unreadable: %s", symbol, source)
        self.pub.send(bus.candle_topic(symbol), Candles(run_time=run_time, symbol=symbol, path=source, ready_at=now),
                      [data])

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
                    if env is not None:
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
        self.wait_for_subscribers(self.await_subscribers)
        if run_time is not None:
            ok = self.run_round(run_time)
            return 0 if ok else 1
        while not self.stop:
            if clock == "follow":
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
            self.last_run_time = t
        return 0


def main(cfg: SelectorConfig, clock: Clock = "wall", run_time: datetime | None = None,
         await_subscribers: float = 10.0, replay: Path | None = None, first_hour: int | None = None,
         hours: int | None = None, send_paths: bool = False) -> int:
    stop = StopFlag()
    ctx = bus.context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    address = bus.endpoint("ALPHABUS_MARKET_PUB")
    sock.bind(bus.bind_address(address))
    log.info("market PUB bound at %s (%s)", address, f"replaying {replay}" if replay
             else f"clock {clock}, candles sent as {'paths on a shared filesystem' if send_paths else 'bytes'}")
    progress = None
    try:
        if replay is None:
            return Market(cfg, sock, stop, await_subscribers, send_paths=send_paths).run(clock, run_time)
        progress = ctx.socket(zmq.SUB)  # selections coming back pace the replay
        progress.connect(bus.endpoint("ALPHABUS_SELECTION_PUB"))
        progress.setsockopt_string(zmq.SUBSCRIBE, bus.SELECTION)
        market = Market(cfg, sock, stop, await_subscribers, ReplayFeed(replay, cfg.timezone, first_hour))
        market.wait_for_subscribers(await_subscribers)
        return market.replay(progress, hours)
    finally:
        if progress is not None:
            progress.close(0)
        sock.close(linger=2000)
        ctx.term()

