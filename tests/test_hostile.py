"""Malformed and forged messages against the real services: nothing a peer sends stops a service,
changes a selection or grows a service's memory without bound, and each drop is logged with its reason.

The intruder here got past authentication (an insider, or a buggy worker): the stacks run with
``ALPHABUS_SECURITY=none`` and a known stack name, so what is tested is validation, not CURVE.
Every service runs as a process over loopback TCP; stderr is captured at the file-descriptor level.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgpack
import pandas as pd
import pyarrow as pa
import pytest
import zmq

from alphabus.launcher import free_port
from services.market.sim import SyntheticMarket, write_hour
from services.recorder.files import history_paths
from shared import bus
from shared.bmac import BmacDir
from shared.client import SelectionClient
from shared.messages import (
    SCHEMA_VERSION,
    Coverage,
    FactorResults,
    Header,
    Heartbeat,
    Pick,
    Selection,
    Skip,
    decode,
    encode,
)
from shared.tables import frame_to_ipc, table_to_ipc
from tests.conftest import write_config
from tests.reference import article_round, assert_same_round
from tests.stack import StackRun

STACK = "hostile-test"
FACTOR = "MtmAtrMean_bh_120"
FILTERS = ["ChgPctMax_fl_24", "Volume_fl_24"]


@pytest.fixture
def insider(monkeypatch):
    """Services without CURVE, in a stack whose name the intruder knows."""
    monkeypatch.setenv("ALPHABUS_SECURITY", "none")
    monkeypatch.setenv("ALPHABUS_STACK", STACK)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Intruder:
    """A PUB connected to the position service's factor input, sending whatever it is told."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(endpoint)
        self.seq: dict[tuple[str, str], int] = {}

    def send(self, sender: str, topic: str, body, payloads=()) -> None:
        self.seq[sender, topic] = self.seq.get((sender, topic), 0) + 1
        header = Header(kind=body.kind, stack=STACK, sender=sender, seq=self.seq[sender, topic],
                        sent_at=datetime.now(UTC))
        self.sock.send_multipart(encode(topic, header, body, list(payloads)), copy=False)

    def raw_body(self, sender: str, kind: str, body: dict, payloads=()) -> None:
        """A header built by hand, for bodies the models refuse to construct."""
        self.seq[sender, kind] = self.seq.get((sender, kind), 0) + 1
        head = {"v": SCHEMA_VERSION, "kind": kind, "stack": STACK, "sender": sender, "seq": self.seq[sender, kind],
                "sent_at": datetime.now(UTC).isoformat(), "body": body}
        self.sock.send_multipart([b"factor.x", msgpack.packb(head), *payloads])

    def close(self) -> None:
        self.sock.close(linger=2000)


def _table(symbols: list[str], **change) -> pa.Buffer:
    """A factor table as a worker sends it, with columns replaced (array) or removed (None) by ``change``."""
    columns = {"symbol": pa.array(symbols, pa.large_string()), "close": pa.array([1.0] * len(symbols)),
               **{c: pa.array([0.5] * len(symbols)) for c in [FACTOR, *FILTERS]}}
    for name, value in change.items():
        if value is None:
            columns.pop(name)
        else:
            columns[name] = value
    return table_to_ipc(pa.table(columns))


def _results(run_time, shard: str, symbols: list[str]) -> FactorResults:
    return FactorResults(run_time=run_time, shard=shard, symbols=symbols, last_ready_at=None)


def _open_round(stack: StackRun, market: SyntheticMarket, k: int):
    """Write what starts round k (exginfo, funding), no candle yet; returns run_time and the writer of the rest."""
    run_time, previous = market.run_time(k), market.run_time(k - 1)
    frames = market.candles(k)
    stack.bmac.write_exginfo(market.exginfo(), run_time, previous)
    stack.bmac.write_funding(market.funding(k), run_time, previous)

    def write_candles() -> None:
        for symbol, df in frames.items():
            stack.bmac.write_candles(symbol, df, run_time, previous)
    return run_time, write_candles


