"""The fault matrix: no hour is lost silently.

Every service is killed (SIGKILL) before a round's results, halfway through them and right after
the selection is published; a shard is stopped (SIGSTOP) past the deadline; the crawler (``alphabus
sim``) is killed halfway through an hour and restarted; the market and the position service are
down across hour boundaries. After each, every hour has a recorded selection equal to the article's
(``tests/reference.py``) or a flagged or missed one with the right reason: hours lost = 0.
All real processes over loopback TCP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import zmq

from alphabus.launcher import free_port
from services.market.sim import SyntheticMarket, _resume_hour, run, write_hour
from services.position.missed import gap_hours
from services.recorder.files import history_paths
from shared import bus
from shared.bmac import BmacDir
from shared.clock import boundaries_between
from shared.messages import Missed, decode
from tests.conftest import write_config
from tests.reference import assert_same_round
from tests.stack import StackRun, wait_for_file

SYMBOLS = 48
HOUR = timedelta(hours=1)
POINTS = ("before_results", "mid_results", "after_publish")


# -- helpers ----------------------------------------------------------------------------------------

def _write(stack: StackRun, run_time, previous, frames: dict, symbols: list[str]) -> None:
    for symbol in symbols:
        stack.bmac.write_candles(symbol, frames[symbol], run_time, previous)


def _recorded(stack: StackRun, run_time: datetime) -> dict:
    return json.loads(history_paths(stack.workdir, run_time)["selection"].read_text())


def _exact(stack: StackRun, run_time: datetime) -> dict:
    """The round is recorded, complete, and equal to the article's on the same files."""
    sel = stack.wait_for_round(run_time)
    assert not sel.get("missed"), sel
    assert sel["coverage"]["missing"] == [] and not sel["incomplete"], sel["coverage"]
    assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
    return sel


def _hour_with_fault(stack: StackRun, market: SyntheticMarket, k: int, point: str, victim: str) -> datetime:
    """Run hour k, killing ``victim`` at ``point`` and restarting it; returns run_time."""
    run_time, previous, frames = stack.open_round(market, k)
    symbols = sorted(frames)
    if point == "after_publish":
        _write(stack, run_time, previous, frames, symbols)
        stack.wait_for_round(run_time)
        stack.kill(victim)
    else:
        if point == "mid_results":
            _write(stack, run_time, previous, frames, symbols[::2])
        time.sleep(0.6)  # the round is announced (and half of it computed)
        stack.kill(victim)
        rest = symbols if point == "before_results" else symbols[1::2]
        _write(stack, run_time, previous, frames, rest)
    stack.restart(victim)
    return run_time


def _wait_for_state(stack: StackRun, run_time: datetime, timeout: float = 30.0) -> None:
    """The market has dealt with run_time (its state file says so)."""
    path = stack.workdir / "state" / "market.json"
    deadline = time.monotonic() + timeout
    while not (path.exists() and json.loads(path.read_text())["last_run_time"] == run_time.isoformat()):
        assert time.monotonic() < deadline, f"the market never finished round {run_time}"
        time.sleep(0.05)


def _no_hour_lost(stack: StackRun, market: SyntheticMarket, hours: range) -> None:
    for k in hours:
        assert history_paths(stack.workdir, market.run_time(k))["selection"].exists(), f"hour {k} lost"


# -- pure parts -------------------------------------------------------------------------------------
def test_gap_hours_are_the_boundaries_nobody_accounted_for():
    hk = ZoneInfo("Asia/Hong_Kong")
    t0 = datetime(2024, 1, 1, tzinfo=hk)
    assert gap_hours({t0}, t0 + HOUR, HOUR) == []
    assert gap_hours({t0 - HOUR, t0}, t0 + 3 * HOUR, HOUR) == [t0 + HOUR, t0 + 2 * HOUR]
    assert gap_hours({t0 + 5 * HOUR}, t0 + 2 * HOUR, HOUR) == []  # an older round is no gap
    assert gap_hours(set(), t0, HOUR) == []
    ny = ZoneInfo("America/New_York")  # a DST night: 01:00 comes twice, the hours stay real
    night = datetime(2024, 11, 3, 0, tzinfo=ny)
    assert len(boundaries_between(night, datetime(2024, 11, 3, 3, tzinfo=ny), HOUR)) == 3


