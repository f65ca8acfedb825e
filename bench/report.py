"""The printed table and the target check: figures for people, next to the numbers they are held to.

Targets are printed, never asserted: a benchmark that fails on a slow machine tells nobody anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REPLAY_TARGET_ROUNDS_PER_S = 50.0


@dataclass(frozen=True)
class Target:
    """A figure of the scenarios at one universe size, and the bound it should meet."""

    size: int
    label: str
    path: tuple[str, ...]  # where the figure sits in a scenario's JSON
    limit: float
    unit: str
    at_least: bool = False  # True: the figure should be >= limit; False: <= limit
    factors: str = "any"  # "builtin", "plugin" (bench/plugins files) or "any"
    shards: int | None = None  # only this shard count (None: every one)

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def applies(self, scenario: dict) -> bool:
        kind = {"builtin": "builtin", "cci": "plugin", "pandas": "plugin"}.get(scenario.get("factor", ""), "other")
        return (scenario["size"] == self.size and self.factors in ("any", kind)
                and self.shards in (None, scenario["shards"]))


BURST_RATIO = ("burst", "ratio")
TARGETS = (  # issue 10's goals (2 cores, 200 symbols, burst, against the original program), then earlier ones
    Target(200, "builtin burst >= 10x faster than the original", BURST_RATIO, 10, "x", True, "builtin"),
    Target(200, "user plugin burst >= 2.5x faster than the original", BURST_RATIO, 2.5, "x", True, "plugin", 1),
    Target(200, "user plugin burst >= 4x faster than the original", BURST_RATIO, 4, "x", True, "plugin", 2),
    Target(200, "live <= 15 ms", ("live", "stack_ms", "median"), 15, "ms"),
    Target(2000, "live <= 30 ms", ("live", "stack_ms", "median"), 30, "ms"),
    Target(200, "builtin burst <= 100 ms", ("burst", "stack_ms", "median"), 100, "ms", factors="builtin"),
    Target(1000, "builtin burst <= 600 ms", ("burst", "stack_ms", "median"), 600, "ms", factors="builtin"),
    Target(2000, "builtin burst <= 1.2 s", ("burst", "stack_ms", "median"), 1200, "ms", factors="builtin"),
    Target(2000, "whole stack <= 600 MB RSS (sum of VmHWM)", ("stack_memory_mb", "vmhwm_sum"), 600, "MB",
           factors="builtin"),
)


def _lookup(scenario: dict, path: tuple[str, ...]) -> float | None:
    value: object = scenario
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def _flaws(scenario: dict, target: Target) -> list[str]:
    """Why a figure that is within its bound still does not count: it timed rounds that went wrong."""
    if scenario.get("error"):
        return ["scenario failed"]
    mode = scenario.get(target.path[0])
    if not isinstance(mode, dict):
        return []
    flaws = []
    if mode.get("incomplete_rounds"):
        flaws.append(f"{len(mode['incomplete_rounds'])} incomplete round(s)")
    if mode.get("selection_mismatches"):
        flaws.append(f"{len(mode['selection_mismatches'])} selection(s) differ from the original's")
    return flaws


def evaluate(scenarios: Sequence[dict], replay: dict) -> list[dict[str, object]]:
    """Every target against every scenario of its size (one line per shard count), and the replay target.

    A figure from rounds that were incomplete or picked differently from the original program is
    not met whatever its value: a round cut at its deadline is fast for the wrong reason.
    """
    out: list[dict[str, object]] = []
    for target in TARGETS:
        for sc in (s for s in scenarios if target.applies(s)):
            value, flaws = _lookup(sc, target.path), _flaws(sc, target)
            out.append({"size": target.size, "factor": sc["factor"], "shards": sc["shards"],
                        "target": target.label, "value": value,
                        "unit": target.unit, "met": None if value is None else target.met(value) and not flaws,
                        "flaws": flaws})
    rate = replay.get("rounds_per_s")
    flaws = [f"{len(replay['mismatches'])} round(s) differ from article_round"] if replay.get("mismatches") else []
    out.append({"size": replay.get("symbols"), "factor": "builtin", "shards": 1, "target": "replay >= 50 rounds/s",
                "value": rate,
                "unit": "rounds/s", "met": None if rate is None else rate >= REPLAY_TARGET_ROUNDS_PER_S and not flaws,
                "flaws": flaws})
    return out


# -- formatting -------------------------------------------------------------------------------------
def _num(value: object, places: int = 1) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{places}f}"


def _spread(stats: dict, places: int = 1) -> str:
    """'median [min..max]'."""
    if not stats or stats.get("median") is None:
        return "-"
    return f"{_num(stats['median'], places)} [{_num(stats['min'], places)}..{_num(stats['max'], places)}]"


def _rows(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _notes(sc: dict, mode: str) -> str:
    """What a latency row needs said next to it: failures, incomplete rounds, differing picks."""
    m = sc.get(mode, {})
    notes = [f"ERROR: {sc['error']}"] if sc.get("error") else []
    if m.get("incomplete_rounds"):
        notes.append(f"{len(m['incomplete_rounds'])} of {sc['rounds']} rounds INCOMPLETE at the deadline")
    if m.get("selection_mismatches"):
        notes.append(f"{len(m['selection_mismatches'])} selection(s) differ from the original's")
    return "; ".join(notes)


def latency_table(scenarios: Sequence[dict]) -> list[str]:
    """alphabus vs the original program, per size, factor, shard count and mode."""
    rows = []
    for sc in scenarios:
        for mode in ("burst", "live"):
            m = sc.get(mode, {})
            rows.append([str(sc["size"]), sc["factor"], str(sc["shards"]), mode, _spread(m.get("original_ms", {})),
                         _spread(m.get("stack_ms", {})), _num(m.get("ratio"), 2),
                         _spread(m.get("published_ms", {})), _spread(m.get("selection_latency_ms", {})),
                         _notes(sc, mode)])
    header = ["symbols", "factor", "shards", "mode", "original ms med [min..max]", "alphabus ms med [min..max]",
              "ratio", "published ms", "latency_ms", "notes"]
    return _rows(header, rows)


def resource_table(scenarios: Sequence[dict]) -> list[str]:
    """Each service's peak and current RSS and its CPU per round."""
    rows = []
    for sc in scenarios:
        memory = sc.get("memory_mb", {})
        cpu = {mode: sc.get(mode, {}).get("cpu_ms_per_round", {}) for mode in ("burst", "live")}
        totals = sc.get("stack_memory_mb", {})
        for name in [*memory, "stack"]:
            mem = memory.get(name, {key: totals.get(f"{key}_sum") for key in ("vmhwm", "vmrss", "pss")})
            rows.append([str(sc["size"]), sc["factor"], str(sc["shards"]), name, _num(mem.get("vmhwm"), 0),
                         _num(mem.get("vmrss"), 0), _num(mem.get("pss"), 0), _spread(cpu["burst"].get(name, {}), 0),
                         _spread(cpu["live"].get(name, {}), 0)])
    header = ["symbols", "factor", "shards", "service", "VmHWM MB", "VmRSS MB", "Pss MB", "CPU ms/round burst",
              "CPU ms/round live"]
    return _rows(header, rows)


