"""The ``alphabus`` command: one function per subcommand, heavy imports inside each so --help is instant."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

USER_GUIDE = """\
alphabus picks coins every hour, market-neutral: it ranks the crawler's candles by a factor, goes long
the tail and short the head, and sizes every pick to its lot. Four services do it (market, factor,
position, recorder); your order executor subscribes to their selections.

  new here?       alphabus demo                    (a simulated market, three rounds, nothing to set up)
  your crawler:   alphabus stack WORKDIR           (WORKDIR holds factor_calc.json; Ctrl-C stops it)
  one round:      alphabus once WORKDIR            (the article's debug mode: run, print, exit)
  watch it:       alphabus dashboard WORKDIR       (a page at http://127.0.0.1:5705/)
"""

FIRST_STEPS = """\
Each command explains itself: alphabus COMMAND --help. The README has the configuration keys,
the selection message an executor reads, Docker and security."""


class DefaultsHelp(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it (or has none to say)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


EXIT_CONFIG = 2
"""Every user mistake (arguments, config, work directory, ports) exits with this code, as argparse does."""


def _workdir(value: str | None, *, write: bool = False) -> Path:
    """The work directory, checked before any service starts: it exists and, if the command records
    there (``write``), is writable."""
    from alphabus.launcher import UsageError

    path = value or os.environ.get("ALPHABUS_WORKDIR")
    if not path:
        raise UsageError("give WORKDIR (the folder holding factor_calc.json) or set ALPHABUS_WORKDIR")
    workdir = Path(path)
    if not workdir.is_dir():
        raise UsageError(f"work directory {workdir} does not exist; create it and put factor_calc.json in it")
    if write and not _writable(workdir):
        raise UsageError(f"work directory {workdir} is read-only; this command records its history there, "
                         "so make it writable or choose another")
    return workdir


def _writable(folder: Path) -> bool:
    """Try it: permission bits say nothing for root or a read-only mount."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".alphabus-write-check-"):
            return True
    except OSError:
        return False


def _shard(text: str):
    """argparse type for --shard K/N."""
    from shared.bus import Shard

    try:
        return Shard.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard_count(text: str) -> int:
    """argparse type for --factor-shards: 1 to the number of hash buckets."""
    from shared.bus import BUCKETS

    n = _whole(text)
    if not 1 <= n <= BUCKETS:
        raise argparse.ArgumentTypeError(f"{n} shards: need 1 to {BUCKETS} (symbols hash into {BUCKETS} buckets)")
    return n


def _port(text: str) -> int:
    """argparse type for a TCP port: 1 to 65535."""
    n = _whole(text)
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a TCP port: need 1 to 65535")
    return n


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text: str) -> int:
    """argparse type for counts (rounds, symbols, hours, history, a candle index): 1 or more."""
    n = _whole(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: need 1 or more")
    return n


def _positive_float(text: str) -> float:
    """argparse type for durations that must pass: more than 0 seconds."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: need a number of seconds above 0")
    return x


def _iso_time(text: str) -> str:
    """argparse type for --run-time: ISO 8601 here; the boundary check needs the config (``_run_time``)."""
    from datetime import datetime

    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2024-01-31T08:00:00") from None
    return text


def _replay_dir(text: str) -> Path:
    """argparse type for --replay: a folder holding the data set's three files."""
    from services.market.sim import ReplayMarket

    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"replay folder {text} does not exist")
    missing = [f for f in (ReplayMarket.CANDLES, ReplayMarket.FUNDING, ReplayMarket.EXGINFO)
               if not (folder / f).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"replay folder {text} has no {', '.join(missing)}")
    return folder


def _strategy_dir(text: str) -> Path:
    """argparse type for demo --strategy: a folder holding factor_calc.json (validated when the demo starts)."""
    from shared.config import CONFIG_FILE

    folder = Path(text)
    if not (folder / CONFIG_FILE).is_file():
        raise argparse.ArgumentTypeError(f"{text} has no {CONFIG_FILE}; give a strategy's work directory such as "
                                         "examples/two_factor")
    return folder


def _run_time(text: str, cfg):
    """--run-time as the round it names: on a boundary of the config's interval, in its timezone."""
    from alphabus.launcher import UsageError
    from shared.clock import boundary_run_time, parse_interval, zone

    try:
        return boundary_run_time(text, parse_interval(cfg.interval), zone(cfg.timezone))
    except ValueError as e:
        raise UsageError(f"--run-time: {e}") from None


def _config(workdir: Path):
    from alphabus.launcher import UsageError
    from shared.config import CONFIG_FILE, load_config

    if not (workdir / CONFIG_FILE).is_file():
        raise UsageError(f"work directory {workdir} has no {CONFIG_FILE}; write the article's there "
                         "(see the README's Configuration section)")
    return load_config(workdir)


def _serve_metrics(service: str, workdir: Path, index: int = 0, labels: dict[str, str] | None = None) -> None:
    """Prometheus /metrics when ALPHABUS_METRICS_PORT (or ALPHABUS_METRICS_PORT_<SERVICE>) is set (README)."""
    from shared import bus, metrics

    metrics.serve(service, index, {"stack": bus.stack_identity(workdir), **(labels or {})})


def cmd_market(args: argparse.Namespace) -> int:
    import logging

    from alphabus.launcher import debug_run_time
    from services.market import service
    from shared.service import setup_logging

    setup_logging("market")
    workdir = _workdir(args.workdir)
    cfg = _config(workdir)
    _serve_metrics("market", workdir)
    run_time = _run_time(args.run_time, cfg) if args.run_time else None
    if cfg.debug and run_time is None and args.replay is None:
        run_time = debug_run_time(cfg)
        logging.getLogger("market").info("debug: true in factor_calc.json: the round of %s only, then exit "
                                         "(the article's debug mode)", run_time.isoformat())
    return service.main(cfg, workdir, clock=args.clock, run_time=run_time, await_subscribers=args.await_subscribers,
                        replay=args.replay, first_hour=args.first_hour, hours=args.hours,
                        send_paths=args.send == "paths")


def cmd_factor(args: argparse.Namespace) -> int:
    from alphabus.launcher import UsageError
    from services.factor import service
    from services.factor.pool import default_workers
    from shared.service import setup_logging

    setup_logging("factor")
    workdir = _workdir(args.workdir)
    shard = args.shard
    if shard is None:
        try:
            shard = _shard(os.environ.get("ALPHABUS_SHARD", "0/1"))
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"ALPHABUS_SHARD: {e}") from None
    _serve_metrics("factor", workdir, shard.index, {"shard": str(shard)})
    try:
        workers = args.workers or default_workers(shard.count)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return service.main(_config(workdir), workdir, shard, fast=not args.plugins_only, workers=workers)


