"""Property tests: whatever bytes arrive, the decoder answers an Envelope or BadMessage, and the
position service's round handling takes arbitrary factor results without raising.

Bounded for CI (a few seconds each): ``max_examples`` is small and there is no deadline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgpack
import pyarrow as pa
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.position.rounds import build_selection
from services.position.service import Position
from shared import bus
from shared.config import parse_config
from shared.messages import (
    BODIES,
    SCHEMA_VERSION,
    BadMessage,
    Envelope,
    FactorResults,
    Header,
    RoundOpen,
    Skip,
    SymbolSpec,
    decode,
    encode,
)
from shared.service import StopFlag
from shared.tables import table_to_ipc
from tests.reference import article_config

RUN = datetime(2024, 3, 1, 13, tzinfo=ZoneInfo("Asia/Hong_Kong"))
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the decoder --------------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
plausible_text = st.sampled_from(["", "x", "0/1", "1/2", "0/5000000", "BTCUSDT", "../../etc/x", "nan", "1e999",
                                  "2024-03-01T13:00:00+08:00", "2024-03-01T13:00:00", "factor_results"])
body_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats() | plausible_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["symbol", "symbols", "skipped", "shard", "reason", "detail", "face_value", "run_time",
                         "state", "service", "missing", "path", "ready_at", "by_path", "interval", "funding",
                         "expire_sec", "last_ready_at", "long", "short", "coverage", "files"]) | st.text(max_size=5),
        inner, max_size=6),
    max_leaves=25,
)
fields = {
    "v": st.just(SCHEMA_VERSION) | msgpack_values,
    "kind": st.sampled_from(sorted(BODIES)) | msgpack_values,
    "stack": st.just("") | msgpack_values,
    "sender": st.just("fuzz") | msgpack_values,
    "seq": st.integers(-1, 2**64 - 1) | msgpack_values,
    "sent_at": st.just("2024-03-01T05:00:00Z") | msgpack_values,
    "body": body_values | st.fixed_dictionaries({"run_time": st.just(RUN.isoformat())}, optional={
        "shard": plausible_text, "symbols": st.lists(plausible_text, max_size=3), "skipped": body_values,
        "symbol": plausible_text, "path": plausible_text, "ready_at": plausible_text,
        "last_ready_at": st.none() | plausible_text, "service": plausible_text, "state": body_values,
        "by_path": st.booleans(), "files": st.lists(st.fixed_dictionaries(
            {"symbol": plausible_text, "path": plausible_text, "ready_at": plausible_text}), max_size=3)}),
}
headers = st.fixed_dictionaries({}, optional=fields) | msgpack_values


def _decodes_or_refuses(frames: list) -> None:
    try:
        env = decode(frames)
    except BadMessage:
        return
    assert isinstance(env, Envelope)


@FAST
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_frames_decode_or_raise_bad_message(frames):
    _decodes_or_refuses(frames)


@FAST
@given(st.binary(max_size=16), headers, st.lists(st.binary(max_size=16), max_size=4))
def test_arbitrary_msgpack_headers_decode_or_raise_bad_message(topic, head, payloads):
    _decodes_or_refuses([topic, msgpack.packb(head, use_bin_type=True), *payloads])


@pytest.mark.parametrize("frames", [
    [b"t", b"\x91" * 100_000 + b"\xc0"],                    # nested 100k deep
    [b"t", b"\xdd\xff\xff\xff\xff"],                        # an array declaring 4 billion items
    [b"t", b"\xdf\xff\xff\xff\xff"],                        # a map declaring 4 billion pairs
    [b"t", b"\xdb\xff\xff\xff\xff" + b"x" * 10],            # a string declaring 4 GiB
    [b"t", msgpack.packb({"v": SCHEMA_VERSION, "kind": ["unhashable"]})],
    [b"t", msgpack.packb({"v": SCHEMA_VERSION, "kind": "heartbeat", "sender": "s", "seq": 1, "stack": "",
                          "sent_at": "2024-03-01T05:00:00Z",
                          "body": {"run_time": None, "service": "x", "state": {str(i): i for i in range(100)}}})],
    [b"t" * 10_000, msgpack.packb({"v": SCHEMA_VERSION})],
])
def test_msgpack_bombs_are_bad_messages(frames):
    with pytest.raises(BadMessage):
        decode(frames)


# -- the position service's round handling ------------------------------------------------------

UNIVERSE = ["AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT", "FUSDT"]
CFG = parse_config(article_config("/nonexistent", long_num=1, short_num=1, min_candle_num=1,
                                  pre_filters=[["ChgPctMax", 24, "val:<=0.2"]]))
COLUMNS = ["symbol", "close", *CFG.columns, "candle_begin_time"]
TYPES = [pa.string(), pa.large_string(), pa.float64(), pa.int64(), pa.float32(), pa.bool_(),
         pa.timestamp("ms", tz="UTC")]


def _array(kind: pa.DataType, values: list) -> pa.Array:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.array([str(v) for v in values], kind)
    values = [1.0 if isinstance(v, str) else v for v in values]
    if pa.types.is_boolean(kind):
        return pa.array([bool(v) for v in values], kind)
    if pa.types.is_timestamp(kind):
        return pa.array([0 for _ in values], pa.int64()).cast(kind)
    if pa.types.is_integer(kind):
        return pa.array([int(v) if v == v and abs(v) < 2**62 else 0 for v in values], kind)
    return pa.array(values, pa.float64()).cast(kind)


@st.composite
def factor_results(draw):
    """Mostly well-formed results (so rows do get accepted), each with a chance of one or more defects."""
    rare = lambda: draw(st.integers(0, 7)) == 0  # noqa: E731
    shard = draw(st.sampled_from(["0/2", "1/2", "2/3", "0/256"])) if rare() else "0/1"
    pool = [*UNIVERSE, "ZZZUSDT"] if rare() else UNIVERSE
    symbols = draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))
    skipped = [s for s in draw(st.lists(st.sampled_from(pool), max_size=2, unique=True)) if s not in symbols]
    rows = draw(st.integers(0, 5)) if rare() else len(symbols)
    good = st.floats(0.01, 100)
    numbers = st.floats(allow_nan=True, allow_infinity=True) | good if rare() else good
    columns = {}
    for name in COLUMNS:
        if rare() and rare():
            continue  # a missing column
        kind = draw(st.sampled_from(TYPES)) if rare() else (
            draw(st.sampled_from([pa.string(), pa.large_string()])) if name == "symbol"
            else pa.timestamp("ms", tz="UTC") if name == "candle_begin_time" else pa.float64())
        if name == "symbol":
            values = draw(st.permutations(symbols + ["AUSDT"] * rows))[:rows] if rare() else symbols[:rows]
            values += ["AUSDT"] * (rows - len(values))
        else:
            values = draw(st.lists(numbers, min_size=rows, max_size=rows))
        columns[name] = _array(kind, values)
    payload = [table_to_ipc(pa.table(columns)) if columns else b"not arrow"] if symbols or rare() else []
    if rare():
        payload = [] if payload else [b"\xff" * 8]
    body = FactorResults(run_time=RUN, shard=shard, symbols=symbols, last_ready_at=None,
                         skipped=[Skip(symbol=s, reason="stale", detail="d") for s in skipped])
    return body, payload


@pytest.fixture(scope="module")
def position():
    ctx = zmq.Context.instance()
    socks = [ctx.socket(t) for t in (zmq.SUB, zmq.SUB, zmq.PUB, zmq.ROUTER)]
    try:
        yield Position(CFG, *socks, StopFlag(), None)
    finally:
        for s in socks:
            s.close(0)


def _env(topic: str, body, payloads=(), seq: int = 1) -> Envelope:
    header = Header(kind=body.kind, stack=bus.current_stack(), sender="fuzz", seq=seq, sent_at=datetime.now(UTC))
    return decode(encode(topic, header, body, list(payloads)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
@given(st.lists(factor_results(), max_size=6))
def test_arbitrary_factor_results_never_break_a_round(position, results):
    run_time = RUN + timedelta(hours=len(position.finished) + 1)  # a fresh round each example
    position.on_message(_env("round.open", RoundOpen(
        run_time=run_time, interval="1h", expire_sec=30, funding={},
        symbols=[SymbolSpec(symbol=s, face_value=Decimal("0.001")) for s in UNIVERSE])))
    for body, payloads in results:
        position.on_message(_env("factor.x", body.model_copy(update={"run_time": run_time}), payloads))
    state = position.rounds.pop(run_time)
    position.finished.add(run_time)
    built = build_selection(CFG, state, flag_incomplete=True)  # must not raise, whatever was accepted
    sel = built.selection
    assert set(sel.targets) <= set(UNIVERSE)
    assert sel.coverage.received == len(state.rows) <= len(UNIVERSE)
    assert all(p.close > 0 for p in [*sel.long, *sel.short])
    for symbol in state.rows:  # only owners' rows were taken
        assert any(bus.Shard.parse(s).owns(symbol) for s in state.shards)
