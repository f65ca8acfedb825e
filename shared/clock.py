"""Time helpers: intervals, hour boundaries and the crawler's timestamp format.

The market service owns the clock; everything here is pure arithmetic on
timezone-aware datetimes so that every service agrees on what a run_time is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
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


def boundary_run_time(text: str, interval: timedelta, tz: tzinfo) -> datetime:
    """A user's run time: ISO 8601 and on an interval boundary, else ValueError saying how to fix it.

    A round exists only at a boundary: any other time would wait for ready markers that never come.
    """
    try:
        t = parse_run_time(text, tz)
    except ValueError:
        raise ValueError(f"run time {text!r} is not an ISO 8601 time such as 2024-01-31T08:00:00") from None
    floor = floor_time(t, interval)
    if t != floor:
        raise ValueError(f"run time {text!r} is not on a {_interval_text(interval)} boundary in {tz}; "
                         f"the boundary before it is {floor.isoformat()}")
    return t


def _interval_text(interval: timedelta) -> str:
    seconds = int(interval.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def boundaries_between(after: datetime, before: datetime, interval: timedelta) -> list[datetime]:
    """The interval boundaries strictly between two run_times, counted in UTC so DST zones get real hours."""
    out, t = [], after.astimezone(UTC) + interval
    end = before.astimezone(UTC)
    while t < end:
        out.append(t.astimezone(after.tzinfo))
        t += interval
    return out
