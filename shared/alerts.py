"""Alerts to the messengers traders watch: DingTalk (DingDing) and WeCom robots, Telegram bots, any JSON webhook.

The ``alerts`` key of ``factor_calc.json`` (optional; absent means no alerts) names the messengers and
which events to send. Which service raises which event is decided in ``services/alerts``; this module
only formats and delivers. Delivery never blocks a round: ``AlertSender.post`` puts the alert on a
bounded queue that one thread drains, retrying each messenger with a doubling wait; an alert that
cannot be delivered (queue full, retries spent, process stopping) ends in one log line naming it.
Tokens and secrets never appear in a log line.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from shared.validation import Frozen, NonNegativeInt, PositiveFloat, PositiveInt, json_text

log = logging.getLogger("alerts")

Event = Literal["round_incomplete", "round_missed", "crawler_late", "shard_silent", "service_restarted",
                "symbol_listed", "symbol_delisted", "target_change"]
EVENTS: tuple[str, ...] = get_args(Event)
TITLES = {
    "round_incomplete": "round incomplete", "round_missed": "round MISSED", "crawler_late": "crawler late",
    "shard_silent": "factor shard silent", "service_restarted": "service restarted",
    "symbol_listed": "symbol listed", "symbol_delisted": "symbol delisted", "target_change": "large target change",
}
DINGDING_URL = "https://oapi.dingtalk.com/robot/send"
WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
TELEGRAM_URL = "https://api.telegram.org"
MAX_TEXT = 3500
"""Characters of an alert's text sent (Telegram takes 4096, DingTalk 20000 bytes): long lists are cut."""


# -- configuration ------------------------------------------------------------------------------

def _http_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) address; write it like https://example.com/hook")
    return value


def _token(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"must be {what}, non-empty and without spaces")
        return value
    return check


def _one_or_many(value: Any) -> Any:
    """A messenger key takes one object or a list of them."""
    return value if isinstance(value, list | tuple) else [value]


Url = Annotated[str, Strict(), AfterValidator(_http_url)]
Text = Annotated[str, Strict()]


class _Object(Frozen):
    """A JSON object whose unknown keys are named with the ones that exist (a misspelt ``secret`` must not
    silently send unsigned)."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object with the keys {', '.join(cls.model_fields)}, "
                             f"not {json_text(value)}")
        unknown = sorted(set(value) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                             f"{', '.join(cls.model_fields)}")
        return value


class DingDing(_Object):
    """A DingTalk group robot, as the crawler's config writes it: ``access_token`` from the robot's webhook
    address and, for a robot with signing enabled, its ``secret`` (``SEC...``)."""

    access_token: Annotated[Text, AfterValidator(
        _token("the robot's access_token (from its address: ...?access_token=THIS)"))]
    secret: Annotated[Text, AfterValidator(_token("the robot's signing secret"))] | None = Field(
        None, description="The robot's signing secret (starts with SEC); omit for a keyword or IP-list robot.")
    url: Url = Field(DINGDING_URL, description="The robot API (a proxy's address, if you use one).")

    @model_validator(mode="after")
    def _secret_form(self) -> DingDing:
        if self.secret is not None and not self.secret.startswith("SEC"):
            raise ValueError("secret: a DingTalk signing secret starts with SEC; copy it from the robot's "
                             "security settings (or leave secret out for a robot without signing)")
        return self


class WeCom(_Object):
    """A WeCom (企业微信) group robot: the ``key`` of its webhook address."""

    key: Annotated[Text, AfterValidator(_token("the robot's key (from its address: ...?key=THIS)"))]
    url: Url = Field(WECOM_URL, description="The robot API (a proxy's address, if you use one).")


class Telegram(_Object):
    """A Telegram bot (from @BotFather) posting to one chat (a user's, a group's or a channel's id)."""

    bot_token: Annotated[Text, AfterValidator(_token("the bot's token from @BotFather, like 123456:ABC-DEF"))]
    chat_id: Annotated[int, Strict()] | Annotated[
        str, Strict(), AfterValidator(_token("the chat's id, like -1001234567890"))]
    url: Url = Field(TELEGRAM_URL, description="The Bot API base (a proxy's or a local Bot API server's).")


class Webhook(_Object):
    """Any endpoint taking a JSON POST: ``{"event", "title", "text", "service", "stack", "host", "time",
    "run_time", "details"}``."""

    url: Url
    headers: dict[Text, Text] = Field({}, description="Extra request headers, e.g. an Authorization token.")


Messenger = DingDing | WeCom | Telegram | Webhook


def _many(model: type) -> Any:
    return Annotated[tuple[model, ...], BeforeValidator(_one_or_many)]


class AlertsConfig(_Object):
    """The ``alerts`` key: one or more messengers, the events sent and how hard to try."""

    dingding: _many(DingDing) = ()  # type: ignore[valid-type]
    wecom: _many(WeCom) = ()  # type: ignore[valid-type]
    telegram: _many(Telegram) = ()  # type: ignore[valid-type]
    webhook: _many(Webhook) = ()  # type: ignore[valid-type]
    events: tuple[Event, ...] = Field(EVENTS, description="The events sent; default all.")
    target_change_fraction: PositiveFloat | None = Field(
        None, description="Alert when one symbol's target changes by more than this fraction of capital_usdt "
                          "in value (e.g. 0.3); unset: no target_change alerts.")
    label: Annotated[Text, Field(min_length=1, max_length=64)] = Field(
        "alphabus", description="First word of every message (a DingTalk keyword robot needs its keyword here).")
    timeout_sec: PositiveFloat = Field(5.0, description="Per request.")
    retries: NonNegativeInt = Field(3, description="Tries after the first, per messenger, before giving up.")
    retry_sec: PositiveFloat = Field(2.0, description="Wait before the first retry; doubles each time.")
    queue: PositiveInt = Field(200, description="Alerts waiting at most; beyond, each is dropped with a log line.")

    @model_validator(mode="after")
    def _somewhere(self) -> AlertsConfig:
        if not self.messengers:
            raise ValueError("name at least one messenger: dingding, wecom, telegram or webhook "
                             '(e.g. "dingding": {"access_token": "...", "secret": "SEC..."}), or drop alerts')
        return self

    @property
    def messengers(self) -> tuple[Messenger, ...]:
        return (*self.dingding, *self.wecom, *self.telegram, *self.webhook)


# -- formats (pure) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    """One event worth a message; ``details`` go to the generic webhook as they are."""

    event: Event
    text: str
    run_time: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Origin:
    """Who raises: named in every message so a trader with several stacks knows which one."""

    service: str
    stack: str = ""
    host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]


