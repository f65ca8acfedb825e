"""Prometheus metrics: each service serves ``/metrics`` over HTTP when an environment variable gives a port.

Off unless set. ``ALPHABUS_METRICS_PORT=P`` is a base for a whole stack on one host: the market serves
on P, the position service on P+1, the recorder on P+2, factor shard K on P+10+K.
``ALPHABUS_METRICS_PORT_<SERVICE>`` (MARKET, POSITION, RECORDER, FACTOR) sets one service's port
instead (factor shard K still adds K). The server binds 127.0.0.1 unless ``ALPHABUS_METRICS_HOST``
names another address (``0.0.0.0`` in a container that Prometheus scrapes over its network).

Updates cost microseconds and happen once per round (a counter, a histogram observation). Dropped
messages are not counted again here: the inboxes already count them, and a collector reads those
counters when Prometheus scrapes, so the message loops carry no extra work. Process memory and CPU
come from prometheus-client's process collector (Linux).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TypeVar, get_args

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shared import bus, security
from shared.errors import UserMistake
from shared.messages import Missed, Selection, Skip

log = logging.getLogger("metrics")
T = TypeVar("T")
PORT_ENV = "ALPHABUS_METRICS_PORT"
HOST_ENV = "ALPHABUS_METRICS_HOST"
OFFSETS = {"market": 0, "position": 1, "recorder": 2, "factor": 10}
"""Each service's port above ALPHABUS_METRICS_PORT; factor shard K adds K."""

disable_created_metrics()  # the *_created series double every counter for no use here

ROUNDS = Counter("alphabus_rounds", "Rounds the position service finished, by outcome: completed, flagged "
                 "(published with symbols missing at the deadline) or missed (no selection for the hour).",
                 ["outcome"])
