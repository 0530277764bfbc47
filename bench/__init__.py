"""Benchmarks of the switch (see each module's docstring).

Run from the repository root as modules, e.g. ``python -m bench.loopback``,
so that they import the test harness (tests.harness) and each other as
packages; `make bench` runs them all.
"""
