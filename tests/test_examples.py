"""The three example strategies in ``examples/``, end to end: the real four-service stack against the references.

For each example, consecutive hours on the simulator and on the real data set go through the four
services as processes; the recorded rounds must equal ``tests/strategy_reference.reference_hours`` fed
with the recorded factor_his frames and the exginfo lot sizes (selections and positions exact,
numbers to 1e-9), and, for the article's example, the article's own program. The factor values of the
two-factor example are recomputed here from the candles with plain pandas. Invalid strategies stop
``alphabus once`` at start with every bad field named; ``alphabus demo --strategy`` runs an example.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.market.sim import ReplayMarket, SyntheticMarket, write_hour
from services.recorder.files import history_paths
from tests.conftest import REPO, write_config
from tests.reference import as_written, assert_same_round, assert_text_frames_match, chg_pct_max, mtm_atr_mean, volume
from tests.stack import StackRun
from tests.strategy_reference import reference_hours

EXAMPLES = REPO / "examples"
NAMES = ["article", "two_factor", "funding_6h"]
SIM_HOURS = {"article": 3, "two_factor": 4, "funding_6h": 13}  # funding_6h: more than 2 x its 6-hour period
REAL_HOURS = {"article": 3, "two_factor": 3, "funding_6h": 13}
REAL_FIRST = {"article": 3000, "two_factor": 3200, "funding_6h": 4070}  # 4070: 2026-03-02 00:00 UTC, funding known


def example(name: str) -> dict:
    """The example's factor_calc.json as a user would copy it."""
    return json.loads((EXAMPLES / name / "factor_calc.json").read_text())


def stack_keys(name: str) -> dict:
    """Every key of the example except ``bmac_dir``, which the test's stack points at its own directory."""
    return {k: v for k, v in example(name).items() if k != "bmac_dir"}


# ---------------------------------------------------------------------------------------------
# The recorded rounds, read back

def recorded_factors(workdir: Path, run_time: datetime, universe: list[str]) -> pd.DataFrame:
    """factor_his of the round as the floats it wrote, rows in universe (exginfo) order, as the reference needs."""
    df = pd.read_csv(history_paths(workdir, run_time)["factor"])
    order = {s: i for i, s in enumerate(universe)}
    assert set(df["symbol"]) <= set(order), f"{run_time}: factor_his has symbols outside the universe"
    return df.iloc[np.argsort([order[s] for s in df["symbol"]], kind="stable")].reset_index(drop=True)


def lot_sizes(market) -> dict[str, Decimal]:
    exg = market.exginfo()
    return {s: Decimal(str(v)) for s, v in zip(exg["symbol"], exg["face_value"], strict=True) if v is not None}


def decimals(mapping: dict) -> dict[str, Decimal]:
    """Signed targets without zero entries (a coin held long by one offset and short by another nets out)."""
    return {s: Decimal(str(v)) for s, v in mapping.items() if Decimal(str(v)) != 0}


def side_pairs(frame: pd.DataFrame) -> list[tuple[str, Decimal]]:
    return [(str(s), Decimal(str(p))) for s, p in zip(frame["symbol"], frame["position"], strict=True)]


