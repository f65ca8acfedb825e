#!/usr/bin/env python3
"""Build a Debian base image for the alphabus Dockerfile without any image registry.

    sudo python3 docker/base_image.py [--tag alphabus-base:local] [--suite bookworm] [--force]
    docker build --build-arg BASE_IMAGE=alphabus-base:local -t alphabus:latest .

It runs ``debootstrap --variant=minbase`` with Debian's python3 and python3-venv into a
temporary folder, then ``tar -C rootfs -c . | docker import - TAG``. The Debian mirror is read
at run time from this machine's apt configuration (sources.list, sources.list.d/*.list and
*.sources); none is written into the repository. The suite is the host's own Debian release
when the mirror serves it, else bookworm (Python 3.11). Needs root, debootstrap and docker.
An existing image TAG is kept unless --force is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

APT_DIR = Path("/etc/apt")
DEFAULT_SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    keyring: str | None


def _one_line_sources(text: str) -> list[Source]:
    """``deb [signed-by=...] URI SUITE COMPONENT...`` lines."""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        keyring = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w.strip("[]"))
                if w.endswith("]"):
                    break
            for opt in opts:
                if opt.startswith("signed-by="):
                    keyring = opt.split("=", 1)[1]
        if len(words) >= 2:
            out.append(Source(words[0].rstrip("/"), (words[1],), tuple(words[2:]), keyring))
    return out


def _deb822_sources(text: str) -> list[Source]:
    """deb822 stanzas: ``Types: deb``, ``URIs:``, ``Suites:``, ``Components:``, ``Signed-By:``."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        keyring = fields.get("signed-by") or None
        if keyring and not keyring.startswith("/"):
            keyring = None  # an inline key block: debootstrap's default keyring will do
        for uri in fields.get("uris", "").split():
            out.append(Source(uri.rstrip("/"), tuple(fields.get("suites", "").split()),
                              tuple(fields.get("components", "").split()), keyring))
    return out


def apt_sources(apt_dir: Path = APT_DIR) -> list[Source]:
    """Every enabled ``deb`` source of this machine, in apt's reading order."""
    sources: list[Source] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        sources += _one_line_sources(main.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += _one_line_sources(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                sources += _deb822_sources(path.read_text(errors="replace"))
    return sources


def host_suite() -> str | None:
    """The host's Debian codename, or None on another distribution."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if info.get("ID", "").strip('"') != "debian":
        return None
    return info.get("VERSION_CODENAME", "").strip('"') or None


def serves(uri: str, suite: str, timeout: float = 20.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/dists/{suite}/Release", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def choose_mirror(suite: str | None = None) -> tuple[Source, str]:
    """(source, suite): the first configured mirror serving the wanted suite's ``main``."""
    wanted = [suite] if suite else list(dict.fromkeys(s for s in (host_suite(), DEFAULT_SUITE) if s))
    sources = apt_sources()
    for want in wanted:
        for src in sources:
            if want in src.suites and (not src.components or "main" in src.components) and serves(src.uri, want):
                return src, want
    raise SystemExit(f"no mirror in {APT_DIR} serves Debian {' or '.join(wanted)} (main); "
                     f"sources seen: {', '.join(s.uri + ' ' + '/'.join(s.suites) for s in sources) or 'none'}")


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _unmount_below(root: Path) -> None:
    """debootstrap mounts proc/sys in the target; never delete through a leftover mount."""
    mounts = []
    with open("/proc/mounts") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if target == str(root) or target.startswith(str(root) + "/"):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)


def build(tag: str, suite: str | None = None, workdir: Path | None = None, log=print) -> dict[str, float]:
    """debootstrap + docker import; returns the seconds each step took."""
    for tool in ("debootstrap", "docker"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    src, suite = choose_mirror(suite)
    tmp = Path(tempfile.mkdtemp(prefix="alphabus-rootfs-", dir=workdir))
    rootfs = tmp / "rootfs"
    times: dict[str, float] = {}
    try:
        cmd = ["debootstrap", "--variant=minbase", "--components=main", f"--include={','.join(PACKAGES)}"]
        if src.keyring and Path(src.keyring).is_file():
            cmd.append(f"--keyring={src.keyring}")
        cmd += [suite, str(rootfs), src.uri]
        log(f"$ {' '.join(cmd)}")
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times["debootstrap"] = time.monotonic() - t0
        _unmount_below(rootfs)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        t0 = time.monotonic()
        changes = [arg for env in ENV for arg in ("--change", f"ENV {env}")]
        changes += ["--change", 'CMD ["/bin/bash"]']
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout, capture_output=True,
                                  text=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SystemExit(f"docker import failed: {imported.stderr.strip()}")
        times["import"] = time.monotonic() - t0
        log(f"imported {tag} (Debian {suite} from {src.uri})")
        return times
    finally:
        _unmount_below(rootfs)
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="alphabus-base:local")
    p.add_argument("--suite", help="Debian suite (default: the host's, else bookworm)")
    p.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("debootstrap needs root", file=sys.stderr)
        return 1
    if image_exists(args.tag) and not args.force:
        print(f"{args.tag} exists; --force rebuilds it")
        return 0
    times = build(args.tag, args.suite)
    print(", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