def test_forged_and_malformed_factor_messages_change_nothing(tmp_path, service_log, insider):
    market = SyntheticMarket(symbols=30, seed=11)
    log = service_log
    with StackRun(tmp_path, bmac_expire_sec=30, round_grace_sec=1) as stack:
        first = write_hour(stack.bmac, market, 0)
        stack.wait_for_round(first)
        ctx = zmq.Context.instance()
        rounds = ctx.socket(zmq.SUB)  # see the round open, as the position service does
        rounds.connect(stack.endpoints["ALPHABUS_MARKET_PUB"])
        rounds.setsockopt_string(zmq.SUBSCRIBE, bus.ROUND_OPEN)
        intruder = Intruder(stack.endpoints["ALPHABUS_FACTOR_IN"])
        position = stack.services.procs["position"].pid
        rss_before = _rss_kb(position)
        try:
            # Heartbeats naming absurd shards: refused once per peer, however many come (also: connected).
            huge = Heartbeat(run_time=None, service="factor", state={"shard": "0/5000000", "subscribed": True})
            log.wait_for("dropped a factor heartbeat from hb-huge", poke=lambda: intruder.send(
                "hb-huge", "hb.factor", huge))
            for _ in range(2000):
                intruder.send("hb-huge", "hb.factor", huge)
                intruder.send("hb-x", "hb.factor", Heartbeat(run_time=None, service="factor",
                                                             state={"shard": "x", "subscribed": True}))

            megabyte = b"\x00" * 2**20
            for k in range(100):  # 100 MiB for four rounds that never open: at most 3 x 16 MiB is held
                future = datetime(2099, 1, 1, tzinfo=UTC) + timedelta(hours=k % 4)
                intruder.send("future", "factor.0of1", _results(future, "0/1", ["BTCUSDT"]), [megabyte])
            log.wait_for("dropped a factor_results for an unannounced round from future")
            time.sleep(0.5)
            grown = _rss_kb(position) - rss_before

            run_time, write_candles = _open_round(stack, market, 1)
            assert rounds.poll(10_000), "round 1 was not announced"
            time.sleep(0.3)  # the position service got the same announcement
            universe = sorted(market.exginfo()["symbol"])
            two = [bus.Shard(k, 2) for k in range(2)]
            of_zero = [s for s in universe if two[0].owns(s)][:3]

            intruder.send("short", "factor.0of1", _results(run_time, "0/1", universe), [_table(universe[:1])])
            intruder.send("nocol", "factor.0of1", _results(run_time, "0/1", universe[:2]),
                          [_table(universe[:2], **{FACTOR: None})])
            intruder.send("wrongtype", "factor.0of1", _results(run_time, "0/1", universe[:2]),
                          [_table(universe[:2], close=pa.array(["1", "2"]))])
            intruder.send("swapped", "factor.0of1", _results(run_time, "0/1", universe[:2]),
                          [_table(universe[1::-1][:2])])
            intruder.send("badclose", "factor.0of1", _results(run_time, "0/1", universe[:1]),
                          [_table(universe[:1], close=pa.array([0.0]))])
            intruder.send("othershard", "factor.1of2", _results(run_time, "1/2", of_zero), [_table(of_zero)])
            intruder.send("stranger", "factor.0of1", _results(run_time, "0/1", ["ZZZUSDT"]), [_table(["ZZZUSDT"])])
            intruder.send("nopayload", "factor.0of1", _results(run_time, "0/1", universe[:2]))
            intruder.send("garbage", "factor.0of1", _results(run_time, "0/1", universe[:2]), [b"\xff" * 100])
            # Bodies the models refuse: caught by decode() and logged with the reason.
            for name, body in {"shard-x": {"shard": "x"}, "shard-5m": {"shard": "0/5000000"},
                               "dup": {"shard": "0/1", "symbols": [universe[0], universe[0]]},
                               "path": {"shard": "0/1", "symbols": ["../../etc/x"]}}.items():
                intruder.raw_body(name, "factor_results", {"run_time": run_time.isoformat(), "symbols": [],
                                                           "last_ready_at": None, **body})
            intruder.raw_body("frames", "factor_results", {"run_time": run_time.isoformat(), "shard": "0/1",
                                                           "symbols": [], "last_ready_at": None}, [b"1", b"2"])
            intruder.sock.send_multipart([b"factor.x", b"\x91" * 100_000 + b"\xc0"])  # nested 100k deep
            intruder.sock.send_multipart([b"factor.x", b"\xdd\xff\xff\xff\xff"])  # 4 billion items declared
            log.wait_for("undecodable topic or header: ValueError")
            # A frame over ZMQ_MAXMSGSIZE: the peer is disconnected, nothing is buffered; it may reconnect.
            intruder.send("oversized", "factor.0of1", _results(run_time, "0/1", universe[:2]),
                          [b"\x00" * (bus.MAX_MESSAGE_BYTES + 1)])
            later = Heartbeat(run_time=None, service="factor", state={"shard": "9/9", "subscribed": True})
            log.wait_for("dropped a factor heartbeat from after-oversized", poke=lambda: intruder.send(
                "after-oversized", "hb.factor", later))

            write_candles()
            selection = stack.wait_for_round(run_time)
            assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
            assert selection["coverage"]["missing"] == [] and selection["coverage"]["shards"] == ["0/1"]
            assert not stack.crashed(), stack.crashed()
        finally:
            intruder.close()
            rounds.close(0)
    text = log.read()
    assert grown < 64 * 1024, f"position grew by {grown} kB holding forged messages"
    for sender, reason in [
        ("hb-huge", "need 0 <= K < N <= 256"), ("hb-x", "is not like '0/2'"),
        ("short", "1 row(s) for 30 symbol(s)"), ("nocol", f"missing column(s) {FACTOR}"),
        ("wrongtype", "column close is string, not a number"), ("swapped", "row 0 is"),
        ("badclose", "close is missing, not finite or not positive"),
        ("othershard", "symbol(s) of other shards"), ("stranger", "not in the round's universe: ZZZUSDT"),
        ("nopayload", "no table for its 2 symbol(s)"), ("garbage", "unreadable table"),
        ("future", "unannounced round"),
    ]:
        lines = [line for line in text.splitlines() if f"from {sender}:" in line and "dropped" in line]
        assert len(lines) == 1, (sender, lines)
        assert reason in lines[0], (sender, lines[0])
    for sender, reason in [("shard-x", "shard 'x' is not like"), ("shard-5m", "N <= 256"),
                           ("dup", "duplicate symbol"), ("path", "String should match pattern"),
                           ("frames", "has 2 payload frame(s), expected 0 to 1")]:
        lines = [line for line in text.splitlines() if f"from '{sender}'" in line]
        assert lines and reason in lines[0], (sender, lines)
    assert "StackError" in text and "exceeds max_array_len" in text
    assert "from oversized" not in text and "Traceback" not in text


