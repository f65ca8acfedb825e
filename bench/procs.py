"""What each service process costs, read from /proc from outside it (no cooperation from the service)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process in seconds: fields 14 and 15 of /proc/<pid>/stat.

    The command name (field 2) may hold spaces or parentheses, so the fields are counted from the
    last ')'; what follows it starts at field 3 (the state).
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every process started under ``pid`` (a service's worker pool, its forkserver), depth first."""
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # gone, or a kernel without CONFIG_PROC_CHILDREN
        return []
    return [p for kid in kids for p in (kid, *descendants(kid))]


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process that is still there."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            pass
    return out


def cpu_delta_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU milliseconds each process spent between two snapshots (resolution: one clock tick, 10 ms); a process
    that ended in between is left out (what it used is lost with it)."""
    return {name: (after[name] - before[name]) * 1000 for name in before if name in after}


def _kb_fields(path: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """'Key:   123 kB' lines of a /proc file, as MB under the lower-cased key."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key.lower()] = int(value.split()[0]) / 1024
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set since the process started), VmRSS and Pss (now), in MB.

    RSS counts the shared libraries (Python, numpy, pandas, pyarrow) in every process that maps
    them, so a sum over the services overstates what the stack occupies; Pss splits shared pages
    between the processes sharing them, so its sum does not.
    """
    out = _kb_fields(Path(f"/proc/{pid}/status"), ("VmHWM", "VmRSS"))
    try:
        out |= _kb_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Pss",))
    except OSError:  # kernels before 4.14, or a process we may not inspect
        pass
    return out


def machine() -> dict[str, object]:
    """The facts a reader needs to compare figures across machines."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "mem_total_gb": round(mem_kb / 2**20, 1)}
