"""Alerts: each messenger's request as its API documents it, sent to a real HTTP server of the test's own on
loopback; retries, a dead endpoint and a full queue end in a log line; the config names every bad field;
the rules decide what is worth an alert."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.alerts import rules
from shared.alerts import Alert, AlertsConfig, AlertSender, Origin
from shared.config import ConfigError, parse_config
from tests.alert_server import DeadEndpoint, RecordingServer
from tests.reference import article_config

RUN_TIME = datetime(2024, 3, 1, 8, tzinfo=UTC)
ORIGIN = Origin("position", "work-1a2b3c4d", "box")
SECRET = "SEC0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"


@pytest.fixture
def server():
    with RecordingServer() as s:
        yield s


def _config(server: RecordingServer, **extra) -> AlertsConfig:
    return AlertsConfig.model_validate({
        "dingding": {"access_token": "tok+en/1", "secret": SECRET, "url": f"{server.url}/robot/send"},
        "wecom": {"key": "wk-1", "url": f"{server.url}/cgi-bin/webhook/send"},
        "telegram": {"bot_token": "123456:ABC-DEF", "chat_id": -1001, "url": server.url},
        "webhook": {"url": f"{server.url}/hook?src=ab", "headers": {"Authorization": "Bearer t"}},
        "label": "alphabus-test", **extra,
    })


def test_each_messenger_gets_its_documented_request(server):
    sender = AlertSender(_config(server), ORIGIN)
    before_ms = int(time.time() * 1000)
    sender.post(Alert("round_missed", "round 2024-03-01T08:00:00+00:00 has no selection (no_exginfo): late",
                      RUN_TIME, {"reason": "no_exginfo"}))
    for path in ("/robot/send", "/cgi-bin/webhook/send", "/bot123456:ABC-DEF/sendMessage", "/hook"):
        server.wait_for(lambda r, path=path: r.path == path, what=path)
    after_ms = int(time.time() * 1000)
    sender.close()
    by_path = {r.path: r for r in server.requests}
    assert len(server.requests) == 4

    ding = by_path["/robot/send"]
    params = ding.params
    assert params["access_token"] == "tok+en/1"
    timestamp = int(params["timestamp"])
    assert before_ms <= timestamp <= after_ms
    # DingTalk's documented signature, computed here on its own: HmacSHA256(secret, timestamp + "\n" + secret),
    # base64, then url-encoded in the query (parse_qs above decoded it once).
    expected = base64.b64encode(hmac.new(SECRET.encode("utf-8"), f"{timestamp}\n{SECRET}".encode(),
                                         digestmod=hashlib.sha256).digest()).decode()
    assert params["sign"] == expected
    raw_sign = dict(p.split("=", 1) for p in ding.query.split("&"))["sign"]
    assert raw_sign == expected.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert ding.json == {"msgtype": "text", "text": {"content": ding.json["text"]["content"]}}
    content = ding.json["text"]["content"]
    assert content.startswith("alphabus-test round MISSED: round 2024-03-01T08:00:00+00:00 has no selection")
    assert "position on box, stack work-1a2b3c4d" in content
    assert ding.headers["Content-Type"] == "application/json; charset=utf-8"

    wecom = by_path["/cgi-bin/webhook/send"]
    assert wecom.params == {"key": "wk-1"}
    assert wecom.json == {"msgtype": "text", "text": {"content": content}}

    telegram = by_path["/bot123456:ABC-DEF/sendMessage"]
    assert telegram.json == {"chat_id": -1001, "text": content, "disable_web_page_preview": True}

    hook = by_path["/hook"]
    assert hook.params == {"src": "ab"} and hook.headers["Authorization"] == "Bearer t"
    body = hook.json
    assert (body["event"], body["title"], body["service"], body["stack"], body["host"]) == \
        ("round_missed", "round MISSED", "position", "work-1a2b3c4d", "box")
    assert body["run_time"] == RUN_TIME.isoformat() and body["details"] == {"reason": "no_exginfo"}
    assert body["message"] == content and datetime.fromisoformat(body["time"]).tzinfo is not None


def test_a_robot_without_signing_gets_no_signature(server):
    cfg = AlertsConfig.model_validate({"dingding": {"access_token": "t1", "url": f"{server.url}/robot/send"}})
    sender = AlertSender(cfg, ORIGIN)
    sender.post(Alert("crawler_late", "late"))
    (request,) = server.wait_for(lambda r: True)
    sender.close()
    assert request.params == {"access_token": "t1"}


def test_only_the_configured_events_are_sent(server):
    cfg = AlertsConfig.model_validate({"webhook": {"url": f"{server.url}/hook"}, "events": ["round_missed"]})
    sender = AlertSender(cfg, ORIGIN)
    sender.post(Alert("crawler_late", "not wanted"))
    sender.post(Alert("round_missed", "wanted"))
    server.wait_for(lambda r: r.json["event"] == "round_missed")
    sender.close()
    assert [r.json["text"] for r in server.requests] == ["wanted"]


def test_a_failing_messenger_is_retried_then_delivered(server):
    cfg = AlertsConfig.model_validate({"webhook": {"url": f"{server.url}/hook"}, "retries": 3, "retry_sec": 0.05})
    outcomes = []
    server.fail["/hook"] = 2
    sender = AlertSender(cfg, ORIGIN, lambda event, outcome: outcomes.append((event, outcome)))
    sender.post(Alert("shard_silent", "shard 1/2 silent"))
    server.wait_for(lambda r: len(server.requests) == 3)
    sender.close()
    assert len(server.requests) == 3 and outcomes == [("shard_silent", "sent")]


def test_a_refusal_in_a_200_answer_is_a_failure(server, caplog):
    """DingTalk answers HTTP 200 with errcode != 0 for a bad signature: that alert was not delivered."""
    cfg = AlertsConfig.model_validate({"dingding": {"access_token": "t", "url": f"{server.url}/robot/send"},
                                       "retries": 1, "retry_sec": 0.05})
    server.answers["/robot/send"] = {"errcode": 310000, "errmsg": "sign not match"}
    outcomes = []
    sender = AlertSender(cfg, ORIGIN, lambda event, outcome: outcomes.append(outcome))
    with caplog.at_level(logging.ERROR, logger="alerts"):
        sender.post(Alert("target_change", "AUSDT +10"))
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.close()
    assert outcomes == ["dropped"] and len(server.requests) == 2
    assert "alert NOT SENT to dingding robot (2 tries, the last: errcode 310000: sign not match)" in caplog.text


def test_a_dead_endpoint_never_blocks_and_ends_in_a_log_line(server, caplog):
    with DeadEndpoint() as dead:
        cfg = AlertsConfig.model_validate({"webhook": [{"url": dead.url}, {"url": f"{server.url}/hook"}],
                                           "timeout_sec": 0.3, "retries": 1, "retry_sec": 0.05})
        outcomes = []
        sender = AlertSender(cfg, ORIGIN, lambda event, outcome: outcomes.append(outcome))
        with caplog.at_level(logging.ERROR, logger="alerts"):
            started = time.perf_counter()
            sender.post(Alert("round_incomplete", "round X: 3 of 40 symbols missing"))
            posting = time.perf_counter() - started
            server.wait_for(lambda r: True)  # the live messenger does not wait for the dead one
            deadline = time.monotonic() + 10
            while "dropped" not in outcomes and time.monotonic() < deadline:
                time.sleep(0.05)
            sender.close()
    assert posting < 0.1, f"post() took {posting:.3f}s"
    assert sorted(outcomes) == ["dropped", "sent"]
    lines = [r.getMessage() for r in caplog.records if "NOT SENT" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"alert NOT SENT to webhook {dead.url} (2 tries, the last: ")
    assert lines[0].endswith("round incomplete: round X: 3 of 40 symbols missing")


def test_a_full_queue_and_a_stop_each_log_the_alerts_not_sent(caplog):
    with DeadEndpoint() as dead:
        cfg = AlertsConfig.model_validate({"webhook": {"url": dead.url}, "timeout_sec": 30, "queue": 1})
        sender = AlertSender(cfg, ORIGIN)
        with caplog.at_level(logging.ERROR, logger="alerts"):
            sender.post(Alert("symbol_listed", "first"))  # taken by the thread: hangs on the dead endpoint
            time.sleep(0.3)
            sender.post(Alert("symbol_listed", "second"))  # waits in the queue
            sender.post(Alert("symbol_listed", "third"))  # the queue is full
            sender.close(wait=0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert any("1 alerts already wait for it" in m and m.endswith(": third") for m in lines), lines
    stopped = [m for m in lines if "the service stopped before it was sent" in m]
    assert sorted(m.rsplit(": ", 1)[1] for m in stopped) == ["first", "second"], lines


# -- the config ---------------------------------------------------------------------------------------

def test_the_article_config_has_no_alerts_and_alerts_parse():
    assert parse_config(article_config("x")).alerts is None
    cfg = parse_config(article_config("x", alerts={
        "dingding": {"access_token": "f06e5", "secret": "SEC439"}, "target_change_fraction": 0.3}))
    assert cfg.alerts is not None and cfg.alerts.dingding[0].secret == "SEC439"
    assert cfg.alerts.target_change_fraction == 0.3 and "round_missed" in cfg.alerts.events


def test_every_bad_alerts_field_is_named_with_its_fix():
    with pytest.raises(ConfigError) as e:
        parse_config(article_config("x", alerts={
            "dingding": [{"access_token": "x", "secret": "439"}, {"acess_token": "y"}],
            "wecom": "key", "telegram": {"bot_token": "1:A b", "chat_id": 5}, "webhook": {"url": "ftp://h"},
            "events": ["round_missed", "lunch"], "retries": "3", "target_change_fraction": 0}))
    text = str(e.value)
    for expected in ("alerts.dingding.0: secret: a DingTalk signing secret starts with SEC",
                     "alerts.dingding.1: unknown key(s) 'acess_token'; the keys are access_token, secret, url",
                     "alerts.wecom.0: must be a JSON object with the keys key, url",
                     "alerts.telegram.0.bot_token: must be the bot's token from @BotFather",
                     "alerts.webhook.0.url: 'ftp://h' is not an http(s) address",
                     "alerts.events.1:", "alerts.retries: must be a whole JSON number",
                     "alerts.target_change_fraction:"):
        assert expected in text, f"{expected!r} not in:\n{text}"
    with pytest.raises(ConfigError, match="alerts: name at least one messenger"):
        parse_config(article_config("x", alerts={"events": ["round_missed"]}))


# -- the rules ----------------------------------------------------------------------------------------

def test_large_changes_are_judged_in_value_against_capital():
    changes = {"AUSDT": Decimal("10"), "BUSDT": Decimal("-3.5"), "CUSDT": Decimal("1"), "DUSDT": Decimal("-500")}
    price = {"AUSDT": 40.0, "BUSDT": 100.0, "CUSDT": 1.0}
    assert rules.large_changes(changes, price, 1000.0, 0.3) == [("AUSDT", Decimal("10"), 400.0),
                                                               ("BUSDT", Decimal("-3.5"), 350.0)]
    assert rules.large_changes(changes, price, 1000.0, 0.5) == []


def test_listings_compare_with_the_round_before():
    assert rules.listings(None, {"A"}, RUN_TIME) == []
    listed, delisted = rules.listings({"A", "B"}, {"B", "C", "D"}, RUN_TIME)
    assert (listed.event, listed.details) == ("symbol_listed", {"symbols": ["C", "D"]})
    assert (delisted.event, delisted.details) == ("symbol_delisted", {"symbols": ["A"]})
    assert rules.listings({"A"}, {"A"}, RUN_TIME) == []


def test_a_new_identity_under_a_known_name_is_a_restart():
    seen = rules.Incarnations()
    assert seen.heard("market@h:10:1") is None and seen.heard("market@h:10:1") is None
    assert seen.heard("factor-0of2@h:11:1") is None
    alert = seen.heard("market@h:12:2")
    assert alert is not None and alert.event == "service_restarted" and alert.details["service"] == "market"
    assert seen.heard("market@h:12:2") is None


def test_alphabus_alerts_off_mutes_a_process(server, monkeypatch):
    monkeypatch.setenv("ALPHABUS_ALERTS", "off")
    sender = AlertSender(AlertsConfig.model_validate({"webhook": {"url": f"{server.url}/hook"}}), ORIGIN)
    sender.post(Alert("round_missed", "muted"))
    sender.close()
    monkeypatch.delenv("ALPHABUS_ALERTS")
    sender = AlertSender(AlertsConfig.model_validate({"webhook": {"url": f"{server.url}/hook"}}), ORIGIN)
    sender.post(Alert("round_missed", "heard"))
    server.wait_for(lambda r: True)
    sender.close()
    assert [r.json["text"] for r in server.requests] == ["heard"]
