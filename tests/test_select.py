"""The position core (filter, rank, select, size) against the article's own functions."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from services.position.select import drop_non_finite, round_to_tick, size_side
from services.position.strategy import apply_rules, pick_sides
from shared.strategy import ARTICLE_PRE_RULES, FilterRule
from tests import reference as ref

COLS = ["MtmAtrMean_bh_120", "ChgPctMax_fl_24", "Volume_fl_24"]


def select_sides(pool: pd.DataFrame, factor: str, ascending: bool, long_num: int, short_num: int):
    """The article's select_coin through the core: one shared ordering, indexed as the article's ignore_index."""
    ordered = pool.sort_values(factor, ascending=ascending, ignore_index=True)
    return pick_sides(ordered, ordered, long_num, short_num, shared_pool=True)


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
    ours_pool = apply_rules(drop_non_finite(df, COLS), ARTICLE_PRE_RULES)
    pd.testing.assert_frame_equal(ours_pool, ref_pool)
    if len(ref_pool) < 10:
        return
    ref_long, ref_short = ref.select_coin(ref_pool, COLS[0], True, 2, 8)
    ref_long, ref_short = ref.assign_position(ref_long, ref_short, exg, 1000, 2, 8)
    long, short, shortfall = select_sides(ours_pool, COLS[0], True, 2, 8)
    assert not shortfall
    faces = exg["face_value"].to_dict()
    pd.testing.assert_frame_equal(size_side(long, 1000, 2, faces), ref_long)
    pd.testing.assert_frame_equal(size_side(short, 1000, 8, faces), ref_short)


def test_small_pool_never_puts_a_coin_on_both_sides():
    df, _ = _pool(40, 1)
    pool = df.dropna().head(5)
    ref_long, ref_short = ref.select_coin(pool, COLS[1], True, 2, 8)
    assert set(ref_long["symbol"]) & set(ref_short["symbol"])  # the article's bug, reproduced
    long, short, shortfall = select_sides(pool, COLS[1], True, 2, 8)
    assert shortfall and len(pool) == 5
    assert not set(long["symbol"]) & set(short["symbol"])
    assert (len(long), len(short)) == (1, 4)  # proportional shares, rounded down
    ordered = pool.sort_values(COLS[1])["symbol"].tolist()
    assert short["symbol"].tolist() == ordered[:4] and long["symbol"].tolist() == ordered[-1:]


@pytest.mark.parametrize("long_num, short_num, n", [(0, 8, 20), (2, 0, 20), (2, 8, 0), (0, 0, 5)])
def test_empty_sides_do_not_crash(long_num, short_num, n):
    df, exg = _pool(max(n, 1), 2)
    pool = df.head(n).dropna()
    long, short, shortfall = select_sides(pool, COLS[2], False, long_num, short_num)
    faces = exg["face_value"].to_dict()
    long = size_side(long, 1000, long_num, faces)
    short = size_side(short, 1000, short_num, faces)
    assert len(long) == min(long_num, len(pool)) or shortfall
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
    lo, rank = (FilterRule.model_validate([c.split("_fl_")[0], c.split("_fl_")[1], r]) for c, r in
                ((COLS[1], "val:>=0.05"), (COLS[2], "rank:<=10")))
    hi = FilterRule.model_validate([COLS[1].split("_fl_")[0], COLS[1].split("_fl_")[1], "val:<=0.3"])
    out = apply_rules(df, (lo, hi, rank))
    manual = df[df[COLS[1]].between(0.05, 0.3)].copy()
    manual[f"{COLS[2]}_rank"] = manual[COLS[2]].rank(method="first", ascending=True)
    manual = manual[manual[f"{COLS[2]}_rank"] <= 10]
    pd.testing.assert_frame_equal(out, manual)
    assert len(out) == 10


def test_a_round_with_separate_sides_reports_each_side_and_nets_a_coin_on_both():
    """build_selection on a gathered round: each side its own ranking and pool, as the reference picks them."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from services.position.rounds import RoundState, build_selection
    from shared.config import SelectorConfig
    from shared.messages import FactorResults, RoundOpen, SymbolSpec
    from tests.reference import article_config
    from tests.strategy_reference import reference_hour

    rng = np.random.default_rng(9)
    n = 30
    symbols = [f"S{i:02d}USDT" for i in range(n)]
    frame = pd.DataFrame({"symbol": symbols, "close": rng.lognormal(0, 1, n),
                          "A_bh_1": rng.normal(size=n), "B_bh_1": rng.normal(size=n),
                          "Volume_fl_24": rng.lognormal(10, 1, n), "ChgPctMax_fl_24": rng.uniform(0, 0.3, n)})
    raw = article_config("unused", factor=["A", True, 1, 0, 1],
                         long_factors=[["A", True, 1, 0, 1], ["B", False, 1, 0, 3]],
                         short_factors=[["B", True, 1, 0, 1]], pre_filters=[["ChgPctMax", 24, "val:<=0.25"]],
                         short_pre_filters=[["Volume", 24, "rank:<=5", False]], long_num=0.5, short_num=8)
    cfg = SelectorConfig.model_validate(raw)
    run_time = datetime(2024, 3, 1, 5, tzinfo=UTC)
    lots = {s: Decimal("0.01") for s in symbols}
    state = RoundState(open=RoundOpen(run_time=run_time, interval="1h", funding={}, expire_sec=30,
                                      symbols=[SymbolSpec(symbol=s, face_value=lots[s]) for s in symbols]))
    state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=symbols, last_ready_at=None),
                      pa.Table.from_pandas(frame, preserve_index=False))
    built = build_selection(cfg, state, flag_incomplete=True)
    sel = built.selection
    long, short = reference_hour(frame, lots, raw, 1000)
    assert [p.symbol for p in sel.long] == long["symbol"].tolist()
    assert [p.position for p in sel.long] == long["position"].tolist()
    assert [p.symbol for p in sel.short] == short["symbol"].tolist()
    assert sel.ranked_by == {"long": "long_composite", "short": "B_bh_1"} and sel.factor_column == "long_composite"
    assert sel.factor_columns == ["A_bh_1", "B_bh_1", "long_composite"]
    assert all(p.factor == p.factors["long_composite"] for p in sel.long)
    assert all(p.factor == p.factors["B_bh_1"] and "long_composite" not in p.factors for p in sel.short)
    assert "long_composite" in built.factor_table.column_names and "short_composite" not in built.factors
    long_pool = frame[frame["ChgPctMax_fl_24"] <= 0.25]
    assert sel.shortfall is not None and sel.shortfall.pool == len(long_pool) == sel.shortfall.long_pool
    assert (sel.shortfall.short_pool, sel.shortfall.short_got, sel.shortfall.short_wanted) == (5, 5, 8)
    both = {p.symbol for p in sel.long} & {p.symbol for p in sel.short}
    assert both, "this seed is meant to put a coin on both sides"
    for s in both:  # nets out
        assert sel.targets[s] == next(p.position for p in sel.long if p.symbol == s) - next(
            p.position for p in sel.short if p.symbol == s)
    assert sel.offsets.keys() == {"0"} and sel.offsets["0"].targets == sel.targets and sel.hold_period == "1H"


