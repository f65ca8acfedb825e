"""The market's directory watching: ready markers are seen the moment they appear."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from services.market.feeds import DirectoryFeed
from services.market.watch import NewFiles
from shared.bmac import BmacDir

RUN = datetime(2024, 3, 1, 13, tzinfo=ZoneInfo("Asia/Hong_Kong"))


def test_new_files_reports_created_and_moved_in_names(tmp_path):
    watch = NewFiles(tmp_path)
    try:
        assert watch.wait(0.01) == []
        (tmp_path / "A_1.ready").write_text("x")
        (tmp_path / ".tmp").write_text("x")
        os.replace(tmp_path / ".tmp", tmp_path / "B.fea")
        assert sorted(watch.wait(1.0) + watch.read()) == [".tmp", "A_1.ready", "B.fea"]
    finally:
        watch.close()


def test_directory_feed_wakes_on_a_marker_without_polling(tmp_path):
    bmac = BmacDir(tmp_path, "1h")
    bmac.candle_dir.mkdir(parents=True)
    feed = DirectoryFeed(bmac)
    assert feed.wait_ready(RUN, 0.01) == set()  # starts the watch
    timer = threading.Timer(0.2, lambda: bmac.candle_ready("BTCUSDT", RUN).write_text("x"))
    timer.start()
    started = time.monotonic()
    seen: set[str] = set()
    while not seen and time.monotonic() - started < 2:
        seen = feed.wait_ready(RUN, 1.0)
    assert seen == {"BTCUSDT"}
    assert time.monotonic() - started < 0.4  # woken by the event, not a slow rescan


def test_directory_feed_lists_the_directory_while_it_does_not_exist(tmp_path):
    bmac = BmacDir(tmp_path / "later", "1h")
    feed = DirectoryFeed(bmac)
    assert feed.wait_ready(RUN, 0.01) == set()
    bmac.candle_dir.mkdir(parents=True)
    bmac.candle_ready("ETHUSDT", RUN).write_text("x")
    assert feed.wait_ready(RUN, 0.01) == {"ETHUSDT"}


def test_arrow_reading_gives_the_articles_read_feather_frame(tmp_path):
    import pandas as pd

    from services.market.sim import SyntheticMarket, write_hour
    from shared.bmac import read_candle_table

    bmac = BmacDir(tmp_path, "1h")
    write_hour(bmac, SyntheticMarket(symbols=6, seed=3), 0)
    for symbol in bmac.candle_symbols():
        path = bmac.candle_path(symbol)
        pd.testing.assert_frame_equal(read_candle_table(path.read_bytes(), str(path)).to_pandas(),
                                      pd.read_feather(path))


class _Recorded:
    """A market whose waits are recorded instead of slept; ``on_wait`` plays the crawler."""

    def __init__(self, tmp_path, make_exginfo_dir: bool):
        import zmq

        from services.market.service import Market
        from shared.config import parse_config
        from shared.service import StopFlag
        from tests.reference import article_config

        self.bmac = BmacDir(tmp_path / "bmac", "1h")
        if make_exginfo_dir:
            self.bmac.exginfo_dir.mkdir(parents=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.bind(f"inproc://market-{id(self)}")
        self.market = Market(parse_config(article_config(str(self.bmac.root))), self.sock, StopFlag(), 0.0)
        self.waits: list[int] = []
        self.on_wait = lambda: None
        self.market.pump = self._pump  # type: ignore[method-assign]

    def _pump(self, timeout_ms: int = 10) -> None:
        self.waits.append(timeout_ms)
        self.on_wait()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def test_the_market_waits_for_the_next_hour_on_its_marker_watch_not_by_listing(tmp_path):
    """With inotify on the exginfo folder a marker wakes the market, so between looks it waits
    MARKER_WAIT_MS (a lost event costs that), not the 20 ms of a listing loop."""
    from services.market.service import MARKER_WAIT_MS

    rec = _Recorded(tmp_path, make_exginfo_dir=True)
    try:
        rec.market.last_run_time = RUN
        later = RUN.replace(hour=14)
        rec.bmac.exginfo_ready(RUN).write_text("x")
        rec.on_wait = lambda: len(rec.waits) == 3 and rec.bmac.exginfo_ready(later).write_text("x")
        assert rec.market.next_follow_time() == later
        assert rec.waits == [MARKER_WAIT_MS] * 3
        rec.waits.clear()
        deadline = time.monotonic() + 60
        rec.on_wait = lambda: len(rec.waits) == 2 and rec.bmac.funding_ready(later).write_text("x")
        assert rec.market.wait_for_file(rec.bmac.funding_ready(later), deadline)
        assert len(rec.waits) == 2 and all(1 <= w <= MARKER_WAIT_MS for w in rec.waits)
        assert MARKER_WAIT_MS - 10 < rec.waits[0]
    finally:
        rec.close()


def test_without_the_exginfo_folder_the_market_lists_it_at_the_old_pace(tmp_path):
    """No folder, no watch: the market looks every 20 ms (10 ms for a round's own markers), and
    starts watching once the crawler makes the folder."""
    from services.market.service import MARKER_WAIT_MS

    rec = _Recorded(tmp_path, make_exginfo_dir=False)
    try:
        rec.market.last_run_time = RUN
        later = RUN.replace(hour=14)

        def crawler():
            if len(rec.waits) == 2:
                rec.bmac.exginfo_dir.mkdir(parents=True)
            if len(rec.waits) == 4:
                rec.bmac.exginfo_ready(later).write_text("x")

        rec.on_wait = crawler
        assert rec.market.next_follow_time() == later
        assert rec.waits == [20, 20, MARKER_WAIT_MS, MARKER_WAIT_MS]
    finally:
        rec.close()


def test_exginfo_is_parsed_again_only_when_its_bytes_change_and_specs_follow_it(tmp_path):
    """The crawler rewrites exginfo every hour, mostly unchanged: the same bytes give the same frame (and the
    market's specs built from it); changed bytes are read afresh."""
    import pandas as pd

    from services.market.sim import SyntheticMarket

    rec = _Recorded(tmp_path, make_exginfo_dir=True)
    try:
        exginfo = SyntheticMarket(symbols=5, seed=3, history=30).exginfo()
        rec.bmac.write_exginfo(exginfo, RUN)
        feed = rec.market.feed
        first = feed.exginfo(RUN)
        specs = rec.market._symbol_specs(first)
        rec.bmac.write_exginfo(exginfo, RUN.replace(hour=14), RUN)  # rewritten, same content
        assert feed.exginfo(RUN) is first and rec.market._symbol_specs(first) is specs
        changed = exginfo.iloc[:3].copy()
        rec.bmac.write_exginfo(changed, RUN.replace(hour=15), RUN.replace(hour=14))
        again = feed.exginfo(RUN)
        assert again is not first and list(again["symbol"]) == list(changed["symbol"])
        assert [s.symbol for s in rec.market._symbol_specs(again)] == list(changed["symbol"])
        pd.testing.assert_frame_equal(again, rec.bmac.read_exginfo())
    finally:
        rec.close()


def test_paths_gather_markers_that_come_together_and_never_hold_a_lone_or_last_one(tmp_path, pub_sub):
    """With paths, markers written together travel as a few messages; markers apart, and the round's last, alone."""
    from services.market.service import GATHER_UNTIL_LEFT, Market
    from services.market.sim import SyntheticMarket, write_hour
    from shared import bus
    from shared.config import load_config
    from shared.messages import Candles, decode
    from shared.service import StopFlag
    from tests.conftest import write_config

    sim = SyntheticMarket(symbols=50, seed=5, history=30)
    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, sim, 3)
    symbols = sorted(bmac.ready_candles(run_time))
    for symbol in symbols:
        bmac.candle_ready(symbol, run_time).unlink()
    together, apart = symbols[:30], symbols[30:]  # more apart than GATHER_UNTIL_LEFT: every one of ``together``
    # comes while gathering is on
    assert len(apart) > GATHER_UNTIL_LEFT
    pub, sub = pub_sub
    marked: dict[str, float] = {}

    def crawl() -> None:
        time.sleep(0.3)  # the market is watching by now
        for symbol in together:  # 1 ms apart: faster than GATHER_SEC, slower than the market wakes
            bmac.candle_ready(symbol, run_time).write_text("x")
            time.sleep(0.001)
        for symbol in apart:
            time.sleep(0.04)
            marked[symbol] = time.time()
            bmac.candle_ready(symbol, run_time).write_text("x")

    messages: list[list[str]] = []
    arrived: dict[str, float] = {}

    def listen() -> None:
        while sub.poll(5000):
            env = decode(sub.recv_multipart())
            if isinstance(env.body, Candles):
                assert env.body.by_path and not env.payloads
                messages.append([f.symbol for f in env.body.files])
                arrived.update((f.symbol, time.time()) for f in env.body.files)
            elif env.topic == bus.ROUND_CLOSED:
                assert env.body.missing == {}
                return

    workdir = write_config(tmp_path / "work", bmac.root, min_candle_num=10)
    market = Market(load_config(workdir), pub, StopFlag(), 0, send_paths=True, workdir=workdir)
    market.wait_for_subscribers(5)
    threads = [threading.Thread(target=crawl), threading.Thread(target=listen)]
    for t in threads:
        t.start()
    assert market.run_round(run_time)
    for t in threads:
        t.join()
    sent = [s for m in messages for s in m]
    assert sorted(sent) == symbols  # each symbol once
    assert len([m for m in messages if set(m) <= set(together)]) <= 15  # 30 markers over ~35 ms: ~10
    for symbol in apart:  # 40 ms apart: each goes alone and at once (the last one too)
        assert [symbol] in messages
        assert 0 <= arrived[symbol] - marked[symbol] < 0.05
