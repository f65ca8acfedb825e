"""``python -m bench``: the original program it compares with, and a smoke run end to end.

Timing targets are never asserted here: they belong to a quiet machine, not to a test suite. The
first test to need the original program's pinned environment creates it (about a minute, once per
machine: it is cached under ~/.cache/alphabus).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from bench.baseline import OriginalProgram, Picks
from bench.cli import main, parse_args
from bench.pinned import VENV_ENV
from services.market.sim import SyntheticMarket, write_hour
from shared.bmac import BmacDir
from tests.conftest import REPO, write_config
from tests.reference import article_round


def test_the_original_program_picks_what_the_reference_transcription_picks(tmp_path):
    """bench/original/program.py (pandas 2.2, its own plugin loading and busy-wait loop) against tests/reference.py,
    hour after hour on the simulator, with every file there and with the files arriving: two transcriptions of
    the article that share no code."""
    bmac = BmacDir(tmp_path / "bmac", "1h")
    market = SyntheticMarket(symbols=80, seed=3, history=1100)
    workdir = write_config(tmp_path / "original", bmac.root)
    with OriginalProgram(tmp_path, progress=lambda _: None) as program:
        assert program.versions["pandas"] == "2.2.1" and program.versions["numpy"] == "1.26.4"
        for k in range(2):
            run_time = write_hour(bmac, market, k)
            hour = program.hour(workdir, run_time)
            _, long, short = article_round(bmac.root, run_time)
            assert hour.picks == Picks.of_frames(long, short), run_time
            assert hour.began < hour.selected < hour.finished
            assert (workdir / "select_his" / run_time.strftime("%Y%m%d_%H%M%S_long.csv.zip")).exists()
        # Live: asked first, the program busy-waits for the hour's files as they arrive over half a second.
        program.ask(workdir, market.run_time(2))
        run_time = write_hour(bmac, market, 2, spread_sec=0.5, order_seed=1)
        written = time.perf_counter()
        hour = program.answer()
        assert hour.picks == Picks.of_frames(*article_round(bmac.root, run_time)[1:])
        assert hour.selected > written


@pytest.mark.parametrize("argv, message", [
    (["--factors", "builtin,nope"], "expected some of builtin,cci,pandas"),
    (["--strategy", "examples/two_factor", "--factors", "cci"], "give one of them"),
])
def test_bad_options_get_one_sentence_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_an_environment_that_cannot_be_made_is_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(VENV_ENV, str(tmp_path / "file" / "venv"))  # its parent is a file
    assert main(["--quick", "--rounds", "1", "--replay-rounds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench: cannot create the original program's environment in ") and "file/venv" in err[-1]


@pytest.mark.slow
def test_quick_bench_with_a_user_plugin_prints_a_table_and_a_complete_json_line():
    # A long grace: a round slowed by a busy machine still completes, so its picks must equal the original's.
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--replay-rounds", "2",
                          "--factors", "cci", "--round-grace-sec", "30"],
                         capture_output=True, text=True, timeout=400, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("BENCH_JSON "), lines[-5:]
    result = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    assert {"machine", "code", "config", "scenarios", "replay", "targets", "elapsed_s"} <= set(result)
    assert result["config"]["original"]["pandas"] == "2.2.1"
    assert re.search(r"symbols +factor +shards +mode +original ms", out.stdout) and "total runtime" in out.stdout

    assert [(s["size"], s["factor"], s["shards"], s["error"]) for s in result["scenarios"]] == [
        (200, "cci", 1, None)]
    for scenario in result["scenarios"]:
        assert {"market", "position", "recorder", "factor-0"} <= set(scenario["memory_mb"])
        assert scenario["stack_memory_mb"]["vmhwm_sum"] > 0
        for mode in ("burst", "live"):
            figures = scenario[mode]
            assert figures["stack_ms"]["n"] == 1 and figures["original_ms"]["n"] == 1
            assert figures["ratio"] is not None
            assert {"market", "position", "recorder", "factor-0", "stack"} <= set(figures["cpu_ms_per_round"])
            assert figures["selection_mismatches"] == [] and figures["incomplete_rounds"] == []
        assert scenario["burst"]["original_hour_ms"]["median"] >= scenario["burst"]["original_ms"]["median"]

    replay = result["replay"]
    if "skipped" not in replay:  # the real data set is optional
        assert replay["error"] is None and replay["rounds"] == 2 and replay["rounds_per_s"] > 0
        assert replay["mismatches"] == []
    assert all({"target", "value", "met"} <= set(t) for t in result["targets"])
