"""The strategy core (services/position/strategy.py) against the plain reference and the article's program."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.market.sim import ReplayMarket, SyntheticMarket, write_hour
from services.position import strategy as core
from shared.bmac import BmacDir
from shared.config import ConfigError
from shared.strategy import STRATEGY_KEYS, Strategy, parse_rule, parse_strategy
from tests import reference as ref
from tests.strategy_reference import reference_hours

FACTORS = ["F1", "F2", "F3"]  # columns F1_bh_1 ...
FILTERS = ["G1", "G2", "G3"]  # columns G1_fl_24 ...; G3 is not in `filters`: only rules name it
LOTS = [Decimal("0.001"), Decimal("0.1"), Decimal("1"), Decimal("10")]
OPS = [">=", "<=", ">", "<", "==", "!="]


# ---------------------------------------------------------------------------------------------
# Generated strategies and pools

@st.composite
def factor_lists(draw, min_size: int = 1):
    names = draw(st.lists(st.sampled_from(FACTORS), min_size=min_size, max_size=3, unique=True))
    weights = draw(st.lists(st.sampled_from([0, 1, 2, 0.5, 3]), min_size=len(names), max_size=len(names)))
    if sum(weights) == 0:
        weights[0] = 1
    return [[n, draw(st.booleans()), 1, 0, w] for n, w in zip(names, weights, strict=True)]


@st.composite
def rules(draw, max_size: int):
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        how = draw(st.sampled_from(["rank", "pct", "val"]))
        value = {"rank": st.integers(1, 40).map(str), "pct": st.sampled_from(["0.1", "0.25", "0.5", ".8", "1"]),
                 "val": st.sampled_from(["0", "2", "4.5", "7", "-1", "1e1"])}[how]
        text = f"{how}:{draw(st.sampled_from([*OPS, '>=', '<=', '>=', '<=']))}{draw(value)}"  # keeping rules likelier
        if draw(st.booleans()):
            text = text.replace(":", " : ")  # whitespace is ignored
        rule = [draw(st.sampled_from(FILTERS)), 24, text]
        if draw(st.booleans()):
            rule.append(draw(st.booleans()))
        out.append(rule)
    return out


COUNTS = st.one_of(st.integers(0, 6), st.sampled_from([0.05, 0.1, 0.25, 0.3, 0.5, 1.0]))


@st.composite
def configs(draw, symbols: list[str]):
    factor = draw(factor_lists())
    cfg = {
        "factor": factor[0] if len(factor) == 1 and draw(st.booleans()) else factor,
        "filters": [["G1", 24], ["G2", 24]],
        "long_num": draw(COUNTS), "short_num": draw(COUNTS), "capital_usdt": draw(st.sampled_from([1000, 777.7])),
        "hold_period": draw(st.sampled_from(["1H", "2H", "3h", "6H", "1D"])),
    }
    if draw(st.booleans()):
        cfg["long_factors"] = draw(factor_lists())
    if draw(st.booleans()):
        cfg["short_factors"] = draw(factor_lists())
    for key in core_rule_keys():
        if draw(st.integers(0, 3)) == 0 or (key == "pre_filters" and draw(st.booleans())):
            cfg[key] = draw(rules(2))
    period = int(cfg["hold_period"][:-1]) * (24 if cfg["hold_period"].endswith("D") else 1)
    if draw(st.booleans()):
        cfg["offsets"] = draw(st.lists(st.integers(0, period - 1), min_size=1, max_size=period, unique=True))
    if symbols and draw(st.booleans()):
        cfg["black_list"] = draw(st.lists(st.sampled_from(symbols), max_size=3, unique=True))
    if symbols and draw(st.integers(0, 3)) == 0:
        cfg["white_list"] = draw(st.lists(st.sampled_from(symbols), min_size=(len(symbols) + 1) // 2, unique=True))
    return cfg


def core_rule_keys() -> list[str]:
    return ["pre_filters", "long_pre_filters", "short_pre_filters", "post_filters", "long_post_filters",
            "short_post_filters"]


def hour_frame(symbols: list[str], seed: int, tied: dict[str, bool]) -> pd.DataFrame:
    """One hour's factor rows: tied columns take few distinct values, so ranks and sorts meet ties."""
    rng = np.random.default_rng(seed)
    n = len(symbols)
    df = pd.DataFrame({"symbol": symbols, "close": rng.lognormal(0, 2, n)})
    for col in [f"{f}_bh_1" for f in FACTORS] + [f"{f}_fl_24" for f in FILTERS]:
        df[col] = rng.integers(0, 10, n).astype(float) if tied[col] else rng.normal(4, 3, n)
    df["ChgPctMax_fl_24"] = rng.uniform(0, 0.4, n)  # for the default pre_filters (the article's rules)
    df["Volume_fl_24"] = rng.integers(1, 5, n) * 1e6 if tied["G1_fl_24"] else rng.lognormal(18, 1.5, n)
    return df


