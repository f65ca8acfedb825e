"""End to end on a real Docker engine: the image, compose.yaml on the simulated market, a lost shard.

No image registry is needed. The base image is built from Debian's packages with debootstrap
(docker/base_image.py, the mirror read from this machine's apt configuration) and kept as
``alphabus-base:test`` for the next run; the dependencies come from a wheel folder that pip fills
here for the container's Python and platform, so the image build itself has no network. Then:

1. ``docker-compose up`` runs sim, market, two factor shards, position, recorder (and paper);
2. recorded rounds must equal ``alphabus once`` run here on the same simulated hours (the
   simulator is deterministic: hour k is a pure function of seed, symbols and k);
3. with factor-1 stopped a round is flagged incomplete and misses exactly shard 1/2's symbols;
4. with factor-1 started again the rounds are complete again.

Containers, networks and volumes are always removed; the base image and the test image
(``alphabus:e2e-test``, for the layer cache) are kept. Skipped when no engine answers, without
docker-compose, or when the base image must be built but debootstrap or root is missing.
Set ALPHABUS_SKIP_DOCKER=1 to skip it on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from alphabus.cli import build_parser
from services.market.sim import SyntheticMarket, write_hour
from services.recorder.files import history_paths
from shared.bmac import BmacDir
from shared.bus import Shard

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "alphabus-base:test"
IMAGE = "alphabus:e2e-test"
WORKDIR_IN_CONTAINER = "/data/out"
CONTEXT_IGNORE = (".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "*.egg-info",
                  "build", "dist", "tests", "bench", ".ci", "demo_*", "wheels")
HOUR = timedelta(hours=1)


def _run(cmd: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _engine_problem() -> str | None:
    if os.environ.get("ALPHABUS_SKIP_DOCKER") == "1":
        return "ALPHABUS_SKIP_DOCKER=1"
    if importlib.util.find_spec("yaml") is None:
        return "PyYAML is not installed (a test dependency: pip install pyyaml)"
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30s"
    if info.returncode != 0:
        return f"no Docker engine answers (`docker info`: {info.stderr.strip().splitlines()[-1:]})"
    if _compose_command() is None:
        return "neither docker-compose nor `docker compose` is installed"
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        if shutil.which("debootstrap") is None:
            return f"debootstrap is not installed, and {BASE_IMAGE} must be built (apt-get install debootstrap)"
        if os.geteuid() != 0:
            return f"debootstrap needs root to build {BASE_IMAGE}"
    return None


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


_PROBLEM = _engine_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"Docker end-to-end test: {_PROBLEM}")


# -- building ------------------------------------------------------------------------------------
def _base_image_module():
    spec = importlib.util.spec_from_file_location("alphabus_base_image", REPO / "docker" / "base_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ensure_base_image(timings: dict[str, float]) -> None:
    module = _base_image_module()
    if module.image_exists(BASE_IMAGE):
        timings["debootstrap"] = 0.0  # cached
        return
    steps = module.build(BASE_IMAGE, log=print)
    timings.update({"debootstrap": steps["debootstrap"], "docker import": steps["import"]})


def container_python() -> tuple[str, str, tuple[int, int]]:
    """(major.minor, machine, glibc (major, minor)) of the base image's python3."""
    code = ("import platform, sys; v = platform.libc_ver()[1] or '2.17'; "
            "print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.machine(), v)")
    out = _run(["docker", "run", "--rm", BASE_IMAGE, "python3", "-c", code], timeout=120).stdout.split()
    major, minor = (int(x) for x in out[2].split(".")[:2])
    return out[0], out[1], (major, minor)


def fill_wheels(wheels: Path, python: str, machine: str, glibc: tuple[int, int]) -> None:
    """pip download, on this host, of the pinned requirements for the container's python and platform."""
    platforms = [f"manylinux_{glibc[0]}_{m}_{machine}" for m in range(glibc[1], 16, -1)]
    platforms.append(f"manylinux2014_{machine}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--dest", str(wheels),
           "-r", str(REPO / "docker" / "requirements.txt"), "-r", str(REPO / "docker" / "build-requirements.txt")]
    for p in platforms:
        cmd += ["--platform", p]
    _run(cmd, timeout=600)


def build_image(context: Path, timings: dict[str, float]) -> None:
    shutil.copytree(REPO, context, ignore=shutil.ignore_patterns(*CONTEXT_IGNORE))
    python, machine, glibc = container_python()
    t0 = time.monotonic()
    fill_wheels(context / "docker" / "wheels", python, machine, glibc)
    timings["pip download"] = time.monotonic() - t0
    stale = _stage_images()
    previous = _run(["docker", "images", "--quiet", IMAGE], check=False).stdout.split()
    t0 = time.monotonic()
    built = _run(["docker", "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "WHEELS=docker/wheels",
                  "--network", "none", "--force-rm", "-t", IMAGE, str(context)], timeout=900)
    timings["docker build"] = time.monotonic() - t0
    used = set(re.findall(r"---> ([0-9a-f]{12})\b", built.stdout))
    _drop_images([i for i in stale + previous if i[:12] not in used])


