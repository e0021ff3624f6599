"""docs/configuration.md documents every config key as the key table declares it, and nothing
else; the README names the commands that take the shared options as the CLI has them; every
relative link of the README and docs/ leads somewhere."""

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

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
_ROW = re.compile(r"^\| `([a-z_]+)` \| ([^|]*) \| ([^|]*) \|$")


def key_table(heading: str) -> dict[str, tuple[str, str]]:
    """The rows of the first table under `### heading` in docs/configuration.md:
    key -> (default, meaning)."""
    text = CONFIGURATION.read_text()
    marker = f"\n### {heading}\n"
    assert marker in text, f"docs/configuration.md has no section {heading!r}"
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
def test_docs_tables_match_the_key_table(heading: str, keys: tuple[Key, ...]) -> None:
    """Each key table of docs/configuration.md lists exactly the declared keys, in order, with
    their defaults, and marks the probe keys that [defaults] takes."""
    rows = key_table(heading)
    assert list(rows) == [key.name for key in keys]
    for key in keys:
        default, meaning = rows[key.name]
        assert default == key.default, key.name
        if heading.startswith("Probe keys"):
            assert meaning.endswith("*defaults*") == key.in_defaults, key.name


def test_the_history_key_names_every_event_recorded() -> None:
    """The `history` key's help, and so its row in docs/configuration.md, lists every event the
    history records."""
    (history,) = (key for key in TOP_KEYS if key.name == "history")
    listed = re.search(r"\(([a-z, -]+)\)", history.help)
    assert listed is not None
    assert sorted(listed.group(1).split(", ")) == sorted(event.value for event in Event)
    assert history.help in key_table("Top-level keys")["history"][1]


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


@pytest.mark.parametrize("page", DOCS, ids=[page.name for page in DOCS])
def test_tables_are_not_broken_by_blank_lines(page: Path) -> None:
    """Every block of lines starting with "|" opens with a header and its separator, so no
    table is cut in two by a blank line (or starts without a header)."""
    assert rows_outside_tables(page.read_text()) == []


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as "-"."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of the headings of a Markdown text, those in fenced blocks left out."""
    found = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(anchor(line.lstrip("#")))
    return found


def heading_of(page: Path, fragment: str) -> bool:
    """Whether `fragment` is the anchor of one of the headings of `page`, if Markdown."""
    return page.suffix != ".md" or fragment in anchors(page.read_text())


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` to a file that does not exist, or to a heading that its
    Markdown file does not have."""
    broken = []
    for link in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, fragment = link.partition("#")
        target = page.parent / path if path else page
        if not target.is_file() or (fragment and not heading_of(target, fragment)):
            broken.append(link)
    return broken


@pytest.mark.parametrize("page", DOCS, ids=[page.name for page in DOCS])
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    """Each relative link of the README and docs/*.md names an existing file and, after "#",
    one of that file's headings."""
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    """The check itself: a missing file, a missing heading, a heading that is there."""
    (tmp_path / "other.md").write_text("# Title\n\n## The `x` key, and more\n")
    page = tmp_path / "page.md"
    page.write_text("[a](gone.md) [b](other.md#nowhere) [c](other.md#the-x-key-and-more) "
                    "[d](#here) [e](https://example.org/x)\n\n## Here\n")
    assert broken_links(page) == ["gone.md", "other.md#nowhere"]


def test_the_readme_opens_with_the_two_commands_then_goes_in_its_order() -> None:
    """`make demo` and `make test` first, then what prober does, install, a first config, the
    everyday commands, and where everything else is."""
    text = README.read_text()
    assert text.split("\n\n", 2)[2].startswith("    make demo ")
    assert "\n    make test " in text.split("\n## ", 1)[0]
    assert re.findall(r"^## (.*)$", text, re.MULTILINE) == [
        "Install (Debian 12 or later, as root)", "A first config", "Everyday commands",
        "Where everything else is"]


def test_the_readme_stays_short() -> None:
    """The README is what an admin reads first: the rest is in docs/."""
    assert len(README.read_bytes()) <= 15 * 1024


FAILURE_MODES = REPO / "docs" / "failure-modes.md"
_TEST_NAMED = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`(test_\w+)`")


def defined_tests() -> dict[str, set[str]]:
    """Each test function of tests/, by name: the files that define it."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        for name in re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.MULTILINE):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def missing_proofs(table: str, tests: dict[str, set[str]]) -> list[str]:
    """The tests the "proved by" cells of `table` name that do not exist: a file, a
    `file::test` or a bare test name (defined in some file of tests/)."""
    missing = []
    for line in table.splitlines():
        if not line.startswith("| "):
            continue
        proved_by = line.rstrip(" |").rsplit(" | ", 1)[-1]
        for path, name, bare in _TEST_NAMED.findall(proved_by):
            if bare and bare not in tests:
                missing.append(bare)
            elif path and not (REPO / path).is_file():
                missing.append(path)
            elif name and path not in tests.get(name, set()):
                missing.append(f"{path}::{name}")
    return missing


def test_every_test_the_failure_modes_table_names_exists() -> None:
    """Each fault's "proved by" names tests that are there: a renamed test takes its row
    along."""
    assert missing_proofs(FAILURE_MODES.read_text(), defined_tests()) == []


def test_the_proof_check_finds_a_test_that_is_not_there() -> None:
    tests = {"test_a": {"tests/test_docs.py"}}
    table = ("| f | d | `tests/test_docs.py::test_a`, `test_a` |\n"
             "| g | d | `tests/test_docs.py::test_b`, `test_c`, `tests/test_gone.py` |\n")
    assert missing_proofs(table, tests) == ["tests/test_docs.py::test_b", "test_c",
                                            "tests/test_gone.py"]
