"""Hold periods, offsets and several-factor strategies through the real four-service stack.

Each recorded round is checked against ``tests/strategy_reference.py`` (an independent pandas
reading of issue 9's semantics) fed with the recorded ``factor_his`` frames and the exchange's lot
sizes; the offsets' books are checked hour to hour against the rule "rebalance on your hours, hold
exactly otherwise", and a position service killed with SIGKILL mid-run must change nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

import pandas as pd
import pytest

from services.market.sim import SyntheticMarket, write_hour
from services.recorder.files import history_paths
from tests.reference import article_config
from tests.stack import StackRun
from tests.strategy_reference import reference_hours

SYMBOLS = 48
HOURS = 14
PERIOD = 6


def _run(stack: StackRun, market: SyntheticMarket, hours: range) -> None:
    for k in hours:
        stack.wait_for_round(write_hour(stack.bmac, market, k))


def _recorded(workdir, run_time: datetime) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    paths = history_paths(workdir, run_time)
    read = lambda p: pd.read_csv(p)  # noqa: E731 (pandas 3 reads floats back exactly by default)
    return (json.loads(paths["selection"].read_text()), read(paths["factor"]), read(paths["long"]),
            read(paths["short"]))


def _lots(market: SyntheticMarket) -> dict[str, Decimal]:
    exg = market.exginfo()
    return dict(zip(exg["symbol"], exg["face_value"], strict=True))


def _assert_equals_reference(workdir, market: SyntheticMarket, cfg: dict, hours: range) -> list[dict]:
    """Every recorded round equals the reference walked over the recorded factor tables; returns the selections."""
    recorded = {market.run_time(k): _recorded(workdir, market.run_time(k)) for k in hours}
    expected = reference_hours({t: r[1] for t, r in recorded.items()}, _lots(market), cfg)
    for t, (sel, _, long, short) in recorded.items():
        want = expected[t]
        what = t.isoformat()
        assert [p["symbol"] for p in sel["long"]] == want.long["symbol"].tolist(), f"{what}: long"
        assert [p["symbol"] for p in sel["short"]] == want.short["symbol"].tolist(), f"{what}: short"
        assert [p["position"] for p in sel["long"]] == [str(p) for p in want.long["position"]], f"{what}: long pos"
        assert [p["position"] for p in sel["short"]] == [str(p) for p in want.short["position"]], f"{what}: short"
        assert long["symbol"].tolist() == want.long["symbol"].tolist(), f"{what}: select_his long"
        assert short["symbol"].tolist() == want.short["symbol"].tolist(), f"{what}: select_his short"
        assert sel["targets"] == {s: str(q) for s, q in want.targets.items()}, f"{what}: targets"
        assert {int(o): b["targets"] for o, b in sel["offsets"].items()} == {
            o: {s: str(q) for s, q in book.items()} for o, book in want.offsets.items()}, f"{what}: offsets"
        assert sorted(int(o) for o, b in sel["offsets"].items() if b["rebalanced"]) == want.rebalanced, what
    return [recorded[t][0] for t in sorted(recorded)]


def _assert_offsets_step(selections: list[dict]) -> None:
    """Each offset rebalances exactly on its hours (taking the round's picks) and holds exactly otherwise."""
    for before, now in pairwise(selections):
        hour = int(datetime.fromisoformat(now["run_time"]).timestamp()) // 3600
        fresh = {**{p["symbol"]: p["position"] for p in now["long"]},
                 **{p["symbol"]: str(-Decimal(p["position"])) for p in now["short"]}}
        assert sorted(now["offsets"], key=int) == [str(o) for o in range(PERIOD)]
        for o, book in now["offsets"].items():
            if (hour - int(o)) % PERIOD == 0:
                assert book["rebalanced"] and book["since"] == now["run_time"] and book["targets"] == fresh
            else:
                assert not book["rebalanced"] and book == {**before["offsets"][o], "rebalanced": False}
        total: dict[str, Decimal] = {}
        for book in now["offsets"].values():
            for s, q in book["targets"].items():
                total[s] = total.get(s, Decimal(0)) + Decimal(q)
        assert {s: Decimal(q) for s, q in now["targets"].items()} == total
        assert now["previous"] == before["targets"] and now["hold_period"] == f"{PERIOD}H"


@pytest.mark.slow
def test_six_offsets_rebalance_on_their_hours_and_a_killed_position_service_changes_nothing(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=31)
    overrides = {"hold_period": f"{PERIOD}H", "capital_usdt": 6000}
    cfg = article_config("unused", **overrides)
    with StackRun(tmp_path / "calm", **overrides) as calm:
        _run(calm, market, range(HOURS))
    with StackRun(tmp_path / "rough", **overrides) as rough:
        _run(rough, market, range(HOURS // 2))
        rough.kill("position")
        rough.restart("position")
        _run(rough, market, range(HOURS // 2, HOURS))
    calm_sels = _assert_equals_reference(calm.workdir, market, cfg, range(HOURS))
    rough_sels = _assert_equals_reference(rough.workdir, market, cfg, range(HOURS))
    for sels in (calm_sels, rough_sels):
        _assert_offsets_step(sels)
        cold = sels[0]["offsets"]  # the first round: one offset trades, the others hold nothing yet
        assert sum(b["rebalanced"] for b in cold.values()) == 1
        assert all(b["targets"] == {} and b["since"] is None for b in cold.values() if not b["rebalanced"])
        assert all(b["since"] is not None for b in sels[PERIOD]["offsets"].values())  # all warm after a period
        assert any(sel["targets"] != sel["previous"] for sel in sels[1:])
    for calm_sel, rough_sel in zip(calm_sels, rough_sels, strict=True):
        for field in ("long", "short", "targets", "offsets", "previous", "changes", "previous_run_time"):
            assert calm_sel[field] == rough_sel[field], (calm_sel["run_time"], field)


TWO_FACTORS = {
    "factor": [["MtmAtrMean", True, 120, 0, 1], ["MtmAtrMean", False, 48, 0, 0.5]],
    "pre_filters": [["ChgPctMax", 24, "val: <= 0.3"], ["Volume", 24, "pct:>0.1", True]],
    "post_filters": [["ChgPctMax", 48, "rank:<=30"]],  # a filter only a rule names: computed for it
    "short_post_filters": [["Volume", 24, "rank:<=25", False]],
    "long_num": 0.1,
    "short_num": 0.25,
}


def test_a_two_factor_strategy_with_rules_and_fractions_equals_the_reference(tmp_path):
    market = SyntheticMarket(symbols=SYMBOLS, seed=32)
    hours = range(4)
    with StackRun(tmp_path, **TWO_FACTORS) as stack:
        _run(stack, market, hours)
    cfg = article_config("unused", **TWO_FACTORS)
    sels = _assert_equals_reference(stack.workdir, market, cfg, hours)
    for k, sel in zip(hours, sels, strict=True):
        _, factors, long, short = _recorded(stack.workdir, market.run_time(k))
        assert sel["factor_column"] == "composite" and sel["ranked_by"] == {"long": "composite", "short": "composite"}
        assert sel["factor_columns"] == ["MtmAtrMean_bh_120", "MtmAtrMean_bh_48", "composite"]
        assert {"composite", "ChgPctMax_fl_48"} <= set(factors.columns)  # factor_his: composite and rule column
        assert "composite" in long.columns and "composite" in short.columns
        for pick in [*sel["long"], *sel["short"]]:
            assert set(pick["factors"]) == {"MtmAtrMean_bh_120", "MtmAtrMean_bh_48", "composite"}
            assert pick["factor"] == pick["factors"]["composite"]
        ranked = factors.set_index("symbol")["composite"]
        assert [p["factor"] for p in sel["long"]] == ranked[[p["symbol"] for p in sel["long"]]].tolist()
        assert sel["offsets"].keys() == {"0"} and sel["offsets"]["0"]["rebalanced"]
    # the rules and fractions are not vacuous: without the post rules some round picks more
    loose = {k: v for k, v in cfg.items() if not k.endswith("post_filters")}
    frames = {market.run_time(k): _recorded(stack.workdir, market.run_time(k))[1] for k in hours}
    unfiltered = reference_hours(frames, _lots(market), loose)
    assert any(len(unfiltered[t].long) + len(unfiltered[t].short) > len(s["long"]) + len(s["short"])
               for t, s in zip(sorted(frames), sels, strict=True))
    assert all(len(s["long"]) >= 1 for s in sels)  # a fraction of a non-empty pool is at least one coin