def test_a_sim_stopped_halfway_through_an_hour_completes_it(tmp_path):
    market = SyntheticMarket(symbols=12, seed=5, history=48)
    bmac = BmacDir(tmp_path, "1h")
    write_hour(bmac, market, 0)
    run_time, previous = market.run_time(1), market.run_time(0)
    frames = market.candles(1)
    bmac.write_exginfo(market.exginfo(), run_time, previous)  # killed after exginfo and 5 symbols
    for symbol in sorted(frames)[:5]:
        bmac.write_candles(symbol, frames[symbol], run_time, previous)
    assert _resume_hour(bmac, market) == (1, True)
    assert run(tmp_path, symbols=12, seed=5, history=48, hours=2, hour_seconds=0, spread_sec=0) == 0
    assert bmac.ready_candles(run_time) == set(market.symbols)
    assert bmac.funding_ready(run_time).exists() and bmac.exginfo_ready(run_time).exists()
    for symbol, df in frames.items():
        import pandas as pd

        pd.testing.assert_frame_equal(pd.read_feather(bmac.candle_path(symbol)), df.reset_index(drop=True))
    assert _resume_hour(bmac, market) == (2, False)


def test_a_recorded_selection_is_never_replaced_by_a_missed_entry(tmp_path):
    from services.recorder.service import record_missed
    from shared.client import MissedUpdate
    from shared.messages import Header

    t = SyntheticMarket().run_time(3)
    path = history_paths(tmp_path, t)["selection"]
    path.parent.mkdir(parents=True)
    header = Header(kind="missed", stack="s", sender="position@x", seq=1, sent_at=datetime.now(t.tzinfo))
    record_missed(tmp_path, MissedUpdate(header, Missed(run_time=t, reason="no_round", detail="gap")))
    assert json.loads(path.read_text()) == {"run_time": t.isoformat(), "missed": True, "reason": "no_round",
                                            "detail": "gap"}
    path.write_text(json.dumps({"run_time": t.isoformat(), "long": []}))
    record_missed(tmp_path, MissedUpdate(header, Missed(run_time=t, reason="withheld", detail="late")))
    assert json.loads(path.read_text()) == {"run_time": t.isoformat(), "long": []}


def test_a_market_that_gives_up_on_a_round_announces_it_missed(tmp_path):
    from services.market.service import Market
    from shared.config import load_config
    from shared.service import StopFlag

    workdir = write_config(tmp_path / "work", tmp_path / "bmac", bmac_expire_sec=0.3)
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
    address = f"tcp://127.0.0.1:{free_port()}"
    pub.bind(address)
    sub.connect(address)
    sub.setsockopt_string(zmq.SUBSCRIBE, bus.ROUNDS)
    try:
        market = Market(load_config(workdir), pub, StopFlag(), await_subscribers=0)
        market.wait_for_subscribers(5)  # the SUB's subscription has arrived
        run_time = SyntheticMarket().run_time(0)
        assert market.run_round(run_time) is False
        assert sub.poll(5000)
        env = decode(sub.recv_multipart())
        assert env.topic == bus.ROUND_MISSED and isinstance(env.body, Missed)
        assert env.body.run_time == run_time and env.body.reason == "no_exginfo"
        assert "exginfo marker" in env.body.detail and "bmac_expire_sec=0.3s" in env.body.detail
    finally:
        pub.close(0)
        sub.close(0)


# -- the matrix: kill -9 at three points of a round ---------------------------------------------------
@pytest.mark.parametrize("victim", ["market", "position", "recorder"])
def test_a_service_killed_at_any_point_of_a_round_loses_no_hour(tmp_path, victim):
    market = SyntheticMarket(symbols=SYMBOLS, seed=41)
    with StackRun(tmp_path, bmac_expire_sec=20, round_grace_sec=1) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        for k, point in enumerate(POINTS, start=1):
            run_time = _hour_with_fault(stack, market, k, point, victim)
            sel = _exact(stack, run_time)
            assert sel["previous_run_time"] == market.run_time(k - 1).isoformat(), (point, sel["previous_run_time"])
        write_hour(stack.bmac, market, 4)
        _exact(stack, market.run_time(4))
        _no_hour_lost(stack, market, range(5))
        assert not stack.crashed()


