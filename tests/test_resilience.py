"""Sharding, rounds that know when they are complete, restarts, and the executor contract.

Every test runs the services as real processes over TCP on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pytest
import zmq

from services.market.sim import SyntheticMarket, write_hour
from services.recorder.files import history_paths
from shared import bus
from shared.messages import FactorResults, Header, Heartbeat, decode, encode
from tests.reference import assert_same_round, recorded_round
from tests.stack import StackRun, wait_for_file

SYMBOLS = 48


def _run_hours(stack: StackRun, market: SyntheticMarket, hours: range) -> list[dict]:
    selections = []
    for k in hours:
        run_time = write_hour(stack.bmac, market, k)
        selections.append(stack.wait_for_round(run_time))
        assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
    return selections



def _write_candles(stack: StackRun, run_time, previous, frames) -> None:
    for symbol, df in frames.items():
        stack.bmac.write_candles(symbol, df, run_time, previous)


def test_one_two_and_three_shards_give_identical_rounds(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=21)
    recorded = {}
    for n in (1, 2, 3):
        with StackRun(tmp_path / f"n{n}", shards=n) as stack:
            selections = _run_hours(stack, market, range(2))
            assert all(s["coverage"]["shards"] == [f"{k}/{n}" for k in range(n)] for s in selections)
            recorded[n] = [recorded_round(stack.workdir, market.run_time(k)) for k in range(2)]
    for n in (2, 3):
        for one, other in zip(recorded[1], recorded[n], strict=True):
            pd.testing.assert_frame_equal(one[1], other[1])  # long, to the character
            pd.testing.assert_frame_equal(one[2], other[2])  # short
            key = lambda f: f.sort_values("symbol", ignore_index=True)  # noqa: E731
            pd.testing.assert_frame_equal(key(one[0]), key(other[0]))  # every factor row


def test_a_killed_shard_flags_the_round_with_exactly_its_symbols_and_rejoins(tmp_path, service_log):
    market = SyntheticMarket(symbols=SYMBOLS, seed=22)
    with StackRun(tmp_path, shards=2, bmac_expire_sec=20, round_grace_sec=1) as stack:
        _run_hours(stack, market, range(1))
        run_time, previous, frames = stack.open_round(market, 1)
        time.sleep(0.3)  # the round is announced
        stack.kill("factor-1")
        _write_candles(stack, run_time, previous, frames)
        selection = stack.wait_for_round(run_time)
        owned = sorted(s for s in market.symbols if bus.Shard(1, 2).owns(s))
        assert owned and selection["incomplete"] is True
        assert selection["coverage"]["missing"] == owned
        assert selection["coverage"]["silent_shards"] == ["1/2"] and selection["coverage"]["shards"] == ["0/2"]
        service_log.wait_for("factor shard 1/2 silent", 6)  # noticed within seconds, by heartbeats
        stack.restart("factor-1")
        _heartbeat(stack, "position", lambda s: not s["silent_shards"], 20)
        selections = _run_hours(stack, market, range(2, 3))
        assert selections[0]["coverage"]["missing"] == [] and not selections[0]["incomplete"]
        assert selections[0]["coverage"]["shards"] == ["0/2", "1/2"]


def test_a_late_executor_gets_the_current_selection_from_the_snapshot(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=23)
    with StackRun(tmp_path) as stack:
        selections = _run_hours(stack, market, range(2))
        with stack.client("late") as client:
            update = next(iter(client.updates(timeout_s=10)))
        assert update.selection.run_time == market.run_time(1)
        assert update.selection.model_dump(mode="json") == selections[1]
        assert update.long["symbol"].tolist() == [p["symbol"] for p in selections[1]["long"]]


def test_targets_previous_and_changes_chain_round_to_round(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=24)
    with StackRun(tmp_path) as stack:
        selections = _run_hours(stack, market, range(3))
    first, *rest = selections
    assert first["previous"] == {} and first["changes"] == first["targets"]
    for before, now in zip(selections, rest, strict=False):
        assert now["previous_run_time"] == before["run_time"] and now["previous"] == before["targets"]
        symbols = set(now["targets"]) | set(before["targets"])
        assert set(now["changes"]) == symbols
        for s in symbols:
            change = Decimal(now["targets"].get(s, "0")) - Decimal(before["targets"].get(s, "0"))
            assert Decimal(now["changes"][s]) == change
    for sel in selections:
        assert {p["symbol"]: p["position"] for p in sel["long"]} == {
            s: t for s, t in sel["targets"].items() if Decimal(t) > 0}
        assert {p["symbol"]: str(-Decimal(p["position"])) for p in sel["short"]} == {
            s: t for s, t in sel["targets"].items() if Decimal(t) < 0}


@pytest.mark.parametrize("victim", ["market", "factor-0", "position", "recorder"])
def test_killing_and_restarting_a_service_between_rounds_changes_nothing(tmp_path, victim):
    market = SyntheticMarket(symbols=SYMBOLS, seed=25)
    with StackRun(tmp_path / "calm") as calm:
        _run_hours(calm, market, range(3))
    with StackRun(tmp_path / "rough") as rough:
        _run_hours(rough, market, range(1))
        rough.kill(victim)
        if victim == "recorder":  # a round passes while it is down; it must catch up on restart
            run_time = write_hour(rough.bmac, market, 1)
            time.sleep(1.0)
            assert not history_paths(rough.workdir, run_time)["selection"].exists()
            rough.restart(victim)
            rough.wait_for_round(run_time)
            _run_hours(rough, market, range(2, 3))
        else:
            rough.restart(victim)
            _run_hours(rough, market, range(1, 3))
    for k in range(3):
        run_time = market.run_time(k)
        for calm_frame, rough_frame in zip(recorded_round(calm.workdir, run_time),
                                           recorded_round(rough.workdir, run_time), strict=True):
            pd.testing.assert_frame_equal(calm_frame, rough_frame)
        calm_sel, rough_sel = (json.loads(history_paths(w, run_time)["selection"].read_text())
                               for w in (calm.workdir, rough.workdir))
        for field in ("long", "short", "targets", "previous", "changes", "coverage", "previous_run_time"):
            assert calm_sel[field] == rough_sel[field], (k, field)


def test_a_position_service_killed_mid_round_gets_the_next_round_right(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=26)
    with StackRun(tmp_path, bmac_expire_sec=3, round_grace_sec=1) as stack:
        _run_hours(stack, market, range(1))
        run_time, previous, frames = stack.open_round(market, 1)
        time.sleep(0.3)
        stack.kill("position")
        _write_candles(stack, run_time, previous, frames)
        stack.restart("position")
        selections = _run_hours(stack, market, range(2, 3))
        assert selections[0]["previous_run_time"] == market.run_time(0).isoformat()  # restored from disk


def _heartbeat(stack: StackRun, service: str, predicate, timeout: float = 10.0) -> dict:
    """The first heartbeat state of the position ``service`` satisfying predicate."""
    sub = stack.insider(zmq.SUB, "cli", "selections", stack.endpoints["ALPHABUS_SELECTION_PUB"])
    sub.setsockopt_string(zmq.SUBSCRIBE, bus.heartbeat_topic(service))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sub.poll(200):
                env = decode(sub.recv_multipart())
                if isinstance(env.body, Heartbeat) and predicate(env.body.state):
                    return env.body.state
        raise AssertionError(f"no {service} heartbeat satisfied the condition within {timeout}s")
    finally:
        sub.close(0)


def test_duplicate_and_out_of_order_messages_are_dropped_and_counted(tmp_path, service_log):
    market = SyntheticMarket(symbols=20, seed=27)
    with StackRun(tmp_path) as stack:
        _run_hours(stack, market, range(1))
        pub = stack.insider(zmq.PUB, "factor", "factor_in", stack.endpoints["ALPHABUS_FACTOR_IN"])
        body = FactorResults(run_time=market.run_time(0), shard="0/1", symbols=[], last_ready_at=None)
        frames = {seq: encode("factor.test", Header(kind=body.kind, stack=stack.stack_id, sender="intruder",
                                                     seq=seq, sent_at=datetime.now(UTC)), body) for seq in (1, 5, 3)}

        def send() -> None:
            for seq in (1, 5, 5, 3):  # 5 twice: a duplicate; 3 after 5: out of order
                pub.send_multipart(frames[seq])

        service_log.wait_for("dropped duplicate or out-of-order", timeout=10, poke=send)
        pub.close(0)
        state = _heartbeat(stack, "position",
                           lambda s: s["duplicates"] >= 2 and s["gaps"] >= 3)
        assert state["duplicates"] >= 2
        _run_hours(stack, market, range(1, 2))  # and the stack is none the worse


def test_paper_executor_trades_the_changes_and_marks_to_market(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=28)
    with StackRun(tmp_path) as stack:
        stack.services.start("paper", ["paper", str(stack.workdir)])
        selections = _run_hours(stack, market, range(3))
        equity_csv = stack.workdir / "paper" / "equity.csv"
        deadline = time.monotonic() + 20
        while not equity_csv.exists() or len(pd.read_csv(equity_csv)) < 3:
            assert time.monotonic() < deadline, "the paper executor did not record three rounds"
            time.sleep(0.1)
    fills = pd.read_csv(stack.workdir / "paper" / "fills.csv", dtype={"qty": str})
    equity = pd.read_csv(equity_csv)
    assert equity["run_time"].tolist() == [s["run_time"] for s in selections]
    for sel in selections:
        traded = {r.symbol: Decimal(r.qty) for r in fills[fills["run_time"] == sel["run_time"]].itertuples()}
        assert traded == {s: Decimal(c) for s, c in sel["changes"].items() if Decimal(c) != 0}
    book = json.loads((stack.workdir / "paper" / "book.json").read_text())
    assert {s: Decimal(q) for s, q in book["holdings"].items()} == {
        s: Decimal(t) for s, t in selections[-1]["targets"].items()}
    last = equity.iloc[-1]
    marked = book["cash"] + sum(float(q) * book["prices"][s] for s, q in book["holdings"].items())
    assert last["equity"] == pytest.approx(marked, rel=1e-12)
    assert equity["pnl"].sum() == pytest.approx(last["equity"], rel=1e-9, abs=1e-9)


def test_a_late_paper_executor_starts_from_the_snapshot(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=29)
    with StackRun(tmp_path) as stack:
        selections = _run_hours(stack, market, range(2))
        paper = subprocess.Popen([sys.executable, "-m", "alphabus", "paper", str(stack.workdir)],
                                 env=stack.services.env)
        try:
            wait_for_file(stack.workdir / "paper" / "equity.csv", 20)
        finally:
            paper.terminate()
            paper.wait(10)
    equity = pd.read_csv(stack.workdir / "paper" / "equity.csv")
    assert equity["run_time"].tolist() == [selections[-1]["run_time"]]
