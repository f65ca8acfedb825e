"""Metrics and alerts in a running stack: each service's /metrics, scraped with real HTTP GETs, moves with rounds
and drops; the same stack raises incomplete, missed, crawler-late and shard-silent alerts to an HTTP server of
the test's own, while a dead webhook holds every request it gets and delays no round."""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from alphabus.launcher import free_port
from services.market.sim import SyntheticMarket, write_hour
from shared.errors import UserMistake
from shared.metrics import metrics_port
from tests.alert_server import DeadEndpoint, RecordingServer
from tests.stack import StackRun

SERVICES = ("market", "position", "factor", "recorder")
Samples = dict[tuple[str, frozenset], float]


def test_ports_come_from_a_base_or_each_service_own_variable():
    base = {"ALPHABUS_METRICS_PORT": "9100"}
    assert metrics_port("market", environ={}) is None
    assert [metrics_port(s, environ=base)[0] for s in ("market", "position", "recorder")] == [9100, 9101, 9102]
    assert metrics_port("factor", 3, environ=base) == (9113, "ALPHABUS_METRICS_PORT")
    own = {**base, "ALPHABUS_METRICS_PORT_POSITION": "9300", "ALPHABUS_METRICS_PORT_FACTOR": "9400"}
    assert metrics_port("position", environ=own) == (9300, "ALPHABUS_METRICS_PORT_POSITION")
    assert metrics_port("factor", 2, environ=own)[0] == 9402 and metrics_port("market", environ=own)[0] == 9100
    with pytest.raises(UserMistake, match="ALPHABUS_METRICS_PORT='nine' is not a port number"):
        metrics_port("market", environ={"ALPHABUS_METRICS_PORT": "nine"})
    with pytest.raises(UserMistake, match="puts the factor service's metrics on port 65545, above 65535"):
        metrics_port("factor", environ={"ALPHABUS_METRICS_PORT": "65535"})


