"""The strategy keys of ``factor_calc.json``: several factors, filter rules, counts, hold period, offsets.

Users of the neutral coin-selection frameworks write strategies in these forms; the defaults
reproduce the article exactly. The models are standalone for now: ``SelectorConfig`` will take
the same fields with the same names and types (``factor``, ``long_num``, ``short_num`` and
``pre_filters`` change type, the others are new), so merging is adding fields.

Validation is two-stage, as in ``shared.config``: the schema (every bad field named with its
location, e.g. ``pre_filters.1.2`` for the rule text of the second rule), then the plugin check
that needs the work directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared import plugins
from shared.validation import (
    CONFIG_FILE,
    ConfigError,
    Frozen,
    NonNegativeInt,
    Number,
    StrictFlag,
    json_text,
    problem,
)

M = TypeVar("M", bound=Frozen)


class FactorSpec(Frozen):
    """The article's ``["MtmAtrMean", true, 120, 0, 1]``: name, reverse, back_hour, d_num, weight."""

    name: str
    reverse: StrictFlag = Field(description="Sort ascending when true: the head is shorted, the tail longed.")
    back_hour: Number = Field(gt=0)
    d_num: Number = Field(ge=0, description="Fractional difference order; 0 disables it.")
    weight: Number = 1

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 5:
                raise ValueError(
                    f"factor must be [name, reverse, back_hour, d_num, weight], got {len(value)} items"
                )
            return dict(zip(["name", "reverse", "back_hour", "d_num", "weight"], value, strict=True))
        return value

    @property
    def column(self) -> str:
        """Column name exactly as the article's FactorCalculator builds it."""
        if self.d_num == 0:
            return f"{self.name}_bh_{self.back_hour}"
        return f"{self.name}_bh_{self.back_hour}_diff_{self.d_num}"


class FilterSpec(Frozen):
    """The article's ``["ChgPctMax", 24]``: a filter plugin and its parameter."""

    name: str
    param: Any

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise ValueError(f"a filter must be [name, param], got {len(value)} items")
            return {"name": value[0], "param": value[1]}
        return value

    @property
    def column(self) -> str:
        return f"{self.name}_fl_{self.param}"


HOWS = ("rank", "pct", "val")
OPS = (">=", "<=", "==", "!=", ">", "<")
_RULE = re.compile(r"(?P<how>[a-z]+):(?P<op>>=|<=|==|!=|>|<)(?P<value>.*)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_RULE_FORM = ('write "how:OPvalue" with how rank, pct or val, OP one of >= <= > < == != and a plain number, '
              'e.g. "rank:<=60", "pct:<0.8" or "val:>=0.5"')


class ParsedRule(NamedTuple):
    how: str
    op: str
    value: float


def parse_rule(text: str) -> ParsedRule:
    """``"rank:<=60"`` -> ``("rank", "<=", 60.0)``; whitespace is ignored, anything else is a ValueError saying how."""
    compact = re.sub(r"\s+", "", text).lower()
    match = _RULE.fullmatch(compact)
    if match is None or match["how"] not in HOWS:
        raise ValueError(f"{json_text(text)} does not parse; {_RULE_FORM}")
    if not _NUMBER.fullmatch(match["value"]):
        raise ValueError(f"{json_text(text)}: the value {json_text(match['value'])} is not a plain number; "
                         f"{_RULE_FORM}")
    return ParsedRule(match["how"], match["op"], float(match["value"]))


def _rule_text(text: str) -> str:
    parse_rule(text)
    return text


RuleText = Annotated[str, Strict(), AfterValidator(_rule_text)]