def target_table(results: Sequence[dict]) -> list[str]:
    rows = [[str(r["size"]), str(r["factor"]), str(r["shards"]), str(r["target"]), f"{_num(r['value'], 1)} {r['unit']}",
             {True: "met", False: "NOT MET", None: "no figure"}[r["met"]]
             + (f" ({'; '.join(r['flaws'])})" if r.get("flaws") else "")] for r in results]
    return _rows(["symbols", "factor", "shards", "target", "figure", ""], rows)


def replay_lines(replay: dict) -> list[str]:
    if "skipped" in replay or replay.get("error"):
        return [f"replay: {replay.get('skipped') or 'ERROR: ' + str(replay.get('error'))}"]
    checked = (f"{len(replay['mismatches'])} of {replay['checked']} rounds differ from article_round"
               if replay["checked"] else "not compared with article_round (not the article's strategy)")
    return [f"replay of the real data set ({replay['symbols']} symbols, {replay['rounds']} rounds, 1 shard): "
            f"{replay['rounds_per_s']} rounds/s (market --replay, from memory); "
            f"{_spread(replay['ms_between_selections'], 1)} ms between selections; {checked}"]


def original_lines(config: dict) -> list[str]:
    """Which original program the figures are compared with, and whether it ran at all."""
    versions = config.get("original")
    if not versions:
        return [f"strategy {config.get('strategy')}: ALPHABUS FIGURES ALONE. The original program computes one "
                "factor with the article's filters, so it is neither timed nor compared for this strategy.", ""]
    pins = ", ".join(f"{k} {v}" for k, v in versions.items())
    return [f"original: the article's program (bench/original/program.py) in its own environment ({pins}), "
            "run on the same hours after each alphabus round, picks compared", ""]


