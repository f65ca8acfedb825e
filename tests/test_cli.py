"""The command line: help everywhere, the demo on both markets, the stack's clean shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from alphabus.cli import subcommands
from alphabus.launcher import loopback_endpoints
from services.market.sim import SyntheticMarket, write_hour
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
    assert out.stdout.count("TRADES this hour") == 2 and out.stdout.count("EXPOSURE gross") == 2, out.stdout
    assert " pool " in out.stdout and "after filters" in out.stdout
    short_rows = [r for r in out.stdout.split("SHORT (8)")[1].split("EXPOSURE")[0].splitlines()[2:] if r.strip()]
    assert len(short_rows) == 8 and all(row.split()[3].startswith("-") for row in short_rows), short_rows  # signed
    assert "alphabus-demo-" not in out.stdout  # its files are gone: no path to them is printed


def test_every_option_has_a_sentence_and_its_default():
    from alphabus.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, parser in commands.items():
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"alphabus {name} {action.option_strings[0]} has no help"
            if action.default not in (None, False):
                shown = parser._get_formatter()._get_help_string(action)
                assert "default" in shown.lower(), f"alphabus {name} {action.option_strings[0]}: no default"
    for argv, words in ((["stack", "--help"], ["--clock", "(default: auto)", "--factor-shards", "(default: 1)"]),
                        (["demo", "--help"], ["--rounds", "(default: 3)"]), (["sim", "--help"], ["--seed", "7"])):
        out = _alphabus(*argv)
        assert out.returncode == 0 and all(w in out.stdout for w in words), out.stdout


def test_alphabus_help_speaks_to_users():
    out = _alphabus("--help")
    assert out.returncode == 0
    for line in ("alphabus demo", "alphabus stack WORKDIR", "alphabus once WORKDIR", "alphabus dashboard WORKDIR"):
        assert line in out.stdout, out.stdout
    assert "subcommand" not in out.stdout and "imports" not in out.stdout


def test_stack_picks_the_clock_by_what_the_crawler_writes(tmp_path):
    from datetime import datetime

    from alphabus.launcher import choose_clock
    from shared.config import load_config

    bmac = BmacDir(tmp_path / "bmac", "1h")
    cfg = load_config(write_config(tmp_path / "work", bmac.root))
    now = datetime.fromisoformat("2026-03-01T10:20:00+08:00")
    assert choose_clock(cfg, "auto", now) == "wall"  # nothing written yet
    market = SyntheticMarket(symbols=3, seed=1)  # the simulator writes 2024's hours
    write_hour(bmac, market, 0)
    assert choose_clock(cfg, "auto", now) == "follow"
    assert choose_clock(cfg, "wall", now) == "wall"
    assert choose_clock(cfg, "auto", market.run_time(0).replace(minute=20)) == "wall"  # a crawler on the hour


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


# -- every user mistake: one sentence on stderr, exit code 2, no traceback ---------------------------

ALPHABUS = Path(sys.executable).with_name("alphabus")  # the installed console script, as a user runs it


def _alphabus(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
    return subprocess.run([*prefix, str(ALPHABUS), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _assert_one_sentence(out, *fragments: str) -> str:
    """Exit 2, no traceback, and the last stderr line (argparse prints its usage above) says it."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


@pytest.fixture
def workdir(tmp_path) -> Path:
    return write_config(tmp_path / "work", tmp_path / "bmac")


ARGUMENT_MISTAKES = [
    (["once", "{W}", "--run-time", "yesterday"], ["--run-time", "'yesterday' is not an ISO 8601 time"]),
    (["once", "{W}", "--run-time", "2024-01-01T08:30:00"], ["not on a 1h boundary in Asia/Hong_Kong",
                                                            "2024-01-01T08:00:00+08:00"]),
    (["market", "{W}", "--run-time", "2024-01-01T08:00:00+05:30"], ["not on a 1h boundary"]),
    (["factor", "{W}", "--shard", "abc"], ["--shard", "'abc' is not like '0/2'"]),
    (["factor", "{W}", "--shard", "3/2"], ["--shard", "'3/2'"]),
    (["factor", "{W}", "--shard", "0/0"], ["--shard", "'0/0'"]),
    (["factor", "{W}", "--shard", "1/300"], ["--shard", "256"]),
    (["stack", "{W}", "--factor-shards", "0"], ["--factor-shards", "need 1 to 256"]),
    (["once", "{W}", "--factor-shards", "-3"], ["--factor-shards", "need 1 to 256"]),
    (["demo", "--factor-shards", "0"], ["--factor-shards"]),
    (["market", "{W}", "--replay", "{T}/no-such-data"], ["--replay", "no-such-data does not exist"]),
    (["demo", "--replay", "{T}"], ["--replay", "has no candles_top100.parquet"]),
    (["position", "{T}/nowhere"], ["work directory", "nowhere does not exist"]),
    (["recorder", "{T}"], ["has no factor_calc.json"]),
    (["stack", "{T}/bmac"], ["does not exist"]),
]


