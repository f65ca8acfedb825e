"""CURVE and ZAP on every socket: peers without an admitted key get nothing in and nothing out.

The stack runs as real processes over loopback TCP; the attackers are real ZeroMQ sockets in this process,
some with no key at all (NULL), some with a CURVE key of their own that the stack never admitted.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import zmq
import zmq.auth

from alphabus.launcher import Services, loopback_endpoints
from services.market.sim import SyntheticMarket, write_hour
from shared import bus, security
from shared.client import SelectionClient
from shared.messages import (
    FactorResults,
    Header,
    Heartbeat,
    Missed,
    Pick,
    RoundClosed,
    RoundOpen,
    Selection,
    SnapshotRequest,
    SymbolSpec,
    encode,
)
from shared.tables import frame_to_ipc
from tests.conftest import write_config
from tests.reference import assert_same_round
from tests.stack import StackRun

KEY_FILES = {f"{n}{ext}" for n in security.STACK_KEYS for ext in (".key", ".key_secret")}


def _alphabus(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphabus", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_keys_command_makes_owner_only_keys_once_and_admits_an_executor(tmp_path):
    workdir = write_config(tmp_path / "work", tmp_path / "bmac")
    out = _alphabus("keys", str(workdir))
    assert out.returncode == 0, out.stderr
    folder = workdir / "keys"
    assert {p.name for p in folder.iterdir() if p.is_file()} == KEY_FILES
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for domain, names in security.ADMITTED.items():
        assert {p.stem for p in (folder / "admitted" / domain).glob("*.key")} == set(names)
    before = (folder / "position.key_secret").read_text()

    out = _alphabus("keys", str(workdir), "--client", "exec1")
    assert out.returncode == 0, out.stderr
    assert (folder / "position.key_secret").read_text() == before  # never regenerated
    assert (folder / "exec1.key_secret").exists()
    assert (folder / "admitted" / "selections" / "exec1.key").read_text() == (folder / "exec1.key").read_text()
    assert not (folder / "admitted" / "market" / "exec1.key").exists()

    bad = _alphabus("keys", str(workdir), "--client", "../x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "client name" in bad.stderr


def _create(folder: str) -> bool:
    return security.create_keys(Path(folder))


def test_concurrent_first_starts_agree_on_one_set_of_keys(tmp_path):
    folder = tmp_path / "work" / "keys"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        made = pool.map(_create, [str(folder)] * 8)
    assert sum(made) == 1
    assert {p.name for p in folder.iterdir() if p.is_file()} == KEY_FILES
    assert [p.name for p in folder.parent.iterdir()] == ["keys"]  # no staging folder left behind
    zmq.auth.load_certificate(folder / "position.key_secret")


def _forged_results(run_time: datetime, symbols: list[str]) -> list:
    body = FactorResults(run_time=run_time, shard="0/1", symbols=symbols, skipped=[], last_ready_at=None)
    header = Header(kind=body.kind, stack="", sender="factor-evil", seq=1, sent_at=datetime.now(UTC))
    return encode(bus.factor_topic("0of1"), header, body, [b"forged"])


class Attackers:
    """Sockets of a process the stack never admitted: no key (NULL), or a CURVE key of its own."""

    def __init__(self, endpoints: dict[str, str], workdir: Path):
        self.ctx = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.unsent = 0
        position_public = security.Keys(workdir / "keys").public("position")
        market_public = security.Keys(workdir / "keys").public("market")
        for curve in (False, True):
            def sock(kind: int, server_public: bytes, curve: bool = curve) -> zmq.Socket:
                s = self.ctx.socket(kind)
                if curve:
                    s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
                    s.curve_serverkey = server_public
                self.sockets.append(s)
                return s

            for address, server in ((endpoints["ALPHABUS_MARKET_PUB"], market_public),
                                    (endpoints["ALPHABUS_SELECTION_PUB"], position_public)):
                sub = sock(zmq.SUB, server)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(address)
            dealer = sock(zmq.DEALER, position_public)
            dealer.connect(endpoints["ALPHABUS_SNAPSHOT"])
            pub = sock(zmq.PUB, position_public)
            pub.connect(endpoints["ALPHABUS_FACTOR_IN"])

    def send_everything(self, run_time: datetime, symbols: list[str]) -> None:
        """Forged results for every symbol, snapshot requests, and a round announcement of their own."""
        for s in self.sockets:
            if s.type == zmq.PUB:
                s.send_multipart(_forged_results(run_time, symbols))
                opened = RoundOpen(run_time=datetime(2099, 1, 1, tzinfo=UTC), interval="1h",
                                   symbols=[SymbolSpec(symbol=symbols[0], face_value=1)], funding={}, expire_sec=1)
                s.send_multipart(encode("round.open", Header(kind=opened.kind, stack="", sender="market-evil",
                                                             seq=1, sent_at=datetime.now(UTC)), opened))
            elif s.type == zmq.DEALER:
                try:  # a DEALER only queues to a peer that completed its handshake: never, here
                    s.send_multipart(encode("snapshot", Header(kind="snapshot_request", stack="", sender="evil",
                                                               seq=0, sent_at=datetime.now(UTC)),
                                            SnapshotRequest(run_time=None, since=None)), zmq.NOBLOCK)
                except zmq.Again:
                    self.unsent += 1

    def received(self) -> int:
        got = 0
        for s in self.sockets:
            while s.type in (zmq.SUB, zmq.DEALER) and s.poll(0):
                s.recv_multipart()
                got += 1
        return got

    def close(self) -> None:
        for s in self.sockets:
            s.close(0)
        self.ctx.term()


def test_peers_without_an_admitted_key_get_nothing_in_and_nothing_out(tmp_path, capfd):
    market = SyntheticMarket(symbols=30, seed=31)
    with StackRun(tmp_path) as stack:
        security.create_keys(stack.workdir / "keys")  # what start_stack did; the attackers read public keys
        attackers = Attackers(stack.endpoints, stack.workdir)
        try:
            received = 0
            for k in range(2):
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:  # forge before and while the round runs
                    attackers.send_everything(market.run_time(k), market.symbols)
                    received += attackers.received()
                    time.sleep(0.05)
                run_time = write_hour(stack.bmac, market, k)
                selection = stack.wait_for_round(run_time)
                assert not selection["incomplete"] and selection["coverage"]["missing"] == []
                assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
                received += attackers.received()
            assert received == 0
            assert attackers.unsent > 0
            assert not (stack.workdir / "selection_his" / "20990101_080000.json").exists()
        finally:
            attackers.close()

        # an executor admitted while the stack runs gets the selections at once
        outsider = tmp_path / "elsewhere"  # a key pair the stack never admitted, beside the true server key
        outsider.mkdir()
        zmq.auth.create_certificates(outsider, "exec1")
        (outsider / "position.key").write_text((stack.workdir / "keys" / "position.key").read_text())
        with SelectionClient(stack.endpoints["ALPHABUS_SELECTION_PUB"], stack.endpoints["ALPHABUS_SNAPSHOT"],
                             keys=outsider, key_name="exec1") as client:
            assert list(client.updates(timeout_s=2.0)) == []
        out = _alphabus("keys", str(stack.workdir), "--client", "exec2")
        assert out.returncode == 0, out.stderr
        with SelectionClient(stack.endpoints["ALPHABUS_SELECTION_PUB"], stack.endpoints["ALPHABUS_SNAPSHOT"],
                             keys=stack.workdir / "keys", key_name="exec2") as client:
            update = next(client.updates(timeout_s=10.0))
            assert update.selection.run_time == run_time
        assert stack.crashed() == {}

    logs = capfd.readouterr().err
    refused = re.findall(r"refused a client at (\S+) on (\w+): its CURVE key (\S+) is not admitted", logs)
    # each keyed attacker socket was refused, and each is logged once although it retried many times
    assert {domain for _, domain, _ in refused} == {"market", "selections", "factor_in"}
    assert len(refused) == len(set(refused))
    assert "handshake failed" in logs  # the keyless ones, logged per socket and reason, not per attempt
    assert len(re.findall(r"handshake failed", logs)) <= 12


def test_a_rogue_publisher_cannot_make_paper_trade(tmp_path, capfd):
    """A process that binds where paper expects the position service, and publishes a selection."""
    workdir = write_config(tmp_path / "work", tmp_path / "bmac")
    endpoints = loopback_endpoints()
    ctx = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    pub.bind(endpoints["ALPHABUS_SELECTION_PUB"])
    router.bind(endpoints["ALPHABUS_SNAPSHOT"])
    pick = Pick(symbol="BTCUSDT", close=50000.0, factor=1.0, filters={}, position=Decimal(5), pos_val=250000.0)
    forged = Selection(run_time=datetime(2024, 1, 1, tzinfo=UTC), factor_column="x", long=[pick], short=[],
                       coverage={"expected": 1, "received": 1, "skipped": {}, "missing": []}, incomplete=False,
                       targets={"BTCUSDT": 5}, previous_run_time=None, previous={}, changes={"BTCUSDT": 5})
    side = pd.DataFrame({"symbol": ["BTCUSDT"], "close": [50000.0], "x": [1.0], "position": ["5"]})
    tables = [frame_to_ipc(side.drop(columns="position")), frame_to_ipc(side), frame_to_ipc(side.iloc[:0])]

    def trade_attempt(env: dict) -> bool:
        """Run paper against the rogue for a few seconds; True if it recorded any fill."""
        with Services({**endpoints, **env}) as services:
            services.start("paper", ["paper", str(workdir)])
            stack = bus.stack_identity(workdir)
            deadline = time.monotonic() + 4.0
            seq = 0
            while time.monotonic() < deadline:
                seq += 1
                header = Header(kind="selection", stack=stack, sender="position@rogue", seq=seq,
                                sent_at=datetime.now(UTC))
                pub.send_multipart(encode("selection", header, forged, tables))
                if router.poll(50):
                    ident = router.recv_multipart()[0]
                    router.send_multipart([ident, *encode("snapshot", header, forged, tables)])
                if (workdir / "paper" / "fills.csv").exists():
                    return True
        return False

    try:
        assert not trade_attempt({})
        logs = capfd.readouterr().err
        assert "paper -> selections" in logs and "handshake failed" in logs
        # the control: with security off the same rogue is obeyed (so the check above can fail)
        assert trade_attempt({security.SECURITY_ENV: "none"})
    finally:
        pub.close(0)
        router.close(0)
        ctx.term()


def test_a_stack_member_refuses_a_server_with_another_stacks_key(tmp_path, capfd):
    """A factor worker of stack B pointed at stack A's market completes no handshake, and says why."""
    market = SyntheticMarket(symbols=30, seed=3)
    with StackRun(tmp_path / "a") as a:
        other = write_config(tmp_path / "b" / "work", a.bmac.root)
        with Services(a.endpoints) as services:
            services.start("factor-b", ["factor", str(other)])
            run_time = write_hour(a.bmac, market, 0)
            a.wait_for_round(run_time)
            time.sleep(1.0)
            assert a.crashed() == {} and services.exited() == {}
    logs = capfd.readouterr().err
    assert "factor -> market at" in logs and "security handshake failed" in logs
    assert_same_round(a.workdir, run_time, bmac_dir=a.bmac.root)


