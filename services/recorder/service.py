"""Recorder service main loop.

Role: a SelectionClient (SUB to ``selection``, DEALER for snapshots) that
writes the article's history files for every selection. Writes are atomic and
idempotent per run_time, so a restarted recorder that receives the latest
selection again from the snapshot rewrites the same files, never half of one.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from services.recorder.files import write_round
from shared.client import SelectionClient, SelectionUpdate
from shared.clock import zone
from shared.config import SelectorConfig
from shared.service import HeartbeatTimer, StopFlag

log = logging.getLogger("recorder")


def record(workdir: Path, update: SelectionUpdate) -> None:
    sel = update.selection
    t0 = time.perf_counter()
    paths = write_round(workdir, sel, update.factors, update.long, update.short)
    cov = sel.coverage
    log.info("round %s: wrote %s, %s, %s, %s (%d factor rows, %d long, %d short, coverage %d/%d%s) in %.0f ms",
             sel.run_time.isoformat(), *(p.relative_to(workdir) for p in paths.values()),
             len(update.factors), len(sel.long), len(sel.short), cov.received, cov.expected,
             ", INCOMPLETE" if sel.incomplete else "", (time.perf_counter() - t0) * 1000)


def newest_recorded(workdir: Path, tz) -> datetime | None:
    """The newest round whose files are complete (the selection JSON is written last)."""
    stamps = [p.stem for p in (workdir / "selection_his").glob("*.json")]
    if not stamps:
        return None
    return datetime.strptime(max(stamps), "%Y%m%d_%H%M%S").replace(tzinfo=tz)


def main(workdir: Path, cfg: SelectorConfig) -> int:
    stop = StopFlag()
    since = newest_recorded(workdir, zone(cfg.timezone))
    client = SelectionClient(name="recorder", history=True, since=since)
    log.info("recorder writing history under %s (newest recorded round: %s)", workdir.resolve(),
             since.isoformat() if since else "none")
    alive = HeartbeatTimer(None, "recorder")
    try:
        while not stop:
            alive.tick()
            for update in client.poll(200):
                try:
                    record(workdir, update)
                except Exception:
                    log.exception("round %s: writing history failed", update.selection.run_time.isoformat())
        return 0
    finally:
        client.close()
