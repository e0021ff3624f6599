"""prober's licence is stated once and agrees everywhere it is stated: the LICENSE file, the
project metadata (pyproject.toml, an SPDX expression) and the Debian package's copyright file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPDX = "Apache-2.0"
COMMON_LICENSES = Path("/usr/share/common-licenses") / SPDX


def _copyright_paragraphs() -> list[dict[str, str]]:
    """debian/copyright as DEP-5 paragraphs: field name -> first line of its value."""
    paragraphs = []
    for block in (REPO / "debian" / "copyright").read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", block, re.M))
        paragraphs.append(fields)
    return paragraphs


def test_pyproject_declares_the_licence_as_an_spdx_expression() -> None:
    """pyproject.toml names Apache-2.0 (PEP 639) and ships the LICENSE file."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == SPDX
    assert project["license-files"] == ["LICENSE"]


def test_licence_file_is_the_apache_licence_text() -> None:
    """LICENSE holds the Apache License 2.0 word for word, as Debian ships it."""
    text = (REPO / "LICENSE").read_text()
    assert text.split() == COMMON_LICENSES.read_text().split()


def test_debian_copyright_licenses_prober_itself_under_the_same_licence() -> None:
    """The `Files: *` paragraph (prober's own files) says Apache-2.0, and a stand-alone
    paragraph for that licence points at Debian's copy of its text."""
    paragraphs = _copyright_paragraphs()
    own = [p for p in paragraphs if p.get("Files") == "*"]
    assert len(own) == 1
    assert own[0]["License"] == SPDX
    standalone = [p for p in paragraphs if p.get("License") == SPDX and "Files" not in p]
    assert standalone, "no stand-alone Apache-2.0 licence paragraph"
    assert str(COMMON_LICENSES) in (REPO / "debian" / "copyright").read_text()