def scrape(port: int) -> Samples:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(port: int, expected: dict[tuple, float], timeout: float = 30.0) -> Samples:
    """Scrape until every ``(name, {labels})`` has its value (a round's figures are set one after another)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        got = {key: value(samples, key[0], **dict(key[1])) for key in expected}
        wrong = {key: got[key] for key, want in expected.items() if got[key] != want}
        if not wrong:
            return samples
        assert time.monotonic() < deadline, f"after {timeout}s still {wrong}, expected {expected}"
        time.sleep(0.1)


def m(name: str, **labels: str) -> tuple:
    return name, tuple(labels.items())


def test_a_running_stack_moves_its_metrics_and_raises_alerts(tmp_path, monkeypatch, capfd):
    ports = {s: free_port() for s in SERVICES}
    for service, port in ports.items():
        monkeypatch.setenv(f"ALPHABUS_METRICS_PORT_{service.upper()}", str(port))
    market = SyntheticMarket(symbols=40, seed=23)
    with RecordingServer() as server, DeadEndpoint() as dead:
        alerts = {"dingding": {"access_token": "tok", "secret": "SECabc", "url": f"{server.url}/robot/send"},
                  "webhook": [{"url": dead.url}, {"url": f"{server.url}/hook"}], "timeout_sec": 120, "retries": 0,
                  "target_change_fraction": 0.2}
        with StackRun(tmp_path, bmac_expire_sec=2, round_grace_sec=1, alerts=alerts) as stack:
            first = write_hour(stack.bmac, market, 0)
            selection = stack.wait_for_round(first)
            coverage = selection["coverage"]
            received, skipped = coverage["received"], len(coverage["skipped"])
            assert received + skipped == 40 and received > 30
            position = wait_for(ports["position"], {
                m("alphabus_rounds_total", outcome="completed"): 1,
                m("alphabus_round_latency_seconds_count"): 1,
                m("alphabus_round_symbols", state="expected"): 40,
                m("alphabus_round_symbols", state="received"): received,
                m("alphabus_round_symbols", state="skipped"): skipped,
                m("alphabus_last_round_run_time_seconds"): first.timestamp()})
            factor = wait_for(ports["factor"], {
                m("alphabus_factor_symbols_total", outcome="computed"): received,
                m("alphabus_factor_symbols_total", outcome="skipped"): skipped,
                m("alphabus_factor_compute_seconds_per_symbol_count"): 1})
            assert value(factor, "alphabus_factor_compute_seconds_total") > 0
            for service, port in ports.items():
                samples = scrape(port)
                assert value(samples, "process_resident_memory_bytes") > 10e6, service
                assert ("alphabus_messages_dropped_total", frozenset({("reason", "garbage")})) in samples, service
                assert value(samples, "alphabus_service_info", service=service, stack=stack.stack_id,
                             **({"shard": "0/1"} if service == "factor" else {})) == 1, service

            # from nothing to the first targets: each long (1000 / 2 / 2 = 250 USDT) is above 0.2 of capital,
            # each short (62.5 USDT) below
            changes = server.wait_for(lambda r: r.path == "/hook" and r.json["event"] == "target_change")
            assert sorted(changes[0].json["details"]["changes"]) == sorted(p["symbol"] for p in selection["long"])

            # garbage to the position service's results socket, from a peer with the factor key
            garbage = value(position, "alphabus_messages_dropped_total", reason="garbage")
            sock = stack.insider(zmq.PUB, "factor", "factor_in", stack.endpoints["ALPHABUS_FACTOR_IN"])
            try:
                deadline = time.monotonic() + 20
                while value(scrape(ports["position"]), "alphabus_messages_dropped_total", reason="garbage") <= garbage:
                    assert time.monotonic() < deadline, "the garbage counter did not rise"
                    sock.send_multipart([b"factor.0of1", b"not a message"])
                    time.sleep(0.2)
            finally:
                sock.close(0)

            # hour 1: three symbols never come (the crawler is late past its deadline) and the shard stops:
            # the round is published flagged, the shard reported silent
            run_time, previous, frames = stack.open_round(market, 1)
            time.sleep(0.6)
            stack.services.procs["factor-0"].send_signal(signal.SIGSTOP)
            try:
                for symbol in sorted(frames)[3:]:
                    stack.bmac.write_candles(symbol, frames[symbol], run_time, previous)
                sel = stack.wait_for_round(run_time)
                silent = server.wait_for(lambda r: r.path == "/hook" and r.json["event"] == "shard_silent")
            finally:
                stack.services.procs["factor-0"].send_signal(signal.SIGCONT)
            assert sel["incomplete"] and sorted(sel["coverage"]["missing"]) == sorted(frames)[3:]
            assert silent[0].json["details"] == {"shards": ["0/1"]}
            incomplete = server.wait_for(lambda r: r.path == "/hook" and r.json["event"] == "round_incomplete")
            assert sorted(incomplete[0].json["details"]["missing"]) == sorted(frames)[3:]
            assert incomplete[0].json["run_time"] == run_time.isoformat()
            crawler = server.wait_for(lambda r: r.path == "/hook" and r.json["event"] == "crawler_late")
            assert crawler[0].json["service"] == "market" and "3 of 40 symbols' candles" in crawler[0].json["text"]
            signed = server.wait_for(lambda r: r.path == "/robot/send" and "round incomplete" in r.body.decode())
            assert set(signed[0].params) == {"access_token", "timestamp", "sign"}

            # hour 2 never written, hour 3 is: hour 2 is missed (its files were overwritten)
            skipped = market.run_time(2)
            after = write_hour(stack.bmac, market, 3)
            stack.wait_for_round(after)
            missed = server.wait_for(lambda r: r.path == "/hook" and r.json["event"] == "round_missed")
            assert missed[0].json["run_time"] == skipped.isoformat()
            assert missed[0].json["details"] == {"reason": "overwritten"}
            wait_for(ports["position"], {
                m("alphabus_rounds_total", outcome="completed"): 2, m("alphabus_rounds_total", outcome="flagged"): 1,
                m("alphabus_rounds_total", outcome="missed"): 1,
                m("alphabus_rounds_missed_total", reason="overwritten"): 1,
                m("alphabus_round_latency_seconds_count"): 3,
                m("alphabus_symbols_skipped_total", reason="no_candles"): 3,
                m("alphabus_last_round_run_time_seconds"): after.timestamp(),
                m("alphabus_alerts_total", event="round_missed", outcome="sent"): 2})  # dingding and /hook
            # every alert so far still hangs on the dead webhook (120 s each): the rounds never waited for it
    err = capfd.readouterr().err
    not_sent = [line for line in err.splitlines() if f"alert NOT SENT to webhook {dead.url}" in line]
    assert any("the service stopped before it was sent" in line and "round MISSED" in line for line in not_sent), err
    assert any("crawler late" in line for line in not_sent), not_sent