class FilterRule(Frozen):
    """``[name, param, "how:OPvalue"]`` or ``[name, param, "how:OPvalue", ascending]``, the frameworks' form.

    The rule reads the column of filter plugin ``name`` with ``param`` (``<name>_fl_<param>``):
    ``val`` compares the raw value, ``rank`` its rank over the pool (method "first", ascending by
    default), ``pct`` that rank divided by the pool size. Fields are aliased "0".."3" so that an
    error names the list position, e.g. ``pre_filters.1.2`` for the text of the second rule.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: Annotated[str, Strict()] = Field(alias="0", description="A filter plugin in filters/.")
    param: Any = Field(alias="1", description="The plugin's parameter, as in the filters key.")
    rule: RuleText = Field(alias="2", description='"how:OPvalue", e.g. "rank:<=60".')
    ascending: StrictFlag = Field(True, alias="3", description="Rank direction for rank and pct rules.")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) not in (3, 4):
                raise ValueError(f'a filter rule must be [name, param, "how:OPvalue"] or [name, param, '
                                 f'"how:OPvalue", ascending], got {len(value)} items')
            return {str(i): v for i, v in enumerate(value)}
        return value

    @property
    def parsed(self) -> ParsedRule:
        return parse_rule(self.rule)

    @property
    def filter(self) -> FilterSpec:
        return FilterSpec(name=self.name, param=self.param)

    @property
    def column(self) -> str:
        return self.filter.column

    def as_list(self) -> list[Any]:
        return [self.name, self.param, self.rule, self.ascending]


def _count(value: Any) -> Any:
    """JSON 1 is one coin, 1.0 the whole pool; strings and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a whole number of coins such as 2 or a fraction of the pool in (0, 1] "
                         f"such as 0.1, not {json_text(value)}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"must be 0 or more coins, not {value}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"a fraction of the pool must be in (0, 1], such as 0.1, not {value}; "
                         f"write a whole number such as 2 for a fixed count")
    return value


Count = Annotated[Annotated[int, Strict()] | Annotated[float, Strict()], BeforeValidator(_count)]

_PERIOD = re.compile(r"(\d+)([A-Za-z]*)")


