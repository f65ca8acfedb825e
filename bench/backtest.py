"""``python -m bench.backtest``: how fast ``alphabus backtest`` runs, figures printed, nothing asserted.

Parts (``--parts``, default all):
  real       the real data set (100 symbols, ~3,000 hours after the first 1,500 candles), the article's
             config, built-in factors (vectorised series), on ``--workers`` processes
  plugin     the same with a user's plugin on the exact path: the live row builder on every hour's 1,500-candle
             file; ``--plugin`` picks the file (default the built-in MtmAtrMean's file under another name, TA-Lib
             ATR; or bench/plugins' Cci or Bias), ``--plugin-hours`` limits the hours (the figure says how many)
  rows       CPU per symbol of the live row builder (the code the exact path shares) on 1,500-candle files as the
             simulator writes them, for bench/plugins' Cci and Bias and the built-in kernels: the median over
             ``--rows-repeats`` passes over ``--rows-symbols`` files, in this process
  synthetic  a simulated history of ``--symbols`` coins (default 1,000) written as feather files
  compare    ``--compare-live`` on ``--compare-hours`` hours (default 50): the four services replaying them
Peak memory is this process's and its children's maximum resident set (getrusage); ``cpu_s`` the CPU
seconds of this process and its pools' processes (getrusage), steadier than the wall on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.scenario import progress
from services.backtest.run import Options, run
from shared.config import load_config
from tests.conftest import REAL_DATA, write_config

REPO = Path(__file__).resolve().parent.parent


def peak_mb() -> float:
    usage = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(usage / 1024, 1)


def cpu_s() -> float:
    """CPU seconds of this process and its finished children: on a shared machine, steadier than the wall."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))


def _run(workdir: Path, data: Path, out: Path, workers: int, **options) -> dict:
    started, cpu = time.perf_counter(), cpu_s()
    summary = run(workdir, load_config(workdir), Options(data=data, out=out, workers=workers, **options),
                  say=lambda _: None)
    elapsed = time.perf_counter() - started
    return {"hours": summary["hours"], "elapsed_s": round(elapsed, 2), "cpu_s": round(cpu_s() - cpu, 2),
            "hours_per_s": round(summary["hours"] / elapsed, 1), "timing_s": summary["timing_s"], "peak_mb": peak_mb()}


def part_real(root: Path, workers: int) -> dict:
    workdir = write_config(root / "real", root / "unused")
    return _run(workdir, REAL_DATA, root / "real-out", workers)


PLUGINS = {"UserMtmAtr": REPO / "factors" / "MtmAtrMean.py", "Cci": REPO / "bench" / "plugins" / "Cci.py",
           "Bias": REPO / "bench" / "plugins" / "Bias.py"}


def plugin_workdir(root: Path, name: str, bmac: Path | str) -> Path:
    """A work directory whose factor is the user's plugin ``name`` (a file of PLUGINS), back_hour 120."""
    workdir = write_config(root, bmac, factor=[name, True, 120, 0, 1])
    (workdir / "factors").mkdir(exist_ok=True)
    shutil.copy(PLUGINS[name], workdir / "factors" / f"{name}.py")
    return workdir


def part_plugin(root: Path, workers: int, hours: int | None, plugin: str = "UserMtmAtr") -> dict:
    workdir = plugin_workdir(root / "plugin", plugin, root / "unused")
    options = {}
    if hours:
        from services.market.sim import ReplayMarket

        market = ReplayMarket(REAL_DATA)
        options = {"start": market.run_time(0).isoformat(), "end": market.run_time(hours - 1).isoformat()}
    return {"plugin": plugin, **_run(workdir, REAL_DATA, root / "plugin-out", workers, **options)}