def _selection(run_time: datetime) -> Selection:
    pick = Pick(symbol="AUSDT", close=2.0, factor=0.1, filters={}, position=Decimal("250"), pos_val=500.0)
    return Selection(run_time=run_time, factor_column=FACTOR, long=[pick], short=[],
                     coverage=Coverage(expected=1, received=1, skipped={}, missing=[]), incomplete=False,
                     targets={"AUSDT": Decimal("250")}, previous_run_time=None, previous={},
                     changes={"AUSDT": Decimal("250")})


def test_a_client_drops_selections_without_readable_payloads(caplog, insider):
    """A forged position service: frames missing, tables garbage, a heartbeat with nonsense; then a good one."""
    ctx = zmq.Context.instance()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    pub_at, snap_at = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    pub.bind(pub_at)
    router.bind(snap_at)
    client = SelectionClient(selection_pub=pub_at, snapshot=snap_at, stack=STACK)
    try:
        assert router.poll(5000)  # the client's snapshot request: it is connected
        router.recv_multipart()
        t = datetime(2024, 3, 1, 13, tzinfo=UTC)
        good = frame_to_ipc(pd.DataFrame({"symbol": ["AUSDT"], "close": [2.0]}))

        def header(kind: str, seq: int) -> Header:
            return Header(kind=kind, stack=STACK, sender="position@fake", seq=seq, sent_at=datetime.now(UTC))

        delivered = []
        deadline = time.monotonic() + 10
        while not delivered and time.monotonic() < deadline:  # PUB/SUB: repeat until the subscription is there
            pub.send_multipart(encode("selection", header("selection", 1), _selection(t)))  # no payloads
            pub.send_multipart(encode("selection", header("selection", 2), _selection(t + timedelta(hours=1)),
                                      [b"\xff", b"junk", b""]))
            pub.send_multipart(encode("hb.position", header("heartbeat", 1), Heartbeat(
                run_time=None, service="position", state={"selection_seq": "lots"})))
            pub.send_multipart(encode("selection", header("selection", 3), _selection(t + timedelta(hours=2)),
                                      [good, good, good]))
            delivered = client.poll(300)
        assert [u.selection.run_time for u in delivered] == [t + timedelta(hours=2)]
        assert list(delivered[0].long["symbol"]) == ["AUSDT"]
    finally:
        client.close()
        pub.close(0)
        router.close(0)
    text = caplog.text  # in this process: the client's own log
    assert "has 0 payload frame(s), expected 3" in text
    assert f"dropped selection {(t + timedelta(hours=1)).isoformat()} (seq 2 from position@fake): unreadable" in text


