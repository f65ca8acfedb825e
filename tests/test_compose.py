"""compose.yaml and the Dockerfile agree with the code: commands, environment, mounts and shards.

No Docker engine is needed: the files are parsed and checked against ``alphabus.cli`` and the
sources. The end-to-end run on a real engine is tests/test_docker.py.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path

import pytest

from alphabus.cli import build_parser
from shared.bus import Shard
from shared.config import parse_config

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pip install pyyaml)")

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
CRAWLER_OVERRIDE = REPO / "docker" / "compose.crawler.yaml"
DEFAULT_CONFIG = REPO / "docker" / "factor_calc.json"
CRAWLER_CONFIG = REPO / "docker" / "factor_calc.crawler.json"
DOCKERFILE = REPO / "Dockerfile"
REQUIREMENTS = REPO / "docker" / "requirements.txt"

SERVICES = {"sim", "market", "factor-0", "factor-1", "position", "recorder", "paper"}
ENDPOINTS = {  # endpoint variable -> the service that binds it
    "ALPHABUS_MARKET_PUB": "market",
    "ALPHABUS_FACTOR_IN": "position",
    "ALPHABUS_SELECTION_PUB": "position",
    "ALPHABUS_SNAPSHOT": "position",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


COMPOSE_DOC = load(COMPOSE)
SERVICE_DEFS: dict[str, dict] = COMPOSE_DOC["services"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def python_sources() -> str:
    """The text of every module the package installs (pyproject's package list)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    files = sorted({f for r in roots for f in (REPO / r).rglob("*.py")})
    assert files, f"no sources found under {roots}"
    return "\n".join(f.read_text() for f in files)


def command(service: str) -> list[str]:
    cmd = SERVICE_DEFS[service]["command"]
    assert isinstance(cmd, list), f"{service}: write command as a list (exec form), got {cmd!r}"
    return [str(c) for c in cmd]


def environment(service: str) -> dict[str, str]:
    env = SERVICE_DEFS[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return {k: str(v) for k, v in env.items()}


def split_volume(spec: str) -> tuple[str, str]:
    """(source, target) of the short syntax SOURCE:TARGET[:MODE]; SOURCE may hold ${VAR:?...}."""
    parts = spec.split(":")
    if parts[-1] in ("ro", "rw"):
        parts = parts[:-1]
    assert len(parts) >= 2, f"volume {spec!r} is not SOURCE:TARGET[:MODE]"
    return ":".join(parts[:-1]), parts[-1]


def mounts(service: str) -> dict[str, str]:
    """container path -> source (volume name or host path)."""
    return {target: source for source, target in map(split_volume, SERVICE_DEFS[service].get("volumes") or [])}


def factor_services() -> list[str]:
    return sorted(s for s, d in SERVICE_DEFS.items() if d.get("command", [None])[0] == "factor")


def default_config() -> dict:
    return json.loads(DEFAULT_CONFIG.read_text())


def test_the_services_are_there():
    assert SERVICES <= set(SERVICE_DEFS), f"missing services: {SERVICES - set(SERVICE_DEFS)}"


@pytest.mark.parametrize("service", sorted(SERVICE_DEFS))
def test_every_command_is_an_alphabus_subcommand(service):
    argv = command(service)
    known = subcommands()
    if argv[0] not in known and service == "paper":
        pytest.skip("`alphabus paper` does not exist yet; the paper service stays in compose.yaml for it")
    assert argv[0] in known, f"{service}: `alphabus {argv[0]}` is not a subcommand ({', '.join(known)})"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{service}: `alphabus {' '.join(argv)}` does not parse")
    assert args.command == argv[0]


@pytest.mark.parametrize("service", sorted(SERVICE_DEFS))
def test_every_service_runs_the_one_image_restarts_and_has_a_health_check(service):
    d = SERVICE_DEFS[service]
    assert d["image"] == "${ALPHABUS_IMAGE:-alphabus:latest}"
    build = d["build"]
    assert build in (".", {"context": "."}), f"{service}: build {build!r}"
    assert d["restart"] == "unless-stopped"
    test = d["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["alphabus", "health"], f"{service}: health check {test}"
    health = build_parser().parse_args(test[2:])
    assert health.max_age > 0


def test_every_alphabus_variable_compose_or_the_image_sets_is_read_by_the_code():
    sources = python_sources()
    names = {name for s in SERVICE_DEFS for name in environment(s)}
    names |= set(re.findall(r"\b(ALPHABUS_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert "ALPHABUS_SHARD" in names and "ALPHABUS_HEALTH_FILE" in names
    unread = sorted(n for n in names if n.startswith("ALPHABUS_") and f'"{n}"' not in sources)
    assert not unread, f"set in compose.yaml or the Dockerfile but read nowhere in the code: {unread}"


def test_endpoints_point_at_the_service_that_binds_them():
    ports = {}
    for service in SERVICE_DEFS:
        env = environment(service)
        assert env.get("ALPHABUS_BIND_ALL") == "1", f"{service}: binders must listen on every interface"
        for name, binder in ENDPOINTS.items():
            m = re.fullmatch(r"tcp://([a-z0-9-]+):(\d+)", env.get(name, ""))
            assert m, f"{service}: {name}={env.get(name)!r} is not tcp://SERVICE:PORT"
            assert m.group(1) == binder, f"{service}: {name} should point at {binder}, not {m.group(1)}"
            ports.setdefault(name, m.group(2))
            assert ports[name] == m.group(2), f"{name}: services disagree on the port"
    by_host = [(ENDPOINTS[n], p) for n, p in ports.items()]
    assert len(set(by_host)) == len(by_host), f"two endpoints share a port on one service: {ports}"


def test_factor_shards_cover_every_symbol_once():
    factors = factor_services()
    assert len(factors) >= 2, f"factor services: {factors} (compose.yaml runs two shards by default)"
    shards = []
    for service in factors:
        args = build_parser().parse_args(command(service))
        text = args.shard or environment(service).get("ALPHABUS_SHARD")
        assert text, f"{service}: no --shard and no ALPHABUS_SHARD"
        shards.append(Shard.parse(text))
    n = len(factors)
    assert {s.count for s in shards} == {n}, f"every shard must be K/{n}: {[str(s) for s in shards]}"
    assert sorted(s.index for s in shards) == list(range(n)), f"each K once: {[str(s) for s in shards]}"
    for service, shard in zip(factors, shards, strict=True):
        assert service == f"factor-{shard.index}", f"{service} runs shard {shard}: name it factor-{shard.index}"


def test_the_default_config_is_valid_and_points_at_the_bmac_volume():
    cfg = parse_config(default_config(), str(DEFAULT_CONFIG))
    bmac_dir = cfg.bmac_dir
    assert mounts("sim")[bmac_dir] == "bmac", "sim must write the bmac volume at the config's bmac_dir"
    assert mounts("market")[bmac_dir] == "bmac", "market must read the bmac volume at the config's bmac_dir"
    sim = build_parser().parse_args(command("sim"))
    assert sim.out_dir == bmac_dir
    assert cfg.interval == "1h", "the simulator writes hourly files (usdt_swap_1h, exginfo_1h)"
    assert COMPOSE_DOC["volumes"].keys() >= {"bmac", "out"}


def test_every_mount_is_the_workdir_or_the_bmac_dir():
    bmac_dir = default_config()["bmac_dir"]
    for service in SERVICE_DEFS:
        workdir = environment(service)["ALPHABUS_WORKDIR"]
        for target, source in mounts(service).items():
            assert target in (workdir, bmac_dir), f"{service}: {target} is neither the workdir nor bmac_dir"
            assert source == {workdir: "out", bmac_dir: "bmac"}[target], f"{service}: {source} at {target}"
        args = build_parser().parse_args(command(service)) if command(service)[0] in subcommands() else None
        if args is not None and hasattr(args, "workdir"):
            assert args.workdir in (None, workdir), f"{service}: workdir {args.workdir} != {workdir}"
            assert mounts(service).get(workdir) == "out", f"{service} needs the out volume at {workdir}"


def test_the_image_ships_the_default_config_in_the_workdir():
    text = DOCKERFILE.read_text()
    workdir = environment("market")["ALPHABUS_WORKDIR"]
    assert re.search(rf"COPY\b.*docker/factor_calc\.json {re.escape(workdir)}/factor_calc\.json", text)
    assert f"ALPHABUS_WORKDIR={workdir}" in text
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert 'ENTRYPOINT ["alphabus"]' in text
    assert re.search(r"^USER (?!root|0\b)", text, re.M), "the image must run as a non-root user"


def test_requirements_are_pinned_and_cover_the_project_dependencies():
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            spec = list(req.specifier)
            assert len(spec) == 1 and spec[0].operator == "==", f"not pinned: {line}"
            pins[norm(req.name)] = spec[0].version
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        assert norm(dep.name) in pins, f"{dep.name} is a dependency but not pinned in {REQUIREMENTS.name}"
        assert dep.specifier.contains(pins[norm(dep.name)]), f"{dep.name}=={pins[norm(dep.name)]} violates {dep}"


def test_the_crawler_override_replaces_the_simulator():
    override = load(CRAWLER_OVERRIDE)["services"]
    assert set(override) <= set(SERVICE_DEFS)
    assert override["sim"].get("profiles"), "the override must keep sim from starting"
    bmac_dir = default_config()["bmac_dir"]
    crawler = parse_config(json.loads(CRAWLER_CONFIG.read_text()), str(CRAWLER_CONFIG))
    assert crawler.bmac_dir == bmac_dir
    market = override["market"]
    targets = {split_volume(v)[1]: v for v in market["volumes"]}
    assert targets[bmac_dir].startswith("${ALPHABUS_BMAC_DIR") and targets[bmac_dir].endswith(":ro")
    args = build_parser().parse_args(market["command"])
    assert args.clock == "wall"
    workdir = environment("market")["ALPHABUS_WORKDIR"]
    for service in SERVICE_DEFS:
        if service == "sim":
            continue
        config_mounts = [v for v in override[service]["volumes"] if split_volume(v)[1] == f"{workdir}/factor_calc.json"]
        assert config_mounts, f"{service}: the override must give it the crawler configuration"
