"""The Debian package as built by `make deb`: lintian-clean, what it ships, its vendored
dependencies and their licences, its man page, a reproducible build. (Installing, upgrading and
purging it in a real systemd: tests/e2e/test_deb.py.)"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import click
import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from prober import __version__
from prober.core.config import NOTIFY_KEYS, POLICY_KEYS, TARGET_KEYS, TOP_KEYS, key_tables
from prober.shell.cli import cli
from tests.support import debpkg
from tests.support.sandbox import REPO

DEBIAN = REPO / "debian"
# The licence names of the wheels' metadata, as debian/copyright spells them.
LICENCES = {"MIT": "Expat", "BSD-3-Clause": "BSD-3-clause", "Apache-2.0": "Apache-2.0",
            "MPL-2.0": "MPL-2.0", "PSF-2.0": "PSF-2.0",
            # prometheus_client: Apache-2.0, but for a bundled decorator.py, which has a Files
            # paragraph of its own (BSD-2-clause)
            "Apache-2.0 AND BSD-2-Clause": "Apache-2.0"}
PY311 = {"python_version": "3.11", "python_full_version": "3.11.2", "extra": ""}


@pytest.fixture(scope="module")
def deb() -> Path:
    return debpkg.built()


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return debpkg.extract(deb, tmp_path_factory.mktemp("deb-root"))


def pins() -> dict[str, Version]:
    """debian/vendor-requirements.txt: distribution name -> pinned version."""
    text = (DEBIAN / "vendor-requirements.txt").read_text().replace("\\\n", " ")
    found: dict[str, Version] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line.split(" --hash", 1)[0])
            specifier = next(iter(requirement.specifier))
            assert specifier.operator == "==", f"not pinned: {line}"
            found[canonicalize_name(requirement.name)] = Version(specifier.version)
    return found


def dist_infos(root: Path) -> Iterator[Path]:
    yield from sorted((root / debpkg.LIB).glob("*.dist-info"))


def metadata(dist_info: Path) -> dict[str, list[str]]:
    message = Parser().parsestr((dist_info / "METADATA").read_text())
    return {key: message.get_all(key) or [] for key in
            ("Name", "Version", "License", "License-Expression", "Requires-Dist")}


def test_lintian_reports_no_error_and_no_warning(deb: Path, root: Path) -> None:
    """lintian finds nothing of severity warning or error in the built package, which needs no
    override: there is none in debian/ and none shipped. (One would need a one-line reason, and
    this test a check of that reason.)"""
    overrides = [str(p.relative_to(REPO)) for p in DEBIAN.rglob("*lintian-overrides")]
    assert overrides == []
    assert not (root / "usr/share/lintian/overrides").exists()
    done = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, check=False, timeout=600)
    complaints = [line for line in done.stdout.splitlines() if line[:2] in {"E:", "W:"}]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_package_ships_command_units_cron_examples_and_man_page(deb: Path, root: Path) -> None:
    """/usr/bin/prober, the units (pointing at it), the cron file as a conffile, the examples,
    the docs, prober(1) and prober.toml(5); its version is prober/__init__.py's."""
    assert debpkg.field(deb, "Version") == __version__
    assert debpkg.field(deb, "Architecture") == "all"
    launcher = root / "usr/bin/prober"
    assert launcher.stat().st_mode & 0o111
    assert launcher.read_text().startswith("#!/usr/bin/python3 ")
    for unit in debpkg.UNITS:
        text = (root / "lib/systemd/system" / unit).read_text()
        assert "/usr/local" not in text, unit
        if unit.endswith(".service"):
            assert "ExecStart=/usr/bin/prober " in text, unit
    cron = (root / "etc/cron.d/prober").read_text()
    assert "/usr/local" not in cron
    assert cron == (REPO / "units/prober.cron").read_text().replace("PATH=/usr/local/bin:", "PATH=")
    assert (root / "etc/cron.d/prober").stat().st_mode & 0o777 == 0o644
    assert "/etc/cron.d/prober" in debpkg.control_file(deb, "conffiles").split()
    examples = root / "usr/share/doc/prober/examples"
    for example in (REPO / "examples").glob("*.toml"):
        assert (examples / example.name).read_text() == example.read_text()
    for drop_in in ("prober-docker.conf", "prober-docker-proxy.conf"):  # for the admin to copy
        assert (examples / drop_in).read_text() == (REPO / "units" / drop_in).read_text()
    assert (root / "usr/share/man/man1/prober.1.gz").is_file()
    assert (root / "usr/share/man/man5/prober.toml.5.gz").is_file()
    docs = root / "usr/share/doc/prober/docs"
    for doc in (REPO / "docs").glob("*.md"):
        assert (docs / doc.name).is_file() or (docs / f"{doc.name}.gz").is_file(), doc.name
    assert (root / "etc/prober").is_dir()