def _once(workdir: Path, run_time: datetime, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphabus", "once", str(workdir), "--run-time", run_time.isoformat()],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_exginfo_and_file_edges_are_named_and_survived(tmp_path, insider):
    """A duplicate exginfo row, a symbol that is a path, a 2 GB candle file: warned, skipped, round exact."""
    bmac = BmacDir(tmp_path / "bmac", "1h")
    market = SyntheticMarket(symbols=30, seed=12)
    run_time = write_hour(bmac, market, 0)
    exginfo = market.exginfo()
    clean = BmacDir(tmp_path / "clean", "1h")
    shutil.copytree(bmac.root, clean.root)
    huge = next(s for s in exginfo["symbol"] if len(pd.read_feather(bmac.candle_path(s))) >= 999)
    clean.candle_ready(huge, run_time).unlink()
    bad = exginfo.iloc[[0, 1]].copy()
    bad["symbol"] = [exginfo["symbol"].iloc[3], "../../etc/x"]
    bmac.write_exginfo(pd.concat([exginfo, bad], ignore_index=True), run_time)
    with open(bmac.candle_path(huge), "r+b") as f:
        f.truncate(2 * 2**30)  # sparse: 2 GB that cost no disk
    out = _once(write_config(tmp_path / "work", bmac.root, bmac_expire_sec=3), run_time,
                {"ALPHABUS_MAX_FILE_MB": "16"})
    assert out.returncode == 0, out.stderr
    selection = json.loads(history_paths(tmp_path / "work", run_time)["selection"].read_text())
    assert "over the 16 MiB file size limit" in selection["coverage"]["skipped"][huge]
    assert selection["coverage"]["expected"] == 30
    assert out.stderr.count(f"exginfo lists {exginfo['symbol'].iloc[3]} more than once") == 1
    assert out.stderr.count("exginfo symbol '../../etc/x' is not a plain [A-Z0-9] ticker") == 1
    assert "Traceback" not in out.stderr
    assert_same_round(tmp_path / "work", run_time, article_round(clean.root, run_time))


def test_the_bytes_feed_never_reads_a_file_over_the_limit(tmp_path, monkeypatch):
    from services.market.feeds import DirectoryFeed

    monkeypatch.setenv("ALPHABUS_MAX_FILE_MB", "1")
    bmac = BmacDir(tmp_path, "1h")
    bmac.candle_dir.mkdir(parents=True)
    with open(bmac.candle_path("BIGUSDT"), "wb") as f:
        f.truncate(2 * 2**30)
    rss = _rss_kb(os.getpid())
    data, source = DirectoryFeed(bmac).candle("BIGUSDT")
    assert data == b"" and "over the 1 MiB file size limit" in source
    assert _rss_kb(os.getpid()) - rss < 16 * 1024


def test_an_all_skipped_round_publishes_empty_sides(tmp_path, insider):
    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, SyntheticMarket(symbols=10, seed=13), 0)
    workdir = write_config(tmp_path / "work", bmac.root, bmac_expire_sec=3, min_candle_num=100_000)
    out = _once(workdir, run_time)
    assert out.returncode == 0, out.stderr
    assert "KeyError" not in out.stderr and "Traceback" not in out.stderr
    paths = history_paths(workdir, run_time)
    selection = json.loads(paths["selection"].read_text())
    assert selection["long"] == [] and selection["short"] == [] and selection["coverage"]["received"] == 0
    assert all(v.startswith("too_few_candles") for v in selection["coverage"]["skipped"].values())
    assert len(selection["coverage"]["skipped"]) == 10
    for side in ("long", "short", "factor"):
        assert pd.read_csv(paths[side]).empty, side