def assert_same_side(ours: pd.DataFrame, theirs: pd.DataFrame, what: str) -> None:
    assert ours["symbol"].tolist() == theirs["symbol"].tolist(), f"{what}: symbols"
    assert [str(p) for p in ours["position"]] == [str(p) for p in theirs["position"]], f"{what}: positions"
    assert sorted(ours.columns) == sorted(theirs.columns), f"{what}: columns {list(ours)} vs {list(theirs)}"
    for col in theirs.columns:
        if col in ("symbol", "position"):
            continue
        np.testing.assert_allclose(ours[col].to_numpy(float), theirs[col].to_numpy(float), rtol=1e-12, atol=0,
                                   err_msg=f"{what}: {col}")


POOL_SIZES = st.one_of(st.integers(0, 30), st.integers(100, 220))


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=POOL_SIZES, seed=st.integers(0, 2**31), start=st.integers(470_000, 480_000))
def test_the_core_equals_the_reference_hour_by_hour(data, n, seed, start):
    symbols = [f"S{i:03d}USDT" for i in range(n)]
    cfg = data.draw(configs(symbols))
    tied = {c: data.draw(st.booleans()) for c in [f"{f}_bh_1" for f in FACTORS] + [f"{f}_fl_24" for f in FILTERS]}
    strategy = Strategy.model_validate({k: v for k, v in cfg.items() if k in STRATEGY_KEYS})
    lots = {s: LOTS[i % len(LOTS)] for i, s in enumerate(symbols)}
    period = strategy.period_hours
    hours = [datetime.fromtimestamp((start + k) * 3600, UTC) for k in range(2 * period + 1)]
    frames = {t: hour_frame(symbols, seed + k, tied) for k, t in enumerate(hours)}
    expected = reference_hours(frames, lots, cfg)
    held: dict[int, dict[str, Decimal]] = {}
    for t in hours:
        pool = core.candidate_pool(frames[t], strategy)
        hour = core.strategy_hour(pool, lots, strategy, cfg["capital_usdt"], t, held)
        want = expected[t]
        assert_same_side(hour.long, want.long, f"{t} long")
        assert_same_side(hour.short, want.short, f"{t} short")
        assert hour.offsets == want.offsets and hour.targets == want.targets
        for o in strategy.offset_list:  # holds exactly what it held, except on its own hours
            if not core.rebalances(t, period, o):
                assert hour.offsets[o] == held.get(o, {})
            else:
                assert o in want.rebalanced and hour.offsets[o] == hour.fresh
        held = hour.offsets
        event(f"an hour with picks long {min(len(hour.long), 3)} short {min(len(hour.short), 3)}")
        event(f"{len(strategy.composite_columns)} composites, {'shared' if strategy.shared_pool else 'split'} pool")


def _hour_slice(panel: pd.DataFrame, k: int) -> pd.DataFrame:
    return panel[panel[core.HOUR] == k].drop(columns=core.HOUR)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sizes=st.lists(st.one_of(st.just(0), st.integers(1, 12), st.integers(60, 140),
                                                st.integers(60, 140)), min_size=1, max_size=5),
       seed=st.integers(0, 2**31), start=st.integers(470_000, 480_000))
