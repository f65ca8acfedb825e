"""Stacks on one host stay apart, crashing children restart with backoff, and no child outlives its launcher.

Every test runs the real ``alphabus`` console script as a process group of its own and reads /proc.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from alphabus.launcher import ENDPOINT_VARS, loopback_endpoints, restart_delay
from services.market.sim import SyntheticMarket, write_hour
from shared.bmac import BmacDir
from shared.clock import latest_boundary, zone
from tests.conftest import write_config
from tests.reference import assert_same_round
from tests.stack import children_named, wait_for_file

ALPHABUS = Path(sys.executable).with_name("alphabus")


def defaults_only_env(**extra: str) -> dict[str, str]:
    """This environment without any alphabus endpoint, stack, key or security setting: a user's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPHABUS_")}
    return {**env, **extra}


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded), from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def service_members(pgid: int) -> list[int]:
    """The group's alphabus processes, without a factor pool's processes (multiprocessing's spawn children)."""
    def ours(pid: int) -> bool:
        try:
            return b"multiprocessing" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    return [pid for pid in group_members(pgid) if ours(pid)]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


class Launched:
    """``alphabus ARGS`` in a new session (its own process group), stderr to a file; killed if left running."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen([str(ALPHABUS), *args], env=env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in group_members(self.proc.pid):  # never leave a stray child behind, whatever failed
            os.kill(pid, signal.SIGKILL)
        self._err.close()


# -- two stacks, defaults only ----------------------------------------------------------------------


STACKS = {"a": {"symbols": 40, "seed": 3, "long_num": 2, "short_num": 8},
          "b": {"symbols": 30, "seed": 4, "long_num": 3, "short_num": 5}}
HOURS = 3


def test_two_stacks_with_default_settings_on_one_host_never_mix(tmp_path):
    env = defaults_only_env()
    launched: dict[str, Launched] = {}
    sims: list[Launched] = []
    try:
        for name, spec in STACKS.items():  # both at the same moment: the harder case for choosing ports
            root = tmp_path / name
            write_config(root / "work", root / "bmac", long_num=spec["long_num"], short_num=spec["short_num"])
            launched[name] = Launched(["stack", str(root / "work"), "--clock", "follow"], root / "stack.log", env)
        for name, stack in launched.items():
            wait_until(lambda s=stack: "stack running" in s.stderr or s.proc.poll() is not None, 60,
                       f"stack {name} to start")
            assert stack.proc.poll() is None, stack.stderr
        moved = [n for n, s in launched.items() if "already in use on this host" in s.stderr]
        assert moved, "two stacks on the default ports: one of them must have moved"
        for name, spec in STACKS.items():
            root = tmp_path / name
            sims.append(Launched(["sim", str(root / "bmac"), "--symbols", str(spec["symbols"]), "--seed",
                                  str(spec["seed"]), "--hours", str(HOURS), "--hour-seconds", "4"],
                                 root / "sim.log", env))
        for sim in sims:
            assert sim.proc.wait(150) == 0, sim.stderr
        for name, spec in STACKS.items():
            work = tmp_path / name / "work"
            wait_until(lambda w=work: len(list((w / "selection_his").glob("*.json"))) >= HOURS, 60,
                       f"stack {name} to record {HOURS} rounds")
            recorded = sorted((work / "selection_his").glob("*.json"))
            assert len(recorded) == HOURS, [p.name for p in recorded]
            for path in recorded:
                sel = json.loads(path.read_text())
                assert sel["coverage"]["expected"] == spec["symbols"], (name, path.name, sel["coverage"])
                assert sel["coverage"]["missing"] == [] and not sel["incomplete"], (name, path.name)
                assert (len(sel["long"]), len(sel["short"])) == (spec["long_num"], spec["short_num"]), path
            # the crawler's directory now holds the last hour: that round is exactly the article's on its own data
            last = datetime.fromisoformat(json.loads(recorded[-1].read_text())["run_time"])
            assert_same_round(work, last, bmac_dir=tmp_path / name / "bmac", long_num=spec["long_num"],
                              short_num=spec["short_num"])
        for name, stack in launched.items():
            assert stack.proc.poll() is None, f"stack {name} exited:\n{stack.stderr}"
            assert "restarting it" not in stack.stderr, f"stack {name} restarted a child:\n{stack.stderr}"
            os.kill(stack.proc.pid, signal.SIGTERM)
        for name, stack in launched.items():
            assert stack.proc.wait(30) == 0, stack.stderr
            wait_until(lambda s=stack: group_members(s.proc.pid) == [], 10, f"stack {name}'s children to exit")
    finally:
        for p in [*sims, *launched.values()]:
            p.close()


def test_default_ports_taken_by_something_else_move_the_whole_stack(tmp_path):
    """Whatever holds a default port, the stack's four endpoints move together, and it says which."""
    import socket

    write_config(tmp_path / "work", tmp_path / "bmac")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 5703))
            holder.listen()
        except OSError:
            pass  # already held (another stack with defaults): the stack must move all the same
        stack = Launched(["stack", str(tmp_path / "work"), "--clock", "follow"], tmp_path / "stack.log",
                         defaults_only_env(ALPHABUS_SECURITY="none"))
        try:
            wait_until(lambda: "stack running" in stack.stderr, 60, "the stack to start")
            line = next(x for x in stack.stderr.splitlines() if "already in use on this host" in x)
            assert "tcp://127.0.0.1:5703" in line
            moved = dict(re.findall(r"(ALPHABUS_\w+)=(tcp://[\d.:]+)", line))
            assert set(moved) == set(ENDPOINT_VARS)
            assert not any(a.endswith((":5701", ":5702", ":5703", ":5704")) for a in moved.values())
            time.sleep(3)
            assert stack.proc.poll() is None and "restarting it" not in stack.stderr, stack.stderr
        finally:
            stack.close()