def part_rows(root: Path, symbols: int, repeats: int) -> dict:
    """CPU ms per symbol of the live path (``compute.factor_row``: decode, check, frame, plugins, row)."""
    from datetime import timedelta

    from services.factor.compute import factor_row, row_builder
    from services.market.sim import SyntheticMarket, write_hour
    from shared.bmac import BmacDir, read_candle_table
    from shared.plugins import build_calculators

    bmac = BmacDir(root / "rows-bmac", "1h")
    closed = write_hour(bmac, SyntheticMarket(symbols=symbols, seed=3, history=1500), 3) - timedelta(hours=1)
    files = {s: bmac.candle_path(s).read_bytes() for s in sorted(bmac.candle_symbols())}
    files = {s: data for s, data in files.items() if read_candle_table(data, s).num_rows == 1500}
    out: dict = {"symbols": len(files), "candles": 1500}
    for name in ("Cci", "Bias", "builtin"):
        workdir = write_config(root / "rows-builtin", bmac.root) if name == "builtin" else \
            plugin_workdir(root / f"rows-{name}", name, bmac.root)
        cfg = load_config(workdir)
        build = row_builder(build_calculators(cfg.factor_specs, cfg.all_filters, workdir))
        passes = []
        for _ in range(repeats):
            started = time.process_time()
            for symbol, data in files.items():
                factor_row(data, symbol, symbol, build, cfg.min_candle_num, closed)
            passes.append((time.process_time() - started) * 1e3 / len(files))
        out[name] = {"cpu_ms_per_symbol": round(statistics.median(passes), 3), "passes": [round(x, 3) for x in passes]}
    return out


def part_synthetic(root: Path, workers: int, symbols: int, candles: int) -> dict:
    from services.market.sim import SyntheticMarket

    data = root / f"synthetic-{symbols}"
    data.mkdir()
    started = time.perf_counter()
    market = SyntheticMarket(symbols=symbols, seed=7, history=candles)
    for symbol, df in market.candles(0).items():
        df.to_feather(data / f"{symbol}.fea")
    market.exginfo().to_feather(data / "exginfo.fea")
    market.funding(0).to_feather(data / "funding.fea")
    written = round(time.perf_counter() - started, 1)
    workdir = write_config(root / "synthetic", root / "unused")
    out = _run(workdir, data, root / "synthetic-out", workers)
    return {"symbols": symbols, "candles": candles, "written_s": written, **out}


def part_compare(root: Path, hours: int) -> dict:
    from services.market.sim import ReplayMarket

    workdir = write_config(root / "compare", root / "unused")
    market = ReplayMarket(REAL_DATA)
    argv = [sys.executable, "-m", "alphabus", "backtest", str(workdir), "--data", str(REAL_DATA),
            "--end", market.run_time(hours - 1).isoformat(), "--compare-live", str(hours)]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    stats = json.loads((workdir / "backtest" / "stats.json").read_text()) if done.returncode == 0 else {}
    return {"exit": done.returncode, "elapsed_s": round(time.perf_counter() - started, 1),
            **stats.get("compare_live", {"error": done.stderr[-500:]})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="real,plugin,synthetic,compare")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--plugin-hours", type=int, help="hours for the plugin part (default: all)")
    p.add_argument("--plugin", choices=sorted(PLUGINS), default="UserMtmAtr", help="the plugin part's factor file")
    p.add_argument("--rows-symbols", type=int, default=100, help="simulated symbols for the rows part")
    p.add_argument("--rows-repeats", type=int, default=5, help="passes over them for the rows part")
    p.add_argument("--symbols", type=int, default=1000)
    p.add_argument("--candles", type=int, default=2000, help="synthetic candles per symbol")
    p.add_argument("--compare-hours", type=int, default=50)
    args = p.parse_args(argv)
    if not (REAL_DATA / "candles_top100.parquet").exists():
        print(json.dumps({"skipped": f"real data set not present at {REAL_DATA}"}))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        root = Path(tmp)
        for part in args.parts.split(","):
            progress(f"backtest: {part}")
            if part == "real":
                results[part] = part_real(root, args.workers)
            elif part == "plugin":
                results[part] = part_plugin(root, args.workers, args.plugin_hours, args.plugin)
            elif part == "rows":
                results[part] = part_rows(root, args.rows_symbols, args.rows_repeats)
            elif part == "synthetic":
                results[part] = part_synthetic(root, args.workers, args.symbols, args.candles)
            elif part == "compare":
                results[part] = part_compare(root, args.compare_hours)
            else:
                p.error(f"unknown part {part!r}")
            progress(f"backtest {part}: {json.dumps(results[part])}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