def _gathered(frame: pd.DataFrame, lots: dict, tables: list | None = None):
    """A RoundState holding ``frame``'s rows (or ``tables``, each with its symbols), universe in frame order."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from services.position.rounds import RoundState
    from shared.messages import FactorResults, RoundOpen, SymbolSpec

    run_time = datetime(2024, 3, 1, 5, tzinfo=UTC)
    state = RoundState(open=RoundOpen(run_time=run_time, interval="1h", funding={}, expire_sec=30,
                                      symbols=[SymbolSpec(symbol=s, face_value=lots.get(s)) for s in frame["symbol"]]))
    for table in [pa.Table.from_pandas(frame, preserve_index=False)] if tables is None else tables:
        state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=table["symbol"].to_pylist(),
                                        last_ready_at=None), table)
    return state


def test_unsizable_coins_are_skipped_and_the_rest_chosen_as_the_frame_core_chooses():
    """The live shell's row path (columns from Arrow, frames only when asked) against the frame path."""
    from services.position.rounds import build_selection
    from services.position.strategy import candidate_pool, strategy_hour
    from shared.config import SelectorConfig
    from tests.reference import article_config

    df, exg = _pool(120, 3)
    lots = {s: fv for s, fv in exg["face_value"].items()}
    unsizable = df["symbol"].iloc[::7].tolist()
    for s in unsizable:
        del lots[s]
    df = df.assign(**{COLS[2]: df[COLS[2]].rank()})  # volume ranks leave the common rule keeping most
    cfg = SelectorConfig.model_validate(article_config("unused", long_num=4, short_num=3, black_list=["S001USDT"]))
    built = build_selection(cfg, _gathered(df, lots), flag_incomplete=True)
    frame = df[["symbol", "close", *cfg.columns]].astype({"symbol": object})  # as the shell reads it: plain objects
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    pool = candidate_pool(frame, cfg)
    finite = set(pool["symbol"])
    assert {s: r for s, r in built.selection.coverage.skipped.items()} == {
        s: "bad_data: exginfo has no face_value" for s in unsizable if s in finite}
    hour = strategy_hour(pool[pool["symbol"].isin(lots.keys())], lots, cfg, cfg.capital_usdt,
                         built.selection.run_time, {})
    for side in ("long", "short"):
        picks, want = getattr(built.selection, side), getattr(hour, side)
        assert [p.symbol for p in picks] == want["symbol"].tolist() and len(picks) > 0
        assert [p.position for p in picks] == want["position"].tolist()
        pd.testing.assert_frame_equal(getattr(built, side), want)
    assert not set(unsizable) & {p.symbol for p in [*built.selection.long, *built.selection.short]}
    pd.testing.assert_frame_equal(built.factors, frame)