def cmd_position(args: argparse.Namespace) -> int:
    from services.position import service
    from shared.service import setup_logging

    setup_logging("position")
    workdir = _workdir(args.workdir, write=True)
    cfg = _config(workdir)
    _serve_metrics("position", workdir)
    return service.main(cfg, workdir)


def cmd_recorder(args: argparse.Namespace) -> int:
    from services.recorder import service
    from shared.service import setup_logging

    setup_logging("recorder")
    workdir = _workdir(args.workdir, write=True)
    cfg = _config(workdir)
    _serve_metrics("recorder", workdir)
    return service.main(workdir, cfg)


def cmd_stack(args: argparse.Namespace) -> int:
    from alphabus import launcher

    workdir = _workdir(args.workdir, write=True)
    cfg = _config(workdir)
    if cfg.debug:  # the article: debug runs the round that just closed, once, and exits
        return launcher.run_once(workdir, cfg, shards=args.factor_shards)
    return launcher.run_stack(workdir, clock=args.clock, shards=args.factor_shards)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from services.dashboard import server
    from shared.service import setup_logging

    setup_logging("dashboard")
    workdir = _workdir(args.workdir)
    return server.main(workdir, _config(workdir), host=args.host, port=args.port,
                       equity=Path(args.equity) if args.equity else None)


def cmd_once(args: argparse.Namespace) -> int:
    from alphabus import launcher

    workdir = _workdir(args.workdir, write=True)
    cfg = _config(workdir)
    run_time = _run_time(args.run_time, cfg) if args.run_time else None
    return launcher.run_once(workdir, cfg, run_time=run_time, shards=args.factor_shards)


