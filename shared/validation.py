"""Strict configuration models and their errors: one sentence per bad field, saying how to fix it.

Shared by the strategy keys (``shared/strategy.py``) and the rest of ``factor_calc.json``
(``shared/config.py``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

CONFIG_FILE = "factor_calc.json"

# Strict: JSON's "2", 2.0 or true for a count is a mistake in the file, not something to guess at.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
StrictFlag = Annotated[bool, Strict()]


def _json_number(value: Any) -> Any:
    """int stays int (the article's column names print 120, not 120.0); strings and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a JSON number such as 120, not {json_text(value)}")
    return value


Number = Annotated[int | float, BeforeValidator(_json_number)]
OptionalFloat = Annotated[float | None, Strict()]

_FIXES = {  # pydantic error type -> how to fix it
    "int_type": "must be a whole JSON number such as 2",
    "float_type": "must be a JSON number such as 1000",
    "bool_type": "must be JSON true or false",
}


def json_text(value: Any) -> str:
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


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def problem(err: Any) -> str:
    """One sentence per bad field: where, what is wrong, and how to fix a wrong JSON type."""
    fix = _FIXES.get(err["type"])
    if fix:
        return f"{location(err['loc'])}: {fix}, not {json_text(err['input'])}"
    return f"{location(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
