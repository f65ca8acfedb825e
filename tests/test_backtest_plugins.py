"""A user's TA-Lib plugin in the backtest: the exact path (the live row builder on each hour's file, on a
process pool) equals the built-in series; ``--full-history`` says so and reports how far it is off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.backtest.run import Options, run
from services.market.sim import SyntheticMarket
from shared.config import load_config
from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent
BACK, NUM_CANDLES = 24, 100


def _data(folder: Path) -> None:
    market = SyntheticMarket(symbols=6, seed=11, history=180)
    folder.mkdir(parents=True)
    for symbol, df in market.candles(0).items():
        df.to_feather(folder / f"{symbol}.fea")
    market.exginfo().to_feather(folder / "exginfo.fea")


def _workdir(root: Path, name: str) -> Path:
    workdir = write_config(root / name, root / "unused", min_candle_num=60, factor=[name, True, BACK, 0, 1])
    if name != "MtmAtrMean":  # the built-in's file under the user's own name: a user plugin, run as written
        (workdir / "factors").mkdir()
        shutil.copy(REPO / "factors" / "MtmAtrMean.py", workdir / "factors" / f"{name}.py")
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    _data(root / "data")
    results = {}
    for name, full in (("MtmAtrMean", False), ("UserAtr", False), ("UserAtr", True)):
        workdir = _workdir(root, name) if not (root / name).exists() else root / name
        out = root / f"out-{name}-{full}"
        opts = Options(data=root / "data", out=out, num_candles=NUM_CANDLES, full_history=full, workers=2,
                       selections=not full, sample_hours=10)
        results[(name, full)] = (run(workdir, load_config(workdir), opts, say=lambda _: None), out)
    return results


def test_a_user_plugin_on_the_exact_path_equals_the_built_in_series(runs):
    _, builtin = runs[("MtmAtrMean", False)]
    _, user = runs[("UserAtr", False)]
    a = sorted((builtin / "factor_his").glob("*.zip"))
    b = sorted((user / "factor_his").glob("*.zip"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) > 60
    for pa_, pb_ in zip(a, b, strict=True):
        x, y = pd.read_csv(pa_), pd.read_csv(pb_)
        assert x["symbol"].tolist() == y["symbol"].tolist()
        np.testing.assert_allclose(x[f"MtmAtrMean_bh_{BACK}"], y[f"UserAtr_bh_{BACK}"], rtol=1e-9, equal_nan=True)
    sa, sb = pd.read_csv(builtin / "selections.csv"), pd.read_csv(user / "selections.csv")
    assert sa[["run_time", "side", "symbol", "position"]].equals(sb[["run_time", "side", "symbol", "position"]])


def test_full_history_reports_its_difference_from_the_exact_path(runs):
    summary, out = runs[("UserAtr", True)]
    gap = summary["full_history_gap"]
    assert gap["values_compared"] > 30
    # ATR's Wilder recursion seeded at the history's start, not at the file's: a real, measured difference.
    assert 0 < gap["max_rel_diff"] < 1
    assert json.loads((out / "stats.json").read_text())["full_history_gap"] == gap
