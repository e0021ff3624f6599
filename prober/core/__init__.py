"""The pure core: key table, config parsing, state model, tracker, policy, results, runs.

Data and `now` in, data out: no I/O, no clock, and no import of a layer above (pyproject.toml's
import-linter contracts).
"""
