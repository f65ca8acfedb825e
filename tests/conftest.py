"""Shared fixtures: paths to the real data set and the article's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reference import article_config

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "binance_usdm_1h"


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "candles_top100.parquet").exists():
        pytest.skip(f"real data set not present at {REAL_DATA}")
    return REAL_DATA


def write_config(workdir: Path, bmac_dir: Path | str, **overrides) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "factor_calc.json").write_text(json.dumps(article_config(bmac_dir, **overrides), indent=1))
    return workdir