COMPLETIONS = {"bash": "usr/share/bash-completion/completions/prober",
               "zsh": "usr/share/zsh/vendor-completions/_prober",
               "fish": "usr/share/fish/vendor_completions.d/prober.fish"}


@pytest.mark.parametrize("shell", sorted(COMPLETIONS))
def test_package_ships_completion_for_each_shell(root: Path, shell: str) -> None:
    """Each shell's completion script is where Debian's shell looks, made by click at build
    time: the same script the checkout's prober prints."""
    shipped = root / COMPLETIONS[shell]
    assert shipped.stat().st_mode & 0o777 == 0o644
    done = subprocess.run([sys.executable, "-m", "prober"], capture_output=True, text=True,
                          env={**os.environ, "_PROBER_COMPLETE": f"{shell}_source"},
                          check=True, timeout=60)
    assert shipped.read_text() == done.stdout and "_PROBER_COMPLETE" in done.stdout


def test_packaged_bash_completion_completes(root: Path, tmp_path: Path) -> None:
    """bash, with the packaged script sourced, completes `prober ch` to `check` (with this
    checkout's prober on $PATH, as the package's would be)."""
    launcher = tmp_path / "prober"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m prober "$@"\n')
    launcher.chmod(0o755)
    script = root / COMPLETIONS["bash"]
    done = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(script))}; COMP_WORDS=(prober st); COMP_CWORD=1; "
         '_prober_completion prober; printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0 and done.stdout.split() == ["status"], done


def test_package_ships_no_bytecode(root: Path) -> None:
    """No .pyc and no __pycache__: postinst byte-compiles, prerm removes what it made."""
    shipped = [p for p in root.rglob("*") if p.suffix in {".pyc", ".pyo"} or
               p.name == "__pycache__"]
    assert shipped == []


def test_maintainer_scripts_compile_clean_and_create_the_user(deb: Path) -> None:
    """postinst creates the system user and byte-compiles for the installed python3; prerm
    removes the bytecode; postrm's purge removes the state and the polkit rule."""
    postinst = debpkg.control_file(deb, "postinst")
    assert "adduser --system --group" in postinst
    assert "py3compile -p prober /usr/lib/prober" in postinst
    assert "py3clean -p prober" in debpkg.control_file(deb, "prerm")
    postrm = debpkg.control_file(deb, "postrm")
    assert "rm -rf /var/lib/prober" in postrm
    assert "rm -f /etc/polkit-1/rules.d/50-prober.rules" in postrm


def test_only_the_timer_and_the_rule_watcher_are_enabled(deb: Path) -> None:
    """dh_installsystemd enables prober.timer and prober-polkit.path, not the watcher."""
    snippets = debpkg.control_file(deb, "postinst").split("# Automatically added by")
    enabled = {unit for snippet in snippets if "new installations run enable" in snippet
               for unit in re.findall(r"deb-systemd-helper enable '([^']+)'", snippet)}
    assert enabled == {"prober.timer", "prober-polkit.path"}


def test_vendored_dependencies_are_pure_python_and_pinned(root: Path) -> None:
    """Every vendored distribution is a py3-none-any wheel at the version pinned."""
    pinned = pins()
    seen = {}
    for dist_info in dist_infos(root):
        tags = re.findall(r"^Tag: (.+)$", (dist_info / "WHEEL").read_text(), re.M)
        assert tags and all(re.fullmatch(r"py3-none-any|py2\.py3-none-any", t) for t in tags), \
            f"{dist_info.name}: {tags}"
        meta = metadata(dist_info)
        seen[canonicalize_name(meta["Name"][0])] = Version(meta["Version"][0])
    assert seen == pinned