def dingding_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: HmacSHA256 of ``timestamp + "\\n" + secret`` keyed by the secret, base64,
    URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def message_text(alert: Alert, origin: Origin, label: str, now: datetime) -> str:
    """The human message: label and title first (keyword robots match it), then what happened, then who."""
    where = f"{origin.service} on {origin.host}" + (f", stack {origin.stack}" if origin.stack else "")
    text = f"{label} {TITLES[alert.event]}: {alert.text}"
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 3] + "..."
    return f"{text}\n({where}, {now.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode()


def _add_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in params.items())


def build_request(messenger: Messenger, alert: Alert, origin: Origin, label: str,
                  raised_at: datetime, now: datetime | None = None) -> Request:
    """The HTTP POST each messenger's API documents, for one alert raised at ``raised_at`` and sent ``now``
    (DingTalk's signature carries the sending time)."""
    now = now or raised_at
    text = message_text(alert, origin, label, raised_at)
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if isinstance(messenger, DingDing):
        params = {"access_token": urllib.parse.quote_plus(messenger.access_token)}
        if messenger.secret is not None:
            timestamp = int(now.timestamp() * 1000)
            params |= {"timestamp": str(timestamp), "sign": dingding_sign(messenger.secret, timestamp)}
        return Request(_add_query(messenger.url, params), _json({"msgtype": "text", "text": {"content": text}}),
                       headers)
    if isinstance(messenger, WeCom):
        return Request(_add_query(messenger.url, {"key": urllib.parse.quote_plus(messenger.key)}),
                       _json({"msgtype": "text", "text": {"content": text}}), headers)
    if isinstance(messenger, Telegram):
        return Request(f"{messenger.url.rstrip('/')}/bot{messenger.bot_token}/sendMessage",
                       _json({"chat_id": messenger.chat_id, "text": text, "disable_web_page_preview": True}),
                       headers)
    body = {"event": alert.event, "title": TITLES[alert.event], "text": alert.text, "message": text,
            "service": origin.service, "stack": origin.stack, "host": origin.host,
            "time": raised_at.astimezone(UTC).isoformat(),
            "run_time": alert.run_time.isoformat() if alert.run_time else None, "details": alert.details}
    return Request(messenger.url, _json(body), {**headers, **messenger.headers})


def refusal(messenger: Messenger, body: bytes) -> str | None:
    """Why a 2xx answer still means not delivered (DingTalk and WeCom say so in ``errcode``, Telegram in
    ``ok``); None: delivered."""
    if isinstance(messenger, Webhook):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return f"unreadable answer {body[:100]!r}"
    if not isinstance(answer, dict):
        return f"unexpected answer {body[:100]!r}"
    if isinstance(messenger, Telegram):
        return None if answer.get("ok") is True else f"Telegram: {answer.get('description', answer)}"
    code = answer.get("errcode")
    return None if code == 0 else f"errcode {code}: {answer.get('errmsg', '')}"


def describe(messenger: Messenger) -> str:
    """A messenger as a log line may name it: never its token, key or secret."""
    if isinstance(messenger, Telegram):
        return f"telegram chat {messenger.chat_id}"
    if isinstance(messenger, Webhook):
        parts = urllib.parse.urlsplit(messenger.url)
        return f"webhook {parts.scheme}://{parts.netloc}{parts.path}"
    return "dingding robot" if isinstance(messenger, DingDing) else "wecom robot"


def deliver(messenger: Messenger, request: Request, timeout: float) -> str | None:
    """POST once; None when delivered, else why not."""
    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return refusal(messenger, answer.read(64 * 1024))
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        return f"cannot reach it ({e.reason})"
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed answer
        return f"{type(e).__name__}: {e}"


