"""What every service's main loop shares: logging, clean shutdown, heartbeats, poll-loop timing."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from shared.bus import Publisher, heartbeat_topic
from shared.messages import Heartbeat

HEARTBEAT_SEC = 1.0
POLL_MS = 10


def setup_logging(service: str) -> logging.Logger:
    """One format for every service; ALPHABUS_LOG_LEVEL (default INFO) sets the level."""
    logging.basicConfig(
        level=os.environ.get("ALPHABUS_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)-7s {service:<8} %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        force=True,
    )
    return logging.getLogger(service)


class StopFlag:
    """Set by SIGTERM or SIGINT; loops poll it so sockets close in ``finally``."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def __bool__(self) -> bool:
        return self.stopped


HEALTH_FILE_ENV = "ALPHABUS_HEALTH_FILE"


def touch_health_file() -> None:
    """Container health checks read this file's age (``alphabus health``)."""
    path = os.environ.get(HEALTH_FILE_ENV)
    if path:
        Path(path).touch()


class HeartbeatTimer:
    """Publishes a Heartbeat whenever HEARTBEAT_SEC has passed since the last one."""

    def __init__(self, publisher: Publisher | None, service: str, period: float = HEARTBEAT_SEC):
        self.publisher = publisher
        self.service = service
        self.period = period
        self._next = 0.0

    def tick(self, run_time=None, **state) -> None:
        """Publish if due; a callable state value is only evaluated then."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.period
            touch_health_file()
            state = {k: v() if callable(v) else v for k, v in state.items()}
            if self.publisher is not None:
                self.publisher.send(heartbeat_topic(self.service),
                                    Heartbeat(run_time=run_time, service=self.service, state=state))