def test_vendored_set_is_closed_and_satisfies_pyproject(root: Path) -> None:
    """Every runtime dependency of pyproject.toml, and every dependency of a vendored
    distribution (as Python 3.11 resolves them), is pinned at a version that satisfies it."""
    pinned = pins()
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dist_info in dist_infos(root):
        wanted += metadata(dist_info)["Requires-Dist"]
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not Marker(str(requirement.marker)).evaluate(PY311):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{line}: not in debian/vendor-requirements.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"{line}: pinned at {pinned[name]}"


def test_copyright_names_every_vendored_distribution_and_its_licence(root: Path) -> None:
    """debian/copyright has a Files paragraph for each vendored distribution's modules, with the
    licence its metadata declares."""
    paragraphs = (DEBIAN / "copyright").read_text().split("\n\n")
    files = {}
    for paragraph in paragraphs:
        found = re.search(r"^Files: (.+?)^Copyright:.*?^License: (\S+)", paragraph, re.M | re.S)
        if found:
            for pattern in found.group(1).split():
                files[pattern] = found.group(2)
    for dist_info in dist_infos(root):
        meta = metadata(dist_info)
        declared = (meta["License-Expression"] or meta["License"])[0]
        record = (dist_info / "RECORD").read_text().splitlines()
        tops = {line.split("/", 1)[0].split(",", 1)[0] for line in record} - {dist_info.name}
        tops = {t for t in tops if not t.startswith("..") and not t.endswith(".dist-info")}
        for top in tops:
            pattern = f"{debpkg.LIB}/{top}" + ("/*" if (root / debpkg.LIB / top).is_dir() else "")
            assert pattern in files, f"{dist_info.name}: no Files paragraph for {pattern}"
            assert files[pattern] == LICENCES[declared], f"{pattern}: {declared}"


def _cli_words() -> set[str]:
    """Every command name and option flag of prober's CLI."""
    words = set()
    root = click.Context(cli, info_name="prober")
    commands: list[click.Command] = [cli]
    for name in cli.list_commands(root):
        words.add(name)
        command = cli.get_command(root, name)
        assert command is not None
        commands.append(command)
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                words.update(param.opts)
    return words


def test_man_page_documents_every_command_and_option_of_this_checkout(root: Path) -> None:
    """The packaged prober(1) names every command and every option the checkout's CLI has, and
    man reads it without a warning."""
    page = root / "usr/share/man/man1/prober.1.gz"
    roff = gzip.decompress(page.read_bytes()).decode()
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-")
    missing = sorted(w for w in _cli_words() if not re.search(rf"(?<![\w-]){re.escape(w)}\b",
                                                             text))
    assert missing == []
    done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                          text=True, check=False, timeout=60, env={"MANWIDTH": "80",
                                                                   "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_config_man_page_documents_every_key_and_man_reads_it(root: Path) -> None:
    """The packaged prober.toml(5) names every key of the checkout's key table, and man reads
    it without a warning."""
    page = root / "usr/share/man/man5/prober.toml.5.gz"
    roff = gzip.decompress(page.read_bytes()).decode()
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-")
    keys = {key.name for key in (*TOP_KEYS, *NOTIFY_KEYS, *TARGET_KEYS, *POLICY_KEYS)}
    keys |= set(key_tables().kinds)
    assert sorted(k for k in keys if not re.search(rf"^{re.escape(k)}\b", text, re.M)) == []
    assert "\n.SH EXAMPLE\n" in roff
    done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                          text=True, check=False, timeout=60, env={"MANWIDTH": "80",
                                                                   "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_rebuilding_offline_gives_the_same_bytes(deb: Path, tmp_path: Path) -> None:
    """Two builds of the same checkout make identical packages (pinned wheels, fixed dates),
    the second one with no network at all once the wheels are fetched."""
    again = debpkg.build(tmp_path, offline=True)
    assert again.read_bytes() == deb.read_bytes()


def test_make_deb_is_build_deb_into_the_checkout() -> None:
    """`make deb` runs debian/build-deb, the script these tests build with, into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    done = subprocess.run(["make", "--dry-run", "deb"], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stdout.splitlines() == [f"{debpkg.BUILD_DEB.relative_to(REPO)} ."]
