"""Fuzzing the state file: whatever it holds, the loader keeps every good target's entry and
raises nothing but its own errors, and `status` and the page render what it kept.

Documents start from a state written by prober (one good target beside the fuzzed ones) and put
arbitrary JSON values, extreme numbers and near-miss words into the fields of the others, and
into the file's own fields; bytes are arbitrary, or a good file cut or flipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prober.core.config import parse_config
from prober.core.errors import StateError
from prober.core.psi import MemoryUser
from prober.core.runs import Snapshot
from prober.core.tracker import Event, Health, State, TargetState, Transition
from prober.core.unit_seen import Happened, Incident, UnitSeen
from prober.outputs import metrics, page, report
from prober.shell.state import STATE_VERSION, StateStore, dumps, from_json
from tests.test_fuzz import fuzz

NOW = 1_800_000_000.0
CONFIG = parse_config({"target": [{"name": name, "url": "http://127.0.0.1:9/",
                                   "unit": f"{name}.service"}
                                  for name in ("good", "bad", "other")]})
GOOD = TargetState(
    health=Health.DOWN, since=NOW - 60, consecutive_failures=3, failure_times=(NOW - 60,),
    last_checked_at=NOW - 1, last_ok=False, last_reason="refused", last_failure="refused",
    down_since=NOW - 60, restarts=(NOW - 30,), restarts_total=2, last_restart_at=NOW - 30,
    paused_until=NOW + 3600, paused_reason="upgrading",
    history=(Transition(NOW - 60, Event.DOWN, "3 in a row", (MemoryUser("convert", 1 << 30),)),
             Transition(NOW - 30, Event.RESTART, "restarted")),
    unit_seen=UnitSeen(3, 1, NOW - 40, (Incident(NOW - 40, Happened.OOM_KILL),
                                         Incident(NOW - 20, Happened.CRASH, "exited with 1"))),
)
GOOD_JSON: dict[str, Any] = json.loads(dumps(State(targets={"good": GOOD})))["targets"]["good"]

EXTREMES = st.sampled_from([0, -1, 2**53 - 1, 2**53, 2**63, 10**400, 1e308, -1e308,
                            float("nan"), float("inf"), float("-inf"), 4102444800.0,
                            4102444800.5, 253402300800.0, -0.0, True, False, "", "\x00\n",
                            "down", "refused", "restart", "tomorrow"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | EXTREMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(sorted(GOOD_JSON))
EVENT_FIELDS = st.sampled_from(["at", "event", "reason", "top_memory"])


@st.composite
def entries(draw: st.DrawFn) -> Any:
    """A target's entry: prober's own, with some fields (or one history event) replaced."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    entry = dict(GOOD_JSON)
    for field in draw(st.lists(FIELDS, max_size=4)):
        entry[field] = draw(VALUES)
    if draw(st.booleans()):
        event = {**GOOD_JSON["history"][0], draw(EVENT_FIELDS): draw(VALUES)}
        entry["history"] = [GOOD_JSON["history"][1], event]
    return entry


@st.composite
def documents(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A state document, and whether one of its own fields (not a target's) was replaced."""
    doc: dict[str, Any] = {"version": draw(st.sampled_from([1, STATE_VERSION])),
                           "updated_at": NOW, "trial": False, "written_by": "0.1.0",
                           "targets": {"good": GOOD_JSON, "bad": draw(entries()),
                                       "other": draw(entries())}}
    if doc["version"] == 1:
        del doc["trial"], doc["written_by"]
    damaged = draw(st.integers(0, 4)) == 0
    if damaged:
        doc[draw(st.sampled_from(sorted(doc)))] = draw(VALUES)
    return doc, damaged


def renders(state: State) -> None:
    """`status` (text and JSON), the page and /metrics render the state."""
    report.status_text(CONFIG, state, NOW)
    report.dumps(report.status_json(CONFIG, state, NOW))
    snapshot = Snapshot(CONFIG, state, None, NOW)
    page.render(snapshot, hostname="host")
    metrics.exposition(snapshot)


@fuzz(400)
@given(drawn=documents())
def test_any_document_keeps_the_good_entry_and_renders(drawn: tuple[dict[str, Any], bool]
                                                       ) -> None:
    """A damaged entry never costs the good target its own; only a document whose own fields
    are damaged may be no state at all: a ValueError (the store moves it aside), nothing else."""
    doc, damaged = drawn
    try:
        salvaged = from_json(doc)
    except ValueError:
        assert damaged, doc
        return
    if doc["targets"].get("good") is GOOD_JSON:
        assert salvaged.state.targets["good"] == GOOD
    renders(salvaged.state)


def _bytes() -> st.SearchStrategy[bytes]:
    whole = dumps(State(targets={"good": GOOD, "bad": GOOD})).encode()
    cut = st.integers(0, len(whole)).map(lambda n: whole[:n])
    flipped = st.tuples(st.integers(0, len(whole) - 1), st.integers(0, 255)).map(
        lambda f: whole[:f[0]] + bytes([f[1]]) + whole[f[0] + 1:])
    return st.binary(max_size=200) | cut | flipped


@fuzz(300)
@given(content=_bytes())
def test_any_bytes_load_as_a_state_or_are_moved_aside(tmp_path_factory: pytest.TempPathFactory,
                                                      content: bytes) -> None:
    """Any bytes in a regular file load, whole, salvaged or as fresh state; never an error."""
    path: Path = tmp_path_factory.mktemp("state") / "state.json"
    path.write_bytes(content)
    logging.getLogger("prober").disabled = True
    try:
        state = StateStore(str(path)).load()
    except StateError as exc:  # pragma: no cover - the assertion says what happened
        raise AssertionError(f"a regular file gave a StateError: {exc}") from None
    finally:
        logging.getLogger("prober").disabled = False
    assert path.exists() != (path.with_name("state.json.corrupt")).exists()
    renders(state)


# --- found with the extreme values -------------------------------------------------------


def test_a_huge_count_of_unhelpful_restarts_gives_the_longest_cooldown() -> None:
    """A count the loader accepts (below 2**53) in the cooldown's power of two: the longest
    cooldown at once, not a power of two too large to compute."""
    from prober.core.policy import cooldown_for

    target = CONFIG.target("good")
    huge = TargetState(unhelpful_restarts=2**53 - 1)
    assert cooldown_for(target, huge) == target.policy.max_cooldown
