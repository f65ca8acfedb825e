"""The selector's configuration: the article's ``factor_calc.json``, validated.

The article's file works unchanged. Keys it does not have are optional and
their defaults reproduce the article exactly. The strategy keys (factors,
filter rules, counts, hold period, offsets) are ``shared.strategy.Strategy``;
the rest (the crawler, timing, capital) are here. Validation happens in two
stages (schema, then cross-field checks such as "does this plugin exist") and
reports every invalid field by name in one error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shared.alerts import AlertsConfig
from shared.clock import DEFAULT_TZ, parse_interval, zone
from shared.strategy import FactorSpec, FilterSpec, Strategy, plugin_checks, validated
from shared.validation import CONFIG_FILE, ConfigError, NonNegativeInt, PositiveFloat, StrictFlag

__all__ = ["CONFIG_FILE", "ConfigError", "FactorSpec", "FilterSpec", "SelectorConfig", "Strategy", "load_config",
           "parse_config", "resolve_bmac_dir"]


class SelectorConfig(Strategy):
    """Everything one selector needs: the strategy, plus where the crawler writes and when. Field names and
    meanings are the article's."""

    interval: str = Field(description="Candle and round interval, e.g. '1h'.")
    bmac_dir: str = Field(description="The crawler's directory; relative paths resolve against the cwd.")
    bmac_expire_sec: PositiveFloat = Field(description="How long to wait for the crawler's files.")
    min_candle_num: NonNegativeInt = Field(description="Symbols with fewer candles are skipped.")
    capital_usdt: PositiveFloat = Field(description="Fixed capital, half long and half short.")
    debug: StrictFlag = Field(False, description="Run the latest closed round once and exit (the article's).")

    # Extensions: every default reproduces the article.
    timezone: str = Field(DEFAULT_TZ, description="The crawler's timezone for run_time and ready files.")
    round_grace_sec: PositiveFloat = Field(
        2.0, description="After the market gives up on the crawler, how long to wait for factor results."
    )
    incomplete_round: Literal["publish", "flag", "withhold"] = Field(
        "flag", description="What to do with a round that misses symbols: publish, publish flagged, withhold."
    )
    alerts: AlertsConfig | None = Field(
        None, description="Messengers to alert (DingDing, WeCom, Telegram, a webhook) and on what; none by default."
    )


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
    return problems + plugin_checks(cfg, workdir)


def parse_config(raw: Any, source: str = CONFIG_FILE, workdir: Path | None = None) -> SelectorConfig:
    """Validate a decoded JSON object; raise ConfigError naming every bad field."""
    return validated(SelectorConfig, raw, source, lambda cfg: _cross_checks(cfg, workdir))


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