def _stage_images() -> list[str]:
    """Untagged images left by the Dockerfile's build stages (they carry the label alphabus.stage)."""
    return _run(["docker", "images", "--quiet", "--filter", "dangling=true",
                 "--filter", "label=alphabus.stage=build"], check=False).stdout.split()


def _drop_images(ids: list[str]) -> None:
    """Earlier builds' stage images that this build did not reuse: removed, so reruns do not pile up."""
    for image in ids:
        subprocess.run(["docker", "image", "rm", image], capture_output=True)


# -- the stack -----------------------------------------------------------------------------------
class Stack:
    """A docker-compose project running compose.yaml with the test image."""

    def __init__(self, project: str, out: Path):
        self.project = project
        self.out = out
        self.env = {**os.environ, "ALPHABUS_IMAGE": IMAGE}
        self.base = [*_compose_command(), "-f", str(REPO / "compose.yaml"), "-p", project]
        self._containers: dict[str, str] = {}

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return _run([*self.base, *args], timeout=timeout, check=check, env=self.env, cwd=REPO)

    def container(self, service: str) -> str:
        if service not in self._containers:  # stop/start keeps a service's container
            cid = self.compose("ps", "-q", service).stdout.strip()
            assert cid, f"no container for {service}"
            self._containers[service] = cid
        return self._containers[service]

    def health(self, service: str) -> str:
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        return _run(["docker", "inspect", "-f", fmt, self.container(service)], check=False).stdout.strip()

    def copy_out(self, path: str, dest: Path) -> bool:
        """docker cp from the recorder's volume; False if it is not there yet."""
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        p = _run(["docker", "cp", f"{self.container('recorder')}:{WORKDIR_IN_CONTAINER}/{path}", str(dest)],
                 check=False)
        return p.returncode == 0

    def selections(self) -> dict[datetime, dict]:
        """run_time -> the recorded selection JSON."""
        dest = self.out / "poll" / "selection_his"
        if not self.copy_out("selection_his", dest):
            return {}
        out = {}
        for f in dest.glob("*.json"):
            sel = json.loads(f.read_text())
            out[datetime.fromisoformat(sel["run_time"])] = sel
        return out

    def wait_for(self, what: str, done: Callable[[dict[datetime, dict]], object], timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while True:
            result = done(self.selections())
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(1.0)

    def new_rounds(self, after: datetime | None, count: int, timeout: float) -> list[tuple[datetime, dict]]:
        """The first `count` rounds recorded with a run_time later than `after`."""
        def ready(sels):
            new = sorted((t, s) for t, s in sels.items() if after is None or t > after)
            return new[:count] if len(new) >= count else None
        return self.wait_for(f"{count} round(s) after {after}", ready, timeout)

    def first_clean(self, after: datetime | None, skip: int, timeout: float) -> tuple[datetime, dict]:
        """The first clean round (see `clean`) among those recorded after `after`, past the first `skip`."""
        def ready(sels):
            new = sorted((t, s) for t, s in sels.items() if after is None or t > after)[skip:]
            return next(((t, s) for t, s in new if clean(s)), None)
        return self.wait_for(f"a clean round after {after} (skipping {skip})", ready, timeout)

    def latest(self) -> datetime | None:
        sels = self.selections()
        return max(sels) if sels else None

    def wait_healthy(self, service: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.health(service)) != "healthy":
            assert time.monotonic() < deadline, f"{service} not healthy after {timeout:.0f}s ({state})"
            time.sleep(1.0)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60).stdout


def clean(selection: dict) -> bool:
    """The market published every symbol of the round: none skipped for want of candles.

    On a loaded machine the simulator can take longer than bmac_expire_sec to write an hour; the
    market then reports the late symbols as skipped (no_candles), which is right but makes the
    round differ from `alphabus once`, and hides which symbols the factor layer missed.
    """
    return not any(why.startswith("no_candles") for why in selection["coverage"]["skipped"].values())


# -- the same rounds outside containers ----------------------------------------------------------
def sim_settings() -> tuple[int, int, int]:
    """(symbols, seed, history) of compose.yaml's sim service."""
    import yaml

    cmd = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["sim"]["command"]
    args = build_parser().parse_args([str(c) for c in cmd])
    return args.symbols, args.seed, args.history


