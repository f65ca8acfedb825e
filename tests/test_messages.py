"""Messages round-trip through the codec; garbage is rejected with a reason; topics and shards are stable."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgpack
import pandas as pd
import pytest

from shared import bus
from shared.messages import (
    SCHEMA_VERSION,
    BadMessage,
    CandleFile,
    Candles,
    Coverage,
    Header,
    Pick,
    RoundOpen,
    Selection,
    SymbolSpec,
    decode,
    encode,
)
from shared.tables import frame_to_ipc, ipc_to_frame

RUN = datetime(2024, 3, 1, 13, tzinfo=ZoneInfo("Asia/Hong_Kong"))


def _header(kind: str, seq: int = 1) -> Header:
    return Header(kind=kind, stack="test-stack", sender="test", seq=seq, sent_at=datetime.now(UTC))


def test_round_open_roundtrip_keeps_exact_decimals_and_timezone():
    body = RoundOpen(run_time=RUN, interval="1h", expire_sec=30,
                     symbols=[SymbolSpec(symbol="BTCUSDT", face_value=Decimal("0.001")),
                              SymbolSpec(symbol="XUSDT", face_value=Decimal("1.000"))],
                     funding={"BTCUSDT": 0.0001, "XUSDT": None})
    env = decode(encode("round", _header(body.kind), body))
    assert env.body == body
    assert str(env.body.symbols[1].face_value) == "1.000"
    assert env.body.run_time == RUN and env.body.run_time.utcoffset() == RUN.utcoffset()


def test_selection_roundtrip_with_payload():
    sel = Selection(run_time=RUN, factor_column="f", long=[
        Pick(symbol="A", close=1.5, factor=0.1, filters={"g": 2.0}, position=Decimal("63.000"), pos_val=94.5)],
        short=[], coverage=Coverage(expected=2, received=1, skipped={"B": "stale: x"}, missing=[]),
        incomplete=False, targets={"A": Decimal("63.000")}, previous_run_time=None, previous={"C": Decimal("-2")},
        changes={"A": Decimal("63.000"), "C": Decimal("2")})
    frame = pd.DataFrame({"t": pd.date_range("2024-01-01", periods=2, freq="h", tz="Asia/Hong_Kong"),
                          "x": [1.0, 2.0], "n": [1, 2], "s": ["a", "b"]})
    env = decode(encode("selection", _header(sel.kind), sel, [frame_to_ipc(frame)] * 3))  # factors, long, short
    assert env.body == sel
    assert str(env.body.long[0].position) == "63.000"
    pd.testing.assert_frame_equal(ipc_to_frame(env.payloads[0]), frame)


@pytest.mark.parametrize("frames, reason", [
    ([b"x"], "expected at least 2 frames"),
    ([b"round", b"\xc1\xff garbage"], "undecodable"),
    ([b"round", msgpack.packb([1, 2])], "not a map"),
    ([b"round", msgpack.packb({"v": SCHEMA_VERSION + 1})], "schema version"),
    ([b"round", msgpack.packb({"v": SCHEMA_VERSION, "kind": "nope"})], "unknown message kind"),
    ([b"round", msgpack.packb({"v": SCHEMA_VERSION, "kind": "candles", "sender": "s", "seq": 1,
                               "sent_at": "2024-01-01T00:00:00Z", "body": {"symbol": 3}})], "invalid candles"),
    ([b"candles", msgpack.packb({"v": SCHEMA_VERSION, "kind": "candles", "sender": "s", "seq": 1, "stack": "",
                                 "sent_at": "2024-01-01T00:00:00Z", "body": {
                                     "run_time": "2024-01-01T00:00:00Z", "by_path": False, "files": [
                                         {"symbol": "A", "path": "p", "ready_at": "2024-01-01T00:00:00Z"}]}}),
      b"bytes", b"a second file's bytes for one file"], "has 2 payload frame"),
])
def test_garbage_is_rejected_with_a_reason(frames, reason):
    with pytest.raises(BadMessage, match=reason):
        decode(frames)


def _candles(*symbols: str, by_path: bool = True) -> Candles:
    return Candles(run_time=RUN, by_path=by_path,
                   files=[CandleFile(symbol=s, path=f"p/{s}.fea", ready_at=datetime.now(UTC)) for s in symbols or "A"])


def test_a_candles_message_names_each_file_once_and_carries_a_few_files_bytes_at_most():
    with pytest.raises(ValueError, match="duplicate symbol"):
        _candles("A", "B", "A")
    with pytest.raises(ValueError, match="at most 8"):
        _candles(*(f"S{i}" for i in range(9)), by_path=False)
    assert len(_candles(*(f"S{i}" for i in range(300))).files) == 300  # paths: many a message


def test_naive_run_time_is_rejected():
    with pytest.raises(ValueError):
        Candles(run_time=datetime(2024, 1, 1), files=[CandleFile(symbol="A", path="p", ready_at=datetime.now(UTC))])


def test_topics_are_dotted_general_to_specific():
    assert bus.candle_topic("BTCUSDT") == f"candle.{bus.bucket_of('BTCUSDT'):02x}.BTCUSDT"
    assert bus.factor_topic("0of2") == "factor.0of2"
    assert bus.heartbeat_topic("market") == "hb.market"


def test_bucket_hash_is_stable_across_processes():
    # Pinned values: a change here would move symbols between shards on a rolling upgrade.
    assert [bus.bucket_of(s) for s in ("BTCUSDT", "ETHUSDT", "ICPUSDT")] == PINNED_BUCKETS


PINNED_BUCKETS = [18, 10, 108]  # blake2b-64 of the symbol, mod 256


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_symbols_and_prefixes_match(n):
    symbols = [f"S{i}USDT" for i in range(500)]
    owners = [[k for k in range(n) if bus.Shard(k, n).owns(s)] for s in symbols]
    assert all(len(o) == 1 for o in owners)
    for k in range(n):
        shard = bus.Shard(k, n)
        for s in symbols:
            assert shard.owns(s) == any(bus.candle_topic(s).startswith(p) for p in shard.candle_prefixes())


def test_shard_parse_errors():
    assert bus.Shard.parse("1/3") == bus.Shard(1, 3)
    for bad in ("3/3", "x", "1-2", "-1/2", "0/257", "0/5000000", "1/2/3", ""):
        with pytest.raises(ValueError):
            bus.Shard.parse(bad)


def test_sequence_check_drops_duplicates_and_counts_gaps():
    check = bus.SequenceCheck()
    body = _candles()
    envs = [decode(encode("candle.00.A", _header(body.kind, seq), body)) for seq in (1, 2, 2, 5, 4, 6)]
    assert [check.accept(e) for e in envs] == [True, True, False, True, False, True]
    assert (check.duplicates, check.gaps) == (2, 2)


def test_sequence_tracking_stays_bounded_whatever_senders_claim(monkeypatch):
    monkeypatch.setattr(bus, "MAX_SEQUENCES", 8)
    check = bus.SequenceCheck()
    body = _candles()
    for i in range(100):
        header = Header(kind=body.kind, stack="s", sender=f"sender-{i}", seq=1, sent_at=datetime.now(UTC))
        assert check.accept(decode(encode("candle.00.A", header, body)))
    assert len(check.last) == 8 and ("sender-99", "candle.00.A") in check.last


def test_inbox_drops_another_stacks_messages_and_says_so_once(caplog):
    body = _candles()
    inbox = bus.Inbox(stack="mine")
    frames = [encode("candle.00.A", Header(kind=body.kind, stack=stack, sender="m", seq=seq,
                                           sent_at=datetime.now(UTC)), body)
              for seq, stack in enumerate(["other", "other", "mine", "other"], start=1)]
    accepted = [inbox.decode(f) for f in frames]
    assert [a is not None for a in accepted] == [False, False, True, False]
    assert inbox.counts()["foreign"] == 3
    assert sum("another stack 'other'" in r.getMessage() for r in caplog.records) == 1
    assert bus.Inbox(stack="").decode(frames[0]) is not None  # "" follows any stack


def test_a_peer_repeating_a_bad_message_cannot_flood_the_log(caplog):
    inbox = bus.Inbox()
    for _ in range(1000):
        assert inbox.decode([b"factor.x", b"\xc1not msgpack"]) is None
        assert inbox.decode([b"factor.x"]) is None
    assert inbox.counts()["bad_messages"] == 2000
    assert len([r for r in caplog.records if "bad message" in r.getMessage()]) == 2  # one per kind


def test_the_readme_documents_every_selection_field():
    from pathlib import Path

    from shared.messages import Coverage, OffsetBook, Pick, Selection, Shortfall

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    contract = readme[readme.index("## The executor contract"):]
    for model in (Header, Selection, Pick, Coverage, Shortfall, OffsetBook):
        for name in model.model_fields:
            assert f"`{name}`" in contract, f"{model.__name__}.{name} is not documented in the README"


def test_schema_command_exports_json_schema(capsys):
    import json

    from alphabus.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["schema_version"] == SCHEMA_VERSION
    selection = schema["bodies"]["selection"]
    assert {"targets", "previous", "changes", "coverage", "long", "short"} <= set(selection["properties"])
