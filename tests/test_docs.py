"""The README documents every config key as the key table declares it, and nothing else, and
names the commands that take the shared options as the CLI has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prober.actuators import ACTUATORS
from prober.core.config import NOTIFY_KEYS, POLICY_KEYS, TARGET_KEYS, TOP_KEYS
from prober.core.keys import Key
from prober.core.tracker import Event
from prober.probes import KINDS
from prober.shell.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \| ([^|]*) \| ([^|]*) \|$")


def readme_table(heading: str) -> dict[str, tuple[str, str]]:
    """The rows of the first table under `### heading`: key -> (default, meaning)."""
    text = README.read_text()
    marker = f"\n### {heading}\n"
    assert marker in text, f"README has no section {heading!r}"
    section = text.split(marker, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            rows[match.group(1)] = (match.group(2).strip().strip("`"), match.group(3).strip())
    return rows


SECTIONS: list[tuple[str, tuple[Key, ...]]] = [
    ("Top-level keys", TOP_KEYS),
    ("`[notify]` keys", NOTIFY_KEYS),
    ("Target keys (every kind)", TARGET_KEYS),
    ("Policy keys (in `[defaults]` or per target)", POLICY_KEYS),
    *((f"Probe keys: {kind.name}", kind.keys) for kind in KINDS),
    *((f"Actuator keys: {actuator.name}", actuator.keys) for actuator in ACTUATORS),
]


@pytest.mark.parametrize(("heading", "keys"), SECTIONS, ids=[s[0] for s in SECTIONS])
def test_readme_tables_match_the_key_table(heading: str, keys: tuple[Key, ...]) -> None:
    """Each README key table lists exactly the declared keys, in order, with their defaults,
    and marks the probe keys that [defaults] takes."""
    rows = readme_table(heading)
    assert list(rows) == [key.name for key in keys]
    for key in keys:
        default, meaning = rows[key.name]
        assert default == key.default, key.name
        if heading.startswith("Probe keys"):
            assert meaning.endswith("*defaults*") == key.in_defaults, key.name


def test_the_history_key_names_every_event_recorded() -> None:
    """The `history` key's help, and so its README row, lists every event the history
    records."""
    (history,) = (key for key in TOP_KEYS if key.name == "history")
    listed = re.search(r"\(([a-z, -]+)\)", history.help)
    assert listed is not None
    assert sorted(listed.group(1).split(", ")) == sorted(event.value for event in Event)
    assert history.help in readme_table("Top-level keys")["history"][1]


def _readme_commands_taking(option: str) -> list[str]:
    """The commands the README says take `option`: "`a`, `b` and `c` take `option`"."""
    match = re.search(r"((?:`[a-z-]+`,?\s+)*(?:and\s+)?`[a-z-]+`)\s+takes?\s+`" + option,
                      README.read_text())
    assert match is not None, f"the README says nowhere which commands take {option}"
    return sorted(re.findall(r"`([a-z-]+)`", match.group(1)))


@pytest.mark.parametrize(("option", "param"), [("--state", "state_file"), ("--wait", "wait")])
def test_readme_names_every_command_taking_an_option(option: str, param: str) -> None:
    """The README's list of the commands that take --state (or --wait) is the CLI's."""
    takers = sorted(name for name, command in cli.commands.items()
                    if any(p.name == param for p in command.params))
    assert _readme_commands_taking(option) == takers


_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def rows_outside_tables(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each "|" line that starts a block without being a table header:
    a header row is followed by its |---| separator. A blank line inside a table ends it, and
    the rows after it render as a paragraph of pipes."""
    lines = text.splitlines()
    found = []
    fenced = in_block = False
    for index, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("|"):
            in_block = False
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if not in_block and not _SEPARATOR.match(following):
            found.append((index + 1, line[:60]))
        in_block = True
    return found


def test_readme_tables_are_not_broken_by_blank_lines() -> None:
    """Every block of README lines starting with "|" opens with a header and its separator,
    so no table is cut in two by a blank line (or starts without a header)."""
    assert rows_outside_tables(README.read_text()) == []
