"""The tools beside the suite: `make bench` must find every figure it lists."""

from __future__ import annotations

import importlib

import pytest

from tools import bench


@pytest.mark.parametrize(("module", "function"), bench.ELSEWHERE, ids=str)
def test_every_figure_measured_elsewhere_imports(module: str, function: str) -> None:
    """A figure's module moved or renamed without its FIGURES line fails here, not in the
    middle of a `make bench` run."""
    assert callable(getattr(importlib.import_module(module), function))

