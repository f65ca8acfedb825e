"""The ``python -m bench`` command: options, the run over every scenario, the table and the JSON line."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import bench
from bench.baseline import OriginalProgram
from bench.feed import Feed
from bench.pinned import PinnedEnvError
from bench.procs import machine
from bench.provenance import source_hash, source_state
from bench.replay import run_replay
from bench.report import evaluate, render
from bench.scenario import Factor, progress, run_scenario
from bench.stack import BenchError
from services.market.sim import SyntheticMarket
from shared.bmac import BmacDir
from tests.conftest import REAL_DATA
from tests.reference import article_config

CANDLES = 1500  # the article's history per symbol (min_candle_num is 999)
SEED = 7
TIMING_KEYS = ("round_grace_sec", "bmac_expire_sec", "timezone")  # change when a round ends, not what it picks


def _article_factor(name: str) -> dict[str, object]:
    """The article's factor entry with another plugin in it (same direction, back_hour, d_num and weight)."""
    return {"factor": [name, *article_config("")["factor"][1:]]}


FACTORS = {  # --factors: the built-in factor and the two user plugin files of bench/plugins
    "builtin": Factor("builtin", {}),
    "cci": Factor("cci", _article_factor("Cci"), plugin=True),
    "pandas": Factor("pandas", _article_factor("Bias"), plugin=True),
}


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _factors(text: str) -> list[Factor]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in FACTORS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(FACTORS)} separated by commas, got {text!r}")
    return [FACTORS[n] for n in names]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_ints, help="universe sizes (default 200,1000,2000; --quick: 200)")
    p.add_argument("--rounds", type=int, help="measured rounds per mode and scenario (default 5; --quick: 3)")
    p.add_argument("--shards", type=_ints, help="factor shard counts (default 1,2; --quick: 1)")
    p.add_argument("--replay-rounds", type=int, help="rounds of the real-data replay, 0 to skip (default 20; "
                                                     "--quick: 5)")
    p.add_argument("--factors", type=_factors, help="factors to run: builtin (the article's MtmAtrMean, built-in "
                   "kernels), cci (bench/plugins/Cci.py, TA-Lib), pandas (bench/plugins/Bias.py, pandas rolling); "
                   "default all three (--quick: builtin)")
    p.add_argument("--workers", type=int, help="processes per factor shard (default: the factor service's own, "
                                               "this machine's cores divided by the shard count)")
    p.add_argument("--spread-sec", type=float, default=1.0, help="live: spread the ready markers over this long")
    p.add_argument("--round-grace-sec", type=float, help="override the stack's round_grace_sec (default: the "
                                                        "article's config, where it is 2)")
    p.add_argument("--strategy", type=Path, metavar="DIR",
                   help="run the stack with this work directory's factor_calc.json (e.g. examples/two_factor; its "
                        "bmac_dir is replaced) instead of --factors; the original program runs beside it only "
                        "if it is the article's strategy")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200 symbols, 3 rounds, 1 shard")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    defaults = ({"sizes": [200], "rounds": 3, "shards": [1], "replay_rounds": 5, "factors": [FACTORS["builtin"]]}
                if args.quick else {"sizes": [200, 1000, 2000], "rounds": 5, "shards": [1, 2], "replay_rounds": 20,
                                    "factors": list(FACTORS.values())})
    if args.strategy is not None and args.factors is not None:
        p.error("--strategy and --factors both choose what the stack computes: give one of them")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rounds < 1 or args.replay_rounds < 0 or (args.workers is not None and args.workers < 1):
        p.error("--rounds and --workers must be >= 1 and --replay-rounds >= 0")
    if args.strategy is not None:
        try:
            args.factors = [Factor(f"strategy {args.strategy.name}", changed_keys(strategy_keys(args.strategy)))]
        except (OSError, ValueError) as e:
            p.error(f"--strategy {args.strategy}: {e}")
    return args


