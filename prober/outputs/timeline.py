"""The outage record read back: `status --since` (text and JSON) and `report` (Markdown, in the
shape of a postmortem: what broke, what prober did, how long each outage lasted, who held the
memory). Every time in UTC."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prober.core.keys import format_duration
from prober.core.psi import describe_users
from prober.core.record import Entry, Kind, Outage, culprits, entry_json, outages
from prober.core.text import clip, utc
from prober.core.view import journal_command

_DID = (Kind.RESTART_ASKED, Kind.RESTART, Kind.RESTART_FAILED, Kind.GIVEN_UP, Kind.HELD,
        Kind.PAUSED, Kind.RESUMED, Kind.RESET)
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~])")


def _detail(entry: Entry) -> str:
    text = entry.reason
    if entry.kind is Kind.RECOVERED and entry.duration is not None:
        text = f"after {format_duration(round(entry.duration))} out; {text}"
    if entry.kind is Kind.BLAMED:
        text = f"blamed on {entry.on}"
    if entry.psi is not None:
        text += f" [memory pressure {entry.psi:.1f}%]"
    if entry.top_memory:
        text += f" [largest memory users: {describe_users(entry.top_memory)}]"
    return text


def timeline_text(entries: Sequence[Entry], since: float, now: float) -> str:
    """Every entry since `since`, oldest first, then each outage and how long it lasted."""
    lines = [f"events since {utc(since)} ({format_duration(round(now - since))} ago):"]
    if not entries:
        lines.append("  none recorded")
    width = max((len(e.target) for e in entries), default=0)
    for entry in entries:
        lines.append(f"  {utc(entry.at, '%Y-%m-%d %H:%M:%S')}  {entry.target.ljust(width)}  "
                     f"{entry.kind.value:<14} {clip(_detail(entry), 300)}")
    found = outages(entries)
    if found:
        lines.append("outages:")
        for outage in found:
            lines.append(f"  {_outage_line(outage, now)}")
    return "\n".join(lines)


def _outage_line(outage: Outage, now: float) -> str:
    span = f"{utc(outage.began, '%H:%M:%S')}-" + \
        (utc(outage.ended, "%H:%M:%S") if outage.ended is not None else "not over")
    text = f"{outage.target}: {format_duration(round(outage.lasted(now)))} ({span})"
    return text + (f", memory held by {outage.culprit}" if outage.culprit else "")


def timeline_json(entries: Sequence[Entry], since: float, now: float,
                  skipped: int = 0) -> dict[str, Any]:
    """`status --since --json`: the entries and the outages, times in seconds since 1970."""
    return {
        "since": since,
        "now": now,
        "events": [entry_json(e) for e in entries],
        "outages": [_outage_json(o, now) for o in outages(entries)],
        "skipped_lines": skipped,
    }


def _outage_json(outage: Outage, now: float) -> dict[str, Any]:
    return {"target": outage.target, "unit": outage.unit, "began": outage.began,
            "ended": outage.ended, "duration": outage.lasted(now),
            "culprit": outage.culprit or None}


def _md(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def postmortem(entries: Sequence[Entry], since: float, now: float) -> str:
    """A Markdown timeline of what happened since `since`, ready to paste into a postmortem."""
    found = outages(entries)
    held = culprits(entries)
    began = min((o.began for o in found), default=since)
    lines = [f"# Outage report, {utc(began, '%Y-%m-%d')}", "",
             f"From prober's record, {utc(since, '%Y-%m-%d %H:%M')} to "
             f"{utc(now, '%Y-%m-%d %H:%M')} UTC.", ""]
    lines += ["## Summary", ""]
    if not found:
        lines.append("No outage was recorded in this time.")
    for outage in found:
        lines.append(f"- {_md(_outage_line(outage, now))}")
    if held:
        lines.append(f"- Memory held by: {_md(describe_users(held[:3]))}")
    lines += ["", "## Timeline", "", "All times UTC.", ""]
    for entry in entries:
        lines.append(f"- {utc(entry.at, '%H:%M:%S')} - **{_md(entry.target or 'host')}** "
                     f"{entry.kind.value}: {_md(clip(_detail(entry), 300))}")
    lines += ["", "## What broke", ""]
    lines += [f"- {_md(e.target)}: {_md(clip(e.reason, 300))}" for e in entries
              if e.kind is Kind.DOWN] or ["- nothing went down"]
    lines += ["", "## What prober did", ""]
    lines += [f"- {utc(e.at, '%H:%M:%S')} {_md(e.target)}: {e.kind.value}: "
              f"{_md(clip(_detail(e), 300))}" for e in entries if e.kind in _DID] or \
        ["- nothing"]
    lines += ["", "## Who held the memory", ""]
    lines += [f"- {_md(describe_users([user]))}" for user in held] or \
        ["- no memory pressure was recorded while targets failed"]
    units = [o for o in found if o.unit]
    if units:
        lines += ["", "## Logs", "", "```"]
        lines += [journal_command(o.unit, o.began - 60) for o in units]
        lines.append("```")
    return "\n".join(lines) + "\n"