def test_many_hours_at_once_equal_the_reference_and_the_one_hour_core_hour_by_hour(data, sizes, seed, start):
    """The backtest's panel (all hours in one frame) against the reference and against the live one-hour call:
    hours of different pool sizes and symbols, empty hours, ties."""
    universe = [f"S{i:03d}USDT" for i in range(max(sizes))]
    cfg = data.draw(configs(universe))
    tied = {c: data.draw(st.booleans()) for c in [f"{f}_bh_1" for f in FACTORS] + [f"{f}_fl_24" for f in FILTERS]}
    strategy = Strategy.model_validate({k: v for k, v in cfg.items() if k in STRATEGY_KEYS})
    lots = {s: LOTS[i % len(LOTS)] for i, s in enumerate(universe)}
    hours = [datetime.fromtimestamp((start + k) * 3600, UTC) for k in range(len(sizes))]
    frames = {}
    for k, (t, n) in enumerate(zip(hours, sizes, strict=True)):  # each hour its own symbols, in universe order
        members = sorted(data.draw(st.lists(st.sampled_from(universe), min_size=n, max_size=n, unique=True))
                         if n < len(universe) else universe)
        frames[t] = hour_frame(members, seed + k, tied).astype({"symbol": object})  # also when empty
    panel = pd.concat([f.assign(**{core.HOUR: k}) for k, f in enumerate(frames.values())], ignore_index=True)
    chosen = core.strategy_hours(core.candidate_pool(panel, strategy), lots, strategy, cfg["capital_usdt"],
                                 len(hours))
    expected = reference_hours(frames, lots, cfg)
    held: dict[int, dict[str, Decimal]] = {}
    for k, t in enumerate(hours):
        want = expected[t]
        assert_same_side(_hour_slice(chosen.long, k), want.long, f"hour {k} long")
        assert_same_side(_hour_slice(chosen.short, k), want.short, f"hour {k} short")
        held = core.offset_targets(held, t, strategy.period_hours, strategy.offset_list, chosen.fresh[k])
        assert held == want.offsets and core.sum_targets(held) == want.targets
        one = core.strategy_hour(core.candidate_pool(frames[t], strategy), lots, strategy, cfg["capital_usdt"], t,
                                 {})
        assert one.fresh == chosen.fresh[k]
        counts = chosen.choice
        assert (one.choice.long_wanted, one.choice.short_wanted, one.choice.shortfall, one.choice.pool) == (
            counts.long_wanted[k], counts.short_wanted[k], counts.shortfall[k], counts.pool[k])
        for side in ("long", "short", "long_pool", "short_pool"):  # what factor_his and select_his get
            pd.testing.assert_frame_equal(_hour_slice(getattr(counts, side), k).reset_index(drop=True),
                                          getattr(one.choice, side).reset_index(drop=True), obj=f"hour {k} {side}")
        event(f"hour sizes {sorted({min(n, 13) for n in sizes})}")


def test_each_offset_rebalances_once_per_period_and_a_cold_offset_holds_nothing():
    cfg = {"factor": ["F1", True, 1, 0, 1], "filters": [], "pre_filters": [], "long_num": 1, "short_num": 1,
           "hold_period": "6H", "offsets": [0, 2, 5]}
    strategy = Strategy.model_validate(cfg)
    symbols = [f"S{i}USDT" for i in range(8)]
    lots = dict.fromkeys(symbols, Decimal("0.001"))
    start = datetime(2024, 3, 1, 2, tzinfo=UTC)  # epoch hour % 6 == 2: offset 2 trades first
    held: dict[int, dict[str, Decimal]] = {}
    trades: dict[int, list[int]] = {0: [], 2: [], 5: []}
    for k in range(13):
        t = start + timedelta(hours=k)
        frame = hour_frame(symbols, k, dict.fromkeys([f"{f}_bh_1" for f in FACTORS] + [f"{f}_fl_24" for f in FILTERS],
                                                     False))
        hour = core.strategy_hour(core.candidate_pool(frame, strategy), lots, strategy, 600, t, held)
        for o in trades:
            if hour.offsets[o] != held.get(o, {}) or (k == 0 and hour.offsets[o]):
                trades[o].append(k)
        if k == 0:
            assert hour.offsets[0] == {} and hour.offsets[5] == {} and hour.offsets[2] == hour.fresh
            assert set(hour.targets) == set(hour.fresh) and len(hour.fresh) == 2
            # each pick is sized with 600 / 3 offsets / 2 sides / 1 coin
            close = frame.set_index("symbol")["close"]
            for s, q in hour.fresh.items():
                assert abs(abs(float(q)) * close[s] - 100) < 0.001 * close[s]
        held = hour.offsets
    assert trades == {0: [4, 10], 2: [0, 6, 12], 5: [3, 9]}  # (h - o) % 6 == 0; cold until then


