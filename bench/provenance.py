"""Which code the figures belong to: the git commit, the uncommitted files, and a hash of the stack's sources.

Every scenario starts fresh service processes from the working tree, so code edited during a long
run changes what later scenarios measure; hashing the sources at the start and the end says so.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_SOURCES = ("alphabus", "services", "shared", "factors", "filters", "utils")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def source_hash() -> str:
    """sha256 over the path and content of every .py file the services run."""
    digest = hashlib.sha256()
    for folder in STACK_SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_state() -> dict[str, object]:
    """The commit, the uncommitted stack files and the sources' hash, right now."""
    status = _git("status", "--porcelain", "--", *STACK_SOURCES)  # None: not a git checkout
    head = _git("rev-parse", "--short", "HEAD")
    return {"git_head": head.strip() if head else None,
            "uncommitted": None if status is None else sorted(line[3:] for line in status.splitlines()),
            "source_sha": source_hash()}