def assert_rounds_match_reference(workdir: Path, market, run_times: list[datetime], cfg: dict) -> None:
    """Every recorded round equals the reference walked over the recorded factor frames, hour after hour."""
    universe = list(market.exginfo()["symbol"])
    frames = {t: recorded_factors(workdir, t, universe) for t in run_times}
    ref = reference_hours(frames, lot_sizes(market), cfg)
    period = int(cfg.get("hold_period", "1H")[:-1]) * (24 if cfg.get("hold_period", "1H")[-1] in "dD" else 1)
    offsets = cfg.get("offsets", list(range(period)))
    previous: dict[str, Decimal] = {}
    picked = 0
    for t in run_times:
        sel = json.loads(history_paths(workdir, t)["selection"].read_text())
        want = ref[t]
        what = f"{t.isoformat()}"
        # Selections and positions exact, in the article's order (longs: the tail, shorts: the head).
        assert [(p["symbol"], Decimal(p["position"])) for p in sel["long"]] == side_pairs(want.long), f"{what} long"
        assert [(p["symbol"], Decimal(p["position"])) for p in sel["short"]] == side_pairs(want.short), f"{what} short"
        picked += len(sel["long"]) + len(sel["short"])
        # The recorded select_his files: every column the reference has, to the character or to 1e-9.
        for side, frame in (("long", want.long), ("short", want.short)):
            recorded = pd.read_csv(history_paths(workdir, t)[side], dtype=str, keep_default_na=False)
            expected = as_written(frame)
            common = [c for c in expected.columns if c in recorded.columns]
            needed = {"symbol", "position", "pos_val", *[c for c in expected.columns if "_bh_" in c or
                                                         c.endswith("composite")]}
            assert needed <= set(common), f"{what} {side}: select_his lacks {needed - set(common)}"
            assert_text_frames_match(recorded[common], expected[common], f"{what} {side}")
            # Each pick's factor values in the message are the recorded ones.
            for pick, (_, row) in zip(sel[side], frame.iterrows(), strict=True):
                for col, value in pick["factors"].items():
                    np.testing.assert_allclose(value, float(row[col]), rtol=1e-9, err_msg=f"{what} {side} {col}")
        # Offsets: who rebalanced, what each holds, and their exact sum.
        hour = int(t.timestamp()) // 3600
        assert sel["hold_period"] == cfg.get("hold_period", "1H")
        assert sorted(map(int, sel["offsets"])) == sorted(offsets), what
        for o in offsets:
            book = sel["offsets"][str(o)]
            assert book["rebalanced"] == ((hour - o) % period == 0) == (o in want.rebalanced), f"{what} offset {o}"
            assert decimals(book["targets"]) == decimals(want.offsets[o]), f"{what} offset {o} targets"
        assert decimals(sel["targets"]) == decimals(want.targets), f"{what} summed targets"
        targets = decimals(sel["targets"])
        moved = {s: targets.get(s, Decimal(0)) - previous.get(s, Decimal(0)) for s in {*targets, *previous}}
        assert decimals(sel["changes"]) == decimals(moved), f"{what} changes"  # the first round: from nothing
        previous = targets
    assert picked > 0, "no round picked anything: the comparison proved nothing"


def assert_offsets_hold_between_rebalances(workdir: Path, run_times: list[datetime]) -> None:
    """Read from the recorded rounds alone: an offset's contracts change only on its own hours."""
    sels = [json.loads(history_paths(workdir, t)["selection"].read_text()) for t in run_times]
    rebalances = 0
    for before, after in itertools.pairwise(sels):
        for o, book in after["offsets"].items():
            if book["rebalanced"]:
                rebalances += 1
                assert book["since"] is not None and datetime.fromisoformat(book["since"]) == \
                    datetime.fromisoformat(after["run_time"])
            else:
                assert book["targets"] == before["offsets"][o]["targets"], f"{after['run_time']} offset {o} moved"
                assert book["since"] == before["offsets"][o]["since"]
    assert rebalances >= len(sels[0]["offsets"]), "some offset never rebalanced"


def run_hours(stack: StackRun, market, hours: int, each=None) -> list[datetime]:
    """Write hours 0..hours-1 and wait for each round; ``each(run_time)`` runs while that hour's files are there."""
    run_times = []
    for k in range(hours):
        run_time = write_hour(stack.bmac, market, k)
        selection = stack.wait_for_round(run_time)
        assert selection["coverage"]["missing"] == [] and not selection["incomplete"], run_time
        if each is not None:
            each(run_time)
        run_times.append(run_time)
    return run_times


# ---------------------------------------------------------------------------------------------
# The factor values, recomputed from the candles