# -- crashing children restart with backoff ---------------------------------------------------------


def test_restart_delays_grow_exponentially_and_are_capped():
    assert [restart_delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(10_000) == 30


def test_a_crashing_child_is_restarted_with_growing_delays_and_a_line_per_restart(tmp_path):
    write_config(tmp_path / "work", tmp_path / "bmac")
    stack = Launched(["stack", str(tmp_path / "work"), "--clock", "follow"], tmp_path / "stack.log",
                     {**os.environ, **loopback_endpoints()})
    try:
        wait_until(lambda: "stack running" in stack.stderr, 60, "the stack to start")
        for n, delay in enumerate([0.5, 1.0, 2.0], start=1):
            wait_until(lambda: len(children_named(stack.proc.pid, "market")) == 1, 30, "a market child")
            (market,) = children_named(stack.proc.pid, "market")
            killed_at = time.monotonic()
            os.kill(market, signal.SIGKILL)
            expected = "market killed by SIGKILL after"
            line_end = f"restarting it in {delay:.1f}s (restart {n} in a row)"
            wait_until(lambda e=line_end: sum(e in x for x in stack.stderr.splitlines()) == 1, 10,
                       f"the log line for restart {n}")
            assert any(expected in x and line_end in x for x in stack.stderr.splitlines()), stack.stderr
            wait_until(lambda m=market: children_named(stack.proc.pid, "market") not in ([], [m]), 30, "the restart")
            assert time.monotonic() - killed_at >= delay - 0.05
        assert stack.stderr.count("restarting it in") == 3, stack.stderr
        os.kill(stack.proc.pid, signal.SIGTERM)
        assert stack.proc.wait(30) == 0
    finally:
        stack.close()


# -- SIGTERM / SIGINT to demo and once leave nothing behind ----------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_demo_stops_every_child_and_removes_its_folder(tmp_path, sig):
    demo = Launched(["demo", "--rounds", "50", "--hour-seconds", "2", "--symbols", "30"], tmp_path / "demo.log",
                    {**os.environ, "TMPDIR": str(tmp_path)})
    try:
        wait_until(lambda: list(tmp_path.glob("alphabus-demo-*/work/selection_his/*.json")), 120,
                   "the demo's first round")
        assert len(service_members(demo.proc.pid)) == 7  # demo, sim, market, factor, position, recorder, paper
        os.kill(demo.proc.pid, sig)  # the launcher only, not its group: it must stop its children itself
        assert demo.proc.wait(30) == 128 + sig, demo.stderr
        wait_until(lambda: group_members(demo.proc.pid) == [], 10, "the demo's children to exit")
        assert list(tmp_path.glob("alphabus-demo-*")) == []
        assert "Traceback" not in demo.stderr, demo.stderr
    finally:
        demo.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_once_stops_every_child(tmp_path, sig):
    """Mid-round: the market is still waiting for a crawler that never writes."""
    workdir = write_config(tmp_path / "work", tmp_path / "bmac", bmac_expire_sec=120)
    once = Launched(["once", str(workdir), "--run-time", "2024-01-01T08:00:00"], tmp_path / "once.log")
    try:
        wait_until(lambda: len(service_members(once.proc.pid)) == 5, 60, "once and its four services")
        time.sleep(1.0)
        os.kill(once.proc.pid, sig)
        assert once.proc.wait(30) == 128 + sig, once.stderr
        wait_until(lambda: group_members(once.proc.pid) == [], 10, "once's children to exit")
        assert "Traceback" not in once.stderr, once.stderr
    finally:
        once.close()


def test_a_launcher_killed_outright_takes_its_children_with_it(tmp_path):
    """SIGKILL leaves no chance to clean up: the kernel stops the children (PR_SET_PDEATHSIG)."""
    workdir = write_config(tmp_path / "work", tmp_path / "bmac", bmac_expire_sec=120)
    once = Launched(["once", str(workdir), "--run-time", "2024-01-01T08:00:00"], tmp_path / "once.log")
    try:
        wait_until(lambda: len(service_members(once.proc.pid)) == 5, 60, "once and its four services")
        os.kill(once.proc.pid, signal.SIGKILL)
        once.proc.wait(10)
        wait_until(lambda: group_members(once.proc.pid) == [], 15, "the orphaned children to exit")
    finally:
        once.close()


# -- debug: true -----------------------------------------------------------------------------------


def test_debug_true_makes_the_stack_run_the_round_that_just_closed_once_and_exit(tmp_path):
    """The article: ``run_time = next_run_time - 1h`` when debug, then ``exit()`` after that round."""
    tz = zone("Asia/Hong_Kong")
    now = datetime.now(tz)
    if latest_boundary(now, timedelta(hours=1)) + timedelta(minutes=59, seconds=30) < now:
        time.sleep(35)  # too close to the next boundary: let it pass so the round below stays the latest
    run_time = latest_boundary(datetime.now(tz), timedelta(hours=1))
    bmac = BmacDir(tmp_path / "bmac", "1h")
    write_hour(bmac, SyntheticMarket(symbols=30, seed=9, start=run_time), 0)
    workdir = write_config(tmp_path / "work", bmac.root, debug=True)
    out = subprocess.run([str(ALPHABUS), "stack", str(workdir)], capture_output=True, text=True, timeout=180,
                         env={**os.environ, **loopback_endpoints()})
    assert out.returncode == 0, out.stderr
    assert "debug: true in factor_calc.json" in out.stderr
    assert f"round {run_time.isoformat()}" in out.stdout and "LONG (2)" in out.stdout
    wait_for_file(workdir / "selection_his" / run_time.strftime("%Y%m%d_%H%M%S.json"), 1)
    assert_same_round(workdir, run_time, bmac_dir=bmac.root)
    assert len(list((workdir / "selection_his").glob("*.json"))) == 1
