"""The man pages as prober.shell.manpage writes them: prober.toml(5) names every key of the key
table with its default, both pages render without a warning, and the generator has a --help."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import tomllib

import pytest

from prober.actuators import ACTUATORS
from prober.core.config import NOTIFY_KEYS, POLICY_KEYS, TARGET_KEYS, TOP_KEYS, parse_config
from prober.core.keys import Key
from prober.probes import KINDS
from prober.shell import manpage
from prober.shell.cli import cli

DATE = datetime.date(2026, 1, 2)
KEYS: list[Key] = [*TOP_KEYS, *NOTIFY_KEYS, *TARGET_KEYS, *POLICY_KEYS,
                   *(key for kind in KINDS for key in kind.keys),
                   *(key for actuator in ACTUATORS for key in (*actuator.keys, *actuator.top_keys))]


def plain(roff: str) -> str:
    """The page's words with the font changes and escapes taken out."""
    return re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\e", "\\")


@pytest.mark.parametrize("key", KEYS, ids=[key.name for key in KEYS])
def test_the_config_page_gives_every_key_its_default_and_meaning(key: Key) -> None:
    """prober.toml(5) has a paragraph for every key: its name, its default as the key table
    writes it (or "required"), then its meaning."""
    text = plain(manpage.render_config(DATE))
    tag = (f"{key.name} (required)" if key.default == "required"
           else f"{key.name} = {key.default}" if key.default else key.name)
    assert f".TP\n{tag}\n{plain(manpage._inline(key.help))}" in text


def test_the_config_page_has_every_section_and_kind() -> None:
    text = plain(manpage.render_config(DATE))
    sections = re.findall(r'^\.S[HS] "?([^"\n]+)"?$', text, re.MULTILINE)
    assert sections == ["NAME", "SYNOPSIS", "DESCRIPTION", "TOP-LEVEL KEYS", "[notify] KEYS",
                        "[[target]] KEYS", "PROBE KEYS", *(kind.name for kind in KINDS),
                        "ACTUATOR KEYS", *(actuator.name for actuator in ACTUATORS),
                        "POLICY KEYS", "EXAMPLE", "FILES", "SEE ALSO"]


def test_the_config_pages_example_is_a_config_prober_accepts() -> None:
    config = parse_config(tomllib.loads(manpage.CONFIG_EXAMPLE))
    assert [target.name for target in config.targets] == ["caddy", "web"]


@pytest.mark.parametrize("section", ["1", "5"])
def test_each_page_renders_without_a_warning(section: str) -> None:
    """groff, warning of everything (-ww), says nothing of either page; prober(1) has EXAMPLES."""
    page = manpage.render(cli, DATE) if section == "1" else manpage.render_config(DATE)
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert "\n.SH EXAMPLES\n" in page or section == "5"


@pytest.mark.parametrize("section", ["1", "5"])
def test_the_generator_writes_the_section_asked_for(section: str) -> None:
    done = subprocess.run([sys.executable, "-m", "prober.shell.manpage", "--section", section],
                          capture_output=True, text=True, check=True, timeout=60,
                          env={"SOURCE_DATE_EPOCH": "1767312000", "PATH": "/usr/bin:/bin"})
    title = "PROBER" if section == "1" else "PROBER.TOML"
    assert done.stdout.startswith(f'.TH {title} {section} "2026-01-02"')


def test_the_generator_has_help_and_refuses_a_bad_section() -> None:
    """--help prints help, not the page; an unknown section is one error line, no page."""
    done = subprocess.run([sys.executable, "-m", "prober.shell.manpage", "--help"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.startswith("Usage: ") and "--section" in done.stdout
    assert ".TH" not in done.stdout
    bad = subprocess.run([sys.executable, "-m", "prober.shell.manpage", "--section", "8"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and "--section" in bad.stderr