def test_string_or_large_string_does_not_matter_and_duplicates_keep_the_first(insider, monkeypatch):
    """In process, on the position service's own handler: the normalisation a real worker relies on."""
    from services.position.service import Position
    from shared.config import parse_config
    from shared.messages import RoundOpen, SymbolSpec
    from shared.service import StopFlag
    from tests.reference import article_config

    cfg = parse_config(article_config("/nonexistent"))
    socks = [zmq.Context.instance().socket(t) for t in (zmq.SUB, zmq.SUB, zmq.PUB, zmq.ROUTER)]
    try:
        pos = Position(cfg, *socks, StopFlag(), None)
        t = datetime(2024, 3, 1, 13, tzinfo=UTC)
        seq = iter(range(1, 100))

        def deliver(topic, body, payloads=()):
            header = Header(kind=body.kind, stack=bus.current_stack(), sender="w", seq=next(seq),
                            sent_at=datetime.now(UTC))
            pos.on_message(decode(encode(topic, header, body, list(payloads))))

        deliver("round.open", RoundOpen(run_time=t, interval="1h", expire_sec=30, funding={},
                                        symbols=[SymbolSpec(symbol=s, face_value=Decimal("1")) for s in "ABC"]))
        deliver("factor.0of1", _results(t, "0/1", ["A", "B"]), [_table(["A", "B"], symbol=pa.array(["A", "B"]))])
        deliver("factor.0of1", _results(t, "0/1", ["C"]), [_table(["C"], close=pa.array([3], pa.int32()))])
        deliver("factor.0of1", FactorResults(run_time=t, shard="0/1", symbols=["A"], last_ready_at=None,
                                             skipped=[Skip(symbol="B", reason="stale", detail="again")]),
                [_table(["A"], close=pa.array([9.0]))])
        monkeypatch.setattr("services.position.service.MAX_TABLE_BYTES", 100)
        deliver("factor.0of1", _results(t, "0/1", ["A"]), [_table(["A"])])  # over the (lowered) table limit
        state = pos.rounds[t]
        assert state.complete() and state.skipped == {}
        table = state.factor_table()
        assert table.schema.field("symbol").type == pa.large_string()
        assert table["symbol"].to_pylist() == ["A", "B", "C"] and table["close"].to_pylist() == [1.0, 1.0, 3.0]
        assert pos.rejects.counts == {"symbols already accounted for": 1, "a factor result": 1}
    finally:
        for s in socks:
            s.close(0)
