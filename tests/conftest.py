"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def prober_logger_restored() -> Iterator[None]:
    """The "prober" logger as it was before the test: a test that calls setup_logging (the CLI
    in process, the lost-stream tests) stops its propagation and sets its level, which would
    hide the records of later tests from caplog, depending on the order the tests ran in."""
    logger = logging.getLogger("prober")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    for handler in list(logger.handlers):
        if handler not in saved[2]:
            logger.removeHandler(handler)
    for handler in saved[2]:
        if handler not in logger.handlers:
            logger.addHandler(handler)