MISSED = Counter("alphabus_rounds_missed", "Hours without a selection, by reason (the Missed entry's).", ["reason"])
LATENCY = Histogram("alphabus_round_latency_seconds", "The crawler's last ready marker to the published selection.",
                    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
SYMBOLS = Gauge("alphabus_round_symbols", "The last published round's symbols: expected (its universe), received "
                "(factor rows), skipped, missing (unaccounted for at the deadline), late.", ["state"])
SKIPPED = Counter("alphabus_symbols_skipped", "Symbols left out of published rounds, by reason.", ["reason"])
LAST_ROUND = Gauge("alphabus_last_round_run_time_seconds", "run_time (Unix seconds) of the newest hour finished, "
                   "published or missed: alert on it standing still.")
FACTOR_SECONDS = Histogram("alphabus_factor_compute_seconds_per_symbol", "Factor compute time per symbol: each "
                           "round's compute time on this shard divided by its symbols (one observation a round).",
                           buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
FACTOR_TOTAL = Counter("alphabus_factor_compute_seconds", "Factor compute time on this shard.")
FACTOR_SYMBOLS = Counter("alphabus_factor_symbols", "Symbols this shard computed or skipped.", ["outcome"])
ALERTS = Counter("alphabus_alerts", "Alerts per messenger by event and outcome (sent, dropped).", ["event", "outcome"])
SERVICE = Info("alphabus_service", "Which service this is.")

SKIP_REASONS = (*get_args(Skip.model_fields["reason"].annotation), "other")
DROP_REASONS = {"bad_messages": "garbage", "duplicates": "duplicate", "gaps": "gap", "foreign": "foreign"}


class _Drops(Collector):
    """``alphabus_messages_dropped_total{reason}``, read at scrape time from the inboxes' own counters and the
    authenticator's refusals; a service adds its own (the position service's rejected and late results)."""

    def __init__(self) -> None:
        self.extra: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily("alphabus_messages_dropped", "Messages dropped by reason: garbage "
                                     "(undecodable), duplicate, gap (lost in transit, counted by the receiver), "
                                     "foreign (another stack's), unauthenticated (refused handshakes), and the "
                                     "position service's rejected (admitted but invalid) and late results.",
                                     labels=["reason"])
        totals = dict.fromkeys([*DROP_REASONS.values(), "unauthenticated"], 0)
        for name, value in _settled(bus.inbox_counts).items():
            if name in DROP_REASONS:
                totals[DROP_REASONS[name]] += value
        totals["unauthenticated"] = security.refusals.count
        for reason, read in list(self.extra.items()):
            totals[reason] = _settled(read)
        for reason, value in totals.items():
            family.add_metric([reason], value)
        yield family


def _settled(read: Callable[[], T]) -> T:
    """Read counters the service thread may be adding a key to: a dict that changed size mid-read is read again."""
    for _ in range(9):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return read()


_drops = _Drops()
REGISTRY.register(_drops)


def count_drops(readers: Mapping[str, Callable[[], int]]) -> None:
    """Report more drop reasons, each read from a counter the service keeps anyway."""
    _drops.extra.update(readers)


def metrics_port(service: str, index: int = 0, environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The port this service serves metrics on and the variable that set it; None when metrics are off.

    A value that is not a port is a UserMistake naming the variable.
    """
    environ = os.environ if environ is None else environ
    own = f"{PORT_ENV}_{service.upper()}"
    var = own if environ.get(own) else PORT_ENV if environ.get(PORT_ENV) else None
    if var is None:
        return None
    text = environ[var].strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UserMistake(f"{var}={environ[var]!r} is not a port number; set it to a port such as 9100 "
                          "(or unset it to serve no metrics)")
    port = int(text) + (0 if var == own else OFFSETS[service]) + index
    if port > 65535:
        raise UserMistake(f"{var}={text} puts the {service} service's metrics on port {port}, above 65535; "
                          f"set {var} to a lower port")
    return port, var


def serve(service: str, index: int = 0, labels: Mapping[str, str] | None = None) -> int | None:
    """Start the /metrics server if the environment asks for one (``index``: the factor shard); returns its port."""
    found = metrics_port(service, index)
    SERVICE.info({"service": service, **(labels or {})})
    if found is None:
        return None
    port, var = found
    host = os.environ.get(HOST_ENV) or "127.0.0.1"
    try:
        start_http_server(port, addr=host)
    except OSError as e:
        raise UserMistake(f"cannot serve metrics on {host}:{port} (from {var}): {e.strerror or e}; set {var} "
                          f"to a free port{'' if var.endswith(service.upper()) else ' base'} or {HOST_ENV} to an "
                          "address of this host") from None
    log.info("metrics at http://%s:%d/metrics", host, port)
    return port


def round_published(sel: Selection) -> None:
    cov = sel.coverage
    ROUNDS.labels("flagged" if cov.missing else "completed").inc()
    if sel.latency_ms is not None:
        LATENCY.observe(sel.latency_ms / 1000)
    for state, n in (("expected", cov.expected), ("received", cov.received), ("skipped", len(cov.skipped)),
                     ("missing", len(cov.missing)), ("late", len(cov.late))):
        SYMBOLS.labels(state).set(n)
    for why in cov.skipped.values():
        reason = why.split(":", 1)[0]
        SKIPPED.labels(reason if reason in SKIP_REASONS else "other").inc()
    _finished(sel.run_time)


def round_missed(missed: Missed) -> None:
    ROUNDS.labels("missed").inc()
    MISSED.labels(missed.reason).inc()
    _finished(missed.run_time)


_newest = [0.0]


def _finished(run_time: datetime) -> None:
    """Hours can finish out of order (a gap recorded after a newer round opened): keep the newest."""
    _newest[0] = max(_newest[0], run_time.timestamp())
    LAST_ROUND.set(_newest[0])


def factor_round(compute_ms: float, computed: int, skipped: int) -> None:
    """One shard's round: its compute time and symbols (the summary line's figures)."""
    symbols = computed + skipped
    FACTOR_TOTAL.inc(compute_ms / 1000)
    FACTOR_SYMBOLS.labels("computed").inc(computed)
    FACTOR_SYMBOLS.labels("skipped").inc(skipped)
    if symbols:
        FACTOR_SECONDS.observe(compute_ms / 1000 / symbols)


def alert_outcome(event: str, outcome: str) -> None:
    ALERTS.labels(event, outcome).inc()
