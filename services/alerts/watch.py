"""What the market and position services call: each hook updates the metrics and posts the alerts due.

Hooks run once per round, heartbeat or state change; posting an alert only queues it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

import pandas as pd

from services.alerts import rules
from shared import bus, metrics
from shared.alerts import Alert, AlertSender, Origin
from shared.config import SelectorConfig
from shared.messages import Missed, Selection

log = logging.getLogger("position")


def _sender(cfg: SelectorConfig | None, service: str) -> AlertSender:
    return AlertSender(cfg.alerts if cfg is not None else None, Origin(service, bus.current_stack()),
                       metrics.alert_outcome)


class PositionWatch:
    """The position service's hooks: round outcomes, missed hours, heartbeats, silent shards."""

    def __init__(self, cfg: SelectorConfig, restored: Selection | None,
                 drops: Mapping[str, Callable[[], int]] | None = None):
        self.cfg = cfg
        self.alerts = _sender(cfg, "position")
        self.incarnations = rules.Incarnations()
        self.silent: frozenset[str] = frozenset()
        metrics.count_drops(drops or {})
        if restored is not None:
            self._post(rules.position_restarted(restored.run_time))

    def _post(self, alert: Alert | None) -> None:
        if alert is not None:
            self.alerts.post(alert)

    def heard(self, sender: str) -> None:
        """Any heartbeat from the market or a shard."""
        self._post(self.incarnations.heard(sender))

    def published(self, sel: Selection, factors: pd.DataFrame, previous: Selection | None) -> None:
        """A selection went out; ``factors`` holds this round's closes, ``previous`` the selection before."""
        metrics.round_published(sel)
        self._post(rules.incomplete(sel))
        fraction = self.cfg.alerts.target_change_fraction if self.cfg.alerts is not None else None
        if fraction is not None and sel.changes and self.alerts.wants("target_change"):
            try:
                changed = factors[factors["symbol"].isin(list(sel.changes))]
                closes = dict(zip(changed["symbol"].tolist(), changed["close"].tolist(), strict=True))
                price = rules.prices(sel.changes, closes, previous)
                self._post(rules.target_change(sel, price, self.cfg.capital_usdt, fraction))
            except Exception:  # a bug here must not look like the round failing: it was published
                log.exception("round %s: could not judge its target changes for alerts", sel.run_time.isoformat())

    def missed(self, entry: Missed) -> None:
        metrics.round_missed(entry)
        self._post(rules.missed(entry))

    def shards(self, silent: set[str]) -> None:
        """The shards silent now; those newly so are alerted once (until they come back)."""
        if silent == self.silent:
            return
        new = sorted(silent - self.silent)
        self.silent = frozenset(silent)
        if new:
            self._post(rules.shards_silent(new))


class MarketWatch:
    """The market's hooks: each announced universe (listings) and the crawler missing its deadline."""

    def __init__(self, cfg: SelectorConfig | None):
        """``cfg`` None: metrics only, no alerts (a replay of history is not news)."""
        self.alerts = _sender(cfg, "market")
        self.universe: set[str] | None = None

    def announced(self, run_time: datetime, symbols: list[str]) -> None:
        now = set(symbols)
        for alert in rules.listings(self.universe, now, run_time):
            self.alerts.post(alert)
        self.universe = now

    def late(self, run_time: datetime, what: str) -> None:
        self.alerts.post(rules.crawler_late(run_time, what))