def test_a_shard_killed_at_any_point_flags_only_its_own_symbols(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=42)
    owned = {s for s in market.symbols if bus.Shard(1, 2).owns(s)}
    with StackRun(tmp_path, shards=2, bmac_expire_sec=20, round_grace_sec=1) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        for k, point in enumerate(POINTS, start=1):
            run_time = _hour_with_fault(stack, market, k, point, "factor-1")
            sel = stack.wait_for_round(run_time)
            missing = set(sel["coverage"]["missing"])
            if point == "before_results":
                assert missing == owned and sel["incomplete"] and sel["coverage"]["silent_shards"] == ["1/2"]
            elif missing:  # halfway: what the shard had not computed yet, and nothing else
                assert missing <= owned and sel["incomplete"], sel["coverage"]
            else:
                assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
        write_hour(stack.bmac, market, 4)
        _exact(stack, market.run_time(4))
        _no_hour_lost(stack, market, range(5))


def test_a_shard_stopped_past_the_deadline_is_flagged_then_rejoins(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=43)
    owned = sorted(s for s in market.symbols if bus.Shard(1, 2).owns(s))
    with StackRun(tmp_path, shards=2, bmac_expire_sec=2, round_grace_sec=1) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        run_time, previous, frames = stack.open_round(market, 1)
        time.sleep(0.6)
        stack.services.procs["factor-1"].send_signal(signal.SIGSTOP)
        try:
            _write(stack, run_time, previous, frames, sorted(frames))
            sel = stack.wait_for_round(run_time)
        finally:
            stack.services.procs["factor-1"].send_signal(signal.SIGCONT)
        assert sel["incomplete"] and sel["coverage"]["missing"] == owned
        time.sleep(1.5)  # its late results arrive and are dropped; it heartbeats again
        write_hour(stack.bmac, market, 2)
        _exact(stack, market.run_time(2))
        assert not stack.crashed()


# -- hours across which something was down ----------------------------------------------------------
def test_a_market_down_across_hour_boundaries_records_the_overwritten_hour(tmp_path, capfd):
    market = SyntheticMarket(symbols=SYMBOLS, seed=44)
    with StackRun(tmp_path) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        stack.kill("market")
        write_hour(stack.bmac, market, 1)
        write_hour(stack.bmac, market, 2)  # hour 1's files are gone before the market is back
        stack.restart("market")
        sel = _exact(stack, market.run_time(2))
        missed = _recorded(stack, market.run_time(1))
        assert missed["missed"] is True and missed["reason"] == "overwritten", missed
        assert market.run_time(2).isoformat() in missed["detail"]
        assert sel["previous_run_time"] == market.run_time(0).isoformat()
        write_hour(stack.bmac, market, 3)
        _exact(stack, market.run_time(3))
        _no_hour_lost(stack, market, range(4))
    err = capfd.readouterr().err
    assert f"round {market.run_time(1).isoformat()} MISSED (overwritten)" in err


def test_a_position_service_down_across_hour_boundaries_records_the_gap(tmp_path, capfd):
    market = SyntheticMarket(symbols=SYMBOLS, seed=45)
    with StackRun(tmp_path, bmac_expire_sec=5, round_grace_sec=1) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        stack.kill("position")
        for k in (1, 2):  # the market runs both hours to nobody
            write_hour(stack.bmac, market, k)
            _wait_for_state(stack, market.run_time(k))
        stack.restart("position")  # the market announces hour 2 again; hour 1 is a gap
        _exact(stack, market.run_time(2))
        missed = _recorded(stack, market.run_time(1))
        assert missed["missed"] is True and missed["reason"] == "no_round", missed
        write_hour(stack.bmac, market, 3)
        sel = _exact(stack, market.run_time(3))
        assert sel["previous_run_time"] == market.run_time(2).isoformat()
        _no_hour_lost(stack, market, range(4))
    assert "announcing the round again" in capfd.readouterr().err


