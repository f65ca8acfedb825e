"""The selector's configuration: the article's ``factor_calc.json``, validated.

The article's file works unchanged. Keys it does not have are optional and
their defaults reproduce the article exactly. Validation happens in two stages
(schema, then cross-field checks such as "does this plugin exist") and reports
every invalid field by name in one error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator

from shared import plugins
from shared.clock import DEFAULT_TZ, parse_interval, zone

CONFIG_FILE = "factor_calc.json"

# Strict: JSON's "2", 2.0 or true for a count is a mistake in the file, not something to guess at.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
StrictFlag = Annotated[bool, Strict()]


def _json_number(value: Any) -> Any:
    """int stays int (the article's column names print 120, not 120.0); strings and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a JSON number such as 120, not {_json(value)}")
    return value


Number = Annotated[int | float, BeforeValidator(_json_number)]
OptionalFloat = Annotated[float | None, Strict()]

_FIXES = {  # pydantic error type -> how to fix it
    "int_type": "must be a whole JSON number such as 2",
    "float_type": "must be a JSON number such as 1000",
    "bool_type": "must be JSON true or false",
}


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class ConfigError(Exception):
    """An invalid configuration; ``problems`` holds one sentence per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FactorSpec(_Frozen):
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


class FilterSpec(_Frozen):
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


class PreFilterRule(_Frozen):
    """One pre-filter rule, applied in order to the surviving pool.

    Without ``rank`` the rule keeps rows whose ``column`` lies in [min, max].
    With ``rank`` it first ranks ``column`` over the pool (method 'first'),
    stores the rank as ``<column>_rank`` and keeps ranks in [min, max].
    """

    column: str
    rank: Literal["ascending", "descending"] | None = None
    min: OptionalFloat = None
    max: OptionalFloat = None

    @model_validator(mode="after")
    def _bounded(self) -> PreFilterRule:
        if self.min is None and self.max is None:
            raise ValueError("a pre-filter rule needs min, max or both")
        return self


ARTICLE_PRE_FILTERS = (
    PreFilterRule(column="ChgPctMax_fl_24", max=0.2),
    PreFilterRule(column="Volume_fl_24", rank="descending", max=60),
)


class SelectorConfig(_Frozen):
    """Everything one selector needs. Field names and meanings are the article's."""

    interval: str = Field(description="Candle and round interval, e.g. '1h'.")
    bmac_dir: str = Field(description="The crawler's directory; relative paths resolve against the cwd.")
    bmac_expire_sec: PositiveFloat = Field(description="How long to wait for the crawler's files.")
    factor: FactorSpec
    filters: list[FilterSpec]
    long_num: NonNegativeInt
    short_num: NonNegativeInt
    min_candle_num: NonNegativeInt = Field(description="Symbols with fewer candles are skipped.")
    capital_usdt: PositiveFloat = Field(description="Fixed capital, half long and half short.")
    debug: StrictFlag = Field(False, description="Run the latest closed round once and exit (the article's).")

    # Extensions: every default reproduces the article.
    timezone: str = Field(DEFAULT_TZ, description="The crawler's timezone for run_time and ready files.")
    pre_filters: tuple[PreFilterRule, ...] = Field(
        ARTICLE_PRE_FILTERS, description="Pool rules applied in order; the default is the article's."
    )
    round_grace_sec: PositiveFloat = Field(
        2.0, description="After the market gives up on the crawler, how long to wait for factor results."
    )
    incomplete_round: Literal["publish", "flag", "withhold"] = Field(
        "flag", description="What to do with a round that misses symbols: publish, publish flagged, withhold."
    )

    @property
    def factor_columns(self) -> list[str]:
        return [self.factor.column] + [f.column for f in self.filters]


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _problem(err: Any) -> str:
    """One sentence per bad field: where, what is wrong, and how to fix a wrong JSON type."""
    fix = _FIXES.get(err["type"])
    if fix:
        return f"{_location(err['loc'])}: {fix}, not {_json(err['input'])}"
    return f"{_location(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"


def _cross_checks(cfg: SelectorConfig, workdir: Path | None) -> list[str]:
    problems: list[str] = []
    try:
        parse_interval(cfg.interval)
    except ValueError as e:
        problems.append(f"interval: {e}")
    try:
        zone(cfg.timezone)
    except Exception:
        problems.append(f"timezone: {cfg.timezone!r} is not an IANA timezone such as 'Asia/Hong_Kong'")
    factors = plugins.available("factors", workdir)
    if cfg.factor.name not in factors:
        problems.append(
            f"factor.name: no factor plugin {cfg.factor.name!r}; available: {', '.join(factors) or 'none'}"
        )
    filters = plugins.available("filters", workdir)
    for i, f in enumerate(cfg.filters):
        if f.name not in filters:
            problems.append(
                f"filters.{i}.name: no filter plugin {f.name!r}; available: {', '.join(filters) or 'none'}"
            )
    known = set(cfg.factor_columns)
    for i, rule in enumerate(cfg.pre_filters):
        if rule.column not in known:
            problems.append(
                f"pre_filters.{i}.column: {rule.column!r} is not a configured factor or filter column "
                f"(configured: {', '.join(sorted(known))}); add the filter or set pre_filters"
            )
    return problems


def parse_config(raw: Any, source: str = CONFIG_FILE, workdir: Path | None = None) -> SelectorConfig:
    """Validate a decoded JSON object; raise ConfigError naming every bad field."""
    try:
        cfg = SelectorConfig.model_validate(raw)
    except ValidationError as e:
        problems = [_problem(err) for err in e.errors()]
        raise ConfigError(source, problems) from None
    problems = _cross_checks(cfg, workdir)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(workdir: str | Path) -> SelectorConfig:
    """Read and validate ``WORKDIR/factor_calc.json``."""
    path = Path(workdir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found: create it (see the README's config section)"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), [f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"]) from None
    return parse_config(raw, str(path), Path(workdir))


def resolve_bmac_dir(cfg: SelectorConfig) -> Path:
    """The article opens ``bmac_dir`` relative to the current directory; so do we."""
    return Path(cfg.bmac_dir).expanduser().resolve()
