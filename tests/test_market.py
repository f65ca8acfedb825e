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
