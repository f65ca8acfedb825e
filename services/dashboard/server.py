"""``alphabus dashboard``: one page over a work directory, updated as rounds arrive.

The server is one more subscriber to the position service's selections, authenticated like an outside
executor (its own ``dashboard`` CURVE key, admitted to the selections: ``alphabus keys --client``). It
starts from the rounds the recorder wrote (``selection_his/``), then a thread follows the live
selections and missed hours; the page gets them by server-sent events (``/api/events``) and reads the
paper (or backtest) ``equity.csv`` whenever it changes. Starlette serves the page's static files (no
build step); uvicorn runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from services.dashboard.board import Board, read_equity, recorded_rounds
from shared import bus, security
from shared.client import MissedUpdate, SelectionClient
from shared.config import SelectorConfig
from shared.errors import UserMistake
from shared.quantities import crawler_lots
from shared.service import touch_health_file

log = logging.getLogger("dashboard")
STATIC = Path(__file__).parent / "static"
KEY_NAME = "dashboard"
DEFAULT_PORT = 5705
EVENT_POLL_SEC = 0.5
KEEPALIVE_SEC = 15.0


def record_of(update) -> dict:
    """A live update as the dict the recorder writes for it (selection_his/<stamp>.json)."""
    if isinstance(update, MissedUpdate):
        m = update.missed
        return {"run_time": m.run_time.isoformat(), "missed": True, "reason": m.reason, "detail": m.detail}
    return update.selection.model_dump(mode="json")


class Follower(threading.Thread):
    """Follows the selections (and missed hours) into the board until ``stop`` is set."""

    def __init__(self, board: Board, client: SelectionClient, stop: threading.Event):
        """``client`` is made by the caller (key problems stop the command) and used by this thread alone."""
        super().__init__(daemon=True, name="selections")
        self.board, self.client, self.stop = board, client, stop

    def run(self) -> None:
        client = self.client
        try:
            log.info("following selections at %s (snapshots %s)", bus.endpoint("ALPHABUS_SELECTION_PUB"),
                     bus.endpoint("ALPHABUS_SNAPSHOT"))
            touched = 0.0
            while not self.stop.is_set():
                for update in client.poll(200):
                    self.board.add(record_of(update))
                    log.info("round %s arrived", update.run_time.isoformat())
                client.request_snapshot_after(30.0)  # a restarted position service: ask again now and then
                if time.monotonic() - touched > 1.0:  # the container's health check: this thread is alive
                    touch_health_file()
                    touched = time.monotonic()
        finally:
            client.close()


class Dashboard:
    """The board, the lots and the equity file of one work directory, as the page's JSON."""

    def __init__(self, workdir: Path, cfg: SelectorConfig, equity: Path | None = None):
        self.workdir = workdir
        self.cfg = cfg
        self.equity_path = equity or workdir / "paper" / "equity.csv"
        self.board = Board(recorded_rounds(workdir / "selection_his"))
        self._lots: dict = {}
        self._lots_at = -1
        self._equity: tuple[int, dict | None] = (-1, None)

    def equity_stamp(self) -> int:
        try:
            return self.equity_path.stat().st_mtime_ns
        except OSError:
            return 0

    def state_key(self) -> tuple[int, int]:
        """Changes whenever the page must redraw: a round arrived or the equity file was written."""
        return self.board.version, self.equity_stamp()

    def view(self) -> dict:
        stamp = self.equity_stamp()
        if stamp != self._equity[0]:
            self._equity = (stamp, read_equity(self.equity_path) if stamp else None)
        if self._lots_at != self.board.version:  # lot sizes rarely change: read exginfo once per round
            self._lots, self._lots_at = crawler_lots(self.cfg), self.board.version
        return {**self.board.view(self._lots, self._equity[1]), "workdir": str(self.workdir),
                "capital_usdt": self.cfg.capital_usdt}


def selection_client(workdir: Path, since: str | None) -> SelectionClient:
    """The dashboard's client: its own key pair, made and admitted to the selections on first start."""
    keys = security.stack_keys(workdir)
    if keys is not None and not (keys.folder / f"{KEY_NAME}.key_secret").exists():
        security.add_client(keys.folder, KEY_NAME)  # admitted at once: the server re-reads the folder
        log.info("admitted the dashboard's own CURVE key %s to the selections", keys.folder / f"{KEY_NAME}.key")
    client = SelectionClient(name=KEY_NAME, keys=keys.folder if keys else None, key_name=KEY_NAME, history=True,
                             since=datetime.fromisoformat(since) if since else None,
                             stack=bus.stack_identity(workdir))
    client.deliver_missed = True
    return client


def check_port(host: str, port: int) -> None:
    """A taken port is the user's to change: one sentence, before anything starts."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserMistake(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}; choose another "
                          "with --port (or --host)") from None


def app(dashboard: Dashboard):
    """The Starlette application: the page, its static files, the state as JSON and as server-sent events."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(dashboard.view())

    async def events(request: Request) -> StreamingResponse:
        async def stream():
            sent, quiet = None, 0.0
            while not await request.is_disconnected():
                key = dashboard.state_key()
                if key != sent:
                    sent, quiet = key, 0.0
                    yield f"event: state\ndata: {json.dumps(dashboard.view())}\n\n"
                elif quiet >= KEEPALIVE_SEC:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                await asyncio.sleep(EVENT_POLL_SEC)
                quiet += EVENT_POLL_SEC

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Starlette(routes=[Route("/", page), Route("/api/state", state), Route("/api/events", events),
                             Mount("/static", StaticFiles(directory=STATIC), name="static")])


def main(workdir: Path, cfg: SelectorConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
         equity: Path | None = None) -> int:
    """Serve until SIGINT or SIGTERM (uvicorn handles both)."""
    import uvicorn

    check_port(host, port)
    bus.join_stack(workdir)
    dashboard = Dashboard(workdir, cfg, equity)
    stop = threading.Event()
    follower = Follower(dashboard.board, selection_client(workdir, dashboard.board.newest_run_time()), stop)
    follower.start()
    log.info("dashboard of %s at http://%s:%d/ (%d recorded round(s); equity from %s)", workdir,
             host if host not in ("0.0.0.0", "::") else os.uname().nodename, port,
             dashboard.board.version, dashboard.equity_path)
    try:
        uvicorn.run(app(dashboard), host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
    finally:
        stop.set()
        follower.join(5)
    return 0
