"""Recorder service main loop.

Role: a SelectionClient (SUB to ``selection``, DEALER for snapshots) that
writes the article's history files for every selection. Writes are atomic and
idempotent per run_time, so a restarted recorder that receives the latest
selection again from the snapshot rewrites the same files, never half of one.
A write the disk refuses (full, read-only) keeps that round and every later one
queued in memory, in order, retried each second until the disk takes them.
An hour without a selection is recorded as ``selection_his/<stamp>.json`` holding
``{"run_time", "missed": true, "reason", "detail"}``; it never replaces a real selection.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

from services.recorder.files import history_paths, write_round
from shared.client import MissedUpdate, SelectionClient, SelectionUpdate
from shared.clock import zone
from shared.config import SelectorConfig
from shared.durable import RetryQueue, write_atomic
from shared.service import HeartbeatTimer, StopFlag

log = logging.getLogger("recorder")


def record(workdir: Path, update: SelectionUpdate | MissedUpdate) -> None:
    if isinstance(update, MissedUpdate):
        record_missed(workdir, update)
        return
    sel = update.selection
    t0 = time.perf_counter()
    paths = write_round(workdir, sel, update.factor_table, update.long_table, update.short_table)
    cov = sel.coverage
    log.info("round %s: wrote %s, %s, %s, %s (%d factor rows, %d long, %d short, coverage %d/%d%s) in %.0f ms",
             sel.run_time.isoformat(), *(p.relative_to(workdir) for p in paths.values()),
             update.factor_table.num_rows, len(sel.long), len(sel.short), cov.received, cov.expected,
             ", INCOMPLETE" if sel.incomplete else "", (time.perf_counter() - t0) * 1000)


def record_missed(workdir: Path, update: MissedUpdate) -> None:
    """The hour's entry in selection_his/, atomically; a selection already recorded there is kept."""
    missed = update.missed
    path = history_paths(workdir, missed.run_time)["selection"]
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {"missed": True}  # unreadable: replacing it loses nothing
        if not recorded.get("missed"):
            log.warning("round %s: reported missed (%s) but a selection is already recorded; kept the selection",
                        missed.run_time.isoformat(), missed.reason)
            return
    entry = {"run_time": missed.run_time.isoformat(), "missed": True, "reason": missed.reason,
             "detail": missed.detail}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(entry, indent=1), encoding="utf-8"))
    log.warning("round %s MISSED (%s): %s; wrote %s", missed.run_time.isoformat(), missed.reason, missed.detail,
                path.relative_to(workdir))


def history_queue(workdir: Path) -> RetryQueue[SelectionUpdate | MissedUpdate]:
    """Rounds waiting to be written, in order: a full or read-only disk delays them (up to
    MAX_QUEUED rounds), never loses them silently."""
    return RetryQueue(lambda update: record(workdir, update),
                      lambda update: f"round {update.run_time.isoformat()}", log, "history")


def newest_recorded(workdir: Path, tz) -> datetime | None:
    """The newest round whose files are complete (the selection JSON is written last)."""
    stamps = [p.stem for p in (workdir / "selection_his").glob("*.json")]
    if not stamps:
        return None
    return datetime.strptime(max(stamps), "%Y%m%d_%H%M%S").replace(tzinfo=tz)


def main(workdir: Path, cfg: SelectorConfig) -> int:
    stop = StopFlag()
    since = newest_recorded(workdir, zone(cfg.timezone))
    client = SelectionClient.member(workdir, "recorder", history=True, since=since)
    log.info("recorder writing history under %s (newest recorded round: %s)", workdir.resolve(),
             since.isoformat() if since else "none")
    alive = HeartbeatTimer(None, "recorder")
    pending = history_queue(workdir)
    try:
        while not stop:
            alive.tick()
            for update in client.poll(200):
                pending.put(update)
            pending.flush()
        return 0
    finally:
        client.close()
