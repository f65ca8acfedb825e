"""End to end: the four services as real processes over TCP reproduce the article, hour after hour."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.market.sim import ReplayMarket, SyntheticMarket, write_hour
from tests.conftest import write_config
from tests.reference import article_round, assert_same_round
from tests.stack import StackRun, children_named


@pytest.mark.parametrize("send", ["paths", "bytes"])
def test_consecutive_hours_match_the_article_on_the_simulated_market(tmp_path, send, monkeypatch):
    """With candles sent by path the factor service computes on a pool of two processes (the default on 2 cores)."""
    if send == "paths":
        monkeypatch.setenv("ALPHABUS_FACTOR_WORKERS", "2")
    market = SyntheticMarket(symbols=70, seed=11)
    with StackRun(tmp_path, market_args=("--send", send)) as stack:
        for k in range(4):
            run_time = write_hour(stack.bmac, market, k, spread_sec=0.3)
            selection = stack.wait_for_round(run_time)
            assert selection["coverage"]["missing"] == [] and not selection["incomplete"]
            expected = article_round(stack.bmac.root, run_time)
            assert len(expected[1]) == 2 and len(expected[2]) == 8
            assert_same_round(stack.workdir, run_time, expected)
        if send == "paths":
            factor = next(p for name, p in stack.services.procs.items() if name.startswith("factor"))
            assert len(children_named(factor.pid, "--multiprocessing-fork")) == 1  # the pool's second process


def test_consecutive_hours_match_the_article_on_real_data(tmp_path, real_data):
    market = ReplayMarket(real_data, first_hour=3000)
    with StackRun(tmp_path) as stack:
        for k in range(3):
            run_time = write_hour(stack.bmac, market, k)
            stack.wait_for_round(run_time)
            assert_same_round(stack.workdir, run_time, bmac_dir=stack.bmac.root)


@pytest.mark.parametrize("debug_run_time", ["naive", "aware"])
def test_once_prints_the_selection_and_writes_the_article_files(tmp_path, debug_run_time):
    market = SyntheticMarket(symbols=40, seed=5)
    from shared.bmac import BmacDir

    bmac = BmacDir(tmp_path / "bmac", "1h")
    run_time = write_hour(bmac, market, 0)
    workdir = write_config(tmp_path / "work", bmac.root)
    arg = run_time.strftime("%Y-%m-%dT%H:%M:%S") if debug_run_time == "naive" else run_time.isoformat()
    out = subprocess.run([sys.executable, "-m", "alphabus", "once", str(workdir), "--run-time", arg],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"round {run_time.isoformat()}" in out.stdout and "LONG (2)" in out.stdout and "SHORT (8)" in out.stdout
    assert_same_round(workdir, run_time, bmac_dir=bmac.root)


def test_relative_bmac_dir_resolves_against_the_current_directory(tmp_path):
    from shared.bmac import BmacDir

    bmac = BmacDir(tmp_path / "data" / "bmac", "1h")
    run_time = write_hour(bmac, SyntheticMarket(symbols=20, seed=2), 0)
    workdir = write_config(tmp_path / "work", "data/bmac", min_candle_num=10)
    out = subprocess.run([sys.executable, "-m", "alphabus", "once", "work", "--run-time", run_time.isoformat()],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"reading the crawler's directory {bmac.root}" in out.stderr
    assert (workdir / "select_his").is_dir()