def test_results_of_different_schemas_are_concatenated_with_promotion():
    """Tables of one schema are concatenated as they are; a round whose tables differ gets the unified schema."""
    import pyarrow as pa

    df, exg = _pool(6, 1)
    lots = {s: fv for s, fv in exg["face_value"].items()}
    table = pa.Table.from_pandas(df, preserve_index=False)
    same = _gathered(df, lots, [table.slice(0, 3), table.slice(3)])
    assert same.uniform and same.factor_table().equals(table)
    extra = table.slice(3).append_column("extra", pa.array([1.5] * 3))
    mixed = _gathered(df, lots, [table.slice(0, 3), extra])
    assert not mixed.uniform
    got = mixed.factor_table()
    assert got.column_names == [*table.column_names, "extra"]
    assert got["extra"].to_pylist() == [None] * 3 + [1.5] * 3 and got.drop_columns(["extra"]).equals(table)


def test_a_round_accounts_for_rows_skips_and_closes_in_universe_order():
    """factor_table in universe order and missing() as their plain definitions, whatever order results come in."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from shared.messages import FactorResults, RoundClosed, Skip

    df, exg = _pool(12, 2)
    state = _gathered(df.iloc[:0], {}, [])  # an empty universe first: nothing is missing, no table
    assert state.missing() == [] and state.factor_table() is None and state.complete()
    lots = {s: fv for s, fv in exg["face_value"].items()}
    state = _gathered(df, lots, [])
    run_time, symbols = state.open.run_time, df["symbol"].tolist()
    table = pa.Table.from_pandas(df, preserve_index=False)
    for part in ([7, 2, 9], [0, 2, 11]):  # 2 twice: the first row wins
        state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=[symbols[i] for i in part],
                                        last_ready_at=None), table.take(part))
    state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=[], last_ready_at=None,
                                    skipped=[Skip(symbol=symbols[4], reason="error", detail="boom")]), None)
    plain = [s for s in state.universe if s not in state.rows and s not in state.skipped]
    assert state.missing() == plain == [symbols[i] for i in (1, 3, 5, 6, 8, 10)] and not state.complete()
    assert state.factor_table()["symbol"].to_pylist() == [symbols[i] for i in (0, 2, 7, 9, 11)]
    state.add_closed(RoundClosed(run_time=run_time, missing={symbols[i]: "gone" for i in (1, 3, 5, 6, 8, 10)},
                                 last_ready_at=datetime.now(UTC)))
    assert state.missing() == [] and state.complete()


def test_a_round_waits_grace_after_the_market_closed_it_and_after_its_last_new_result():
    """A factor layer still delivering is not cut off; a result naming only symbols already accounted for (or a
    peer repeating itself) does not hold the round open, nor does a symbol the market's close accounted for."""
    import time
    from datetime import UTC, datetime

    import pyarrow as pa

    from services.position.rounds import RoundState
    from shared.messages import FactorResults, RoundClosed, RoundOpen, Skip, SymbolSpec

    run_time = datetime(2024, 3, 1, 5, tzinfo=UTC)
    state = RoundState(open=RoundOpen(run_time=run_time, interval="1h", funding={}, expire_sec=30, symbols=[
        SymbolSpec(symbol=s, face_value=Decimal("1")) for s in ("AUSDT", "BUSDT", "CUSDT")]))
    assert state.deadline(2.0) == state.opened_at + 30 + 2.0  # the crawler's deadline, while the market waits
    state.add_closed(RoundClosed(run_time=run_time, missing={}, last_ready_at=None))
    assert state.deadline(2.0) == state.closed_at + 2.0

    def result(symbols: list[str], skipped: tuple[str, ...] = ()) -> float:
        time.sleep(0.01)
        rows = pa.table({"symbol": symbols, "close": [1.0] * len(symbols)}) if symbols else None
        state.add_results(FactorResults(run_time=run_time, shard="0/1", symbols=symbols, last_ready_at=None,
                                        skipped=[Skip(symbol=s, reason="stale", detail="x") for s in skipped]), rows)
        return state.deadline(2.0)

    first = result(["AUSDT"])
    assert first == state.progress_at + 2.0 > state.closed_at + 2.0
    assert result(["AUSDT"]) == first and result([], ("AUSDT",)) == first  # nothing new: no extension
    second = result([], ("BUSDT",))
    assert second > first  # a skip accounts for a symbol too
    progressed = state.progress_at
    state.add_closed(RoundClosed(run_time=run_time, missing={"CUSDT": "no marker"}, last_ready_at=None))
    result(["AUSDT"])
    assert state.progress_at == progressed  # the market accounting for a symbol is not a result's progress
    assert state.complete()
