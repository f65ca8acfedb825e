"""Shared fixtures: paths to the real data set and the article's config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.reference import article_config

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "binance_usdm_1h"


@pytest.fixture(autouse=True)
def one_process_per_factor_service(monkeypatch):
    """Stacks in tests compute each shard in one process unless a test asks for a pool: dozens of stacks on a
    2-core CI would otherwise each spawn pool processes. The pool itself is tested in test_factor_rows.py and
    under a live stack in test_stack.py."""
    if "ALPHABUS_FACTOR_WORKERS" not in os.environ:
        monkeypatch.setenv("ALPHABUS_FACTOR_WORKERS", "1")


@pytest.fixture
def pub_sub():
    """A market's XPUB on a free loopback port and a SUB to its round and candle topics."""
    import zmq

    from alphabus.launcher import free_port
    from shared import bus

    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.XPUB_VERBOSER, 1)
    address = f"tcp://127.0.0.1:{free_port()}"
    pub.bind(address)
    sub.connect(address)
    for topic in (bus.ROUND_OPEN, bus.ROUND_CLOSED, "candle.", bus.CANDLE_PATHS):
        sub.setsockopt_string(zmq.SUBSCRIBE, topic)
    yield pub, sub
    pub.close(0)
    sub.close(0)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "candles_top100.parquet").exists():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    return REAL_DATA


def write_config(workdir: Path, bmac_dir: Path | str, **overrides) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "factor_calc.json").write_text(json.dumps(article_config(bmac_dir, **overrides), indent=1))
    return workdir


class ServiceLog:
    """Everything this test's processes wrote to stderr so far, read through a handle of our own on
    pytest's capture file (``capfd`` must be active).

    ``capfd.readouterr()`` truncates that file after reading it: a line a service writes between the
    read and the truncation is lost, and a test waiting for that line fails once in a while. This handle
    never truncates; it reads on from where it stopped.
    """

    def __init__(self) -> None:
        self._file: BinaryIO | None = None
        self._bytes = b""

    def read(self) -> str:
        if self._file is None:  # opened in the test itself: pytest swaps fd 2 between setup and call
            self._file = open("/proc/self/fd/2", "rb")  # held for the test; close() closes it
        self._bytes += self._file.read()
        return self._bytes.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 10.0, poke=None) -> str:
        """Until ``needle`` was written (``poke`` is called between looks); returns the log so far."""
        deadline = time.monotonic() + timeout
        while needle not in (text := self.read()):
            assert time.monotonic() < deadline, f"no log line with {needle!r} within {timeout}s in:\n{text}"
            if poke:
                poke()
            time.sleep(0.1)
        return text

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@pytest.fixture
def service_log(capfd):
    """The services' stderr as the test goes (see ServiceLog); capfd keeps it out of the terminal."""
    log = ServiceLog()
    yield log
    log.close()
