"""The baseline: the original program itself (``bench/original/program.py``), in its pinned environment.

It runs as one long-lived subprocess per bench run (imports paid once, outside every timing), from
a folder laid out like the article's repository: the program, its ``utils``, the built-in
``factors``/``filters`` plugin files and the user plugin files of ``bench/plugins`` (the same files the
stack's work directory gets). The bench asks it for an hour on a work directory and reads back its
own ``perf_counter`` stamps and picks (see the program's docstring for the JSON lines).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

import pandas as pd

from bench.pinned import ensure_venv
from bench.stack import BenchError
from shared.messages import Selection

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PLUGINS = BENCH / "plugins"


@dataclass(frozen=True)
class Picks:
    """What a round decides: (symbol, position) on each side, in order."""

    long: tuple[tuple[str, Decimal], ...]
    short: tuple[tuple[str, Decimal], ...]

    @classmethod
    def of_frames(cls, long: pd.DataFrame, short: pd.DataFrame) -> Picks:
        side = lambda df: tuple((str(s), Decimal(p)) for s, p in zip(df["symbol"], df["position"], strict=True))  # noqa: E731
        return cls(side(long), side(short))

    @classmethod
    def of_selection(cls, sel: Selection) -> Picks:
        return cls(tuple((p.symbol, p.position) for p in sel.long), tuple((p.symbol, p.position) for p in sel.short))

    @classmethod
    def of_reply(cls, reply: dict) -> Picks:
        side = lambda rows: tuple((str(s), Decimal(p)) for s, p in rows)  # noqa: E731
        return cls(side(reply["long"]), side(reply["short"]))


@dataclass(frozen=True)
class OriginalHour:
    """One hour of the original program: its perf_counter stamps (seconds) and its picks."""

    began: float  # step 1 (load_market) starts
    selected: float  # save_selected has written select_his
    finished: float  # save_factor and the step-7 logging are done too
    picks: Picks


def install_plugins(folder: Path) -> None:
    """Copy the user plugin files of bench/plugins into ``folder`` (a work directory's or the program's factors/)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in PLUGINS.glob("*.py"):
        shutil.copy2(path, folder / path.name)


def lay_out(tree: Path) -> Path:
    """The article's repository layout in ``tree``; returns the program to run."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(BENCH / "original", tree, ignore=skip)
    for kind in ("factors", "filters"):
        shutil.copytree(REPO / kind, tree / kind, ignore=skip)
    install_plugins(tree / "factors")
    return tree / "program.py"


class OriginalProgram:
    """The original program as a subprocess in its pinned environment; use as a context manager."""

    def __init__(self, root: Path, progress: Callable[[str], None] = print):
        self.root = root
        self.progress = progress
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = root / "original.log"
        self.versions: dict[str, str] = {}

    def __enter__(self) -> OriginalProgram:
        python = ensure_venv(self.progress)
        program = lay_out(self.root / "original-program")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(python), str(program)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, cwd=program.parent, env=env)
        ready = self._reply()
        self.versions = ready.get("versions", {})
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None, \
            "use OriginalProgram as a context manager"
        return self.proc.stdin, self.proc.stdout

    def _reply(self) -> dict:
        line = self._pipes()[1].readline()
        if not line:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise BenchError(f"the original program exited: {tail[0]} (see {self.log_path})")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"the original program failed: {reply['error']} (see {self.log_path})")
        return reply

    def ask(self, workdir: Path, run_time: datetime) -> None:
        """Start the hour ``run_time`` on ``workdir`` (its factor_calc.json) without waiting for it."""
        stdin = self._pipes()[0]
        stdin.write(json.dumps({"workdir": str(workdir), "run_time": run_time.isoformat()}) + "\n")
        stdin.flush()

    def answer(self) -> OriginalHour:
        """The hour asked last, once the program is done with it."""
        r = self._reply()
        return OriginalHour(r["began"], r["selected"], r["finished"], Picks.of_reply(r))

    def hour(self, workdir: Path, run_time: datetime) -> OriginalHour:
        self.ask(workdir, run_time)
        return self.answer()