def assert_two_factor_values(workdir: Path, market, run_times: list[datetime], cfg: dict) -> None:
    """MtmAtrMean via the article's transcription, PctChange via pct_change, the filters likewise: to 1e-9."""
    exg = set(market.exginfo()["symbol"])
    assert [f[0] for f in cfg["factor"]] == ["MtmAtrMean", "PctChange"]
    (_, _, mtm_n, _, _), (_, _, pct_n, _, _) = cfg["factor"]
    for k, t in enumerate(run_times):
        candles = market.candles(k)
        recorded = pd.read_csv(history_paths(workdir, t)["factor"])
        computed = {s: df for s, df in candles.items() if s in exg and len(df) >= cfg["min_candle_num"]}
        assert set(recorded["symbol"]) == set(computed), f"{t}: factor_his symbols"
        rows = []
        for symbol in recorded["symbol"]:
            df = computed[symbol]
            rows.append([mtm_atr_mean(df, mtm_n).iloc[-1], df["close"].pct_change(pct_n).iloc[-1],
                         chg_pct_max(df, 24).iloc[-1], volume(df, 24).iloc[-1]])
        expected = np.array(rows, dtype=float)
        columns = [f"MtmAtrMean_bh_{mtm_n}", f"PctChange_bh_{pct_n}", "ChgPctMax_fl_24", "Volume_fl_24"]
        np.testing.assert_allclose(recorded[columns].to_numpy(float), expected, rtol=1e-9, atol=0, equal_nan=True,
                                   err_msg=f"{t}: factor values")
        assert np.isfinite(expected[:, :2]).all(axis=1).sum() > 20, "too few finite factor rows to mean anything"


# ---------------------------------------------------------------------------------------------
# The examples on the simulator and on the real data set

def _run_example(tmp_path: Path, name: str, market, hours: int) -> None:
    cfg = example(name)
    with StackRun(tmp_path, **stack_keys(name)) as stack:
        article = (lambda t: assert_same_round(stack.workdir, t, bmac_dir=stack.bmac.root)) if name == "article" \
            else None  # the article's program reads the crawler's files of the hour, so right after each hour
        run_times = run_hours(stack, market, hours, article)
        assert_rounds_match_reference(stack.workdir, market, run_times, cfg)
        if name == "two_factor":
            assert_two_factor_values(stack.workdir, market, run_times, cfg)
        if name == "funding_6h":
            assert_offsets_hold_between_rebalances(stack.workdir, run_times)
            frames = [pd.read_csv(history_paths(stack.workdir, t)["factor"]) for t in run_times]
            funding = pd.concat(frames)["FundingRate_fl_24"]
            assert funding.notna().all() and (funding != 0).any(), "the funding column is missing or all zero"


@pytest.mark.parametrize("name", NAMES)
def test_example_on_the_simulated_market_equals_the_reference(tmp_path, capfd, name):
    _run_example(tmp_path, name, SyntheticMarket(symbols=80, seed=13), SIM_HOURS[name])
    log = capfd.readouterr().err  # the services' log lines (they inherit the test's stderr)
    assert "factor rows by the built-in kernels (fast path)" in log, "built-in factors fell back to the plugins"


@pytest.mark.parametrize("name", NAMES)
def test_example_on_real_data_equals_the_reference(tmp_path, real_data, name):
    market = ReplayMarket(real_data, first_hour=REAL_FIRST[name])
    if name == "funding_6h":
        assert market.run_time(0) == datetime(2026, 3, 2, tzinfo=UTC)
    _run_example(tmp_path, name, market, REAL_HOURS[name])


def test_examples_are_the_documented_strategies():
    """What each README promises is what its file says."""
    article, two, funding = (example(n) for n in NAMES)
    assert {k: v for k, v in article.items() if k != "bmac_dir"} == {
        "interval": "1h", "bmac_expire_sec": 30, "factor": ["MtmAtrMean", True, 120, 0, 1],
        "filters": [["ChgPctMax", 24], ["Volume", 24]], "long_num": 2, "short_num": 8, "min_candle_num": 999,
        "capital_usdt": 1000, "debug": False}
    assert len(two["factor"]) == 2 and two["post_filters"] and isinstance(two["long_num"], float)
    assert funding["hold_period"] == "6H" and funding["offsets"] == list(range(6))
    assert any(rule[0] == "FundingRate" for key in ("pre_filters", "long_pre_filters", "short_pre_filters")
               for rule in funding.get(key, []))
    for name in NAMES:
        assert not Path(example(name)["bmac_dir"]).is_absolute(), f"{name}: bmac_dir should be relative"
        assert (EXAMPLES / name / "README.md").is_file()