def cmd_demo(args: argparse.Namespace) -> int:
    from alphabus import demo

    return demo.run(rounds=args.rounds, symbols=args.symbols, replay=args.replay,
                    hour_seconds=args.hour_seconds, shards=args.factor_shards, keep=args.keep,
                    strategy=args.strategy)


def cmd_sim(args: argparse.Namespace) -> int:
    from services.market import sim
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
    return paper.main(_workdir(args.workdir, write=True), fee_bps=args.fee_bps)


def cmd_backtest(args: argparse.Namespace) -> int:
    """The strategy's history through the live code (services.backtest); --compare-live replays hours live."""
    from services.backtest.run import Options, run

    workdir = _workdir(args.workdir)
    cfg = _config(workdir)
    out = Path(args.out) if args.out else workdir / "backtest"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from alphabus.launcher import UsageError

        raise UsageError(f"--out {out}: cannot create it ({e.strerror}); give a writable folder") from None
    opts = Options(data=Path(args.data), out=out, start=args.start, end=args.end, fee_bps=args.fee_bps,
                   slippage_bps=args.slippage_bps, num_candles=args.num_candles, full_history=args.full_history,
                   selections=args.selections, workers=args.workers)
    summary = run(workdir, cfg, opts)
    if args.compare_live:
        summary["compare_live"] = _compare_live(workdir, opts, summary, args.compare_live)
        from services.backtest.report import write_json

        write_json(out / "stats.json", summary)
    return 0


def _compare_live(workdir: Path, opts, summary: dict, hours: int) -> dict:
    """The first ``hours`` backtested hours replayed through the four services (the market's in-memory replay)."""
    import shutil
    import tempfile
    import time
    from datetime import datetime

    from alphabus.launcher import Services, UsageError, loopback_endpoints, start_stack
    from services.backtest.live import backtest_sides, compare
    from services.market.sim import ReplayMarket
    from services.recorder.files import history_paths
    from shared.config import CONFIG_FILE

    if not (opts.data / ReplayMarket.CANDLES).is_file() or opts.num_candles != 1500:
        raise UsageError("--compare-live replays the real data set's format with its 1500-candle files; give "
                         "--data ../shared/data/binance_usdm_1h and the default --num-candles")
    mine = backtest_sides(opts.out / "selections.csv")
    market = ReplayMarket(opts.data)  # hour 0 is candle 1500: the first with a full 1500-candle file
    first = round((datetime.fromisoformat(summary["start"]) - market.run_time(0)).total_seconds() / 3600)
    hours = min(hours, market.hours - first)
    with tempfile.TemporaryDirectory(prefix="alphabus-compare-") as tmp:
        live = Path(tmp)
        shutil.copy(workdir / CONFIG_FILE, live / CONFIG_FILE)
        for kind in ("factors", "filters"):
            if (workdir / kind).is_dir():
                shutil.copytree(workdir / kind, live / kind)
        run_times = [market.run_time(first + k) for k in range(hours)]
        quiet = {**loopback_endpoints(), "ALPHABUS_ALERTS": "off"}  # a replay of history alerts nobody
        with Services(quiet) as services:
            start_stack(services, live, market_args=["--replay", str(opts.data), "--first-hour", str(1500 + first),
                                                     "--hours", str(hours), "--await-subscribers", "60"])
            services.procs["market"].wait(600)
            deadline = time.monotonic() + 60
            while not history_paths(live, run_times[-1])["selection"].exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        result = compare(live, mine, run_times)
    print(f"--compare-live: {result['identical']} of {result['compared']} hours identical to the live stack's"
          + (f"; {result['live_incomplete']} live rounds incomplete, not compared" if result["live_incomplete"]
             else ""))
    for line in [*result["differ"], *result["incomplete"]]:
        print(f"  {line}")
    return result


