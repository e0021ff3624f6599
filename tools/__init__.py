"""Tools beside the tests: make bench, make demo, make screenshot."""