def test_a_withheld_round_is_recorded_missed_with_its_reason(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=46)
    with StackRun(tmp_path, shards=2, bmac_expire_sec=20, round_grace_sec=1, incomplete_round="withhold") as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        run_time, previous, frames = stack.open_round(market, 1)
        time.sleep(0.6)
        stack.kill("factor-1")
        _write(stack, run_time, previous, frames, sorted(frames))
        missed = stack.wait_for_round(run_time)
        assert missed["missed"] is True and missed["reason"] == "withheld", missed
        stack.restart("factor-1")
        write_hour(stack.bmac, market, 2)
        sel = _exact(stack, market.run_time(2))
        assert sel["previous_run_time"] == market.run_time(0).isoformat()  # the withheld hour was not traded


def test_a_crawler_restarted_halfway_through_an_hour_completes_it(tmp_path, capfd):
    with StackRun(tmp_path) as stack:
        args = [sys.executable, "-m", "alphabus", "sim", str(stack.bmac.root), "--symbols", str(SYMBOLS),
                "--seed", "47", "--hours", "1", "--hour-seconds", "5", "--spread-sec", "4"]
        sim = subprocess.Popen(args, env=stack.services.env)
        try:
            deadline = time.monotonic() + 60
            run_time = SyntheticMarket(symbols=SYMBOLS, seed=47).run_time(0)
            while len(stack.bmac.ready_candles(run_time)) < SYMBOLS // 4:
                assert time.monotonic() < deadline and sim.poll() is None, "the sim never got going"
                time.sleep(0.02)
            sim.kill()
            sim.wait(10)
            written = len(stack.bmac.ready_candles(run_time))
            assert 0 < written < SYMBOLS
            sim = subprocess.Popen(args, env=stack.services.env)
            assert sim.wait(60) == 0
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait(10)
        assert stack.bmac.ready_candles(run_time) == set(SyntheticMarket(symbols=SYMBOLS, seed=47).symbols)
        _exact(stack, run_time)
    err = capfd.readouterr().err
    assert "completing the unfinished hour 0" in err and f"({written} already written before the restart)" in err


def test_the_missed_entry_reaches_an_executor_that_asks_for_it(tmp_path):
    """A late executor's snapshot carries the missed hours after the latest selection."""
    from shared.client import MissedUpdate

    market = SyntheticMarket(symbols=20, seed=48)
    with StackRun(tmp_path) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        stack.kill("market")
        write_hour(stack.bmac, market, 1)
        write_hour(stack.bmac, market, 2)
        stack.restart("market")
        wait_for_file(history_paths(stack.workdir, market.run_time(2))["selection"], 60)
        with _client(stack, history=True, since=market.run_time(0)) as client:
            got = {u.run_time: u for u in client.updates(timeout_s=5)}
        assert isinstance(got[market.run_time(1)], MissedUpdate)
        assert got[market.run_time(1)].missed.reason == "overwritten"


def _client(stack: StackRun, **kwargs):
    """An executor inside the stack (the launcher's ``cli`` key), with SelectionClient options."""
    from shared import security
    from shared.client import SelectionClient

    keys = security.stack_keys(stack.workdir)
    return SelectionClient(stack.endpoints["ALPHABUS_SELECTION_PUB"], stack.endpoints["ALPHABUS_SNAPSHOT"],
                           name="executor", keys=keys.folder if keys else None, key_name="cli",
                           stack=bus.stack_identity(stack.workdir), **kwargs)


def test_a_restarted_market_announcing_a_published_round_again_costs_one_line(tmp_path, service_log):
    """Its shards' results for that round are dropped quietly (counted), not with a warning each."""
    market = SyntheticMarket(symbols=SYMBOLS, seed=49)
    with StackRun(tmp_path) as stack:
        write_hour(stack.bmac, market, 0)
        _exact(stack, market.run_time(0))
        stack.kill("market")
        (stack.workdir / "state" / "market.json").unlink()  # a new container without the state volume, say
        stack.restart("market")  # hour 0's files are still the newest: it announces hour 0 again
        service_log.wait_for(f"round {market.run_time(0).isoformat()} announced again", 30)
        time.sleep(2)  # the shard recomputes the round; its results reach the position service
        write_hour(stack.bmac, market, 1)
        _exact(stack, market.run_time(1))
        assert not stack.crashed()
    log = service_log.read()
    assert log.count("announced again") == 1, log
    assert [line for line in log.splitlines() if "dropped" in line] == [], log