def test_the_readme_table_lists_every_config_key():
    """One table, every key of SelectorConfig (article keys and extensions) with a default and a meaning."""
    from shared.config import SelectorConfig

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Configuration"):text.index("## Plugins")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {key.strip(" `") for row in rows for key in row.split("|")[1].split(",")}
    assert set(SelectorConfig.model_fields) <= listed, set(SelectorConfig.model_fields) - listed
    assert all(len(row.split("|")) == 6 and all(cell.strip() for cell in row.split("|")[1:5]) for row in rows)


def test_bench_compares_with_the_original_program_only_for_the_article():
    from bench.cli import original_runs, parse_args, with_grace

    (article,) = parse_args(["--quick", "--strategy", str(EXAMPLES / "article")]).factors
    assert article.config == {} and original_runs(article)
    args = parse_args(["--quick", "--strategy", str(EXAMPLES / "two_factor"), "--round-grace-sec", "5"])
    (two,) = args.factors
    assert not original_runs(two)
    assert with_grace(two, args).config == {k: v for k, v in stack_keys("two_factor").items() if k in (
        "factor", "pre_filters", "post_filters", "long_num", "short_num")} | {"round_grace_sec": 5.0}
    args = parse_args(["--factors", "builtin,cci,pandas", "--round-grace-sec", "5"])
    assert all(original_runs(with_grace(f, args)) for f in args.factors)


# ---------------------------------------------------------------------------------------------
# Invalid strategies and the demo

BAD = {
    "hold_period": ({"hold_period": "6X"}, ["hold_period", "unknown unit 'X'", 'use H for hours or D for days']),
    "offsets": ({"hold_period": "6H", "offsets": [0, 6]}, ["offsets", "6 not within", "use offsets from 0 to 5"]),
    "filter": ({"pre_filters": [["Volume", 24, "rank<=60", False]]},
               ["pre_filters.0.2", '"rank<=60" does not parse', 'write "how:OPvalue"']),
    "weights": ({"factor": [["MtmAtrMean", True, 120, 0, 0], ["PctChange", False, 24, 0, 0]]},
                ["factor", "weights sum to zero", "give at least one factor a positive weight"]),
    "fraction": ({"short_num": 1.5}, ["short_num", "(0, 1]", "not 1.5", "such as 0.1"]),
}


def _once(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphabus", "once", str(workdir)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.mark.parametrize("case", list(BAD))
def test_an_invalid_strategy_stops_once_at_start_naming_the_field(tmp_path, case):
    overrides, said = BAD[case]
    out = _once(write_config(tmp_path / "work", tmp_path / "bmac", **overrides))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    for text in said:
        assert text in out.stderr, f"{text!r} not in {out.stderr!r}"
    assert not (tmp_path / "work" / "selection_his").exists()


def test_every_bad_field_is_named_at_once(tmp_path):
    overrides = {k: v for case in ("hold_period", "filter", "weights", "fraction") for k, v in BAD[case][0].items()}
    out = _once(write_config(tmp_path / "work", tmp_path / "bmac", **overrides))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    problems = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 4, out.stderr
    for case in ("hold_period", "filter", "weights", "fraction"):
        assert BAD[case][1][0] in out.stderr


def test_demo_runs_the_two_factor_example(tmp_path):
    out = subprocess.run([sys.executable, "-m", "alphabus", "demo", "--strategy", "examples/two_factor",
                          "--rounds", "2", "--hour-seconds", "1.5"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "strategy: examples/two_factor" in out.stdout
    assert out.stdout.count("\nround ") == 2 and "composite" in out.stdout
    assert "2 round(s)" in out.stdout


def test_demo_names_the_strategy_file_when_it_is_invalid(tmp_path):
    bad = tmp_path / "bad"
    write_config(bad, "../elsewhere", hold_period="2W")
    out = subprocess.run([sys.executable, "-m", "alphabus", "demo", "--strategy", str(bad)], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(bad / "factor_calc.json") in out.stderr and "hold_period" in out.stderr
