"""The real data set replayed from memory through the stack: fast, and every round as if computed alone."""

from __future__ import annotations

import json

import pytest

from alphabus.launcher import Services, loopback_endpoints, start_stack
from services.market.sim import ReplayMarket, write_hour
from services.recorder.files import history_paths
from shared.bmac import BmacDir
from tests.conftest import write_config
from tests.reference import article_round, assert_same_round
from tests.stack import wait_for_file

HOURS = 24
FIRST = 2500


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 2])
def test_replayed_rounds_equal_rounds_computed_alone(tmp_path, real_data, shards):
    workdir = write_config(tmp_path / "work", tmp_path / "unused")
    market = ReplayMarket(real_data, first_hour=FIRST)
    with Services(loopback_endpoints()) as services:
        start_stack(services, workdir, shards=shards,
                    market_args=["--replay", str(real_data), "--first-hour", str(FIRST), "--hours", str(HOURS)])
        assert services.procs["market"].wait(120) == 0
        wait_for_file(history_paths(workdir, market.run_time(HOURS - 1))["selection"], 30)
    bmac = BmacDir(tmp_path / "alone", "1h")
    for k in range(HOURS):
        run_time = write_hour(bmac, market, k)
        path = history_paths(workdir, run_time)["selection"]
        assert path.exists(), f"round {k} ({run_time}) was not recorded"
        selection = json.loads(path.read_text())
        assert selection["coverage"]["missing"] == [] and not selection["incomplete"]
        if k % 6 == 0 or k == HOURS - 1:  # the article's program on the same hour, from files
            assert_same_round(workdir, run_time, article_round(bmac.root, run_time))
