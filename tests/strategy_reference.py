"""Issue 9's strategy semantics as a plain per-hour pandas computation: the reference.

Written from the decided semantics, not from the services' code (it imports neither
``services.position`` nor ``shared.strategy``): its own reading of the config dict, rule
parsing, ranking, counts, offset book-keeping and Decimal sizing with the article's rounding.
It takes each hour's factor frame (symbol, close, factor and filter columns, in universe order),
the lot sizes and the raw config, so it can be compared with the core and with the recorded
rounds of the live stack alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd

ARTICLE_PRE = [["ChgPctMax", 24, "val:<=0.2"], ["Volume", 24, "rank:<=60", False]]
RULE_KEYS = ["pre_filters", "long_pre_filters", "short_pre_filters", "post_filters", "long_post_filters",
             "short_post_filters"]


@dataclass
class Factor:
    column: str
    ascending: bool
    weight: float


@dataclass
class Rule:
    column: str
    how: str
    op: str
    value: float
    ascending: bool


@dataclass
class RefHour:
    long: pd.DataFrame
    short: pd.DataFrame
    offsets: dict[int, dict[str, Decimal]]
    targets: dict[str, Decimal]
    rebalanced: list[int]


def factor_column(name: str, back_hour, d_num) -> str:
    return f"{name}_bh_{back_hour}" if d_num == 0 else f"{name}_bh_{back_hour}_diff_{d_num}"


def factors_of(raw) -> list[Factor]:
    """One 5-tuple or a list of them."""
    items = raw if isinstance(raw[0], list | tuple) else [raw]
    return [Factor(factor_column(name, back, d), rev, w) for name, rev, back, d, w in items]


def rule_of(raw) -> Rule:
    text = "".join(raw[2].split()).lower()
    how, rest = text.split(":", 1)
    op = rest[:2] if rest[:2] in (">=", "<=", "==", "!=") else rest[:1]
    return Rule(f"{raw[0]}_fl_{raw[1]}", how, op, float(rest[len(op):]), raw[3] if len(raw) > 3 else True)


def period_of(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * (24 if text.endswith("D") else 1)


def wanted(spec, pool_size: int) -> int:
    if isinstance(spec, float):
        return 0 if pool_size == 0 else max(1, math.ceil(Fraction(repr(spec)) * pool_size))
    return spec


def compare(values: np.ndarray, op: str, value: float) -> np.ndarray:
    return {">=": values >= value, "<=": values <= value, ">": values > value, "<": values < value,
            "==": values == value, "!=": values != value}[op]


def rule_values(df: pd.DataFrame, rule: Rule) -> np.ndarray:
    if rule.how == "val":
        return df[rule.column].to_numpy(float)
    ranks = df[rule.column].rank(method="first", ascending=rule.ascending).to_numpy(float)
    return ranks / len(df) if rule.how == "pct" else ranks


def pre(df: pd.DataFrame, rules: list[Rule]) -> pd.DataFrame:
    for rule in rules:
        values = rule_values(df, rule)
        df = df.copy()
        if rule.how != "val":
            df[f"{rule.column}_{rule.how}"] = values
        df = df[compare(values, rule.op, rule.value)]
    return df


def ordering(df: pd.DataFrame, factors: list[Factor], name: str | None) -> pd.DataFrame:
    """Head = short, tail = long."""
    if len(factors) == 1:
        return df.sort_values(factors[0].column, ascending=factors[0].ascending)
    total = sum(f.weight for f in factors)
    score = np.zeros(len(df))
    for f in factors:
        if f.weight != 0:
            score = score + (f.weight / total) * df[f.column].rank(method="min", ascending=f.ascending).to_numpy()
    df = df.copy()
    df[name] = score
    return df.iloc[np.argsort(score, kind="stable")]


def size(side: pd.DataFrame, capital: float, count: int, lots: Mapping[str, Decimal]) -> pd.DataFrame:
    side = side.copy()
    positions = []
    for symbol, close in zip(side["symbol"], side["close"], strict=True):
        value, tick = Decimal(capital / 2 / count / close), lots[symbol]
        positions.append(Decimal(int(round(value / tick)) * tick))  # noqa: RUF046 (the article's rounding)
    side["position"] = pd.Series(positions, index=side.index, dtype=object)
    side["pos_val"] = [float(p) * c for p, c in zip(positions, side["close"], strict=True)]
    return side


def reference_hour(df: pd.DataFrame, lots: Mapping[str, Decimal], cfg: dict, capital: float) -> tuple[pd.DataFrame,
                                                                                                     pd.DataFrame]:
    """One hour's long and short frames, sized with ``capital`` (one offset's share)."""
    long_f = factors_of(cfg["long_factors"]) if cfg.get("long_factors") else factors_of(cfg["factor"])
    short_f = factors_of(cfg["short_factors"]) if cfg.get("short_factors") else factors_of(cfg["factor"])
    rules = {k: [rule_of(r) for r in cfg.get(k, ARTICLE_PRE if k == "pre_filters" else [])] for k in RULE_KEYS}
    columns = [f.column for f in long_f + short_f] + [f"{n}_fl_{p}" for n, p in cfg["filters"]]
    columns += [r.column for rs in rules.values() for r in rs]
    if cfg.get("black_list"):
        df = df[~df["symbol"].isin(cfg["black_list"])]
    if cfg.get("white_list"):
        df = df[df["symbol"].isin(cfg["white_list"])]
    df = df[np.isfinite(df[list(dict.fromkeys(columns))].to_numpy(float)).all(axis=1)]

    df = pre(df, rules["pre_filters"])
    pools = {"long": pre(df, rules["long_pre_filters"]), "short": pre(df, rules["short_pre_filters"])}
    one_pool = not rules["long_pre_filters"] and not rules["short_pre_filters"]
    same = one_pool and [(f.column, f.ascending, f.weight) for f in long_f] == [
        (f.column, f.ascending, f.weight) for f in short_f]
    names = {"long": "composite" if same else "long_composite", "short": "composite" if same else "short_composite"}
    ordered = {"long": ordering(pools["long"], long_f, names["long"]),
               "short": ordering(pools["short"], short_f, names["short"])}
    want = {"long": wanted(cfg["long_num"], len(pools["long"])), "short": wanted(cfg["short_num"], len(pools["short"]))}
    if one_pool:
        n, total = len(df), want["long"] + want["short"]
        got = dict(want) if n >= total else {s: n * want[s] // total for s in want}
    else:
        got = {s: min(want[s], len(pools[s])) for s in want}
    picks = {"long": ordered["long"].iloc[len(ordered["long"]) - got["long"]:],
             "short": ordered["short"].iloc[:got["short"]]}
    out = {}
    for side in ("long", "short"):
        pool, keep = pools[side], np.ones(len(pools[side]), dtype=bool)
        for rule in rules["post_filters"] + rules[f"{side}_post_filters"]:
            keep &= compare(rule_values(pool, rule), rule.op, rule.value)
        passed = set(pool["symbol"][keep])
        chosen = picks[side][picks[side]["symbol"].isin(passed)]
        out[side] = size(chosen, capital, want[side], lots) if want[side] else chosen.assign(
            position=pd.Series([], dtype=object), pos_val=pd.Series([], dtype=float))
    return out["long"], out["short"]


def reference_hours(frames_by_hour: dict[datetime, pd.DataFrame], lots: Mapping[str, Decimal],
                    cfg: dict) -> dict[datetime, RefHour]:
    """Walk consecutive hours: each offset rebalances on its hours (with capital / len(offsets)) and holds otherwise."""
    period = period_of(cfg.get("hold_period", "1H"))
    offsets = list(cfg["offsets"]) if cfg.get("offsets") is not None else list(range(period))
    capital = cfg["capital_usdt"] / len(offsets)
    held: dict[int, dict[str, Decimal]] = {o: {} for o in offsets}
    out = {}
    for run_time in sorted(frames_by_hour):
        long, short = reference_hour(frames_by_hour[run_time], lots, cfg, capital)
        fresh: dict[str, Decimal] = {}
        for s, p in zip(long["symbol"], long["position"], strict=True):
            fresh[s] = fresh.get(s, Decimal(0)) + p
        for s, p in zip(short["symbol"], short["position"], strict=True):
            fresh[s] = fresh.get(s, Decimal(0)) - p
        hour = int(run_time.timestamp()) // 3600
        rebalanced = [o for o in offsets if (hour - o) % period == 0]
        for o in rebalanced:
            held[o] = dict(fresh)
        total: dict[str, Decimal] = {}
        for o in offsets:
            for s, q in held[o].items():
                total[s] = total.get(s, Decimal(0)) + q
        out[run_time] = RefHour(long, short, {o: dict(held[o]) for o in offsets}, total, rebalanced)
    return out
