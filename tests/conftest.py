"""Shared fixtures: paths to the real data set and the article's config."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
def real_data() -> Path:
    if not (REAL_DATA / "candles_top100.parquet").exists():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    return REAL_DATA


def write_config(workdir: Path, bmac_dir: Path | str, **overrides) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "factor_calc.json").write_text(json.dumps(article_config(bmac_dir, **overrides), indent=1))
    return workdir
