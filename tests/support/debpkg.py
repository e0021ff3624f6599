"""The Debian package, for the tests and the bench: built by debian/build-deb (what `make deb`
runs), looked into with dpkg-deb."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prober import __version__
from tests.support.sandbox import REPO

BUILD_DEB = REPO / "debian" / "build-deb"
OUT = REPO / "build" / "test-debs"
"""Where the tests' packages go (gitignored build/); inside the repository, so the sandbox sees
them."""
WHEELS = REPO / "build" / "wheels"
"""debian/build-deb's cache of the wheels it fetched."""
LIB = "usr/lib/prober"
UNITS = ("prober.service", "prober.timer", "prober-watch.service", "prober-polkit.path",
         "prober-polkit.service")
_TOOLS = {"dpkg-buildpackage": "dpkg-dev", "dh": "debhelper", "dh_python3": "dh-python",
          "lintian": "lintian", "dpkg-deb": "dpkg"}


def missing_tools() -> list[str]:
    """What this machine lacks to build and check the package (empty when it has everything)."""
    missing = [f"`{tool}` (Debian package {package})" for tool, package in _TOOLS.items()
               if shutil.which(tool) is None]
    pip = subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True,
                         check=False, timeout=60)
    if pip.returncode != 0:
        missing.append("pip for /usr/bin/python3 (Debian package python3-pip)")
    return missing


def require_tools() -> None:
    """Skip (or, with $CI set, fail) when the package cannot be built here."""
    missing = missing_tools()
    if not missing:
        return
    message = "building the Debian package needs: " + "; ".join(missing)
    if os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def next_version(version: str = __version__) -> str:
    """A version dpkg orders after `version`: what the upgrade tests upgrade to."""
    return f"{version}+1"


def build(outdir: Path, version: str | None = None, *, offline: bool = False) -> Path:
    """Run debian/build-deb into `outdir`; the path of the .deb it made.

    `offline`: in a network namespace of its own, with no network at all; its `pip download`
    takes the pinned wheels from build/wheels (a build before this one fetched them), where they
    are hash-checked all the same.
    """
    argv = [str(BUILD_DEB), str(outdir)] + ([version] if version else [])
    env = None
    if offline:
        argv = ["unshare", "--net", *([] if os.geteuid() == 0 else ["--map-root-user"]), *argv]
        env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS)}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600,
                          env=env)
    if done.returncode != 0:
        raise AssertionError(f"debian/build-deb failed ({done.returncode}):\n{done.stderr}")
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.is_file(), done.stdout
    return deb


@functools.cache
def built(version: str = __version__) -> Path:
    """The package of this checkout at `version`, built once per test session."""
    require_tools()
    outdir = OUT / version
    shutil.rmtree(outdir, ignore_errors=True)
    return build(outdir, version)


def extract(deb: Path, dest: Path) -> Path:
    """Unpack the files of `deb` under `dest` (dpkg-deb -x); return `dest`."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, timeout=120)
    return dest


def field(deb: Path, name: str) -> str:
    """A field of the package's control file."""
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def control_file(deb: Path, name: str) -> str:
    """A file of the control archive (postinst, conffiles, ...)."""
    return subprocess.run(["dpkg-deb", "-I", str(deb), name], capture_output=True, text=True,
                          check=True, timeout=60).stdout