def local_round(market: SyntheticMarket, run_time: datetime, root: Path) -> Path:
    """Write the simulator's hour for run_time into a local BMAC folder and run `alphabus once` on it."""
    k, rest = divmod(run_time - market.run_time(0), HOUR)
    assert not rest and market.run_time(k) == run_time, f"{run_time} is not a simulated hour"
    bmac, workdir = root / "bmac", root / f"work_{k}"
    write_hour(BmacDir(bmac, "1h"), market, k)
    config = json.loads((REPO / "docker" / "factor_calc.json").read_text())
    workdir.mkdir(parents=True)
    (workdir / "factor_calc.json").write_text(json.dumps({**config, "bmac_dir": str(bmac)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPHABUS_")}
    _run([sys.executable, "-m", "alphabus", "once", str(workdir), "--run-time", run_time.isoformat()],
         timeout=180, env=env)
    return workdir


def assert_same_files(local: Path, recorded: Path, run_time: datetime) -> None:
    mine, theirs = history_paths(local, run_time), history_paths(recorded, run_time)
    for name in ("long", "short", "factor"):
        assert theirs[name].exists(), f"the recorder wrote no {theirs[name].name}"
        a, b = pd.read_csv(mine[name]), pd.read_csv(theirs[name])
        pd.testing.assert_frame_equal(b, a, check_exact=False, rtol=1e-9, obj=f"{name} of {run_time}")
    a, b = (json.loads(p["selection"].read_text()) for p in (mine, theirs))
    for key in ("run_time", "factor_column", "shortfall", "incomplete"):
        assert b[key] == a[key], f"{run_time}: {key} differs: recorded {b[key]!r}, once {a[key]!r}"
    for key in ("expected", "received", "skipped", "missing"):  # not timing: when results arrived
        assert b["coverage"][key] == a["coverage"][key], (
            f"{run_time}: coverage.{key} differs: recorded {b['coverage'][key]!r}, once {a['coverage'][key]!r}")
    for side in ("long", "short"):
        assert [(p["symbol"], p["position"]) for p in b[side]] == [(p["symbol"], p["position"]) for p in a[side]]
        assert [p["factor"] for p in b[side]] == pytest.approx([p["factor"] for p in a[side]], rel=1e-9)


# -- the test ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compose_on_the_simulated_market_with_a_lost_shard(tmp_path):
    started = time.monotonic()
    timings: dict[str, float] = {}
    ensure_base_image(timings)
    build_image(tmp_path / "context", timings)

    symbols, seed, history = sim_settings()
    market = SyntheticMarket(symbols, seed, history)
    universe = list(market.exginfo()["symbol"])
    factors = sorted(s for s in _compose_services() if s.startswith("factor-"))
    lost = Shard(1, len(factors))
    owned = sorted(s for s in universe if lost.owns(s))
    assert owned, "shard 1 owns no symbol of the simulated universe"

    stack = Stack(f"abtest{uuid.uuid4().hex[:10]}", tmp_path)
    try:
        t0 = time.monotonic()
        stack.compose("up", "-d", "--no-build", timeout=300)
        first = stack.new_rounds(None, 1, timeout=180)
        timings["compose up to first round"] = time.monotonic() - t0

        # Normal operation: complete rounds, to be compared with `alphabus once` below.
        normal = [stack.first_clean(first[0][0], 0, timeout=120)]
        normal.append(stack.first_clean(normal[0][0], 0, timeout=120))
        for run_time, sel in normal:
            assert not sel["incomplete"] and sel["coverage"]["missing"] == [], f"{run_time}: {sel['coverage']}"

        # factor-1 lost: a round after it stopped (not the first: it may have been under way) misses
        # exactly the symbols shard 1 owns, and says so.
        stack.compose("stop", lost_service := f"factor-{lost.index}", timeout=120)
        run_time, sel = stack.first_clean(stack.latest(), 1, timeout=120)
        assert sel["incomplete"] is True, f"{run_time} with {lost_service} stopped is not flagged: {sel['coverage']}"
        assert sorted(sel["coverage"]["missing"]) == owned, (
            f"{run_time}: missing {sorted(sel['coverage']['missing'])}, shard {lost} owns {owned}")
        assert sel["coverage"]["expected"] == len(universe)

        # factor-1 back: complete rounds again (the first round after it is healthy may have been under way).
        stack.compose("start", lost_service, timeout=120)
        stack.wait_healthy(lost_service, timeout=90)
        run_time_back, sel = stack.first_clean(stack.latest(), 1, timeout=120)
        assert sel["incomplete"] is False and sel["coverage"]["missing"] == [], (
            f"{run_time_back} after {lost_service} restarted: {sel['coverage']}")

        paper = "paper" in _subcommands()
        if paper:
            stack.wait_healthy("paper", timeout=60)

        recorded = tmp_path / "recorded"
        assert stack.copy_out(".", recorded)
        for run_time in [t for t, _ in normal] + [run_time_back]:
            assert_same_files(local_round(market, run_time, tmp_path / "local"), recorded, run_time)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)
        timings["whole test"] = time.monotonic() - started
        print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    leftovers = _run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}"]).stdout
    assert not leftovers.strip(), f"containers left behind: {leftovers}"
    if not paper:
        print("note: `alphabus paper` does not exist yet, so the paper service's health was not checked")


def _compose_services() -> list[str]:
    import yaml

    return list(yaml.safe_load((REPO / "compose.yaml").read_text())["services"])


def _subcommands() -> set[str]:
    import argparse

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)
