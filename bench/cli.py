"""The ``python -m bench`` command: options, the run over every scenario, the table and the JSON line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bench
from bench.feed import Feed
from bench.procs import machine
from bench.provenance import source_hash, source_state
from bench.replay import run_replay
from bench.report import evaluate, render
from bench.scenario import progress, run_scenario
from services.market.sim import SyntheticMarket
from shared.bmac import BmacDir
from tests.conftest import REAL_DATA
from tests.reference import article_config

CANDLES = 1500  # the article's history per symbol (min_candle_num is 999)
SEED = 7


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_ints, help="universe sizes (default 200,1000,2000; --quick: 200)")
    p.add_argument("--rounds", type=int, help="measured rounds per mode and scenario (default 5; --quick: 3)")
    p.add_argument("--shards", type=_ints, help="factor shard counts (default 1,2; --quick: 1)")
    p.add_argument("--replay-rounds", type=int, help="rounds of the real-data replay, 0 to skip (default 20; "
                                                     "--quick: 5)")
    p.add_argument("--spread-sec", type=float, default=1.0, help="live: spread the ready markers over this long")
    p.add_argument("--round-grace-sec", type=float, help="override the stack's round_grace_sec (default: the "
                                                        "article's config, where it is 2)")
    p.add_argument("--strategy", type=Path, metavar="DIR",
                   help="run the stack with this work directory's factor_calc.json (e.g. examples/two_factor; its "
                        "bmac_dir is replaced); the pandas loop is compared only for the article's strategy")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200 symbols, 3 rounds, 1 shard")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    defaults = ({"sizes": [200], "rounds": 3, "shards": [1], "replay_rounds": 5} if args.quick
                else {"sizes": [200, 1000, 2000], "rounds": 5, "shards": [1, 2], "replay_rounds": 20})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rounds < 1 or args.replay_rounds < 0:
        p.error("--rounds must be >= 1 and --replay-rounds >= 0")
    if args.strategy is not None:
        try:
            args.strategy_keys = strategy_keys(args.strategy)
        except (OSError, ValueError) as e:
            p.error(f"--strategy {args.strategy}: {e}")
    else:
        args.strategy_keys = {}
    return args


def strategy_keys(folder: Path) -> dict[str, object]:
    """A strategy's factor_calc.json minus what the bench sets itself (bmac_dir, debug)."""
    raw = json.loads((folder / "factor_calc.json").read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("factor_calc.json is not a JSON object")
    return {k: v for k, v in raw.items() if k not in ("bmac_dir", "debug")}


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """What the stack's factor_calc.json changes from the article's: the strategy's keys, then --round-grace-sec."""
    changed = {k: v for k, v in args.strategy_keys.items() if article_config("").get(k, object()) != v}
    return changed | ({} if args.round_grace_sec is None else {"round_grace_sec": args.round_grace_sec})


def is_article(args: argparse.Namespace) -> bool:
    """The pandas loop is the article's program: it stands beside the stack only when the stack runs the article's
    strategy (timing keys such as round_grace_sec change no selection)."""
    return not {k for k in config_overrides(args) if k not in ("round_grace_sec", "bmac_expire_sec", "timezone")}


def run_size(root: Path, size: int, args: argparse.Namespace) -> list[dict]:
    """Every shard count on one simulated directory; its hours run on from one scenario to the next."""
    progress(f"{size} symbols: building the simulated market")
    feed = Feed(BmacDir(root / f"bmac-{size}", "1h"), SyntheticMarket(symbols=size, seed=SEED, history=CANDLES),
                spread_sec=args.spread_sec, seed=SEED)
    results = []
    for n in args.shards:
        results.append(run_scenario(feed, root / f"work-{size}-{n}", size, n, args.rounds, config_overrides(args),
                                    baseline=is_article(args)))
    shutil.rmtree(feed.bmac.root, ignore_errors=True)
    return results


def run(args: argparse.Namespace, root: Path) -> dict:
    """Every scenario, the replay and the targets, as one JSON-ready dict."""
    began = time.perf_counter()
    code = source_state()
    scenarios = [sc for size in args.sizes for sc in run_size(root, size, args)]
    replay = (run_replay(REAL_DATA, root, args.replay_rounds, config_overrides(args), check=is_article(args))
              if args.replay_rounds else {"skipped": "--replay-rounds 0"})
    code["changed_during_run"] = source_hash() != code["source_sha"]
    if code["changed_during_run"]:
        progress("WARNING: the stack's sources changed during the run; later scenarios ran newer code")
    return {
        "machine": {**machine(), "python": sys.version.split()[0]},
        "code": code,
        "config": {"sizes": args.sizes, "shards": args.shards, "rounds": args.rounds, "candles": CANDLES,
                   "spread_sec": args.spread_sec, "replay_rounds": args.replay_rounds,
                   "config_overrides": config_overrides(args),
                   "strategy": str(args.strategy) if args.strategy else None, "baseline": is_article(args)},
        "scenarios": scenarios,
        "replay": replay,
        "targets": evaluate(scenarios, replay),
        "elapsed_s": round(time.perf_counter() - began, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and ``BENCH_JSON {...}``; exit 1 if a scenario or the replay failed."""
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="alphabus-bench-"))
    try:
        result = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, separators=(",", ":"))
    if args.out:
        args.out.write_text(text + "\n")
    print(render(result))
    print(f"BENCH_JSON {text}", flush=True)
    progress(f"done in {result['elapsed_s']:.0f} s")
    failed = [s for s in result["scenarios"] if s.get("error")] + ([1] if result["replay"].get("error") else [])
    return 1 if failed else 0
