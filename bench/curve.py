"""``python -m bench.curve``: what CURVE encryption and ZAP authentication cost a round.

The same scenarios as ``python -m bench`` (burst and live rounds of the real four-service stack on a
simulated directory), run twice in one process with ``ALPHABUS_SECURITY`` alternating between
``curve`` (the default) and ``none``, so both see the same machine at nearly the same time. Prints the
stack's CPU milliseconds per round and its latency, both ways, and their difference. No assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.cli import CANDLES, SEED, _ints
from bench.feed import Feed
from bench.scenario import progress, run_scenario
from services.market.sim import SyntheticMarket
from shared.bmac import BmacDir
from shared.security import SECURITY_ENV

MODES = ("curve", "none")


def _median(report: dict, *path: str) -> float | None:
    node: object = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node.get("median") if isinstance(node, dict) else None


def run(sizes: list[int], rounds: int, shards: int, root: Path) -> list[dict]:
    rows = []
    for size in sizes:
        feed = Feed(BmacDir(root / f"bmac-{size}", "1h"),
                    SyntheticMarket(symbols=size, seed=SEED, history=CANDLES), spread_sec=1.0, seed=SEED)
        for mode in MODES:
            os.environ[SECURITY_ENV] = mode  # the stack's processes and the bench's own client alike
            progress(f"{size} symbols, security {mode}")
            result = run_scenario(feed, root / f"work-{size}-{mode}", size, shards, rounds)
            rows.append({"size": size, "security": mode, "error": result["error"],
                         **{f"{m}_{what}": _median(result, m, *path) for m in ("burst", "live")
                            for what, path in (("ms", ("stack_ms",)),
                                               ("cpu_ms", ("cpu_ms_per_round", "stack")))}})
        shutil.rmtree(feed.bmac.root, ignore_errors=True)
    os.environ.pop(SECURITY_ENV, None)
    return rows


def render(rows: list[dict]) -> str:
    head = (f"{'symbols':>7}  {'security':>8}  {'burst ms':>8}  {'burst CPU ms':>12}  {'live ms':>7}  "
            f"{'live CPU ms':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def fmt(v: float | None, width: int) -> str:
            return f"{v:>{width}.1f}" if v is not None else f"{'-':>{width}}"
        lines.append(f"{r['size']:>7}  {r['security']:>8}  {fmt(r['burst_ms'], 8)}  {fmt(r['burst_cpu_ms'], 12)}  "
                     f"{fmt(r['live_ms'], 7)}  {fmt(r['live_cpu_ms'], 11)}" + (f"  ERROR {r['error']}" if r["error"]
                                                                                 else ""))
    by = {(r["size"], r["security"]): r for r in rows}
    for size in sorted({r["size"] for r in rows}):
        curve, none = by.get((size, "curve")), by.get((size, "none"))
        if curve and none and curve["burst_cpu_ms"] and none["burst_cpu_ms"]:
            lines.append(f"{size} symbols: CURVE costs {curve['burst_cpu_ms'] - none['burst_cpu_ms']:+.0f} ms CPU "
                         f"per burst round, {curve['live_cpu_ms'] - none['live_cpu_ms']:+.0f} ms per live round "
                         f"(medians, whole stack)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.curve", description=__doc__)
    p.add_argument("--sizes", type=_ints, default=[200, 2000])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shards", type=int, default=1)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="alphabus-bench-curve-"))
    try:
        rows = run(args.sizes, args.rounds, args.shards, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(render(rows))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