def strategy_keys(folder: Path) -> dict[str, object]:
    """A strategy's factor_calc.json minus what the bench sets itself (bmac_dir, debug)."""
    raw = json.loads((folder / "factor_calc.json").read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("factor_calc.json is not a JSON object")
    return {k: v for k, v in raw.items() if k not in ("bmac_dir", "debug")}


def changed_keys(keys: dict[str, object]) -> dict[str, object]:
    """The keys whose values differ from the article's factor_calc.json."""
    return {k: v for k, v in keys.items() if article_config("").get(k, object()) != v}


def with_grace(factor: Factor, args: argparse.Namespace) -> Factor:
    """The factor's overrides plus --round-grace-sec."""
    grace = {} if args.round_grace_sec is None else {"round_grace_sec": args.round_grace_sec}
    return Factor(factor.label, factor.config | grace, factor.plugin)


def original_runs(factor: Factor) -> bool:
    """The original program computes one factor and hard-codes the article's filters (filter_before): it stands
    beside the stack when nothing but the factor plugin and timing keys differ from the article's config."""
    changed = {k: v for k, v in factor.config.items() if k not in TIMING_KEYS}
    entry = changed.get("factor", ["MtmAtrMean"])
    return set(changed) <= {"factor"} and isinstance(entry, list) and isinstance(entry[0], str)


def run_size(root: Path, size: int, args: argparse.Namespace, program: OriginalProgram | None) -> list[dict]:
    """Every factor and shard count on one simulated directory; its hours run on from one scenario to the next."""
    progress(f"{size} symbols: building the simulated market")
    feed = Feed(BmacDir(root / f"bmac-{size}", "1h"), SyntheticMarket(symbols=size, seed=SEED, history=CANDLES),
                spread_sec=args.spread_sec, seed=SEED)
    results = []
    for factor in args.factors:
        for n in args.shards:
            results.append(run_scenario(feed, root / f"work-{size}-{factor.label.replace(' ', '-')}-{n}", size, n,
                                        args.rounds, with_grace(factor, args),
                                        program if original_runs(factor) else None, args.workers))
    shutil.rmtree(feed.bmac.root, ignore_errors=True)
    return results


def run(args: argparse.Namespace, root: Path) -> dict:
    """Every scenario, the replay and the targets, as one JSON-ready dict."""
    began = time.perf_counter()
    code = source_state()
    compared = any(original_runs(f) for f in args.factors)
    with OriginalProgram(root, progress) if compared else contextlib.nullcontext() as program:
        versions = program.versions if program else None
        scenarios = [sc for size in args.sizes for sc in run_size(root, size, args, program)]
    replay_factor = with_grace(args.factors[0] if args.strategy else FACTORS["builtin"], args)
    article = not {k for k in replay_factor.config if k not in TIMING_KEYS}  # what tests.reference computes
    replay = (run_replay(REAL_DATA, root, args.replay_rounds, replay_factor.config, check=article)
              if args.replay_rounds else {"skipped": "--replay-rounds 0"})
    code["changed_during_run"] = source_hash() != code["source_sha"]
    if code["changed_during_run"]:
        progress("WARNING: the stack's sources changed during the run; later scenarios ran newer code")
    return {
        "machine": {**machine(), "python": sys.version.split()[0]},
        "code": code,
        "config": {"sizes": args.sizes, "shards": args.shards, "rounds": args.rounds, "candles": CANDLES,
                   "factors": {f.label: f.config for f in args.factors}, "spread_sec": args.spread_sec,
                   "replay_rounds": args.replay_rounds, "round_grace_sec": args.round_grace_sec,
                   "workers": args.workers,
                   "strategy": str(args.strategy) if args.strategy else None, "original": versions},
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
    except (PinnedEnvError, BenchError) as e:  # the original program could not be started
        print(f"bench: {e}", file=sys.stderr)
        return 2 if isinstance(e, PinnedEnvError) else 1
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