# -- delivery -----------------------------------------------------------------------------------

_STOP = object()
ALERTS_ENV = "ALPHABUS_ALERTS"
"""``off`` mutes a process's alerts whatever its config says: for replays of history through a live config."""
CLOSE_WAIT_SEC = 3.0
"""At exit, how long queued alerts get to go out before each one left is logged as not sent."""


class _Courier:
    """One messenger's bounded queue and thread: a dead DingDing robot does not hold up Telegram."""

    def __init__(self, messenger: Messenger, cfg: AlertsConfig, origin: Origin, closing: threading.Event,
                 dropped: Callable[[Alert, str, str], None], sent: Callable[[Alert], None]):
        self.messenger, self.cfg, self.origin, self.closing = messenger, cfg, origin, closing
        self.name = describe(messenger)
        self.dropped, self.sent = dropped, sent
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=cfg.queue)
        self.current: Alert | None = None  # being sent (or waiting to retry) now
        self.thread = threading.Thread(target=self._run, name=f"alerts to {self.name}", daemon=True)
        self.thread.start()

    def put(self, alert: Alert, raised_at: datetime) -> None:
        try:
            self.queue.put_nowait((alert, raised_at))
        except queue.Full:
            self.dropped(alert, self.name, f"{self.cfg.queue} alerts already wait for it: it does not answer")

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            self.current = item[0]
            self._send(*item)
            self.current = None

    def _send(self, alert: Alert, raised_at: datetime) -> None:
        cfg, wait, problem = self.cfg, self.cfg.retry_sec, ""
        for attempt in range(cfg.retries + 1):
            if attempt and self.closing.wait(wait):
                problem += "; the service stopped before the next try"
                break
            wait *= 2
            # built per try: DingTalk refuses an old signature, so a retry signs anew
            request = build_request(self.messenger, alert, self.origin, cfg.label, raised_at, datetime.now(UTC))
            problem = deliver(self.messenger, request, cfg.timeout_sec) or ""
            if not problem:
                self.sent(alert)
                return
        self.dropped(alert, self.name, f"{attempt + 1} tries, the last: {problem}")

    def stop(self, deadline: float) -> None:
        """Called twice: first to let the queue drain until ``deadline``, then (closing set) to log what is left."""
        if not self.closing.is_set():
            try:
                self.queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self.thread.join(max(0.0, deadline - time.monotonic()))
            return
        self.thread.join(0.5)  # a retry wait ends at once; a request in flight may not
        left = [self.current] if self.thread.is_alive() and self.current is not None else []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(item[0])
        for alert in left:
            self.dropped(alert, self.name, "the service stopped before it was sent")


class AlertSender:
    """Posts alerts to every configured messenger without ever waiting for one.

    With ``cfg`` None (no ``alerts`` key) it does nothing. ``on_outcome(event, "sent" | "dropped")`` is
    told each alert's fate per messenger (the metrics count them). At exit, queued alerts get
    CLOSE_WAIT_SEC to go out; each one still unsent is then logged.
    """

    def __init__(self, cfg: AlertsConfig | None, origin: Origin,
                 on_outcome: Callable[[str, str], None] = lambda event, outcome: None):
        if cfg is not None and os.environ.get(ALERTS_ENV, "").lower() == "off":
            log.info("%s=off: no alerts from this process (a replay or a test of the config's stack)", ALERTS_ENV)
            cfg = None
        self.cfg = cfg
        self.on_outcome = on_outcome
        self._closing = threading.Event()
        self._couriers: list[_Courier] = []
        if cfg is None:
            return
        self._couriers = [_Courier(m, cfg, origin, self._closing, self._dropped,
                                   lambda alert: on_outcome(alert.event, "sent")) for m in cfg.messengers]
        atexit.register(self.close)
        log.info("alerts (%s) go to %s", "all events" if set(cfg.events) == set(EVENTS) else ", ".join(cfg.events),
                 ", ".join(c.name for c in self._couriers))

    def wants(self, event: str) -> bool:
        return self.cfg is not None and event in self.cfg.events

    def post(self, alert: Alert) -> None:
        """Queue the alert for each messenger (if its event is configured); never waits."""
        if not self.wants(alert.event) or self._closing.is_set():
            return
        raised_at = datetime.now(UTC)
        for courier in self._couriers:
            courier.put(alert, raised_at)

    def close(self, wait: float = CLOSE_WAIT_SEC) -> None:
        """Give queued alerts ``wait`` seconds, then log each one left as not sent."""
        if not self._couriers or self._closing.is_set():
            return
        deadline = time.monotonic() + wait
        for courier in self._couriers:
            courier.stop(deadline)
        self._closing.set()
        for courier in self._couriers:
            courier.stop(deadline)

    def _dropped(self, alert: Alert, where: str, why: str) -> None:
        self.on_outcome(alert.event, "dropped")
        log.error("alert NOT SENT to %s (%s): %s: %s", where, why, TITLES[alert.event], alert.text[:300])