def period_hours(text: str) -> int:
    """``"6H"`` -> 6, ``"1D"`` -> 24 (case-insensitive)."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None:
        raise ValueError(f'{json_text(text)} is not a hold period; write hours as "6H" or days as "1D"')
    n, unit = int(match[1]), match[2].upper()
    if unit not in ("H", "D"):
        raise ValueError(f'{json_text(text)} has {"no unit" if not unit else f"the unknown unit {unit!r}"}; '
                         f'use H for hours or D for days, e.g. "6H" or "1D"')
    if n == 0:
        raise ValueError(f'{json_text(text)} is empty; a hold period is at least "1H"')
    return n * 24 if unit == "D" else n


def _hold_period(text: str) -> str:
    period_hours(text)
    return text


HoldPeriod = Annotated[str, Strict(), AfterValidator(_hold_period)]

# The article's `factor` is one 5-tuple; a list of 5-tuples is several factors. The tags are
# pydantic's branch names; _location drops them so errors read `factor.reverse` / `factor.1.reverse`.
_ONE, _MANY = "one factor", "several factors"


def _one_or_many(value: Any) -> str:
    several = isinstance(value, list | tuple) and bool(value) and isinstance(value[0], list | tuple | dict | FactorSpec)
    return _MANY if several else _ONE


Factors = tuple[FactorSpec, ...]
FactorInput = Annotated[
    Annotated[FactorSpec, Tag(_ONE)] | Annotated[Factors, Tag(_MANY)], Discriminator(_one_or_many)
]
Symbols = tuple[Annotated[str, Strict()], ...]
Rules = tuple[FilterRule, ...]

ARTICLE_FACTOR = ["MtmAtrMean", True, 120, 0, 1]
ARTICLE_FILTERS = [["ChgPctMax", 24], ["Volume", 24]]
ARTICLE_PRE_RULES: Rules = (
    FilterRule(name="ChgPctMax", param=24, rule="val:<=0.2"),
    FilterRule(name="Volume", param=24, rule="rank:<=60", ascending=False),
)


def as_factors(factor: FactorSpec | Factors) -> Factors:
    return (factor,) if isinstance(factor, FactorSpec) else tuple(factor)


class Strategy(Frozen):
    """What to hold: factors and their weights, filter rules, counts per side, hold period and offsets."""

    factor: FactorInput = Field(description="[name, reverse, back_hour, d_num, weight], or a list of them.")
    long_factors: Factors | None = Field(None, min_length=1, description="Replaces factor for the long side.")
    short_factors: Factors | None = Field(None, min_length=1, description="Replaces factor for the short side.")
    filters: tuple[FilterSpec, ...] = Field(description="Filter plugins whose columns every symbol gets.")
    pre_filters: Rules = Field(ARTICLE_PRE_RULES, description="Pool rules for both sides, in order.")
    long_pre_filters: Rules = Field((), description="Then these, for the long side's pool.")
    short_pre_filters: Rules = Field((), description="Then these, for the short side's pool.")
    post_filters: Rules = Field((), description="Picks failing these are dropped without replacement.")
    long_post_filters: Rules = ()
    short_post_filters: Rules = ()
    long_num: Count = Field(description="Coins to long: a whole number, or a fraction of the pool in (0, 1].")
    short_num: Count = Field(description="Coins to short: a whole number, or a fraction of the pool in (0, 1].")
    hold_period: HoldPeriod = Field("1H", description='"<N>H" or "<N>D"; each offset holds its picks this long.')
    offsets: tuple[NonNegativeInt, ...] | None = Field(
        None, min_length=1, description="Hours in [0, period) at which a sub-portfolio rebalances; default all.")
    black_list: Symbols = Field((), description="Symbols never in the pool.")
    white_list: Symbols = Field((), description="Only these symbols (empty: all).")

    @field_validator("factor", "long_factors", "short_factors")
    @classmethod
    def _weighted(cls, value: FactorSpec | Factors | None) -> FactorSpec | Factors | None:
        if value is not None and sum(f.weight for f in as_factors(value)) == 0:
            raise ValueError("the weights sum to zero; give at least one factor a positive weight")
        return value

    @field_validator("offsets")
    @classmethod
    def _offsets_in_period(cls, value: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        if value is None or "hold_period" not in info.data:  # a bad hold_period is reported on its own
            return value
        hours, problems = period_hours(info.data["hold_period"]), []
        outside = [str(o) for o in value if o >= hours]
        if outside:
            problems.append(f"{', '.join(outside)} not within the {hours}-hour hold_period "
                            f"{json_text(info.data['hold_period'])}; use offsets from 0 to {hours - 1}")
        twice = sorted({o for i, o in enumerate(value) if o in value[:i]})
        if twice:
            problems.append(f"{', '.join(map(str, twice))} repeated; list each offset once")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @classmethod
    def article(cls) -> Strategy:
        """The article's strategy: one factor, its two filters and rules, 2 long, 8 short, one-hour hold."""
        return cls.model_validate({"factor": ARTICLE_FACTOR, "filters": ARTICLE_FILTERS,
                                   "long_num": 2, "short_num": 8})

    @property
    def long_factor_list(self) -> Factors:
        return self.long_factors or as_factors(self.factor)

    @property
    def short_factor_list(self) -> Factors:
        return self.short_factors or as_factors(self.factor)

    @property
    def shared_pool(self) -> bool:
        """Both sides choose from one pool (no side-specific pre rules): the shortfall rule splits it."""
        return not self.long_pre_filters and not self.short_pre_filters

    @property
    def shared_ranking(self) -> bool:
        """One pool ranked one way: the sides are the head and tail of one ordering."""
        return self.shared_pool and self.long_factor_list == self.short_factor_list

    def composite_column(self, side: str) -> str | None:
        """None for a side ranked by one raw factor; else ``composite`` or ``<side>_composite``."""
        factors = self.long_factor_list if side == "long" else self.short_factor_list
        if len(factors) == 1:
            return None
        return "composite" if self.shared_ranking else f"{side}_composite"

    @property
    def composite_columns(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.composite_column("long"), self.composite_column("short")) if c))

    @property
    def factor_specs(self) -> list[FactorSpec]:
        """Every factor either side ranks by, each once, in config order: what the workers compute."""
        return list({f.column: f for f in (*self.long_factor_list, *self.short_factor_list)}.values())

    @property
    def factor_columns(self) -> list[str]:
        """Every factor column either side ranks by, each once, in config order."""
        return list(dict.fromkeys(f.column for f in (*self.long_factor_list, *self.short_factor_list)))

    @property
    def rules(self) -> list[tuple[str, FilterRule]]:
        """Every rule with its location, e.g. ``("pre_filters.1", rule)``."""
        keys = ("pre_filters", "long_pre_filters", "short_pre_filters", "post_filters", "long_post_filters",
                "short_post_filters")
        return [(f"{key}.{i}", rule) for key in keys for i, rule in enumerate(getattr(self, key))]

    @property
    def all_filters(self) -> list[FilterSpec]:
        """The configured filters, then those only a rule names: every filter plugin to run."""
        found = {f.column: f for f in self.filters}
        for _, rule in self.rules:
            found.setdefault(rule.column, rule.filter)
        return list(found.values())

    @property
    def filter_columns(self) -> list[str]:
        return [f.column for f in self.all_filters]

    @property
    def columns(self) -> list[str]:
        """Factor and filter columns: a row with any of them not finite leaves the pool (the article's rule)."""
        return list(dict.fromkeys([*self.factor_columns, *self.filter_columns]))

    @property
    def period_hours(self) -> int:
        return period_hours(self.hold_period)

    @property
    def offset_list(self) -> tuple[int, ...]:
        return self.offsets if self.offsets is not None else tuple(range(self.period_hours))


