"""Smoke test of ``python -m bench``: the command runs end to end and its JSON line has every figure.

Timing targets are never asserted here: they belong to a quiet machine, not to a test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_quick_bench_prints_a_table_and_a_complete_json_line():
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--replay-rounds", "2"],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("BENCH_JSON "), lines[-5:]
    result = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    assert {"machine", "code", "config", "scenarios", "replay", "targets", "elapsed_s"} <= set(result)
    assert "symbols  shards  mode" in out.stdout and "total runtime" in out.stdout

    (scenario,) = result["scenarios"]
    assert (scenario["size"], scenario["shards"], scenario["error"]) == (200, 1, None)
    assert {"market", "position", "recorder", "factor-0"} <= set(scenario["memory_mb"])
    assert scenario["stack_memory_mb"]["vmhwm_sum"] > 0
    for mode in ("burst", "live"):
        figures = scenario[mode]
        assert figures["stack_ms"]["n"] == 1 and figures["baseline_ms"]["n"] == 1
        assert figures["ratio"] is not None
        assert {"market", "position", "recorder", "factor-0", "stack"} <= set(figures["cpu_ms_per_round"])
        assert figures["selection_mismatches"] == [] and figures["incomplete_rounds"] == []
    assert {"baseline_symbol_ms", "baseline_cross_section_ms", "baseline_queued_ms"} <= set(scenario["live"])

    replay = result["replay"]
    if "skipped" not in replay:  # the real data set is optional
        assert replay["error"] is None and replay["rounds"] == 2 and replay["rounds_per_s"] > 0
        assert replay["mismatches"] == []
    assert all({"target", "value", "met"} <= set(t) for t in result["targets"])
