"""Bad input is named, loses nothing else, and never stops a service or a round."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import msgpack
import numpy as np
import pandas as pd
import pytest
import zmq

from alphabus.launcher import free_port
from services.market.sim import SyntheticMarket, write_hour
from services.recorder.files import history_paths
from shared.bmac import BmacDir
from shared.messages import SCHEMA_VERSION
from tests.conftest import write_config
from tests.reference import article_round, assert_same_round
from tests.stack import StackRun


def _mature(bmac: BmacDir, n: int) -> list[str]:
    """n symbols of the universe with enough candles to be selected."""
    symbols = [s for s in bmac.read_exginfo()["symbol"] if len(pd.read_feather(bmac.candle_path(s))) >= 999]
    assert len(symbols) >= n
    return symbols[:n]


def _rewrite(bmac: BmacDir, symbol: str, run_time, change) -> None:
    bmac.write_candles(symbol, change(pd.read_feather(bmac.candle_path(symbol))), run_time)


def _once(workdir, run_time, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphabus", "once", str(workdir), "--run-time", run_time.isoformat()],
                          capture_output=True, text=True, timeout=timeout)


def test_bad_files_are_named_skipped_and_the_round_completes(tmp_path):
    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, SyntheticMarket(symbols=50, seed=8), 0)
    victims = dict(zip(["corrupt", "truncated", "no_high", "nan_close", "zero_close", "inf_close", "duplicate",
                        "stale", "no_file"], _mature(bmac, 9), strict=True))
    # The reference sees the same directory without the victims (the article would crash on most of them).
    clean = BmacDir(tmp_path / "clean", "1h")
    shutil.copytree(bmac.root, clean.root)
    for s in victims.values():
        clean.candle_ready(s, run_time).unlink()

    data = bmac.candle_path(victims["corrupt"]).read_bytes()
    bmac.candle_path(victims["corrupt"]).write_bytes(b"\x00garbage" * 100)
    bmac.candle_path(victims["truncated"]).write_bytes(data[: len(data) // 2])
    _rewrite(bmac, victims["no_high"], run_time, lambda df: df.drop(columns=["high"]))
    _rewrite(bmac, victims["nan_close"], run_time,
             lambda df: df.assign(close=df["close"].where(df.index < len(df) - 1)))
    _rewrite(bmac, victims["zero_close"], run_time,
             lambda df: df.assign(close=df["close"].where(df.index != len(df) - 50, 0.0)))
    _rewrite(bmac, victims["inf_close"], run_time,
             lambda df: df.assign(close=df["close"].where(df.index != len(df) - 2, np.inf)))
    _rewrite(bmac, victims["duplicate"], run_time, lambda df: pd.concat([df.iloc[:-1], df.iloc[[-2, -1]]]))
    _rewrite(bmac, victims["stale"], run_time, lambda df: df.iloc[:-1])
    bmac.candle_path(victims["no_file"]).unlink()
    bmac.candle_ready(victims["no_file"], run_time).unlink()
    orphan = pd.read_feather(clean.candle_path(_mature(clean, 9)[-1]))
    bmac.write_candles("ORPHANUSDT", orphan, run_time)

    workdir = write_config(tmp_path / "work", bmac.root, bmac_expire_sec=3)
    out = _once(workdir, run_time)
    assert out.returncode == 0, out.stderr
    selection = json.loads(history_paths(workdir, run_time)["selection"].read_text())
    skipped = selection["coverage"]["skipped"]
    expected_reason = {"corrupt": "bad_data", "truncated": "bad_data", "no_high": "bad_data",
                       "nan_close": "bad_data", "zero_close": "bad_data", "inf_close": "bad_data",
                       "duplicate": "bad_data",
                       "stale": "stale", "no_file": "no_candles"}
    for kind, symbol in victims.items():
        assert skipped[symbol].startswith(expected_reason[kind]), (kind, skipped[symbol])
        assert symbol in out.stderr, f"{kind}: {symbol} not named in the logs"
    assert "unreadable feather file" in skipped[victims["corrupt"]]
    assert "unreadable feather file" in skipped[victims["truncated"]]
    assert "missing column(s) high" in skipped[victims["no_high"]]
    for kind in ("nan_close", "zero_close", "inf_close"):
        assert "close(s) NaN, infinite or <= 0" in skipped[victims[kind]], kind
    assert "duplicate candle_begin_time" in skipped[victims["duplicate"]]
    assert "no candle file" in skipped[victims["no_file"]]
    assert str(bmac.candle_path(victims["corrupt"])) in out.stderr
    assert "ORPHANUSDT: candle file" in out.stderr and "has no exginfo row" in out.stderr
    assert selection["coverage"]["missing"] == [] and not selection["incomplete"]
    assert_same_round(workdir, run_time, article_round(clean.root, run_time))


def test_missing_bmac_dir_names_the_awaited_file(tmp_path):
    market = SyntheticMarket(symbols=5, seed=1)
    workdir = write_config(tmp_path / "work", tmp_path / "nowhere", bmac_expire_sec=1)
    out = _once(workdir, market.run_time(0))
    assert out.returncode == 1
    stamp = market.run_time(0).strftime("%Y%m%d_%H%M%S")
    assert f"{tmp_path / 'nowhere'} does not exist (yet)" in out.stderr
    assert f"exginfo marker {tmp_path / 'nowhere' / 'exginfo_1h' / f'exginfo_{stamp}.ready'}" in out.stderr
    assert market.run_time(0).isoformat() in out.stderr


def test_a_late_crawler_is_reported_and_the_next_round_runs(tmp_path, capfd):
    market = SyntheticMarket(symbols=30, seed=4)
    with StackRun(tmp_path, bmac_expire_sec=2) as stack:
        run_time = write_hour(stack.bmac, market, 0)
        late = _mature(stack.bmac, 3)
        for s in late:
            stack.bmac.candle_ready(s, run_time).unlink()
        selection = stack.wait_for_round(run_time)
        for s in late:
            assert "no ready marker" in selection["coverage"]["skipped"][s]
        run_time = write_hour(stack.bmac, market, 1)
        selection = stack.wait_for_round(run_time)
        assert selection["coverage"]["skipped"] == {} or all(
            v.startswith("too_few_candles") for v in selection["coverage"]["skipped"].values())
        assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
    err = capfd.readouterr().err
    for s in late:
        assert s in err


def _send_raw_garbage(address: str) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(b"\xff\x00\x00garbage not zmtp\r\n" * 50)


def test_garbage_on_every_socket_is_dropped_and_rounds_go_on(tmp_path, service_log):
    market = SyntheticMarket(symbols=30, seed=6)
    with StackRun(tmp_path) as stack:
        run_time = write_hour(stack.bmac, market, 0)
        stack.wait_for_round(run_time)
        for address in stack.endpoints.values():
            _send_raw_garbage(address)
        pub = stack.insider(zmq.PUB, "factor", "factor_in", stack.endpoints["ALPHABUS_FACTOR_IN"])
        dealer = stack.insider(zmq.DEALER, "cli", "selections", stack.endpoints["ALPHABUS_SNAPSHOT"])
        garbage = [[b"factor.x", b"\xc1not msgpack"], [b"factor.x"],
                   [b"factor.x", msgpack.packb({"v": SCHEMA_VERSION})],
                   [b"factor.x", msgpack.packb({"v": SCHEMA_VERSION, "kind": "factor_results", "body": "no"})]]

        def send_garbage() -> None:
            for frames in garbage:
                pub.send_multipart(frames)
                dealer.send_multipart(frames)

        service_log.wait_for("dropped a bad message", timeout=10, poke=send_garbage)
        pub.close(0)
        dealer.close(0)
        run_time = write_hour(stack.bmac, market, 1)
        stack.wait_for_round(run_time)
        assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)
        assert not stack.services.exited()


def test_market_skips_a_round_without_exginfo_and_runs_the_next(tmp_path):
    from services.market.service import Market
    from shared.config import load_config
    from shared.service import StopFlag

    market_data = SyntheticMarket(symbols=10, seed=3)
    workdir = write_config(tmp_path / "work", tmp_path / "bmac", bmac_expire_sec=0.3)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.bind(f"tcp://127.0.0.1:{free_port()}")
    try:
        market = Market(load_config(workdir), sock, StopFlag(), await_subscribers=0)
        assert market.run_round(market_data.run_time(0)) is False
        write_hour(BmacDir(tmp_path / "bmac", "1h"), market_data, 1)
        assert market.run_round(market_data.run_time(1)) is True
    finally:
        sock.close(0)


@pytest.mark.parametrize("garbage", [b"", b"\x01\xff\xfe", b"\x05weird", b"\x00never subscribed"])
def test_subscription_tracker_ignores_odd_frames(garbage):
    from services.market.subscribers import Subscriptions

    subs = Subscriptions()
    subs.update(garbage)
    assert not subs.ready()
    subs.update(b"\x01")  # the empty prefix: everything, the position service and every bucket
    assert subs.ready()
