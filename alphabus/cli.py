"""The ``alphabus`` command: one function per subcommand, heavy imports inside each so --help is instant."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_CONFIG = 2


def _workdir(value: str | None) -> Path:
    path = value or os.environ.get("ALPHABUS_WORKDIR")
    if not path:
        raise SystemExit("alphabus: give WORKDIR (the folder holding factor_calc.json) or set ALPHABUS_WORKDIR")
    return Path(path)


def _config(workdir: Path):
    from shared.config import load_config

    return load_config(workdir)


def cmd_market(args: argparse.Namespace) -> int:
    from services.market import service
    from shared.clock import parse_run_time, zone
    from shared.service import setup_logging

    setup_logging("market")
    workdir = _workdir(args.workdir)
    cfg = _config(workdir)
    run_time = parse_run_time(args.run_time, zone(cfg.timezone)) if args.run_time else None
    return service.main(cfg, clock=args.clock, run_time=run_time, await_subscribers=args.await_subscribers,
                        replay=args.replay, first_hour=args.first_hour, hours=args.hours,
                        send_paths=args.send == "paths")


def cmd_factor(args: argparse.Namespace) -> int:
    from services.factor import service
    from shared.bus import Shard
    from shared.service import setup_logging

    setup_logging("factor")
    workdir = _workdir(args.workdir)
    shard = Shard.parse(args.shard or os.environ.get("ALPHABUS_SHARD", "0/1"))
    return service.main(_config(workdir), workdir, shard, fast=not args.plugins_only)


def cmd_position(args: argparse.Namespace) -> int:
    from services.position import service
    from shared.service import setup_logging

    setup_logging("position")
    workdir = _workdir(args.workdir)
    return service.main(_config(workdir), workdir)


def cmd_recorder(args: argparse.Namespace) -> int:
    from services.recorder import service
    from shared.service import setup_logging

    setup_logging("recorder")
    workdir = _workdir(args.workdir)
    return service.main(workdir, _config(workdir))


def cmd_stack(args: argparse.Namespace) -> int:
    from alphabus import launcher

    workdir = _workdir(args.workdir)
    _config(workdir)
    return launcher.run_stack(workdir, clock=args.clock, shards=args.factor_shards)


def cmd_once(args: argparse.Namespace) -> int:
    from alphabus import launcher

    workdir = _workdir(args.workdir)
    return launcher.run_once(workdir, _config(workdir), run_time=args.run_time, shards=args.factor_shards)


def cmd_demo(args: argparse.Namespace) -> int:
    from alphabus import demo

    return demo.run(rounds=args.rounds, symbols=args.symbols, replay=args.replay,
                    hour_seconds=args.hour_seconds, shards=args.factor_shards, keep=args.keep)


def cmd_sim(args: argparse.Namespace) -> int:
    from alphabus import sim
    from shared.service import StopFlag, setup_logging

    setup_logging("sim")
    stop = StopFlag()
    return sim.run(Path(args.out_dir), symbols=args.symbols, seed=args.seed, history=args.history,
                   hours=args.hours, hour_seconds=args.hour_seconds, spread_sec=args.spread_sec,
                   replay=args.replay, first_hour=args.first_hour, stop=lambda: stop.stopped)


def cmd_paper(args: argparse.Namespace) -> int:
    from alphabus import paper
    from shared.service import setup_logging

    setup_logging("paper")
    return paper.main(_workdir(args.workdir), fee_bps=args.fee_bps)


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from shared.messages import json_schema

    text = json.dumps(json_schema(), indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Container health check: the service touched its health file recently."""
    import time

    path = args.file or os.environ.get("ALPHABUS_HEALTH_FILE")
    if not path:
        print("alphabus health: give --file or set ALPHABUS_HEALTH_FILE", file=sys.stderr)
        return 1
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {path} does not exist yet", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"unhealthy: last heartbeat {age:.1f}s ago (> {args.max_age}s)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alphabus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def workdir_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("workdir", nargs="?", help="folder with factor_calc.json (default: $ALPHABUS_WORKDIR)")

    sp = sub.add_parser("market", help="data layer: watch the crawler's directory, publish rounds and candles")
    workdir_arg(sp)
    sp.add_argument("--clock", choices=["wall", "follow"], default=os.environ.get("ALPHABUS_CLOCK", "wall"),
                    help="wall: rounds at wall-clock boundaries (a real crawler); follow: a round whenever the "
                         "crawler writes a newer exginfo marker (the simulator). Default $ALPHABUS_CLOCK or wall")
    sp.add_argument("--run-time", help="run this one round (ISO 8601; naive = crawler timezone) and exit")
    sp.add_argument("--await-subscribers", type=float, default=10.0, metavar="SEC",
                    help="hold the first round up to SEC seconds until position and every shard subscribed")
    sp.add_argument("--send", choices=["bytes", "paths"], default=os.environ.get("ALPHABUS_SEND", "bytes"),
                    help="bytes: candle files travel over the socket (workers anywhere); paths: only their "
                         "paths, for workers that see the crawler's directory (one host, a shared volume). "
                         "Default $ALPHABUS_SEND or bytes")
    sp.add_argument("--replay", type=Path, metavar="DATA_DIR",
                    help="instead of a crawler, replay a real data set (../shared/data/binance_usdm_1h) from "
                         "memory, round after round as fast as the stack goes; then exit")
    sp.add_argument("--first-hour", type=int, help="with --replay: the candle index of the first round")
    sp.add_argument("--hours", type=int, help="with --replay: how many rounds (default: all)")
    sp.set_defaults(func=cmd_market)

    sp = sub.add_parser("factor", help="factor layer: compute factors and filters for one shard of symbols")
    workdir_arg(sp)
    sp.add_argument("--shard", help="K/N: own shard K of N by stable symbol hash (default $ALPHABUS_SHARD or 0/1)")
    sp.add_argument("--plugins-only", action="store_true",
                    help="always run the plugins' signal functions, never the built-in kernels (the reference)")
    sp.set_defaults(func=cmd_factor)

    sp = sub.add_parser("position", help="position layer: filter, rank, select and size; publish selections")
    workdir_arg(sp)
    sp.set_defaults(func=cmd_position)

    sp = sub.add_parser("recorder", help="recording layer: write select_his/ and factor_his/")
    workdir_arg(sp)
    sp.set_defaults(func=cmd_recorder)

    sp = sub.add_parser("stack", help="run all four services as child processes until Ctrl-C")
    workdir_arg(sp)
    sp.add_argument("--clock", choices=["wall", "follow"], default="wall")
    sp.add_argument("--factor-shards", type=int, default=1, metavar="N")
    sp.set_defaults(func=cmd_stack)

    sp = sub.add_parser("once", help="debug mode: one round through the four services, print it, exit")
    workdir_arg(sp)
    sp.add_argument("--run-time", help="ISO 8601 (naive = crawler timezone); default: the latest boundary")
    sp.add_argument("--factor-shards", type=int, default=1, metavar="N")
    sp.set_defaults(func=cmd_once)

    sp = sub.add_parser("demo", help="simulated crawler + the four services; show a few rounds, then stop")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--symbols", type=int, default=80)
    sp.add_argument("--hour-seconds", type=float, default=3.0, help="wall seconds per simulated hour")
    sp.add_argument("--replay", type=Path, help="replay a real data set (e.g. ../shared/data/binance_usdm_1h)")
    sp.add_argument("--factor-shards", type=int, default=1, metavar="N")
    sp.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("sim", help="a stand-in crawler: write a BMAC directory on an accelerated clock")
    sp.add_argument("out_dir", help="the BMAC directory to write")
    sp.add_argument("--symbols", type=int, default=60)
    sp.add_argument("--seed", type=int, default=7)
    sp.add_argument("--history", type=int, default=1500, help="candles kept per file")
    sp.add_argument("--hours", type=int, help="stop after this many simulated hours (default: run on)")
    sp.add_argument("--hour-seconds", type=float, default=3.0, help="wall seconds per simulated hour")
    sp.add_argument("--spread-sec", type=float, default=0.5, help="spread each hour's files over this long")
    sp.add_argument("--replay", type=Path, help="replay a real data set hour by hour instead of simulating")
    sp.add_argument("--first-hour", type=int, help="with --replay: the candle index of the first round")
    sp.set_defaults(func=cmd_sim)

    sp = sub.add_parser("paper", help="the reference executor: paper-trade each selection, record fills and equity")
    workdir_arg(sp)
    sp.add_argument("--fee-bps", type=float, default=0.0, help="taker fee charged on each fill, in basis points")
    sp.set_defaults(func=cmd_paper)

    sp = sub.add_parser("schema", help="print the message contract as JSON Schema")
    sp.add_argument("--out", help="write to this file instead of stdout")
    sp.set_defaults(func=cmd_schema)

    sp = sub.add_parser("health", help="exit 0 if this container's service heartbeat is fresh")
    sp.add_argument("--file", help="the heartbeat file (default $ALPHABUS_HEALTH_FILE)")
    sp.add_argument("--max-age", type=float, default=10.0, metavar="SEC")
    sp.set_defaults(func=cmd_health)
    return p


def subcommands() -> list[str]:
    """Every ``alphabus`` subcommand name (compose files and tests check against it)."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from shared.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"alphabus: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
