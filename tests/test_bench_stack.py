"""The bench's round timer (bench/stack.py): woken by the recorder's file and the selection, not a 1 ms loop."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import zmq

from bench.stack import BenchStack
from services.recorder.files import history_paths

RUN = datetime(2024, 3, 1, 13, tzinfo=ZoneInfo("Asia/Hong_Kong"))


class _Client:
    """Stands in for the SelectionClient: a selection is any frame pushed into ``sub``."""

    def __init__(self, ctx: zmq.Context):
        self.sub, self.dealer = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
        self.sub.bind("inproc://bench-sub")
        self.dealer.bind("inproc://bench-dealer")

    def poll(self, timeout_ms: int) -> list:
        out = []
        while self.sub.poll(timeout_ms):
            self.sub.recv()
            out.append(SimpleNamespace(selection=SimpleNamespace(run_time=RUN)))
            timeout_ms = 0
        return out


def test_the_round_timer_stamps_the_file_when_it_is_renamed_in_without_polling(tmp_path):
    ctx = zmq.Context()
    client = _Client(ctx)
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://bench-sub")
    stack = BenchStack.__new__(BenchStack)  # no processes: only the waiting is under test
    stack.workdir, stack.client = tmp_path, client
    looks = []
    stack.services = SimpleNamespace(exited=lambda: looks.append(1) and {})
    long = history_paths(tmp_path, RUN)["long"]
    stamps = {}

    def recorder_then_position():
        time.sleep(0.1)
        tmp = long.parent / f".{long.name}.tmp"
        tmp.write_bytes(b"zip")
        stamps["file"] = time.perf_counter()
        os.replace(tmp, long)
        time.sleep(0.2)
        stamps["selection"] = time.perf_counter()
        push.send(b"selection")

    long.parent.mkdir(parents=True)
    writer = threading.Thread(target=recorder_then_position)
    writer.start()
    try:
        update, got_at, written = stack.wait_round(RUN, timeout=30)
    finally:
        writer.join()
        push.close(linger=0)
        client.sub.close(linger=0)
        client.dealer.close(linger=0)
        ctx.term()
    assert update.selection.run_time == RUN
    assert stamps["file"] <= written < stamps["selection"] <= got_at  # the file's event, not a later look
    assert len(looks) <= 15, f"woke {len(looks)} times in 0.3 s: polling, not waiting on events"