def test_only_the_market_announces_rounds_even_to_a_peer_holding_a_workers_key(tmp_path, capfd):
    """A compromised or buggy shard worker (it has the factor key) tries to speak for the market."""
    market = SyntheticMarket(symbols=20, seed=41)
    with StackRun(tmp_path) as stack:
        run_time = write_hour(stack.bmac, market, 0)
        stack.wait_for_round(run_time)
        pub = stack.insider(zmq.PUB, "factor", "factor_in", stack.endpoints["ALPHABUS_FACTOR_IN"])
        future = datetime(2099, 1, 1, tzinfo=UTC)
        bodies = [RoundOpen(run_time=future, interval="1h", symbols=[SymbolSpec(symbol="BTCUSDT", face_value=1)],
                            funding={}, expire_sec=1),
                  RoundClosed(run_time=future, missing={}, last_ready_at=None),
                  Missed(run_time=market.run_time(1), reason="no_exginfo", detail="forged"),
                  Heartbeat(run_time=None, service="market", state={})]
        deadline = time.monotonic() + 3.0
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            for topic, body in zip(("round.open", "round.closed", "round.missed", "hb.market"), bodies, strict=True):
                pub.send_multipart(encode(topic, Header(kind=body.kind, stack=stack.stack_id, sender="factor-evil",
                                                        seq=seq, sent_at=datetime.now(UTC)), body))
            time.sleep(0.1)
        pub.close(0)
        run_time = write_hour(stack.bmac, market, 1)
        selection = stack.wait_for_round(run_time)
        assert "missed" not in selection  # the forged Missed for this hour changed nothing
        assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
        assert not (stack.workdir / "selection_his" / future.strftime("%Y%m%d_%H%M%S.json")).exists()
        assert stack.crashed() == {}
    logs = capfd.readouterr().err
    for kind in ("round_open", "round_closed", "missed", "heartbeat"):
        lines = [ln for ln in logs.splitlines() if f"dropped a {kind} on the factor_in socket from factor-evil" in ln]
        assert len(lines) == 1, (kind, lines)
