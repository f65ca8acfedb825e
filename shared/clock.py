"""Time helpers: intervals, hour boundaries and the crawler's timestamp format.

The market service owns the clock; everything here is pure arithmetic on
timezone-aware datetimes so that every service agrees on what a run_time is.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

DEFAULT_TZ = "Asia/Hong_Kong"
READY_FORMAT = "%Y%m%d_%H%M%S"

_INTERVAL = re.compile(r"^(\d+)([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def parse_interval(interval: str) -> timedelta:
    """'1h' -> 1 hour. Only minute, hour and day intervals exist on Binance futures."""
    m = _INTERVAL.match(interval)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"interval {interval!r} is not like '5m', '1h' or '1d'")
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def floor_time(t: datetime, interval: timedelta) -> datetime:
    """The latest interval boundary at or before t, in t's timezone (boundaries counted from midnight)."""
    if t.tzinfo is None:
        raise ValueError("floor_time needs a timezone-aware datetime")
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    step = int(interval.total_seconds())
    elapsed = int((t - midnight).total_seconds())
    return midnight + timedelta(seconds=elapsed - elapsed % step)


def latest_boundary(now: datetime, interval: timedelta) -> datetime:
    return floor_time(now, interval)


def next_boundary(now: datetime, interval: timedelta) -> datetime:
    return floor_time(now, interval) + interval


def ready_stamp(run_time: datetime) -> str:
    """The crawler's ready-marker suffix: run_time in the crawler's timezone as YYYYmmdd_HHMMSS."""
    return run_time.strftime(READY_FORMAT)


def parse_run_time(text: str, tz: tzinfo) -> datetime:
    """ISO 8601 run time; a naive one is read in the crawler's timezone."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        return t.replace(tzinfo=tz)
    return t.astimezone(tz)

