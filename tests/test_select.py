"""The position core (filter, rank, select, size) against the article's own functions."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from services.position.select import (
    apply_pre_filters,
    drop_non_finite,
    round_to_tick,
    select_sides,
    size_side,
)
from shared.config import ARTICLE_PRE_FILTERS, PreFilterRule
from tests import reference as ref

COLS = ["MtmAtrMean_bh_120", "ChgPctMax_fl_24", "Volume_fl_24"]


def _pool(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp("2024-03-01 12:00", tz="Asia/Hong_Kong")
    df = pd.DataFrame({
        "candle_begin_time": [t] * n,
        "close": rng.lognormal(0, 2, n),
        "quote_volume": rng.lognormal(14, 1, n),
        "symbol": [f"S{i:03d}USDT" for i in range(n)],
        COLS[0]: rng.normal(0, 0.01, n),
        COLS[1]: rng.uniform(0, 0.4, n),
        COLS[2]: rng.lognormal(18, 1.5, n),
    })
    df.loc[rng.choice(n, n // 10, replace=False), COLS[0]] = np.inf
    df.loc[rng.choice(n, n // 10, replace=False), COLS[1]] = np.nan
    exg = pd.DataFrame({"symbol": df["symbol"],
                        "face_value": rng.choice([Decimal("0.001"), Decimal("0.100"), Decimal("1.000"),
                                                  Decimal("10")], n)}).set_index("symbol")
    return df, exg


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [15, 80, 200])
def test_matches_the_article_when_the_pool_is_large_enough(seed, n):
    df, exg = _pool(n, seed)
    ref_pool = ref.filter_before(ref.filiter_nan_inf(df, COLS))
    ours_pool = apply_pre_filters(drop_non_finite(df, COLS), ARTICLE_PRE_FILTERS)
    pd.testing.assert_frame_equal(ours_pool, ref_pool)
    if len(ref_pool) < 10:
        return
    ref_long, ref_short = ref.select_coin(ref_pool, COLS[0], True, 2, 8)
    ref_long, ref_short = ref.assign_position(ref_long, ref_short, exg, 1000, 2, 8)
    sides = select_sides(ours_pool, COLS[0], True, 2, 8)
    assert not sides.shortfall
    faces = exg["face_value"].to_dict()
    pd.testing.assert_frame_equal(size_side(sides.long, 1000, 2, faces), ref_long)
    pd.testing.assert_frame_equal(size_side(sides.short, 1000, 8, faces), ref_short)


def test_small_pool_never_puts_a_coin_on_both_sides():
    df, _ = _pool(40, 1)
    pool = df.dropna().head(5)
    ref_long, ref_short = ref.select_coin(pool, COLS[1], True, 2, 8)
    assert set(ref_long["symbol"]) & set(ref_short["symbol"])  # the article's bug, reproduced
    sides = select_sides(pool, COLS[1], True, 2, 8)
    assert sides.shortfall and sides.pool == 5
    assert not set(sides.long["symbol"]) & set(sides.short["symbol"])
    assert (len(sides.long), len(sides.short)) == (1, 4)  # proportional shares, rounded down
    ordered = pool.sort_values(COLS[1])["symbol"].tolist()
    assert sides.short["symbol"].tolist() == ordered[:4] and sides.long["symbol"].tolist() == ordered[-1:]


@pytest.mark.parametrize("long_num, short_num, n", [(0, 8, 20), (2, 0, 20), (2, 8, 0), (0, 0, 5)])
def test_empty_sides_do_not_crash(long_num, short_num, n):
    df, exg = _pool(max(n, 1), 2)
    pool = df.head(n).dropna()
    sides = select_sides(pool, COLS[2], False, long_num, short_num)
    faces = exg["face_value"].to_dict()
    long = size_side(sides.long, 1000, long_num, faces)
    short = size_side(sides.short, 1000, short_num, faces)
    assert len(long) == min(long_num, len(pool)) or sides.shortfall
    assert {"position", "pos_val"} <= set(long.columns) and {"position", "pos_val"} <= set(short.columns)


@pytest.mark.parametrize("value, tick, expected", [
    (Decimal("62.5"), Decimal("1"), Decimal("62")),        # half to even, like the article's round()
    (Decimal("63.5"), Decimal("1"), Decimal("64")),
    (Decimal("4.3375"), Decimal("0.001"), Decimal("4.338")),
    (Decimal("0.0004"), Decimal("0.001"), Decimal("0.000")),
    (Decimal("123.456"), Decimal("10"), Decimal("120")),
])
def test_round_to_tick_matches_the_article(value, tick, expected):
    assert round_to_tick(value, tick) == ref.round_to_tick(value, tick) == expected
    assert str(round_to_tick(value, tick)) == str(ref.round_to_tick(value, tick))


def test_decimal_text_keeps_the_lot_size_scale():
    side = pd.DataFrame({"symbol": ["A"], "close": [0.99370]})
    sized = size_side(side, 1000, 8, {"A": Decimal("1.000")})
    assert str(sized["position"].iat[0]) == "63.000"  # the article's log shows 63.000 for TOMOUSDT
    assert sized["pos_val"].iat[0] == 63 * 0.99370


def test_pre_filters_are_data():
    df, _ = _pool(100, 3)
    df = drop_non_finite(df, COLS)
    rules = (PreFilterRule(column=COLS[1], min=0.05, max=0.3),
             PreFilterRule(column=COLS[2], rank="ascending", max=10))
    out = apply_pre_filters(df, rules)
    manual = df[df[COLS[1]].between(0.05, 0.3)].copy()
    manual[f"{COLS[2]}_rank"] = manual[COLS[2]].rank(method="first", ascending=True)
    manual = manual[manual[f"{COLS[2]}_rank"] <= 10]
    pd.testing.assert_frame_equal(out, manual)
    assert len(out) == 10


def test_a_rule_needs_a_bound():
    with pytest.raises(ValueError, match="min, max or both"):
        PreFilterRule(column="x")
