"""Factor and filter plugins with the article's contract.

A factor is ``factors/<Name>.py`` with ``signal(df, back_hour, d_num, column)``;
a filter is ``filters/<Name>.py`` with ``signal(df, param, column)``. Each adds
its named column to the candle frame and returns the frame. Users' files from
the original program work unchanged: a work directory's own ``factors/`` and
``filters/`` folders are searched first, then the built-in packages.

Besides the candle file's columns, a plugin's frame has ``funding_rate``: the
rate of the funding event settled at each candle's close, 0.0 where none was.
The built-in ``FundingRate`` plugins read it; the market sends the funding
history only when some configured plugin may read it (``needs_funding``).

Every call into a plugin is guarded: an exception, a frame that lost rows or
changed its closes, or a missing output column becomes a ``PluginError`` that
names the plugin, so one bad symbol never stops a round.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from shared.strategy import FactorSpec, FilterSpec

Kind = Literal["factors", "filters"]
_BUILTIN_ROOT = Path(__file__).resolve().parent.parent


class PluginError(Exception):
    """A plugin failed or broke its contract for one symbol."""


def _dirs(kind: Kind, workdir: Path | None) -> list[Path]:
    dirs = [_BUILTIN_ROOT / kind]
    if workdir is not None and (Path(workdir) / kind).is_dir():
        dirs.insert(0, Path(workdir) / kind)
    return dirs


def available(kind: Kind, workdir: Path | None = None) -> list[str]:
    """Plugin names a config may use, sorted."""
    names = {p.stem for d in _dirs(kind, workdir) for p in d.glob("*.py") if not p.stem.startswith("_")}
    return sorted(names)


def user_plugin(kind: Kind, name: str, workdir: Path | None) -> Path | None:
    """The work directory's own copy of a plugin, which wins over the built-in one."""
    path = Path(workdir) / kind / f"{name}.py" if workdir is not None else None
    return path if path is not None and path.is_file() else None


def load_signal(kind: Kind, name: str, workdir: Path | None = None) -> Callable[..., Any]:
    """The ``signal`` function of plugin ``name``; the work directory's copy wins over the built-in one."""
    module: ModuleType
    user_file = user_plugin(kind, name, workdir)
    if user_file is not None:
        spec = importlib.util.spec_from_file_location(f"alphabus_user_{kind}.{name}", user_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"{kind}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{kind}.{name}":
                raise
            raise PluginError(
                f"no {kind[:-1]} plugin {name!r}; available: {', '.join(available(kind, workdir))}"
            ) from None
    signal = getattr(module, "signal", None)
    if not callable(signal):
        raise PluginError(f"{kind}/{name}.py has no signal(*args) function")
    return signal


class Calculator:
    """One configured plugin call: the article's FactorCalculator or FilterCalculator."""

    def __init__(self, column: str, signal: Callable[..., Any], args: tuple[Any, ...],
                 kind: Kind | None = None, name: str | None = None, builtin: bool = False):
        self.column = column
        self._signal = signal
        self.args = args
        self.kind, self.name, self.builtin = kind, name, builtin

    @classmethod
    def _load(cls, kind: Kind, name: str, column: str, args: tuple, workdir: Path | None) -> Calculator:
        return cls(column, load_signal(kind, name, workdir), args, kind, name,
                   builtin=user_plugin(kind, name, workdir) is None)

    @classmethod
    def for_factor(cls, spec: FactorSpec, workdir: Path | None = None) -> Calculator:
        return cls._load("factors", spec.name, spec.column, (int(spec.back_hour), spec.d_num), workdir)

    @classmethod
    def for_filter(cls, spec: FilterSpec, workdir: Path | None = None) -> Calculator:
        return cls._load("filters", spec.name, spec.column, (spec.param,), workdir)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        """Run the plugin on one symbol's frame, checking the article's contract."""
        rows, last_close = len(df), df["close"].iat[-1]
        try:
            out = self._signal(df, *self.args, self.column)
        except Exception as e:
            raise PluginError(f"{self.column}: {type(e).__name__}: {e}") from e
        if out is None:
            out = df
        if not isinstance(out, pd.DataFrame):
            raise PluginError(f"{self.column}: signal returned {type(out).__name__}, not a DataFrame")
        if len(out) != rows:
            raise PluginError(f"{self.column}: signal returned {len(out)} rows, expected {rows}")
        new_close = out["close"].iat[-1] if "close" in out else None
        if new_close is None or not (new_close == last_close or (np.isnan(new_close) and np.isnan(last_close))):
            raise PluginError(f"{self.column}: signal changed or dropped the last close")
        if self.column not in out:
            raise PluginError(f"{self.column}: signal did not add its column")
        return out


FUNDING_PLUGINS = frozenset({("factors", "FundingRate"), ("filters", "FundingRate"), ("filters", "FundingRateMean")})
"""The built-in plugins that read funding_rate."""


def reads_funding(calculators: Sequence[Calculator]) -> bool:
    """A built-in funding plugin, or a user's plugin (its code may read funding_rate) is among these."""
    return any(not c.builtin or (c.kind, c.name) in FUNDING_PLUGINS for c in calculators)


def needs_funding(factors: Sequence[FactorSpec], filters: Sequence[FilterSpec], workdir: Path | None = None) -> bool:
    """``reads_funding`` for a config, without importing anyone's code (the market decides what to send by it)."""
    calls: list[tuple[Kind, str]] = [("factors", f.name) for f in factors] + [("filters", f.name) for f in filters]
    return any(call in FUNDING_PLUGINS or user_plugin(call[0], call[1], workdir) is not None for call in calls)


def build_calculators(
    factors: Sequence[FactorSpec], filters: Sequence[FilterSpec], workdir: Path | None = None
) -> list[Calculator]:
    """The factors then the filters, in the article's order."""
    return [Calculator.for_factor(f, workdir) for f in factors] + [Calculator.for_filter(f, workdir) for f in filters]
