"""``alphabus demo``: the simulated crawler and the four services as processes, a few rounds shown, then stop."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from alphabus.display import show
from alphabus.launcher import Services, loopback_endpoints, raise_on_termination, stack_client, start_stack
from shared.quantities import crawler_lots

PLUGIN_FOLDERS = ("factors", "filters")  # a work directory's own plugins, searched before the built-in ones


def demo_config(bmac_dir: Path) -> dict:
    """The article's example configuration."""
    return {
        "interval": "1h", "bmac_dir": str(bmac_dir), "bmac_expire_sec": 30,
        "factor": ["MtmAtrMean", True, 120, 0, 1], "filters": [["ChgPctMax", 24], ["Volume", 24]],
        "long_num": 2, "short_num": 8, "min_candle_num": 999, "capital_usdt": 1000, "debug": False,
    }


def strategy_config(strategy: Path, bmac_dir: Path) -> dict:
    """A strategy folder's ``factor_calc.json`` pointed at ``bmac_dir``, every other key kept.

    ``debug`` is turned off: the demo shows several rounds, the article's debug mode only one.
    """
    from shared.config import CONFIG_FILE, ConfigError

    path = Path(strategy) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found: --strategy takes a work directory holding "
                                      f"{CONFIG_FILE}, e.g. examples/two_factor"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), [f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["(top level): must be a JSON object"])
    return {**raw, "bmac_dir": str(bmac_dir), "debug": False}


def prepare_workdir(workdir: Path, bmac_dir: Path, strategy: Path | None):
    """Write the demo's ``factor_calc.json`` (the article's, or the strategy's) and copy the strategy's own
    plugin folders, then validate it as every service will: a bad strategy stops the demo before any start.
    Returns the loaded config."""
    from shared.config import CONFIG_FILE, ConfigError, load_config

    cfg = demo_config(bmac_dir) if strategy is None else strategy_config(strategy, bmac_dir)
    (workdir / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    if strategy is None:
        return load_config(workdir)
    for folder in PLUGIN_FOLDERS:
        if (Path(strategy) / folder).is_dir():
            shutil.copytree(Path(strategy) / folder, workdir / folder)
    try:
        return load_config(workdir)
    except ConfigError as e:  # name the user's file, not the demo's copy
        raise ConfigError(str(Path(strategy) / CONFIG_FILE), e.problems) from None


def paper_summary(workdir: Path) -> str:
    """The reference executor's equity curve over the demo."""
    path = workdir / "paper" / "equity.csv"
    if not path.exists():
        return "paper executor: no rounds applied"
    equity = pd.read_csv(path)
    lines = ["paper executor (alphabus paper): marked-to-market equity per round, USDT"]
    lines += [f"  {r.run_time}  equity {r.equity:+10.2f}  pnl {r.pnl:+8.2f}  gross {r.gross:9.2f}  "
              f"positions {r.positions}" for r in equity.itertuples()]
    return "\n".join(lines)


def run(rounds: int = 3, symbols: int = 80, replay: Path | None = None, hour_seconds: float = 3.0,
        shards: int = 1, keep: bool = False, strategy: Path | None = None) -> int:
    """The demo in a temporary folder, removed afterwards (unless ``keep``) even on SIGTERM or Ctrl-C.

    ``strategy``: a work directory (e.g. ``examples/two_factor``) whose config the demo runs instead of the
    article's."""
    raise_on_termination()
    root = Path(tempfile.mkdtemp(prefix="alphabus-demo-"))
    try:
        return _run(root, rounds, symbols, replay, hour_seconds, shards, strategy, keep)
    finally:
        if keep:
            print(f"kept {root}: the work directory is {root / 'work'}, the simulated crawler's {root / 'bmac'}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, rounds: int, symbols: int, replay: Path | None, hour_seconds: float, shards: int,
         strategy: Path | None, keep: bool) -> int:
    bmac, workdir = root / "bmac", root / "work"
    workdir.mkdir(parents=True)
    bmac.mkdir()
    cfg = prepare_workdir(workdir, bmac, strategy)
    source = f"replaying {replay}" if replay else f"{symbols} simulated symbols"
    print(f"alphabus demo: {source}, a simulated hour every {hour_seconds:g}s, {shards} factor shard(s)")
    print(f"strategy: {strategy} (its factor_calc.json, bmac_dir set to the simulator)" if strategy
          else "strategy: the article's factor_calc.json")
    if keep:
        print(f"work directory {workdir} (history in select_his/, factor_his/, selection_his/; paper/ holds "
              "the paper executor's fills and equity)")
    print("each round: the picks (shorts negative), gross and net exposure, and this hour's trades; "
          "the services' warnings, if any, go to stderr\n")
    sim_args = ["sim", str(bmac), "--hours", str(rounds + 3), "--hour-seconds", str(hour_seconds),
                "--symbols", str(symbols)]
    if replay:
        sim_args += ["--replay", str(Path(replay).resolve())]
    endpoints = loopback_endpoints()
    shown = 0
    started = time.monotonic()
    with Services({**endpoints, "ALPHABUS_LOG_LEVEL": "WARNING"}) as services:
        client = stack_client(workdir, endpoints, "demo")
        try:
            services.start("sim", sim_args)
            start_stack(services, workdir, shards=shards, clock="follow")
            services.start("paper", ["paper", str(workdir)])
            for update in client.updates(timeout_s=max(60.0, 10 * hour_seconds)):
                print(show(update, crawler_lots(cfg)) + "\n")
                shown += 1
                if shown >= rounds:
                    break
        finally:
            client.close()
    print(f"{shown} round(s) in {time.monotonic() - started:.1f}s; all processes stopped")
    print(paper_summary(workdir))
    return 0 if shown >= rounds else 1