def cmd_keys(args: argparse.Namespace) -> int:
    """Create the stack's CURVE keys (if absent) and, with --client, an outside executor's admitted pair."""
    from shared import security

    workdir = _workdir(args.workdir)
    folder = security.keys_folder(workdir)
    made = security.create_keys(folder)
    print(f"{'created' if made else 'using'} the stack's CURVE keys in {folder}")
    for name in args.client or []:
        secret = security.add_client(folder, name)
        print(f"client {name!r} admitted to the selections; give the executor {folder / 'position.key'} and "
              f"{secret} (keep it secret) and run it with ALPHABUS_KEYS=<folder holding both> "
              f"ALPHABUS_KEY_NAME={name}")
    return 0


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
    p = argparse.ArgumentParser(prog="alphabus", description=USER_GUIDE, epilog=FIRST_STEPS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def workdir_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("workdir", nargs="?", help="folder with factor_calc.json (default: $ALPHABUS_WORKDIR)")

    sp = sub.add_parser("market", help="data layer: watch the crawler's directory, publish rounds and candles")
    workdir_arg(sp)
    sp.add_argument("--clock", choices=["wall", "follow"], default=os.environ.get("ALPHABUS_CLOCK", "wall"),
                    help="wall: rounds at wall-clock boundaries (a real crawler); follow: a round whenever the "
                         "crawler writes a newer exginfo marker (the simulator). Default $ALPHABUS_CLOCK or wall")
    sp.add_argument("--run-time", type=_iso_time,
                    help="run this one round (ISO 8601; naive = crawler timezone) and exit (default: run on, "
                         "round after round)")
    sp.add_argument("--await-subscribers", type=float, default=10.0, metavar="SEC",
                    help="hold the first round up to SEC seconds until position and every shard subscribed")
    sp.add_argument("--send", choices=["bytes", "paths"], default=os.environ.get("ALPHABUS_SEND", "bytes"),
                    help="bytes: candle files travel over the socket (workers anywhere); paths: only their "
                         "paths, for workers that see the crawler's directory (one host, a shared volume). "
                         "Default $ALPHABUS_SEND or bytes")
    sp.add_argument("--replay", type=_replay_dir, metavar="DATA_DIR",
                    help="instead of a crawler, replay a real data set (../shared/data/binance_usdm_1h) from "
                         "memory, round after round as fast as the stack goes; then exit (default: the crawler)")
    sp.add_argument("--first-hour", type=_positive_int,
                    help="with --replay: the candle index of the first round (default: 1500, the first with a "
                         "full file)")
    sp.add_argument("--hours", type=_positive_int, help="with --replay: how many rounds (default: all)")
    sp.set_defaults(func=cmd_market)

    sp = sub.add_parser("factor", help="factor layer: compute factors and filters for one shard of symbols")
    workdir_arg(sp)
    sp.add_argument("--shard", type=_shard,
                    help="K/N: own shard K of N by stable symbol hash (default $ALPHABUS_SHARD or 0/1)")
    sp.add_argument("--plugins-only", action="store_true",
                    help="always run the plugins' signal functions, never the built-in kernels (the reference)")
    sp.add_argument("--workers", type=_positive_int, metavar="N",
                    help="processes computing this shard's rows, this one included (default "
                         "$ALPHABUS_FACTOR_WORKERS, else this machine's cores divided by the shard count N)")
    sp.set_defaults(func=cmd_factor)

    sp = sub.add_parser("position", help="position layer: filter, rank, select and size; publish selections")
    workdir_arg(sp)
    sp.set_defaults(func=cmd_position)

    sp = sub.add_parser("recorder", help="recording layer: write select_his/ and factor_his/")
    workdir_arg(sp)
    sp.set_defaults(func=cmd_recorder)

    sp = sub.add_parser("stack", help="run all four services as child processes until Ctrl-C")
    workdir_arg(sp)
    sp.add_argument("--clock", choices=["auto", "wall", "follow"], default="auto",
                    help="wall: a round at each wall-clock hour (a real crawler); follow: a round whenever the "
                         "crawler writes a newer hour (the simulator, a replay); auto picks follow when the "
                         "crawler's newest hour is not the wall clock's, else wall, and says which")
    sp.add_argument("--factor-shards", type=_shard_count, default=1, metavar="N",
                    help="factor workers, each computing the symbols of one shard (1 to 256)")
    sp.set_defaults(func=cmd_stack)

    sp = sub.add_parser("once", help="debug mode: one round through the four services, print it, exit")
    workdir_arg(sp)
    sp.add_argument("--run-time", type=_iso_time,
                    help="the round to run, ISO 8601 (naive = crawler timezone); default: the latest boundary")
    sp.add_argument("--factor-shards", type=_shard_count, default=1, metavar="N",
                    help="factor workers, each computing the symbols of one shard (1 to 256)")
    sp.set_defaults(func=cmd_once)

    sp = sub.add_parser("demo", help="simulated crawler + the four services; show a few rounds, then stop")
    sp.add_argument("--rounds", type=_positive_int, default=3, help="show this many rounds, then stop")
    sp.add_argument("--symbols", type=_positive_int, default=80, help="simulated coins (ignored with --replay)")
    sp.add_argument("--hour-seconds", type=_positive_float, default=3.0, help="wall seconds per simulated hour")
    sp.add_argument("--replay", type=_replay_dir,
                    help="replay a real data set (e.g. ../shared/data/binance_usdm_1h) instead of simulating; "
                         "default: the simulated market")
    sp.add_argument("--factor-shards", type=_shard_count, default=1, metavar="N",
                    help="factor workers, each computing the symbols of one shard (1 to 256)")
    sp.add_argument("--keep", action="store_true",
                    help="keep the temporary work directory and say where it is (default: removed at the end)")
    sp.add_argument("--strategy", type=_strategy_dir, metavar="DIR",
                    help="run this work directory's factor_calc.json (e.g. examples/two_factor) instead of the "
                         "article's; the demo points its bmac_dir at the simulator")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("sim", help="a stand-in crawler: write a BMAC directory on an accelerated clock")
    sp.add_argument("out_dir", help="the BMAC directory to write")
    sp.add_argument("--symbols", type=_positive_int, default=60, help="simulated coins (ignored with --replay)")
    sp.add_argument("--seed", type=int, default=7,
                    help="random seed of the simulated market: the same seed writes the same candles")
    sp.add_argument("--history", type=_positive_int, default=1500, help="candles kept per file")
    sp.add_argument("--hours", type=_positive_int, help="stop after this many simulated hours (default: run on)")
    sp.add_argument("--hour-seconds", type=_positive_float, default=3.0, help="wall seconds per simulated hour")
    sp.add_argument("--spread-sec", type=float, default=0.5,
                    help="seconds over which each hour's candle files appear, in a shuffled order")
    sp.add_argument("--replay", type=_replay_dir,
                    help="replay a real data set hour by hour instead of simulating (default: simulate)")
    sp.add_argument("--first-hour", type=_positive_int,
                    help="with --replay: the candle index of the first round (default: the first with a full "
                         "--history of candles)")
    sp.set_defaults(func=cmd_sim)

    sp = sub.add_parser("paper", help="the reference executor: paper-trade each selection, record fills and equity")
    workdir_arg(sp)
    sp.add_argument("--fee-bps", type=float, default=0.0, help="taker fee charged on each fill, in basis points")
    sp.set_defaults(func=cmd_paper)

    sp = sub.add_parser("backtest", help="a strategy's history through the live code: selections, equity, report")
    workdir_arg(sp)
    sp.add_argument("--data", required=True, help="candle history: ../shared/data/binance_usdm_1h, a BMAC "
                    "directory, or a folder of <SYMBOL>.fea files with exginfo.fea")
    sp.add_argument("--start", type=_iso_time, help="first run_time (ISO 8601; naive = config timezone); default: "
                    "the first hour with --num-candles candles")
    sp.add_argument("--end", type=_iso_time, help="last run_time; default: the data's last")
    sp.add_argument("--fee-bps", type=float, default=5.0, help="taker fee on traded notional, basis points")
    sp.add_argument("--slippage-bps", type=float, default=0.0, help="slippage on traded notional, basis points")
    sp.add_argument("--num-candles", type=_positive_int, default=1500, help="candles the crawler's file holds")
    sp.add_argument("--out", help="output folder (default WORKDIR/backtest)")
    sp.add_argument("--full-history", action="store_true", help="run user plugins once on each whole history "
                    "(faster; differs from live for recursive indicators: the difference is measured and reported)")
    sp.add_argument("--selections", action="store_true", help="also write select_his/ and factor_his/ (large)")
    sp.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, help="processes for plugins")
    sp.add_argument("--compare-live", type=_positive_int, nargs="?", const=50, metavar="HOURS",
                    help="replay the first HOURS (default 50) hours through the four services and compare")
    sp.set_defaults(func=cmd_backtest)

    sp = sub.add_parser("keys", help="create the stack's CURVE keys; admit an outside executor with --client")
    workdir_arg(sp)
    sp.add_argument("--client", action="append", metavar="NAME",
                    help="also create a key pair NAME for an executor and admit it to the selections "
                         "(repeatable; takes effect without restarting the stack; default: the stack's keys only)")
    sp.set_defaults(func=cmd_keys)

    sp = sub.add_parser("schema", help="print the message contract as JSON Schema")
    sp.add_argument("--out", help="write to this file (default: print to stdout)")
    sp.set_defaults(func=cmd_schema)

    sp = sub.add_parser("dashboard", help="serve a page showing targets, trades, rounds and equity, updated live")
    workdir_arg(sp)
    sp.add_argument("--port", type=_port, default=5705, help="TCP port of the page")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; 0.0.0.0 shows the page to other machines (it has no login)")
    sp.add_argument("--equity", metavar="CSV",
                    help="the equity curve to draw, e.g. a backtest's equity.csv (default: WORKDIR/paper/equity.csv)")
    sp.set_defaults(func=cmd_dashboard)

    sp = sub.add_parser("health", help="exit 0 if this container's service heartbeat is fresh")
    sp.add_argument("--file", help="the heartbeat file (default $ALPHABUS_HEALTH_FILE)")
    sp.add_argument("--max-age", type=_positive_float, default=10.0, metavar="SEC",
                    help="unhealthy when the heartbeat file is older than SEC seconds")
    sp.set_defaults(func=cmd_health)
    for command in sub.choices.values():
        command.formatter_class = DefaultsHelp
    return p