@pytest.mark.parametrize(("args", "fragments"), ARGUMENT_MISTAKES, ids=[" ".join(a) for a, _ in ARGUMENT_MISTAKES])
def test_every_argument_mistake_is_one_sentence_and_exit_code_2(workdir, tmp_path, args, fragments):
    args = [a.replace("{W}", str(workdir)).replace("{T}", str(tmp_path)) for a in args]
    _assert_one_sentence(_alphabus(*args), *fragments)


def test_a_replay_start_beyond_the_data_is_one_sentence(tmp_path, real_data):
    _assert_one_sentence(_alphabus("sim", str(tmp_path / "bmac"), "--replay", str(real_data), "--first-hour", "99999",
                                   "--hours", "1"), "--first-hour 99999 is outside", "use 1 to")


def test_a_bad_shard_in_the_environment_is_named(workdir):
    last = _assert_one_sentence(_alphabus("factor", str(workdir), env={"ALPHABUS_SHARD": "2/1"}), "ALPHABUS_SHARD")
    assert "'2/1'" in last


def test_a_config_with_wrong_json_types_names_each_field(workdir):
    raw = json.loads((workdir / "factor_calc.json").read_text())
    raw.update(long_num="2", capital_usdt="1000", debug=1)
    raw["factor"][1] = "yes"
    (workdir / "factor_calc.json").write_text(json.dumps(raw))
    out = _alphabus("position", str(workdir))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    for line in ('long_num: must be a whole number of coins such as 2 or a fraction of the pool in (0, 1] such as 0.1, '
                 'not "2"', 'capital_usdt: must be a JSON number',
                 "debug: must be JSON true or false, not 1", 'factor.reverse: must be JSON true or false, not "yes"'):
        assert line in out.stderr, out.stderr


@pytest.fixture
def held_port():
    """A port some other program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("command", "var"), [("market", "ALPHABUS_MARKET_PUB"), ("position", "ALPHABUS_FACTOR_IN"),
                                              ("position", "ALPHABUS_SNAPSHOT")])
def test_a_service_whose_port_is_taken_names_the_endpoint_and_its_variable(workdir, held_port, command, var):
    env = {**loopback_endpoints(), var: held_port}
    last = _assert_one_sentence(_alphabus(command, str(workdir), env=env), f"cannot bind {held_port} ({var})",
                                f"set {var} to a free endpoint")
    assert "already in use" in last


def test_a_malformed_endpoint_is_named(workdir):
    env = {**loopback_endpoints(), "ALPHABUS_SELECTION_PUB": "tcp://127.0.0.1:http"}
    _assert_one_sentence(_alphabus("position", str(workdir), env=env),
                         "tcp://127.0.0.1:http (ALPHABUS_SELECTION_PUB)", "set ALPHABUS_SELECTION_PUB to")


def test_the_stack_refuses_a_taken_explicit_endpoint_at_once(workdir, held_port):
    env = {**loopback_endpoints(), "ALPHABUS_SELECTION_PUB": held_port}
    started = time.monotonic()
    out = _alphabus("stack", str(workdir), env=env)
    _assert_one_sentence(out, f"{held_port} (ALPHABUS_SELECTION_PUB) is already in use")
    assert time.monotonic() - started < 20
    assert "stack running" not in out.stderr


@pytest.fixture
def read_only_workdir():
    """A work directory its user cannot write to. Root writes anywhere, so then the command runs as nobody."""
    root = Path(tempfile.mkdtemp(prefix="alphabus-ro-"))
    workdir = write_config(root / "work", root / "bmac")
    os.chmod(root, 0o755)
    os.chmod(workdir, 0o555)
    prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups") if os.geteuid() == 0 else ()
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only for the command")
    yield workdir, prefix
    os.chmod(workdir, 0o755)
    shutil.rmtree(root)


@pytest.mark.parametrize("command", ["position", "recorder", "stack", "once", "paper"])
def test_a_read_only_work_directory_is_refused_by_the_commands_that_write_there(read_only_workdir, command):
    workdir, prefix = read_only_workdir
    probe = subprocess.run([*prefix, "touch", str(workdir / "x")], capture_output=True)
    assert probe.returncode != 0, "the work directory is writable: this test would prove nothing"
    out = _alphabus(command, str(workdir), prefix=prefix, env={"ALPHABUS_SECURITY": "none"})
    _assert_one_sentence(out, f"work directory {workdir} is read-only")