STRATEGY_KEYS = tuple(Strategy.model_fields)


def problem_without_tags(err: Any) -> str:
    """shared.config's sentence for one pydantic error, with the factor union's branch tags dropped."""
    return problem({**err, "loc": tuple(p for p in err["loc"] if p not in (_ONE, _MANY))})


def plugin_checks(strategy: Strategy, workdir: Path | None) -> list[str]:
    problems: list[str] = []
    factors = plugins.available("factors", workdir)
    listed = ", ".join(factors) or "none"
    for key in ("factor", "long_factors", "short_factors"):
        value = getattr(strategy, key)
        if value is None:
            continue
        for i, f in enumerate(as_factors(value)):
            if f.name not in factors:
                where = f"{key}.name" if isinstance(value, FactorSpec) else f"{key}.{i}.name"
                problems.append(f"{where}: no factor plugin {f.name!r}; available: {listed}")
    filters = plugins.available("filters", workdir)
    listed = ", ".join(filters) or "none"
    for i, f in enumerate(strategy.filters):
        if f.name not in filters:
            problems.append(f"filters.{i}.name: no filter plugin {f.name!r}; available: {listed}")
    for where, rule in strategy.rules:
        if rule.name not in filters:
            problems.append(f"{where}.0: the rule {json_text(rule.as_list())} names no filter plugin {rule.name!r} "
                            f"(it would read column {rule.column!r}); available: {listed}")
    return problems


def validated(model: type[M], raw: Any, source: str, checks: Callable[[M], list[str]]) -> M:
    """Schema first, then the cross-field ``checks``; ConfigError names every bad field of either stage."""
    try:
        value = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(source, [problem_without_tags(err) for err in e.errors()]) from None
    problems = checks(value)
    if problems:
        raise ConfigError(source, problems)
    return value


def parse_strategy(raw: Any, source: str = CONFIG_FILE, workdir: Path | None = None) -> Strategy:
    """Only the strategy keys of a decoded ``factor_calc.json`` (others are ignored); ConfigError names every bad
    one. ``shared.config.parse_config`` validates the whole file the same way."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): must be a JSON object, not {json_text(raw)}"])
    return validated(Strategy, {k: raw[k] for k in STRATEGY_KEYS if k in raw}, source,
                     lambda strategy: plugin_checks(strategy, workdir))