def subcommands() -> list[str]:
    """Every ``alphabus`` subcommand name (compose files and tests check against it)."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def _endpoint_problem(error: Exception) -> str | None:
    """A socket that cannot bind or connect its endpoint, as one sentence naming the variable that sets it;
    None for any other ZeroMQ error (a bug, not a user's mistake: its traceback is wanted)."""
    import errno
    import re

    from shared.bus import DEFAULT_ENDPOINTS, bind_address, endpoint

    found = re.search(r"\(addr='([^']*)'\)", str(error))
    if found is None:
        return None
    address = found.group(1)
    var = next((v for v in DEFAULT_ENDPOINTS if address in (endpoint(v), bind_address(endpoint(v)))), None)
    setting = f"set {var} to" if var else "set the ALPHABUS_* endpoint variables to"
    if getattr(error, "errno", None) == errno.EADDRINUSE:
        return (f"cannot bind {address}{f' ({var})' if var else ''}: the port is already in use (another "
                f"stack?); {setting} a free endpoint or stop the process that holds it")
    reason = str(error).split(" (addr=")[0]
    return f"cannot use {address}{f' ({var})' if var else ''}: {reason}; {setting} an endpoint such as " \
           f"tcp://127.0.0.1:5701"


def main(argv: list[str] | None = None) -> int:
    """The one place that turns errors into exit codes: a user's mistake is one sentence and code 2.

    The error types are imported only when something was raised: ``alphabus health`` (a container's
    health check, run every few seconds under a timeout) must not pay for importing pandas.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        return _exit_code(args.command, e)


def _exit_code(command: str, error: BaseException) -> int:
    """The exit code for what a command raised (re-raised when it is not a known way to fail)."""
    import zmq

    from alphabus.launcher import Terminated, UsageError
    from shared.config import ConfigError
    from shared.errors import UserMistake
    from shared.security import KeyProblem

    if isinstance(error, ConfigError | KeyProblem | UsageError | UserMistake):
        print(f"alphabus {command}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, zmq.ZMQError) and (problem := _endpoint_problem(error)) is not None:
        print(f"alphabus {command}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(error, Terminated):
        return 128 + error.args[0]
    raise error