# ---------------------------------------------------------------------------------------------
# The article's config through the new core equals the article's functions

ARTICLE_COLS = ["MtmAtrMean_bh_120", "ChgPctMax_fl_24", "Volume_fl_24"]


def _article_pool(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp("2024-03-01 12:00", tz="Asia/Hong_Kong")
    df = pd.DataFrame({
        "candle_begin_time": [t] * n, "close": rng.lognormal(0, 2, n), "quote_volume": rng.lognormal(14, 1, n),
        "symbol": [f"S{i:03d}USDT" for i in range(n)],
        ARTICLE_COLS[0]: rng.normal(0, 0.01, n) if seed % 2 else rng.integers(-3, 3, n) / 100,  # odd seeds: ties
        ARTICLE_COLS[1]: rng.uniform(0, 0.4, n), ARTICLE_COLS[2]: rng.lognormal(18, 1.5, n),
    })
    df.loc[rng.choice(n, n // 10, replace=False), ARTICLE_COLS[0]] = np.inf
    df.loc[rng.choice(n, n // 10, replace=False), ARTICLE_COLS[1]] = np.nan
    exg = pd.DataFrame({"symbol": df["symbol"], "face_value": rng.choice(LOTS, n)}).set_index("symbol")
    return df, exg


def _article_through_core(df_factor: pd.DataFrame, faces: dict[str, Decimal]):
    strategy = Strategy.article()
    pool = core.candidate_pool(df_factor, strategy)
    choice = core.choose(pool, strategy)
    assert not choice.shortfall
    return core.size_choice(choice, 1000, faces)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(12, 250), seed=st.integers(0, 2**31))
def test_the_article_strategy_equals_the_articles_functions(n, seed):
    df, exg = _article_pool(n, seed)
    ref_pool = ref.filter_before(ref.filiter_nan_inf(df, ARTICLE_COLS))
    if len(ref_pool) < 10:
        return
    ref_long, ref_short = ref.select_coin(ref_pool, ARTICLE_COLS[0], True, 2, 8)
    ref_long, ref_short = ref.assign_position(ref_long, ref_short, exg, 1000, 2, 8)
    strategy = Strategy.article()
    pd.testing.assert_frame_equal(core.apply_rules(core.candidate_pool(df, strategy), strategy.pre_filters), ref_pool)
    long, short = _article_through_core(df, exg["face_value"].to_dict())
    pd.testing.assert_frame_equal(long, ref_long)
    pd.testing.assert_frame_equal(short, ref_short)


def _article_hours_equal(bmac: BmacDir, market, hours: list[int]) -> None:
    for k in hours:
        run_time = write_hour(bmac, market, k)
        df_factor_all, ref_long, ref_short = ref.article_round(bmac.root, run_time)
        exg = pd.read_feather(bmac.root / "exginfo_1h" / "exginfo.fea").set_index("symbol")
        long, short = _article_through_core(df_factor_all, exg["face_value"].to_dict())
        drop = [c for c in ref.DROP_COLS if c in df_factor_all.columns]
        pd.testing.assert_frame_equal(long.drop(columns=drop), ref_long)
        pd.testing.assert_frame_equal(short.drop(columns=drop), ref_short)


def test_the_article_strategy_on_real_candles(tmp_path, real_data):
    _article_hours_equal(BmacDir(tmp_path / "bmac", "1h"), ReplayMarket(real_data, first_hour=2500), [0, 7])


def test_the_article_strategy_on_synthetic_candles(tmp_path):
    _article_hours_equal(BmacDir(tmp_path / "bmac", "1h"), SyntheticMarket(symbols=70, seed=11), [0, 5])


# ---------------------------------------------------------------------------------------------
# Pieces

def test_rules_parse_with_whitespace_and_every_operator():
    assert parse_rule(" rank : <= 60 ") == ("rank", "<=", 60.0)
    assert parse_rule("pct:<0.8") == ("pct", "<", 0.8)
    assert parse_rule("val:>=-1e-3") == ("val", ">=", -0.001)
    for op in OPS:
        assert parse_rule(f"val:{op}2").op == op
    for bad in ["rank<=60", "rnk:<=60", "val:=>1", "val:<=", "val:<=abc", "val:<=inf", "val:<=1,5"]:
        with pytest.raises(ValueError, match=r"does not parse|not a plain number"):
            parse_rule(bad)


def test_fraction_counts_round_up_in_decimal_and_keep_one():
    assert core.resolve_count(0.07, 100) == 7  # not ceil(0.07 * 100) = ceil(7.000000000000001)
    assert core.resolve_count(0.1, 30) == 3
    assert core.resolve_count(0.1, 31) == 4
    assert core.resolve_count(0.01, 5) == 1 and core.resolve_count(0.5, 0) == 0
    assert core.resolve_count(1.0, 17) == 17 and core.resolve_count(1, 17) == 1 and core.resolve_count(0, 9) == 0


def test_post_rules_drop_picks_without_replacement_and_keep_their_capital_unallocated():
    cfg = {"factor": ["F1", True, 1, 0, 1], "filters": [["G1", 24]], "pre_filters": [], "long_num": 3,
           "short_num": 0, "post_filters": [["G1", 24, "val:<5"]]}
    strategy = Strategy.model_validate(cfg)
    pool = pd.DataFrame({"symbol": list("ABCDEF"), "close": [1.0] * 6, "F1_bh_1": [6.0, 5, 4, 3, 2, 1],
                         "G1_fl_24": [0.0, 0, 9, 0, 0, 0]})
    hour = core.strategy_hour(pool, dict.fromkeys("ABCDEF", Decimal("0.01")), strategy, 600, datetime.now(UTC), {})
    assert hour.long["symbol"].tolist() == ["B", "A"]  # C was picked, then dropped; D does not replace it
    assert hour.long["position"].tolist() == [Decimal("100.00")] * 2  # 600 / 2 / 3 each


def test_separate_rankings_may_pick_a_coin_on_both_sides_and_it_nets_out():
    cfg = {"factor": ["F1", True, 1, 0, 1], "filters": [], "pre_filters": [], "long_num": 1, "short_num": 1,
           "short_factors": [["F1", False, 1, 0, 1]]}
    strategy = Strategy.model_validate(cfg)
    pool = pd.DataFrame({"symbol": list("AB"), "close": [1.0, 1.0], "F1_bh_1": [1.0, 2.0]})
    hour = core.strategy_hour(pool, dict.fromkeys("AB", Decimal(1)), strategy, 100, datetime.now(UTC), {})
    assert hour.long["symbol"].tolist() == hour.short["symbol"].tolist() == ["B"]
    assert hour.targets == {"B": Decimal(0)}


def test_composite_names_and_columns():
    two = [["F1", True, 1, 0, 1], ["F2", False, 1, 0, 0]]
    shared = Strategy.model_validate({"factor": two, "filters": [], "long_num": 1, "short_num": 1})
    assert shared.composite_columns == ["composite"]
    split = Strategy.model_validate({"factor": two, "filters": [["G1", 24]], "long_num": 1, "short_num": 1,
                                     "pre_filters": [],
                                     "short_factors": [["F3", True, 1, 0, 1]],
                                     "post_filters": [["G3", 24, "pct:<=0.5"], ["G1", 24, "val:>0"]]})
    assert split.composite_columns == ["long_composite"]
    assert split.factor_columns == ["F1_bh_1", "F2_bh_1", "F3_bh_1"]
    assert split.filter_columns == ["G1_fl_24", "G3_fl_24"]
    article = Strategy.article()
    assert article.columns == ARTICLE_COLS and article.offset_list == (0,) and article.composite_columns == []


# ---------------------------------------------------------------------------------------------
# Config errors: every bad field named, with how to fix it

ARTICLE = {"factor": ["MtmAtrMean", True, 120, 0, 1], "filters": [["ChgPctMax", 24], ["Volume", 24]],
           "long_num": 2, "short_num": 8, "interval": "1h", "capital_usdt": 1000}


def _problems(**overrides) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_strategy({**ARTICLE, **overrides})
    return e.value.problems


@pytest.mark.parametrize("overrides, expected", [
    ({"hold_period": "6M"}, ['hold_period: "6M" has the unknown unit \'M\'; use H for hours or D for days']),
    ({"hold_period": "6"}, ['hold_period: "6" has no unit']),
    ({"hold_period": "6H", "offsets": [0, 6, 3, 3]},
     ['offsets: 6 not within the 6-hour hold_period "6H"; use offsets from 0 to 5; 3 repeated']),
    ({"pre_filters": [["Volume", 24, "rank:<=60"], ["Volume", 24, "rank<=60", False]]},
     ['pre_filters.1.2: "rank<=60" does not parse; write "how:OPvalue"']),
    ({"long_post_filters": [["Volume", 24, "val:<=lots"]]},
     ['long_post_filters.0.2: "val:<=lots": the value "lots" is not a plain number']),
    ({"factor": [["MtmAtrMean", True, 120, 0, 0], ["MtmAtrMean", False, 24, 0, 0]]},
     ["factor: the weights sum to zero; give at least one factor a positive weight"]),
    ({"long_num": 1.5}, ["long_num: a fraction of the pool must be in (0, 1], such as 0.1, not 1.5"]),
    ({"short_num": 0.0}, ["short_num: a fraction of the pool must be in (0, 1]"]),
    ({"long_num": "2"}, ['long_num: must be a whole number of coins such as 2 or a fraction of the pool in (0, 1] '
                         'such as 0.1, not "2"']),
    ({"short_num": True}, ["short_num: must be a whole number of coins such as 2", "not true"]),
    ({"post_filters": [["Funding", 8, "val:>0"]]},
     ['post_filters.0.0: the rule ["Funding", 8, "val:>0", true] names no filter plugin \'Funding\'',
      "available: ChgPctMax", "Volume"]),
    ({"factor": ["MtmAtrMean", "yes", 120, 0, 1]}, ['factor.reverse: must be JSON true or false, not "yes"']),
    ({"short_factors": [["MtmAtrMean", True, 120, 0, 1], ["MtmAtrMean", 1, 24, 0, 1]]},
     ["short_factors.1.reverse: must be JSON true or false, not 1"]),
    ({"pre_filters": [["Volume", 24]]}, ["pre_filters.0: a filter rule must be [name, param, \"how:OPvalue\"]"]),
])
def test_each_bad_field_is_named_with_how_to_fix_it(overrides, expected):
    problems = _problems(**overrides)
    assert len(problems) == 1, problems
    for part in expected:
        assert part in problems[0], problems


def test_every_bad_field_is_reported_at_once():
    problems = _problems(hold_period="2W", long_num=-1, pre_filters=[["Volume", 24, "top:<=3"]],
                         black_list=["BTCUSDT", 3])
    assert [p.split(":")[0] for p in problems] == ["pre_filters.0.2", "long_num", "hold_period", "black_list.1"]


def test_counts_are_strict_json_numbers():
    assert parse_strategy({**ARTICLE, "long_num": 1}).long_num == 1
    whole = parse_strategy({**ARTICLE, "long_num": 1.0}).long_num
    assert isinstance(whole, float) and whole == 1.0  # 1.0 is the whole pool
    assert parse_strategy(ARTICLE) == Strategy.article()


def test_a_work_directory_plugin_may_be_named_in_a_rule(tmp_path):
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "Funding.py").write_text("def signal(*args):\n    return args[0]\n")
    rule = ["Funding", 8, "val:>0"]
    strategy = parse_strategy({**ARTICLE, "post_filters": [rule]}, workdir=tmp_path)
    assert strategy.filter_columns == ["ChgPctMax_fl_24", "Volume_fl_24", "Funding_fl_8"]
