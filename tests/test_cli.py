"""The command line: help everywhere, the demo on both markets, the stack's clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alphabus.cli import subcommands
from alphabus.launcher import loopback_endpoints
from alphabus.sim import SyntheticMarket, write_hour
from shared.bmac import BmacDir
from tests.conftest import write_config
from tests.reference import assert_same_round
from tests.stack import wait_for_file

COMMANDS = subcommands()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "alphabus", command, "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "usage: alphabus" in out.stdout


def test_the_four_services_are_subcommands():
    assert {"market", "factor", "position", "recorder", "stack", "once", "demo", "sim"} <= set(COMMANDS)


def test_demo_runs_with_no_arguments_beyond_speed():
    out = subprocess.run([sys.executable, "-m", "alphabus", "demo", "--rounds", "2", "--hour-seconds", "2"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("\nround ") + out.stdout.startswith("round ") == 2, out.stdout
    assert "LONG (2)" in out.stdout and "SHORT (8)" in out.stdout and "all processes stopped" in out.stdout


def test_demo_replays_the_real_market(real_data):
    out = subprocess.run([sys.executable, "-m", "alphabus", "demo", "--rounds", "2", "--hour-seconds", "2",
                          "--replay", str(real_data)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("round 2025-") == 2 and "BTCUSDT" not in out.stderr


def _alphabus_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and "alphabus" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_stack_runs_rounds_and_stops_every_child_on_ctrl_c(tmp_path):
    bmac = BmacDir(tmp_path / "bmac", "1h")
    workdir = write_config(tmp_path / "work", bmac.root)
    market = SyntheticMarket(symbols=30, seed=12)
    env = {**os.environ, **loopback_endpoints()}
    stack = subprocess.Popen([sys.executable, "-m", "alphabus", "stack", str(workdir), "--clock", "follow",
                              "--factor-shards", "2"], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for k in range(2):
            run_time = write_hour(bmac, market, k)
            wait_for_file(workdir / "selection_his" / run_time.strftime("%Y%m%d_%H%M%S.json"), 60)
            assert_same_round(workdir, run_time, bmac_dir=bmac.root)
        assert len(_alphabus_processes(str(workdir))) == 6  # stack, market, 2 factor shards, position, recorder
        os.killpg(stack.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = stack.communicate(timeout=30)
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
    assert stack.returncode == 0, err
    assert "stack stopped" in err
    deadline = time.monotonic() + 5
    while _alphabus_processes(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alphabus_processes(str(workdir)) == []