def check_lines(scenarios: Sequence[dict], replay: dict) -> list[str]:
    """Selections that differ from the article's, incomplete rounds and service log problems."""
    lines = []
    for sc in scenarios:
        what = f"{sc['size']} symbols, {sc['factor']}, {sc['shards']} shard(s)"
        for mode in ("burst", "live"):
            m = sc.get(mode, {})
            for key, label in (("selection_mismatches", "selection differs from the original's"),
                               ("incomplete_rounds", "incomplete round")):
                if m.get(key):
                    lines.append(f"{what} {mode}: {label}: {', '.join(m[key])}")
        log = sc.get("service_log", {})
        if log.get("warnings") or log.get("errors"):
            lines.append(f"{what}: services logged {log['errors']} error(s), {log['warnings']} warning(s); "
                         f"first: {log['first'][:3]}")
    log = replay.get("service_log", {})
    if log.get("warnings") or log.get("errors"):
        lines.append(f"replay: services logged {log['errors']} error(s), {log['warnings']} warning(s); "
                     f"first: {log['first'][:3]}")
    return lines or ["checks: every selection compared matched the original program's; no incomplete round; "
                     "no service warnings"]


def render(result: dict) -> str:
    """The whole printed report."""
    m, code = result["machine"], result["code"]
    parts = [
        f"alphabus bench: commit {code['git_head']}"
        + (f" + uncommitted {', '.join(code['uncommitted'])}" if code["uncommitted"] else "")
        + f" (sources {code['source_sha']})"
        + (" -- WARNING: the sources CHANGED during the run" if code["changed_during_run"] else ""),
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gb']} GB; "
        f"{result['config']['candles']} candles per symbol; live markers spread over "
        f"{result['config']['spread_sec']} s; {result['config']['rounds']} rounds per mode and scenario; "
        f"factors: {result['config']['factors']}; factor processes per shard: "
        f"{result['config'].get('workers') or 'the service default (cores / shards)'}",
        "",
        *original_lines(result["config"]),
        "Latency (ms): alphabus burst = exginfo marker created -> select_his/<ts>_long.csv.zip written; live = last "
        "ready marker -> that file; published = the same start -> the selection at an outside subscriber; "
        "latency_ms = the selection's own field (the market saw the last marker -> the position service built "
        "the selection), without the sending, recording and the bench's own wake-ups. "
        "Original burst = its step 1 -> save_selected done, in its process; live = the last marker (replayed "
        "in its own copy of the directory) -> save_selected done. ratio = original median / alphabus median.",
        *latency_table(result["scenarios"]),
        "",
        "Resources: VmHWM = peak RSS of the process; VmRSS, Pss = at the end (Pss shares library pages between "
        "processes, so its sum is what the stack occupies); CPU = utime+stime per round, round start to recorded.",
        *resource_table(result["scenarios"]),
        "",
        *replay_lines(result["replay"]),
        "",
        *target_table(result["targets"]),
        "",
        *check_lines(result["scenarios"], result["replay"]),
        f"total runtime {result['elapsed_s']:.0f} s",
    ]
    return "\n".join(parts)
