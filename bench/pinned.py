"""The original program's environment: a virtual environment with the versions its users run, made once and kept.

``python3 -m venv`` + pip, in ``~/.cache/alphabus/original-<hash of the pins and Python version>/``
(``ALPHABUS_ORIGINAL_VENV`` names another folder). A ``.complete`` file is written only after the
install and an import check succeeded, so an interrupted install is redone; a lock keeps two runs
from building the same folder at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# TA-Lib 0.8.2: the release alphabus's own environment has, so both sides compute with the same C core; its
# PyPI wheels bundle the C library and work with numpy 1.26 (no compiler or system library needed).
PINS = ("pandas==2.2.1", "numpy==1.26.4", "pyarrow==15.0.2", "TA-Lib==0.8.2")
VENV_ENV = "ALPHABUS_ORIGINAL_VENV"
INSTALL_TIMEOUT = 900.0


class PinnedEnvError(RuntimeError):
    """The environment could not be made; the message is one line that says what to do."""


def venv_dir() -> Path:
    """Where the environment lives: ``$ALPHABUS_ORIGINAL_VENV``, else the cache folder named by the pins."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser()
    key = hashlib.sha256(" ".join((*PINS, f"py{sys.version_info[0]}.{sys.version_info[1]}")).encode()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "alphabus" / f"original-{key[:12]}"


def _run(cmd: list[str], what: str, folder: Path) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PinnedEnvError(f"cannot create the original program's environment in {folder}: {what}: {e}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or ["no output"])[-1]
        raise PinnedEnvError(f"cannot create the original program's environment in {folder}: {what} failed: "
                             f"{last}")


def ensure_venv(progress: Callable[[str], None] = print) -> Path:
    """The environment's python, made (once) if it is not there yet."""
    folder = venv_dir()
    python = folder / "bin" / "python"
    if (folder / ".complete").exists():
        return python
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / ".complete").exists():  # else another run made it while we waited
                _create(folder, python, progress)
    except OSError as e:
        raise PinnedEnvError(f"cannot create the original program's environment in {folder}: {e} "
                             f"(set {VENV_ENV} to a writable folder)") from None
    return python


def _create(folder: Path, python: Path, progress: Callable[[str], None]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    progress(f"creating the original program's environment ({', '.join(PINS)}) in {folder}: once, ~1 min")
    _run([sys.executable, "-m", "venv", str(folder)], "python -m venv", folder)
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS], "pip install", folder)
    _run([str(python), "-c", "import pandas, numpy, pyarrow, talib"], "importing the pinned packages", folder)
    (folder / ".complete").write_text("\n".join(PINS) + "\n")
